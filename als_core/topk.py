"""Top-N selection, shared by every recommender in als_core.

- ``top_n(scores, n)``: the best ``n`` of each row of a dense score block (a popularity row broadcast, cosine
  similarities, a caller's own matrix product).
- ``score_top_n(vectors, factors_t, n, ...)``: the best ``n`` items of ``vectors @ factors_t`` with seen and
  filtered items masked, without a dense score block: each thread multiplies a block of users by a block of
  items into its own buffer (one BLAS call from numba; the caller pins BLAS to one thread) and merges it into
  the users' lists while it is in cache. ALS.recommend/recommend_all and so ModelBundle.recommend_many go
  through it.

Results are exact: best first, ties keep the lower item index, -inf (masked) and NaN are never returned, rows
with fewer eligible items are padded with id -1 / score -inf. Selecting from a row takes two passes, not a
running insertion over every item (which shifted ~9k list entries per 20k-item row, more than reading it):
1. the row, seen as a (rows x ``_BLOCKS_PER_N * n``) matrix, and the maximum of each column (vectorised).
   A threshold with at least n column maxima at or above it has n distinct items at or above it, so no
   item of the top n scores below it; a short bisection over the column maxima finds one close to the
   n-th best score;
2. only the columns whose maximum reaches the threshold can hold a top-n item: those entries, row by row,
   so in item order, go through the sorted insertion.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import scipy.sparse as sp

# score_top_n's blocks: users x items per matrix product, 256 x 4096 (4 MB of float32 scores per thread, in
# L3). Measured on 200k x 20k x 64 factors against 64 users x all items per product: 12-14% faster;
# 128 or 512 users, 2048 or 8192 items, or whole rows were all slower (BLAS repacks its inputs for every call,
# so small products pay more per score; big blocks are read back from memory by the selection).
_BLOCK_CELLS = 256 * 4096
_ITEM_BLOCK = 4096
_MIN_CHUNK, _MAX_CHUNK = 16, 256
_BLOCKS_PER_N = 8  # columns of pass 1 per wanted item: the n-th best column maximum is then near the n-th score
_BISECTIONS = 12  # steps refining the threshold between the smallest and largest column maximum
_NEG_INF = np.float32(-np.inf)  # widens to float64 where the scores are float64


@nb.njit(inline="always")
def insert_sorted(ids, best, n, item, value):
    """Insert ``item`` into the descending ``best[:n]`` (unfilled slots hold -inf), dropping the last entry.
    Callers pass items in increasing index order, so an equal score stays behind the earlier item.

    serving/scoring.py's cached kernel inlines this too: numba's cache checks only the file of the cached
    function, so after changing this one, touch serving/scoring.py (or clear its __pycache__) as well."""
    pos = n - 1
    while pos > 0 and best[pos - 1] < value:
        best[pos] = best[pos - 1]
        ids[pos] = ids[pos - 1]
        pos -= 1
    best[pos] = value
    ids[pos] = item


@nb.njit(inline="always")
def _scan(row, lo, hi, offset, n, ids, best, threshold):
    for i in range(lo, hi):
        s = row[i]
        if s > best[n - 1] and s >= threshold:  # best starts at -inf: NaN and -inf never enter
            insert_sorted(ids, best, n, offset + i, s)


@nb.njit(inline="always")
def _count_at_least(values, threshold):
    count = np.int32(0)
    for c in range(values.shape[0]):
        count += np.int32(values[c] >= threshold)
    return count


@nb.njit(cache=True)
def _pick_columns(columns, n, picked):
    """A threshold with at least ``n`` column maxima at or above it, as high as a short bisection finds, and
    those columns into ``picked`` (in order); returns (threshold, how many). (-inf, 0) when fewer than ``n``
    columns have an eligible item."""
    n_cols = columns.shape[0]
    finite = 0
    lo = hi = columns[0]
    for c in range(n_cols):
        v = columns[c]
        if v > _NEG_INF:
            finite += 1
            lo = v if finite == 1 or v < lo else lo
            hi = v if finite == 1 or v > hi else hi
    if finite < n:
        return _NEG_INF, 0
    if _count_at_least(columns, hi) >= n:  # ties at the top
        lo = hi
    for _ in range(_BISECTIONS):
        mid = lo + (hi - lo) * np.float32(0.5)
        if not lo < mid < hi:
            break
        if _count_at_least(columns, mid) >= n:
            lo = mid
        else:
            hi = mid
    count = 0
    for c in range(n_cols):
        if columns[c] >= lo:
            picked[count] = c
            count += 1
    return lo, count


@nb.njit(cache=True)
def _select(row, offset, n, ids, best, columns, picked):
    """Merge the items of ``row`` (item ``offset + i`` scores ``row[i]``) into the running best ``n`` in
    ``ids``/``best`` (best first; -1 / -inf where unfilled), items of earlier calls having lower indices.
    ``columns`` (the row's dtype) and ``picked`` (int) are scratch of ``_BLOCKS_PER_N * n`` entries."""
    n_items = row.shape[0]
    n_cols = columns.shape[0]
    n_rows = n_items // n_cols
    if n_rows < 2:  # a short row: the column maxima would not save anything
        _scan(row, 0, n_items, offset, n, ids, best, _NEG_INF)
        return
    # pass 1: maxima of the columns of row[:n_rows * n_cols] seen as a (n_rows x n_cols) matrix
    for c in range(n_cols):
        v = row[c]
        columns[c] = v if v > _NEG_INF else _NEG_INF  # NaN -> -inf
    for r in range(1, n_rows):
        # fmax skips NaN; as a ufunc with out= it vectorises (a loop storing into columns does not: nothing
        # tells LLVM that columns and row never overlap)
        np.fmax(columns, row[r * n_cols:(r + 1) * n_cols], columns)
    if best[n - 1] > _NEG_INF:
        # the list is full (an earlier part of the row): only scores above its last one can enter
        threshold = best[n - 1]
        n_picked = 0
        for c in range(n_cols):
            if columns[c] > threshold:
                picked[n_picked] = c
                n_picked += 1
    else:
        threshold, n_picked = _pick_columns(columns, n, picked)
        if n_picked == 0:  # fewer than n columns with an eligible item
            _scan(row, 0, n_items, offset, n, ids, best, threshold)
            return
    # pass 2: only the picked columns can hold an item at or above the threshold; row by row, so items
    # come in increasing index order
    for r in range(n_rows):
        base = r * n_cols
        for q in range(n_picked):
            i = base + picked[q]
            s = row[i]
            if s > best[n - 1] and s >= threshold:
                insert_sorted(ids, best, n, offset + i, s)
    _scan(row, n_rows * n_cols, n_items, offset, n, ids, best, threshold)


def _tasks(n_chunks: int) -> int:
    """Parallel tasks for ``n_chunks`` chunks of work: a few per thread, so that a thread slowed down by
    other processes leaves its remaining tasks to the others (the kernels run with a chunksize of 1)."""
    return max(1, min(n_chunks, 4 * nb.get_num_threads()))


@nb.njit(parallel=True, cache=True)
def _top_n_rows(scores, n, n_tasks, out_ids, out_scores):
    n_rows = scores.shape[0]
    for task in nb.prange(n_tasks):
        columns = np.empty(_BLOCKS_PER_N * n, scores.dtype)
        picked = np.empty(_BLOCKS_PER_N * n, np.int64)
        for r in range(task * n_rows // n_tasks, (task + 1) * n_rows // n_tasks):
            _select(scores[r], 0, n, out_ids[r], out_scores[r], columns, picked)


@nb.njit(parallel=True, cache=True)
def _score_top_n(vectors, factors, offsets, excl_indptr, excl_indices, filter_items, n, chunk, item_block,
                 n_tasks, out_ids, out_scores):
    """``out_*[u]`` = best n of ``vectors[u] @ factors.T + offsets`` without the items of CSR row u of
    ``excl_*`` and without ``filter_items``; ``out_*`` come filled with -1 / -inf. Each task scores ``chunk``
    users against ``item_block`` items at a time and merges each block into the users' lists."""
    n_users = vectors.shape[0]
    n_items = factors.shape[0]
    n_chunks = (n_users + chunk - 1) // chunk
    for task in nb.prange(n_tasks):
        buffer = np.empty(chunk * item_block, factors.dtype)
        columns = np.empty(_BLOCKS_PER_N * n, factors.dtype)
        picked = np.empty(_BLOCKS_PER_N * n, np.int64)
        for c in range(task * n_chunks // n_tasks, (task + 1) * n_chunks // n_tasks):
            lo = c * chunk
            m = min(chunk, n_users - lo)
            for start in range(0, n_items, item_block):
                width = min(item_block, n_items - start)
                scores = buffer[:m * width].reshape((m, width))
                np.dot(vectors[lo:lo + m], factors[start:start + width].T, scores)
                for r in range(m):
                    u = lo + r
                    row = scores[r]
                    if len(offsets):
                        for i in range(width):
                            row[i] += offsets[start + i]
                    for p in range(excl_indptr[u], excl_indptr[u + 1]):
                        i = excl_indices[p] - start
                        if 0 <= i < width:
                            row[i] = -np.inf
                    for p in range(len(filter_items)):
                        i = filter_items[p] - start
                        if 0 <= i < width:
                            row[i] = -np.inf
                    _select(row, start, n, out_ids[u], out_scores[u], columns, picked)


def _padded(n_rows: int, n: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n_rows, n), -1, dtype=np.int64), np.full((n_rows, n), -np.inf, dtype=dtype)


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
    ids, best = _padded(n_rows, n, scores.dtype)
    if n_rows:
        with nb.parallel_chunksize(1):
            _top_n_rows(scores, n, _tasks(n_rows), ids, best)
    return ids, best


def score_top_n(vectors: np.ndarray, item_factors: np.ndarray, n: int, excluded: sp.csr_matrix | None = None,
                filter_items: np.ndarray | None = None, offsets: np.ndarray | None = None,
                chunk: int | None = None, item_block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best ``n`` items of each row of ``vectors @ item_factors.T (+ offsets)``, as ``top_n`` would return
    them from that dense product with ``excluded`` (one CSR row per vector: its stored columns) and
    ``filter_items`` masked, but computed ``chunk`` users x ``item_block`` items at a time per thread (by
    default 256 x 4096).

    The matrix products call BLAS from numba threads: pin BLAS to one thread around this call.
    """
    vectors = np.ascontiguousarray(vectors)
    dtype = vectors.dtype
    item_factors = np.ascontiguousarray(item_factors, dtype=dtype)
    n_users, n_items = len(vectors), len(item_factors)
    if item_factors.shape[1] != vectors.shape[1]:
        raise ValueError(f"vectors have {vectors.shape[1]} factors, the items {item_factors.shape[1]}")
    n = min(int(n), n_items)
    ids, best = _padded(n_users, max(n, 0), dtype)
    if n <= 0 or n_users == 0:
        return ids, best
    if excluded is None:
        indptr, indices = np.zeros(n_users + 1, dtype=np.int64), np.empty(0, dtype=np.int64)
    else:
        if excluded.shape != (n_users, n_items):
            raise ValueError(f"excluded has shape {excluded.shape}, expected {(n_users, n_items)}")
        indptr = excluded.indptr.astype(np.int64, copy=False)
        indices = excluded.indices.astype(np.int64, copy=False)
    filtered = np.empty(0, np.int64) if filter_items is None else np.asarray(filter_items, np.int64)
    offsets = np.empty(0, dtype) if offsets is None else np.ascontiguousarray(offsets, dtype=dtype)
    # blocks of items long enough for the column maxima (pass 1) to have rows to take maxima over
    item_block = min(n_items, int(item_block or max(_ITEM_BLOCK, 4 * _BLOCKS_PER_N * n)))
    chunk = int(chunk or min(_MAX_CHUNK, max(_MIN_CHUNK, _BLOCK_CELLS // item_block)))
    chunk = max(1, min(chunk, n_users))
    with nb.parallel_chunksize(1):
        _score_top_n(vectors, item_factors, offsets, indptr, indices, filtered, n, chunk, max(1, item_block),
                     _tasks(-(-n_users // chunk)), ids, best)
    return ids, best
