"""The API fuzzed from its own OpenAPI document by Schemathesis (its pytest integration), against the app under
a real uvicorn server on 127.0.0.1: schema-valid and schema-violating requests for every operation. No request
may get a 5xx, and every answer must have a documented status, content type, headers and a body that matches
its schema."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, settings

from serving import schemas
from serving.app import create_app
from serving.config import ServingConfig
from test_serving_api import serving
from test_serving_scoring import random_bundle

MAX_N, MAX_BATCH = 30, 25
RESPONSE_MODELS = {
    ("get", "/recommendations/{user_id}"): (schemas.RecommendationsResponse, schemas.ExplainedRecommendationsResponse),
    ("post", "/recommendations/batch"): schemas.BatchResponse,
    ("post", "/recommendations/{user_id}/rerank"): schemas.RerankResponse,
    ("get", "/similar-items/{item_id}"): schemas.SimilarItemsResponse,
    ("get", "/health"): schemas.HealthResponse,
    ("get", "/ready"): schemas.ReadyResponse,
    ("get", "/model"): schemas.ModelInfo,
}


def fuzz_config(root: Path) -> ServingConfig:
    return ServingConfig(model_name="fuzz", tracking_uri=f"sqlite:///{root / 'unused.db'}",
                         duckdb_path=root / "warehouse.duckdb", bundle_dir=root / "bundle", poll_seconds=60,
                         max_n=MAX_N, max_batch=MAX_BATCH, fold_in=False)


# The document comes from the app factory with the served limits (no model is loaded to build it); the test
# below checks it is the one the live server publishes. Loaded at import because Schemathesis' lazy loader
# (`schemathesis.pytest.from_fixture`) does not work with pytest 9.
DOCUMENT = create_app(fuzz_config(Path("/nonexistent"))).openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT)
BUNDLE = random_bundle(60, 80, 6, 0.1, seed=11)
KNOWN_USERS = [int(u) for u in BUNDLE.user_ids]
KNOWN_ITEMS = [int(i) for i in BUNDLE.item_ids]


@pytest.fixture(scope="module")
def live_api(tmp_path_factory):
    root = tmp_path_factory.mktemp("openapi")
    BUNDLE.save(root / "bundle")
    with serving(fuzz_config(root)) as client:
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.05)
        yield client


def test_openapi_document_lists_the_contract(live_api):
    client = live_api
    document = client.get("/openapi.json").json()
    assert document == DOCUMENT
    assert set(document["paths"]) == {p for _, p in RESPONSE_MODELS}
    n = next(p for p in document["paths"]["/recommendations/{user_id}"]["get"]["parameters"] if p["name"] == "n")
    assert (n["schema"]["minimum"], n["schema"]["maximum"]) == (1, MAX_N)
    batch = document["components"]["schemas"]["BatchRequest"]
    assert batch["properties"]["user_ids"]["maxItems"] == MAX_BATCH
    # exact int64 bounds (FastAPI alone publishes 9.223372036854776e18, i.e. 2**63, which the server refuses)
    id_number = batch["properties"]["user_ids"]["items"]["anyOf"][0]
    assert (id_number["minimum"], id_number["maximum"]) == (-(2**63), 2**63 - 1)
    assert type(id_number["maximum"]) is int and '"maximum":9223372036854775807' in client.get("/openapi.json").text
    assert set(document["paths"]["/recommendations/batch"]["post"]["responses"]) == {"200", "413", "422", "503"}
    rerank = document["components"]["schemas"]["RerankRequest"]
    assert rerank["properties"]["item_ids"]["maxItems"] == MAX_BATCH
    for (method, path), models in RESPONSE_MODELS.items():
        ok = document["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        refs = [ref["$ref"] for ref in ok.get("anyOf", [ok])]  # with explain=true, the same and an explanation
        names = [model.__name__ for model in (models if isinstance(models, tuple) else (models,))]
        assert [ref.rsplit("/", 1)[1] for ref in refs] == names, (path, ok)


def known(value, ids: list[int]):
    """Half of the values swapped for an id the model knows, picked by the value itself so that a failure
    replays: a random id is almost never known, and ALS scoring and similar items should be fuzzed too."""
    digest = zlib.crc32(repr(value).encode("utf-8", "backslashreplace"))
    return ids[digest // 2 % len(ids)] if digest % 2 else value


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_get_no_5xx_and_answers_match_the_schema(case, live_api):
    """Schemathesis' coverage phase (boundaries, each constraint broken in turn, other methods) and fuzzing
    phase (valid and invalid values) for every operation, with its default checks: not a server error, status
    code, content type and headers documented, body matching the response schema, invalid data rejected and
    valid data accepted."""
    if case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE:
        parameters = case.path_parameters or {}
        if "user_id" in parameters:
            parameters["user_id"] = str(known(parameters["user_id"], KNOWN_USERS))
        if "item_id" in parameters:
            parameters["item_id"] = str(known(parameters["item_id"], KNOWN_ITEMS))
        if isinstance(case.body, dict) and isinstance(case.body.get("user_ids"), list):
            case.body["user_ids"] = [known(user_id, KNOWN_USERS) for user_id in case.body["user_ids"]]
        if isinstance(case.body, dict) and isinstance(case.body.get("item_ids"), list):
            case.body["item_ids"] = [known(item_id, KNOWN_ITEMS) for item_id in case.body["item_ids"]]
    case.call_and_validate(base_url=str(live_api.base_url))
