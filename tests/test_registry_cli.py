"""`python -m pipelines registry show | rollback | promote VERSION` on the home's own MLflow store, with real
registered bundles: a wrong hand operation leaves the registry exactly as it was and says why; a good
promotion moves both aliases and records who, when and why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from als_store import mlflow_store, model_registry, model_tags
from pipelines.registry import cli, registration, run_log

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home_store(settings, monkeypatch):
    """The home's default store with three registered bundles (v1 champion, v2, v3) and the operator 'alice'."""
    from als_core import ALS
    from als_core.bundle import ModelBundle

    for key, value in mlflow_store.MLFLOW_HTTP_LIMITS.items():  # main() sets them when unset: keep them per test
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("LOGNAME", "alice")
    monkeypatch.setenv("ALS_PIPELINE_HOME", str(settings.home))  # the command reads its home as a shell gives it
    uri, name = settings.mlflow_tracking_uri, settings.model_name
    client = mlflow_store.make_client(uri)
    experiment = run_log.ensure_experiment(client, "cli", settings.mlflow_artifact_root)
    train = sp.random(12, 9, density=0.4, format="csr", dtype=np.float32, random_state=0) * 10
    bundle = ModelBundle.build(ALS(factors=4, iterations=2, random_state=0).fit(train), np.arange(100, 112),
                               np.arange(500, 509), train)
    bundle_dir = bundle.save(settings.home / "bundle")
    versions = []
    for i in range(3):
        run_id = run_log.start_training_run(client, experiment, f"cli {i}", {})
        versions.append(registration.register_bundle(uri, run_id, name, bundle_dir, bundle.user_ids[:2], {}).version)
        run_log.finish_run(client, run_id)
    client.set_registered_model_alias(name, model_tags.CHAMPION, str(versions[0]))
    return client, name, versions


def tags_of(client, name, version):
    return model_registry.get_version(client, name, version).tags


def state(client, name, versions):
    return model_registry.aliases(client, name), {v: tags_of(client, name, v) for v in versions}


def test_promoting_a_version_that_does_not_exist_changes_nothing(home_store, capsys):
    client, name, versions = home_store
    before = state(client, name, versions)
    assert cli.main(["promote", "99"]) == 1
    assert f"model {name!r} has no version 99: nothing changed" in capsys.readouterr().err
    assert state(client, name, versions) == before


def test_promoting_a_version_whose_bundle_is_gone_changes_nothing(home_store, settings, capsys):
    client, name, (v1, v2, v3) = home_store
    shutil.move(model_registry.local_model_dir(settings.mlflow_tracking_uri, name, v2), settings.home / "moved-away")
    before = state(client, name, (v1, v2, v3))
    assert cli.main(["promote", str(v2)]) == 1
    err = capsys.readouterr().err
    assert f"version {v2} cannot be loaded: its model directory" in err and "nothing changed" in err
    assert state(client, name, (v1, v2, v3)) == before


def test_promoting_the_champion_itself_changes_nothing(home_store, capsys):
    """What was asked for holds already: exit 0, nothing moved, no tags (previous_champion is not made the
    champion itself)."""
    client, name, (v1, v2, v3) = home_store
    before = state(client, name, (v1, v2, v3))
    assert cli.main(["promote", str(v1)]) == 0
    assert f"version {v1} is already the champion: nothing changed" in capsys.readouterr().out
    assert state(client, name, (v1, v2, v3)) == before


def test_a_good_promotion_moves_both_aliases_and_records_who_and_why(home_store, capsys):
    client, name, (v1, v2, v3) = home_store
    assert cli.main(["promote", str(v3), "--reason", "v2 and v3 retrained on a bad day"]) == 0
    out = capsys.readouterr().out
    assert f"champion v{v1} -> v{v3} (v{v1} is now previous_champion)" in out
    assert model_registry.aliases(client, name) == {"champion": v3, "previous_champion": v1}
    tags = tags_of(client, name, v3)
    assert tags[model_tags.TAG_MANUAL_PROMOTED_BY] == "alice"
    assert tags[model_tags.TAG_MANUAL_REASON] == "v2 and v3 retrained on a bad day"
    assert tags[model_tags.TAG_MANUAL_REPLACED] == str(v1) and tags[model_tags.TAG_MANUAL_PROMOTED_AT].endswith("Z")
    shown = json.loads(out[out.index("{"):])
    assert shown["champion"]["version"] == v3 and shown["champion"]["promoted_by_hand"]["by"] == "alice"
    assert shown["previous_champion"]["version"] == v1
    # and it undoes with one rollback
    assert cli.main(["rollback"]) == 0
    assert model_registry.aliases(client, name) == {"champion": v1, "previous_champion": v3}


@pytest.mark.parametrize("previous", ["none", "the champion"])
def test_rollback_with_nothing_to_roll_back_to_exits_non_zero_and_changes_nothing(home_store, previous, capsys):
    client, name, (v1, v2, v3) = home_store
    if previous == "the champion":  # aliases set by hand (MLflow's UI) can say so
        client.set_registered_model_alias(name, model_tags.PREVIOUS_CHAMPION, str(v1))
    before = state(client, name, (v1, v2, v3))
    assert cli.main(["rollback"]) == 1
    assert "nothing to roll back to" in capsys.readouterr().err
    assert state(client, name, (v1, v2, v3)) == before


def test_rollback_to_a_version_whose_bundle_is_gone_changes_nothing(home_store, settings, capsys):
    client, name, (v1, v2, v3) = home_store
    assert cli.main(["promote", str(v2)]) == 0
    shutil.move(model_registry.local_model_dir(settings.mlflow_tracking_uri, name, v1), settings.home / "moved-away")
    before = state(client, name, (v1, v2, v3))
    assert cli.main(["rollback"]) == 1
    err = capsys.readouterr().err
    assert f"version {v1} cannot be loaded" in err and "registry promote VERSION" in err
    assert state(client, name, (v1, v2, v3)) == before


def test_show_lists_the_aliases_and_the_newest_versions(home_store, capsys):
    client, name, (v1, v2, v3) = home_store
    assert cli.main(["show", "--limit", "2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["model"] == name and shown["champion"]["version"] == v1 and shown["previous_champion"] is None
    assert [v["version"] for v in shown["versions"]] == [v3, v2]
    assert {"aliases", "status", "ndcg_at_10", "popularity_ndcg_at_10", "decision", "rule", "compared_with_version",
            "champion_ndcg_at_10", "champion_load_error", "decided_at"} <= set(shown["versions"][0])


@pytest.mark.slow
def test_promote_through_python_m_pipelines(home_store, settings):
    """The documented command line, in its own process."""
    client, name, (v1, v2, v3) = home_store
    env = {**os.environ, "ALS_PIPELINE_HOME": str(settings.home)}
    command = [sys.executable, "-m", "pipelines", "registry", "promote", str(v2), "--reason", "by hand"]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert model_registry.aliases(client, name) == {"champion": v2, "previous_champion": v1}
    again = subprocess.run(command[:-2], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already the champion" in again.stdout
    assert model_registry.aliases(client, name) == {"champion": v2, "previous_champion": v1}
