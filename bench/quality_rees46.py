"""Ranking quality on the REES46 e-commerce sample: popularity, seed-default ALS and tuned ALS.

    .venv/bin/python bench/quality_rees46.py [--data ../shared/data/rees46-2019oct-head/events.clean.csv.gz]

Protocol: events weighted as the pipeline does by default (view=3, cart=10, purchase=40, summed per user and
item), a per-user random 80/20 split (seed 42) among users with at least two items, top-10 excluding training
items. The tuned point comes from `als_core.tuning.tune` on a validation split of the training part only.
Beyond-accuracy measures (`als_core.diversity`) are printed beside NDCG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from als_core import ALS, Hyperparameters, PopularityRecommender
from als_core.diversity import beyond_accuracy
from als_core.hyperparameters import DEFAULTS
from als_core.metrics import evaluate_ranking
from als_core.splits import random_holdout
from als_core.tuning import tune

DEFAULT_DATA = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rees46-2019oct-head"
                / "events.clean.csv.gz")
WEIGHTS = {"view": 3.0, "cart": 10.0, "purchase": 40.0}
SEED = 42
SPACE = {"factors": [16, 32, 64], "regularization": [0.1, 1.0, 10.0], "alpha": [0.1, 1.0, 5.0]}


def load_interactions(path: Path) -> sp.csr_matrix:
    events = pd.read_csv(path, usecols=["event_type", "product_id", "user_id"])
    events["weight"] = events["event_type"].map(WEIGHTS)
    events = events.dropna(subset=["weight"])
    summed = events.groupby(["user_id", "product_id"], as_index=False)["weight"].sum()
    users, user_index = np.unique(summed["user_id"].to_numpy(), return_inverse=True)
    items, item_index = np.unique(summed["product_id"].to_numpy(), return_inverse=True)
    return sp.csr_matrix((summed["weight"].to_numpy(np.float32), (user_index, item_index)),
                         shape=(len(users), len(items)))


def report(name: str, ids: np.ndarray, train, test, users) -> None:
    accuracy = evaluate_ranking(ids, test[users], n_items=train.shape[1], k=10)
    beyond = beyond_accuracy(ids, train, k=10)
    print(f"| {name} | {accuracy['ndcg@10']:.4f} | {accuracy['hit_rate@10']:.4f} | {accuracy['recall@10']:.4f} | "
          f"{beyond['coverage@10']:.4f} | {beyond['entropy@10']:.3f} | {beyond['novelty@10']:.2f} | "
          f"{beyond['popular_share@10']:.3f} |")


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
    popularity = PopularityRecommender().fit(train)
    report("popularity", popularity.recommend(users, train[users], N=10)[0], train, test, users)
    seed = ALS.from_hyperparameters(DEFAULTS.replace(random_state=SEED)).fit(train)
    report(f"ALS seed defaults ({DEFAULTS.factors}, {DEFAULTS.regularization:g}, {DEFAULTS.alpha:g})",
           seed.recommend(users, train[users], N=10)[0], train, test, users)
    searched = tune(train, SPACE, base=Hyperparameters(iterations=15), validation_fraction=0.2, seed=SEED)
    tuned = ALS(iterations=15, random_state=SEED, **searched.best_params).fit(train)
    label = "ALS tuned ({factors}, {regularization}, {alpha})".format(**searched.best_params)
    report(label, tuned.recommend(users, train[users], N=10)[0], train, test, users)
    print(f"\ntuning: {len(searched.points)} points ({sum(p.stopped_early for p in searched.points)} stopped early), "
          f"best validation NDCG@10 {searched.best_ndcg:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
