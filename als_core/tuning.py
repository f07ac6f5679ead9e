"""Hyperparameter search for implicit ALS on a validation split carved from the training data only.

The caller passes the training matrix and nothing else, so the holdout that decides promotions can never
leak into the choice of hyperparameters.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .als import ALS
from .hyperparameters import DEFAULTS, TUNING_GRID, Hyperparameters
from .metrics import evaluate_ranking
from .splits import random_holdout

log = logging.getLogger(__name__)


@dataclass
class TuningPoint:
    params: dict
    ndcg: float
    metrics: dict
    seconds: float
    stopped_early: bool
    loss_history: list = field(default_factory=list)


@dataclass
class TuningResult:
    best_params: dict  # the searched values of the best point
    best: Hyperparameters  # everything the best point was fitted with
    best_ndcg: float
    points: list[TuningPoint]
    validation_users: int
    validation_pairs: int

    def table(self, row_key: str, column_key: str) -> tuple[list, list, np.ndarray]:
        """NDCG over two parameters (best over the others): (row values, column values, matrix) for a heatmap."""
        rows = sorted({p.params[row_key] for p in self.points})
        cols = sorted({p.params[column_key] for p in self.points})
        grid = np.full((len(rows), len(cols)), np.nan)
        for point in self.points:
            r, c = rows.index(point.params[row_key]), cols.index(point.params[column_key])
            grid[r, c] = np.nanmax([grid[r, c], point.ndcg])
        return rows, cols, grid


def grid_points(space: Mapping[str, Sequence], base: Hyperparameters = DEFAULTS) -> list[dict]:
    """Every combination of the space's values, in a stable order; each one is checked (``base`` with its
    values must be valid hyperparameters) before anything is fitted."""
    if not space or any(len(values) == 0 for values in space.values()):
        raise ValueError(f"every parameter of the search space needs at least one value, got {space}")
    points = [dict(zip(space, values)) for values in itertools.product(*space.values())]
    for point in points:
        base.replace(**point)
    return points


def _validation_ndcg(model: ALS, fit_part: sp.csr_matrix, validation: sp.csr_matrix, users: np.ndarray,
                     k: int) -> dict:
    ids, _ = model.recommend(users, fit_part[users], N=k)
    return evaluate_ranking(ids, validation[users], n_items=fit_part.shape[1], k=k)


def tune(
    train: sp.csr_matrix,
    space: Mapping[str, Sequence] | None = None,
    *,
    base: Hyperparameters = DEFAULTS,
    validation_fraction: float = 0.2,
    seed: int = 0,
    k: int = 10,
    early_stop: bool = True,
    checkpoint_fraction: float = 1 / 3,
    hopeless_ratio: float = 0.8,
    on_point: Callable[[TuningPoint], None] | None = None,
) -> TuningResult:
    """Grid search over ``space`` (default ``TUNING_GRID``) scored by NDCG@k on a per-user random
    ``validation_fraction`` of ``train``. Each point is ``base`` with the point's values, fitted for
    ``base.iterations``; ``seed`` draws the validation split and, unless ``base`` sets ``random_state``, the
    factor initialisation.

    With ``early_stop``, each point first trains ``checkpoint_fraction`` of its iterations; a point whose
    NDCG is then below ``hopeless_ratio`` x the best finished point stops there (it is recorded, marked
    ``stopped_early``). Survivors continue from where they were (warm start) to ``base.iterations``.
    ``on_point`` is called after every point (e.g. to log it as a nested MLflow run).
    """
    fit_part, validation = random_holdout(train, fraction=validation_fraction, seed=seed)
    users = np.flatnonzero(np.diff(validation.indptr))
    if len(users) == 0:
        raise ValueError("the validation split is empty: too little training data to tune on")
    if base.random_state is None:
        base = base.replace(random_state=seed)
    iterations = base.iterations
    checkpoint = max(1, int(round(iterations * checkpoint_fraction)))
    points: list[TuningPoint] = []
    best: TuningPoint | None = None
    grid = grid_points(space or TUNING_GRID, base)
    for number, values in enumerate(grid, start=1):
        started = time.perf_counter()
        params = base.replace(**values)
        model = ALS.from_hyperparameters(params.replace(iterations=checkpoint) if early_stop else params)
        model.fit(fit_part)
        history = list(model.loss_history)
        metrics = _validation_ndcg(model, fit_part, validation, users, k)
        stopped = early_stop and best is not None and metrics[f"ndcg@{k}"] < hopeless_ratio * best.ndcg
        if early_stop and not stopped and iterations > checkpoint:
            model.iterations = iterations - checkpoint
            model.fit(fit_part)  # warm start: the factors are already there
            history += model.loss_history
            metrics = _validation_ndcg(model, fit_part, validation, users, k)
        point = TuningPoint(values, metrics[f"ndcg@{k}"], metrics, time.perf_counter() - started, stopped, history)
        points.append(point)
        if not stopped and (best is None or point.ndcg > best.ndcg):
            best = point
        log.info("tuning %d/%d %s ndcg@%d=%.4f%s (%.1fs)", number, len(grid), values, k, point.ndcg,
                 " stopped early" if stopped else "", point.seconds)
        if on_point is not None:
            on_point(point)
    return TuningResult(dict(best.params), base.replace(**best.params), best.ndcg, points, len(users),
                        int(validation.nnz))
