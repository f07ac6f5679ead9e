"""Real processes killed mid-run against the project's Dagster instance (tests/test_crash_recovery.py,
tests/test_status.py): start a run in a subprocess, wait until it is where the test wants it, kill -9 it.

Nothing in the product is there for these tests: a run is stopped at a point it reaches by itself (a
pool slot taken, a log line written, a lock it waits for), read from the instance's event log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from als_core.synthetic import generate_events
from pipelines.instance import dagster_env, prepare_dagster_home
from pipelines.landing import write_day_files
from pipelines.recovery import process_alive
from als_store.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
DAGSTER = str(Path(sys.executable).with_name("dagster"))
WAIT_S = 120.0

# A run of one op in pool `pool` that takes the slot, says so and sleeps: the smallest run to kill while
# it holds a slot. Run through the project's instance (argv: DAGSTER_HOME, pool).
POOL_HOLDER = """
import sys, time
import dagster as dg

@dg.op(pool=sys.argv[2])
def hold_slot():
    print("holding", flush=True)
    time.sleep(600)

@dg.job
def pool_holder():
    hold_slot()

pool_holder.execute_in_process(instance=dg.DagsterInstance.from_config(sys.argv[1]))
"""

# The same job's op finishing at once: a later run that needs the same pool (argv as above).
POOL_USER = """
import sys
import dagster as dg

@dg.op(pool=sys.argv[2])
def use_slot():
    return 1

@dg.job
def pool_user():
    use_slot()

result = pool_user.execute_in_process(instance=dg.DagsterInstance.from_config(sys.argv[1]))
print("success" if result.success else "failure", flush=True)
"""


def env(settings: Settings) -> dict[str, str]:
    return {**dagster_env(settings), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def open_instance(settings: Settings) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(prepare_dagster_home(settings)))


def kill_run_holding(settings: Settings, pool: str) -> str:
    """A run of the project's instance killed (SIGKILL) while its op holds the only slot of ``pool``;
    returns its run id."""
    holder = subprocess.Popen([sys.executable, "-c", POOL_HOLDER, str(settings.dagster_home), pool],
                              env=env(settings), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with open_instance(settings) as instance:
        [record] = instance.get_run_records(dg.RunsFilter(job_name="pool_holder"), limit=1)
        return record.dagster_run.run_id


def run_pool_user(settings: Settings, pool: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", POOL_USER, str(settings.dagster_home), pool],
                          env=env(settings), cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)


def dagster_cli(settings: Settings, *args: str, log: Path) -> subprocess.Popen:
    """`dagster <args>` with the project's instance, output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([DAGSTER, *args], env=env(settings), cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)


def new_run_id(instance: dg.DagsterInstance, known: set[str]) -> str | None:
    """The run created since ``known`` (the run ids there were before), if there is one yet."""
    records = instance.get_run_records(limit=1)
    if records and records[0].dagster_run.run_id not in known:
        return records[0].dagster_run.run_id
    return None


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S, process=None):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s`` or when ``process``
    (a Popen that should still run) exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def run_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [entry.user_message or (entry.dagster_event.message if entry.dagster_event else "") or ""
            for entry in instance.all_logs(run_id)]


def step_workers(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[int, float]]:
    """step key -> (pid, first event time) of the run's step processes."""
    return {entry.dagster_event.step_key: (entry.dagster_event.pid, entry.timestamp)
            for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED)}


def start_until(settings: Settings, args: list[str], log: Path, what: str,
                reached: Callable[[dg.DagsterInstance, str], bool]) -> tuple[subprocess.Popen, str]:
    """Start `dagster <args>` and wait until ``reached(instance, run_id)``; returns (process, run id)."""
    with open_instance(settings) as instance:
        known = {record.dagster_run.run_id for record in instance.get_run_records()}
        process = dagster_cli(settings, *args, log=log)
        run_id = wait_for(lambda: new_run_id(instance, known), "the run to be created", process=process)
        wait_for(lambda: reached(instance, run_id), what, process=process)
    return process, run_id


def kill_cli_and_check_steps_die(settings: Settings, process: subprocess.Popen, run_id: str) -> None:
    """kill -9 the CLI (the run's orchestrating process) only, as a person or the OOM killer would; its step
    processes must end by themselves."""
    with open_instance(settings) as instance:
        workers = step_workers(instance, run_id)
    assert workers, "no step process was started"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    wait_for(lambda: not any(process_alive(pid, seen) for pid, seen in workers.values()),
             f"step processes {workers} to end after their run's process was killed", timeout_s=30)


def holds_pool(instance: dg.DagsterInstance, run_id: str, pool: str) -> bool:
    info = instance.event_log_storage.get_concurrency_info(pool)
    return any(slot.run_id == run_id for slot in info.claimed_slots)


def land(settings: Settings, days=DAYS, seed: int = 3, n_events: int = 12_000) -> None:
    events = generate_events(n_users=300, n_items=100, n_events=n_events, n_days=len(days), seed=seed, start=days[0])
    write_day_files(events, settings.landing_dir, "csv")


def ingest(settings: Settings, days=DAYS) -> None:
    """Each day through the `ingest` job, in process, with the project's instance."""
    from pipelines.definitions import defs_at
    from pipelines.defs.resources import PipelineSettings

    job = defs_at(PipelineSettings.of(settings)).resolve_job_def("ingest")
    with open_instance(settings) as instance:
        for day in days:
            assert job.execute_in_process(partition_key=day, instance=instance, run_config=QUIET).success
