"""The champion gate end to end, with trained models, through the Dagster assets, on a sqlite store and on a
real `mlflow server`: the first model is promoted if it beats popularity, a weak challenger is not, a better
one is, rollback restores the previous champion, and racing promotions end with the better model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from model_half import BETTER, GATE_ASSETS, GOOD, WEAK, materialize, metadata_of, mlflow_resource, \
    publish_training_data, resources_of
from als_store import mlflow_store, model_registry, model_tags
from pipelines.defs import model_assets
from pipelines.registry import promotion

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gate(settings, store):
    """(resource, client) for the parametrised store, with training data published in the test's home."""
    data = publish_training_data(settings)
    resource = mlflow_resource(settings, tracking_uri=store.tracking_uri, model_name=store.model_name)
    return data, resource, mlflow_store.make_client(store.tracking_uri)


def retrain(settings, resource, hyperparameters, **configs):
    result = materialize(GATE_ASSETS, resource, settings, challenger=hyperparameters, **configs)
    return (metadata_of(result, "challenger")["model_version"], metadata_of(result, "evaluation"),
            metadata_of(result, "champion"), result)


def test_gate_sequence_and_rollback(settings, gate):
    data, resource, client = gate
    name = resource.model_name

    v1, first_eval, first, _ = retrain(settings, resource, GOOD)
    assert first_eval["challenger_ndcg_at_10"] > first_eval["popularity_ndcg_at_10"]
    assert first["decision"] == "promoted"
    assert model_registry.aliases(client, name) == {"champion": v1}

    v2, weak_eval, weak, weak_run = retrain(settings, resource, WEAK)
    # the champion was re-scored on the weak challenger's holdout, and won
    assert weak_eval["champion_version"] == v1
    assert weak_eval["challenger_ndcg_at_10"] < weak_eval["champion_ndcg_at_10"]
    assert weak["decision"] == "rejected" and weak["compared_with_version"] == v1
    assert model_registry.aliases(client, name) == {"champion": v1}  # the alias did not move
    tags = model_registry.get_version(client, name, v2).tags
    assert tags["gate.decision"] == "rejected" and int(tags["gate.champion_version"]) == v1
    assert float(tags["gate.champion_ndcg_at_10"]) == pytest.approx(weak_eval["champion_ndcg_at_10"])
    assert float(tags["gate.challenger_ndcg_at_10"]) == pytest.approx(weak_eval["challenger_ndcg_at_10"])
    assert tags["gate.holdout_fingerprint"] == data.holdout_fingerprint
    assert tags["gate.dagster_run_id"] == weak_run.run_id

    v3, better_eval, better, _ = retrain(settings, resource, BETTER)
    assert better_eval["challenger_ndcg_at_10"] > better_eval["champion_ndcg_at_10"]
    assert better["decision"] == "promoted"
    assert model_registry.aliases(client, name) == {"champion": v3, "previous_champion": v1}

    assert promotion.rollback(client, name) == (v3, v1)
    assert model_registry.champion_ref(client, name).version == v1


def test_with_popularity_off_a_first_model_that_loses_to_popularity_is_not_champion(settings, gate):
    """`champion` config `popularity: false`: only the ALS challenger can be promoted (tests/
    test_popularity_champion.py has the default, where popularity is promoted instead)."""
    _, resource, client = gate
    version, evaluation, champion, _ = retrain(settings, resource, WEAK, champion={"popularity": False})
    assert evaluation["challenger_ndcg_at_10"] < evaluation["popularity_ndcg_at_10"]
    assert champion["decision"] == "rejected" and champion["champion_version"] == "none"
    assert model_registry.aliases(client, resource.model_name) == {}
    assert [int(v.version) for v in mlflow_store.make_client(resource.tracking_uri).search_model_versions(
        f"name = '{resource.model_name}'")] == [version]  # no popularity version registered
    # a losing challenger is a normal, successful run; its check warns
    result = materialize([model_assets.recommendations], resource, settings)
    assert metadata_of(result, "recommendations")["champion_version"] == "none"


def test_a_champion_whose_files_are_gone_is_reported_and_the_gate_goes_on(settings, sqlite_only):
    """The champion's model directory is moved out of mlartifacts/: evaluation reports it (version, cause) in
    its log, metadata and the version's tags instead of failing, and the gate replaces it with what measured
    best: popularity over a challenger that loses to it, saying which rule applied."""
    import shutil

    publish_training_data(settings)
    resource = mlflow_resource(settings, tracking_uri=sqlite_only.tracking_uri, model_name=sqlite_only.model_name)
    client = mlflow_store.make_client(resource.tracking_uri)
    name = resource.model_name
    v1, *_ = retrain(settings, resource, GOOD)
    model_dir = model_registry.local_model_dir(resource.tracking_uri, name, v1)
    shutil.move(model_dir, settings.home / "moved-away")

    with dg.instance_for_test() as instance:  # a kept instance, to read the run's log back
        weak_run = dg.materialize(GATE_ASSETS, instance=instance, resources=resources_of(resource, settings),
                                  run_config={"ops": {"challenger": {"config": WEAK}}})
        logged = [entry.user_message for entry in instance.all_logs(weak_run.run_id)
                  if entry.step_key == "evaluation" and "could not be scored" in entry.user_message]
    v2 = metadata_of(weak_run, "challenger")["model_version"]
    weak_eval, weak = metadata_of(weak_run, "evaluation"), metadata_of(weak_run, "champion")
    assert logged and f"champion v{v1} could not be scored (its model directory {model_dir}" in logged[0]
    assert weak_eval["champion_version"] == v1 and "champion_ndcg_at_10" not in weak_eval
    load_error = weak_eval["champion_load_error"]
    assert load_error.startswith(f"v{v1}: ") and str(model_dir) in load_error
    assert weak_eval["challenger_ndcg_at_10"] < weak_eval["popularity_ndcg_at_10"]
    assert weak["decision"] == "popularity promoted" and weak["rule"] == "popularity_champion_unscorable"
    assert str(model_dir) in weak["champion_load_error"]
    tags = model_registry.get_version(client, name, v2).tags
    assert tags[model_tags.TAG_EVAL_CHAMPION_VERSION] == str(v1)
    assert "is missing" in tags[model_tags.TAG_EVAL_CHAMPION_LOAD_ERROR]
    assert tags[model_tags.TAG_GATE_RULE] == "popularity_champion_unscorable"
    assert tags[model_tags.TAG_GATE_CHAMPION_LOAD_ERROR] and tags[model_tags.TAG_GATE_DECISION] == "rejected"
    popularity = weak["popularity_version"]
    assert model_registry.aliases(client, name) == {"champion": popularity, "previous_champion": v1}
    assert model_registry.get_version(client, name, popularity).kind == "popularity"

    # a challenger that beats the popularity champion (and popularity) replaces it
    v4, better_eval, better, _ = retrain(settings, resource, BETTER)
    assert better_eval["champion_version"] == popularity
    assert better_eval["challenger_ndcg_at_10"] > better_eval["popularity_ndcg_at_10"]
    assert better["decision"] == "promoted" and better["rule"] == "beats_champion"
    assert model_registry.aliases(client, name) == {"champion": v4, "previous_champion": popularity}


def test_the_champion_is_rescored_on_the_challengers_holdout_not_its_own(settings, sqlite_only):
    """The champion is trained and scored on one data set; the next retrain's data is another. Its recorded
    NDCG@10 is far above what it scores on the new holdout, and the challenger sits in between (and above
    popularity): it is promoted only because the champion was really re-scored on its holdout."""
    from als_core.bundle import evaluate_on_holdout
    from model_half import small_training_data

    resource = mlflow_resource(settings, tracking_uri=sqlite_only.tracking_uri, model_name=sqlite_only.model_name)
    client = mlflow_store.make_client(resource.tracking_uri)
    publish_training_data(settings, small_training_data(seed=1))
    v1, first_eval, first, _ = retrain(settings, resource, BETTER)
    assert first["decision"] == "promoted"
    recorded = first_eval["challenger_ndcg_at_10"]

    new_data = publish_training_data(settings, small_training_data(seed=2))
    v2, evaluation, champion, _ = retrain(settings, resource, GOOD)
    old_on_new = evaluate_on_holdout(model_registry.load_bundle(resource.tracking_uri, resource.model_name, v1),
                                     new_data.holdout_user_ids, new_data.holdout_item_ids, k=10)["ndcg@10"]
    assert evaluation["champion_version"] == v1
    assert evaluation["champion_ndcg_at_10"] == pytest.approx(old_on_new)
    assert old_on_new < evaluation["challenger_ndcg_at_10"] < recorded  # the decision depends on which is used
    assert evaluation["challenger_ndcg_at_10"] > evaluation["popularity_ndcg_at_10"]
    assert champion["decision"] == "promoted" and champion["rule"] == "beats_champion"
    assert champion["champion_ndcg_at_10"] == pytest.approx(old_on_new)
    assert model_registry.aliases(client, resource.model_name) == {"champion": v2, "previous_champion": v1}


def test_margin_then_regating_the_newest_version_on_its_own(settings, sqlite_only):
    publish_training_data(settings)
    resource = mlflow_resource(settings, tracking_uri=sqlite_only.tracking_uri, model_name=sqlite_only.model_name)
    client = mlflow_store.make_client(resource.tracking_uri)
    v1, *_ = retrain(settings, resource, GOOD)
    v2, evaluation, champion, _ = retrain(settings, resource, BETTER, champion={"margin": 1.0})
    assert evaluation["challenger_ndcg_at_10"] > evaluation["champion_ndcg_at_10"]
    assert champion["decision"] == "rejected" and "margin 1" in champion["reason"]
    assert model_registry.champion_ref(client, resource.model_name).version == v1
    # `champion` materialised alone (another Dagster run) gates the newest evaluated version
    alone = materialize([model_assets.champion], resource, settings)
    assert metadata_of(alone, "champion")["decision"] == "promoted"
    assert model_registry.aliases(client, resource.model_name) == {"champion": v2, "previous_champion": v1}


def gate_in_another_process(home: str, tracking_uri: str, model_name: str, version: int, barrier) -> None:
    """Target of a spawned process: materialise `champion` for ``version`` (its own Dagster run) once every
    process is ready. Exits non-zero on any error."""
    import traceback

    try:
        from als_store.settings import Settings

        settings = Settings.build(home)
        resource = mlflow_resource(settings, tracking_uri=tracking_uri, model_name=model_name)
        barrier.wait(timeout=120)
        materialize([model_assets.champion], resource, settings, champion={"version": version})
    except BaseException:
        traceback.print_exc()
        sys.exit(1)


@pytest.mark.slow  # two spawned processes, each importing Dagster and MLflow
def test_racing_promotions_end_with_the_better_model(settings, gate):
    """Two retrains evaluated while there was no champion run their `champion` steps at the same time, in two
    processes (two Dagster runs), on a sqlite store and on a tracking server: the lock serialises them and
    the second re-scores the first's champion."""
    from registry_stores import run_processes, spawn_context

    _, resource, client = gate
    evaluated = {}
    for hyperparameters in (GOOD, BETTER):
        result = materialize([model_assets.challenger, model_assets.evaluation], resource, settings,
                             challenger=hyperparameters)
        evaluated[metadata_of(result, "challenger")["model_version"]] = metadata_of(result, "evaluation")
    assert all(e["champion_version"] == "none" for e in evaluated.values())
    better = max(evaluated, key=lambda v: evaluated[v]["challenger_ndcg_at_10"])
    ctx = spawn_context()
    barrier = ctx.Barrier(len(evaluated))
    run_processes(ctx, gate_in_another_process, [
        (str(settings.home), resource.tracking_uri, resource.model_name, version, barrier) for version in evaluated],
        timeout_s=240)
    assert model_registry.champion_ref(client, resource.model_name).version == better
    tags = {v: model_registry.get_version(client, resource.model_name, v).tags for v in evaluated}
    assert tags[better]["gate.decision"] == "promoted"
    worse = next(v for v in evaluated if v != better)
    if tags[worse]["gate.decision"] == "promoted":  # it went first: the better one then re-scored it
        assert int(tags[better]["gate.champion_version"]) == worse
        assert model_registry.aliases(client, resource.model_name)["previous_champion"] == worse


@pytest.mark.slow
def test_rollback_command_line(settings):
    publish_training_data(settings)
    resource = mlflow_resource(settings)  # the home's default store, which the CLI reads from the env
    v1, *_ = retrain(settings, resource, GOOD)
    v2, *_ = retrain(settings, resource, BETTER)
    client = mlflow_store.make_client(resource.tracking_uri)
    assert model_registry.aliases(client, resource.model_name) == {"champion": v2, "previous_champion": v1}
    env = {**os.environ, "ALS_PIPELINE_HOME": str(settings.home)}
    out = subprocess.run([sys.executable, "-m", "pipelines.registry", "rollback"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"champion v{v2} -> v{v1}" in out.stdout
    assert model_registry.aliases(client, resource.model_name) == {"champion": v1, "previous_champion": v2}
    again = subprocess.run([sys.executable, "-m", "pipelines.registry", "show"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and f'"version": {v1}' in again.stdout
