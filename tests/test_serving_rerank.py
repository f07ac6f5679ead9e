"""GET /recommendations/{user_id}?explain=true and POST /recommendations/{user_id}/rerank against the app under a
real uvicorn server on 127.0.0.1 (a saved bundle, fold-in events in a real DuckDB file): explanations equal
ALS.explain on the served factors, re-ranked candidates equal the dense computation, for known, folded-in and
unknown users and for a popularity champion."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp

from serving.config import ServingConfig
from test_serving_api import items_of, serving, trained_bundle, wait_for
from test_serving_fold_in import write_events

MAX_N, MAX_BATCH = 40, 30
NEW_USER = "777777"
BUNDLE = trained_bundle(seed=4, factors=6)  # users 1000..1079, items 5000..5059, window to 2026-01-10
NEW_USER_EVENTS = {5003: 3.0, 5007: 40.0 + 3.0, 5011: 10.0}  # view, purchase + view, cart (default weights)


def config(root, bundle) -> ServingConfig:
    bundle.save(root / "bundle")
    return ServingConfig(model_name="rerank", tracking_uri=f"sqlite:///{root / 'unused.db'}",
                         duckdb_path=root / "warehouse.duckdb", bundle_dir=root / "bundle", poll_seconds=60,
                         fold_in_refresh_seconds=0.2, max_n=MAX_N, max_batch=MAX_BATCH)


def start(root, bundle):
    write_events(root / "warehouse.duckdb", [
        (NEW_USER, "5003", "view", "2026-01-11 08:00:00"), (NEW_USER, "5007", "purchase", "2026-01-11 08:05:00"),
        (NEW_USER, "5007", "view", "2026-01-11 09:00:00"), (NEW_USER, "5011", "cart", "2026-01-12 10:00:00")])
    return serving(config(root, bundle))


def ready(client, new_user_source: str):
    deadline = time.monotonic() + 30
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/ready").json()
        time.sleep(0.05)
    wait_for(lambda: client.get(f"/recommendations/{NEW_USER}").json()["source"] == new_user_source, 20,
             "the fold-in snapshot")
    return client


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with start(tmp_path_factory.mktemp("rerank"), BUNDLE) as client:
        yield ready(client, "fold_in")


@pytest.fixture(scope="module")
def popularity_api(tmp_path_factory):
    with start(tmp_path_factory.mktemp("rerank-popularity"), BUNDLE.as_popularity()) as client:
        yield ready(client, "popularity")


def known_user(rank: int = 0) -> tuple[int, int]:
    """(external id, row) of a user with many training items."""
    row = int(np.argsort(-np.diff(BUNDLE.seen.indptr), kind="stable")[rank])
    return int(BUNDLE.user_ids[row]), row


def new_user_row():
    index = BUNDLE.items.lookup(list(NEW_USER_EVENTS))
    row = np.zeros((1, len(BUNDLE.item_ids)), np.float32)
    row[0, index] = list(NEW_USER_EVENTS.values())
    return row


def check_explanation(body: dict, interactions, served_scores_are_explained: bool) -> None:
    model = BUNDLE.model
    explanation = body["explanation"]
    assert explanation["method"] == "contributions"
    assert [e["item_id"] for e in explanation["items"]] == items_of(body)
    own_items = set(BUNDLE.item_ids[sp.csr_matrix(interactions).indices].tolist())
    for entry, served in zip(explanation["items"], body["recommendations"]):
        index = int(BUNDLE.items.lookup([entry["item_id"]])[0])
        total, top, _ = model.explain(None, interactions, index, N=5)
        assert entry["explained_score"] == pytest.approx(total, rel=1e-6, abs=1e-9)
        assert [c["item_id"] for c in entry["because"]] == BUNDLE.item_ids[[j for j, _ in top]].tolist()
        assert {c["item_id"] for c in entry["because"]} <= own_items
        np.testing.assert_allclose([c["contribution"] for c in entry["because"]], [s for _, s in top], rtol=1e-6)
        for c in entry["because"]:
            assert c["share"] == pytest.approx(c["contribution"] / total)
        assert entry["other_share"] + sum(c["share"] for c in entry["because"]) == pytest.approx(1.0)
        if served_scores_are_explained:
            assert entry["explained_score"] == pytest.approx(served["score"], rel=1e-4, abs=1e-5)


def test_explain_splits_a_known_users_scores_over_their_training_items(api):
    user, row = known_user()
    plain = api.get(f"/recommendations/{user}", params={"n": 8}).json()
    body = api.get(f"/recommendations/{user}", params={"n": 8, "explain": "true"}).json()
    assert "explanation" not in plain and body["source"] == "als"
    assert {k: v for k, v in body.items() if k != "explanation"} == plain  # the same list, with the why added
    check_explanation(body, BUNDLE.seen[row], served_scores_are_explained=False)
    assert "training interactions" in body["explanation"]["note"]


def test_explain_of_a_folded_in_user_splits_exactly_the_served_score(api):
    body = api.get(f"/recommendations/{NEW_USER}", params={"n": 6, "explain": True}).json()
    assert body["source"] == "fold_in" and len(body["recommendations"]) == 6
    check_explanation(body, new_user_row(), served_scores_are_explained=True)
    for entry in body["explanation"]["items"]:
        assert {c["item_id"] for c in entry["because"]} == set(NEW_USER_EVENTS)  # 3 items, all listed
        assert entry["other_share"] == pytest.approx(0.0, abs=1e-9)


def test_explain_for_users_the_model_cannot_score_says_what_the_list_is(api, popularity_api):
    stranger = api.get("/recommendations/nobody", params={"n": 4, "explain": "true"}).json()
    assert stranger["source"] == "popularity" and len(stranger["recommendations"]) == 4
    assert stranger["explanation"]["method"] == "popularity" and stranger["explanation"]["items"] == []
    assert "does not know this user" in stranger["explanation"]["note"]
    user, _ = known_user()
    champion = popularity_api.get(f"/recommendations/{user}", params={"explain": "true"}).json()
    assert champion["source"] == "popularity" and "popularity model" in champion["explanation"]["note"]
    assert api.get(f"/recommendations/{user}", params={"explain": "maybe"}).status_code == 422


def dense_ranking(vector: np.ndarray, candidates: list[int]) -> tuple[list[int], np.ndarray]:
    """The reference: x_u . y_i of each candidate item (external ids), best first."""
    index = BUNDLE.items.lookup(candidates)
    scores = BUNDLE.model.item_factors[index].astype(np.float64) @ vector.astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    return [candidates[o] for o in order], scores[order]


def test_rerank_orders_a_known_users_candidates_by_their_dense_scores(api):
    user, row = known_user(1)
    seen = BUNDLE.item_ids[BUNDLE.seen[row].indices].tolist()
    fresh = [int(i) for i in BUNDLE.item_ids if i not in seen][:12]
    candidates = [fresh[0], "nope", seen[0], *fresh[1:], str(fresh[2]), 424242, "nope", seen[1]]
    body = api.post(f"/recommendations/{user}/rerank", json={"item_ids": candidates}).json()
    assert body["source"] == "als" and body["user_id"] == str(user)
    assert body["unknown"] == ["nope", 424242] and body["seen"] == [seen[0], seen[1]]
    ref_ids, ref_scores = dense_ranking(BUNDLE.model.user_factors[row], fresh)
    assert items_of({"recommendations": body["ranked"]}) == ref_ids
    np.testing.assert_allclose([e["score"] for e in body["ranked"]], ref_scores, rtol=1e-5, atol=1e-6)

    top = api.post(f"/recommendations/{user}/rerank", json={"item_ids": candidates, "n": 3.0}).json()
    assert top["ranked"] == body["ranked"][:3]
    everything = api.post(f"/recommendations/{user}/rerank",
                          json={"item_ids": candidates, "exclude_seen": False}).json()
    ref_ids, _ = dense_ranking(BUNDLE.model.user_factors[row], fresh + seen[:2])
    assert everything["seen"] == [] and items_of({"recommendations": everything["ranked"]}) == ref_ids


def test_rerank_folds_a_new_user_in_and_ranks_strangers_by_popularity(api):
    candidates = [5003, 5020, 5021, 5040, 5059, 5007, 5001]
    body = api.post(f"/recommendations/{NEW_USER}/rerank", json={"item_ids": candidates}).json()
    assert body["source"] == "fold_in" and body["seen"] == [5003, 5007]
    vector = BUNDLE.model.recalculate_user(new_user_row())[0]
    ref_ids, ref_scores = dense_ranking(vector, [5020, 5021, 5040, 5059, 5001])
    assert items_of({"recommendations": body["ranked"]}) == ref_ids
    np.testing.assert_allclose([e["score"] for e in body["ranked"]], ref_scores, rtol=1e-4, atol=1e-5)

    stranger = api.post("/recommendations/nobody/rerank", json={"item_ids": candidates}).json()
    assert stranger["source"] == "popularity" and stranger["seen"] == []
    order = [int(i) for i in BUNDLE.item_ids[BUNDLE.popularity.ranking] if int(i) in candidates]
    assert items_of({"recommendations": stranger["ranked"]}) == order
    scores = BUNDLE.popularity.item_scores[BUNDLE.items.lookup(order)]
    assert [e["score"] for e in stranger["ranked"]] == scores.tolist()


def test_rerank_under_a_popularity_champion_leaves_a_known_users_items_out(popularity_api):
    user, row = known_user()
    seen = BUNDLE.item_ids[BUNDLE.seen[row].indices].tolist()
    candidates = [int(i) for i in BUNDLE.item_ids[::3]]
    body = popularity_api.post(f"/recommendations/{user}/rerank", json={"item_ids": candidates}).json()
    assert body["source"] == "popularity"
    assert body["seen"] == [c for c in candidates if c in seen]
    order = [int(i) for i in BUNDLE.item_ids[BUNDLE.popularity.ranking] if int(i) in candidates and i not in seen]
    assert items_of({"recommendations": body["ranked"]}) == order


@pytest.mark.parametrize("body", [
    {"item_ids": []}, {"item_ids": list(range(MAX_BATCH + 1))}, {"item_ids": [1], "n": 0},
    {"item_ids": [1], "n": MAX_BATCH + 1}, {"item_ids": [1], "n": 2.5}, {"item_ids": [1], "exclude_seen": 1},
    {"item_ids": [1], "extra": True}, {"item_ids": ["bad id"]}, {"n": 3},
])
def test_rerank_refuses_what_the_document_refuses(api, body):
    response = api.post("/recommendations/1001/rerank", json=body)
    assert response.status_code == 422, response.text[:300]
    assert all(set(error) == {"loc", "msg", "type"} for error in response.json()["detail"])
