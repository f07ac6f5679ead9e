"""kill -9 with real processes against the project's Dagster instance: a run killed mid-step leaves the warehouse
and the registry in their old or their new state, never a mix; its step processes end with it; and the next
run goes on by itself (it does not wait for ever for the pool slot the dead run held).

Each run is killed at a point it reaches by itself, read from the instance's event log: `events` inside its
ingest transaction (a second landing file that takes long to read), `challenger` in the middle of its fit,
`champion` waiting for the promotion lock, `recommendations` waiting for the warehouse lock. The killed process
is the run's own (the Dagster CLI that orchestrates it), as a person or the OOM killer would kill it."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from crash_helpers import (DAYS, QUIET, ROOT, WAIT_S, env, holds_pool, ingest, kill_cli_and_check_steps_die,
                           kill_run_holding, land, open_instance, run_messages, run_pool_user, start_until,
                           step_workers)
from als_store import mlflow_store, model_registry, model_tags
from pipelines import recovery
from pipelines.registry import promotion, run_log
from als_store.settings import Settings


# One job of the code location run in process (as `make run` does) in a subprocess, so that a run that
# waits for ever for a pool slot fails the test after its timeout instead of hanging it.
# argv: job, partition ("" = none), asset selection (JSON list, [] = the whole job), run config (JSON)
RUN_JOB = """
import json, sys
import dagster as dg
from pipelines.definitions import defs

job_name, partition = sys.argv[1], sys.argv[2] or None
selection, config = json.loads(sys.argv[3]), json.loads(sys.argv[4])
result = defs().resolve_job_def(job_name).execute_in_process(
    instance=dg.DagsterInstance.get(), partition_key=partition, run_config=config,
    asset_selection=[dg.AssetKey(key) for key in selection] or None, raise_on_error=False)
print("success" if result.success else "failure", result.run_id, flush=True)
sys.exit(0 if result.success else 1)
"""


def run_job(settings: Settings, job: str, partition: str = "", selection=(), config=None,
            timeout_s: float = WAIT_S) -> str:
    """Run ``job`` to its end in a subprocess; returns its run id (fails on a failure or after the timeout)."""
    args = [sys.executable, "-c", RUN_JOB, job, partition, json.dumps(list(selection)),
            json.dumps({**QUIET, **(config or {})})]
    out = subprocess.run(args, env=env(settings), cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout.split()[-1]


def retrain(settings: Settings, *assets: str) -> dg.ExecuteInProcessResult:
    from pipelines.definitions import defs_at
    from pipelines.defs.resources import PipelineSettings

    job = defs_at(PipelineSettings.of(settings)).resolve_job_def("daily_retrain")
    with open_instance(settings) as instance:
        result = job.execute_in_process(instance=instance, run_config=QUIET,
                                        asset_selection=[dg.AssetKey(a) for a in assets] or None)
    assert result.success
    return result


def trained(settings: Settings) -> None:
    """Four ingested days and one retrain: champion v1, `recommendations` written by it."""
    land(settings)
    ingest(settings)
    retrain(settings)
    assert champion_version(settings) == 1


def client(settings: Settings):
    return mlflow_store.make_client(settings.mlflow_tracking_uri)


def champion_version(settings: Settings) -> int:
    """The champion alias points at a complete version: its bundle loads and knows users and items."""
    ref, bundle = model_registry.load_champion_bundle(settings.mlflow_tracking_uri, settings.model_name)
    assert len(bundle.user_ids) and len(bundle.item_ids)
    return int(ref.version)


def versions(settings: Settings) -> list[int]:
    found = client(settings).search_model_versions(f"name = '{settings.model_name}'")
    return sorted(int(v.version) for v in found)


def warehouse(settings: Settings, sql: str, params=None) -> list[tuple]:
    """Opens the warehouse read-write (DuckDB replays or drops what a killed writer left) and reads it."""
    with duckdb.connect(str(settings.duckdb_path)) as con:
        return con.execute(sql, params).fetchall()


def assert_stuck_then_recovered(settings: Settings, run_id: str, pool: str) -> None:
    """Before the next run: the killed run is STARTED and holds ``pool`` (what made every later run wait for
    ever). `next_run` below must fail it and free the slot by itself."""
    with open_instance(settings) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
        assert holds_pool(instance, run_id, pool)
        [stuck] = recovery.stuck_runs(instance)
        assert stuck.run_id == run_id and "is gone" in stuck.problem


def assert_failed_and_freed(settings: Settings, run_id: str) -> None:
    with open_instance(settings) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
        for pool in ("duckdb", "promotion"):
            assert not holds_pool(instance, run_id, pool)
        assert recovery.stuck_runs(instance) == []


# ------------------------------------------------------------------------------------------ a pool slot


def test_a_killed_run_does_not_keep_its_pool_slot(settings):
    run_id = kill_run_holding(settings, "duckdb")
    with open_instance(settings) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
        assert holds_pool(instance, run_id, "duckdb")
    started = time.monotonic()
    out = run_pool_user(settings, "duckdb")  # unrecovered, the dead run holds the pool slot: blocked for ever
    assert out.stdout.strip() == "success", out.stderr[-3000:]
    assert time.monotonic() - started < 60
    with open_instance(settings) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
        assert not holds_pool(instance, run_id, "duckdb")
        assert any("is gone" in message for message in run_messages(instance, run_id))


def test_recover_command_fails_dead_runs_and_leaves_healthy_ones(settings):
    run_id = kill_run_holding(settings, "promotion")
    command = [sys.executable, "-m", "pipelines", "recover"]
    out = subprocess.run(command, env=env(settings), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"recovered run {run_id[:8]} (pool_holder, started, holds pool promotion (hold_slot))" in out.stdout
    with open_instance(settings) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
        assert not holds_pool(instance, run_id, "promotion")
    again = subprocess.run(command, env=env(settings), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "nothing to recover" in again.stdout


def test_the_shipped_instance_is_the_project_instance_with_run_monitoring(settings):
    from pipelines.instance import PipelineInstance

    with open_instance(settings) as instance:
        assert isinstance(instance, PipelineInstance)
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        assert "MONITORING" in instance.get_required_daemon_types()
        assert not instance.nux_enabled


# ------------------------------------------------------------------------------------------ kill -9 mid-step


@pytest.mark.slow
def test_kill_during_events_keeps_the_old_day_then_the_next_run_ingests(settings, tmp_path):
    day = DAYS[1]
    land(settings, days=DAYS[:2])
    ingest(settings, days=[day])
    old = warehouse(settings, "SELECT count(*) FROM events WHERE partition_day = ?", [day])
    old_files = warehouse(settings, "SELECT source_file, content_sha256 FROM ingested_files WHERE partition_day = ?",
                          [day])
    land(settings, days=DAYS[:2], seed=4, n_events=20_000)  # the day's file changes: the next ingest replaces it
    # read after the first file, inside the transaction: 12 GB of empty lines take long enough to kill the step there
    member = gzip.compress(b"\n" * (64 << 20), compresslevel=9)
    slow = settings.landing_dir / f"events-{day}.zz.csv.gz"
    slow.write_bytes(member * 200)

    process, run_id = start_until(
        settings, ["asset", "materialize", "-m", "pipelines.definitions", "--select", "events", "--partition", day],
        tmp_path / "killed.log", "the first file inserted inside the ingest transaction",
        lambda instance, run: any(m.startswith("file 1/2 ") for m in run_messages(instance, run)))
    kill_cli_and_check_steps_die(settings, process, run_id)
    assert_stuck_then_recovered(settings, run_id, "duckdb")

    assert warehouse(settings, "SELECT count(*) FROM events WHERE partition_day = ?", [day]) == old  # wholly old
    assert warehouse(settings, "SELECT source_file, content_sha256 FROM ingested_files WHERE partition_day = ?",
                     [day]) == old_files
    slow.unlink()

    process, next_run = start_until(
        settings, ["asset", "materialize", "-m", "pipelines.definitions", "--select", "events", "--partition", day],
        tmp_path / "next.log", "the next run to end", lambda instance, run: instance.get_run_by_id(run).is_finished)
    assert process.wait(timeout=WAIT_S) == 0, (tmp_path / "next.log").read_text()[-3000:]
    new = warehouse(settings, "SELECT count(*) FROM events WHERE partition_day = ?", [day])
    assert new != old and new[0][0] > 0  # wholly new
    assert_failed_and_freed(settings, run_id)


@pytest.mark.slow
def test_kill_during_challenger_registers_nothing_then_the_next_run_trains(settings, tmp_path):
    trained(settings)
    # a cold start: a warm start from champion v1 would run warm_start_iterations, not these
    config = json.dumps({"ops": {"challenger": {"config": {"iterations": 100_000, "warm_start": "none"}}}})
    process, run_id = start_until(
        settings, ["asset", "materialize", "-m", "pipelines.definitions", "--select", "challenger",
                   "--config-json", config],
        tmp_path / "killed.log", "the fit's second iteration",
        lambda instance, run: any(m.startswith("iteration 2/100000") for m in run_messages(instance, run)))
    kill_cli_and_check_steps_die(settings, process, run_id)

    assert champion_version(settings) == 1 and versions(settings) == [1]
    # the step was interrupted as Dagster interrupts a step (SIGINT), so it closed its own MLflow run
    [killed] = client(settings).search_runs([run_log.ensure_experiment(client(settings), run_log.DEFAULT_EXPERIMENT,
                                                                         settings.mlflow_artifact_root)],
                                            filter_string=f"tags.{model_tags.TAG_DAGSTER_RUN_ID} = '{run_id}'")
    assert killed.info.status == "FAILED"
    run_job(settings, "daily_retrain")
    assert versions(settings)[:2] == [1, 2]  # the next run trained v2 (the gate may also register popularity)
    assert champion_version(settings) in versions(settings)
    assert_failed_and_freed(settings, run_id)


def _has_open(pid: int, path: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd) == str(path) for fd in fds.iterdir())
    except OSError:
        return False


@pytest.mark.slow
def test_kill_during_promotion_keeps_the_champion_then_the_next_run_gates(settings, tmp_path):
    trained(settings)
    retrain(settings, "challenger", "evaluation")  # v2 evaluated, not gated yet
    lock_path = promotion.lock_path_for(settings.mlflow_tracking_uri, settings.home).resolve()
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # the champion step waits for it, holding pool `promotion`

        def waiting_for_the_lock(instance, run):
            worker = step_workers(instance, run).get("champion")
            return worker is not None and _has_open(worker[0], lock_path)

        process, run_id = start_until(
            settings, ["asset", "materialize", "-m", "pipelines.definitions", "--select", "champion"],
            tmp_path / "killed.log", "the champion step waiting for the promotion lock", waiting_for_the_lock)
        kill_cli_and_check_steps_die(settings, process, run_id)
    assert_stuck_then_recovered(settings, run_id, "promotion")

    assert champion_version(settings) == 1
    assert "gate.decision" not in model_registry.get_version(client(settings), settings.model_name, 2).tags
    report = subprocess.run([sys.executable, "-m", "pipelines", "status", "--json"], env=env(settings), cwd=ROOT,
                            capture_output=True, text=True, timeout=WAIT_S)
    assert report.returncode == 1  # a person is told, with the commands
    problems = {p["kind"]: p for p in json.loads(report.stdout)["problems"]}
    assert problems["stuck_run"]["fix"] == recovery.RECOVER_COMMAND
    assert problems["not_gated"]["message"].startswith("v2 was evaluated but never gated")
    run_job(settings, "daily_retrain")  # unrecovered, the dead run holds the promotion slot: blocked for ever
    assert champion_version(settings) != 2  # loads; v2's gate never ran
    assert "gate.decision" in model_registry.get_version(client(settings), settings.model_name, 3).tags
    assert_failed_and_freed(settings, run_id)


@pytest.mark.slow
def test_kill_during_recommendations_keeps_the_old_table_then_the_next_run_writes_it(settings, tmp_path):
    trained(settings)
    table = "SELECT model_version, count(*) FROM recommendations GROUP BY ALL ORDER BY ALL"
    old = warehouse(settings, table)
    assert [version for version, _ in old] == [1]
    retrain(settings, "challenger", "evaluation")
    # promoted by hand (as docs/operating.md shows), so that `recommendations` has a new champion to write
    mlflow = client(settings)
    mlflow.set_registered_model_alias(settings.model_name, model_tags.PREVIOUS_CHAMPION, "1")
    mlflow.set_registered_model_alias(settings.model_name, model_tags.CHAMPION, "2")

    with duckdb.connect(str(settings.duckdb_path)):  # the step waits for the warehouse, holding pool `duckdb`
        process, run_id = start_until(
            settings, ["asset", "materialize", "-m", "pipelines.definitions", "--select", "recommendations"],
            tmp_path / "killed.log", "the recommendations step waiting for the warehouse",
            lambda instance, run: any("is locked by another process" in m for m in run_messages(instance, run)))
        kill_cli_and_check_steps_die(settings, process, run_id)
    assert_stuck_then_recovered(settings, run_id, "duckdb")

    assert warehouse(settings, table) == old  # wholly old
    run_job(settings, "daily_retrain", selection=["recommendations"])  # unrecovered: blocked for ever
    new = warehouse(settings, table)
    assert [version for version, _ in new] == [champion_version(settings)] == [2]  # wholly new
    assert_failed_and_freed(settings, run_id)
