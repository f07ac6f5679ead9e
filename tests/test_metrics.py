"""Ranking and rating metrics: hand-computed cases, a slow per-user reference, and implicit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from als_core import metrics as M


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    dense = np.zeros((len(rows), n_items), dtype=np.float32)
    for r, items in enumerate(rows):
        dense[r, items] = 1.0
    return sp.csr_matrix(dense)


# --------------------------------------------------------------------------- hand-computed

# row 0: test {1, 3}, hit at rank 2; row 1: no test items (excluded), padded;
# row 2: test {1}, hit at rank 1. k = 3, 6 items.
RECOMMENDED = np.array([[0, 1, 2], [3, 4, -1], [1, 0, 2]])
TEST = _csr([[1, 3], [], [1]], 6)
L3 = 1 / math.log2(3)


def test_hand_computed_example():
    got = M.evaluate_ranking(RECOMMENDED, TEST, n_items=6, k=3)
    assert got["ndcg@3"] == pytest.approx((L3 / (1 + L3) + 1.0) / 2)
    assert got["hit_rate@3"] == pytest.approx(1.0)
    assert got["precision@3"] == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert got["recall@3"] == pytest.approx((1 / 2 + 1) / 2)
    assert got["map@3"] == pytest.approx(((1 / 2) / 2 + 1.0) / 2)
    assert got["coverage@3"] == pytest.approx(5 / 6)
    assert got["users_evaluated"] == 2 and isinstance(got["users_evaluated"], int)
    assert set(got) == {"ndcg@3", "hit_rate@3", "precision@3", "recall@3", "map@3", "coverage@3", "users_evaluated"}


def test_single_functions_agree_with_evaluate_ranking():
    got = M.evaluate_ranking(RECOMMENDED, TEST, n_items=6, k=3)
    assert M.ndcg_at_k(RECOMMENDED, TEST, 3) == got["ndcg@3"]
    assert M.hit_rate_at_k(RECOMMENDED, TEST, 3) == got["hit_rate@3"]
    assert M.precision_at_k(RECOMMENDED, TEST, 3) == got["precision@3"]
    assert M.recall_at_k(RECOMMENDED, TEST, 3) == got["recall@3"]
    assert M.map_at_k(RECOMMENDED, TEST, 3) == got["map@3"]
    assert M.coverage_at_k(RECOMMENDED, 6, 3) == got["coverage@3"]


def test_only_first_k_columns_count():
    # the hit of row 0 sits at rank 2: invisible at k=1
    assert M.hit_rate_at_k(RECOMMENDED, TEST, k=1) == pytest.approx(0.5)
    assert M.coverage_at_k(RECOMMENDED, 6, k=1) == pytest.approx(3 / 6)


def test_k_larger_than_catalog_with_clipped_recommendations():
    # top_n clips N to the catalog: 3 items, k=10 gives 3 columns
    rec = np.array([[0, 2, 1], [2, -1, -1]])
    test = _csr([[2], [2]], 3)
    got = M.evaluate_ranking(rec, test, n_items=3, k=10)
    assert got["ndcg@10"] == pytest.approx((L3 + 1.0) / 2)
    assert got["precision@10"] == pytest.approx(1 / 10)
    assert got["recall@10"] == pytest.approx(1.0)
    assert got["coverage@10"] == pytest.approx(1.0)


def test_too_few_columns_for_k_is_an_error():
    with pytest.raises(ValueError, match="fewer than k"):
        M.ndcg_at_k(np.array([[0, 1]]), _csr([[1]], 5), k=3)


def test_padding_is_never_a_hit_and_repeats_count_once():
    test = _csr([[0, 4]], 5)
    assert M.precision_at_k(np.array([[-1, -1, -1]]), test, 3) == 0.0
    assert M.precision_at_k(np.array([[4, 4, 4]]), test, 3) == pytest.approx(1 / 3)
    assert M.ndcg_at_k(np.array([[4, 4, 0]]), test, 3) <= 1.0


def test_perfect_ranking_scores_one():
    test = _csr([[3, 1, 4, 0], [2]], 6)
    rec = np.array([[0, 1, 3], [2, 5, 4]])
    got = M.evaluate_ranking(rec, test, n_items=6, k=3)
    for key in ("ndcg@3", "hit_rate@3", "recall@3", "map@3"):
        assert got[key] == pytest.approx(1.0), key


def test_no_user_with_test_items_gives_nan():
    got = M.evaluate_ranking(np.array([[0, 1]]), sp.csr_matrix((1, 4)), n_items=4, k=2)
    assert got["users_evaluated"] == 0
    assert math.isnan(got["ndcg@2"]) and math.isnan(got["map@2"])
    assert got["coverage@2"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("rec", "test", "k", "match"),
    [
        (np.zeros((2, 3), dtype=int), _csr([[1]], 4), 3, "rows"),
        (np.zeros((1, 3), dtype=int), _csr([[1]], 4), 0, "k must be"),
        (np.array([[0, 9, 1]]), _csr([[1]], 4), 3, r"\[0, 4\)"),
        (np.array([[0.0, 1.0]]), _csr([[1]], 4), 2, "integer"),
        (np.array([0, 1]), _csr([[1]], 4), 2, "2-D"),
        (np.array([[0, 1]]), np.eye(1, 4), 2, "sparse"),
    ],
)
def test_invalid_inputs(rec, test, k, match):
    with pytest.raises(ValueError, match=match):
        M.ndcg_at_k(rec, test, k)


def test_evaluate_ranking_checks_n_items():
    with pytest.raises(ValueError, match="n_items"):
        M.evaluate_ranking(RECOMMENDED, TEST, n_items=7, k=3)


# --------------------------------------------------------------------------- reference on random data


def _reference(rec: np.ndarray, test: sp.csr_matrix, k: int) -> dict[str, float]:
    """Straightforward per-user loop with the documented definitions."""
    rows = {"ndcg": [], "hit_rate": [], "precision": [], "recall": [], "map": []}
    for r in range(rec.shape[0]):
        relevant = set(test[r].indices.tolist())
        if not relevant:
            continue
        seen, hits, dcg, ap = set(), 0, 0.0, 0.0
        for rank, item in enumerate(rec[r, :k].tolist(), start=1):
            if item in relevant and item not in seen:
                hits += 1
                dcg += 1 / math.log2(rank + 1)
                ap += hits / rank
            seen.add(item)
        m = min(k, len(relevant))
        rows["ndcg"].append(dcg / sum(1 / math.log2(i + 1) for i in range(1, m + 1)))
        rows["hit_rate"].append(float(hits > 0))
        rows["precision"].append(hits / k)
        rows["recall"].append(hits / m)
        rows["map"].append(ap / m)
    return {name: float(np.mean(values)) for name, values in rows.items()}


def _random_case(seed: int, n_rows=60, n_items=40, width=12):
    rng = np.random.default_rng(seed)
    rec = np.stack([rng.permutation(n_items)[:width] for _ in range(n_rows)])
    rec[rng.random(rec.shape) < 0.1] = -1  # padding anywhere
    rec[:5, 1] = rec[:5, 0]  # a few repeated ids
    test = sp.random(n_rows, n_items, density=0.08, format="csr", random_state=seed)
    return rec, test


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5, 12])
def test_matches_per_user_reference(seed, k):
    rec, test = _random_case(seed)
    got = M.evaluate_ranking(rec, test, n_items=40, k=k)
    want = _reference(rec, test, k)
    for name, value in want.items():
        assert got[f"{name}@{k}"] == pytest.approx(value, rel=1e-12), name
    assert got["users_evaluated"] == int((np.diff(test.indptr) > 0).sum())


def test_matches_implicit_ndcg_and_map():
    evaluation = pytest.importorskip("implicit.evaluation")
    rng = np.random.default_rng(7)
    n_rows, n_items, k = 80, 50, 10
    rec = np.stack([rng.permutation(n_items)[:k] for _ in range(n_rows)]).astype(np.int32)
    rec[:10, 7:] = -1
    test = sp.random(n_rows, n_items, density=0.1, format="csr", random_state=3, dtype=np.float32)

    class Fixed:  # replays precomputed recommendations through implicit's evaluation loop
        def recommend(self, userid, user_items, N=10, **_):
            return rec[userid, :N], np.zeros((len(userid), N), dtype=np.float32)

    theirs = evaluation.ranking_metrics_at_k(
        Fixed(), sp.csr_matrix((n_rows, n_items), dtype=np.float32), test, K=k, show_progress=False
    )
    assert M.ndcg_at_k(rec, test, k) == pytest.approx(theirs["ndcg"], rel=1e-9)
    assert M.map_at_k(rec, test, k) == pytest.approx(theirs["map"], rel=1e-9)


# --------------------------------------------------------------------------- AUC


def test_auc_hand_computed():
    scores = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.2, 0.2, 0.2], [1.0, 2.0, 3.0, 4.0]])
    test = _csr([[0, 3], [1], []], 4)
    # row 0: positives 0.9, 0.3 vs negatives 0.1, 0.5 -> 3 of 4 pairs; row 1: all ties -> 0.5
    assert M.auc(scores, test) == pytest.approx((0.75 + 0.5) / 2)
    # excluding item 2 from row 0 leaves a single negative (0.1), beaten by both positives
    exclude = _csr([[2], [], []], 4)
    assert M.auc(scores, test, exclude) == pytest.approx((1.0 + 0.5) / 2)


def _auc_reference(scores: np.ndarray, test: sp.csr_matrix, exclude: sp.csr_matrix) -> float:
    values = []
    for r in range(scores.shape[0]):
        excluded = set(exclude[r].indices.tolist())
        pos = [scores[r, i] for i in test[r].indices if i not in excluded]
        neg = [scores[r, i] for i in range(scores.shape[1]) if i not in excluded and i not in set(test[r].indices)]
        if pos and neg:
            values.append(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))
    return float(np.mean(values))


def test_auc_matches_pairwise_reference_with_ties_and_exclusions():
    rng = np.random.default_rng(11)
    scores = rng.integers(0, 5, (30, 25)).astype(np.float32)  # many ties
    scores[0, :3] = -np.inf
    test = sp.random(30, 25, density=0.15, format="csr", random_state=1)
    exclude = sp.random(30, 25, density=0.2, format="csr", random_state=2)
    before = scores.copy()
    assert M.auc(scores, test, exclude) == pytest.approx(_auc_reference(scores, test, exclude), rel=1e-12)
    np.testing.assert_array_equal(scores, before)  # the caller's block is left alone
    ints = np.where(np.isinf(scores), -10, scores).astype(np.int64)
    assert M.auc(ints, test) == pytest.approx(_auc_reference(ints, test, sp.csr_matrix(ints.shape)), rel=1e-12)


def test_auc_rejects_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        M.auc(np.zeros((2, 3)), _csr([[1]], 3))
    with pytest.raises(ValueError, match="NaN"):
        M.auc(np.full((1, 3), np.nan), _csr([[1]], 3))


# --------------------------------------------------------------------------- rating metrics


def test_rating_metrics():
    y, p = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 3.0, 2.0])
    assert M.rmse(y, p) == pytest.approx(math.sqrt((0 + 1 + 0 + 4) / 4))
    assert M.mae(y, p) == pytest.approx((0 + 1 + 0 + 2) / 4)
    assert M.r2(y, p) == pytest.approx(1 - 5 / 5)
    assert M.r2(y, y) == 1.0
    assert M.r2([2.0, 2.0], [2.0, 2.0]) == 1.0 and M.r2([2.0, 2.0], [1.0, 2.0]) == 0.0
    with pytest.raises(ValueError, match="shape"):
        M.rmse([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        M.mae([], [])
