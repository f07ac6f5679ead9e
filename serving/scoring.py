"""Per-request top-N over a loaded bundle's factors, fast enough for one user in well under a millisecond.

`ModelBundle.recommend_many` is the reference (and what offline evaluation uses); this module returns the same
items for the API without its per-call overheads (validating the whole seen-items matrix, a dense score row,
`argpartition` over every item) and with a quarter of its memory traffic. At 100k items x 64 factors the
float32 item factors are 25.6 MB: streaming them is the cost of a request, more so with other processes
competing for the memory bus. So each user is scored in two steps, both in one numba function that releases
the GIL (FastAPI's threadpool scores on both cores while the event loop parses HTTP):

1. Bounds from int8 factors (6.4 MB, one scale per item): ``s_i = y_i . u`` lies within
   ``scale_i * (q_i . u) +- e_i`` with ``e_i = 0.51 * scale_i * |u|_1`` (rounding to int8 moves each component
   by at most scale/2; the extra 0.01 covers float rounding in both sums). A running top-n of the lower
   bounds gives a threshold; items whose upper bound reaches it are candidates (about a hundred for top 10).
2. Exact float32 scores for the candidates only, top-n of those.

Every true top-n item is a candidate (its upper bound >= its score >= the n-th best score >= every threshold
on the way), so the result is exact, not approximate. Ties keep the lower item index first.
tests/test_serving_scoring.py checks the results against the bundle, adversarial factors included.

A bundle of kind ``popularity`` has no factors: a known user's list is the popularity ranking walked from the
top, skipping the user's seen items (`_popular_unseen`), which is what `PopularityRecommender.recommend` gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np
import scipy.sparse as sp

from als_core.bundle import SOURCE_ALS, SOURCE_FOLD_IN, SOURCE_POPULARITY, ModelBundle, NoItemFactors
from als_core.topk import insert_sorted, mask_items, top_n
from serving import _vnni

# Reassociation lets LLVM vectorise the dot products; NaN/inf semantics stay.
_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}
_BOUND_SLACK = 0.51
_BLOCK = 256  # items whose bounds are computed together (a small buffer that stays in L1)
_GEMM_MIN_USERS = 16  # from this many users per call, one matrix product per block of users is faster
_GEMM_BLOCK = 32  # users per matrix product: a 32 x 100k float32 score block is 12.8 MB


@nb.njit(nogil=True, fastmath=_FASTMATH, inline="always")
def _upper_bounds(q, scale, u32, h, start, stop, out):
    """out[t] = scale_i * (q_i . u + h) for items start..stop: float32 throughout (int8 * float64 would
    promote the whole loop to float64 and halve its width)."""
    for i in range(start, stop):
        acc = np.float32(0)
        for j in range(q.shape[1]):
            acc += np.float32(q[i, j]) * u32[j]
        out[i - start] = (acc + h) * scale[i]


@nb.njit(nogil=True, inline="always")
def _contains(sorted_items, lo, hi, item):
    end = hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_items[mid] < item:
            lo = mid + 1
        else:
            hi = mid
    return lo < end and sorted_items[lo] == item


@nb.njit(nogil=True, fastmath=_FASTMATH, inline="always")
def _tile_bounds(tiles, tile_err, scale, user, shift, s_u, h, start, stop, dots, out):
    """The upper bounds of ``_upper_bounds`` from the VNNI tiles (serving/_vnni.py): ``q_i . q_u`` exactly in
    int32 against the user quantised to int8 too (``u = s_u * (q_u + f)``, ``|f_j| <= 1/2``), so the bound
    widens by ``scale_i * s_u * |q_i|_1 / 2`` (``tile_err`` holds ``scale_i * 0.51 * |q_i|_1``)."""
    for tile_start in range(start, stop, _vnni.TILE):
        at = tile_start - start
        _vnni.dot_tile(tiles, (tile_start // _vnni.TILE) * len(user) * _vnni.TILE, user, dots[at:at + _vnni.TILE])
    for i in range(start, stop):
        out[i - start] = scale[i] * (s_u * np.float32(dots[i - start] - shift) + h) + s_u * tile_err[i]


@nb.njit(nogil=True, fastmath=_FASTMATH, cache=True)
def _top_n(q, scale, tiles, tile_err, offsets, offset_err, factors, vectors, n, excl_indptr, excl_indices,
           out_ids, out_scores):
    """Per row of ``vectors``: the top-``n`` items of ``factors @ u + offsets``, best first, without the row's
    excluded items (CSR rows, sorted indices). Unfilled slots get id -1 and score -inf. ``offsets`` and
    ``offset_err`` (their float32 rounding bound) are empty when the model ranks by the dot product alone.
    The bounds come from ``tiles`` (VNNI) when it is not empty, else from ``q``."""
    n_items, k = factors.shape
    has_offsets = len(offsets) > 0
    tiled = len(tiles) > 0
    out_ids[:, :] = -1
    out_scores[:, :] = -np.inf
    bounds = np.empty(_BLOCK, np.float32)
    u32 = np.empty(k, np.float32)
    groups = -(-k // _vnni.GROUP)
    user_bytes = np.zeros(groups * _vnni.GROUP, np.int8)
    user_words = user_bytes.view(np.int32)
    dots = np.empty(_BLOCK, np.int32)
    low_ids = np.empty(n, np.int64)
    low = np.empty(n, np.float32)  # the n best lower bounds so far, -inf where unfilled
    cand = np.empty(1024, np.int64)
    cand_up = np.empty(1024, np.float32)
    for b in range(vectors.shape[0]):
        u = vectors[b]
        ex_lo, ex_hi = excl_indptr[b], excl_indptr[b + 1]
        h = np.float32(0)
        peak = np.float32(0)
        for j in range(k):
            u32[j] = u[j]
            h += abs(u32[j])
            peak = max(peak, abs(u32[j]))
        h *= np.float32(_BOUND_SLACK)
        s_u = np.float32(0)
        shift = 0
        if tiled:
            s_u = peak / np.float32(127)
            if not s_u > 0:  # all zeros, or so small that the step underflows
                s_u = np.float32(1)
            for j in range(k):
                v = min(max(np.rint(u32[j] / s_u), -127), 127)
                user_bytes[j] = np.int8(v)
                shift += np.int32(v)
            shift *= _vnni.OFFSET  # the tiles hold q + 128
        low.fill(np.float32(-np.inf))  # numba's `low[:] = -inf` costs 3% of a request
        threshold = np.float32(-np.inf)
        n_cand = 0
        for start in range(0, n_items, _BLOCK):
            stop = min(start + _BLOCK, n_items)
            if tiled:
                _tile_bounds(tiles, tile_err, scale, user_words, shift, s_u, h, start, stop, dots, bounds)
            else:
                _upper_bounds(q, scale, u32, h, start, stop, bounds)
            if not has_offsets:
                reach = 0
                for t in range(stop - start):
                    reach += bounds[t] >= threshold
                if reach == 0:  # most blocks once the threshold has settled: no item-by-item loop
                    continue
            for t in range(stop - start):
                i = start + t
                up = bounds[t]
                if has_offsets:
                    up += offsets[i] + offset_err[i]
                if not up >= threshold:
                    continue
                if ex_hi > ex_lo and _contains(excl_indices, ex_lo, ex_hi, i):
                    continue
                if n_cand == len(cand):
                    cand = np.concatenate((cand, np.empty(len(cand), np.int64)))
                    cand_up = np.concatenate((cand_up, np.empty(len(cand_up), np.float32)))
                cand[n_cand] = i
                cand_up[n_cand] = up
                n_cand += 1
                lower = up - 2 * scale[i] * h
                if tiled:
                    lower -= 2 * s_u * tile_err[i]
                if has_offsets:
                    lower -= 2 * offset_err[i]
                if lower > threshold:  # threshold: the n-th best lower bound so far (-inf until n are in)
                    insert_sorted(low_ids, low, n, i, lower)
                    threshold = low[n - 1]
        for c in range(n_cand):
            if not cand_up[c] >= threshold:
                continue
            i = cand[c]
            s = factors[i, 0] * 0
            if has_offsets:
                s += offsets[i]
            for j in range(k):
                s += factors[i, j] * u[j]
            if s > out_scores[b, n - 1]:
                insert_sorted(out_ids[b], out_scores[b], n, i, s)


@nb.njit(nogil=True, cache=True)
def _popular_unseen(ranking, item_scores, n, excl_indptr, excl_indices, out_ids, out_scores):
    """Per row: the first ``n`` items of ``ranking`` not among the row's excluded items (CSR rows, sorted
    indices), with their ``item_scores``; unfilled slots keep what the caller put there (-1, -inf)."""
    for b in range(len(excl_indptr) - 1):
        lo, hi = excl_indptr[b], excl_indptr[b + 1]
        count = 0
        for r in range(len(ranking)):
            if count == n:
                break
            i = ranking[r]
            if hi > lo and _contains(excl_indices, lo, hi, i):
                continue
            out_ids[b, count] = i
            out_scores[b, count] = item_scores[i]
            count += 1


@dataclass(frozen=True)
class ItemMatrix:
    """Item vectors in the forms the kernels read: exact (``factors``, the model's dtype), int8 with one float32
    scale per item (item rows in ``q``, or VNNI tiles in ``tiles`` with ``tile_err`` where the CPU has
    VNNI: serving/_vnni.py), optionally a transposed copy for batches (BLAS multiplies a contiguous factors x
    items matrix ~1.5x faster), and optional per-item offsets (explicit-mode item biases)."""

    factors: np.ndarray
    q: np.ndarray
    scale: np.ndarray
    offsets: np.ndarray
    offset_err: np.ndarray
    factors_t: np.ndarray | None
    tiles: np.ndarray
    tile_err: np.ndarray

    @classmethod
    def of(cls, factors: np.ndarray, offsets: np.ndarray | None = None, batches: bool = True,
           tiles: bool | None = None) -> ItemMatrix:
        """``tiles``: bounds from VNNI tiles (None: where the CPU has VNNI) or from int8 rows."""
        factors = np.ascontiguousarray(factors)
        peak = np.abs(factors).max(axis=1) if factors.shape[1] else np.zeros(len(factors), factors.dtype)
        scale = np.where(peak > 0, peak / 127, 1)
        q = np.clip(np.rint(factors / scale[:, None]), -127, 127).astype(np.int8)
        # float32 scales/offsets round by ~6e-8 relative: a 1e-5 relative allowance covers them
        scale32 = (scale * (1 + 1e-5)).astype(np.float32)
        if offsets is None:
            offsets32 = offset_err = np.empty(0, np.float32)
        else:
            offsets32 = np.asarray(offsets, np.float32)
            offset_err = (np.abs(offsets32) * 1e-5 + 1e-30).astype(np.float32)
        factors_t = np.ascontiguousarray(factors.T) if batches else None
        if _vnni.AVAILABLE if tiles is None else tiles:
            tiled = _vnni.tile_layout(q)
            tile_err = (scale32 * _BOUND_SLACK * np.abs(q.astype(np.float32)).sum(axis=1)).astype(np.float32)
            q = np.empty((0, q.shape[1]), np.int8)
        else:
            tiled, tile_err = np.empty(0, np.int32), np.empty(0, np.float32)
        return cls(factors, q, scale32, offsets32, offset_err, factors_t, tiled, tile_err)

    def top_n(self, vectors: np.ndarray, n: int, excl_indptr, excl_indices) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), one row per vector, -1 / -inf padded to min(n, items) columns."""
        n_out = min(int(n), len(self.factors))
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=self.factors.dtype)
        excl_indptr, excl_indices = np.asarray(excl_indptr, np.int64), np.asarray(excl_indices, np.int64)
        out_ids = np.full((len(vectors), n_out), -1, np.int64)
        out_scores = np.full((len(vectors), n_out), -np.inf, self.factors.dtype)
        if n_out == 0 or len(vectors) == 0:
            return out_ids, out_scores
        if len(vectors) < _GEMM_MIN_USERS or self.factors_t is None:
            _top_n(self.q, self.scale, self.tiles, self.tile_err, self.offsets, self.offset_err, self.factors,
                   vectors, n_out, excl_indptr, excl_indices, out_ids, out_scores)
            return out_ids, out_scores
        # many users: a matrix product reads the item factors once per block of users, which beats
        # streaming even the int8 copy once per user
        for lo in range(0, len(vectors), _GEMM_BLOCK):
            hi = min(lo + _GEMM_BLOCK, len(vectors))
            scores = vectors[lo:hi] @ self.factors_t
            if len(self.offsets):
                scores += self.offsets
            indptr = excl_indptr[lo:hi + 1] - excl_indptr[lo]
            excluded = sp.csr_matrix((np.ones(indptr[-1], np.float32), excl_indices[excl_indptr[lo]:excl_indptr[hi]],
                                      indptr), shape=scores.shape)
            mask_items(scores, excluded, None)  # the offline path's own selection: same ids, same ties
            out_ids[lo:hi], out_scores[lo:hi] = top_n(scores, n_out)
        return out_ids, out_scores


@dataclass(frozen=True)
class Scored:
    """Top-N rows for a list of users: ``item_index`` into the bundle's items (-1 padded), scores, sources."""

    item_index: np.ndarray
    scores: np.ndarray
    sources: np.ndarray


class Scorer:
    """Read-only scoring state built once per loaded model version (never mutated after construction)."""

    def __init__(self, bundle: ModelBundle, max_n: int):
        model = bundle.model
        self.bundle = bundle
        self.max_n = int(max_n)
        self.n_items = len(bundle.items)
        if model is not None:
            self.user_factors = np.ascontiguousarray(model.user_factors)
            item_factors = np.ascontiguousarray(model.item_factors)
            if not (np.isfinite(item_factors).all() and np.isfinite(self.user_factors).all()):
                raise ValueError("the model has non-finite factors: refusing to serve it")
            biases = model.item_bias if getattr(model, "use_biases", False) else None  # explicit mode ranks by them
            self.items = ItemMatrix.of(item_factors, biases)
            norms = np.linalg.norm(item_factors, axis=1)
            self.normalised_items = ItemMatrix.of(item_factors / np.where(norms > 0, norms, 1)[:, None],
                                                  batches=False)
        else:
            self.ranking = np.ascontiguousarray(bundle.popularity.ranking, dtype=np.int64)
            self.item_scores = np.ascontiguousarray(bundle.popularity.item_scores, dtype=np.float32)
        seen = sp.csr_matrix(bundle.seen)
        seen.sort_indices()
        self.seen_indptr = seen.indptr.astype(np.int64)
        self.seen_indices = seen.indices  # int32 as scipy keeps them; a request's few are widened on use
        self.has_history = np.diff(self.seen_indptr) > 0
        # unknown users and users without history all get the same list: compute it once
        ids, scores = bundle.popularity.recommend(0, None, N=self.max_n, filter_already_liked_items=False)
        keep = ids >= 0
        self.popular_index, self.popular_scores = ids[keep], scores[keep].astype(np.float32)
        self._warm_up()

    def _warm_up(self) -> None:
        """Compile (or load from numba's cache) the kernel and als_core's fold-in solve before the first
        request, not during it: a cold numba compile takes seconds."""
        if self.n_items and self.bundle.model is None:
            self._top_unseen(np.zeros(2, np.int64), np.empty(0, np.int64), 1, 1)
        elif self.n_items:
            self.items.top_n(self.user_factors[:1], 1, np.zeros(2, np.int64), np.empty(0, np.int64))
            self.fold_in([(self.bundle.item_ids[:1], np.ones(1, np.float32))], 1)

    def _top_unseen(self, indptr: np.ndarray, indices: np.ndarray, n_users: int, n: int):
        """A popularity model's lists: the ranking without each user's seen items."""
        n_out = min(int(n), self.n_items)
        ids = np.full((n_users, n_out), -1, np.int64)
        scores = np.full((n_users, n_out), -np.inf, np.float32)
        _popular_unseen(self.ranking, self.item_scores, n_out, indptr, np.asarray(indices, np.int64), ids, scores)
        return ids, scores

    def _empty(self, n_users: int, n: int) -> Scored:
        n_out = min(int(n), self.n_items)
        return Scored(np.full((n_users, n_out), -1, np.int64), np.full((n_users, n_out), -np.inf, np.float32),
                      np.full(n_users, SOURCE_POPULARITY, dtype="<U10"))

    def _fill_popular(self, out: Scored, rows: np.ndarray, n: int) -> None:
        m = min(int(n), len(self.popular_index))
        out.item_index[rows, :m] = self.popular_index[:m]
        out.scores[rows, :m] = self.popular_scores[:m]
        out.sources[rows] = SOURCE_POPULARITY

    def recommend_rows(self, user_rows: np.ndarray, n: int) -> Scored:
        """Users by bundle row (-1: unknown). Known users with history: ALS (a popularity model: its ranking),
        seen items excluded; others: the popularity list (a user without history has seen nothing to
        exclude)."""
        user_rows = np.asarray(user_rows, dtype=np.int64)
        if len(user_rows) == 1:  # a single-user GET: without the masks and concatenations below
            row = int(user_rows[0])
            if row < 0 or not self.has_history[row]:
                out = self._empty(1, n)
                self._fill_popular(out, 0, n)
                return out
            if self.bundle.model is not None:
                lo, hi = self.seen_indptr[row], self.seen_indptr[row + 1]
                ids, scores = self.items.top_n(self.user_factors[row:row + 1], n, np.array([0, hi - lo]),
                                               self.seen_indices[lo:hi])
                return Scored(ids, scores.astype(np.float32, copy=False), np.array([SOURCE_ALS], dtype="<U10"))
        out = self._empty(len(user_rows), n)
        scored = user_rows >= 0
        scored[scored] = self.has_history[user_rows[scored]]
        if scored.any():
            rows = user_rows[scored]
            starts, stops = self.seen_indptr[rows], self.seen_indptr[rows + 1]
            indptr = np.concatenate([[0], np.cumsum(stops - starts)])
            indices = np.concatenate([self.seen_indices[a:b] for a, b in zip(starts, stops)])
            if self.bundle.model is None:
                out.item_index[scored], out.scores[scored] = self._top_unseen(indptr, indices, len(rows), n)
                out.sources[scored] = SOURCE_POPULARITY
            else:
                out.item_index[scored], out.scores[scored] = self.items.top_n(self.user_factors[rows], n, indptr,
                                                                              indices)
                out.sources[scored] = SOURCE_ALS
        if (~scored).any():
            self._fill_popular(out, np.flatnonzero(~scored), n)
        return out

    def fold_in(self, histories: list[tuple[np.ndarray, np.ndarray]], n: int) -> Scored:
        """Users the model does not know, from their own (item ids, weights): one exact least-squares solve per
        user against the item factors (`ALS.recalculate_user`, the same as `ModelBundle.fold_in`), their items
        excluded. A user with no item the model knows (every user, for a popularity model) gets the
        popularity list."""
        out = self._empty(len(histories), n)
        if self.bundle.model is None:
            self._fill_popular(out, np.arange(len(histories)), n)
            return out
        folded, interactions = self.fold_in_rows(histories)
        if folded:
            vectors = np.atleast_2d(self.bundle.model.recalculate_user(interactions))
            out.item_index[folded], out.scores[folded] = self.items.top_n(vectors, n, interactions.indptr,
                                                                          interactions.indices)
            out.sources[folded] = SOURCE_FOLD_IN
        rest = np.setdiff1d(np.arange(len(histories)), folded)
        if len(rest):
            self._fill_popular(out, rest, n)
        return out

    def fold_in_rows(self, histories: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[int], sp.csr_matrix]:
        """The histories that have an item the model knows (positions), as interaction rows over its items."""
        rows, cols, vals = [], [], []
        folded = []
        for pos, (item_ids, weights) in enumerate(histories):
            index = self.bundle.items.lookup(item_ids)
            weights = np.asarray(weights, np.float32)
            keep = (index >= 0) & (weights > 0)
            if keep.any():
                rows.append(np.full(keep.sum(), len(folded)))
                cols.append(index[keep])
                vals.append(weights[keep])
                folded.append(pos)
        if not folded:
            return [], sp.csr_matrix((0, self.n_items), dtype=np.float32)
        interactions = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                     shape=(len(folded), self.n_items))
        interactions.sum_duplicates()
        interactions.sort_indices()
        return folded, interactions

    def similar_items(self, item_index: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Items closest to one item by cosine similarity of item factors, the item itself excluded (as
        `ALS.similar_items`, with the normalised factors computed once per model instead of per call). A
        popularity model has no factors: NoItemFactors."""
        if self.bundle.model is None:
            raise NoItemFactors("a popularity model has no item factors: no similar items")
        ids, scores = self.normalised_items.top_n(self.normalised_items.factors[item_index], n,
                                                  np.array([0, 1]), np.array([item_index]))
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]
