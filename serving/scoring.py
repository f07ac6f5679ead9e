"""Per-request top-N over a loaded bundle's factors, fast enough for one user in well under a millisecond.

`ModelBundle.recommend_many` is the reference (and what offline evaluation uses); this module answers the same
question for the API without its per-call overheads: validating the whole seen-items matrix, a dense score
row, a copy for negation and `argpartition` over every item. One numba pass per block of users computes each
item's score once and keeps a sorted top-N (almost every item fails the first comparison), skipping the
user's seen items by binary search only for the few that pass. It releases the GIL, so FastAPI's threadpool
scores requests on both cores while the event loop parses HTTP. tests/test_serving_scoring.py checks that it
returns what the bundle returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np
import scipy.sparse as sp

from als_core.bundle import SOURCE_ALS, SOURCE_FOLD_IN, SOURCE_POPULARITY, ModelBundle

# Reassociation lets LLVM vectorise the 64-wide dot; NaN/inf semantics stay (a NaN score is never selected).
_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}
# Users scored together share one pass over the item factors (memory traffic), but each adds a dot per item.
_USER_BLOCK = 16


@nb.njit(nogil=True, fastmath=_FASTMATH, cache=True)
def _top_n_block(item_factors, item_offsets, vectors, n, excl_indptr, excl_indices, out_ids, out_scores):
    """Top-``n`` items of ``vectors @ item_factors.T + item_offsets`` per row, best first, skipping each row's
    excluded items (CSR rows with sorted indices). Unfilled slots keep id -1 and score -inf."""
    n_items, k = item_factors.shape
    n_users = vectors.shape[0]
    counts = np.zeros(n_users, np.int64)
    out_ids[:, :] = -1
    out_scores[:, :] = -np.inf
    for i in range(n_items):
        for b in range(n_users):
            s = item_offsets[i]
            for j in range(k):
                s += item_factors[i, j] * vectors[b, j]
            # beat the row's last entry (-inf while the row is not full: any real score enters, NaN never)
            if not s > out_scores[b, n - 1]:
                continue
            lo = excl_indptr[b]
            hi = excl_indptr[b + 1]
            end = hi
            while lo < hi:
                mid = (lo + hi) >> 1
                if excl_indices[mid] < i:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < end and excl_indices[lo] == i:
                continue
            c = counts[b]
            pos = c if c < n else n - 1
            while pos > 0 and out_scores[b, pos - 1] < s:
                out_scores[b, pos] = out_scores[b, pos - 1]
                out_ids[b, pos] = out_ids[b, pos - 1]
                pos -= 1
            out_scores[b, pos] = s
            out_ids[b, pos] = i
            if c < n:
                counts[b] = c + 1
    return counts


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
        self.item_factors = np.ascontiguousarray(model.item_factors)
        self.user_factors = np.ascontiguousarray(model.user_factors)
        dtype = self.item_factors.dtype
        if not (np.isfinite(self.item_factors).all() and np.isfinite(self.user_factors).all()):
            raise ValueError("the model has non-finite factors: refusing to serve it")
        offsets = getattr(model, "item_bias", None) if getattr(model, "use_biases", False) else None
        self.item_offsets = (np.zeros(self.n_items, dtype) if offsets is None
                             else np.ascontiguousarray(offsets, dtype=dtype))
        seen = sp.csr_matrix(bundle.seen)
        seen.sort_indices()
        self.seen_indptr = seen.indptr.astype(np.int64)
        self.seen_indices = seen.indices.astype(np.int64)
        self.has_history = np.diff(self.seen_indptr) > 0
        norms = np.linalg.norm(self.item_factors, axis=1)
        self.normalised_items = (self.item_factors / np.where(norms > 0, norms, 1)[:, None]).astype(dtype)
        self._zero_offsets = np.zeros(self.n_items, dtype)
        # unknown users and users without history all get the same list: compute it once
        ids, scores = bundle.popularity.recommend(0, None, N=self.max_n, filter_already_liked_items=False)
        keep = ids >= 0
        self.popular_index, self.popular_scores = ids[keep], scores[keep].astype(np.float32)
        self._warm_up()

    def _warm_up(self) -> None:
        """Compile (or load from numba's cache) this kernel and als_core's fold-in solve before the first
        request, not during it: a cold numba compile takes seconds."""
        self._top_n(self.item_factors[:1], self.item_offsets[:1], self.user_factors[:1],
                    np.zeros(2, np.int64), np.empty(0, np.int64), 1)
        if self.n_items:
            self.fold_in([(self.bundle.item_ids[:1], np.ones(1, np.float32))], 1)

    def _top_n(self, item_factors, item_offsets, vectors, indptr, indices, n) -> tuple[np.ndarray, np.ndarray]:
        n_out = min(int(n), item_factors.shape[0])
        out_ids = np.empty((len(vectors), n_out), np.int64)
        out_scores = np.empty((len(vectors), n_out), item_factors.dtype)
        if n_out == 0:
            return out_ids, out_scores
        vectors = np.ascontiguousarray(vectors, dtype=item_factors.dtype)
        for lo in range(0, len(vectors), _USER_BLOCK):
            hi = min(lo + _USER_BLOCK, len(vectors))
            _top_n_block(item_factors, item_offsets, vectors[lo:hi], n_out, indptr[lo:hi + 1] - indptr[lo],
                         indices[indptr[lo]:indptr[hi]], out_ids[lo:hi], out_scores[lo:hi])
        return out_ids, out_scores

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
        """Users by bundle row (-1: unknown). Known users with history: ALS, seen items excluded; others:
        the popularity list (a user without history has seen nothing to exclude)."""
        user_rows = np.asarray(user_rows, dtype=np.int64)
        out = self._empty(len(user_rows), n)
        scored = user_rows >= 0
        scored[scored] = self.has_history[user_rows[scored]]
        if scored.any():
            rows = user_rows[scored]
            starts, stops = self.seen_indptr[rows], self.seen_indptr[rows + 1]
            indptr = np.concatenate([[0], np.cumsum(stops - starts)])
            indices = (np.concatenate([self.seen_indices[a:b] for a, b in zip(starts, stops)])
                       if len(rows) else np.empty(0, np.int64))
            ids, scores = self._top_n(self.item_factors, self.item_offsets, self.user_factors[rows], indptr,
                                      indices, n)
            out.item_index[scored], out.scores[scored] = ids, scores
            out.sources[scored] = SOURCE_ALS
        if (~scored).any():
            self._fill_popular(out, np.flatnonzero(~scored), n)
        return out

    def fold_in(self, histories: list[tuple[np.ndarray, np.ndarray]], n: int) -> Scored:
        """Users the model does not know, from their own (item ids, weights): one exact least-squares solve per
        user against the item factors (`ALS.recalculate_user`, the same as `ModelBundle.fold_in`), their items
        excluded. A user with no item the model knows gets the popularity list."""
        out = self._empty(len(histories), n)
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
        if folded:
            interactions = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                         shape=(len(folded), self.n_items))
            interactions.sum_duplicates()
            interactions.sort_indices()
            vectors = np.atleast_2d(self.bundle.model.recalculate_user(interactions))
            ids, scores = self._top_n(self.item_factors, self.item_offsets, vectors,
                                      interactions.indptr.astype(np.int64), interactions.indices.astype(np.int64), n)
            out.item_index[folded], out.scores[folded] = ids, scores
            out.sources[folded] = SOURCE_FOLD_IN
        rest = np.setdiff1d(np.arange(len(histories)), folded)
        if len(rest):
            self._fill_popular(out, rest, n)
        return out

    def similar_items(self, item_index: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Items closest to one item by cosine similarity of item factors, the item itself excluded (as
        `ALS.similar_items`, with the normalised factors computed once per model instead of per call)."""
        ids, scores = self._top_n(self.normalised_items, self._zero_offsets,
                                  self.normalised_items[item_index:item_index + 1],
                                  np.array([0, 1], np.int64), np.array([item_index], np.int64), n)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]
