"""The daily retrain on synthetic events at scale: seconds per asset, ingest speed against bare DuckDB.

    .venv/bin/python bench/pipeline.py [--events 10000000 --days 30 --users 200000 --items 20000 --format parquet]

Everything runs in a temporary ALS_PIPELINE_HOME through Dagster's own execution (`execute_in_process` of the
project's jobs). Prints:
- ingest rows/s of the `ingest` job (all days) next to DuckDB loading the same files by itself into a fresh
  table in the same run (the anchor), and their ratio (target: within 2x);
- seconds per step of `daily_retrain`, and "everything around the fit" (all retrain steps minus the ALS fit
  itself) against the fit (target: no more than the fit);
- the process's peak memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def step_durations(instance, run_id: str) -> dict[str, float]:
    """Seconds per step, from the run's event log (step start -> step success/failure)."""
    starts, durations = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in starts:
            durations[event.step_key] = entry.timestamp - starts[event.step_key]
    return durations


def bare_duckdb_load(files: list[Path], fmt: str, workdir: Path) -> float:
    """Seconds for DuckDB alone to load the same files into a new table of a new database file."""
    import duckdb

    reader = "read_parquet" if fmt == "parquet" else "read_csv"
    started = time.perf_counter()
    with duckdb.connect(str(workdir / "anchor.duckdb")) as con:
        con.execute(f"CREATE TABLE events AS SELECT * FROM {reader}(?)", [[str(f) for f in files]])
        con.execute("SELECT count(*) FROM events").fetchone()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--format", default="parquet", choices=["parquet", "csv.gz", "csv"])
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="als-bench-pipeline-"))
    os.environ["ALS_PIPELINE_HOME"] = str(workdir / "home")
    start = dt.date(2026, 1, 1)
    os.environ["ALS_PIPELINE_START_DATE"] = start.isoformat()
    from pipelines.instance import prepare_dagster_home
    from pipelines.settings import Settings

    settings = Settings.from_env()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(settings))
    import dagster as dg

    from als_core.synthetic import generate_events
    from pipelines.definitions import defs
    from pipelines.landing import write_day_files

    print(f"{args.events:,} synthetic events, {args.users:,} users x {args.items:,} items over {args.days} days "
          f"({args.format} landing files) in {workdir}")
    t = time.perf_counter()
    events = generate_events(args.users, args.items, args.events, args.days, seed=0, start=start.isoformat())
    files = write_day_files(events, settings.landing_dir, args.format)
    del events
    print(f"generated and landed in {time.perf_counter() - t:.1f}s")

    definitions = defs()
    instance = dg.DagsterInstance.get()
    ingest = definitions.resolve_job_def("ingest")
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    t = time.perf_counter()
    ingested = 0
    step_seconds = 0.0
    for day in range(args.days):
        result = ingest.execute_in_process(partition_key=(start + dt.timedelta(days=day)).isoformat(),
                                           instance=instance, run_config=quiet)
        ingested += result.asset_materializations_for_node("events")[-1].metadata["events"].value
        step_seconds += sum(s for key, s in step_durations(instance, result.run_id).items() if key == "events")
    ingest_seconds = time.perf_counter() - t
    anchor_seconds = bare_duckdb_load(files, args.format, workdir)
    print(f"\ningest of {ingested:,} events, {args.days} partition runs: {ingest_seconds:.1f}s wall "
          f"({ingested / ingest_seconds:,.0f} rows/s), of which the events steps {step_seconds:.1f}s "
          f"({ingested / step_seconds:,.0f} rows/s); the rest is Dagster's per-run start-up and checks")
    print(f"bare DuckDB loading the same files into one table: {anchor_seconds:.1f}s ({ingested / anchor_seconds:,.0f} rows/s)")
    for label, seconds in (("events steps", step_seconds), ("whole ingest runs", ingest_seconds)):
        ratio = seconds / anchor_seconds
        print(f"  {label} / bare DuckDB: {ratio:.2f}x (target <= 2x)  {'ok' if ratio <= 2 else 'MISS'}")

    retrain = definitions.resolve_job_def("daily_retrain")
    t = time.perf_counter()
    result = retrain.execute_in_process(instance=instance, run_config=quiet)
    wall = time.perf_counter() - t
    steps = step_durations(instance, result.run_id)
    fit = result.asset_materializations_for_node("challenger")[-1].metadata["fit_seconds"].value
    print(f"\ndaily_retrain: {'success' if result.success else 'FAILED'} in {wall:.1f}s")
    for step, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"  {step:40} {seconds:7.1f}s")
    around = sum(steps.values()) - fit
    print(f"  ALS fit inside challenger: {fit:.1f}s; everything around it: {around:.1f}s = {around / fit:.2f}x the fit "
          f"(target <= 1x)  {'ok' if around <= fit else 'MISS'}")
    print(f"\npeak memory (this process): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
