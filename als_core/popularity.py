"""Most-popular baseline with the ``recommend`` contract of ``implicit`` 0.7 recommenders.

Popularity is the number of distinct users per item. Every user gets the same ranking, so
recommending walks down it from the top, skipping the items a user has seen and the filtered ones:
at most N + (items seen) + (items filtered) positions per user, never a users x items block.
"""

from __future__ import annotations

import os

import numba as nb
import numpy as np
import scipy.sparse as sp

__all__ = ["PopularityRecommender"]

_FORMAT_VERSION = 1


@nb.njit(cache=True)
def _first_free_ranks(indptr, seen_ranks, blocked, out):
    """``out[u]``: the first ``out.shape[1]`` ranks (positions in the ranking) that are neither among user u's
    ``seen_ranks[indptr[u]:indptr[u + 1]]`` nor ``blocked``, in order; -1 where fewer are left."""
    taken = blocked.copy()
    n_ranks, n = len(blocked), out.shape[1]
    for u in range(len(indptr) - 1):
        for p in range(indptr[u], indptr[u + 1]):
            taken[seen_ranks[p]] = True
        count = 0
        rank = 0
        while count < n and rank < n_ranks:
            if not taken[rank]:
                out[u, count] = rank
                count += 1
            rank += 1
        for p in range(indptr[u], indptr[u + 1]):  # back to the blocked ranks only
            taken[seen_ranks[p]] = blocked[seen_ranks[p]]


class PopularityRecommender:
    """Recommends the items used by the most distinct users.

    Attributes after ``fit``: ``item_scores`` (float32 per item: number of distinct users),
    ``item_weights`` (float64 per item: total interaction weight), ``n_items``.
    Ranking: more users first, ties broken by larger total weight, then smaller item index.
    """

    def __init__(self) -> None:
        self.item_scores: np.ndarray | None = None
        self.item_weights: np.ndarray | None = None
        self.n_items: int = 0
        self._ranking: np.ndarray | None = None  # item ids, best first
        self._rank_of: np.ndarray | None = None  # position of each item in _ranking

    # ------------------------------------------------------------------ fitting and persistence

    def fit(self, user_items: sp.spmatrix) -> PopularityRecommender:
        """Count, per item, the users with a nonzero entry and the total weight; returns self."""
        if not sp.issparse(user_items):
            raise ValueError(f"user_items must be a scipy sparse matrix, got {type(user_items).__name__}")
        m = sp.csr_matrix(user_items, copy=True)
        m.sum_duplicates()
        m.eliminate_zeros()
        n_items = m.shape[1]
        users = np.bincount(m.indices, minlength=n_items)
        weights = np.bincount(m.indices, weights=m.data.astype(np.float64), minlength=n_items)
        self._set(users.astype(np.float32), weights)
        return self

    def _set(self, item_scores: np.ndarray, item_weights: np.ndarray) -> None:
        self.item_scores = item_scores
        self.item_weights = item_weights
        self.n_items = len(item_scores)
        index = np.arange(self.n_items)
        self._ranking = np.lexsort((index, -item_weights, -item_scores.astype(np.float64)))
        self._rank_of = np.empty(self.n_items, dtype=np.int64)
        self._rank_of[self._ranking] = index

    def save(self, path: str | os.PathLike) -> None:
        """Write an ``.npz`` file (``.npz`` is appended when ``path`` lacks it, as numpy does)."""
        self._check_fitted()
        np.savez(path, item_scores=self.item_scores, item_weights=self.item_weights, version=_FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PopularityRecommender:
        """Read a file written by ``save`` (``path`` with or without its ``.npz`` suffix)."""
        path = os.fspath(path)
        if not os.path.exists(path) and os.path.exists(path + ".npz"):
            path += ".npz"
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != _FORMAT_VERSION:
                raise ValueError(f"{path}: unsupported format version {int(data['version'])}")
            model = cls()
            model._set(data["item_scores"].astype(np.float32), data["item_weights"].astype(np.float64))
        return model

    @property
    def ranking(self) -> np.ndarray:
        """Item ids, most popular first: the order ``recommend`` follows (read-only view)."""
        self._check_fitted()
        view = self._ranking.view()
        view.flags.writeable = False
        return view

    @property
    def rank_of(self) -> np.ndarray:
        """Each item's position in ``ranking`` (0: the most popular; read-only view)."""
        self._check_fitted()
        view = self._rank_of.view()
        view.flags.writeable = False
        return view

    # ------------------------------------------------------------------ recommending

    def _check_fitted(self) -> None:
        if self.item_scores is None:
            raise ValueError("PopularityRecommender is not fitted: call fit() or load() first")

    def _user_rows(self, user_ids: np.ndarray, user_items, need_rows: bool) -> sp.csr_matrix | None:
        """One CSR row per requested user (``user_items`` as given or indexed by ``user_ids``)."""
        if user_items is None:
            if need_rows:
                raise ValueError("user_items is required when filter_already_liked_items=True")
            return None
        if not sp.issparse(user_items):
            raise ValueError(f"user_items must be a scipy sparse matrix, got {type(user_items).__name__}")
        if user_items.shape[1] != self.n_items:
            raise ValueError(f"user_items has {user_items.shape[1]} columns, the model knows {self.n_items} items")
        rows = sp.csr_matrix(user_items)
        if rows.shape[0] != len(user_ids):
            if len(user_ids) and (user_ids.min() < 0 or user_ids.max() >= rows.shape[0]):
                raise ValueError(f"user ids out of range for user_items with {rows.shape[0]} rows")
            rows = rows[user_ids]
        return rows if need_rows else None

    def _filter_ranks(self, filter_items) -> np.ndarray:
        if filter_items is None:
            return np.empty(0, dtype=np.int64)
        items = np.unique(np.asarray(filter_items, dtype=np.int64))
        if len(items) and (items[0] < 0 or items[-1] >= self.n_items):
            raise ValueError(f"filter_items must be in [0, {self.n_items})")
        return self._rank_of[items]

    def recommend(
        self,
        user_ids,
        user_items: sp.spmatrix | None,
        N: int = 10,
        filter_already_liked_items: bool = True,
        filter_items=None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Most popular items per user, as (ids int64, scores float32), best first.

        ``user_ids``: a scalar (results are 1-D) or an array (results are 2-D, one row per id).
        ``user_items``: CSR with one row per requested user, or the full user x item matrix, whose
        rows ``user_ids`` are then taken (chosen by its row count, as in implicit 0.7). It may be
        None when ``filter_already_liked_items`` is False. Each row has min(N, n_items) columns;
        when fewer items are left after filtering, the tail is padded with id -1 and score -inf.
        """
        self._check_fitted()
        if int(N) != N or N < 1:
            raise ValueError(f"N must be an integer >= 1, got {N!r}")
        scalar = np.ndim(user_ids) == 0
        ids = np.atleast_1d(np.asarray(user_ids, dtype=np.int64))
        rows = self._user_rows(ids, user_items, filter_already_liked_items)
        blocked = np.zeros(self.n_items, dtype=np.bool_)
        blocked[self._filter_ranks(filter_items)] = True
        if rows is None:
            indptr, seen_ranks = np.zeros(len(ids) + 1, dtype=np.int64), np.empty(0, dtype=np.int64)
        else:
            indptr, seen_ranks = rows.indptr.astype(np.int64, copy=False), self._rank_of[rows.indices]
        ranks = np.full((len(ids), min(int(N), self.n_items)), -1, dtype=np.int64)
        _first_free_ranks(indptr, seen_ranks, blocked, ranks)
        found = ranks >= 0
        items = np.where(found, self._ranking[np.where(found, ranks, 0)], -1)
        scores = np.where(found, self.item_scores[items], -np.inf).astype(np.float32)
        return (items[0], scores[0]) if scalar else (items, scores)
