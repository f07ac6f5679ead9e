"""ModelBundle: persistence, the serving decision (ALS / popularity / fold-in) and holdout evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from als_core import ALS
from als_core.bundle import ModelBundle, evaluate_on_holdout
from als_core.diversity import item_popularity
from als_core.metrics import evaluate_ranking


def planted_user_items(n_users=120, n_items=40, seed=0) -> sp.csr_matrix:
    """Two taste groups: users of group g mostly use items of group g."""
    rng = np.random.default_rng(seed)
    group_u = np.arange(n_users) % 2
    group_i = np.arange(n_items) % 2
    p = np.where(group_u[:, None] == group_i[None, :], 0.35, 0.02)
    return sp.csr_matrix((rng.random((n_users, n_items)) < p).astype(np.float32))


@pytest.fixture(scope="module")
def bundle():
    train = planted_user_items()
    model = ALS(factors=4, iterations=8, regularization=0.1, alpha=10, solver="cholesky", random_state=0).fit(train)
    user_ids = np.array([f"u{i}" for i in range(train.shape[0])])
    item_ids = np.arange(1000, 1000 + train.shape[1], dtype=np.int64)
    return ModelBundle.build(model, user_ids, item_ids, train, {"trained_at": "2026-01-01"}), train


def test_save_load_round_trip(bundle, tmp_path):
    b, _ = bundle
    b.save(tmp_path / "bundle")
    loaded = ModelBundle.load(tmp_path / "bundle")
    assert loaded.metadata == {"trained_at": "2026-01-01"}
    np.testing.assert_array_equal(loaded.user_ids, b.user_ids)
    np.testing.assert_array_equal(loaded.item_ids, b.item_ids)
    a = b.recommend_many(["u3", "nobody"], n=5)
    c = loaded.recommend_many(["u3", "nobody"], n=5)
    np.testing.assert_array_equal(a.item_index, c.item_index)
    for name in ("ids.npz", "seen.npz", "popularity.npz", "als.npz"):
        with np.load(tmp_path / "bundle" / name, allow_pickle=False) as data:
            assert all(data[f].dtype != object for f in data.files)


def test_known_users_get_als_without_seen_items_unknown_get_popularity(bundle):
    b, train = bundle
    recs = b.recommend_many(["u4", "stranger", "u5"], n=5)
    assert recs.sources.tolist() == ["als", "popularity", "als"]
    seen_u4 = set(b.item_ids[train[4].indices])
    items_u4, _ = recs.items_of(0)
    assert not seen_u4 & set(items_u4)
    # the planted structure: user 4 (group 0) is recommended mostly even (group 0) items
    assert np.mean((items_u4 - 1000) % 2 == 0) >= 0.8
    popular = b.item_ids[b.popularity.recommend(0, None, N=5, filter_already_liked_items=False)[0]]
    np.testing.assert_array_equal(recs.items_of(1)[0], popular)


def test_integer_ids_found_from_strings(bundle):
    b, _ = bundle
    index = b.items.lookup(["1003", 1004, "x", 3.5, 99])
    assert index.tolist() == [3, 4, -1, -1, -1]


def test_fold_in_serves_a_new_user_from_their_events(bundle):
    b, _ = bundle
    odd_items = b.item_ids[1::2][:6]
    items, scores, source = b.fold_in(odd_items, n=5)
    assert source == "fold_in"
    assert not set(items) & set(odd_items)
    assert np.mean((items - 1000) % 2 == 1) >= 0.8
    assert np.all(np.diff(scores) <= 0)
    _, _, source = b.fold_in([424242], n=5)
    assert source == "popularity"


def test_similar_items(bundle):
    b, _ = bundle
    items, _ = b.similar_items(1002, n=4)
    assert 1002 not in items and len(items) == 4
    with pytest.raises(KeyError):
        b.similar_items(5, n=3)


def test_evaluate_on_holdout_matches_direct_metrics(bundle):
    b, train = bundle
    rng = np.random.default_rng(1)
    users = np.array([f"u{u}" for u in rng.integers(0, 120, 300)] + ["newcomer", "newcomer"])
    items = np.concatenate([rng.integers(1000, 1040, 300), [1001, 5555]])  # 5555: unknown to the model
    result = evaluate_on_holdout(b, users, items, k=10)
    assert result["users_fallback"] == 1
    # direct computation over the same pairs, unknown item as an extra column
    unique_users = np.unique(users)
    recs = b.recommend_many(unique_users, n=10)
    cols = {int(i): int(i) - 1000 for i in range(1000, 1040)}
    cols[5555] = 40
    rows = {u: r for r, u in enumerate(unique_users)}
    test = sp.csr_matrix((np.ones(len(users)), ([rows[u] for u in users], [cols[int(i)] for i in items])),
                         shape=(len(unique_users), 41))
    test.data[:] = 1
    direct = evaluate_ranking(recs.item_index, test, n_items=41, k=10)
    assert result["ndcg@10"] == pytest.approx(direct["ndcg@10"])
    assert result["recall@10"] == pytest.approx(direct["recall@10"])
    popularity = evaluate_on_holdout(b, users, items, k=10, strategy="popularity")
    assert result["ndcg@10"] > popularity["ndcg@10"], "planted structure: ALS beats popularity"


def test_bundle_rejects_mismatched_id_maps(bundle):
    b, train = bundle
    with pytest.raises(ValueError, match="id maps"):
        ModelBundle.build(b.model, b.user_ids[:-1], b.item_ids, train[:-1])
    with pytest.raises(ValueError, match="unique"):
        ModelBundle.build(b.model, np.zeros(len(b.user_ids), dtype=np.int64), b.item_ids, train)


def test_evaluate_on_holdout_reports_beyond_accuracy(bundle):
    b, _ = bundle
    users = np.array(["u1", "u2", "u3", "stranger"])
    items = np.array([1001, 1002, 1003, 1004])
    model = evaluate_on_holdout(b, users, items, k=5)
    popularity = evaluate_on_holdout(b, users, items, k=5, strategy="popularity")
    for key in ("coverage@5", "entropy@5", "novelty@5", "popular_share@5"):
        assert key in model and 0 <= model[key]
    # popularity sends every recommendation to the head of the catalogue; ALS spreads them
    assert popularity["popular_share@5"] > model["popular_share@5"]
    assert popularity["novelty@5"] < model["novelty@5"]
    # judged against the bundle's training popularity, counted once for both
    np.testing.assert_array_equal(b.item_popularity, item_popularity(b.seen))
    assert b.item_popularity is b.item_popularity


def test_ids_and_scores_have_the_same_length_when_the_catalogue_runs_out(bundle):
    b, _ = bundle
    items, scores = b.similar_items(1002, n=1000)
    assert len(items) == len(scores) == len(b.item_ids) - 1 and np.all(np.isfinite(scores))
    items, scores, _ = b.fold_in(b.item_ids[:5], n=1000)
    assert len(items) == len(scores) == len(b.item_ids) - 5


def test_id_index_takes_integer_arrays_as_they_are():
    from als_core.bundle import IdIndex

    index = IdIndex(np.array([7, -3, 123456789012], dtype=np.int64))
    np.testing.assert_array_equal(index.lookup(np.array([123456789012, 7, 8, -3], dtype=np.int64)),
                                  [2, 0, -1, 1])
    np.testing.assert_array_equal(index.lookup(np.array([7, 9], dtype=np.int16)), [0, -1])
    np.testing.assert_array_equal(index.lookup(np.array(["7", "x"])), [0, -1])  # text still parsed


@pytest.mark.parametrize("ids", [[5, 1, 9, 1], ["b", "a", "b"], [3, 3]])
def test_id_index_rejects_repeated_ids(ids):
    from als_core.bundle import IdIndex

    with pytest.raises(ValueError, match="unique"):
        IdIndex(np.array(ids))
    IdIndex(np.array(sorted(set(ids))))  # the same ids once each are fine


def test_the_weighting_round_trips_and_a_bundle_without_one_gets_the_defaults(bundle, tmp_path):
    """The weighting that trained a model travels in bundle.json (fold-in in the API weighs new users with it);
    its popularity bundle keeps it; a bundle.json without one loads with the defaults (3/10/40, no decay)."""
    import json

    from als_core.weighting import DEFAULT_WEIGHTING, EventWeighting

    b, train = bundle
    weighting = EventWeighting(view_weight=1.0, cart_weight=4.5, purchase_weight=12.0, half_life_days=7.0)
    weighted = ModelBundle.build(b.model, b.user_ids, b.item_ids, train, weighting=weighting)
    loaded = ModelBundle.load(weighted.save(tmp_path / "weighted"))
    assert loaded.weighting == weighting
    assert json.loads((tmp_path / "weighted" / "bundle.json").read_text())["weighting"] == {
        "view_weight": 1.0, "cart_weight": 4.5, "purchase_weight": 12.0, "half_life_days": 7.0}
    popularity = ModelBundle.load(loaded.as_popularity().save(tmp_path / "popularity"))
    assert popularity.weighting == weighting

    b.save(tmp_path / "plain")
    assert ModelBundle.load(tmp_path / "plain").weighting == DEFAULT_WEIGHTING
    info = json.loads((tmp_path / "plain" / "bundle.json").read_text())
    del info["weighting"]
    (tmp_path / "plain" / "bundle.json").write_text(json.dumps(info))
    assert ModelBundle.load(tmp_path / "plain").weighting == EventWeighting(3.0, 10.0, 40.0, 0.0)


@pytest.mark.parametrize("field", ["view_weight", "cart_weight", "purchase_weight", "half_life_days"])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_a_weighting_refuses_negative_or_non_finite_values(field, value):
    from als_core.weighting import EventWeighting

    with pytest.raises(ValueError, match=field):
        EventWeighting(**{field: value})
    with pytest.raises(TypeError):
        EventWeighting.from_dict({"view_weigth": 1.0})  # a misspelt field is an error, not a default
