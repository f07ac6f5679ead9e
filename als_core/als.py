"""Alternating Least Squares for implicit feedback (Hu, Koren, Volinsky 2008) and for explicit ratings.

The Python-level model lives here; the per-row hot loops live in ``_kernels``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Callable, Iterator

import numba as nb
import numpy as np
import scipy.linalg
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

from . import _kernels
from ._validation import as_csr, as_user_items, check_ids, check_n
from .hyperparameters import DEFAULTS, Hyperparameters
from .hyperparameters import names as hyperparameter_names
from .topk import score_top_n

log = logging.getLogger(__name__)

# row blocks handed to the threads per half-step: many more than threads, so a block of heavy rows
# (very popular items) does not leave the other threads idle
_BLOCKS_PER_THREAD = 64
_SCORE_BATCH = 2048
_PAIR_CHUNK = 1 << 16  # pairs per gather when the objective scores the nonzeros
_BLAS: ThreadpoolController | None = None  # scanning the loaded libraries costs milliseconds: do it once


def _blas_controller() -> ThreadpoolController:
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS


class ALS:
    """Matrix factorisation by alternating least squares, with an API familiar to ``implicit`` users.

    Implicit mode (default) minimises, over all user-item pairs,

        sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + lambda (sum_u n_u^w |x_u|^2 + sum_i n_i^w |y_i|^2)

    with confidence ``c_ui = 1 + alpha * r_ui`` and preference ``p_ui = [r_ui > 0]`` for the stored values
    ``r_ui >= 0`` (Hu, Koren, Volinsky 2008). ``n^w`` is 1, or the row's number of nonzeros when
    ``weighted_regularization`` (as Spark's ALS does). Note how ``implicit`` differs: it takes the stored
    value itself as the confidence (``c_ui = alpha * value``), so passing it ``1 + alpha * r`` with
    ``alpha=1`` gives it exactly this objective.

    Each half-step uses the precomputed gram: ``YtY`` is computed once, and each user adds only
    ``Y_u^T (C_u - I) Y_u`` over its own items. ``solver="cholesky"`` solves every row exactly;
    ``solver="cg"`` runs ``cg_steps`` conjugate-gradient steps warm-started from the previous factors,
    without forming the matrix. CG solves the users in the eigenbasis of ``YtY`` (both factor matrices
    turned by the same orthogonal matrix, which changes no score, loss or CG iterate), so the dense product
    with the gram costs k, not k^2, per user and step; ``fit`` turns the factors back before it returns,
    also when interrupted. Only a ``callback`` that reads the factors mid-fit sees them turned.

    Explicit mode (``implicit=False``) minimises the squared error over the observed ratings only, with
    optional biases: ``r_hat = mu + b_u + b_i + x_u . y_i`` (biases regularised like the factors).

    ``loss_history`` holds the objective after every iteration, divided by the total weight of the data
    term (implicit: the sum of confidences over all user-item pairs, the normalisation ``implicit``
    reports; explicit: the number of ratings). ``objective(user_items)`` computes the same value for whatever
    factors the model holds (e.g. factors another engine fitted), so fits compare on one number.

    The hyperparameters, their defaults and their checks are ``als_core.hyperparameters.Hyperparameters``:
    ``ALS.from_hyperparameters(h)`` builds a model from one, ``model.hyperparameters`` gives it back.
    """

    def __init__(
        self,
        factors: int = DEFAULTS.factors,
        regularization: float = DEFAULTS.regularization,
        alpha: float = DEFAULTS.alpha,
        iterations: int = DEFAULTS.iterations,
        solver: str = DEFAULTS.solver,
        cg_steps: int = DEFAULTS.cg_steps,
        implicit: bool = DEFAULTS.implicit,
        use_biases: bool = DEFAULTS.use_biases,
        weighted_regularization: bool = DEFAULTS.weighted_regularization,
        dtype=DEFAULTS.dtype,
        random_state: int | None = DEFAULTS.random_state,
        num_threads: int = 0,
        tol: float | None = DEFAULTS.tol,
        callback: Callable[[int, float, float], None] | None = None,
    ):
        checked = Hyperparameters(
            factors=factors, regularization=regularization, alpha=alpha, iterations=iterations, solver=solver,
            cg_steps=cg_steps, implicit=implicit, use_biases=use_biases,
            weighted_regularization=weighted_regularization, dtype=dtype, random_state=random_state, tol=tol)
        self.factors = checked.factors
        self.regularization = checked.regularization
        self.alpha = checked.alpha
        self.iterations = checked.iterations
        self.solver = checked.solver
        self.cg_steps = checked.cg_steps
        self.implicit = checked.implicit
        self.use_biases = checked.use_biases
        self.weighted_regularization = checked.weighted_regularization
        self.dtype = np.dtype(checked.dtype)
        self.random_state = checked.random_state
        self.tol = checked.tol
        self.num_threads = int(num_threads)
        self.callback = callback

        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self.user_bias: np.ndarray | None = None
        self.item_bias: np.ndarray | None = None
        self.global_mean = 0.0
        self.loss_history: list[float] = []
        self.failed_solves = 0
        self._item_gram: tuple | None = None  # (item factors, their Y^T Y) for fold-in, computed on first use
        self._basis: np.ndarray | None = None  # during a CG fit: the turn applied to both factor matrices

    # ------------------------------------------------------------------ parameters and persistence
    @classmethod
    def from_hyperparameters(cls, hyperparameters: Hyperparameters, num_threads: int = 0,
                             callback: Callable[[int, float, float], None] | None = None) -> "ALS":
        return cls(**hyperparameters.to_dict(), num_threads=num_threads, callback=callback)

    @property
    def hyperparameters(self) -> Hyperparameters:
        """The model's hyperparameters as they stand (an attribute changed by hand, e.g. ``iterations`` before a
        warm-started ``fit``, is checked here)."""
        return Hyperparameters(**{name: getattr(self, name) for name in hyperparameter_names()})

    def get_params(self) -> dict:
        """The hyperparameters and ``num_threads``, JSON-ready (what ``save`` writes)."""
        return {**self.hyperparameters.to_dict(), "num_threads": self.num_threads}

    def save(self, path: str | Path) -> None:
        """Write ``<path>.npz`` (arrays) and ``<path>.json`` (parameters). Nothing is pickled."""
        self._check_fitted()
        stem = _stem(path)
        stem.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"user_factors": self.user_factors, "item_factors": self.item_factors,
                  "loss_history": np.asarray(self.loss_history, dtype=np.float64),
                  "global_mean": np.asarray(self.global_mean, dtype=np.float64)}
        if self.use_biases:
            arrays.update(user_bias=self.user_bias, item_bias=self.item_bias)
        np.savez(stem.with_suffix(".npz"), **arrays)
        stem.with_suffix(".json").write_text(json.dumps(self.get_params(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "ALS":
        stem = _stem(path)
        params = json.loads(stem.with_suffix(".json").read_text())
        num_threads = params.pop("num_threads", 0)
        model = cls.from_hyperparameters(Hyperparameters.from_dict(params), num_threads=num_threads)
        with np.load(stem.with_suffix(".npz"), allow_pickle=False) as data:
            model.user_factors = data["user_factors"]
            model.item_factors = data["item_factors"]
            model.loss_history = data["loss_history"].tolist()
            model.global_mean = float(data["global_mean"])
            if model.use_biases:
                model.user_bias = data["user_bias"]
                model.item_bias = data["item_bias"]
        return model

    # ------------------------------------------------------------------ training
    def fit(self, user_items, show_progress: bool = False) -> "ALS":
        """Factorise ``user_items`` (users x items, scipy CSR preferred; r_ui >= 0 in implicit mode).

        If ``user_factors``/``item_factors`` are already set with matching shapes, training warm-starts
        from them (as ``implicit`` does); otherwise they are initialised from ``random_state``.
        """
        Cui, Ciu = self._user_and_item_rows(user_items)
        n_users, n_items = Cui.shape
        self._init_factors(n_users, n_items)
        self.loss_history = []
        self.failed_solves = 0
        self._item_gram = None

        data = _HalfStepData.build(self, Cui, Ciu)
        if not self.implicit:
            self.global_mean = data.global_mean
        with self._thread_limits() as n_threads, self._original_basis_on_exit():
            for iteration in range(self.iterations):
                started = time.perf_counter()
                iterate = self._implicit_iteration if self.implicit else self._explicit_iteration
                loss = self._loss(data, iterate(data, n_threads))
                seconds = time.perf_counter() - started
                self.loss_history.append(loss)
                (log.info if show_progress else log.debug)(
                    "ALS iteration %d/%d loss=%.6f (%.3fs)", iteration + 1, self.iterations, loss, seconds)
                if self.callback is not None:
                    self.callback(iteration, loss, seconds)
                if self._converged():
                    log.info("ALS converged after %d iterations (tol=%g)", iteration + 1, self.tol)
                    break
        if self.failed_solves:
            log.warning("%d row solves were not positive definite and kept their previous factors; "
                        "use regularization > 0", self.failed_solves)
        return self

    def _user_and_item_rows(self, user_items) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """``user_items`` as the half-steps read it: users x items and items x users, in the model's float type."""
        Cui = as_user_items(user_items, allow_negative=not self.implicit).astype(self.dtype)  # a copy
        if self.implicit:
            Cui.eliminate_zeros()  # a stored 0 is "no interaction": p = 0, c = 1, same as missing
        if Cui.nnz == 0:
            raise ValueError("user_items has no nonzero entries: nothing to learn from")
        Cui = _with_int64_index(Cui)
        return Cui, _with_int64_index(Cui.T.tocsr())

    def _converged(self) -> bool:
        if self.tol is None or len(self.loss_history) < 2:
            return False
        previous, current = self.loss_history[-2:]
        return abs(previous - current) <= self.tol * abs(previous)

    def _init_factors(self, n_users: int, n_items: int) -> None:
        k = self.factors
        warm = (
            self.user_factors is not None and self.item_factors is not None
            and self.user_factors.shape == (n_users, k) and self.item_factors.shape == (n_items, k)
        )
        if warm:
            self.user_factors = np.ascontiguousarray(self.user_factors, dtype=self.dtype)
            self.item_factors = np.ascontiguousarray(self.item_factors, dtype=self.dtype)
        else:
            rng = np.random.default_rng(self.random_state)
            # small positive values, as implicit does: the first half-step then solves from near-zero factors
            self.user_factors = rng.random((n_users, k), dtype=self.dtype) * self.dtype.type(0.01)
            self.item_factors = rng.random((n_items, k), dtype=self.dtype) * self.dtype.type(0.01)
        if self.use_biases and not (warm and self.user_bias is not None and self.item_bias is not None):
            self.user_bias = np.zeros(n_users, dtype=self.dtype)
            self.item_bias = np.zeros(n_items, dtype=self.dtype)

    @contextlib.contextmanager
    def _thread_limits(self) -> Iterator[int]:
        """Numba threads as asked, handing out blocks of rows one at a time (a thread slowed by another process
        does fewer blocks instead of holding the others up); BLAS pinned to one thread while the kernels run."""
        previous = nb.get_num_threads()
        n_threads = self.num_threads or nb.config.NUMBA_NUM_THREADS
        n_threads = max(1, min(n_threads, nb.config.NUMBA_NUM_THREADS))
        nb.set_num_threads(n_threads)
        try:
            with _blas_controller().limit(limits=1, user_api="blas"), nb.parallel_chunksize(1):
                yield n_threads
        finally:
            nb.set_num_threads(previous)

    def _solve_rows(self, csr: sp.csr_matrix, gram_w, rhs_w, Y, base, reg, out, n_threads: int,
                    diagonal: bool = False, rotation: np.ndarray | None = None) -> float:
        """One half-step: solve every row of ``out`` against the fixed factors ``Y``; returns the sum of the
        rows' objective terms (data term over the rows plus the rows' own regularisation).

        CG only: ``diagonal`` says ``base`` is diagonal; ``rotation`` turns the rows of ``out`` into ``Y``'s
        basis as the kernel reads them."""
        n_blocks = max(1, min(csr.shape[0], _BLOCKS_PER_THREAD * n_threads))
        if self.solver == "cholesky":
            failures, objective = _kernels.kernels_for(Y.dtype).solve_cholesky(
                csr.indptr, csr.indices, gram_w, rhs_w, Y, base, reg, out, n_blocks, self.implicit)
            self.failed_solves += failures
            return objective
        rotate = rotation is not None
        return _kernels.solve_cg(csr.indptr, csr.indices, gram_w, rhs_w, Y, base, reg, out, self.cg_steps,
                                 n_blocks, self.implicit, diagonal, rotation if rotate else base, rotate)

    def _implicit_iteration(self, data: "_HalfStepData", n_threads: int) -> float:
        if self.solver == "cg":
            self._solve_users_in_gram_eigenbasis(data, n_threads)  # turns the item factors: read them after
        else:
            Y = self.item_factors
            self._solve_rows(data.Cui, data.gram_ui, data.conf_ui, Y, Y.T @ Y, data.reg_users, self.user_factors,
                             n_threads)
        X, Y = self.user_factors, self.item_factors
        return self._solve_rows(data.Ciu, data.gram_iu, data.conf_iu, X, X.T @ X, data.reg_items, Y, n_threads)

    def _solve_users_in_gram_eigenbasis(self, data: "_HalfStepData", n_threads: int) -> None:
        """The CG user half-step in the eigenbasis of Y^T Y.

        Turning both factor matrices by the same orthogonal Q changes no score, no loss term and no CG iterate
        (CG only takes inner products and linear combinations), but there Y^T Y is diagonal, so its product
        with each user's search direction costs k instead of k^2: with many more users than items that product
        is the largest dense cost of the half-step. The items are turned here (a small product), the users by
        the kernel as it reads them; both stay in the new basis, and ``fit`` turns them back once at the end.
        """
        eigenvalues, Q = np.linalg.eigh((self.item_factors.T @ self.item_factors).astype(np.float64))
        Q = Q.astype(self.dtype)
        self.item_factors = self.item_factors @ Q
        self._basis = Q.astype(np.float64) if self._basis is None else self._basis @ Q
        self._solve_rows(data.Cui, data.gram_ui, data.conf_ui, self.item_factors,
                         np.diag(eigenvalues).astype(self.dtype), data.reg_users, self.user_factors, n_threads,
                         diagonal=True, rotation=Q)

    @contextlib.contextmanager
    def _original_basis_on_exit(self) -> Iterator[None]:
        """Turn the factors back from the basis the CG half-steps left them in (even if fit is interrupted,
        so the model's factors are always in the basis the fit started from)."""
        try:
            yield
        finally:
            if self._basis is not None:
                back = self._basis.T.astype(self.dtype)  # Q is orthogonal: its transpose undoes it
                self.user_factors = self.user_factors @ back
                self.item_factors = self.item_factors @ back
                self._basis = None

    def _explicit_iteration(self, data: "_HalfStepData", n_threads: int) -> float:
        k = self.factors
        if not self.use_biases:
            zeros = np.zeros((k, k), dtype=self.dtype)
            self._solve_rows(data.Cui, data.gram_ui, data.Cui.data, self.item_factors, zeros, data.reg_users,
                             self.user_factors, n_threads, diagonal=True)
            return self._solve_rows(data.Ciu, data.gram_iu, data.Ciu.data, self.user_factors, zeros,
                                    data.reg_items, self.item_factors, n_threads, diagonal=True)
        # Biases: solve [x_u, b_u] against [y_i, 1] with target r - mu - b_i, then symmetrically for items.
        zeros = np.zeros((k + 1, k + 1), dtype=self.dtype)
        mu = self.dtype.type(self.global_mean)
        users = _augmented(self.user_factors, self.user_bias)
        items_fixed = _augmented(self.item_factors, np.ones_like(self.item_bias))
        target = data.Cui.data - mu - self.item_bias[data.Cui.indices]
        self._solve_rows(data.Cui, data.gram_ui, target, items_fixed, zeros, data.reg_users, users, n_threads,
                         diagonal=True)
        self.user_factors, self.user_bias = np.ascontiguousarray(users[:, :k]), users[:, k].copy()

        items = _augmented(self.item_factors, self.item_bias)
        users_fixed = _augmented(self.user_factors, np.ones_like(self.user_bias))
        target = data.Ciu.data - mu - self.user_bias[data.Ciu.indices]
        objective = self._solve_rows(data.Ciu, data.gram_iu, target, users_fixed, zeros, data.reg_items, items,
                                     n_threads, diagonal=True)
        self.item_factors, self.item_bias = np.ascontiguousarray(items[:, :k]), items[:, k].copy()
        return objective

    def _loss(self, data: "_HalfStepData", item_step_objective: float) -> float:
        """The normalised objective after an iteration. The item half-step already summed every item's term
        (the whole data term and the items' regularisation, with the users fixed at their final values), so
        only the users' regularisation is left to add."""
        users = self.user_factors
        if self.use_biases:
            users = _augmented(users, self.user_bias)
        return (item_step_objective + self._regularisation(users, data.reg_weight_users)) / data.loss_normaliser

    def _regularisation(self, factors: np.ndarray, weights: np.ndarray) -> float:
        """lambda * sum_u n_u^w |x_u|^2 over the rows of ``factors``."""
        # per-row sums in the factors' type (a float64 einsum over float32 costs 3x), their total in float64
        squared_norms = np.einsum("ij,ij->i", factors, factors)
        return self.regularization * float(np.dot(weights.astype(np.float64), squared_norms))

    def objective(self, user_items) -> float:
        """The normalised objective of the current factors on ``user_items`` (the quantity ``loss_history``
        holds after each iteration), computed from the factors alone, in float64: factors trained elsewhere
        (another engine, then set as ``user_factors``/``item_factors``) and factors fitted here compare on one
        number. The model's hyperparameters (alpha, regularization, weighted_regularization) define it."""
        self._check_fitted()
        Cui, Ciu = self._user_and_item_rows(user_items)
        if Cui.shape != (self.n_users, self.n_items):
            raise ValueError(f"user_items is {Cui.shape[0]} x {Cui.shape[1]} but the model has {self.n_users} "
                             f"users and {self.n_items} items")
        data = _HalfStepData.build(self, Cui, Ciu)
        users, items = self.user_factors.astype(np.float64), self.item_factors.astype(np.float64)
        rows = np.repeat(np.arange(Cui.shape[0]), np.diff(Cui.indptr))
        scores = _pair_scores(users, items, rows, Cui.indices)
        if self.implicit:
            confidence = data.conf_ui.astype(np.float64)
            # every pair counts (0 - s)^2 at confidence 1 (the gram trace); the nonzeros c (1 - s)^2 instead
            data_term = (float(np.sum((users.T @ users) * (items.T @ items))) - float(np.dot(scores, scores))
                         + float(np.dot(confidence, (1.0 - scores) ** 2)))
        else:
            if self.use_biases:
                scores += self.global_mean + self.user_bias[rows] + self.item_bias[Cui.indices]
                users = _augmented(users, self.user_bias.astype(np.float64))
                items = _augmented(items, self.item_bias.astype(np.float64))
            data_term = float(np.sum((Cui.data.astype(np.float64) - scores) ** 2))
        regularisation = (self._regularisation(users, data.reg_weight_users)
                          + self._regularisation(items, data.reg_weight_items))
        return (data_term + regularisation) / data.loss_normaliser

    # ------------------------------------------------------------------ inference
    def _check_fitted(self) -> None:
        if self.user_factors is None or self.item_factors is None:
            raise ValueError("the model is not fitted: call fit() or ALS.load() first")

    @property
    def n_users(self) -> int:
        self._check_fitted()
        return self.user_factors.shape[0]

    @property
    def n_items(self) -> int:
        self._check_fitted()
        return self.item_factors.shape[0]

    def _item_offsets(self) -> np.ndarray | None:
        """What ranking adds per item beyond x.y: the item bias in explicit mode with biases."""
        return self.item_bias if self.use_biases else None

    def _top_n(self, user_vectors: np.ndarray, n: int, seen_rows: sp.csr_matrix | None,
               exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` of ``user_vectors @ item_factors.T`` (+ item offsets), ``seen_rows`` (one per vector) and
        ``exclude`` masked: tiles of scores selected from while in registers (`topk.score_top_n`)."""
        vectors = np.ascontiguousarray(user_vectors, dtype=self.item_factors.dtype)
        with self._thread_limits():
            return score_top_n(vectors, self.item_factors, n, seen_rows, exclude, self._item_offsets())

    def _rows_for(self, user_items, n_requested: int, user_ids: np.ndarray | None) -> sp.csr_matrix:
        """The seen-items rows of the requested users: ``user_items`` is either one row per requested user
        or the full training matrix (then indexed by ``user_ids``)."""
        rows = as_csr(user_items)  # only the pattern matters here: no pass over the values
        if rows.shape[1] != self.n_items:
            raise ValueError(f"user_items has {rows.shape[1]} columns but the model has {self.n_items} items")
        if rows.shape[0] == n_requested:
            return rows
        if user_ids is not None and rows.shape[0] == self.n_users:
            return rows[user_ids]
        raise ValueError(
            f"user_items has {rows.shape[0]} rows: pass one row per requested user ({n_requested}) "
            f"or the full user x item matrix ({self.n_users} rows)")

    def recommend(
        self,
        userid,
        user_items=None,
        N: int = 10,
        filter_already_liked_items: bool = True,
        filter_items=None,
        recalculate_user: bool = False,
        items=None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``N`` items for one user id (1-D results) or an array of user ids (2-D results).

        ``user_items`` holds the users' interactions (one row per requested user, or the full matrix):
        used to filter already-liked items and, with ``recalculate_user=True``, to fold the users in
        instead of using their trained factors. Rows with fewer than N unfiltered items are padded with
        id -1 and score -inf.

        ``items``: score only these candidate items (as ``implicit`` does: the top min(N, candidates) of them,
        liked ones still filtered when asked; repeated ids count once); not together with ``filter_items``.
        """
        self._check_fitted()
        scalar = np.ndim(userid) == 0
        n = check_n(N, self.n_items)
        need_rows = filter_already_liked_items or recalculate_user
        if need_rows and user_items is None:
            raise ValueError("user_items is required to filter liked items or recalculate users")
        ids = np.atleast_1d(np.asarray(userid))
        if recalculate_user:
            rows = self._rows_for(user_items, len(ids), None)
            vectors = self.recalculate_user(rows)
            vectors = vectors.reshape(len(ids), -1)
        else:
            ids = check_ids(ids, self.n_users, "user")
            rows = self._rows_for(user_items, len(ids), ids) if need_rows else None
            vectors = self.user_factors[ids]
        seen = rows if filter_already_liked_items else None
        if items is None:
            out_ids, out_scores = self._top_n(vectors, n, seen, _as_filter(filter_items, self.n_items))
        else:
            if filter_items is not None:
                raise ValueError("pass either items (the candidates) or filter_items, not both")
            out_ids, out_scores = self._top_n_among(vectors, n, seen, _as_candidates(items, self.n_items, "item"))
        if scalar:
            return out_ids[0], out_scores[0]
        return out_ids, out_scores

    def _top_n_among(self, user_vectors: np.ndarray, n: int, seen_rows: sp.csr_matrix | None,
                     candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``_top_n`` over the ``candidates`` (sorted, unique item ids) only; ids are the items' own."""
        offsets = self._item_offsets()
        vectors = np.ascontiguousarray(user_vectors, dtype=self.item_factors.dtype)
        with self._thread_limits():
            ids, scores = score_top_n(vectors, self.item_factors[candidates], min(n, len(candidates)),
                                      None if seen_rows is None else seen_rows[:, candidates].tocsr(), None,
                                      None if offsets is None else offsets[candidates])
        return np.where(ids >= 0, candidates[np.maximum(ids, 0)], -1), scores

    def iter_recommend_all(self, user_items=None, N: int = 10, batch_size: int = _SCORE_BATCH,
                           filter_already_liked_items: bool = True, filter_items=None):
        """Yield ``(user_ids, ids, scores)`` for every user in batches of ``batch_size`` (streamed, so the
        full score matrix never exists in memory; Spark's recommendForAllUsers)."""
        self._check_fitted()
        n = check_n(N, self.n_items)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rows = None
        if filter_already_liked_items:
            if user_items is None:
                raise ValueError("user_items is required to filter liked items")
            rows = self._rows_for(user_items, self.n_users, None)
        exclude = _as_filter(filter_items, self.n_items)
        for lo in range(0, self.n_users, batch_size):
            hi = min(lo + batch_size, self.n_users)
            ids, best = self._top_n(self.user_factors[lo:hi], n, rows[lo:hi] if rows is not None else None, exclude)
            yield np.arange(lo, hi), ids, best

    def recommend_all(self, user_items=None, N: int = 10, batch_size: int = _SCORE_BATCH,
                      filter_already_liked_items: bool = True, filter_items=None):
        """Top-``N`` for every user as ``(ids, scores)`` of shape (n_users, N), computed in batches."""
        parts = list(self.iter_recommend_all(user_items, N, batch_size, filter_already_liked_items, filter_items))
        return np.vstack([p[1] for p in parts]), np.vstack([p[2] for p in parts])

    def similar_items(self, itemid, N: int = 10, filter_items=None, items=None) -> tuple[np.ndarray, np.ndarray]:
        """Items closest by cosine similarity of item factors, the item itself excluded; ``items``: only among
        these candidates (not together with ``filter_items``)."""
        self._check_fitted()
        return self._similar(self.item_factors, itemid, N, filter_items, items, "item")

    def similar_users(self, userid, N: int = 10, filter_users=None, users=None) -> tuple[np.ndarray, np.ndarray]:
        """Users closest by cosine similarity of user factors, the user itself excluded (as ``similar_items``;
        ``implicit`` returns the user itself first); ``users``: only among these candidates (not together with
        ``filter_users``)."""
        self._check_fitted()
        return self._similar(self.user_factors, userid, N, filter_users, users, "user")

    def _similar(self, factors: np.ndarray, query, N: int, filter_rows, candidates, what: str):
        """Rows of ``factors`` closest to the ``query`` rows by cosine, the query row itself excluded."""
        scalar = np.ndim(query) == 0
        ids = check_ids(np.atleast_1d(np.asarray(query)), len(factors), what)
        n = check_n(N, len(factors))
        norms = np.linalg.norm(factors, axis=1)
        normalised = factors / np.where(norms > 0, norms, 1)[:, None]
        itself = sp.csr_matrix((np.ones(len(ids), dtype=np.float32), ids, np.arange(len(ids) + 1)),
                               shape=(len(ids), len(factors)))
        pool, exclude = normalised, _as_filter(filter_rows, len(factors))
        if candidates is not None:
            if filter_rows is not None:
                raise ValueError(f"pass either {what}s (the candidates) or filter_{what}s, not both")
            candidates = _as_candidates(candidates, len(factors), what)
            pool, itself, n = normalised[candidates], itself[:, candidates].tocsr(), min(n, len(candidates))
        with self._thread_limits():
            out_ids, out_scores = score_top_n(normalised[ids], pool, n, itself, exclude)
        if candidates is not None:
            out_ids = np.where(out_ids >= 0, candidates[np.maximum(out_ids, 0)], -1)
        if scalar:
            return out_ids[0], out_scores[0]
        return out_ids, out_scores

    def recalculate_user(self, user_items) -> np.ndarray:
        """Factors of users absent from training, from their interactions (rows over the model's items), by
        one exact least-squares solve against the fixed item factors (fold-in). One row gives a 1-D vector."""
        rows = self._interaction_rows(user_items)
        gram_w, rhs_w, base, reg = self._fold_in_terms(rows)
        out = np.zeros((rows.shape[0], self.factors), dtype=self.dtype)
        with self._thread_limits() as n_threads:
            n_blocks = max(1, min(rows.shape[0], _BLOCKS_PER_THREAD * n_threads))
            _kernels.kernels_for(self.dtype).solve_cholesky(
                rows.indptr, rows.indices, gram_w, rhs_w, self.item_factors, base, reg, out, n_blocks, self.implicit)
        return out[0] if rows.shape[0] == 1 and np.ndim(user_items) == 1 else out

    def _interaction_rows(self, user_items) -> sp.csr_matrix:
        """Users' interactions over the model's items (rows, or one 1-D row), checked, in the model's float type."""
        self._check_fitted()
        rows = as_user_items(sp.csr_matrix(np.atleast_2d(user_items)) if not sp.issparse(user_items)
                             else user_items, allow_negative=not self.implicit, name="interactions")
        if rows.shape[1] != self.n_items:
            raise ValueError(f"interactions have {rows.shape[1]} columns but the model has {self.n_items} items")
        rows = _with_int64_index(rows.astype(self.dtype))
        if self.implicit:
            rows.eliminate_zeros()
        return rows

    def _fold_in_terms(self, rows: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each row's normal equations against the fixed item factors, ``(base + Y_u^T diag(gram_w) Y_u + reg I)
        x = Y_u^T rhs_w``: (gram_w and rhs_w per nonzero, base, reg per row)."""
        counts = np.diff(rows.indptr).astype(self.dtype)
        reg = self.regularization * (counts if self.weighted_regularization else np.ones_like(counts))
        if self.implicit:
            gram_w = (self.alpha * rows.data).astype(self.dtype)  # c - 1
            rhs_w = 1 + gram_w  # c (times p = 1)
            base = self._gram_of_items()
        else:
            gram_w = np.ones_like(rows.data)
            rhs_w = rows.data - self.dtype.type(self.global_mean)
            if self.use_biases:
                rhs_w = rhs_w - self.item_bias[rows.indices]
            base = np.zeros((self.factors, self.factors), dtype=self.dtype)
        return gram_w, rhs_w.astype(self.dtype), base, reg.astype(self.dtype)

    def explain(self, userid, user_items, itemid, user_weights=None, N: int = 10):
        """Why ``itemid`` scores what it does for a user: the score as a sum of one contribution per item the user
        interacted with (Hu, Koren, Volinsky 2008, section 5), with ``implicit``'s semantics and return values.

        The user is solved from ``user_items`` against the item factors, as fold-in does: ``x_u = W_u Y^T C_u
        p_u`` with ``W_u = (Y^T C_u Y + reg I)^-1``, so ``x_u . y_i = sum_j c_uj (y_i^T W_u y_j)``. A known user's
        trained factors came from the item factors of the iteration before, so this total can differ slightly
        from ``predict``; a folded-in user's is exactly its score. In explicit mode the terms are
        ``(r_uj - mu - b_j) y_i^T W_u y_j`` and the total is the ``x_u . y_i`` part of the rating.

        ``user_items``: the user's one row over the model's items (``userid`` may then be None), or the full
        user x item matrix, whose row ``userid`` is taken. ``user_weights``: what an earlier call for the same
        user returned (the Cholesky factorisation of ``W_u^-1``, ``scipy.linalg.cho_factor``'s pair), which
        saves refactorising. ``itemid`` a scalar: returns ``(total_score, [(itemid, contribution), ...] for the
        N largest contributions, best first, user_weights)``; an array of items: one total per item (array) and
        one such list per item.
        """
        self._check_fitted()
        scalar = np.ndim(itemid) == 0
        items = check_ids(np.atleast_1d(np.asarray(itemid)), self.n_items, "item")
        n = check_n(N, self.n_items)
        ids = None if userid is None else check_ids(np.atleast_1d(np.asarray(userid)), self.n_users, "user")
        rows = self._interaction_rows(self._rows_for(user_items, 1, ids))
        gram_w, rhs_w, base, reg = self._fold_in_terms(rows)
        liked = rows.indices
        Y_u = self.item_factors[liked].astype(np.float64)
        if user_weights is None:
            A = base.astype(np.float64) + (Y_u.T * gram_w) @ Y_u + float(reg[0]) * np.eye(self.factors)
            user_weights = scipy.linalg.cho_factor(A)
        weighted = scipy.linalg.cho_solve(user_weights, self.item_factors[items].T.astype(np.float64))  # W_u y_i
        contributions = rhs_w.astype(np.float64)[:, None] * (Y_u @ weighted)  # liked x asked
        totals = contributions.sum(axis=0)
        top = []
        for column in contributions.T:
            best = np.argsort(-column, kind="stable")[:n]  # ties: the lower item first
            top.append([(int(liked[j]), float(column[j])) for j in best])
        if scalar:
            return float(totals[0]), top[0], user_weights
        return totals, top, user_weights

    def _gram_of_items(self) -> np.ndarray:
        """Y^T Y of the current item factors, kept between fold-ins (a serving process folds in many users
        against the same factors). Kept with the array it was computed from: assigning new item factors
        recomputes it; changing the array in place does not (fit() drops it)."""
        if self._item_gram is None or self._item_gram[0] is not self.item_factors:
            self._item_gram = (self.item_factors, self.item_factors.T @ self.item_factors)
        return self._item_gram[1]

    def predict(self, user_ids, item_ids) -> np.ndarray:
        """Scores of (user, item) pairs: x_u . y_i, plus mu + b_u + b_i for explicit ratings with biases."""
        self._check_fitted()
        users = check_ids(user_ids, self.n_users, "user")
        items = check_ids(item_ids, self.n_items, "item")
        if users.shape != items.shape:
            raise ValueError(f"user_ids and item_ids must have the same shape, got {users.shape} and {items.shape}")
        scores = np.einsum("ij,ij->i", self.user_factors[users.ravel()], self.item_factors[items.ravel()])
        if self.use_biases:
            scores = scores + self.global_mean + self.user_bias[users.ravel()] + self.item_bias[items.ravel()]
        elif not self.implicit:
            scores = scores + self.global_mean
        return scores.reshape(users.shape)


class _HalfStepData:
    """Everything the half-steps need that does not change across iterations, computed once per fit."""

    @classmethod
    def build(cls, model: ALS, Cui: sp.csr_matrix, Ciu: sp.csr_matrix) -> "_HalfStepData":
        self = cls()
        self.Cui, self.Ciu = Cui, Ciu
        dtype = model.dtype
        counts_u = np.diff(Cui.indptr).astype(dtype)
        counts_i = np.diff(Ciu.indptr).astype(dtype)
        if model.weighted_regularization:
            self.reg_weight_users, self.reg_weight_items = counts_u, counts_i
        else:
            self.reg_weight_users, self.reg_weight_items = np.ones_like(counts_u), np.ones_like(counts_i)
        self.reg_users = (model.regularization * self.reg_weight_users).astype(dtype)
        self.reg_items = (model.regularization * self.reg_weight_items).astype(dtype)
        if model.implicit:
            self.gram_ui = (model.alpha * Cui.data).astype(dtype)  # c - 1
            self.gram_iu = (model.alpha * Ciu.data).astype(dtype)
            self.conf_ui = (1 + self.gram_ui).astype(dtype)  # c
            self.conf_iu = (1 + self.gram_iu).astype(dtype)
            n_pairs = float(Cui.shape[0]) * float(Cui.shape[1])
            self.loss_normaliser = float(self.conf_ui.sum(dtype=np.float64)) + n_pairs - Cui.nnz
        else:
            self.gram_ui = np.ones(Cui.nnz, dtype=dtype)
            self.gram_iu = np.ones(Ciu.nnz, dtype=dtype)
            self.global_mean = float(Cui.data.mean(dtype=np.float64)) if model.use_biases else 0.0
            self.loss_normaliser = float(Cui.nnz)
        return self


def _pair_scores(users: np.ndarray, items: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """x_u . y_i of the pairs (rows[j], columns[j]), gathered a slice at a time (never nnz x k at once)."""
    scores = np.empty(len(rows), dtype=np.result_type(users, items))
    for lo in range(0, len(rows), _PAIR_CHUNK):
        hi = lo + _PAIR_CHUNK
        scores[lo:hi] = np.einsum("ij,ij->i", users[rows[lo:hi]], items[columns[lo:hi]])
    return scores


def _augmented(factors: np.ndarray, column: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.hstack([factors, column[:, None]]))


def _with_int64_index(csr: sp.csr_matrix) -> sp.csr_matrix:
    """One index type for the kernels (each dtype combination would be a separate numba compilation)."""
    csr.indptr = csr.indptr.astype(np.int64, copy=False)
    csr.indices = csr.indices.astype(np.int64, copy=False)
    return csr


def _as_filter(filter_items, n_items: int) -> np.ndarray | None:
    if filter_items is None:
        return None
    return check_ids(np.atleast_1d(np.asarray(filter_items)), n_items, "filter item")


def _as_candidates(candidates, n_rows: int, what: str) -> np.ndarray:
    """Candidate ids as sorted unique int64 ids in [0, n_rows); at least one."""
    ids = np.atleast_1d(np.asarray(candidates))
    if ids.ndim != 1 or len(ids) == 0:
        raise ValueError(f"candidate {what}s must be a non-empty 1-D list of ids")
    return np.unique(check_ids(ids, n_rows, f"candidate {what}"))


def _stem(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".npz", ".json") else path
