"""`python -m pipelines status`: what the pipeline holds now, for an operator at a terminal.

- the champion: version, NDCG@10, when it was trained and on how much data;
- the last retrains: registered versions, newest first, with the gate's decision and scores (version tags
  written by `pipelines.registry.promotion.promote_if_better`);
- the last ingest of each `events` day with its rejected rows (DuckDB, read-only);
- the Dagster runs in progress, and the pool slots they hold (the project's Dagster instance);
- what needs a person, each with the one command that fixes it: a run stuck holding a pool slot (its process
  is gone), a champion whose model cannot be loaded, a version evaluated but never gated. Any of them, or a
  source that could not be read, makes the exit status 1.

Every source is read on its own and may be missing (nothing has run yet), unreachable (a tracking server that
is down) or busy (a run holding DuckDB's write lock): the report then says so plainly and goes on with the
rest. It never creates or writes anything: a missing sqlite store, warehouse or Dagster instance is reported,
not created. Dagster is imported only to read the runs, after the rest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from als_store import model_registry, model_tags, sql_files, warehouse
from als_store.mlflow_store import (BundleUnloadable, RegistryError, check_reachable, make_client, mlflow_errors,
                                    sqlite_path)
from pipelines.recovery import RECOVER_COMMAND
from als_store.settings import Settings

DEFAULT_LIMIT = 10
DEFAULT_LOCK_WAIT_S = 3.0
# MLflow's own HTTP retries take minutes against a dead server; the operator wants an answer now.
_MLFLOW_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
TAG_TRAINING_WINDOW = "training_window"  # run tag set by the challenger asset: "YYYY-MM-DD..YYYY-MM-DD"
DAGSTER = ".venv/bin/dagster"
INSTANCE = 'eval "$(.venv/bin/python -m pipelines.instance)"'


@dataclass
class VersionSummary:
    version: int
    registered_at: str | None
    aliases: list[str]
    decision: str | None  # promoted | rejected | None (not gated yet)
    ndcg_at_10: float | None
    champion_version: int | None  # the champion it was compared with
    champion_ndcg_at_10: float | None
    popularity_ndcg_at_10: float | None
    reason: str | None
    run_id: str | None
    dagster_run_id: str | None
    evaluated: bool = False  # has the evaluation's scores (eval.* tags)
    evaluated_by: str | None = None  # the Dagster run that evaluated it
    # list stability against the champion of its evaluation (eval.* tags; None: no champion to compare with)
    list_jaccard: float | None = None
    first_item_changed: float | None = None
    evaluated_against: int | None = None


@dataclass
class ChampionSummary:
    version: int
    ndcg_at_10: float | None
    popularity_ndcg_at_10: float | None
    trained_at: str | None
    data: dict[str, float]  # the run's data_* metrics: users, items, nnz, ...
    window: str | None  # YYYY-MM-DD..YYYY-MM-DD
    run_id: str | None
    events: int | None = None
    events_source: str | None = None  # "run" (logged by the training) | "warehouse" (counted in its window now)
    load_error: str | None = None  # why its model cannot be loaded; None: it loads
    kind: str = model_tags.KIND_ALS  # als | popularity (version tag model_tags.TAG_MODEL_KIND)


@dataclass
class RegistryStatus:
    tracking_uri: str
    model_name: str
    state: str  # ok | empty | unavailable
    message: str | None = None
    champion: ChampionSummary | None = None
    versions: list[VersionSummary] = field(default_factory=list)
    previous_champion: int | None = None
    previous_champion_loads: bool | None = None  # asked only when the champion does not load


@dataclass
class DaySummary:
    day: str
    ingested_at: str
    files: int
    duplicate_files: int
    events: int
    rejected: int
    rejected_reasons: str


@dataclass
class WarehouseStatus:
    path: str
    state: str  # ok | empty | unavailable
    message: str | None = None
    days: int = 0
    events: int = 0
    rejected: int = 0
    first_day: str | None = None
    last_day: str | None = None
    recent: list[DaySummary] = field(default_factory=list)
    events_by_day: dict[str, int] = field(default_factory=dict)

    def events_between(self, first: str, last: str) -> int | None:
        if self.state != "ok":
            return None
        return sum(n for day, n in self.events_by_day.items() if first <= day <= last)


@dataclass
class RunSummary:
    run_id: str
    job_name: str
    status: str
    started_at: str | None
    pid: int | None  # the run's own process
    pools: list[str]  # "pool (step)" slots it holds
    problem: str | None = None


@dataclass
class RunsStatus:
    dagster_home: str
    state: str  # ok | empty | unavailable
    message: str | None = None
    profile: str | None = None  # the instance profile the environment selects (pipelines.instance)
    runs: list[RunSummary] = field(default_factory=list)


@dataclass
class Problem:
    """Something a person has to act on, and the one command that does it."""

    kind: str  # stuck_run | champion_unloadable | not_gated
    message: str
    fix: str


@dataclass
class Status:
    home: str
    registry: RegistryStatus
    warehouse: WarehouseStatus
    runs: RunsStatus | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        states = (self.registry.state, self.warehouse.state, self.runs.state if self.runs else "ok")
        return "unavailable" not in states and not self.problems

    def __post_init__(self) -> None:
        """A run that did not log its event count: count its window's events in the warehouse."""
        champion = self.registry.champion
        if champion is None or champion.events is not None or not champion.window:
            return
        first, _, last = champion.window.partition("..")
        counted = self.warehouse.events_between(first, last)
        if counted is not None:
            champion.events, champion.events_source = counted, "warehouse"


# --------------------------------------------------------------------------------------------- MLflow


def _int(value: Any) -> int | None:
    number = model_tags.tag_float(value)
    return None if number is None else int(number)


def _utc(millis: int | None) -> str | None:
    if not millis:
        return None
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _version_summary(mv, aliases_of: dict[int, list[str]]) -> VersionSummary:
    tags = dict(mv.tags or {})
    version = int(mv.version)
    return VersionSummary(
        version=version,
        registered_at=_utc(mv.creation_timestamp),
        aliases=sorted(aliases_of.get(version, [])),
        decision=tags.get(model_tags.TAG_GATE_DECISION),
        ndcg_at_10=model_tags.tag_float(tags.get(model_tags.TAG_GATE_CHALLENGER_NDCG)),
        champion_version=_int(tags.get(model_tags.TAG_GATE_CHAMPION_VERSION)),
        champion_ndcg_at_10=model_tags.tag_float(tags.get(model_tags.TAG_GATE_CHAMPION_NDCG)),
        popularity_ndcg_at_10=model_tags.tag_float(tags.get(model_tags.TAG_GATE_POPULARITY_NDCG)),
        reason=tags.get(model_tags.TAG_GATE_REASON),
        run_id=mv.run_id,
        dagster_run_id=tags.get(model_tags.TAG_DAGSTER_RUN_ID),
        evaluated=bool(tags.get(model_tags.TAG_EVAL_CHALLENGER_NDCG)),
        evaluated_by=tags.get(model_tags.TAG_EVAL_DAGSTER_RUN_ID) or None,
        list_jaccard=model_tags.tag_float(tags.get(model_tags.TAG_EVAL_LIST_JACCARD)),
        first_item_changed=model_tags.tag_float(tags.get(model_tags.TAG_EVAL_FIRST_ITEM_CHANGED)),
        evaluated_against=_int(tags.get(model_tags.TAG_EVAL_CHAMPION_VERSION)),
    )


def _champion_summary(client, summary: VersionSummary) -> ChampionSummary:
    """The champion's own training run says when and on what it was trained."""
    data: dict[str, float] = {}
    window = None
    trained_at = summary.registered_at
    if summary.run_id:
        run = client.get_run(summary.run_id)
        data = {key[len("data_"):]: value for key, value in sorted(run.data.metrics.items())
                if key.startswith("data_")}
        params = run.data.params
        window = run.data.tags.get(TAG_TRAINING_WINDOW)
        if not window and params.get("window_start") and params.get("window_end"):
            window = f"{params['window_start']}..{params['window_end']}"
        trained_at = _utc(run.info.start_time) or trained_at
    events = data.pop("events", None)
    return ChampionSummary(
        version=summary.version, ndcg_at_10=summary.ndcg_at_10,
        popularity_ndcg_at_10=summary.popularity_ndcg_at_10, trained_at=trained_at, data=data,
        window=window, run_id=summary.run_id, events=None if events is None else int(events),
        events_source=None if events is None else "run",
    )


def read_registry(settings: Settings, limit: int = DEFAULT_LIMIT) -> RegistryStatus:
    uri, name = settings.mlflow_tracking_uri, settings.model_name
    status = RegistryStatus(tracking_uri=uri, model_name=name, state="ok")
    db_path = sqlite_path(uri)
    if db_path is not None and not db_path.exists():
        # opening a missing sqlite store would create an empty one: report instead
        status.state, status.message = "empty", f"no MLflow store yet ({db_path}): nothing trained"
        return status
    try:
        check_reachable(uri)
        client = make_client(uri)
        aliases = model_registry.aliases(client, name)
        with mlflow_errors(f"listing versions of {name!r}"):
            found = client.search_model_versions(f"name = '{name}'", max_results=limit,
                                                 order_by=["version_number DESC"])
        aliases_of: dict[int, list[str]] = {}
        for alias, version in aliases.items():
            aliases_of.setdefault(version, []).append(alias)
        status.versions = [_version_summary(mv, aliases_of) for mv in found]
        champion = aliases.get(model_tags.CHAMPION)
        status.previous_champion = aliases.get(model_tags.PREVIOUS_CHAMPION)
        if champion is not None:
            with mlflow_errors(f"reading champion v{champion}"):
                mv = client.get_model_version(name, str(champion))
                status.champion = _champion_summary(client, _version_summary(mv, aliases_of))
                status.champion.kind = model_tags.kind_of(mv.tags)
            status.champion.load_error = _load_error(uri, name, champion)
            if status.champion.load_error and status.previous_champion not in (None, champion):
                status.previous_champion_loads = _load_error(uri, name, status.previous_champion) is None
    except (RegistryError, ValueError) as exc:
        status.state, status.message = "unavailable", f"MLflow unavailable: {exc}"
        return status
    if not status.versions:
        status.state, status.message = "empty", f"no registered version of {name!r} yet: nothing trained"
    elif status.champion is None:
        status.message = f"no `{model_tags.CHAMPION}` alias: no version has passed the gate yet"
    return status


def _load_error(uri: str, name: str, version: int) -> str | None:
    """Load the version's model as serving and the gate would: None when it loads, else why not. MLflow
    itself failing is not the model's fault: that raises MlflowUnavailable."""
    try:
        model_registry.load_version_bundle(uri, name, version)
    except BundleUnloadable as exc:
        return exc.cause
    return None


# --------------------------------------------------------------------------------------------- DuckDB


def _missing_table(error: Exception) -> bool:
    return "does not exist" in str(error) and "Table" in str(error)


def read_warehouse(settings: Settings, limit: int = DEFAULT_LIMIT,
                   lock_wait_s: float = DEFAULT_LOCK_WAIT_S) -> WarehouseStatus:
    import duckdb

    path = settings.duckdb_path
    status = WarehouseStatus(path=str(path), state="ok")
    if not path.exists():
        status.state, status.message = "empty", f"no warehouse yet ({path}): nothing ingested"
        return status
    try:
        with warehouse.open_warehouse(path, read_only=True, lock_timeout_s=lock_wait_s) as con:
            totals = sql_files.run(con, "status_totals").fetchone()
            rows = sql_files.run(con, "status_ingests", {"limit": limit}).fetchall()
            by_day = sql_files.run(con, "status_events_by_day").fetchall()
    except duckdb.CatalogException as exc:
        if not _missing_table(exc):
            raise
        status.state, status.message = "empty", f"warehouse {path} has no ingest tables yet: nothing ingested"
        return status
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise
        status.state = "unavailable"
        status.message = (f"warehouse {path} is locked by another process (a run is writing to it; waited "
                          f"{lock_wait_s:g}s): try again in a moment, or pass --lock-wait 60")
        return status
    days, events, rejected, first_day, last_day = totals
    status.days, status.events, status.rejected = int(days), int(events), int(rejected)
    status.first_day = first_day and first_day.isoformat()
    status.last_day = last_day and last_day.isoformat()
    status.recent = [
        DaySummary(day=day.isoformat(), ingested_at=f"{ingested_at:%Y-%m-%d %H:%M:%S} UTC", files=int(files),
                   duplicate_files=int(duplicates), events=int(loaded), rejected=int(rejected_rows),
                   rejected_reasons=reasons)
        for day, ingested_at, files, duplicates, loaded, rejected_rows, reasons in rows
    ]
    status.events_by_day = {day.isoformat(): int(n) for day, n in by_day}
    if not status.recent:
        status.state, status.message = "empty", "no day ingested yet"
    return status


# --------------------------------------------------------------------------------------------- Dagster


def read_runs(settings: Settings) -> RunsStatus:
    """Runs in progress or holding a pool slot, from the project's instance (opened only if it exists)."""
    from pipelines.instance import describe_profile

    home = settings.dagster_home
    status = RunsStatus(dagster_home=str(home), state="ok", profile=describe_profile())
    if not (home / "dagster.yaml").is_file():
        status.state, status.message = "empty", f"no Dagster instance yet ({home}): nothing has run"
        return status
    try:
        import dagster as dg

        from pipelines.recovery import inspect_runs

        with dg.DagsterInstance.from_config(str(home)) as instance:
            states = inspect_runs(instance)
    except Exception as exc:  # a broken or locked instance must not hide the rest of the report
        status.state, status.message = "unavailable", f"Dagster instance {home} unreadable: {type(exc).__name__}: {exc}"
        return status
    for state in states:
        orchestrator = state.orchestrator
        status.runs.append(RunSummary(
            run_id=state.run_id, job_name=state.job_name, status=state.status, started_at=state.started_at,
            pid=orchestrator.pid if orchestrator else None,
            pools=[f"{pool} ({step})" for pool, step in state.slots], problem=state.problem))
    return status


# --------------------------------------------------------------------------------------------- problems


def gate_command(version: int) -> str:
    config = json.dumps({"ops": {"champion": {"config": {"version": version}}}})
    return (f"{INSTANCE} && {DAGSTER} asset materialize -m pipelines.definitions --select champion "
            f"--config-json '{config}'")


def find_problems(reg: RegistryStatus, runs: RunsStatus) -> list[Problem]:
    problems = []
    for run in runs.runs:
        if run.problem:
            pools = ", ".join(run.pools) or "no pool slot"
            problems.append(Problem(
                "stuck_run", f"run {run.run_id[:8]} ({run.job_name}, {run.status.lower()}, holds {pools}): "
                             f"{run.problem}; runs that need these pools wait until it is recovered (the next "
                             "run created recovers it by itself)", RECOVER_COMMAND))
    champion = reg.champion
    if champion is not None and champion.load_error:
        if reg.previous_champion_loads:
            fix = ".venv/bin/python -m pipelines registry rollback"
            then = f"previous_champion v{reg.previous_champion} loads: roll back to it"
        else:
            fix = ".venv/bin/python -m pipelines registry promote VERSION"
            then = "put its files back, or make a version that loads the champion"
        problems.append(Problem(
            "champion_unloadable", f"champion v{champion.version} cannot be loaded: {champion.load_error}; "
                                   f"{then}", fix))
    in_progress = {run.run_id for run in runs.runs if not run.problem}
    for v in reg.versions:  # newest first: only what is newer than the last gated version waits for a gate
        if v.decision is not None:
            break
        if v.evaluated and v.evaluated_by not in in_progress:
            problems.append(Problem(
                "not_gated", f"v{v.version} was evaluated but never gated (the run stopped before `champion`): "
                             "it is neither promoted nor rejected", gate_command(v.version)))
            break
    return problems


def read_status(settings: Settings, limit: int = DEFAULT_LIMIT, lock_wait_s: float = DEFAULT_LOCK_WAIT_S) -> Status:
    reg = read_registry(settings, limit)
    wh = read_warehouse(settings, limit, lock_wait_s)
    runs = read_runs(settings)
    return Status(home=str(settings.home), registry=reg, warehouse=wh, runs=runs, problems=find_problems(reg, runs))


# --------------------------------------------------------------------------------------------- text


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [list(map(str, header))] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]


def _champion_lines(reg: RegistryStatus) -> list[str]:
    champion = reg.champion
    if champion is None:
        return [f"Champion: none. {reg.message or ''}".rstrip()]
    lines = [f"Champion: {reg.model_name} v{champion.version}   NDCG@10 {_score(champion.ndcg_at_10)}"
             f"   (popularity {_score(champion.popularity_ndcg_at_10)})"]
    lines.append(f"  kind      {champion.kind}" + (" (the most popular items, a known user's seen ones excluded)"
                                                    if champion.kind == model_tags.KIND_POPULARITY else ""))
    lines.append(f"  trained   {champion.trained_at or 'at an unknown time'}")
    data = [f"window {champion.window}"] if champion.window else []
    if champion.events is not None:
        counted = " (counted in the warehouse now)" if champion.events_source == "warehouse" else ""
        data.append(f"{champion.events:,} events{counted}")
    data += [f"{int(champion.data[key]):,} {key.replace('_', ' ')}"
             for key in ("users", "items", "nnz", "holdout_pairs") if key in champion.data]
    if data:
        lines.append(f"  data      {', '.join(data)}")
    if champion.run_id:
        lines.append(f"  run       MLflow {champion.run_id}")
    lines.append(f"  model     {'does not load: ' + champion.load_error if champion.load_error else 'loads'}")
    return lines


def _versions_lines(reg: RegistryStatus) -> list[str]:
    if not reg.versions:
        return []
    rows = []
    for v in reg.versions:
        against = "-" if v.champion_version is None else f"v{v.champion_version} {_score(v.champion_ndcg_at_10)}"
        rows.append((f"v{v.version}", v.registered_at or "-", v.decision or "not gated", _score(v.ndcg_at_10),
                     against, _score(v.popularity_ndcg_at_10), ",".join(v.aliases)))
    header = ("version", "registered", "decision", "NDCG@10", "vs champion", "popularity", "aliases")
    return ["", "Last retrains (newest first):", *_table(header, rows), *_stability_lines(reg)]


def _stability_lines(reg: RegistryStatus) -> list[str]:
    """The newest retrain's list stability against the champion it was evaluated with."""
    measured = next((v for v in reg.versions if v.list_jaccard is not None and v.first_item_changed is not None),
                    None)
    if measured is None:
        return []
    return [f"List stability: v{measured.version} against champion v{measured.evaluated_against} on the same "
            f"holdout users: top-10 mean Jaccard {measured.list_jaccard:.3f}, first item changed for "
            f"{measured.first_item_changed:.1%}"]


def _warehouse_lines(wh: WarehouseStatus) -> list[str]:
    if wh.state != "ok":
        return [f"Ingest: {wh.message}"]
    lines = [f"Ingest: {wh.days:,} days ({wh.first_day}..{wh.last_day}), {wh.events:,} events, "
             f"{wh.rejected:,} rejected rows in {wh.path}",
             f"Last ingest per day (newest {len(wh.recent)}):"]
    rows = [(d.day, d.ingested_at, d.files if not d.duplicate_files else f"{d.files} ({d.duplicate_files} dup)",
             f"{d.events:,}", f"{d.rejected:,}", d.rejected_reasons or "-") for d in wh.recent]
    return lines + _table(("day", "ingested", "files", "events", "rejected", "reasons"), rows)


def _runs_lines(runs: RunsStatus | None) -> list[str]:
    if runs is None:
        return []
    if runs.state != "ok":
        return ["", f"Runs: {runs.message}"]
    if not runs.runs:
        return ["", "Runs: none in progress, no pool slot held"]
    rows = [(r.run_id[:8], r.job_name, r.status.lower(), r.started_at or "-", r.pid or "-", ", ".join(r.pools) or "-",
             "STUCK" if r.problem else "running") for r in runs.runs]
    return ["", "Runs in progress or holding a pool slot:",
            *_table(("run", "job", "status", "started", "pid", "pools held", "state"), rows)]


def _problem_lines(problems: list[Problem]) -> list[str]:
    if not problems:
        return ["", "Nothing needs a person."]
    lines = ["", f"Needs a person ({len(problems)}):"]
    for problem in problems:
        lines += [f"- {problem.message}", f"  fix: {problem.fix}"]
    return lines


def render(status: Status) -> str:
    reg = status.registry
    lines = [f"ALS pipeline status   home {status.home}", f"MLflow {reg.tracking_uri}   model {reg.model_name}"]
    if status.runs is not None and status.runs.profile:
        lines.append(f"Dagster instance profile: {status.runs.profile}")
    lines.append("")
    if reg.state == "unavailable":
        lines.append(f"Champion: unknown. {reg.message}")
    else:
        lines += _champion_lines(reg) + _versions_lines(reg)
    lines += ["", *_warehouse_lines(status.warehouse)]
    lines += _runs_lines(status.runs) + _problem_lines(status.problems)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the champion, the last retrains, the last ingest per day, the runs in progress and what needs a
    person. Exit 1 if something needs a person or a source was unreadable."""
    parser = argparse.ArgumentParser(prog="python -m pipelines status", description=main.__doc__)
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="versions and days to list")
    parser.add_argument("--lock-wait", type=float, default=DEFAULT_LOCK_WAIT_S,
                        help="seconds to wait for a run's DuckDB write lock")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    # MLflow takes its HTTP limits only from the environment (no client argument): set for this command alone
    for key, value in _MLFLOW_HTTP_ENV.items():
        os.environ.setdefault(key, value)
    status = read_status(Settings.from_env(), limit=args.limit, lock_wait_s=args.lock_wait)
    if args.json:
        print(json.dumps(asdict(status), indent=2))
    else:
        sys.stdout.write(render(status))
    return 0 if status.ok else 1


if __name__ == "__main__":
    sys.exit(main())
