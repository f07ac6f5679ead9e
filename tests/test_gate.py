"""The champion gate end to end, with trained models, through the Dagster assets, on a sqlite store and on a
real `mlflow server`: the first model is promoted if it beats popularity, a weak challenger is not, a better
one is, rollback restores the previous champion, and racing promotions end with the better model."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from model_half import BETTER, GATE_ASSETS, GOOD, WEAK, materialize, metadata_of, mlflow_resource, \
    publish_training_data
from pipelines import registry
from pipelines.defs import model_assets

pytest_plugins = ["mlflow_server", "registry_stores"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gate(settings, store):
    """(resource, client) for the parametrised store, with training data published in the test's home."""
    data = publish_training_data(settings)
    resource = mlflow_resource(settings, tracking_uri=store.tracking_uri, model_name=store.model_name)
    return data, resource, registry.make_client(store.tracking_uri)


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
    assert registry.aliases(client, name) == {"champion": v1}

    v2, weak_eval, weak, weak_run = retrain(settings, resource, WEAK)
    # the champion was re-scored on the weak challenger's holdout, and won
    assert weak_eval["champion_version"] == v1
    assert weak_eval["challenger_ndcg_at_10"] < weak_eval["champion_ndcg_at_10"]
    assert weak["decision"] == "rejected" and weak["compared_with_version"] == v1
    assert registry.aliases(client, name) == {"champion": v1}  # the alias did not move
    tags = registry.get_version(client, name, v2).tags
    assert tags["gate.decision"] == "rejected" and int(tags["gate.champion_version"]) == v1
    assert float(tags["gate.champion_ndcg_at_10"]) == pytest.approx(weak_eval["champion_ndcg_at_10"])
    assert float(tags["gate.challenger_ndcg_at_10"]) == pytest.approx(weak_eval["challenger_ndcg_at_10"])
    assert tags["gate.holdout_fingerprint"] == data.holdout_fingerprint
    assert tags["gate.dagster_run_id"] == weak_run.run_id

    v3, better_eval, better, _ = retrain(settings, resource, BETTER)
    assert better_eval["challenger_ndcg_at_10"] > better_eval["champion_ndcg_at_10"]
    assert better["decision"] == "promoted"
    assert registry.aliases(client, name) == {"champion": v3, "previous_champion": v1}

    assert registry.rollback(client, name) == (v3, v1)
    assert registry.champion_ref(client, name).version == v1


def test_first_model_that_loses_to_popularity_is_not_champion(settings, gate):
    _, resource, client = gate
    version, evaluation, champion, _ = retrain(settings, resource, WEAK)
    assert evaluation["challenger_ndcg_at_10"] < evaluation["popularity_ndcg_at_10"]
    assert champion["decision"] == "rejected" and champion["champion_version"] == "none"
    assert registry.aliases(client, resource.model_name) == {}
    # a losing challenger is a normal, successful run; its check warns
    result = materialize([model_assets.recommendations], resource, settings)
    assert metadata_of(result, "recommendations")["champion_version"] == "none"


def test_margin_then_regating_the_newest_version_on_its_own(settings, sqlite_only):
    publish_training_data(settings)
    resource = mlflow_resource(settings, tracking_uri=sqlite_only.tracking_uri, model_name=sqlite_only.model_name)
    client = registry.make_client(resource.tracking_uri)
    v1, *_ = retrain(settings, resource, GOOD)
    v2, evaluation, champion, _ = retrain(settings, resource, BETTER, champion={"margin": 1.0})
    assert evaluation["challenger_ndcg_at_10"] > evaluation["champion_ndcg_at_10"]
    assert champion["decision"] == "rejected" and "margin 1" in champion["reason"]
    assert registry.champion_ref(client, resource.model_name).version == v1
    # `champion` materialised alone (another Dagster run) gates the newest evaluated version
    alone = materialize([model_assets.champion], resource, settings)
    assert metadata_of(alone, "champion")["decision"] == "promoted"
    assert registry.aliases(client, resource.model_name) == {"champion": v2, "previous_champion": v1}


def test_racing_promotions_end_with_the_better_model(settings, sqlite_only):
    """Two retrains evaluated while there was no champion run their `champion` steps at the same time (two
    threads, two Dagster runs): the lock serialises them and the second re-scores the first's champion."""
    publish_training_data(settings)
    resource = mlflow_resource(settings, tracking_uri=sqlite_only.tracking_uri, model_name=sqlite_only.model_name)
    client = registry.make_client(resource.tracking_uri)
    evaluated = {}
    for hyperparameters in (GOOD, BETTER):
        result = materialize([model_assets.challenger, model_assets.evaluation], resource, settings,
                             challenger=hyperparameters)
        evaluated[metadata_of(result, "challenger")["model_version"]] = metadata_of(result, "evaluation")
    assert all(e["champion_version"] == "none" for e in evaluated.values())
    better = max(evaluated, key=lambda v: evaluated[v]["challenger_ndcg_at_10"])
    barrier = threading.Barrier(len(evaluated))
    results, errors = {}, []

    def gate_version(version):
        try:
            barrier.wait(timeout=30)
            results[version] = materialize([model_assets.champion], resource, settings, champion={"version": version})
        except Exception as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=gate_version, args=(v,)) for v in evaluated]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert registry.champion_ref(client, resource.model_name).version == better
    decisions = {v: metadata_of(r, "champion")["decision"] for v, r in results.items()}
    assert decisions[better] == "promoted"


@pytest.mark.slow
def test_rollback_command_line(settings):
    publish_training_data(settings)
    resource = mlflow_resource(settings)  # the home's default store, which the CLI reads from the env
    v1, *_ = retrain(settings, resource, GOOD)
    v2, *_ = retrain(settings, resource, BETTER)
    client = registry.make_client(resource.tracking_uri)
    assert registry.aliases(client, resource.model_name) == {"champion": v2, "previous_champion": v1}
    env = {**os.environ, "ALS_PIPELINE_HOME": str(settings.home)}
    out = subprocess.run([sys.executable, "-m", "pipelines.registry", "rollback"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"champion v{v2} -> v{v1}" in out.stdout
    assert registry.aliases(client, resource.model_name) == {"champion": v1, "previous_champion": v2}
    again = subprocess.run([sys.executable, "-m", "pipelines.registry", "show"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and f'"version": {v1}' in again.stdout
