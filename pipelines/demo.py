"""The main job, end to end on embedded defaults (`make run`).

    python -m pipelines.demo [--events 1000000 --days 30 --users 20000 --items 4000 --sparse-days 7]

1. writes synthetic events as daily landing files (one file per day) for ``--days`` days,
2. ingests every day (the `ingest` job, one run per partition) into the DuckDB warehouse,
3. runs the `daily_retrain` job: interactions -> training data -> challenger -> evaluation -> champion ->
   recommendations, tracked and registered in MLflow,
4. lands one more day, ingests it and retrains again (the next day's scheduled run),
5. lands ``--sparse-days`` days of deliberately sparse traffic (new visitors, a few events each on trending
   items, no taste to learn: a first week of a shop, or a log like Taobao's sample) and retrains on those
   days only (`interactions` window = ``--sparse-days``): ALS loses to popularity on the holdout, so the gate
   registers the popularity model and promotes it (``--sparse-days 0`` skips this),
6. starts the API (`python -m serving`) on a free port and asks it what it serves,
7. prints what it did.

Runs go through the project's persistent Dagster instance (`Settings.dagster_home`), so `dagster dev`
shows them afterwards. Everything is written under `ALS_PIPELINE_HOME` (default `.data/`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from als_store.settings import Settings

SPARSE_FIRST_USER = 10_000_000  # the sparse week's visitors are new: ids apart from the synthetic users
API_START_TIMEOUT_S = 120.0


def sparse_events(n_days: int, events_per_day: int, n_users: int, n_items: int, start: dt.date,
                  seed: int = 0, first_user: int = SPARSE_FIRST_USER) -> pd.DataFrame:
    """Sparse traffic without personal taste: each event is a random visitor (ids from ``first_user``) on an
    item drawn from one Zipf-like popularity over ``n_items`` items (ids 1..n_items, in random order), 90%
    views, 7% carts, 3% purchases, spread over ``n_days`` days from ``start``. About
    ``n_days * events_per_day / n_users`` events per visitor: too few, and too impersonal, for ALS to beat
    counting what is popular."""
    rng = np.random.default_rng(seed)
    n = n_days * events_per_day
    weights = 1.0 / np.arange(1, n_items + 1)
    items = (rng.permutation(n_items) + 1)[rng.choice(n_items, n, p=weights / weights.sum())]
    seconds = rng.integers(0, n_days * 86_400, n)
    ts = pd.Timestamp(start) + pd.to_timedelta(np.sort(seconds), "s")
    return pd.DataFrame({
        "user_id": rng.integers(0, n_users, n) + first_user,
        "item_id": items,
        "event_type": rng.choice(np.array(["view", "cart", "purchase"]), n, p=[0.90, 0.07, 0.03]),
        "ts": ts,
    })


def _metadata_value(result, node: str, key: str, default=None):
    materializations = result.asset_materializations_for_node(node)
    if not materializations or key not in materializations[-1].metadata:
        return default
    return materializations[-1].metadata[key].value


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ask_the_api(settings: Settings, known_user, item) -> list[str]:
    """Start `python -m serving` on a free 127.0.0.1 port over this home, ask /model, a known and an unknown
    user's recommendations and ``item``'s similar items; return one line per answer."""
    import httpx

    port = _free_port()
    env = {**os.environ, "ALS_PIPELINE_HOME": str(settings.home), "ALS_SERVING_FOLD_IN": "0"}
    log = settings.home / "demo-serving.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "serving", "--port", str(port), "--log-level", "warning"],
                                   env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    lines = [f"API: python -m serving on http://127.0.0.1:{port} (log {log})"]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as api:
            deadline = time.monotonic() + API_START_TIMEOUT_S
            while True:
                try:
                    if api.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    return lines + [f"  the API did not become ready (exit code {process.poll()}): see {log}"]
                time.sleep(0.25)
            model = api.get("/model").json()
            lines.append(f"  GET /model -> {model['name']} v{model['version']}, kind {model['kind']}, "
                         f"NDCG@10 {_format(model['ndcg_at_10'])}")
            for user, who in ((known_user, "a visitor of the sparse week: its items excluded"),
                              ("new-visitor", "unknown to the model")):
                answer = api.get(f"/recommendations/{user}", params={"n": 5}).json()
                items = ", ".join(str(entry["item_id"]) for entry in answer["recommendations"])
                lines.append(f"  GET /recommendations/{user}?n=5 -> {answer['source']}: [{items}] ({who})")
            similar = api.get(f"/similar-items/{item}", params={"n": 5})
            lines.append(f"  GET /similar-items/{item}?n=5 -> {similar.status_code}: "
                         f"{similar.json().get('detail', similar.json())}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=4_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sparse-days", type=int, default=7,
                        help="days of sparse traffic landed and retrained on after the synthetic days, where "
                             "popularity beats ALS (0: none)")
    parser.add_argument("--sparse-events-per-day", type=int, default=6_000)
    parser.add_argument("--no-api", action="store_true", help="do not start the API at the end")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    from pipelines.instance import prepare_dagster_home

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the summary readable

    os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(settings))
    import dagster as dg  # after DAGSTER_HOME: the instance reads it

    from pipelines.defs.partitions import daily_partitions

    start = daily_partitions().start.date()  # the first `events` partition (ALS_PIPELINE_START_DATE)

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

    sparse_start = start + dt.timedelta(days=total_days)
    sparse = (sparse_events(args.sparse_days, args.sparse_events_per_day, n_users=args.users // 2,
                            n_items=args.items, start=sparse_start, seed=args.seed + 1)
              if args.sparse_days > 0 else None)
    phases = [
        (f"days 1-{args.days}", None, [start + dt.timedelta(days=i) for i in range(args.days)], {}),
        (f"day {total_days}", next_day, [start + dt.timedelta(days=args.days)], {}),
    ]
    if sparse is not None:
        last = total_days + args.sparse_days
        phases.append((f"days {total_days + 1}-{last} (sparse)", sparse,
                       [sparse_start + dt.timedelta(days=i) for i in range(args.sparse_days)],
                       {"interactions": {"config": {"window_days": args.sparse_days}}}))

    summary = []
    for label, landing, to_ingest, ops in phases:
        if landing is not None:
            write_day_files(landing, settings.landing_dir)
        step = time.perf_counter()
        loaded, rejected = ingest_days(to_ingest)
        print(f"ingested {len(to_ingest)} partition(s): {loaded:,} events, {rejected:,} rejected "
              f"({time.perf_counter() - step:.0f}s)")
        step = time.perf_counter()
        result = retrain.execute_in_process(instance=instance, run_config={**quiet, "ops": ops} if ops else quiet)
        print(f"daily_retrain run {result.run_id[:8]}: {'success' if result.success else 'FAILED'} "
              f"({time.perf_counter() - step:.0f}s)")
        champion = _metadata_value(result, "champion", "champion_version")
        kind = _metadata_value(result, "champion", "champion_kind")
        summary.append({
            "retrain on": label, "events in": loaded, "rejected": rejected,
            "challenger": _metadata_value(result, "champion", "challenger_ndcg_at_10"),
            "champion": _metadata_value(result, "champion", "champion_ndcg_at_10"),
            "popularity": _metadata_value(result, "champion", "popularity_ndcg_at_10"),
            "decision": _metadata_value(result, "champion", "decision"),
            "champion now": champion if kind in (None, "none") else f"v{champion} {kind}",
        })

    columns = list(summary[0])
    widths = {c: max(len(c), *(len(_format(row[c])) for row in summary)) for c in columns}
    print("\nNDCG@10 of challenger, champion (re-scored) and popularity on the same holdout (the retrain's last day):")
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in summary:
        print("  ".join(_format(row[c]).ljust(widths[c]) for c in columns).rstrip())
    if sparse is not None and not args.no_api:
        print()
        visitor = sparse["user_id"].iloc[0]
        for line in ask_the_api(settings, visitor, sparse["item_id"].iloc[0]):
            print(line)
    print(f"\ndone in {time.perf_counter() - started:.0f}s. Champion model: models:/{settings.model_name}@champion "
          f"in {settings.mlflow_tracking_uri}")
    print("next: `make ui` (Dagster UI), `make mlflow-ui` (MLflow UI), `make serve` (REST API), "
          "`.venv/bin/python -m pipelines status`, `.venv/bin/python -m pipelines registry rollback` "
          "(back to the previous champion)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
