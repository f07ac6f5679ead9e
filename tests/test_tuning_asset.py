"""The tuning asset through Dagster, against a real MLflow sqlite store: nested runs, heatmaps, best params."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pytest

from als_core.splits import random_holdout
from als_core.synthetic import generate_user_items
from als_store import mlflow_store
from pipelines.training_data import TrainingData, publish
from pipelines.tuned_params import best_params_path, read_best_params


@pytest.fixture
def published(settings):
    user_items = generate_user_items(800, 200, 12_000, seed=5)
    train, holdout = random_holdout(user_items, fraction=0.2, seed=1)
    rows, cols = holdout.nonzero()
    data = TrainingData(
        user_ids=np.arange(100, 900, dtype=np.int64), item_ids=np.arange(5000, 5200, dtype=np.int64), train=train,
        holdout_user_ids=(100 + rows).astype(np.int64), holdout_item_ids=(5000 + cols).astype(np.int64),
        window_start="2026-01-01", window_end="2026-01-30", split="random(fraction=0.2, seed=1)")
    publish(data, settings)
    return data, holdout


def test_tuning_asset_logs_nested_runs_and_writes_best_params(settings, published, monkeypatch):
    from pipelines.defs import tuning as tuning_module
    from pipelines.defs.mlflow_resource import MLflowResource

    data, holdout = published
    searched = []
    real_tune = tuning_module.tune
    monkeypatch.setattr(tuning_module, "tune", lambda train, *a, **kw: searched.append(train) or real_tune(train, *a, **kw))
    space = {"factors": [4, 16], "regularization": [1.0, 10.0], "alpha": [1.0]}
    result = dg.materialize(
        [tuning_module.tuning],
        resources={"mlflow": MLflowResource.from_settings(settings)},
        run_config={"ops": {"tuning": {"config": {**space, "iterations": 4}}}},
    )
    assert result.success
    # the search saw the training matrix only: no holdout pair in it
    assert len(searched) == 1 and searched[0].multiply(holdout).nnz == 0

    best = read_best_params(settings)
    assert best is not None and best["factors"] in (4, 16) and best["alpha"] == 1.0
    payload = json.loads(best_params_path(settings).read_text())
    metadata = result.asset_materializations_for_node("tuning")[0].metadata
    assert metadata["best_params"].value == best
    assert metadata["points"].value == 4
    assert "data:image/png;base64," in metadata["heatmaps"].value

    client = mlflow_store.make_client(settings.mlflow_tracking_uri)
    parent = client.get_run(payload["mlflow_run_id"])
    assert parent.data.tags["kind"] == "tuning"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4
    assert all("validation_ndcg_at_10" in run.data.metrics for run in children)
    best_child = max(children, key=lambda run: run.data.metrics["validation_ndcg_at_10"])
    assert int(best_child.data.params["factors"]) == best["factors"]
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id, "tuning")]
    assert sorted(artifacts) == ["tuning/heatmap_alpha_regularization.png", "tuning/heatmap_factors_regularization.png"]
