"""Property-based run over the API's own OpenAPI document (schemathesis-style, with hypothesis): for every
operation, path/query/body values are drawn from the parameter schemas (and, half of the time, anything at
all). No request may produce a 5xx; a schema-valid request gets a documented status and a body that matches
the documented response model."""

from __future__ import annotations

import math
import time
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import schemas
from serving.app import create_app
from serving.config import ServingConfig
from serving.model_source import BundleDirSource
from test_serving_scoring import random_bundle

MAX_N, MAX_BATCH = 30, 25
RESPONSE_MODELS = {
    ("get", "/recommendations/{user_id}"): schemas.RecommendationsResponse,
    ("post", "/recommendations/batch"): schemas.BatchResponse,
    ("get", "/similar-items/{item_id}"): schemas.SimilarItemsResponse,
    ("get", "/health"): schemas.HealthResponse,
    ("get", "/ready"): schemas.ReadyResponse,
    ("get", "/model"): schemas.ModelInfo,
}
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8)
ANY_TEXT = st.text(max_size=200) | st.integers().map(str) | st.floats().map(str)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("openapi")
    bundle = random_bundle(60, 80, 6, 0.1, seed=11)
    directory = bundle.save(root / "bundle")
    config = ServingConfig(model_name="fuzz", tracking_uri=f"sqlite:///{root / 'unused.db'}",
                           duckdb_path=root / "warehouse.duckdb", bundle_dir=directory, poll_seconds=60,
                           max_n=MAX_N, max_batch=MAX_BATCH, fold_in=False)
    app = create_app(config, BundleDirSource(directory))
    with TestClient(app, raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.05)
        yield client, app.openapi(), bundle


def resolve(schema: dict, document: dict) -> dict:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def valid_values(schema: dict, document: dict, known: list) -> st.SearchStrategy:
    """Values satisfying ``schema`` (the JSON-schema subset FastAPI emits here)."""
    schema = resolve(schema, document)
    if "anyOf" in schema:
        return st.one_of([valid_values(option, document, known) for option in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum")) | st.sampled_from(known)
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength", 300)
        text = st.from_regex(schema["pattern"], fullmatch=True) if "pattern" in schema else st.text(max_size=high)
        return (text.filter(lambda s: low <= len(s) <= high)
                | st.sampled_from([str(k) for k in known]).filter(lambda s: low <= len(s) <= high))
    if kind == "array":
        return st.lists(valid_values(schema["items"], document, known), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 10), 10))
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {key: valid_values(value, document, known) for key, value in properties.items() if key in required},
            optional={key: valid_values(value, document, known) for key, value in properties.items()
                      if key not in required})
    raise AssertionError(f"schema the generator does not know: {schema}")


@st.composite
def requests(draw, document: dict, known_users: list, known_items: list):
    """(method, path template, url, query, json body or None, whether everything drawn was schema-valid)."""
    operations = [(method, path, op) for path, item in document["paths"].items() for method, op in item.items()]
    method, template, operation = draw(st.sampled_from(operations))
    known = known_items if "item" in template else known_users
    valid = True
    url, query = template, {}
    for parameter in operation.get("parameters", []):
        if draw(st.booleans()):
            value = draw(valid_values(parameter["schema"], document, known))
        else:
            value, valid = draw(ANY_TEXT), False
        if parameter["in"] == "path":
            url = url.replace("{" + parameter["name"] + "}", quote(str(value), safe=""))
        elif parameter["required"] or draw(st.booleans()):
            query[parameter["name"]] = str(value)
    body = None
    if "requestBody" in operation:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        if draw(st.booleans()):
            body = draw(valid_values(schema, document, known))
        else:
            body, valid = draw(ANY_JSON), False
    return method, template, url, query, body, valid


def check_body(template: str, payload: dict, query: dict, body) -> None:
    n = int(query.get("n", 10)) if template != "/recommendations/batch" else body.get("n", 10)
    lists = ([payload["recommendations"]] if "recommendations" in payload
             else [r["recommendations"] for r in payload.get("results", [])]
             + ([payload["similar_items"]] if "similar_items" in payload else []))
    for entries in lists:
        scores = [entry["score"] for entry in entries]
        assert len(entries) <= n and all(math.isfinite(s) for s in scores)
        assert scores == sorted(scores, reverse=True)


def test_openapi_document_lists_the_contract(api):
    _, document, _ = api
    assert set(document["paths"]) == {p for _, p in RESPONSE_MODELS}
    n = next(p for p in document["paths"]["/recommendations/{user_id}"]["get"]["parameters"] if p["name"] == "n")
    assert (n["schema"]["minimum"], n["schema"]["maximum"]) == (1, MAX_N)
    batch = resolve(document["components"]["schemas"]["BatchRequest"], document)
    assert batch["properties"]["user_ids"]["maxItems"] == MAX_BATCH
    for (method, path), model in RESPONSE_MODELS.items():
        ok = document["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"].endswith("/" + model.__name__), (path, ok)


def test_no_request_drawn_from_the_openapi_document_gets_a_5xx(api):
    client, document, bundle = api
    users = [int(u) for u in bundle.user_ids[:20]]
    items = [int(i) for i in bundle.item_ids[:20]]

    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture])
    @given(request=requests(document, users, items))
    def run(request):
        method, template, url, query, body, valid = request
        response = client.request(method.upper(), url, params=query, json=body)
        assert response.status_code < 500, (method, url, query, body, response.text)
        if not valid:
            return
        documented = {int(code) for code in document["paths"][template][method]["responses"]}
        # a valid id may still contain '/' or be '.'/'..', which change the route after percent-decoding
        assert response.status_code in documented | {404, 405}, (url, query, body, response.text)
        if response.status_code == 200:
            payload = RESPONSE_MODELS[(method, template)].model_validate(response.json()).model_dump()
            check_body(template, payload, query, body)

    run()
