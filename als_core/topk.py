"""Top-N selection, shared by every recommender in als_core.

- ``top_n(scores, n)``: the best ``n`` of each row of a dense score block (a popularity row broadcast, cosine
  similarities, a caller's own matrix product).
- ``score_top_n(vectors, item_factors, n, ...)``: the best ``n`` items of ``vectors @ item_factors.T`` with
  seen and filtered items masked, without a dense score block: register tiles of scores (`_score_tile`)
  whose items go to a user's list only when they reach its current n-th best, the items of largest norm
  first so that the lists start close to final. ALS.recommend/recommend_all and so ModelBundle.recommend_many
  go through it.

Results are exact: best first, ties keep the lower item index, -inf (masked) and NaN are never returned, rows
with fewer eligible items are padded with id -1 / score -inf. Selecting from a row takes two passes, not a
running insertion over every item (which shifted ~9k list entries per 20k-item row, more than reading it):
1. the row, seen as a (rows x ``_BLOCKS_PER_N * n``) matrix, and the maximum of each column (vectorised).
   A threshold with at least n column maxima at or above it has n distinct items at or above it, so no
   item of the top n scores below it; a short bisection over the column maxima finds one close to the
   n-th best score;
2. only the columns whose maximum reaches the threshold can hold a top-n item: those entries, row by row,
   so in item order, are the candidates (usually a few more than n). Into an empty list they are ranked at
   once, each placed by how many candidates beat it (`_rank_into`); otherwise, or when ties at the threshold
   make them more than ``_RANKED_PER_N * n``, they go through the sorted insertion.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import scipy.sparse as sp

from ._score_tile import ROWS, lowest_bit, score_tile, strip_width

# Measured on a trained 100k x 20k x 64 model, top 50 (share of the matmul peak): 96 users per chunk 78-85%,
# 48 75-80%, 24 69-74%; 2048 first items (a 768 KB block per chunk) or 1664, 72-75% with 4096.
_CHUNK = 96  # users per parallel task at a time
_FIRST_ITEMS = 2048  # items of largest norm whose scores start each user's list (`_score_top_n`)
_PACKED_MIN_USERS = 64
_DENSE_BLOCK = 256  # users per matrix product on the small path
_BLOCKS_PER_N = 8  # columns of pass 1 per wanted item: the n-th best column maximum is then near the n-th score
_BISECTIONS = 12  # steps refining the threshold between the smallest and largest column maximum
_RANKED_PER_N = 4  # candidates per wanted item up to which `_select` ranks them against each other
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
    count = 0
    for c in range(values.shape[0]):
        count += values[c] >= threshold
    return count


@nb.njit(cache=True)
def _pick_columns(columns, n, picked):
    """A threshold with at least ``n`` column maxima at or above it, as high as a short bisection finds (it
    stops early once at most n + n / 4 columns reach it), and those columns into ``picked`` (in order);
    returns (threshold, how many). (-inf, 0) when fewer than ``n`` columns have an eligible item.
    The loops are branch-free so that they vectorise (``columns`` holds no NaN)."""
    n_cols = columns.shape[0]
    finite = 0
    lo = -_NEG_INF
    hi = _NEG_INF
    for c in range(n_cols):
        v = columns[c]
        finite += v > _NEG_INF
        hi = max(hi, v)
        lo = min(lo, v if v > _NEG_INF else -_NEG_INF)
    if finite < n:
        return _NEG_INF, 0
    if _count_at_least(columns, hi) >= n:  # ties at the top
        lo = hi
    enough = n + n // 4
    for _ in range(_BISECTIONS):
        mid = lo + (hi - lo) * np.float32(0.5)
        if not lo < mid < hi:
            break
        count = _count_at_least(columns, mid)
        if count >= n:
            lo = mid
            if count <= enough:
                break
        else:
            hi = mid
    count = 0
    for c in range(n_cols):
        picked[count] = c  # written always, kept only when it counts
        count += columns[c] >= lo
    return lo, count


@nb.njit(inline="always")
def _rank_into(found, values, m, offset, n, ids, best):
    """Fill the empty list with the best ``n`` of ``m`` candidates (item ``offset + found[j]`` scores
    ``values[j]``, in increasing item order): a candidate's place is how many candidates come before it (a
    higher score, or the same one earlier). m * m comparisons that vectorise, where inserting each one into
    the sorted list shifted half of it (1.45 against 0.65 us per user for ~54 candidates of a top 50)."""
    for j in range(m):
        v = values[j]
        rank = 0
        for k in range(m):
            w = values[k]
            rank += (w > v) | ((w == v) & (k < j))
        if rank < n:
            ids[rank] = offset + found[j]
            best[rank] = v


@nb.njit(cache=True)
def _select(row, offset, n, ids, best, columns, picked, found):
    """Merge the items of ``row`` (item ``offset + i`` scores ``row[i]``) into the running best ``n`` in
    ``ids``/``best`` (best first; -1 / -inf where unfilled), items of earlier calls having lower indices.
    ``columns`` (the row's dtype) and ``picked`` (int) are scratch of ``_BLOCKS_PER_N * n`` entries, ``found``
    (int) of ``_RANKED_PER_N * n``."""
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
        if best[0] == _NEG_INF:
            # an empty list (every call but the merges of a row in parts): the entries at or above the threshold,
            # usually a few more than n, in item order into found / columns (free now), then ranked at once
            capacity = found.shape[0]
            m = 0
            for r in range(n_rows + 1):  # the picked columns of each row, then the items past the last row
                tail = r == n_rows
                for q in range(n_items - n_rows * n_cols if tail else n_picked):
                    i = r * n_cols + (q if tail else picked[q])
                    s = row[i]
                    if s >= threshold:
                        if m < capacity:
                            found[m] = i
                            columns[m] = s
                        m += 1
            if m <= capacity:
                _rank_into(found, columns, m, offset, n, ids, best)
                return
            # more (ties at the threshold): ranking them all would take m * m, the insertion below does not
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
        found = np.empty(_RANKED_PER_N * n, np.int64)
        for r in range(task * n_rows // n_tasks, (task + 1) * n_rows // n_tasks):
            _select(scores[r], 0, n, out_ids[r], out_scores[r], columns, picked, found)


@nb.njit(inline="always")
def _insert_keyed(ids, best, n, item, value):
    """Insert ``item`` into the descending ``best[:n]`` by (score, then lower index first), for items that do
    not come in index order; the caller checked that it belongs in the list."""
    pos = n - 1
    while pos > 0 and (best[pos - 1] < value or (best[pos - 1] == value and ids[pos - 1] > item)):
        best[pos] = best[pos - 1]
        ids[pos] = ids[pos - 1]
        pos -= 1
    best[pos] = value
    ids[pos] = item


@nb.njit(parallel=True, cache=True)
def _score_top_n(users, packed, offsets, order, position, n_first, excl_indptr, excl_indices, blocked,
                 filter_items, n, chunk, n_tasks, out_ids, out_scores):
    """``out_*[u]`` = best n of ``users[u] @ items.T + offsets`` without the items of CSR row u of ``excl_*``
    (sorted indices) and the ``blocked`` items (also listed in ``filter_items``); ``out_*`` come filled with -1 / -inf,
    ``users`` padded to a multiple of ROWS rows. ``packed``/``offsets`` hold the items in the order
    ``order`` (``position`` its inverse, `_pack`): first the ``n_first`` with the largest factor norms,
    then the others, each part in index order.

    Each task takes ``chunk`` users at a time through the strips of items (a strip stays in L1 while the
    chunk's users go past it), one register tile of scores per ROWS users and strip:
    - the first part's scores are kept and each user's list starts from them by `_select` (column maxima,
      then only the columns that can hold a top-n item). A user's best items are mostly among the items of
      large norm, so the list starts close to final; filling it item by item from -inf would insert every
      new best-so-far (about n * ln(items / n) insertions);
    - after that, each tile compares its scores with each user's current n-th best in registers, and only
      the items at or above it (a bitmask) go to the user's list."""
    n_users = out_ids.shape[0]
    n_items = len(order)
    n_strips, _, width = packed.shape
    first_strips = -(-n_first // width)
    n_chunks = (n_users + chunk - 1) // chunk
    for task in nb.prange(n_tasks):
        tile = np.empty((ROWS, width), packed.dtype)
        thresholds = np.empty(ROWS, packed.dtype)
        masks = np.empty(ROWS, np.int64)
        block = np.empty((chunk, first_strips * width), packed.dtype)
        columns = np.empty(_BLOCKS_PER_N * n, packed.dtype)
        picked = np.empty(_BLOCKS_PER_N * n, np.int64)
        found = np.empty(_RANKED_PER_N * n, np.int64)
        cursors = np.empty(chunk, np.int64)  # per user: its first excluded item not below the items seen so far
        for c in range(task * n_chunks // n_tasks, (task + 1) * n_chunks // n_tasks):
            lo = c * chunk
            hi = min(lo + chunk, n_users)
            cursors[:hi - lo] = excl_indptr[lo:hi]
            thresholds[:] = np.inf  # the first part's bitmasks are not read
            for strip in range(first_strips):
                for row0 in range(lo, hi, ROWS):
                    score_tile(users, row0, packed, strip, thresholds, offsets, tile, masks)
                    for r in range(min(ROWS, hi - row0)):
                        target = block[row0 - lo + r]
                        for j in range(width):
                            target[strip * width + j] = tile[r, j]
            for u in range(lo, hi):
                row = block[u - lo, :n_first]
                for p in range(excl_indptr[u], excl_indptr[u + 1]):
                    if position[excl_indices[p]] < n_first:
                        row[position[excl_indices[p]]] = -np.inf
                for p in range(len(filter_items)):
                    if position[filter_items[p]] < n_first:
                        row[position[filter_items[p]]] = -np.inf
                ids, best = out_ids[u], out_scores[u]
                _select(row, 0, n, ids, best, columns, picked, found)
                for j in range(n):
                    if ids[j] >= 0:
                        ids[j] = order[ids[j]]
            for strip in range(first_strips, n_strips):
                for row0 in range(lo, hi, ROWS):
                    for r in range(ROWS):
                        thresholds[r] = out_scores[row0 + r, n - 1] if row0 + r < hi else np.inf
                    score_tile(users, row0, packed, strip, thresholds, offsets, tile, masks)
                    for r in range(ROWS):
                        mask = masks[r]
                        if mask == 0:
                            continue
                        u = row0 + r
                        ids, best = out_ids[u], out_scores[u]
                        ex_hi = excl_indptr[u + 1]
                        while mask != 0:
                            j = lowest_bit(mask)
                            mask &= mask - 1
                            p = strip * width + j
                            if p >= n_items:  # padding
                                continue
                            item = order[p]
                            value = tile[r, j]
                            if not (value > best[n - 1] or (value == best[n - 1] and item < ids[n - 1])):
                                continue  # also -inf, which never enters
                            if blocked[item]:
                                continue
                            # the second part's items come in index order: the user's cursor only moves on
                            cursor = cursors[u - lo]
                            while cursor < ex_hi and excl_indices[cursor] < item:
                                cursor += 1
                            cursors[u - lo] = cursor
                            if cursor < ex_hi and excl_indices[cursor] == item:
                                continue
                            _insert_keyed(ids, best, n, item, value)


def _item_order(item_factors: np.ndarray, n_first: int) -> tuple[np.ndarray, np.ndarray]:
    """The items as `_score_top_n` reads them, and each item's place in that order: the ``n_first`` of
    largest norm, then the others, each part in index order."""
    n_items = len(item_factors)
    first = np.zeros(n_items, dtype=np.bool_)
    if n_first >= n_items:
        first[:] = True
    else:
        norms = np.einsum("ij,ij->i", item_factors, item_factors)
        first[np.argpartition(-norms, n_first - 1)[:n_first]] = True
    order = np.concatenate((np.flatnonzero(first), np.flatnonzero(~first)))
    position = np.empty(n_items, dtype=np.int64)
    position[order] = np.arange(n_items)
    return order, position


def _pack(item_factors: np.ndarray, offsets: np.ndarray | None, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items ``order`` as strips of ``strip_width`` items, each transposed (strips x factors x width), and
    their offsets padded to match (zeros where none): the layout `score_tile` reads."""
    n_items, k = item_factors.shape
    width = strip_width(item_factors.dtype)
    n_strips = -(-n_items // width)
    padded = np.zeros((n_strips * width, k), dtype=item_factors.dtype)
    padded[:n_items] = item_factors[order]
    packed = np.ascontiguousarray(padded.reshape(n_strips, width, k).transpose(0, 2, 1))
    padded_offsets = np.zeros(n_strips * width, dtype=item_factors.dtype)
    if offsets is not None:
        padded_offsets[:n_items] = offsets[order]
    return packed, padded_offsets


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
                chunk: int | None = None, first_items: int | None = None,
                packed: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best ``n`` items of each row of ``vectors @ item_factors.T (+ offsets)``, as ``top_n`` would return
    them from that dense product with ``excluded`` (one CSR row per vector: its stored columns) and
    ``filter_items`` masked, without the dense product: register tiles of scores (`_score_tile`), ``chunk``
    users per parallel task. Fewer than ``_PACKED_MIN_USERS`` vectors (or ``packed=False``) are scored by a
    matrix product and ``top_n`` instead: re-laying the items out costs more than it saves there.

    The small path calls BLAS: pin BLAS to one thread around this call when it runs in parallel code.
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
    if excluded is not None and excluded.shape != (n_users, n_items):
        raise ValueError(f"excluded has shape {excluded.shape}, expected {(n_users, n_items)}")
    filtered = np.empty(0, np.int64) if filter_items is None else np.asarray(filter_items, np.int64)
    filtered = filtered[(filtered >= 0) & (filtered < n_items)]
    if offsets is not None:
        offsets = np.ascontiguousarray(offsets, dtype=dtype)
    if not (n_users >= _PACKED_MIN_USERS if packed is None else packed):
        for lo in range(0, n_users, _DENSE_BLOCK):
            hi = min(lo + _DENSE_BLOCK, n_users)
            with np.errstate(invalid="ignore"):  # inf * 0 in the factors: NaN scores, never selected
                scores = vectors[lo:hi] @ item_factors.T
            if offsets is not None:
                scores += offsets
            mask_items(scores, None if excluded is None else excluded[lo:hi], filtered)
            ids[lo:hi], best[lo:hi] = top_n(scores, n)
        return ids, best
    if excluded is None:
        indptr, indices = np.zeros(n_users + 1, dtype=np.int64), np.empty(0, dtype=np.int64)
    else:
        excluded = excluded if excluded.has_sorted_indices else excluded.sorted_indices()
        indptr = excluded.indptr.astype(np.int64, copy=False)
        indices = excluded.indices.astype(np.int64, copy=False)
    blocked = np.zeros(n_items, dtype=np.bool_)
    blocked[filtered] = True
    # the first part: long enough for the column maxima (pass 1 of `_select`) to have rows to take maxima over
    # and whole strips, so that the second part starts on a strip of its own
    width = strip_width(dtype)
    n_first = min(n_items, -(-max(int(first_items or _FIRST_ITEMS), 4 * _BLOCKS_PER_N * n) // width) * width)
    order, position = _item_order(item_factors, n_first)
    items, padded_offsets = _pack(item_factors, offsets, order)
    users = vectors
    if n_users % ROWS:
        users = np.zeros((n_users + ROWS - n_users % ROWS, vectors.shape[1]), dtype=dtype)
        users[:n_users] = vectors
    chunk = ROWS * max(1, -(-int(chunk or _CHUNK) // ROWS))
    with nb.parallel_chunksize(1):
        _score_top_n(users, items, padded_offsets, order, position, n_first, indptr, indices, blocked,
                     np.unique(filtered), n, chunk, _tasks(-(-n_users // chunk)), ids, best)
    return ids, best
