"""Ranking quality on the REES46 e-commerce sample: the pipeline's tuning search against popularity, the seed
defaults and `implicit`, measured in the same run.

    .venv/bin/python bench/quality_rees46.py [--data ../shared/data/rees46-2019oct-head/events.clean.csv.gz]

Protocol: events weighted as the pipeline does by default (view=3, cart=10, purchase=40, summed per user and
item), a per-user random 80/20 split (seed 42) among users with at least two items, top-10 excluding training
items. The tuned point comes from `als_core.tuning.tune` (the `tuning` asset's default space and budget) on a
validation split of the training part only. Beyond-accuracy measures (`als_core.diversity`) are printed beside
NDCG.

Targets: the tuned pick's holdout NDCG@10 above popularity's and the seed defaults' (anchors of the same run),
and within 1% of `implicit` fitted at the same values. Exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import scipy.sparse as sp

from als_core import ALS, Hyperparameters, PopularityRecommender
from als_core.diversity import beyond_accuracy
from als_core.hyperparameters import DEFAULTS, SEARCH_SPACE
from als_core.metrics import evaluate_ranking
from als_core.splits import random_holdout
from als_core.tuning import tune
from quality_ml100k import implicit_anchor
from targets import Targets

DEFAULT_DATA = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rees46-2019oct-head"
                / "events.clean.csv.gz")
WEIGHTS = {"view": 3.0, "cart": 10.0, "purchase": 40.0}
SEED = 42


def load_interactions(path: Path) -> sp.csr_matrix:
    events = pd.read_csv(path, usecols=["event_type", "product_id", "user_id"])
    events["weight"] = events["event_type"].map(WEIGHTS)
    events = events.dropna(subset=["weight"])
    summed = events.groupby(["user_id", "product_id"], as_index=False)["weight"].sum()
    users, user_index = np.unique(summed["user_id"].to_numpy(), return_inverse=True)
    items, item_index = np.unique(summed["product_id"].to_numpy(), return_inverse=True)
    return sp.csr_matrix((summed["weight"].to_numpy(np.float32), (user_index, item_index)),
                         shape=(len(users), len(items)))


def report(name: str, ids: np.ndarray, train, test, users) -> float:
    accuracy = evaluate_ranking(ids, test[users], n_items=train.shape[1], k=10)
    beyond = beyond_accuracy(ids, train, k=10)
    print(f"| {name} | {accuracy['ndcg@10']:.4f} | {accuracy['hit_rate@10']:.4f} | {accuracy['recall@10']:.4f} | "
          f"{beyond['coverage@10']:.4f} | {beyond['entropy@10']:.3f} | {beyond['novelty@10']:.2f} | "
          f"{beyond['popular_share@10']:.3f} |")
    return accuracy["ndcg@10"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    if not args.data.exists():
        print(f"REES46 sample not found at {args.data}: skipping (see ../shared/data/README.md)")
        return 0
    interactions = load_interactions(args.data)
    train, test = random_holdout(interactions, fraction=0.2, seed=SEED)
    users = np.flatnonzero(np.diff(test.indptr))
    print(f"REES46 sample: {interactions.shape[0]} users x {interactions.shape[1]} items, {interactions.nnz} "
          f"weighted pairs; {len(users)} users with held-out items, {test.nnz} held-out pairs")
    print("\n| model | NDCG@10 | HitRate@10 | Recall@10 | Coverage@10 | Entropy@10 | Novelty@10 | Top-1% share |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    targets = Targets()
    popularity = PopularityRecommender().fit(train)
    popular = report("popularity (anchor)", popularity.recommend(users, train[users], N=10)[0], train, test, users)
    seed = ALS.from_hyperparameters(DEFAULTS.replace(random_state=SEED)).fit(train)
    defaults = report(f"ALS seed defaults ({DEFAULTS.factors}, {DEFAULTS.regularization:g}, {DEFAULTS.alpha:g})",
                      seed.recommend(users, train[users], N=10)[0], train, test, users)
    started = time.perf_counter()
    searched = tune(train, SEARCH_SPACE, base=Hyperparameters(iterations=15), seed=SEED)
    seconds = time.perf_counter() - started
    pick = searched.best_params
    tuned = ALS(iterations=15, random_state=SEED, **pick).fit(train)
    label = "ALS tuned ({factors}, {regularization:.3g}, {alpha:.3g})".format(**pick)
    ours = report(label, tuned.recommend(users, train[users], N=10)[0], train, test, users)
    anchor = report("implicit 0.7.3 at the tuned values (anchor)",
                    implicit_anchor(pick, train)(users, train[users])[0], train, test, users)
    print(f"\ntuning: {len(searched.trials)} trials = fits ({searched.pruned} pruned, {seconds:.0f}s), best "
          f"validation NDCG@10 {searched.best_ndcg:.4f}")
    print(f"tuned / popularity {ours / popular:.2f}x, tuned / seed defaults {ours / defaults:.2f}x (targets > 1)  "
          f"{targets.verdict(ours > popular and ours > defaults, 'tuned vs anchors')}")
    print(f"tuned / implicit at the same values {ours / anchor:.4f} (target >= 0.99)  "
          f"{targets.verdict(ours / anchor >= 0.99, 'ours vs implicit')}")
    return targets.exit_status()


if __name__ == "__main__":
    sys.exit(main())
