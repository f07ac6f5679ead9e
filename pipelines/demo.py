"""The main job, end to end on embedded defaults (`make run`).

    python -m pipelines.demo [--events 1000000 --days 30 --users 20000 --items 4000]

1. writes synthetic events as daily landing files (one file per day) for ``--days`` days,
2. ingests every day (the `ingest` job, one run per partition) into the DuckDB warehouse,
3. runs the `daily_retrain` job: interactions -> training data -> challenger -> evaluation -> champion ->
   recommendations, tracked and registered in MLflow,
4. lands one more day, ingests it and retrains again (the next day's scheduled run),
5. prints what it did.

Runs go through the project's persistent Dagster instance (`Settings.dagster_home`), so `dagster dev`
shows them afterwards. Everything is written under `ALS_PIPELINE_HOME` (default `.data/`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time

import pandas as pd

from pipelines.settings import Settings


def _metadata_value(result, node: str, key: str, default=None):
    materializations = result.asset_materializations_for_node(node)
    if not materializations or key not in materializations[-1].metadata:
        return default
    return materializations[-1].metadata[key].value


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=4_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    from pipelines.instance import prepare_dagster_home

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the summary readable

    os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(settings))
    import dagster as dg  # after DAGSTER_HOME: the instance reads it

    from pipelines.defs.partitions import event_days

    start = event_days.start.date()  # the first `events` partition (ALS_PIPELINE_START_DATE)

    from als_core.synthetic import generate_events
    from pipelines.definitions import defs
    from pipelines.landing import write_day_files

    started = time.perf_counter()
    print(f"pipeline home: {settings.home}")
    total_days = args.days + 1
    events = generate_events(args.users, args.items, args.events * total_days // args.days, total_days,
                             seed=args.seed, start=start.isoformat())
    first_days = events[events["ts"] < pd.Timestamp(start + dt.timedelta(days=args.days))]
    next_day = events.drop(first_days.index)
    files = write_day_files(first_days, settings.landing_dir)
    print(f"landed {len(first_days):,} synthetic events in {len(files)} daily files under {settings.landing_dir}")

    definitions = defs()
    instance = dg.DagsterInstance.get()
    ingest = definitions.resolve_job_def("ingest")
    retrain = definitions.resolve_job_def("daily_retrain")

    # Dagster's own step logs stay in the instance (the UI shows them); the terminal gets warnings and this summary
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

    def ingest_days(days: list[dt.date]) -> tuple[int, int]:
        loaded = rejected = 0
        for day in days:
            result = ingest.execute_in_process(partition_key=day.isoformat(), instance=instance, run_config=quiet)
            loaded += _metadata_value(result, "events", "events", 0)
            rejected += _metadata_value(result, "events", "rejected", 0)
        return loaded, rejected

    summary = []
    days = [start + dt.timedelta(days=i) for i in range(args.days)]
    for label, landing, to_ingest in (
        (f"day {args.days}: first retrain", None, days),
        (f"day {args.days + 1}: next day's retrain", next_day, [start + dt.timedelta(days=args.days)]),
    ):
        if landing is not None:
            write_day_files(landing, settings.landing_dir)
        step = time.perf_counter()
        loaded, rejected = ingest_days(to_ingest)
        print(f"ingested {len(to_ingest)} partition(s): {loaded:,} events, {rejected:,} rejected "
              f"({time.perf_counter() - step:.0f}s)")
        step = time.perf_counter()
        result = retrain.execute_in_process(instance=instance, run_config=quiet)
        print(f"daily_retrain run {result.run_id[:8]}: {'success' if result.success else 'FAILED'} "
              f"({time.perf_counter() - step:.0f}s)")
        summary.append({
            "run": label, "events in": loaded, "rejected": rejected,
            "challenger NDCG@10": _metadata_value(result, "champion", "challenger_ndcg_at_10"),
            "champion NDCG@10": _metadata_value(result, "champion", "champion_ndcg_at_10"),
            "popularity NDCG@10": _metadata_value(result, "champion", "popularity_ndcg_at_10"),
            "decision": _metadata_value(result, "champion", "decision"),
            "champion version": _metadata_value(result, "champion", "champion_version"),
        })

    columns = list(summary[0])
    widths = {c: max(len(c), *(len(_format(row[c])) for row in summary)) for c in columns}
    print()
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in summary:
        print("  ".join(_format(row[c]).ljust(widths[c]) for c in columns))
    print(f"\ndone in {time.perf_counter() - started:.0f}s. Champion model: models:/{settings.model_name}@champion "
          f"in {settings.mlflow_tracking_uri}")
    print("next: `make ui` (Dagster UI), `make mlflow-ui` (MLflow UI), `make serve` (REST API), "
          "`.venv/bin/python -m pipelines status`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
