"""Warm-started retrains on the daily retrain benchmark's data: fit seconds and holdout NDCG@10 of a challenger
that starts from yesterday's champion with fewer iterations, against a cold start with the default ones.

    .venv/bin/python bench/warm_start.py [--events 10000000 --days 30 --users 200000 --items 20000]
                                         [--warm-iterations 1 2 3 5 8] [--repeats 2] [--cold-seeds 3]

The events are bench/pipeline.py's (the same generator, sizes and seed: 30 days and one more). Yesterday's
training data is the 30-day window before the extra day, today's the window ending on it, each split as the
`training_data` asset does (temporal: pairs first seen on the window's last day are the holdout), with the
default event weights. Yesterday's champion is a cold fit of the default hyperparameters on yesterday's data.
Today's challengers, on today's data, as the `challenger` asset fits them (als_core.warm_start):
- cold: the seeded initialisation, the default iterations;
- warm k: the champion's factors for the users and items both days know (new ones seeded), k iterations. Its
  seconds include loading the champion's bundle from disk and copying its factors, as the asset does.
Each fit runs --repeats times, cold and warm alternating; the best seconds count. NDCG@10 is the evaluation
asset's (`evaluate_on_holdout` on today's holdout), with the list stability against the champion beside it
(mean Jaccard of the top 10, share of first items changed; the same holdout users).

Warm k wins when its NDCG@10 is no lower than the cold start's and its seconds are fewer. The target: the
challenger's default is what the figures say. With `ChallengerConfig.warm_start` `champion` by default, its
default `warm_start_iterations` (always among the k measured) must win; with `none`, no k may win.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from targets import Targets


def training_windows(args):
    """Yesterday's and today's training data: temporal splits of the --days windows ending on the last two
    days of the events, weighted with the default event weights."""
    from als_core.synthetic import generate_events
    from als_core.weighting import DEFAULT_WEIGHTING
    from pipelines.training_data import temporal_split

    start = dt.date(2026, 1, 1)
    total_events = args.events + args.events // args.days  # bench/pipeline.py's events: --days and one more
    events = generate_events(args.users, args.items, total_events, args.days + 1, seed=0, start=start.isoformat())
    weight = {kind: getattr(DEFAULT_WEIGHTING, f"{kind}_weight") for kind in ("view", "cart", "purchase")}
    days = events["ts"].to_numpy().astype("datetime64[D]")
    weights = events["event_type"].map(weight).to_numpy(dtype=np.float64)
    users, items = events["user_id"].to_numpy(), events["item_id"].to_numpy()
    windows = []
    for last in (args.days - 1, args.days):
        first_day, last_day = start + dt.timedelta(days=last - args.days + 1), start + dt.timedelta(days=last)
        keep = (days >= np.datetime64(first_day)) & (days <= np.datetime64(last_day))
        windows.append(temporal_split(users[keep], items[keep], days[keep], weights[keep], first_day, last_day))
    return windows


def ndcg_and_stability(model, data, champion) -> tuple[float, object]:
    from als_core.bundle import ModelBundle, evaluate_on_holdout, holdout_users
    from als_core.stability import bundle_list_stability

    bundle = ModelBundle.build(model, data.user_ids, data.item_ids, data.train)
    users = holdout_users(data.holdout_user_ids)
    lists = bundle.recommend_many(users, n=10)
    ndcg = evaluate_on_holdout(bundle, data.holdout_user_ids, data.holdout_item_ids, k=10, lists=lists)["ndcg@10"]
    stability = bundle_list_stability(champion, champion.recommend_many(users, n=10).item_index, bundle,
                                      lists.item_index, 10)
    return ndcg, stability


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000,
                        help="events over --days (the extra day adds its share)")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--warm-iterations", type=int, nargs="+", default=[1, 2, 3, 5, 8])
    parser.add_argument("--repeats", type=int, default=2, help="fits per variant, alternating (best counts)")
    parser.add_argument("--cold-seeds", type=int, default=3,
                        help="cold fits with n seeds: the spread of NDCG@10 between seeds (context, not judged)")
    args = parser.parse_args()

    from als_core import ALS
    from als_core.bundle import ModelBundle
    from als_core.hyperparameters import DEFAULTS
    from als_core.warm_start import warm_start
    from pipelines.defs.model_assets import ChallengerConfig

    defaults = ChallengerConfig()
    default_k = defaults.warm_start_iterations or DEFAULTS.iterations  # what a default warm start runs
    ks = sorted(set(args.warm_iterations) | ({default_k} if defaults.warm_start == "champion" else set()))
    t = time.perf_counter()
    yesterday, today = training_windows(args)
    print(f"{args.events:,} synthetic events (bench/pipeline.py's), {args.users:,} users x {args.items:,} items; "
          f"training data in {time.perf_counter() - t:.1f}s")
    for label, data in (("yesterday", yesterday), ("today", today)):
        print(f"  {label}: {data.window_start}..{data.window_end}, {len(data.user_ids):,} users x "
              f"{len(data.item_ids):,} items, {data.train.nnz:,} nonzeros, {data.holdout_pairs:,} holdout pairs")
    hyperparameters = DEFAULTS.replace(random_state=defaults.seed)  # the challenger's defaults, its seed included
    print(f"hyperparameters: {hyperparameters}")
    ALS(factors=4, iterations=1).fit(today.train[:1000])  # numba compiles here, outside every timing

    t = time.perf_counter()
    champion_model = ALS.from_hyperparameters(hyperparameters).fit(yesterday.train)
    print(f"champion (cold, {hyperparameters.iterations} iterations on yesterday's data): {time.perf_counter() - t:.1f}s")
    champion = ModelBundle.build(champion_model, yesterday.user_ids, yesterday.item_ids, yesterday.train)
    workdir = Path(tempfile.mkdtemp(prefix="als-bench-warm-start-"))
    champion_dir = champion.save(workdir / "champion")

    def cold_fit():
        started = time.perf_counter()
        model = ALS.from_hyperparameters(hyperparameters).fit(today.train)
        return model, time.perf_counter() - started, 0.0

    def warm_fit(iterations: int):
        started = time.perf_counter()
        model = ALS.from_hyperparameters(hyperparameters.replace(iterations=iterations))
        started_from = warm_start(model, ModelBundle.load(champion_dir), today.user_ids, today.item_ids)
        prepared = time.perf_counter() - started
        model.fit(today.train)
        return model, time.perf_counter() - started, prepared, started_from

    best: dict[str, tuple[float, object, float]] = {}
    shared = None
    for _ in range(args.repeats):
        model, seconds, prepared = cold_fit()
        if "cold" not in best or seconds < best["cold"][0]:
            best["cold"] = (seconds, model, prepared)
        for k in ks:
            model, seconds, prepared, shared = warm_fit(k)
            if f"warm {k}" not in best or seconds < best[f"warm {k}"][0]:
                best[f"warm {k}"] = (seconds, model, prepared)
    shutil.rmtree(workdir)
    print(f"warm start: {shared.users:,}/{shared.n_users:,} users and {shared.items:,}/{shared.n_items:,} items "
          f"from the champion")

    print(f"\nbest of {args.repeats}, today's holdout ({today.holdout_pairs:,} pairs):")
    print(f"  {'challenger':12} {'iterations':>10} {'seconds':>8} {'of which loading+copying':>25} {'NDCG@10':>8} "
          f"{'Jaccard vs champion':>20} {'first item changed':>19}")
    figures = {}
    for label, (seconds, model, prepared) in best.items():
        ndcg, stability = ndcg_and_stability(model, today, champion)
        figures[label] = (seconds, ndcg)
        print(f"  {label:12} {model.iterations:>10} {seconds:>8.2f} {prepared:>25.2f} {ndcg:>8.5f} "
              f"{stability.mean_jaccard:>20.3f} {stability.first_item_changed:>19.1%}")
    cold_seconds, cold_ndcg = figures["cold"]
    if args.cold_seeds > 1:
        seeds = range(defaults.seed + 1, defaults.seed + args.cold_seeds)
        spread = [cold_ndcg] + [
            ndcg_and_stability(ALS.from_hyperparameters(hyperparameters.replace(random_state=seed)).fit(today.train),
                               today, champion)[0] for seed in seeds]
        print(f"  cold NDCG@10 over {args.cold_seeds} seeds: {min(spread):.5f}..{max(spread):.5f} "
              f"(spread {max(spread) - min(spread):.5f}; seed {hyperparameters.random_state} is the one judged)")
    winners = [k for k in ks if figures[f"warm {k}"][1] >= cold_ndcg and figures[f"warm {k}"][0] < cold_seconds]
    for k in ks:
        seconds, ndcg = figures[f"warm {k}"]
        print(f"  warm {k} against cold: {seconds / cold_seconds:.2f}x the seconds, NDCG@10 {ndcg - cold_ndcg:+.5f}"
              f"{'  (wins both)' if k in winners else ''}")

    targets = Targets()
    said = f"warm start wins with {', '.join(map(str, winners))} iterations" if winners else "no warm start wins both"
    if defaults.warm_start == "champion":
        met = default_k in winners
        default = f"warm_start champion, warm_start_iterations {default_k}"
    else:
        met = not winners
        default = "warm_start none"
    print(f"\n{said}; ChallengerConfig's default: {default}  "
          f"{targets.verdict(met, 'the challenger default agrees with the figures')}")
    return targets.exit_status()


if __name__ == "__main__":
    sys.exit(main())
