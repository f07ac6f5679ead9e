"""The tuning asset: an Optuna search on the training data only, one nested MLflow run per trial, the study kept
in the home so that a re-run resumes it.

It runs weekly and on demand (not in the daily retrain). Its result is its materialisation's `best_params`
metadata, recorded by the Dagster instance: the challenger declares `tuning` upstream and reads the latest one
(`latest_tuning_result`) for the hyperparameters its run config leaves empty.
"""


import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import dagster as dg
from pydantic import Field

from als_core.hyperparameters import DEFAULTS, SEARCH_SPACE, TUNABLE, SearchSpace
from als_core.tuning import N_TRIALS, VALIDATION_FRACTION, TuningTrial, tune
from als_store import model_tags
from als_store.mlflow_store import mlflow_errors
from pipelines import plots
from pipelines.defs.mlflow_resource import MLflowResource
from pipelines.defs.resources import PipelineSettings
from pipelines.registry import run_log
from pipelines.training_data import TrainingData, latest_dir

TUNING_GROUP = "tuning"
TUNING_KEY = dg.AssetKey("tuning")
BEST_PARAMS = "best_params"  # the metadata entry the challenger reads
STUDY_FILE = "optuna.db"  # in the home: the studies a re-run resumes


class TuningConfig(dg.Config):
    factors: list[int] = Field(default=list(SEARCH_SPACE.factors),
                               description="Search space: the numbers of latent factors to choose from.")
    regularization: list[float] = Field(default=list(SEARCH_SPACE.regularization),
                                        description="Search space: L2 regularization, [low, high], log scale.")
    alpha: list[float] = Field(default=list(SEARCH_SPACE.alpha),
                               description="Search space: confidence scale (c = 1 + alpha*r), [low, high], log scale.")
    n_trials: int = Field(default=N_TRIALS, ge=1, description=(
        "Trial budget: finished trials (completed or pruned) in the study, those of earlier runs on the same data "
        "and settings included; each trial is one fit."))
    timeout_seconds: float | None = Field(default=None, gt=0, description=(
        "Start no trial after this many seconds of this run (empty: no limit); a re-run resumes the study."))
    iterations: int = Field(default=DEFAULTS.iterations, description="ALS iterations per trial.")
    validation_fraction: float = Field(default=VALIDATION_FRACTION,
                                       description="Share of each user's TRAINING items held out for validation.")
    seed: int = Field(default=0, description="Seed of the validation split, the factor initialisation and the sampler.")
    prune: bool = Field(default=True, description=(
        "Stop trials whose validation NDCG, from half their iterations on, is below the median of earlier trials."))


def _space(config: TuningConfig) -> SearchSpace:
    try:
        return SearchSpace(**{key: tuple(getattr(config, key)) for key in TUNABLE})
    except ValueError as error:
        raise dg.Failure(f"tuning search space: {error}") from error


@dg.asset(
    group_name=TUNING_GROUP,
    deps=["training_data"],
    description="Optuna search (TPE, median pruning) over factors x regularization x alpha on a validation split "
                "of the training data (never the promotion holdout), for the numba ALS; the study lives in "
                "<home>/optuna.db and a re-run on the same data and settings resumes it. Its metadata "
                "`best_params` is what the challenger takes for the hyperparameters its run config leaves empty.",
    kinds={"python", "mlflow"},
)
def tuning(context: dg.AssetExecutionContext, config: TuningConfig, mlflow: MLflowResource,
           pipeline: PipelineSettings) -> dg.MaterializeResult:
    settings = pipeline.settings
    data = TrainingData.load(latest_dir(settings))
    space = _space(config)
    storage = f"sqlite:///{Path(settings.home) / STUDY_FILE}"
    client = mlflow.client()
    experiment_id = mlflow.experiment_id(client)
    parent = run_log.start_training_run(client, experiment_id, "tuning",
                                        {model_tags.TAG_DAGSTER_RUN_ID: context.run.run_id, "kind": "tuning"})
    context.log.info(f"tuning on {data.train.shape[0]} users x {data.train.shape[1]} items "
                     f"({data.train.nnz} nonzeros) over {space.to_dict()}, budget {config.n_trials} trials")

    def log_trial(trial: TuningTrial) -> None:
        child = run_log.start_training_run(client, experiment_id, f"tuning trial {trial.number}", {
            "mlflow.parentRunId": parent, model_tags.TAG_DAGSTER_RUN_ID: context.run.run_id,
            "pruned": str(trial.pruned), "trial": str(trial.number)})
        run_log.log_training(client, child, trial.params, trial.loss_history, trial.seconds, {},
                             metrics={f"validation_{model_tags.metric_name(k)}": v for k, v in trial.metrics.items()})
        _log_series(client, child, f"validation_{model_tags.metric_name('ndcg@10')}_by_iteration", trial.ndcg_history)
        run_log.finish_run(client, child)
        context.log.info(f"trial {trial.number} {trial.params}: validation NDCG@10 {trial.ndcg:.4f}"
                         f"{' (pruned)' if trial.pruned else ''} in {trial.seconds:.1f}s")

    started = time.perf_counter()
    try:
        result = tune(data.train, space, base=DEFAULTS.replace(iterations=config.iterations),
                      n_trials=config.n_trials, timeout=config.timeout_seconds,
                      validation_fraction=config.validation_fraction, seed=config.seed, prune=config.prune,
                      storage=storage, study_prefix=settings.model_name, on_trial=log_trial)
        ran = len(result.trials) - result.resumed
        run_log.log_training(
            client, parent,
            {**{f"space_{k}": v for k, v in space.to_dict().items()}, "n_trials": config.n_trials,
             "validation_fraction": config.validation_fraction, "seed": config.seed, "study": result.study_name},
            [], time.perf_counter() - started,
            {"trials": len(result.trials), "trials_this_run": ran, "pruned": result.pruned})
        run_log.log_metrics(client, parent, {"best_validation_ndcg_at_10": result.best_ndcg})
        with tempfile.TemporaryDirectory() as tmp:
            trials = result.trials
            path = plots.tuning_trials([t.number for t in trials], [t.ndcg for t in trials],
                                       [t.pruned for t in trials], [t.params["regularization"] for t in trials],
                                       [t.params["alpha"] for t in trials], [t.params["factors"] for t in trials],
                                       Path(tmp) / "trials.png")
            client.log_artifact(parent, str(path), artifact_path="tuning")
            picture = plots.markdown_image(path, "validation NDCG@10 of the trials")
    except Exception:
        run_log.finish_run(client, parent, failed=True)
        raise
    run_log.finish_run(client, parent)
    if result.resumed:
        context.log.info(f"resumed study {result.study_name}: {result.resumed} trials were already done")
    context.log.info(f"best {result.best_params} (validation NDCG@10 {result.best_ndcg:.4f}): the challenger's "
                     f"next run takes them for the hyperparameters its config leaves empty")
    return dg.MaterializeResult(metadata={
        BEST_PARAMS: dg.MetadataValue.json(result.best_params),
        "best_validation_ndcg_at_10": dg.MetadataValue.float(result.best_ndcg),
        "trials": dg.MetadataValue.int(len(result.trials)),
        "trials_this_run": dg.MetadataValue.int(ran),
        "resumed_trials": dg.MetadataValue.int(result.resumed),
        "pruned": dg.MetadataValue.int(result.pruned),
        "study": dg.MetadataValue.text(f"{result.study_name} in {storage}"),
        "validation_pairs": dg.MetadataValue.int(result.validation_pairs),
        "training_window": dg.MetadataValue.text(f"{data.window_start}..{data.window_end}"),
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(experiment_id, parent)),
        "mlflow_run_id": dg.MetadataValue.text(parent),
        "trials_plot": dg.MetadataValue.md(picture),
    })


def _log_series(client, run_id: str, key: str, values: dict[int, float]) -> None:
    """A metric with one value per step (the iterations a trial reported to the pruner)."""
    from mlflow.entities import Metric

    if values:
        now = int(time.time() * 1000)
        with mlflow_errors("logging the trial's validation NDCG by iteration"):
            client.log_batch(run_id, metrics=[Metric(key, float(v), now, int(step)) for step, v in values.items()])


class TunedValues(NamedTuple):
    values: dict[str, Any]  # the best point: a value for each of TUNABLE
    run_id: str  # the Dagster run that materialised it


def latest_tuning_result(instance: dg.DagsterInstance) -> TunedValues | None:
    """The best point of the latest `tuning` materialisation the instance recorded, whatever training window it
    searched; None before the first one."""
    record = instance.get_latest_materialization_event(TUNING_KEY)
    materialization = record.asset_materialization if record is not None else None
    best = materialization.metadata.get(BEST_PARAMS) if materialization is not None else None
    if best is None:
        return None
    return TunedValues({key: value for key, value in best.value.items() if key in TUNABLE}, record.run_id)


tuning_job = dg.define_asset_job("tune_hyperparameters", selection=dg.AssetSelection.assets(tuning),
                                 description="Hyperparameter search on the latest training data.")


def weekly_tuning(cron: str) -> dg.ScheduleDefinition:
    """The search on `cron` (ALS_TUNING_CRON, read by pipelines/defs/automation.py when the definitions load)."""
    return dg.ScheduleDefinition(
        job=tuning_job, cron_schedule=cron, execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Weekly hyperparameter search (ALS_TUNING_CRON, default Sundays 01:00 UTC): a new Optuna "
                    "study when the training data changed, else the stored one resumed.",
    )
