"""`python -m pipelines registry copy-champion --from URI` (pipelines/registry/transfer.py): the champion and
previous_champion of a sqlite store, trained by the pipeline's own assets, carried to a Postgres-backed
`mlflow server` with their bundles, tags and aliases; a rerun copies nothing, a target with a champion of its
own is refused without --force, and a retrain against the target gates against the carried champion."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from als_store import mlflow_store, model_registry, model_tags
from model_half import GATE_ASSETS, GOOD, WEAK, materialize, metadata_of, mlflow_resource, publish_training_data
from pipelines.registry import transfer

ROOT = Path(__file__).resolve().parents[1]


def test_a_tag_never_shows_the_source_stores_credentials():
    assert transfer.without_credentials("postgresql+psycopg2://u:secret@db:5432/mlflow?password=x") == \
        "postgresql+psycopg2://db:5432/mlflow"
    assert transfer.without_credentials("https://bob:pw@mlflow.example:5000") == "https://mlflow.example:5000"
    assert transfer.without_credentials("sqlite:////srv/als/.data/mlflow.db") == "sqlite:////srv/als/.data/mlflow.db"


def assert_same_bundle(copied, source) -> None:
    """Loaded from the two stores, the bundles hold the same ids and arrays."""
    assert (copied.kind, copied.metadata, copied.weighting.as_dict()) == \
        (source.kind, source.metadata, source.weighting.as_dict())
    np.testing.assert_array_equal(copied.user_ids, source.user_ids)
    np.testing.assert_array_equal(copied.item_ids, source.item_ids)
    for part in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(copied.seen, part), getattr(source.seen, part))
    np.testing.assert_array_equal(copied.popularity.ranking, source.popularity.ranking)
    assert (copied.model is None) == (source.model is None)
    if source.model is not None:
        np.testing.assert_array_equal(copied.model.user_factors, source.model.user_factors)
        np.testing.assert_array_equal(copied.model.item_factors, source.model.item_factors)


def copy_command(settings, target_uri: str, source_uri: str, *extra: str) -> subprocess.CompletedProcess:
    """The command as an operator's shell runs it: the target from MLFLOW_TRACKING_URI, the model's name from
    ALS_MODEL_NAME."""
    env = {**os.environ, **settings.environment(), "MLFLOW_TRACKING_URI": target_uri}
    env.pop("DAGSTER_PG_HOST", None)  # the embedded profile: the promotion lock is the home's file
    return subprocess.run([sys.executable, "-m", "pipelines", "registry", "copy-champion", "--from", source_uri,
                           *extra], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_champion_and_previous_champion_are_carried_to_a_tracking_server_once(settings, postgres_mlflow_server):
    import dataclasses

    name = f"copy-{uuid.uuid4().hex[:8]}"
    settings = dataclasses.replace(settings, model_name=name)
    source_uri, target_uri = settings.mlflow_tracking_uri, postgres_mlflow_server.uri
    # WEAK loses to popularity (popularity v2, counted on v1, becomes the champion); GOOD beats it (v3)
    publish_training_data(settings)
    source_resource = mlflow_resource(settings)
    materialize(GATE_ASSETS, source_resource, settings, challenger=WEAK)
    materialize(GATE_ASSETS, source_resource, settings, challenger=GOOD)
    source, target = mlflow_store.make_client(source_uri), mlflow_store.make_client(target_uri)
    source_aliases = model_registry.aliases(source, name)
    assert source_aliases == {model_tags.CHAMPION: 3, model_tags.PREVIOUS_CHAMPION: 2}

    done = copy_command(settings, target_uri, source_uri)
    assert done.returncode == 0, done.stderr
    copied = model_registry.aliases(target, name)
    champion, previous = copied[model_tags.CHAMPION], copied[model_tags.PREVIOUS_CHAMPION]
    assert (previous, champion) == (1, 2)  # copied in the source's order
    assert f"copied champion v3 from {source_uri} -> v{champion} at {target_uri}" in done.stdout
    assert f"copied previous_champion v2 from {source_uri} -> v{previous} at {target_uri}" in done.stdout

    for alias, target_version in ((model_tags.CHAMPION, champion), (model_tags.PREVIOUS_CHAMPION, previous)):
        source_version = source_aliases[alias]
        assert_same_bundle(model_registry.load_bundle(target_uri, name, target_version),
                           model_registry.load_bundle(source_uri, name, source_version))
        ours = model_registry.get_version(target, name, target_version)
        theirs = model_registry.get_version(source, name, source_version)
        assert ours.tags[transfer.TAG_COPIED_FROM_URI] == source_uri
        assert ours.tags[transfer.TAG_COPIED_FROM_VERSION] == str(source_version)
        assert ours.tags[transfer.TAG_COPIED_FROM_RUN_ID] == theirs.run_id
        kept = {key: value for key, value in theirs.tags.items() if key not in transfer.VERSION_NUMBER_TAGS}
        assert {key: ours.tags.get(key) for key in kept} == kept  # kind, eval.*, gate.*, weighting, ...
        # the copy's run says what the source run said (status reads the data sizes and the window from it)
        run, source_run = target.get_run(ours.run_id), source.get_run(theirs.run_id)
        assert run.data.params == source_run.data.params
        assert run.data.metrics == source_run.data.metrics
        assert run.data.tags["training_window"] == source_run.data.tags["training_window"]
        assert run.info.start_time == source_run.info.start_time and run.info.status == "FINISHED"
    # version numbers in tags name the target's versions: the champion was compared with the copied v2; the
    # popularity model's ALS v1 was not copied, so its number is kept as the source's only
    champion_tags = model_registry.get_version(target, name, champion).tags
    assert champion_tags[model_tags.TAG_GATE_CHAMPION_VERSION] == str(previous)
    assert champion_tags[model_tags.TAG_EVAL_CHAMPION_VERSION] == str(previous)
    popularity_tags = model_registry.get_version(target, name, previous).tags
    assert model_registry.get_version(target, name, previous).kind == model_tags.KIND_POPULARITY
    assert model_tags.TAG_POPULARITY_OF not in popularity_tags
    assert popularity_tags[f"copied_from.{model_tags.TAG_POPULARITY_OF}"] == "1"

    def registry_state():
        versions = target.search_model_versions(f"name = '{name}'")
        return model_registry.aliases(target, name), sorted(int(mv.version) for mv in versions)

    after_copy = registry_state()
    again = copy_command(settings, target_uri, source_uri)
    assert again.returncode == 0, again.stderr
    assert f"nothing to copy: champion v{champion} at {target_uri} is the copy of v3" in again.stdout
    assert registry_state() == after_copy

    # the target's champion is its own (here: a rollback to the copied popularity model): refused, untouched
    model_registry_rollback = [sys.executable, "-m", "pipelines", "registry", "rollback"]
    env = {**os.environ, **settings.environment(), "MLFLOW_TRACKING_URI": target_uri}
    env.pop("DAGSTER_PG_HOST", None)
    assert subprocess.run(model_registry_rollback, env=env, cwd=ROOT, capture_output=True, timeout=120).returncode == 0
    rolled_back = registry_state()
    refused = copy_command(settings, target_uri, source_uri)
    assert refused.returncode == 1
    assert f"has a champion at {target_uri} already (v{previous}, not a copy of v3" in refused.stderr
    assert "nothing copied; --force" in refused.stderr
    assert registry_state() == rolled_back
    forced = copy_command(settings, target_uri, source_uri, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "already copied: champion v3" in forced.stdout
    assert registry_state() == after_copy  # the copies were reused, the aliases put back

    # a retrain against the target gates against the carried champion (re-scored on the challenger's holdout)
    result = materialize(GATE_ASSETS, mlflow_resource(settings, tracking_uri=target_uri), settings, challenger=WEAK)
    gated = metadata_of(result, "champion")
    assert (gated["compared_with_version"], gated["rule"], gated["decision"]) == \
        (champion, "beats_champion", "rejected")
    assert gated["champion_ndcg_at_10"] > gated["challenger_ndcg_at_10"]
    assert model_registry.aliases(target, name)[model_tags.CHAMPION] == champion


@pytest.mark.slow
def test_a_source_without_a_champion_or_a_missing_store_copies_nothing(settings, postgres_mlflow_server, tmp_path):
    missing = f"sqlite:///{tmp_path / 'nothing-here.db'}"
    done = copy_command(settings, postgres_mlflow_server.uri, missing)
    assert done.returncode == 1 and "no MLflow store at" in done.stderr
    assert not (tmp_path / "nothing-here.db").exists()
    same = copy_command(settings, settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    assert same.returncode == 1 and "nothing to copy" in same.stderr


def _store_with_champion(root: Path, name: str, seed: int) -> tuple[str, int]:
    """A sqlite store under ``root`` with one registered ALS bundle, made the champion."""
    import scipy.sparse as sp

    from als_core import ALS
    from als_core.bundle import ModelBundle
    from pipelines.registry import registration, run_log

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow_store.make_client(uri)
    experiment = run_log.ensure_experiment(client, run_log.DEFAULT_EXPERIMENT, root / "mlartifacts")
    train = sp.random(12, 9, density=0.4, format="csr", dtype=np.float32, random_state=seed) * 10
    bundle = ModelBundle.build(ALS(factors=4, iterations=2, random_state=seed).fit(train), np.arange(100, 112),
                               np.arange(500, 509), train)
    run_id = run_log.start_training_run(client, experiment, f"store {seed}",
                                        {"training_window": "2026-01-01..2026-01-02"})
    version = registration.register_bundle(uri, run_id, name, bundle.save(root / "bundle"), bundle.user_ids[:2],
                                           {model_tags.TAG_MODEL_KIND: model_tags.KIND_ALS}).version
    run_log.finish_run(client, run_id)
    client.set_registered_model_alias(name, model_tags.CHAMPION, str(version))
    return uri, version


def test_force_over_a_champion_of_the_targets_own_keeps_it_as_previous_champion(tmp_path):
    """Between two sqlite stores, in process: refused without force (nothing written); with force the copy is
    the champion and the target's own champion its previous_champion, so `registry rollback` undoes it."""
    name = "force-copy"
    source_uri, source_version = _store_with_champion(tmp_path / "source", name, seed=1)
    target_uri, own = _store_with_champion(tmp_path / "target", name, seed=2)
    target = mlflow_store.make_client(target_uri)
    lock = tmp_path / "promotion.lock"
    with pytest.raises(transfer.TargetHasChampion, match="nothing copied; --force"):
        transfer.copy_champion(source_uri, target_uri, name, lock)
    assert len(target.search_model_versions(f"name = '{name}'")) == 1
    done = transfer.copy_champion(source_uri, target_uri, name, lock, force=True,
                                  artifact_root=tmp_path / "target" / "mlartifacts")
    [copied] = done.copied
    assert (copied.alias, copied.source_version, copied.new) == (model_tags.CHAMPION, source_version, True)
    assert model_registry.aliases(target, name) == {model_tags.CHAMPION: copied.target_version,
                                                    model_tags.PREVIOUS_CHAMPION: own}
    assert_same_bundle(model_registry.load_bundle(target_uri, name, copied.target_version),
                       model_registry.load_bundle(source_uri, name, source_version))
    again = transfer.copy_champion(source_uri, target_uri, name, lock, force=True)
    assert not again.aliases_moved and not again.copied[0].new
    assert "nothing to copy" in again.lines()[0]
