"""als_core.topk against the plain dense computation: the whole score matrix, seen/filtered items set to -inf,
a stable sort by score. Inputs are small integers wherever exactness is asserted, so that every dot product
is exact in float32 whatever the summation order (BLAS blocking, chunk sizes, threads): the blocked kernel
must then return exactly the reference's items, order and scores, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from als_core import ALS
from als_core.topk import score_top_n, top_n


def dense_top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: stable sort of each row by descending score (ties: lower index first), -inf and NaN dropped,
    rows padded with -1 / -inf to min(n, items) columns."""
    n_out = min(n, scores.shape[1])
    ids = np.full((len(scores), n_out), -1, dtype=np.int64)
    best = np.full((len(scores), n_out), -np.inf, dtype=scores.dtype)
    for r, row in enumerate(scores):
        eligible = np.flatnonzero(row > -np.inf)  # NaN compares false: never eligible
        order = eligible[np.lexsort((eligible, -row[eligible].astype(np.float64)))][:n_out]
        ids[r, :len(order)], best[r, :len(order)] = order, row[order]
    return ids, best


def dense_scores(vectors, items, seen: sp.csr_matrix | None, filter_items, offsets) -> np.ndarray:
    scores = vectors @ items.T
    if offsets is not None:
        scores += offsets
    if seen is not None:
        rows = seen.tocoo()
        scores[rows.row, rows.col] = -np.inf
    if filter_items is not None:
        scores[:, filter_items] = -np.inf
    return scores


@st.composite
def scoring_cases(draw):
    """Integer-valued factors (exact scores) shaped to stress the selection: few distinct values (ties
    everywhere, at the cut-off too), duplicated items, zero users, everything seen, n above the items left,
    few items left or none, catalogues on both sides of the column-maxima path, item offsets, float32 and float64."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_users, n_items, k = draw(st.integers(1, 150)), draw(st.integers(1, 900)), draw(st.integers(1, 8))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    spread = draw(st.sampled_from([1, 3, 100]))  # 1: scores in a handful of values
    users = rng.integers(-spread, spread + 1, (n_users, k)).astype(dtype)
    items = rng.integers(-spread, spread + 1, (n_items, k)).astype(dtype)
    kind = draw(st.sampled_from(["plain", "duplicates", "zero_users", "all_seen", "few_left", "dominant"]))
    if kind == "duplicates":
        items = items[rng.integers(0, max(1, n_items // 20), n_items)]
    elif kind == "zero_users":
        users[rng.random(n_users) < 0.5] = 0
    elif kind == "dominant":  # a few items beat everything: the threshold forms from a few columns
        items[rng.integers(0, n_items, 3)] *= 50
    density = draw(st.sampled_from([0.0, 0.05, 0.5]))
    seen = sp.random(n_users, n_items, density=density, format="csr", random_state=rng, dtype=np.float32)
    if kind == "all_seen":
        seen = sp.csr_matrix(np.ones((n_users, n_items), dtype=np.float32) * (rng.random((n_users, 1)) < 0.5))
    elif kind == "few_left":  # fewer unseen items than n, anywhere (the last ones too)
        left = rng.random((n_users, n_items)) < rng.choice([0.002, 0.02], (n_users, 1))
        left[:, -3:] |= rng.random((n_users, min(3, n_items))) < 0.5
        seen = sp.csr_matrix((~left).astype(np.float32))
    filter_items = np.unique(rng.integers(0, n_items, draw(st.integers(0, 5)))) if draw(st.booleans()) else None
    offsets = rng.integers(-3, 4, n_items).astype(dtype) if draw(st.booleans()) else None
    n = draw(st.integers(1, 60))
    chunk = draw(st.sampled_from([None, 1, 7]))
    first_items = draw(st.sampled_from([None, 1, 16, 100]))  # None: the whole catalogue here
    packed = draw(st.sampled_from([None, True, False]))  # None: by the number of users
    return users, items, seen, filter_items, offsets, n, chunk, first_items, packed


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scoring_cases())
def test_blocked_kernel_equals_the_dense_computation(case):
    users, items, seen, filter_items, offsets, n, chunk, first_items, packed = case
    expected = dense_top_n(dense_scores(users, items, seen, filter_items, offsets), n)
    got = score_top_n(users, items, n, seen, filter_items, offsets, chunk=chunk, first_items=first_items,
                      packed=packed)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[1].dtype == users.dtype
    # the dense selection is the same function of the scores
    dense = top_n(dense_scores(users, items, seen, filter_items, offsets), n)
    np.testing.assert_array_equal(dense[0], expected[0])
    np.testing.assert_array_equal(dense[1], expected[1])


@pytest.mark.parametrize("n_items", [1, 50, 2_003, 20_000])
def test_float_scores_agree_with_numpy_up_to_rounding(n_items):
    """Real-valued factors: scores within float32 rounding of numpy's product, and the items the same except
    where two scores are that close (BLAS sums in a shape-dependent order)."""
    rng = np.random.default_rng(n_items)
    users = rng.standard_normal((300, 32)).astype(np.float32)
    items = rng.standard_normal((n_items, 32)).astype(np.float32)
    seen = sp.random(300, n_items, density=0.01, format="csr", random_state=1, dtype=np.float32)
    reference = dense_scores(users, items, seen, None, None)
    expected_ids, expected = dense_top_n(reference, 50)
    ids, scores = score_top_n(users, items, 50, seen)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    exact = dense_scores(users.astype(np.float64), items.astype(np.float64), seen, None, None)
    for row in range(len(users)):
        differ = ids[row] != expected_ids[row]
        # a swap is only allowed between items whose exact scores are within float32 noise of each other
        gap = np.abs(exact[row, ids[row][differ]] - exact[row, expected_ids[row][differ]])
        assert np.all(gap <= 1e-5 * np.abs(exact[row, expected_ids[row][differ]]).max(initial=1))


def test_real_valued_factors_with_masks_and_short_lists_equal_the_dense_computation():
    """The tiled kernel against numpy's dense product: real-valued factors whose norms spread over two orders
    of magnitude (so the large-norm part holds most top items, as in trained models), seen items, a filter,
    users with fewer unseen items than n and a user count that does not fill the last tile. The same lists,
    ties aside: a position may hold another item only between scores within float32 rounding."""
    rng = np.random.default_rng(7)
    n_users, n_items, k, n = 301, 5_000, 48, 50
    users = rng.standard_normal((n_users, k)).astype(np.float32)
    items = (rng.standard_normal((n_items, k)) * rng.pareto(2.0, (n_items, 1))).astype(np.float32)
    seen = sp.random(n_users, n_items, density=0.02, format="lil", random_state=3, dtype=np.float32)
    for row in rng.choice(n_users, 8, replace=False):  # all but a handful of items seen: fewer than n left
        seen[row] = 1
        seen[row, rng.choice(n_items, rng.integers(0, 20), replace=False)] = 0
    seen = sp.csr_matrix(seen)
    seen.eliminate_zeros()
    filter_items = rng.choice(n_items, 30, replace=False)
    reference = dense_scores(users, items, seen, filter_items, None)
    expected_ids, expected = dense_top_n(reference, n)
    ids, scores = score_top_n(users, items, n, seen, filter_items, packed=True)
    np.testing.assert_array_equal(ids < 0, expected_ids < 0)  # short lists padded alike
    assert (ids < 0).any()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-4)
    exact = users.astype(np.float64) @ items.astype(np.float64).T
    for row in range(n_users):
        assert not np.isin(ids[row], np.r_[seen[row].indices, filter_items]).any()
        differ = ids[row] != expected_ids[row]
        gap = np.abs(exact[row, ids[row][differ]] - exact[row, expected_ids[row][differ]])
        assert np.all(gap <= 1e-5 * np.abs(exact[row]).max())


def test_nan_and_inf_scores():
    users = np.array([[1.0], [-1.0], [0.0]], dtype=np.float32)
    items = np.array([[np.nan], [2.0], [np.inf], [1.0], [-np.inf]] * 200, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        expected = dense_top_n(users @ items.T, 10)
    for packed in (False, True):
        got = score_top_n(users, items, 10, packed=packed)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    assert not np.isin(got[0][0], np.arange(0, 1000, 5)).any()  # the NaN items
    np.testing.assert_array_equal(got[0][0][:3], [2, 7, 12])  # +inf first, in index order
    assert set(got[0][2] % 5) == {1, 3}  # 0 * inf and 0 * nan are NaN: only the zeros remain


@pytest.mark.parametrize("values", [1000, 3, 1], ids=["distinct", "few values", "one value"])
def test_selection_ranks_few_candidates_and_inserts_many_ties_the_same_way(values):
    """A row's candidates (the entries at or above its threshold) are ranked against each other when they are
    few, and inserted one by one when ties at the threshold make them more than 4n (1 value: every item ties):
    both give the dense reference's order, ties by the lower index."""
    rng = np.random.default_rng(values)
    scores = rng.integers(0, values, (64, 3000)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.01] = -np.inf
    for n in (1, 10, 50):
        ids, best = top_n(scores, n)
        expected_ids, expected_best = dense_top_n(scores, n)
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_array_equal(best, expected_best)


def test_als_recommend_uses_the_item_biases_and_filters():
    """Explicit ALS with biases ranks by x.y + b_i; recommend, recommend_all and the dense reference agree."""
    rng = np.random.default_rng(3)
    model = ALS(factors=4, implicit=False, use_biases=True)
    model.user_factors = rng.integers(-3, 4, (90, 4)).astype(np.float32)
    model.item_factors = rng.integers(-3, 4, (3_000, 4)).astype(np.float32)
    model.user_bias = rng.integers(-3, 4, 90).astype(np.float32)
    model.item_bias = rng.integers(-9, 10, 3_000).astype(np.float32)
    seen = sp.random(90, 3_000, density=0.02, format="csr", random_state=2, dtype=np.float32)
    expected = dense_top_n(dense_scores(model.user_factors, model.item_factors, seen, [5, 7], model.item_bias), 25)
    ids, scores = model.recommend(np.arange(90), seen, N=25, filter_items=[5, 7])
    np.testing.assert_array_equal(ids, expected[0])
    np.testing.assert_array_equal(scores, expected[1])
    all_ids, _ = model.recommend_all(seen, N=25, batch_size=11, filter_items=[5, 7])
    np.testing.assert_array_equal(all_ids, expected[0])


def test_shapes_and_validation():
    users = np.ones((3, 2), dtype=np.float32)
    items = np.ones((5, 2), dtype=np.float32)
    ids, scores = score_top_n(users, items, 9)
    assert ids.shape == scores.shape == (3, 5)
    np.testing.assert_array_equal(ids[0], np.arange(5))  # all tied: index order
    assert score_top_n(users[:0], items, 3)[0].shape == (0, 3)
    with pytest.raises(ValueError, match="factors"):
        score_top_n(users, np.ones((5, 3), dtype=np.float32), 2)
    with pytest.raises(ValueError, match="excluded"):
        score_top_n(users, items, 2, sp.csr_matrix((2, 5)))
