"""The first `make ui` after `make run`: the landing sensor queues no re-ingest of the days the main job ingested
from the same files, the onboarding pop-up stays closed, and stopping `make ui` ends every process it started."""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest

from crash_helpers import (DAYS, ROOT, holds_pool, ingest, land, new_run_id, open_instance, run_messages,
                           step_workers, wait_for)
from conftest import evaluate_landing_sensor
from mlflow_server import free_port
from pipelines.recovery import process_alive, process_start_time

START_S = 120.0
STOP_S = 30.0


def evaluate_sensor(settings, cursor: str | None = None) -> dg.SensorResult:
    with open_instance(settings) as instance:
        return evaluate_landing_sensor(settings, instance, cursor)


def requested(result: dg.SensorResult) -> list[str]:
    return [request.partition_key for request in result.run_requests]


def test_sensor_requests_no_day_already_ingested_from_the_same_files(settings):
    land(settings)
    ingest(settings, days=DAYS[:3])  # as `make run` does, before the sensor ever ran
    assert requested(evaluate_sensor(settings)) == [DAYS[3]]  # before: all four days


def test_sensor_requests_a_day_whose_files_changed_since_its_ingest(settings):
    land(settings)
    ingest(settings)
    first, second, third = (settings.landing_dir / f"events-{day}.csv" for day in DAYS[:3])
    text = first.read_text()
    first.write_text(text.replace(",view,", ",cart,", 1))  # same size, other content
    assert first.stat().st_size == len(text.encode())
    (settings.landing_dir / f"late-{DAYS[1]}.csv").write_text(second.read_text())  # one more file for the day
    third.write_text(third.read_text() + third.read_text().splitlines()[1] + "\n")  # another size
    assert requested(evaluate_sensor(settings)) == DAYS[:3]


def test_sensor_requests_the_days_when_the_warehouse_cannot_be_read(settings):
    land(settings)
    ingest(settings)
    holder = subprocess.Popen(  # a run writing the warehouse: the sensor does not wait for it
        [sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
                               "print('locked', flush=True); time.sleep(60)", str(settings.duckdb_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert requested(evaluate_sensor(settings)) == DAYS  # an ingest of the same files: nothing lost
    finally:
        holder.kill()
        holder.wait(timeout=10)
    cursor = evaluate_sensor(settings).cursor
    assert requested(evaluate_sensor(settings, cursor)) == []


# ------------------------------------------------------------------------------------------ make ui


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry))
    return children


def process_tree(root: int) -> dict[int, float]:
    """pid -> start time of ``root`` and every process below it."""
    children, found, todo = _children(), {}, [root]
    while todo:
        pid = todo.pop()
        started = process_start_time(pid)
        if started is not None:
            found[pid] = started
            todo += children.get(pid, [])
    return found


def still_running(tree: dict[int, float]) -> list[str]:
    left = []
    for pid, started in tree.items():
        if process_start_time(pid) == started:
            with open(f"/proc/{pid}/cmdline") as cmdline:
                left.append(f"{pid}: {cmdline.read().replace(chr(0), ' ')[:120]}")
    return left


@contextlib.contextmanager
def running_make_ui(settings, log: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """`make ui` in a session of its own (as in a terminal) on a free port, with the test's pipeline home;
    yields (process, port) once it answers. Whatever is left of it is killed at the end."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}, **settings.environment()}
    # -o: take the installed virtualenv as it is (the test runs from it), whatever the lock file's time
    with open(log, "w") as out:
        process = subprocess.Popen(["make", "-o", ".venv/.installed", "ui", f"UI_PORT={port}"], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, f"`make ui` to answer on port {port}", timeout_s=START_S, process=process)
        yield process, port
    finally:
        for pid in process_tree(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=30)


@pytest.fixture
def make_ui(settings, tmp_path):
    """`make ui` after two days were ingested; yields (process, port, log path)."""
    land(settings, days=DAYS[:2])
    ingest(settings, days=DAYS[:2])
    log = tmp_path / "make-ui.log"
    with running_make_ui(settings, log) as (process, port):
        yield process, port, log


@pytest.mark.slow
def test_first_make_ui_after_a_run_queues_nothing_and_ctrl_c_ends_it(make_ui, settings):
    process, port, log = make_ui
    wait_for(lambda: "already ingested from these same files" in log.read_text(),
             "the landing sensor's first evaluation", timeout_s=START_S, process=process)
    with open_instance(settings) as instance:
        assert {r.dagster_run.job_name for r in instance.get_run_records()} == {"ingest"}
        assert len(instance.get_run_records()) == 2  # the two ingests, no run queued by the sensor
    answer = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": "{ shouldShowNux }"}, timeout=30).json()
    assert answer == {"data": {"shouldShowNux": False}}  # no "Join the Dagster community" pop-up

    tree = process_tree(process.pid)
    assert len(tree) >= 5, tree  # make, dagster dev, webserver, daemon, code server(s)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C at the terminal: the whole foreground group
    process.wait(timeout=STOP_S)
    wait_for(lambda: not still_running(tree), "every process of `make ui` to end after Ctrl-C", timeout_s=STOP_S)


@pytest.mark.slow
def test_make_ui_stopped_by_sigterm_to_make_ends_every_process(make_ui):
    process, _, _ = make_ui
    tree = process_tree(process.pid)
    os.kill(process.pid, signal.SIGTERM)  # what a supervisor sends to the process it started
    process.wait(timeout=STOP_S)
    start = time.monotonic()
    wait_for(lambda: not still_running(tree), "every process of `make ui` to end after SIGTERM to make",
             timeout_s=STOP_S)  # before: dagster dev and its servers were left running
    assert time.monotonic() - start < STOP_S


@pytest.mark.slow
def test_under_make_ui_a_killed_run_worker_ends_its_steps_and_the_daemon_frees_its_slot(settings, tmp_path):
    day = DAYS[1]
    land(settings, days=DAYS[:2])
    ingest(settings, days=DAYS[:2])
    config = settings.dagster_home / "dagster.yaml"  # the shipped one, polled faster for the test
    shipped = config.read_text()
    config.write_text(shipped.replace("poll_interval_seconds: 30", "poll_interval_seconds: 2")
                      .replace("free_slots_after_run_end_seconds: 30", "free_slots_after_run_end_seconds: 1"))
    assert config.read_text() != shipped
    # the day changes: the landing sensor requests it, and its run reads the second file inside its transaction
    land(settings, days=[day], seed=4, n_events=10_000)
    member = gzip.compress(b"\n" * (64 << 20), compresslevel=9)
    (settings.landing_dir / f"events-{day}.zz.csv.gz").write_bytes(member * 400)

    with open_instance(settings) as instance:
        known = {record.dagster_run.run_id for record in instance.get_run_records()}
        with running_make_ui(settings, tmp_path / "make-ui.log"):
            run_id = wait_for(lambda: new_run_id(instance, known), "the landing sensor's run of the changed day")
            assert instance.get_run_by_id(run_id).tags["dagster/partition"] == day
            wait_for(lambda: any(m.startswith("file 1/2 ") for m in run_messages(instance, run_id)),
                     "the ingest transaction to be open")
            [start] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START)
            workers = step_workers(instance, run_id)
            os.kill(start.dagster_event.pid, signal.SIGKILL)  # the run worker the code server started

            wait_for(lambda: not any(process_alive(pid, seen) for pid, seen in workers.values()),
                     "the step process to end with its run worker", timeout_s=30)
            wait_for(lambda: instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE,
                     "the run to be marked failed", timeout_s=60)
            wait_for(lambda: not holds_pool(instance, run_id, "duckdb"),
                     "the daemon's run monitoring to free the run's slot", timeout_s=60)  # before: never
