"""The tuning asset: a hyperparameter search on the training data only, one nested MLflow run per point.

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

from als_core.hyperparameters import DEFAULTS, TUNABLE, TUNING_GRID
from als_core.tuning import TuningPoint, tune
from als_store import model_tags
from pipelines import plots
from pipelines.defs.mlflow_resource import MLflowResource
from pipelines.defs.resources import PipelineSettings
from pipelines.registry import run_log
from pipelines.training_data import TrainingData, latest_dir

TUNING_GROUP = "tuning"
TUNING_KEY = dg.AssetKey("tuning")
BEST_PARAMS = "best_params"  # the metadata entry the challenger reads


class TuningConfig(dg.Config):
    factors: list[int] = Field(default=list(TUNING_GRID["factors"]),
                               description="Search space: numbers of latent factors.")
    regularization: list[float] = Field(default=list(TUNING_GRID["regularization"]),
                                        description="Search space: L2 regularization.")
    alpha: list[float] = Field(default=list(TUNING_GRID["alpha"]),
                               description="Search space: confidence scale (c = 1 + alpha*r).")
    iterations: int = Field(default=DEFAULTS.iterations, description="ALS iterations per point.")
    validation_fraction: float = Field(default=0.2, description="Share of each user's TRAINING items held out for validation.")
    seed: int = Field(default=0, description="Seed of the validation split and of the factor initialisation.")
    early_stop: bool = Field(default=True, description="Stop points far below the best after a third of their iterations.")


@dg.asset(
    group_name=TUNING_GROUP,
    deps=["training_data"],
    description="Grid search of factors x regularization x alpha on a validation split of the training data "
                "(never the promotion holdout); its metadata `best_params` is what the challenger "
                "takes for the hyperparameters its run config leaves empty.",
    kinds={"python", "mlflow"},
)
def tuning(context: dg.AssetExecutionContext, config: TuningConfig, mlflow: MLflowResource,
           pipeline: PipelineSettings) -> dg.MaterializeResult:
    settings = pipeline.settings
    data = TrainingData.load(latest_dir(settings))
    space = {key: getattr(config, key) for key in TUNABLE}
    client = mlflow.client()
    experiment_id = mlflow.experiment_id(client)
    parent = run_log.start_training_run(client, experiment_id, "tuning",
                                        {model_tags.TAG_DAGSTER_RUN_ID: context.run.run_id, "kind": "tuning"})
    context.log.info(f"tuning on {data.train.shape[0]} users x {data.train.shape[1]} items "
                     f"({data.train.nnz} nonzeros) over {space}")

    def log_point(point: TuningPoint) -> None:
        child = run_log.start_training_run(client, experiment_id, "tuning point", {
            "mlflow.parentRunId": parent, model_tags.TAG_DAGSTER_RUN_ID: context.run.run_id,
            "stopped_early": str(point.stopped_early)})
        run_log.log_training(client, child, point.params, point.loss_history, point.seconds, {})
        run_log.log_metrics(client, child, {f"validation_{model_tags.metric_name(k)}": v
                                            for k, v in point.metrics.items()})
        run_log.finish_run(client, child)
        context.log.info(f"{point.params}: validation NDCG@10 {point.ndcg:.4f}"
                         f"{' (stopped early)' if point.stopped_early else ''} in {point.seconds:.1f}s")

    started = time.perf_counter()
    try:
        result = tune(data.train, space, base=DEFAULTS.replace(iterations=config.iterations),
                      validation_fraction=config.validation_fraction, seed=config.seed,
                      early_stop=config.early_stop, on_point=log_point)
        run_log.log_training(client, parent, {f"space_{k}": v for k, v in space.items()},
                             [], time.perf_counter() - started, {"points": len(result.points)})
        run_log.log_metrics(client, parent, {"best_validation_ndcg_at_10": result.best_ndcg})
        with tempfile.TemporaryDirectory() as tmp:
            pictures = []
            for rows, cols in (("factors", "regularization"), ("alpha", "regularization")):
                r, c, grid = result.table(rows, cols)
                path = plots.ndcg_heatmap(r, c, grid, rows, cols, Path(tmp) / f"heatmap_{rows}_{cols}.png")
                client.log_artifact(parent, str(path), artifact_path="tuning")
                pictures.append(plots.markdown_image(path, f"NDCG@10 over {rows} x {cols}"))
    except Exception:
        run_log.finish_run(client, parent, failed=True)
        raise
    run_log.finish_run(client, parent)
    context.log.info(f"best {result.best_params} (validation NDCG@10 {result.best_ndcg:.4f}): the challenger's "
                     f"next run takes them for the hyperparameters its config leaves empty")
    return dg.MaterializeResult(metadata={
        BEST_PARAMS: dg.MetadataValue.json(result.best_params),
        "best_validation_ndcg_at_10": dg.MetadataValue.float(result.best_ndcg),
        "points": dg.MetadataValue.int(len(result.points)),
        "stopped_early": dg.MetadataValue.int(sum(p.stopped_early for p in result.points)),
        "validation_pairs": dg.MetadataValue.int(result.validation_pairs),
        "training_window": dg.MetadataValue.text(f"{data.window_start}..{data.window_end}"),
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(experiment_id, parent)),
        "mlflow_run_id": dg.MetadataValue.text(parent),
        "heatmaps": dg.MetadataValue.md("\n\n".join(pictures)),
    })


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
        description="Weekly hyperparameter search (ALS_TUNING_CRON, default Sundays 01:00 UTC).",
    )
