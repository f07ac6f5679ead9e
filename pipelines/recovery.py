"""Runs whose process died: find them, mark them failed, free their pool slots.

    python -m pipelines recover     # what the project's instance also does before every new run

A run killed with its process (kill -9, the OOM killer, a reboot, a closed terminal) stays STARTED in the
Dagster instance and keeps the pool slots its steps held (`duckdb`, `promotion`): every later run then waits
at "Step blocked by limit for pool duckdb" for ever. Dagster's run monitoring (`run_monitoring` in
pipelines/dagster.yaml) runs only in the daemon of `dagster dev`, and its default run launcher cannot tell
whether a run's process still lives. Here it is told by the events themselves: each event of a run records
the pid of the process that wrote it, so a STARTED run whose orchestrating process (the one that wrote
RUN_START) is gone from this machine is dead. `recover` marks it FAILED, ends what is left of its step
processes, and frees the pool slots of every finished run.

The project's instance class (`pipelines.instance.PipelineInstance`) calls `recover` before it creates a run,
so the next run after a crash makes progress on its own, with or without a daemon.

Processes are looked up on this machine only: the check is made for the project's local sqlite instance
(a run storage shared by several machines is left to Dagster's run monitoring).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

# A process that wrote a run's first event must have started before it: a process with that pid that
# started later is another one (the pid was reused). Slack for the rounding of /proc's boot time.
START_TIME_SLACK_S = 2.0
PARENT_POLL_S = 0.5
INTERRUPT_GRACE_S = 5.0  # after the parent died: Dagster's own interrupt first, then SIGKILL
RECOVER_COMMAND = ".venv/bin/python -m pipelines recover"

_watching_parent = False


# ------------------------------------------------------------------------------------------ processes


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), None when there is no such live process.
    Linux reads /proc; elsewhere a process that exists reports 0.0 (started at an unknown time)."""
    stat_path = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            text = stat_path.read_text()
        except OSError:
            return None
        fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
        if fields[0] in ("Z", "X"):  # a zombie has finished: only its exit status is left
            return None
        boot = _boot_time()
        ticks = int(fields[19])  # field 22 of proc(5): start time in clock ticks after boot
        return None if boot is None else boot + ticks / os.sysconf("SC_CLK_TCK")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0.0


def process_alive(pid: int, seen_at: float) -> bool:
    """Whether the process that wrote an event at ``seen_at`` as ``pid`` is still running."""
    started = process_start_time(pid)
    return started is not None and started <= seen_at + START_TIME_SLACK_S


def die_with_parent() -> None:
    """In a process started by `multiprocessing` (a Dagster run worker or step worker), end this process when
    its parent ends. A step whose run was killed must not go on: left alone it finishes on its own (a gate step
    would promote a model for a run that has died) and keeps its pool slot. Dagster's own interrupt (SIGINT: the
    step fails and its cleanup runs) comes first, SIGKILL after INTERRUPT_GRACE_S. No-op elsewhere."""
    import multiprocessing

    global _watching_parent
    parent = multiprocessing.parent_process()
    if parent is None or _watching_parent:
        return
    _watching_parent = True
    parent_pid = parent.pid

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(INTERRUPT_GRACE_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


# ------------------------------------------------------------------------------------------ runs


@dataclass
class RunProcess:
    pid: int
    seen_at: float  # the first event this process wrote for the run
    role: str  # "run" (the orchestrating process) or the step key of a step worker

    @property
    def alive(self) -> bool:
        return process_alive(self.pid, self.seen_at)


@dataclass
class RunState:
    run_id: str
    job_name: str
    status: str
    started_at: str | None
    processes: list[RunProcess] = field(default_factory=list)
    slots: list[tuple[str, str]] = field(default_factory=list)  # (pool, step key) slots it holds
    pending: list[tuple[str, str]] = field(default_factory=list)  # (pool, step key) steps it queued for a slot
    problem: str | None = None  # why a person (or `recover`) is needed; None: healthy

    @property
    def orchestrator(self) -> RunProcess | None:
        return next((p for p in self.processes if p.role == "run"), None)

    def describe(self) -> str:
        pools = ", ".join(f"pool {pool} ({step})" for pool, step in self.slots) or "no pool slot"
        return f"run {self.run_id[:8]} ({self.job_name}, {self.status.lower()}, holds {pools})"


def is_local_instance(instance: dg.DagsterInstance) -> bool:
    from dagster._core.storage.runs import SqliteRunStorage

    return isinstance(instance.run_storage, SqliteRunStorage)


def _run_processes(instance: dg.DagsterInstance, run_id: str) -> list[RunProcess]:
    from dagster import DagsterEventType

    found: dict[int, RunProcess] = {}
    for entry in instance.all_logs(run_id, of_type={DagsterEventType.RUN_START,
                                                      DagsterEventType.STEP_WORKER_STARTED}):
        event = entry.dagster_event
        if event is None or event.pid is None or event.pid in found:
            continue
        role = "run" if event.event_type == DagsterEventType.RUN_START else (event.step_key or "step")
        found[event.pid] = RunProcess(event.pid, entry.timestamp, role)
    return list(found.values())


def _utc(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _slot_holders(instance: dg.DagsterInstance) -> tuple[dict[str, list], dict[str, list]]:
    storage = instance.event_log_storage
    held: dict[str, list[tuple[str, str]]] = {}
    pending: dict[str, list[tuple[str, str]]] = {}
    if not storage.supports_global_concurrency_limits:
        return held, pending
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        for slot in info.claimed_slots:
            held.setdefault(slot.run_id, []).append((pool, slot.step_key))
        for step in info.pending_steps:
            pending.setdefault(step.run_id, []).append((pool, step.step_key))
    return held, pending


def inspect_runs(instance: dg.DagsterInstance) -> list[RunState]:
    """Every run that is in progress or holds a pool slot, each with `problem` set when it is stuck."""
    from dagster import DagsterRunStatus, RunsFilter

    held, pending = _slot_holders(instance)
    in_progress = [DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING, DagsterRunStatus.STARTING]
    records = {r.dagster_run.run_id: r for r in instance.get_run_records(RunsFilter(statuses=in_progress))}
    wanted = (set(held) | set(pending)) - set(records)
    if wanted:
        records.update({r.dagster_run.run_id: r for r in instance.get_run_records(RunsFilter(run_ids=list(wanted)))})
    local = is_local_instance(instance)
    states = []
    for run_id in sorted(records.keys() | held.keys() | pending.keys()):
        record = records.get(run_id)
        run = record.dagster_run if record else None
        state = RunState(run_id=run_id, job_name=run.job_name if run else "?",
                         status=run.status.value if run else "DELETED",
                         started_at=_utc(record.start_time) if record else None,
                         slots=held.get(run_id, []), pending=pending.get(run_id, []))
        state.processes = _run_processes(instance, run_id) if run else []
        alive = [p for p in state.processes if p.alive] if local else state.processes
        if run is None or run.is_finished:
            if state.slots or state.pending:
                ended = "was deleted" if run is None else f"ended {run.status.value}"
                left = f"; step process {', '.join(str(p.pid) for p in alive)} still running" if alive else ""
                state.problem = f"{ended} but still holds its pool slots{left}"
        elif local and run.status != DagsterRunStatus.STARTING:
            orchestrator = state.orchestrator
            if orchestrator is not None and not orchestrator.alive:
                state.problem = f"its process (pid {orchestrator.pid}) is gone: the run can never finish"
        states.append(state)
    return states


def stuck_runs(instance: dg.DagsterInstance) -> list[RunState]:
    return [state for state in inspect_runs(instance) if state.problem]


def recover(instance: dg.DagsterInstance, log: Callable[[str], None] = print) -> list[RunState]:
    """Fail every run whose process is gone, end its leftover step processes, free the pool slots of every
    finished run. Returns the runs it acted on; a healthy instance is left untouched."""
    if not is_local_instance(instance):
        return []
    acted = []
    for state in stuck_runs(instance):
        run = instance.get_run_by_id(state.run_id)
        if run is not None and not run.is_finished:
            message = (f"Run process (pid {state.orchestrator.pid}) is gone (killed, or the machine stopped): "
                       "marked failed by the project's run recovery (pipelines/recovery.py, also "
                       f"`{RECOVER_COMMAND}`) so that its pool slots are freed and later runs go on.")
            instance.report_run_failed(run, message)
        left = [p for p in _run_processes(instance, state.run_id) if p.role != "run" and p.alive]
        for process in left:  # a step that outlived its run must not go on writing
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        _wait_gone(left)
        if state.slots or state.pending:
            instance.event_log_storage.free_concurrency_slots_for_run(state.run_id)
        if run is not None:
            freed = ", ".join(f"{pool} ({step})" for pool, step in state.slots) or "none"
            instance.report_engine_event(f"Pool slots freed by the project's run recovery: {freed}", run)
        before = state.describe()
        refreshed = instance.get_run_by_id(state.run_id)
        state.status = refreshed.status.value if refreshed else state.status
        log(f"{before}: {state.problem}; now {state.status.lower()}, its slots freed")
        acted.append(state)
    return acted


def _wait_gone(processes: Sequence[RunProcess], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(p.alive for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Mark runs whose process is gone as failed and free the pool slots they hold."""
    parser = argparse.ArgumentParser(prog=RECOVER_COMMAND, description=main.__doc__)
    parser.parse_args(argv)
    from als_store.settings import Settings
    from pipelines.instance import open_instance

    with open_instance(Settings.from_env()) as instance:
        acted = recover(instance, log=lambda line: print(f"recovered {line}"))
        running = [s for s in inspect_runs(instance) if not s.problem]
    if not acted:
        print("nothing to recover: no run is stuck")
    for state in running:
        orchestrator = state.orchestrator
        where = f"process {orchestrator.pid}" if orchestrator else "no process yet"
        print(f"still running: {state.describe()} since {state.started_at or '?'}, {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
