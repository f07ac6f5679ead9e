"""Hyperparameter search for implicit ALS (Optuna) on a validation split carved from the training data only.

The caller passes the training matrix and nothing else, so the holdout that decides promotions can never
leak into the choice of hyperparameters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import optuna
import scipy.sparse as sp
from optuna.trial import FrozenTrial, TrialState

from .als import ALS
from .hyperparameters import DEFAULTS, SEARCH_SPACE, TUNABLE, Hyperparameters, SearchSpace
from .metrics import evaluate_ranking
from .splits import random_holdout

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials that count against the budget
N_TRIALS = 48
VALIDATION_FRACTION = 0.1


@dataclass
class TuningTrial:
    number: int
    params: dict
    ndcg: float  # validation NDCG@k after the last iteration it trained (a pruned trial: where it stopped)
    metrics: dict
    seconds: float
    pruned: bool
    loss_history: list = field(default_factory=list)
    ndcg_history: dict = field(default_factory=dict)  # iteration -> validation NDCG reported to the pruner

    @classmethod
    def from_frozen(cls, trial: FrozenTrial) -> TuningTrial:
        attrs = trial.user_attrs
        return cls(trial.number, dict(trial.params), float(attrs["metrics"][attrs["metric"]]), dict(attrs["metrics"]),
                   float(attrs["seconds"]), trial.state == TrialState.PRUNED, list(attrs["loss_history"]),
                   dict(sorted(trial.intermediate_values.items())))


@dataclass
class TuningResult:
    best_params: dict  # the searched values of the best trial
    best: Hyperparameters  # everything the best trial was fitted with
    best_ndcg: float
    trials: list[TuningTrial]  # every finished trial of the study, earlier runs' included, by number
    validation_users: int
    validation_pairs: int
    study_name: str
    resumed: int  # finished trials the storage already held when this search started

    @property
    def pruned(self) -> int:
        return sum(trial.pruned for trial in self.trials)


def fingerprint(train: sp.csr_matrix, space: SearchSpace, base: Hyperparameters, validation_fraction: float,
                seed: int, k: int) -> str:
    """What makes trials comparable: the data and every setting but the budget and the pruning (the study's
    name ends with it, so a search resumes only a study of the same data and settings)."""
    train = sp.csr_matrix(train)
    digest = hashlib.sha256(json.dumps({
        "shape": list(train.shape), "space": space.to_dict(), "base": base.to_dict(),
        "validation_fraction": validation_fraction, "seed": seed, "k": k}, sort_keys=True).encode())
    for array in (train.indptr, train.indices, train.data):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class _Split:
    fit_part: sp.csr_matrix
    validation: sp.csr_matrix
    users: np.ndarray  # those with validation items

    @classmethod
    def draw(cls, train: sp.csr_matrix, fraction: float, seed: int) -> _Split:
        fit_part, validation = random_holdout(train, fraction=fraction, seed=seed)
        users = np.flatnonzero(np.diff(validation.indptr))
        if len(users) == 0:
            raise ValueError("the validation split is empty: too little training data to tune on")
        return cls(fit_part, validation, users)

    def metrics(self, model: ALS, k: int) -> dict:
        ids, _ = model.recommend(self.users, self.fit_part[self.users], N=k)
        return evaluate_ranking(ids, self.validation[self.users], n_items=self.fit_part.shape[1], k=k)


def _open_study(study_name: str, storage: str | None, seed: int, pruner: optuna.pruners.BasePruner,
                sampler: optuna.samplers.BaseSampler | None) -> optuna.Study:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat, multivariate TPE
        if storage is not None:
            # a trial left RUNNING by a killed process is marked failed after the grace period (it does not count)
            storage = optuna.storages.RDBStorage(storage, heartbeat_interval=30, grace_period=120)
        if sampler is None:
            sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                               direction="maximize", load_if_exists=True)


def tune(
    train: sp.csr_matrix,
    space: SearchSpace = SEARCH_SPACE,
    *,
    base: Hyperparameters = DEFAULTS,
    n_trials: int = N_TRIALS,
    timeout: float | None = None,
    validation_fraction: float = VALIDATION_FRACTION,
    seed: int = 0,
    k: int = 10,
    prune: bool = True,
    report_every: int = 3,
    prune_after: float = 0.5,
    startup_trials: int = 8,
    storage: str | None = None,
    study_prefix: str = "als",
    on_trial: Callable[[TuningTrial], None] | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> TuningResult:
    """Search ``space`` with Optuna's TPE sampler (seeded by ``seed``), scoring each trial by NDCG@k on a
    per-user random ``validation_fraction`` of ``train``. Each trial fits ``base`` with the trial's values for
    ``base.iterations``; ``seed`` also draws the validation split and, unless ``base`` sets ``random_state``,
    the factor initialisation. The first trial of a new study is ``base``'s own point when the space holds it.

    Budget: ``n_trials`` finished trials (completed or pruned) in the study, so at most ``n_trials`` fits, and
    at most ``timeout`` seconds for this call (a trial under way finishes). With ``storage`` (an Optuna RDB URL
    such as ``sqlite:///path/optuna.db``; None: in memory) the study is kept there, named ``study_prefix`` and
    the ``fingerprint`` of the data and settings, so a later call with the same ones resumes it: its finished
    trials count against ``n_trials`` and inform the sampler.

    With ``prune``, from ``prune_after`` x ``base.iterations`` on, every ``report_every`` iterations a trial
    reports its validation NDCG and Optuna's median pruner stops it when that is below the median of earlier
    trials at the same iteration (once ``startup_trials`` trials have finished). Not earlier: the best points
    on MovieLens 100K lie just short of the regularization that flattens the factors, start slowest, and
    overtake only after about 7 of 15 iterations (docs/quality.md). ``on_trial`` is called after every trial
    this call runs (e.g. to log it as a nested MLflow run). ``sampler`` replaces the TPE sampler (for comparing
    search protocols: docs/quality.md); it draws the points only, so it does not enter the study's name.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if report_every < 1:
        raise ValueError(f"report_every must be >= 1, got {report_every}")
    split = _Split.draw(train, validation_fraction, seed)
    if base.random_state is None:
        base = base.replace(random_state=seed)
    metric = f"ndcg@{k}"
    first_report = max(1, int(np.ceil(prune_after * base.iterations)))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=startup_trials) if prune
              else optuna.pruners.NopPruner())
    study_name = f"{study_prefix}-{fingerprint(train, space, base, validation_fraction, seed, k)}"
    study = _open_study(study_name, storage, seed, pruner, sampler)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    if not study.get_trials(deepcopy=False) and space.contains(base):
        study.enqueue_trial({key: getattr(base, key) for key in TUNABLE})

    def objective(trial: optuna.Trial) -> float:
        params = base.replace(
            factors=trial.suggest_categorical("factors", list(space.factors)),
            regularization=trial.suggest_float("regularization", *space.regularization, log=True),
            alpha=trial.suggest_float("alpha", *space.alpha, log=True))
        started = time.perf_counter()
        latest: dict = {}

        def record() -> None:
            trial.set_user_attr("metric", metric)
            trial.set_user_attr("metrics", latest)
            trial.set_user_attr("loss_history", list(model.loss_history))
            trial.set_user_attr("seconds", time.perf_counter() - started)

        def report(iteration: int, loss: float, seconds: float) -> None:
            step = iteration + 1
            if prune and step >= first_report and step % report_every == 0 and step < params.iterations:
                latest.update(split.metrics(model, k))
                trial.report(latest[metric], step)
                if trial.should_prune():
                    record()
                    raise optuna.TrialPruned(f"validation {metric} {latest[metric]:.4f} at iteration {step}")

        model = ALS.from_hyperparameters(params, callback=report)
        model.fit(split.fit_part)
        latest.update(split.metrics(model, k))
        record()
        return latest[metric]

    def finished(study: optuna.Study, frozen: FrozenTrial) -> None:
        if frozen.state not in FINISHED:
            return
        trial = TuningTrial.from_frozen(frozen)
        log.info("tuning trial %d %s %s=%.4f%s (%.1fs)", trial.number, trial.params, metric, trial.ndcg,
                 " pruned" if trial.pruned else "", trial.seconds)
        if on_trial is not None:
            on_trial(trial)

    if done < n_trials:
        study.optimize(objective, n_trials=n_trials - done, timeout=timeout, callbacks=[finished])
    trials = [TuningTrial.from_frozen(t) for t in study.get_trials(deepcopy=False, states=FINISHED)]
    completed = [trial for trial in trials if not trial.pruned]
    if not completed:
        raise ValueError(f"no trial of study {study_name!r} completed within the budget")
    best = max(completed, key=lambda trial: (trial.ndcg, -trial.number))
    return TuningResult(dict(best.params), base.replace(**best.params), best.ndcg, trials, len(split.users),
                        int(split.validation.nnz), study_name, done)
