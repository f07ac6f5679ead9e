"""The first `make ui` after `make run`: the landing sensor queues no re-ingest of the days the main job ingested
from the same files, the onboarding pop-up stays closed, and stopping `make ui` ends every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dagster as dg
import httpx
import pytest

from crash_helpers import DAYS, ROOT, ingest, land, open_instance, wait_for
from mlflow_server import free_port
from pipelines.defs import automation
from pipelines.recovery import process_start_time

START_S = 120.0
STOP_S = 30.0


def evaluate_sensor(settings, cursor: str | None = None) -> dg.SensorResult:
    with open_instance(settings) as instance:
        return automation.landing_sensor(dg.build_sensor_context(instance=instance, cursor=cursor))


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
        [sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('locked', flush=True); "
                               "time.sleep(60)", str(settings.duckdb_path)], stdout=subprocess.PIPE, text=True)
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


@pytest.fixture
def make_ui(settings, tmp_path):
    """`make ui` in a session of its own (as in a terminal) on a free port, after two days were ingested;
    yields (process, port, log path). Whatever is left of it is killed at the end."""
    land(settings, days=DAYS[:2])
    ingest(settings, days=DAYS[:2])
    port, log = free_port(), tmp_path / "make-ui.log"
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
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
        yield process, port, log
    finally:
        for pid in process_tree(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=30)


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
