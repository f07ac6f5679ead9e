"""Helpers for tests of the model assets: a small TrainingData written directly (no ingest needed), the
resources, and one `dg.materialize` of challenger -> evaluation -> champion (-> recommendations)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import dagster as dg

from als_core.synthetic import generate_events
from pipelines.defs import model_assets
from pipelines.defs.mlflow_resource import MLflowResource
from pipelines.defs.resources import PipelineSettings, build_resources
from als_store.settings import Settings
from pipelines.training_data import TrainingData, publish, random_split

EVENT_WEIGHTS = {"view": 3.0, "cart": 10.0, "purchase": 40.0}

# Hyperparameters with far-apart NDCG@10 on `small_training_data` (measured, not asserted: tests compare
# models with each other and with popularity, never with fixed numbers).
WEAK = {"factors": 1, "iterations": 1, "use_tuned": False}
GOOD = {"factors": 8, "iterations": 5, "regularization": 1.0, "alpha": 10.0, "use_tuned": False}
BETTER = {"factors": 16, "iterations": 15, "regularization": 5.0, "alpha": 5.0, "use_tuned": False}

GATE_ASSETS = [model_assets.challenger, model_assets.evaluation, model_assets.champion]
ALL_ASSETS = [*GATE_ASSETS, model_assets.recommendations]


def small_training_data(seed: int = 1) -> TrainingData:
    """400 users x 150 items with planted structure; a random 20% per-user holdout (external int ids)."""
    events = generate_events(n_users=400, n_items=150, n_events=30_000, n_days=10, seed=seed)
    weights = events["event_type"].map(EVENT_WEIGHTS).to_numpy()
    return random_split(events["user_id"].to_numpy(), events["item_id"].to_numpy(), weights,
                        dt.date(2026, 1, 1), dt.date(2026, 1, 10), fraction=0.2, seed=0)


def publish_training_data(settings: Settings, data: TrainingData | None = None) -> TrainingData:
    data = data or small_training_data()
    publish(data, settings)
    return data


def mlflow_resource(settings: Settings, tracking_uri: str | None = None, model_name: str | None = None) -> MLflowResource:
    """The MLflow resource at the home of `settings`, with another store or model name if given."""
    changed = {"mlflow_tracking_uri": tracking_uri, "model_name": model_name}
    return MLflowResource.from_settings(
        dataclasses.replace(settings, **{key: value for key, value in changed.items() if value}))


def resources_of(mlflow: MLflowResource, settings: Settings) -> dict:
    """Every resource at the home of `settings`, with `mlflow` for MLflow (its store and model name)."""
    pipeline: PipelineSettings = mlflow.pipeline
    assert pipeline.settings.home == settings.home, "the MLflow resource of another home"
    return {**build_resources(pipeline), "mlflow": mlflow}


def materialize(assets, mlflow: MLflowResource, settings: Settings, raise_on_error: bool = True,
                instance: dg.DagsterInstance | None = None, **configs):
    """``configs``: run config per asset name, e.g. ``challenger=GOOD, champion={"margin": 0.1}``. ``instance``:
    the Dagster instance that records the run (default: a new ephemeral one, which has seen no tuning)."""
    return dg.materialize(
        assets,
        resources=resources_of(mlflow, settings),
        run_config={"ops": {name: {"config": config} for name, config in configs.items()}} if configs else None,
        raise_on_error=raise_on_error,
        instance=instance,
    )


def metadata_of(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events()
               if e.asset_key == dg.AssetKey(asset)]
    return {key: value.value for key, value in event.materialization.metadata.items()}
