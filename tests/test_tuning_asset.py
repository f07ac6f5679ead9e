"""The tuning asset through Dagster, against a real MLflow sqlite store and the Optuna study in the home: nested
runs per trial, the trials picture, best params, a re-run that resumes the study, and the challenger that takes the
best params from the instance's record of the latest tuning materialisation."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest
from model_half import materialize, metadata_of, mlflow_resource

from als_core.hyperparameters import DEFAULTS, SEARCH_SPACE, TUNABLE
from als_core.splits import random_holdout
from als_core.synthetic import generate_user_items
from als_store import mlflow_store
from pipelines.training_data import TrainingData, publish


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


def test_tuning_asset_logs_nested_runs_and_records_best_params(settings, resources, published, monkeypatch):
    from pipelines.defs import tuning as tuning_module

    data, holdout = published
    searched = []
    real_tune = tuning_module.tune
    monkeypatch.setattr(tuning_module, "tune", lambda train, *a, **kw: searched.append(train) or real_tune(train, *a, **kw))
    space = {"factors": [4, 16], "regularization": [1.0, 10.0], "alpha": [1.0, 1.0]}
    result = dg.materialize(
        [tuning_module.tuning],
        resources=resources,
        run_config={"ops": {"tuning": {"config": {**space, "iterations": 4, "n_trials": 4}}}},
    )
    assert result.success
    # the search saw the training matrix only: no holdout pair in it
    assert len(searched) == 1 and searched[0].multiply(holdout).nnz == 0

    metadata = result.asset_materializations_for_node("tuning")[0].metadata
    best = metadata["best_params"].value
    assert best["factors"] in (4, 16) and 1.0 <= best["regularization"] <= 10.0 and best["alpha"] == 1.0
    assert metadata["training_window"].value == f"{data.window_start}..{data.window_end}"
    assert metadata["trials"].value == metadata["trials_this_run"].value == 4
    assert metadata["resumed_trials"].value == 0
    assert str(settings.home / "optuna.db") in metadata["study"].value
    assert "data:image/png;base64," in metadata["trials_plot"].value

    client = mlflow_store.make_client(settings.mlflow_tracking_uri)
    parent = client.get_run(metadata["mlflow_run_id"].value)
    assert parent.data.tags["kind"] == "tuning"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4
    assert all("validation_ndcg_at_10" in run.data.metrics for run in children)
    completed = [run for run in children if run.data.tags["pruned"] == "False"]
    best_child = max(completed, key=lambda run: run.data.metrics["validation_ndcg_at_10"])
    assert int(best_child.data.params["factors"]) == best["factors"]
    assert float(best_child.data.params["regularization"]) == best["regularization"]
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id, "tuning")]
    assert artifacts == ["tuning/trials.png"]


@pytest.mark.slow
def test_a_rerun_resumes_the_study_in_the_home(settings, resources, published):
    from pipelines.defs import tuning as tuning_module

    def run(n_trials: int) -> dict:
        config = {"factors": [4, 8], "regularization": [0.1, 10.0], "alpha": [0.5, 5.0], "iterations": 3,
                  "n_trials": n_trials}
        result = dg.materialize([tuning_module.tuning], resources=resources,
                                run_config={"ops": {"tuning": {"config": config}}})
        return {key: value.value for key, value in result.asset_materializations_for_node("tuning")[0].metadata.items()}

    first, again, more = run(3), run(3), run(5)
    assert (first["trials"], first["trials_this_run"], first["resumed_trials"]) == (3, 3, 0)
    assert (again["trials"], again["trials_this_run"], again["resumed_trials"]) == (3, 0, 3)
    assert again["best_params"] == first["best_params"] and again["study"] == first["study"]
    assert (more["trials"], more["trials_this_run"], more["resumed_trials"]) == (5, 2, 3)

    client = mlflow_store.make_client(settings.mlflow_tracking_uri)
    trial_runs = client.search_runs([client.get_run(first["mlflow_run_id"]).info.experiment_id],
                                    filter_string="tags.trial != ''")
    assert sorted(int(run.data.tags["trial"]) for run in trial_runs) == [0, 1, 2, 3, 4]  # each trial logged once


def test_the_challenger_takes_the_latest_tuning_result_recorded_by_the_instance(settings, published):
    from pipelines.defs import model_assets
    from pipelines.defs import tuning as tuning_module

    resource = mlflow_resource(settings)
    with dg.instance_for_test() as instance:
        before = metadata_of(materialize([model_assets.challenger], resource, settings, instance=instance,
                                         challenger={"iterations": 2}), "challenger")
        tuned = materialize([tuning_module.tuning], resource, settings, instance=instance,
                            tuning={"factors": [4, 16], "regularization": [1.0, 10.0], "alpha": [1.0, 1.0],
                                    "iterations": 4, "n_trials": 4})
        after = metadata_of(materialize([model_assets.challenger], resource, settings, instance=instance,
                                        challenger={"iterations": 2}), "challenger")

    # no tuning yet: the defaults, and the run says so
    assert before["hyperparameters"]["from"] == {key: "default" for key in TUNABLE}
    assert {key: before["hyperparameters"][key] for key in TUNABLE} == {key: getattr(DEFAULTS, key) for key in TUNABLE}
    assert before["tuning_result"].startswith("none yet")
    # after a tuning materialisation: its best point, and which run found it
    best = metadata_of(tuned, "tuning")["best_params"]
    assert after["hyperparameters"]["from"] == {key: "tuning" for key in TUNABLE}
    assert {key: after["hyperparameters"][key] for key in TUNABLE} == best
    assert tuned.run_id in after["tuning_result"]


def test_tuning_is_upstream_of_the_challenger_but_not_in_the_daily_retrain():
    from pipelines.definitions import defs

    repository = defs().get_repository_def()
    assert dg.AssetKey("tuning") in repository.asset_graph.get(dg.AssetKey("challenger")).parent_keys
    retrain = repository.get_job("daily_retrain").asset_layer.executable_asset_keys
    assert dg.AssetKey("challenger") in retrain and dg.AssetKey("tuning") not in retrain


def test_the_tuning_config_defaults_to_the_search_space_of_als_core():
    from als_core.tuning import N_TRIALS
    from pipelines.defs.tuning import TuningConfig

    config = TuningConfig()
    assert {key: getattr(config, key) for key in TUNABLE} == SEARCH_SPACE.to_dict()
    assert config.iterations == DEFAULTS.iterations and config.n_trials == N_TRIALS == 48


def test_a_bad_search_space_fails_the_run_before_any_trial(settings, resources, published):
    from pipelines.defs import tuning as tuning_module

    result = dg.materialize([tuning_module.tuning], resources=resources, raise_on_error=False,
                            run_config={"ops": {"tuning": {"config": {"regularization": [0.0, 10.0]}}}})
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    assert "0 < low <= high" in str(failure.event_specific_data.error)
    assert not (settings.home / "optuna.db").exists()
