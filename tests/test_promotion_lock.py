"""The promotion lock of the production profile (pipelines/registry/locks.py): a Postgres advisory lock in the
Dagster instance's database, held by processes that share nothing but that database, against the real cluster
of tests/postgres_server.py. And which lock each place takes: the gate's resource in a run, the registry CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from als_store import mlflow_store, model_registry, model_tags
from pipelines.defs.mlflow_resource import MLflowResource
from pipelines.registry import locks, registration, run_log

ROOT = Path(__file__).resolve().parents[1]
HOLD_S = 1.0

pytestmark = pytest.mark.slow  # a Postgres cluster, spawned processes


@pytest.fixture
def lock_db(postgres) -> str:
    """The URL of a fresh database of the session's cluster (advisory locks are per database)."""
    return postgres.url(postgres.create_database("locks"))


def hold_in_another_process(url: str, key: str, hold_s: float, barrier, times) -> None:
    """Target of a spawned process: take the lock when the others do, hold it ``hold_s``, report (asked,
    acquired, released) on ``times``. Exits non-zero on any error."""
    try:
        barrier.wait(timeout=60)
        asked = time.monotonic()
        with locks.AdvisoryLock(url, key).hold(timeout_s=60):
            acquired = time.monotonic()
            time.sleep(hold_s)
            released = time.monotonic()
        times.put((asked, acquired, released))
    except BaseException:
        traceback.print_exc()
        sys.exit(1)


def hold_until_killed(url: str, key: str, held) -> None:
    with locks.AdvisoryLock(url, key).hold(timeout_s=60):
        held.set()
        time.sleep(600)


def test_two_processes_hold_the_advisory_lock_one_after_the_other(lock_db):
    from registry_stores import run_processes, spawn_context

    ctx = spawn_context()
    barrier, times = ctx.Barrier(2), ctx.Queue()
    key = locks.promotion_key("race")
    run_processes(ctx, hold_in_another_process, [(lock_db, key, HOLD_S, barrier, times)] * 2)
    first, second = sorted([times.get(timeout=10), times.get(timeout=10)], key=lambda t: t[1])
    assert second[0] < first[2], "the second process asked while the first held the lock"
    overlap = max(0.0, first[2] - second[1])
    assert overlap == 0.0
    assert second[1] - second[0] >= HOLD_S * 0.5  # it waited for the release


def test_a_killed_holder_frees_the_lock_at_once_and_a_waiter_times_out_until_then(lock_db):
    from registry_stores import spawn_context

    ctx = spawn_context()
    held = ctx.Event()
    key = locks.promotion_key(f"als-{uuid.uuid4().hex[:8]}")
    holder = ctx.Process(target=hold_until_killed, args=(lock_db, key, held))
    holder.start()
    try:
        assert held.wait(60), "the holder never took the lock"
        lock = locks.AdvisoryLock(lock_db, key)
        with pytest.raises(mlflow_store.RegistryError,
                           match=rf"timed out after 0s waiting for promotion lock '{key}' \(pg advisory lock"):
            with lock.hold(timeout_s=0.3):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
        started = time.monotonic()
        with lock.hold(timeout_s=10):
            waited = time.monotonic() - started
        assert waited < 1.0, f"the killed holder's lock was freed only after {waited:.1f}s"
    finally:
        if holder.is_alive():
            holder.kill()
            holder.join()


def test_a_key_is_one_lock_and_two_models_do_not_wait_for_each_other(lock_db):
    """Two sessions of one process exclude each other on one key; another model's key is another lock."""
    first = locks.AdvisoryLock(lock_db, locks.promotion_key("a"))
    other = locks.AdvisoryLock(lock_db, locks.promotion_key("b"))
    assert first.lock_id != other.lock_id
    elsewhere = locks.AdvisoryLock("postgresql+psycopg2://user:secret@elsewhere/db", locks.promotion_key("a"))
    assert first.lock_id == elsewhere.lock_id  # stable: every process computes the same id
    assert "secret" not in str(elsewhere)
    with first.hold():
        with other.hold(timeout_s=0.5):
            pass
        with pytest.raises(mlflow_store.RegistryError, match="timed out"):
            with first.hold(timeout_s=0.3):
                pass
    with first.hold(timeout_s=0.5):  # released on leaving
        pass


def test_racing_promotions_across_processes_under_the_advisory_lock(postgres_mlflow_server, lock_db, tmp_path,
                                                                    register_placeholder):
    """`promote_if_better` in two processes that share only the Postgres database (the lock) and the
    Postgres-backed tracking server: whichever reaches the gate first, the later one re-scores the earlier's
    promotion, and the better model ends as champion."""
    from registry_stores import Store, promote_in_another_process, run_processes, spawn_context

    name = f"als-{uuid.uuid4().hex[:8]}"
    lock = locks.AdvisoryLock(lock_db, locks.promotion_key(name))
    store = Store(kind="server", tracking_uri=postgres_mlflow_server.uri, artifact_root=tmp_path / "unused",
                  model_name=name, lock_path=lock)
    client = store.client()
    weak, strong = register_placeholder(store), register_placeholder(store)
    ndcg = {weak: 0.30, strong: 0.45}
    ctx = spawn_context()
    for order in ([weak, strong], [strong, weak]):
        for alias in model_registry.aliases(client, name):
            client.delete_registered_model_alias(name, alias)
        barrier = ctx.Barrier(len(order))
        run_processes(ctx, promote_in_another_process,
                      [(store.tracking_uri, name, lock, version, ndcg, 0.1, barrier) for version in order])
        tags = {v: model_registry.get_version(client, name, v).tags for v in order}
        aliases = model_registry.aliases(client, name)
        assert aliases[model_tags.CHAMPION] == strong
        # one decided first (no champion); the other saw its decision under the lock
        seen = sorted(tags[v].get(model_tags.TAG_GATE_CHAMPION_VERSION, "") for v in order)
        first_decider = weak if seen[1] == str(weak) else strong
        assert seen == sorted(["", str(first_decider)])
        if first_decider == weak:
            assert tags[strong][model_tags.TAG_GATE_DECISION] == "promoted"
            assert aliases[model_tags.PREVIOUS_CHAMPION] == weak
        else:
            assert tags[weak][model_tags.TAG_GATE_DECISION] == "rejected"


# ----------------------------------------------------------------------------------- which lock, where


@dg.asset
def lock_probe(mlflow: MLflowResource) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"kind": type(mlflow.lock).__name__, "lock": str(mlflow.lock)})


def _lock_of_a_run(settings, instance) -> dict:
    """The `mlflow` resource's lock as an asset of a run sees it (the resource set up by Dagster)."""
    result = dg.materialize([lock_probe], resources={"mlflow": MLflowResource.from_settings(settings)},
                            instance=instance)
    metadata = result.asset_materializations_for_node("lock_probe")[0].metadata
    return {key: value.value for key, value in metadata.items()}


def test_the_gate_takes_the_advisory_lock_on_a_postgres_instance_and_the_file_lock_otherwise(production_profile):
    from pipelines.instance import open_instance

    settings = production_profile.settings
    with open_instance(settings) as instance:
        url = locks.instance_postgres_url(instance)
        assert url is not None and production_profile.dagster_database in url
        probed = _lock_of_a_run(settings, instance)
    expected = locks.AdvisoryLock(url, locks.promotion_key(settings.model_name))
    assert probed == {"kind": "AdvisoryLock", "lock": str(expected)}
    assert locks.deployment_promotion_lock(settings, settings.mlflow_tracking_uri, settings.model_name) == expected

    ephemeral = _lock_of_a_run(settings, None)  # dg.materialize's own instance
    assert ephemeral == {"kind": "FileLock", "lock": str(settings.home / "promotion.lock")}


def test_the_registry_cli_waits_for_the_advisory_lock_of_the_production_profile(production_profile, tmp_path):
    """`python -m pipelines registry rollback` on the production profile takes the instance's advisory lock: it
    waits while another machine's gate (here: the test) holds it, and rolls back once it is released."""
    import scipy.sparse as sp

    from als_core import ALS
    from als_core.bundle import ModelBundle

    settings, cluster = production_profile.settings, production_profile.cluster
    uri, name = settings.mlflow_tracking_uri, settings.model_name
    client = mlflow_store.make_client(uri)
    experiment = run_log.ensure_experiment(client, "lock-cli", None)
    train = sp.random(12, 9, density=0.4, format="csr", dtype=np.float32, random_state=0) * 10
    bundle = ModelBundle.build(ALS(factors=4, iterations=2, random_state=0).fit(train), np.arange(100, 112),
                               np.arange(500, 509), train)
    bundle_dir = bundle.save(tmp_path / "bundle")
    v1, v2 = (registration.register_bundle(uri, run_log.start_training_run(client, experiment, f"v{i}", {}), name,
                                           bundle_dir, bundle.user_ids[:2], {}).version for i in (1, 2))
    client.set_registered_model_alias(name, model_tags.PREVIOUS_CHAMPION, str(v1))
    client.set_registered_model_alias(name, model_tags.CHAMPION, str(v2))

    database = production_profile.dagster_database
    assert locks.APPLICATION_NAME == "als-pipeline lock"
    waiting = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
               "AND application_name = 'als-pipeline lock'")
    with locks.AdvisoryLock(cluster.url(database), locks.promotion_key(name)).hold(timeout_s=5):
        command = subprocess.Popen([sys.executable, "-m", "pipelines", "registry", "rollback"], cwd=ROOT,
                                   env={**os.environ, **production_profile.environment,
                                        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while cluster.sql(waiting, database)[0][0] < 2:  # the test's session and the command's
                assert command.poll() is None, f"it ended without waiting: {command.communicate()[0][:200]}"
                assert time.monotonic() < deadline, "the command never asked for the lock"
                time.sleep(0.2)
            time.sleep(1.0)
            assert command.poll() is None
            assert model_registry.aliases(client, name) == {"champion": v2, "previous_champion": v1}
        except BaseException:
            command.kill()
            raise
    out, err = command.communicate(timeout=120)
    assert command.returncode == 0, err
    assert f"champion v{v2} -> v{v1}" in out
    assert model_registry.aliases(client, name) == {"champion": v1, "previous_champion": v2}
