"""A self-contained tour of als_core on synthetic data: train, evaluate against popularity, recommend.

    python -m als_core.demo [--users 20000 --items 5000 --nnz 500000]
"""

from __future__ import annotations

import argparse
import logging
import time

from . import ALS, PopularityRecommender
from .metrics import evaluate_ranking
from .splits import random_holdout
from .synthetic import generate_user_items


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--nnz", type=int, default=500_000)
    parser.add_argument("--factors", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    started = time.perf_counter()
    user_items = generate_user_items(args.users, args.items, args.nnz, seed=0)
    train, test = random_holdout(user_items, fraction=0.2, seed=0)
    print(f"synthetic interactions: {user_items.shape[0]} users x {user_items.shape[1]} items, "
          f"{user_items.nnz} nonzeros ({time.perf_counter() - started:.1f}s); train {train.nnz}, holdout {test.nnz}")

    users = (test.getnnz(axis=1) > 0).nonzero()[0]
    results = {}
    popularity = PopularityRecommender().fit(train)
    ids, _ = popularity.recommend(users, train[users], N=10)
    results["popularity"] = evaluate_ranking(ids, test[users], n_items=train.shape[1])
    for solver in ("cg", "cholesky"):
        model = ALS(factors=args.factors, regularization=1.0, alpha=10.0, iterations=10, solver=solver,
                    random_state=0)
        fit_started = time.perf_counter()
        model.fit(train, show_progress=True)
        fit_seconds = time.perf_counter() - fit_started
        ids, _ = model.recommend(users, train[users], N=10)
        results[f"ALS {solver} ({fit_seconds:.1f}s fit)"] = evaluate_ranking(ids, test[users], n_items=train.shape[1])
    print(f"\n{'model':28} {'NDCG@10':>8} {'HitRate@10':>10} {'Recall@10':>9} {'Coverage@10':>11}")
    for name, m in results.items():
        print(f"{name:28} {m['ndcg@10']:8.4f} {m['hit_rate@10']:10.4f} {m['recall@10']:9.4f} {m['coverage@10']:11.4f}")
    ids, scores = model.recommend(int(users[0]), train[users[0]], N=5)
    print(f"\nuser {users[0]}: top-5 items {ids.tolist()} (scores {[round(float(s), 3) for s in scores]})")
    return results


if __name__ == "__main__":
    main()
