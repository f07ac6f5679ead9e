"""Ranking and rating metrics, vectorised over users.

Ranking metrics take ``recommended``, an integer array (rows x columns) of item indices, best first,
where -1 is padding and never a hit, and ``test_user_items``, a scipy sparse matrix (rows x items)
whose row r holds the held-out items of the user recommended in row r (any stored nonzero is a
relevant item; gains are binary).

Conventions shared by every ranking metric here:

* Only the first ``k`` columns of ``recommended`` count. It may have fewer than ``k`` columns only
  when it already covers the whole catalog (``top_n`` clips N to the number of items); the missing
  positions are treated as padding.
* Rows without any test item are left out of every average, and ``users_evaluated`` counts the
  rows that remain. With no such row, every average is NaN (undefined, not zero).
* An item repeated within a row is credited once, at its best rank.
* Per-row values are averaged with equal weight per row (macro average).
"""

from __future__ import annotations

import numba as nb
import numpy as np
import scipy.sparse as sp

__all__ = [
    "auc",
    "coverage_at_k",
    "evaluate_ranking",
    "hit_rate_at_k",
    "map_at_k",
    "mae",
    "ndcg_at_k",
    "precision_at_k",
    "r2",
    "recall_at_k",
    "rmse",
]


# --------------------------------------------------------------------------- validation helpers


def _canonical_csr(matrix: sp.spmatrix | sp.sparray, name: str) -> sp.csr_matrix:
    """A CSR copy with duplicates summed, explicit zeros dropped and indices sorted."""
    if not sp.issparse(matrix):
        raise ValueError(f"{name} must be a scipy sparse matrix, got {type(matrix).__name__}")
    csr = sp.csr_matrix(matrix, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    return csr


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _check_recommended(recommended: np.ndarray, n_items: int, k: int) -> np.ndarray:
    """Validate ids and return the first ``k`` columns as int64."""
    rec = np.asarray(recommended)
    if rec.ndim != 2:
        raise ValueError(f"recommended must be 2-D (rows x ranks), got shape {rec.shape}")
    if rec.size and not np.issubdtype(rec.dtype, np.integer):
        raise ValueError(f"recommended must hold integer item ids, got dtype {rec.dtype}")
    if rec.shape[1] < min(k, n_items):
        raise ValueError(
            f"recommended has {rec.shape[1]} columns, fewer than k={k} "
            f"(allowed only when it covers the whole catalog of {n_items} items)"
        )
    rec = rec[:, :k].astype(np.int64, copy=False)
    if rec.size and (rec.min() < -1 or rec.max() >= n_items):
        raise ValueError(f"recommended ids must be in [0, {n_items}) or -1 for padding")
    return rec


@nb.njit(cache=True)
def _mark_hits(rec, rows, indptr, indices, hits):
    """``hits[i, j]``: ``rec[rows[i], j]`` is one of row ``rows[i]``'s test items (sorted ``indices[indptr[r]:
    indptr[r + 1]]``) and its first occurrence in that row of ``rec``; -1 (padding) never is."""
    for i in range(len(rows)):
        r = rows[i]
        lo, hi = indptr[r], indptr[r + 1]
        for j in range(hits.shape[1]):
            item = rec[r, j]
            if item < 0:
                continue
            a, b = lo, hi  # binary search: a row holds a few test items, a user with a long history many
            while a < b:
                middle = (a + b) // 2
                if indices[middle] < item:
                    a = middle + 1
                else:
                    b = middle
            if a == hi or indices[a] != item:
                continue
            first = True
            for earlier in range(j):  # only for hits, which are rare: a repeat counts once, at its best rank
                if rec[r, earlier] == item:
                    first = False
                    break
            hits[i, j] = first


def _hit_matrix(recommended: np.ndarray, test_user_items, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hits of the rows that have test items: (hits bool (rows x k), test-set size per row)."""
    k = _check_k(k)
    test = _canonical_csr(test_user_items, "test_user_items")
    n_rows, n_items = test.shape
    rec = _check_recommended(recommended, n_items, k)
    if rec.shape[0] != n_rows:
        raise ValueError(
            f"recommended has {rec.shape[0]} rows but test_user_items has {n_rows}; "
            "they must describe the same users in the same order"
        )
    n_test = np.diff(test.indptr)
    rows = np.flatnonzero(n_test)
    hits = np.zeros((len(rows), k), dtype=bool)
    _mark_hits(rec, rows, test.indptr.astype(np.int64, copy=False), test.indices.astype(np.int64, copy=False),
               hits[:, :rec.shape[1]])
    return hits, n_test[rows]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


# --------------------------------------------------------------------------- per-row formulas


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def _ndcg_rows(hits: np.ndarray, n_test: np.ndarray) -> np.ndarray:
    disc = _discounts(hits.shape[1])
    idcg = np.cumsum(disc)[np.minimum(n_test, hits.shape[1]) - 1]
    return (hits @ disc) / idcg


def _hit_rate_rows(hits: np.ndarray, n_test: np.ndarray) -> np.ndarray:
    return hits.any(axis=1).astype(np.float64)


def _precision_rows(hits: np.ndarray, n_test: np.ndarray) -> np.ndarray:
    return hits.sum(axis=1) / hits.shape[1]


def _recall_rows(hits: np.ndarray, n_test: np.ndarray) -> np.ndarray:
    return hits.sum(axis=1) / np.minimum(n_test, hits.shape[1])


def _ap_rows(hits: np.ndarray, n_test: np.ndarray) -> np.ndarray:
    k = hits.shape[1]
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return (precision_at_rank * hits).sum(axis=1) / np.minimum(n_test, k)


_RANKING_ROWS = {
    "ndcg": _ndcg_rows,
    "hit_rate": _hit_rate_rows,
    "precision": _precision_rows,
    "recall": _recall_rows,
    "map": _ap_rows,
}


def _ranking_metric(name: str, recommended: np.ndarray, test_user_items, k: int) -> float:
    hits, n_test = _hit_matrix(recommended, test_user_items, k)
    return _mean(_RANKING_ROWS[name](hits, n_test))


# --------------------------------------------------------------------------- ranking metrics


def ndcg_at_k(recommended: np.ndarray, test_user_items, k: int = 10) -> float:
    """Mean NDCG@k with binary gains (the definition of ``implicit.evaluation``).

    Per row: DCG = sum over hits in the first k ranks of 1 / log2(rank + 1) (rank 1-based);
    IDCG = sum_{r=1}^{min(k, |test|)} 1 / log2(r + 1); NDCG = DCG / IDCG, in [0, 1].
    """
    return _ranking_metric("ndcg", recommended, test_user_items, k)


def hit_rate_at_k(recommended: np.ndarray, test_user_items, k: int = 10) -> float:
    """Share of rows with at least one test item among the first k recommendations."""
    return _ranking_metric("hit_rate", recommended, test_user_items, k)


def precision_at_k(recommended: np.ndarray, test_user_items, k: int = 10) -> float:
    """Mean of hits / k per row (padding counts as a miss, so k larger than the catalog lowers it)."""
    return _ranking_metric("precision", recommended, test_user_items, k)


def recall_at_k(recommended: np.ndarray, test_user_items, k: int = 10) -> float:
    """Mean of hits / min(k, |test|) per row.

    Capped at min(k, |test|) rather than |test| so that a perfect ranking scores 1.0 even when a
    user has more than k held-out items (the normalisation ``implicit`` uses for its precision).
    """
    return _ranking_metric("recall", recommended, test_user_items, k)


def map_at_k(recommended: np.ndarray, test_user_items, k: int = 10) -> float:
    """Mean average precision at k (the definition of ``implicit.evaluation``).

    Per row: AP@k = sum over hit ranks r <= k of (hits within the first r) / r, divided by
    min(k, |test|).
    """
    return _ranking_metric("map", recommended, test_user_items, k)


def coverage_at_k(recommended: np.ndarray, n_items: int, k: int = 10) -> float:
    """Catalog coverage: distinct items in the first k columns of all rows (ignoring -1) / n_items."""
    k = _check_k(k)
    if int(n_items) != n_items or n_items < 1:
        raise ValueError(f"n_items must be an integer >= 1, got {n_items!r}")
    rec = _check_recommended(recommended, int(n_items), k)
    shown = np.zeros(int(n_items), dtype=bool)
    shown[rec[rec >= 0]] = True  # a mask, not np.unique: that hashes a million ids (see als_core._arrays)
    return float(np.count_nonzero(shown) / n_items)


def evaluate_ranking(recommended: np.ndarray, test_user_items, n_items: int, k: int = 10) -> dict[str, float]:
    """All ranking metrics at k in one pass over the hits.

    Keys: ``ndcg@k``, ``hit_rate@k``, ``precision@k``, ``recall@k``, ``map@k``, ``coverage@k``
    (floats, definitions as in the functions of the same name) and ``users_evaluated`` (int: rows
    with at least one test item). Coverage counts the items recommended to every row, including
    rows without test items.
    """
    if sp.issparse(test_user_items) and test_user_items.shape[1] != n_items:
        raise ValueError(f"n_items={n_items} but test_user_items has {test_user_items.shape[1]} columns")
    hits, n_test = _hit_matrix(recommended, test_user_items, k)
    result: dict[str, float] = {f"{name}@{k}": _mean(rows(hits, n_test)) for name, rows in _RANKING_ROWS.items()}
    result[f"coverage@{k}"] = coverage_at_k(recommended, n_items, k)
    result["users_evaluated"] = int(len(n_test))
    return result


# --------------------------------------------------------------------------- AUC


def _row_searchsorted(sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray, right: bool) -> np.ndarray:
    """``np.searchsorted(sorted_rows[r], v)`` for each (r, v) pair at once: a vectorised binary search.

    NaN compares as larger than every value, matching where ``np.sort`` puts it.
    """
    n_cols = sorted_rows.shape[1]
    lo = np.zeros(len(rows), dtype=np.int64)
    hi = np.full(len(rows), n_cols, dtype=np.int64)
    for _ in range(int(n_cols).bit_length()):  # each step halves every interval
        mid = (lo + hi) // 2
        x = sorted_rows[rows, np.minimum(mid, n_cols - 1)]
        active = lo < hi
        below = ((x <= values) if right else (x < values)) & active
        lo, hi = np.where(below, mid + 1, lo), np.where(active & ~below, mid, hi)
    return lo


def _coordinates(csr: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    return np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr)), csr.indices.astype(np.int64)


def auc(scores: np.ndarray, test_user_items, exclude_user_items=None) -> float:
    """Mean per-row ROC AUC from a dense score block (rows x items).

    Per row, candidates are the items not in ``exclude_user_items`` (typically the training
    items); positives are the candidate test items, negatives the other candidates.
    AUC = P(score(positive) > score(negative)) + 0.5 * P(tie), computed exactly from the average
    ranks of the positives among the candidates (Mann-Whitney U / (positives x negatives)).
    Rows without a positive or without a negative are skipped; NaN if none is left.
    """
    block = np.asarray(scores)
    if block.ndim != 2:
        raise ValueError(f"scores must be 2-D (rows x items), got shape {block.shape}")
    if not np.issubdtype(block.dtype, np.floating):
        block = block.astype(np.float64)
    if np.isnan(block).any():
        raise ValueError("scores contain NaN")
    test = _canonical_csr(test_user_items, "test_user_items")
    if exclude_user_items is None:
        exclude_user_items = sp.csr_matrix(block.shape)
    exclude = _canonical_csr(exclude_user_items, "exclude_user_items")
    for name, m in (("test_user_items", test), ("exclude_user_items", exclude)):
        if m.shape != block.shape:
            raise ValueError(f"{name} has shape {m.shape}, expected {block.shape} (the shape of scores)")

    pos_rows, pos_items = _coordinates(test)
    n_items = block.shape[1]
    excluded = np.isin(pos_rows * n_items + pos_items, _coordinates(exclude)[0] * n_items + exclude.indices)
    pos_rows, pos_items = pos_rows[~excluded], pos_items[~excluded]
    n_pos = np.bincount(pos_rows, minlength=block.shape[0])
    n_neg = n_items - np.diff(exclude.indptr) - n_pos
    keep = np.flatnonzero((n_pos > 0) & (n_neg > 0))
    if not len(keep):
        return float("nan")

    # candidates' scores sorted per row; excluded items become NaN, which sorts after all of them
    candidates = block[keep]
    ex_rows, ex_items = _coordinates(exclude[keep])
    candidates[ex_rows, ex_items] = np.nan
    candidates.sort(axis=1)
    new_row = np.full(block.shape[0], -1)
    new_row[keep] = np.arange(len(keep))
    on_kept = new_row[pos_rows] >= 0
    rows, values = new_row[pos_rows[on_kept]], block[pos_rows[on_kept], pos_items[on_kept]]
    below = _row_searchsorted(candidates, rows, values, right=False)
    at_or_below = _row_searchsorted(candidates, rows, values, right=True)
    mid_rank = below + (at_or_below - below + 1) / 2  # 1-based, ties share their average rank
    n_pos, n_neg = n_pos[keep], n_neg[keep]
    rank_sum = np.bincount(rows, weights=mid_rank, minlength=len(keep))
    return _mean((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# --------------------------------------------------------------------------- rating metrics


def _paired(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape} but y_pred has {p.shape}")
    if t.size == 0:
        raise ValueError("y_true and y_pred are empty")
    return t.ravel(), p.ravel()


def rmse(y_true, y_pred) -> float:
    """Root mean squared error: sqrt(mean((y_true - y_pred)^2))."""
    t, p = _paired(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2)))


def mae(y_true, y_pred) -> float:
    """Mean absolute error: mean(|y_true - y_pred|)."""
    t, p = _paired(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def r2(y_true, y_pred) -> float:
    """Coefficient of determination: 1 - sum((y_true - y_pred)^2) / sum((y_true - mean(y_true))^2).

    When y_true is constant the ratio is undefined; like scikit-learn, return 1.0 for a perfect
    prediction and 0.0 otherwise.
    """
    t, p = _paired(y_true, y_pred)
    ss_res = float(np.sum((t - p) ** 2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot
