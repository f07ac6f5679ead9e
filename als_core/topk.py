"""Top-N selection from a block of scores, shared by every recommender in als_core.

Scores come as a dense (users x items) block: a matrix product of factors, or a popularity row broadcast.
Selection uses ``argpartition`` (O(items) per user) and sorts only the N winners.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


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
    if n < n_items:
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    else:
        part = np.broadcast_to(np.arange(n_items), (n_rows, n_items))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    best = np.take_along_axis(part_scores, order, axis=1)
    ids[~np.isfinite(best)] = -1
    return ids, best
