"""pipelines.registry against real MLflow stores (sqlite file and `mlflow server`): aliases, the gate's
compare-and-set promotion, rollback, races and an unreachable server. Scores here are given numbers; the
end-to-end gate with trained models is tests/test_gate.py."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from als_store import mlflow_store, model_registry, model_tags
from pipelines.registry import gate, promotion, registration, run_log


def never_called(version: int) -> float:
    raise AssertionError(f"champion v{version} should not need re-scoring")


# ------------------------------------------------------------------------------------------ pure rules


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "sqlite:///rel/dir/mlflow.db", "relative/mlruns",
                                 "file:relative"])
def test_relative_tracking_uris_are_refused(uri):
    with pytest.raises(ValueError, match="absolute"):
        mlflow_store.validate_tracking_uri(uri)


@pytest.mark.parametrize("uri", ["sqlite:////tmp/x/mlflow.db", "http://127.0.0.1:5000", "file:///tmp/mlruns"])
def test_absolute_tracking_uris_pass(uri):
    assert mlflow_store.validate_tracking_uri(uri) == uri


def test_first_model_must_beat_popularity():
    assert gate.decide(1, 0.30, None, None, popularity_ndcg=0.20).promote
    loses = gate.decide(1, 0.20, None, None, popularity_ndcg=0.20)
    assert not loses.promote and "popularity" in loses.reason


def test_challenger_must_beat_champion_by_more_than_margin():
    assert gate.decide(2, 0.31, 1, 0.30, 0.1).promote
    assert not gate.decide(2, 0.30, 1, 0.30, 0.1).promote  # a tie keeps the champion
    assert not gate.decide(2, 0.31, 1, 0.30, 0.1, margin=0.02).promote
    assert gate.decide(2, 0.33, 1, 0.30, 0.1, margin=0.02).promote


def test_nan_never_wins_and_an_unscorable_champion_does_not_block_forever():
    assert not gate.decide(2, math.nan, 1, 0.3, 0.1).promote
    assert gate.decide(2, 0.2, 1, math.nan, 0.1).promote


def test_a_challenger_below_popularity_is_never_promoted():
    """Beating the champion is not enough: the challenger must beat popularity on the same holdout too."""
    beats_champion_only = gate.decide(2, 0.25, 1, 0.20, popularity_ndcg=0.30)
    assert not beats_champion_only.promote and beats_champion_only.rule == "beats_champion"
    assert "popularity" in beats_champion_only.reason
    assert gate.decide(2, 0.35, 1, 0.20, popularity_ndcg=0.30).promote


@pytest.mark.parametrize("champion_ndcg", [None, math.nan])
def test_an_unscorable_champion_lets_through_only_a_challenger_that_beats_popularity(champion_ndcg):
    loses = gate.decide(2, 0.25, 1, champion_ndcg, popularity_ndcg=0.30, champion_load_error="files gone")
    assert not loses.promote
    assert loses.tags()["gate.rule"] == "champion_unscorable"
    assert loses.tags()["gate.champion_load_error"] == "files gone" and "files gone" in loses.reason
    wins = gate.decide(2, 0.35, 1, champion_ndcg, popularity_ndcg=0.30)
    assert wins.promote and wins.tags()["gate.rule"] == "champion_unscorable"


def test_the_rule_that_decided_is_named():
    assert gate.decide(1, 0.3, None, None, 0.2).tags()["gate.rule"] == "first_model"
    assert gate.decide(2, 0.4, 1, 0.3, 0.2).tags()["gate.rule"] == "beats_champion"
    assert gate.decide(2, 0.4, 2, 0.3, 0.2).tags()["gate.rule"] == "already_champion"
    assert set(gate.RULES) >= {"first_model", "beats_champion", "champion_unscorable"}


def test_decision_tags_carry_both_scores():
    tags = gate.decide(3, 0.4, 2, 0.3, 0.1, margin=0.01).tags()
    assert tags["gate.decision"] == "promoted"
    assert float(tags["gate.challenger_ndcg_at_10"]) == 0.4
    assert float(tags["gate.champion_ndcg_at_10"]) == 0.3
    assert tags["gate.champion_version"] == "2"


# ------------------------------------------------------------------------------------------ on a store


def test_no_model_means_no_aliases_and_no_champion(store):
    client = store.client()
    assert model_registry.aliases(client, store.model_name) == {}
    assert model_registry.champion_ref(client, store.model_name) is None


def test_promotion_sequence_and_rollback(store, register_placeholder):
    client = store.client()
    name = store.model_name

    def promote(version, ndcg, evaluated):
        return promotion.promote_if_better(client, name, version, ndcg, popularity_ndcg=0.10,
                                           evaluated_champion=evaluated, score_champion=never_called,
                                           lock_path=store.lock_path, extra_tags={"dagster_run_id": f"r{version}"})

    v1 = register_placeholder(store)
    first = promote(v1, 0.30, (None, None))
    assert first.promote
    assert model_registry.aliases(client, name) == {"champion": v1}

    v2 = register_placeholder(store)
    weak = promote(v2, 0.20, (v1, 0.30))
    assert not weak.promote
    assert model_registry.aliases(client, name) == {"champion": v1}  # the alias did not move
    tags = model_registry.get_version(client, name, v2).tags
    assert tags["gate.decision"] == "rejected"
    assert float(tags["gate.champion_ndcg_at_10"]) == 0.30 and tags["dagster_run_id"] == f"r{v2}"

    v3 = register_placeholder(store)
    assert promote(v3, 0.40, (v1, 0.30)).promote
    assert model_registry.aliases(client, name) == {"champion": v3, "previous_champion": v1}
    assert model_registry.champion_ref(client, name).version == v3

    assert promotion.rollback(client, name, store.lock_path, check_loads=False) == (v3, v1)  # placeholders
    assert model_registry.aliases(client, name) == {"champion": v1, "previous_champion": v3}
    assert "gate.rolled_back_at" in model_registry.get_version(client, name, v3).tags
    # a second rollback undoes the first
    assert promotion.rollback(client, name, check_loads=False) == (v1, v3)
    assert model_registry.champion_ref(client, name).version == v3


def test_first_model_losing_to_popularity_is_not_promoted(store, register_placeholder):
    client = store.client()
    v1 = register_placeholder(store)
    decision = promotion.promote_if_better(client, store.model_name, v1, 0.05, popularity_ndcg=0.10,
                                           evaluated_champion=(None, None), score_champion=never_called,
                                           lock_path=store.lock_path)
    assert not decision.promote
    assert model_registry.aliases(client, store.model_name) == {}


def test_rollback_without_previous_champion_is_a_clear_error(store, register_placeholder):
    client = store.client()
    v1 = register_placeholder(store)
    client.set_registered_model_alias(store.model_name, "champion", str(v1))
    with pytest.raises(mlflow_store.RegistryError, match="previous_champion"):
        promotion.rollback(client, store.model_name)


def test_rollback_to_the_champion_itself_is_refused_and_changes_nothing(store, register_placeholder):
    """previous_champion == champion (aliases set by hand can say so): nothing to roll back to."""
    client = store.client()
    v1 = register_placeholder(store)
    for alias in ("champion", "previous_champion"):
        client.set_registered_model_alias(store.model_name, alias, str(v1))
    with pytest.raises(mlflow_store.RegistryError, match="nothing to roll back to"):
        promotion.rollback(client, store.model_name, store.lock_path)
    assert model_registry.aliases(client, store.model_name) == {"champion": v1, "previous_champion": v1}
    assert "gate.rolled_back_at" not in model_registry.get_version(client, store.model_name, v1).tags


def test_a_champion_that_cannot_be_loaded_at_the_gate_is_judged_by_popularity(sqlite_only, register_placeholder):
    """The champion changed since evaluation and the new one does not load: the gate records why and promotes
    only a challenger that beats popularity."""
    store = sqlite_only
    client = store.client()
    v1, v2, v3 = (register_placeholder(store) for _ in range(3))
    client.set_registered_model_alias(store.model_name, "champion", str(v1))

    def unloadable(version):
        raise mlflow_store.BundleUnloadable(store.model_name, version, "its model directory /x is missing")

    weak = promotion.promote_if_better(client, store.model_name, v2, 0.20, 0.30, (None, None), unloadable,
                                       store.lock_path)
    assert not weak.promote and weak.rule == "champion_unscorable"
    tags = model_registry.get_version(client, store.model_name, v2).tags
    assert tags["gate.rule"] == "champion_unscorable" and "is missing" in tags["gate.champion_load_error"]
    assert model_registry.aliases(client, store.model_name) == {"champion": v1}
    # the evaluation's own record of an unloadable champion is used as it is (no re-scoring)
    strong = promotion.promote_if_better(client, store.model_name, v3, 0.40, 0.30, (v1, None), never_called,
                                         store.lock_path, champion_load_error="gone")
    assert strong.promote and strong.rule == "champion_unscorable"
    assert model_registry.get_version(client, store.model_name, v3).tags["gate.champion_load_error"] == "gone"
    assert model_registry.aliases(client, store.model_name) == {"champion": v3, "previous_champion": v1}


def test_champion_changed_since_evaluation_is_rescored(sqlite_only, register_placeholder):
    """v3 was evaluated against champion v1, but another retrain promoted v2 meanwhile: the gate must
    re-score v2 on v3's holdout before deciding, not trust the stale comparison with v1."""
    store = sqlite_only
    client = store.client()
    v1, v2, v3, v4 = (register_placeholder(store) for _ in range(4))
    client.set_registered_model_alias(store.model_name, "champion", str(v1))
    client.set_registered_model_alias(store.model_name, "champion", str(v2))  # the racing promotion
    rescored = []

    def score(version):
        rescored.append(version)
        return {v2: 0.50}[version]

    decision = promotion.promote_if_better(client, store.model_name, v3, 0.40, 0.1, (v1, 0.30), score,
                                           store.lock_path)
    assert rescored == [v2]
    assert not decision.promote and decision.champion_version == v2 and decision.champion_ndcg == 0.50
    assert model_registry.champion_ref(client, store.model_name).version == v2

    decision = promotion.promote_if_better(client, store.model_name, v4, 0.60, 0.1, (v1, 0.30), score,
                                           store.lock_path)
    assert rescored == [v2, v2] and decision.promote
    assert model_registry.aliases(client, store.model_name) == {"champion": v4, "previous_champion": v2}


@pytest.mark.slow  # four spawned processes, each importing MLflow
def test_racing_promotions_end_with_the_better_model(store, register_placeholder):
    """Two retrains both evaluated while there was no champion reach the gate at once, in two processes (as two
    Dagster step processes would), against a sqlite file and against a tracking server (then the lock is
    `<home>/promotion.lock`); whichever order the lock gives them, the better one ends as champion (the later
    one re-scores the earlier's promotion)."""
    from registry_stores import promote_in_another_process, run_processes, spawn_context

    client = store.client()
    weak, strong = register_placeholder(store), register_placeholder(store)
    ndcg = {weak: 0.30, strong: 0.45}
    ctx = spawn_context()
    for order in ([weak, strong], [strong, weak]):
        if "champion" in model_registry.aliases(client, store.model_name):
            client.delete_registered_model_alias(store.model_name, "champion")
        barrier = ctx.Barrier(len(order))
        run_processes(ctx, promote_in_another_process, [
            (store.tracking_uri, store.model_name, str(store.lock_path), version, ndcg, 0.1, barrier)
            for version in order])
        assert model_registry.champion_ref(client, store.model_name).version == strong
        decisions = {v: model_registry.get_version(client, store.model_name, v).tags["gate.decision"] for v in order}
        assert decisions[strong] == "promoted"


def test_runs_left_running_by_a_dagster_run_that_is_over_are_closed(sqlite_only):
    """A run whose Dagster run is over (or unknown to the instance and older than a day) is marked KILLED;
    one whose Dagster run is still going, a young unknown one, the caller's own and runs not opened by
    Dagster are left alone."""
    client = sqlite_only.client()
    experiment = sqlite_only.experiment_id()
    now_ms = int(time.time() * 1000)
    day_ms = int(run_log.ABANDONED_RUN_AGE_S * 1000)

    def run(owner, start_ms=None):
        tags = {} if owner is None else {model_tags.TAG_DAGSTER_RUN_ID: owner}
        return client.create_run(experiment, start_time=start_ms or now_ms, tags=tags).info.run_id

    runs = {"over": run("over"), "alive": run("alive"), "unknown-young": run("unknown-young"),
            "unknown-old": run("unknown-old", now_ms - day_ms - 60_000), "me": run("me"), "no-tag": run(None)}
    finished = run("over")
    client.set_terminated(finished, status="FINISHED")
    states = {"over": False, "alive": True}
    closed = run_log.close_abandoned_runs(client, experiment, states.get, "me")
    assert sorted(closed) == sorted([runs["over"], runs["unknown-old"]])
    status = {key: client.get_run(run_id).info.status for key, run_id in runs.items()}
    assert status == {"over": "KILLED", "alive": "RUNNING", "unknown-young": "RUNNING", "unknown-old": "KILLED",
                      "me": "RUNNING", "no-tag": "RUNNING"}
    assert client.get_run(runs["over"]).data.tags[model_tags.TAG_CLOSED_BY] == "me"
    assert client.get_run(finished).info.status == "FINISHED"


def test_lock_excludes_a_second_holder(tmp_path):
    lock = tmp_path / "promotion.lock"
    with promotion.promotion_lock(lock):
        with pytest.raises(mlflow_store.RegistryError, match="timed out"):
            with promotion.promotion_lock(lock, timeout_s=0.2):
                pass
    with promotion.promotion_lock(lock, timeout_s=0.2):  # released
        pass


def test_unreachable_server_fails_fast_with_a_clear_message():
    from mlflow_server import closed_port_uri

    uri = closed_port_uri()
    started = time.monotonic()
    with pytest.raises(mlflow_store.MlflowUnavailable, match="unreachable"):
        mlflow_store.check_reachable(uri)
    assert time.monotonic() - started < 10


def test_a_model_that_cannot_serve_is_not_registered(sqlite_only, tmp_path):
    store = sqlite_only
    client = store.client()
    broken = tmp_path / "bundle"
    broken.mkdir()
    (broken / "bundle.json").write_text('{"format_version": -1}')  # ModelBundle.load refuses it
    run_id = run_log.start_training_run(client, store.experiment_id(), "broken", {})
    with pytest.raises(mlflow_store.RegistryError, match="smoke test"):
        registration.register_bundle(store.tracking_uri, run_id, store.model_name, broken, np.array([1, 2]), {})
    assert client.search_model_versions(f"name = '{store.model_name}'") == []


def test_bundles_load_in_place_from_a_local_store_and_through_a_download_from_a_server(store, tmp_path,
                                                                                       monkeypatch):
    """A local store's bundle is read where MLflow keeps it (no copy); a server's proxied artifacts are
    downloaded. Either way the loaded bundle is the one registered."""
    import scipy.sparse as sp

    from als_core import ALS
    from als_core.bundle import ModelBundle

    train = sp.random(12, 9, density=0.4, format="csr", dtype=np.float32, random_state=0) * 10
    bundle = ModelBundle.build(ALS(factors=4, iterations=2, random_state=0).fit(train), np.arange(100, 112),
                               np.arange(500, 509), train)
    run_id = run_log.start_training_run(store.client(), store.experiment_id(), "in-place", {})
    ref = registration.register_bundle(store.tracking_uri, run_id, store.model_name, bundle.save(tmp_path / "bundle"),
                                       bundle.user_ids[:2], {})
    local = model_registry.local_model_dir(store.tracking_uri, store.model_name, ref.version)
    if store.kind == "sqlite":
        assert local is not None and local.is_relative_to(store.artifact_root)

        def no_download(*args, **kwargs):
            raise AssertionError("a local store's bundle should not be copied")

        monkeypatch.setattr(model_registry, "download_bundle", no_download)
    else:
        assert local is None  # mlflow-artifacts:/ URIs: only the server knows where the files are
    loaded = model_registry.load_bundle(store.tracking_uri, store.model_name, ref.version)
    np.testing.assert_array_equal(loaded.user_ids, bundle.user_ids)
    np.testing.assert_array_equal(loaded.model.item_factors, bundle.model.item_factors)
    np.testing.assert_array_equal(loaded.seen.toarray(), bundle.seen.toarray())


@pytest.mark.parametrize("ids", [
    (np.array([7, -3, 2**62], dtype=np.int64), np.array([10, 11, 12], dtype=np.int64)),
    (np.array(["u-1", "ü 2", "3"]), np.array(["a", "b\tc", "ç" * 40])),
], ids=["integer", "text"])
def test_the_holdout_round_trips_through_the_run(sqlite_only, ids):
    """Integer ids are stored uncompressed, text compressed; both come back exactly, dtype kind included."""
    client = sqlite_only.client()
    run_id = run_log.start_training_run(client, sqlite_only.experiment_id(), "holdout", {})
    run_log.log_holdout(client, run_id, *ids)
    users, items = run_log.load_holdout(client, run_id)
    for stored, given in ((users, ids[0]), (items, ids[1])):
        assert stored.dtype.kind == given.dtype.kind
        np.testing.assert_array_equal(stored, given)
