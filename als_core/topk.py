"""Top-N selection from a block of scores, shared by every recommender in als_core.

Scores come as a dense (users x items) block: a matrix product of factors, or a popularity row broadcast.
Selection is one numba pass per row, parallel over rows, keeping a sorted list of the N best: almost every
item fails the first comparison with the current N-th best, so the cost is one read of the block (numpy's
``argpartition`` over the negated block was 6x slower and the hot spot of scoring every user).
"""

from __future__ import annotations

import numba as nb
import numpy as np
import scipy.sparse as sp


@nb.njit(parallel=True, cache=True)
def _top_n_rows(scores, n, out_ids, out_scores):
    """Best ``n`` of each row, best first; ties keep the lower index; -inf and NaN are never selected."""
    n_rows, n_items = scores.shape
    for r in nb.prange(n_rows):
        count = 0
        for i in range(n_items):
            s = scores[r, i]
            if not s > out_scores[r, n - 1]:  # out_scores starts at -inf: NaN and -inf never enter
                continue
            pos = count if count < n else n - 1
            while pos > 0 and out_scores[r, pos - 1] < s:
                out_scores[r, pos] = out_scores[r, pos - 1]
                out_ids[r, pos] = out_ids[r, pos - 1]
                pos -= 1
            out_scores[r, pos] = s
            out_ids[r, pos] = i
            if count < n:
                count += 1


def mask_items(scores: np.ndarray, rows: sp.csr_matrix | None, filter_items: np.ndarray | None) -> None:
    """Set to -inf, in place, the already-seen items of each row (``rows``: one CSR row per score row)
    and the items of ``filter_items`` for every row."""
    if rows is not None and rows.nnz:
        counts = np.diff(rows.indptr)
        scores[np.repeat(np.arange(scores.shape[0]), counts), rows.indices] = -np.inf
    if filter_items is not None and len(filter_items):
        scores[:, filter_items] = -np.inf


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``n`` columns of each row, best first, as (ids, scores).

    Masked entries (-inf) are never returned: when fewer than ``n`` items are left for a row, its
    tail is padded with id -1 and score -inf, so every row has the same length.
    """
    n_rows, n_items = scores.shape
    n = min(int(n), n_items)
    if n <= 0:
        return np.empty((n_rows, 0), dtype=np.int64), np.empty((n_rows, 0), dtype=scores.dtype)
    scores = np.ascontiguousarray(scores)
    ids = np.full((n_rows, n), -1, dtype=np.int64)
    best = np.full((n_rows, n), -np.inf, dtype=scores.dtype)
    _top_n_rows(scores, n, ids, best)
    return ids, best
