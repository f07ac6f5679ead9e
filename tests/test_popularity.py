"""PopularityRecommender: ordering, filtering, the implicit-style recommend contract, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from als_core.popularity import PopularityRecommender

# items: 0 -> 2 users (weight 2), 1 -> 3 users, 2 -> 2 users (weight 5), 3 -> 0 users, 4 -> 1 user
DENSE = np.array(
    [
        [1, 1, 0, 0, 0],
        [0, 1, 4, 0, 0],
        [1, 1, 1, 0, 1],
        [0, 0, 0, 0, 0],
    ],
    dtype=np.float32,
)
USER_ITEMS = sp.csr_matrix(DENSE)
ORDER = [1, 2, 0, 4, 3]  # users desc, then weight desc (2 beats 0), then index


@pytest.fixture
def model() -> PopularityRecommender:
    return PopularityRecommender().fit(USER_ITEMS)


def test_fit_counts_distinct_users(model):
    assert model.n_items == 5
    assert model.item_scores.dtype == np.float32
    np.testing.assert_array_equal(model.item_scores, [2, 3, 2, 0, 1])
    # duplicates and explicit zeros do not add users
    coo = sp.coo_matrix(([1.0, 1.0, 0.0], ([0, 0, 1], [1, 1, 0])), shape=(2, 2))
    np.testing.assert_array_equal(PopularityRecommender().fit(coo).item_scores, [0, 1])


def test_unfiltered_ranking_and_ties(model):
    ids, scores = model.recommend(0, None, N=5, filter_already_liked_items=False)
    assert ids.tolist() == ORDER
    np.testing.assert_array_equal(scores, [3, 2, 2, 1, 0])
    assert ids.dtype == np.int64 and scores.dtype == np.float32


def test_filters_seen_and_listed_items(model):
    ids, _ = model.recommend(1, USER_ITEMS, N=3)
    assert ids.tolist() == [0, 4, 3]  # user 1 saw 1 and 2
    ids, _ = model.recommend(1, USER_ITEMS, N=3, filter_items=[4])
    assert ids.tolist() == [0, 3, -1]
    ids, scores = model.recommend(3, USER_ITEMS, N=2, filter_already_liked_items=False, filter_items=np.array([1]))
    assert ids.tolist() == [2, 0]


def test_array_of_users_and_row_selection(model):
    ids, scores = model.recommend(np.array([2, 0]), USER_ITEMS, N=2)
    assert ids.shape == scores.shape == (2, 2)
    assert ids.tolist() == [[3, -1], [2, 4]]  # user 2 saw 4 of 5 items: padding
    assert scores[0, 1] == -np.inf
    # the same users' rows given directly (one row per requested user)
    again, _ = model.recommend(np.array([2, 0]), USER_ITEMS[[2, 0]], N=2)
    np.testing.assert_array_equal(again, ids)


def test_n_larger_than_catalog(model):
    ids, scores = model.recommend(3, USER_ITEMS, N=50)
    assert ids.tolist() == ORDER
    ids, scores = model.recommend(0, USER_ITEMS, N=50)
    assert ids.tolist() == [2, 4, 3, -1, -1]
    assert np.isneginf(scores[3:]).all()


def test_matches_dense_reference():
    rng = np.random.default_rng(0)
    m = sp.random(300, 60, density=0.1, format="csr", random_state=1)
    m.data = rng.integers(1, 3, m.nnz).astype(np.float32)  # many ties in users and in weight
    model = PopularityRecommender().fit(m)
    users_per_item = (m.toarray() > 0).sum(axis=0)
    weight = m.toarray().sum(axis=0)
    ranking = sorted(range(60), key=lambda i: (-users_per_item[i], -weight[i], i))
    user_ids = rng.permutation(300)[:50]
    blocked = np.array([ranking[0], ranking[5]])
    ids, scores = model.recommend(user_ids, m, N=8, filter_items=blocked)
    for row, u in zip(ids, user_ids):
        seen = set(m[u].indices.tolist()) | set(blocked.tolist())
        assert row.tolist() == [i for i in ranking if i not in seen][:8]
    np.testing.assert_array_equal(scores, users_per_item[ids].astype(np.float32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"N": 0}, "N must"),
        ({"user_items": sp.csr_matrix((4, 6))}, "columns"),
        ({"user_items": None}, "required"),
        ({"user_items": DENSE}, "sparse"),
        ({"filter_items": [7]}, "filter_items"),
        ({"userid": np.array([0, 9])}, "out of range"),
    ],
)
def test_invalid_arguments(model, kwargs, match):
    args = {"userid": 0, "user_items": USER_ITEMS, "N": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        model.recommend(args.pop("userid"), args.pop("user_items"), **args)


def test_unfitted_model_refuses(tmp_path):
    with pytest.raises(ValueError, match="fit"):
        PopularityRecommender().recommend(0, USER_ITEMS)
    with pytest.raises(ValueError, match="fit"):
        PopularityRecommender().save(tmp_path / "m.npz")


@pytest.mark.parametrize("name", ["model.npz", "model"])
def test_save_load_round_trip(model, tmp_path, name):
    model.save(tmp_path / name)
    loaded = PopularityRecommender.load(tmp_path / name)
    assert loaded.n_items == model.n_items
    np.testing.assert_array_equal(loaded.item_scores, model.item_scores)
    for a, b in zip(loaded.recommend([0, 1], USER_ITEMS, N=4), model.recommend([0, 1], USER_ITEMS, N=4)):
        np.testing.assert_array_equal(a, b)
