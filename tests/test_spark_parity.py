"""Spark's ALS and als_core agree on MovieLens 100K: the same hyperparameters on both engines give the same
ranking quality on the same holdout (NDCG@10 within 2%) and the same final objective (within 1%).

Spark trains through the engine the challenger uses (the `spark` resource running als_spark/job.py under Pipes,
in a Dagster run, on local[2]); als_core fits `als_spark.params.als_core_equivalent` of the same
hyperparameters (ALS-WR, exact solves: Spark's objective). Both models are scored by the same als_core code, so
the comparison is of the factors alone. The protocol is bench/quality_ml100k.py's: every rating an implicit
event, a per-user random 75/25 split with seed 42, top-10 without training items.
"""

from __future__ import annotations

import gzip

import dagster as dg
import numpy as np
import pytest
import scipy.sparse as sp

from als_core import ALS, Hyperparameters
from als_core.metrics import evaluate_ranking
from als_core.splits import random_holdout
from als_spark.params import als_core_equivalent
from conftest import shared_data_file
from pipelines.defs.spark_resource import SparkEngine

pytestmark = pytest.mark.slow

# A good point for ALS-WR on this split (NDCG@10 ~0.48, popularity ~0.25), where two als_core seeds differ by
# ~0.4% in NDCG@10 and ~0.01% in the objective: the tolerances measure the engines, not the starting point.
HYPERPARAMETERS = Hyperparameters(factors=32, regularization=0.1, alpha=1.0, iterations=15, random_state=0)
SEED = 42
K = 10


def movielens_split() -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """MovieLens 100K as implicit events (r = 1), per-user random 75/25 holdout."""
    with gzip.open(shared_data_file("ml-100k/u.data.gz"), "rt") as handle:
        table = np.loadtxt(handle, dtype=np.int64)
    users, items = table[:, 0] - 1, table[:, 1] - 1
    ratings = sp.csr_matrix((np.ones(len(table), dtype=np.float32), (users, items)),
                            shape=(users.max() + 1, items.max() + 1))
    return random_holdout(ratings, fraction=0.25, seed=SEED)


def spark_model(pipeline, train: sp.csr_matrix, hyperparameters: Hyperparameters) -> ALS:
    """Spark's factors for ``train`` (the `spark` resource in a Dagster run), in the als_core model of Spark's
    objective."""
    fits = []

    @dg.asset
    def spark_fit(context, spark: SparkEngine):
        fits.append(spark.fit(context, train, hyperparameters))
        return dg.MaterializeResult()

    assert dg.materialize([spark_fit], resources={"spark": SparkEngine(pipeline=pipeline, master="local[2]")}).success
    [fit] = fits
    model = ALS.from_hyperparameters(als_core_equivalent(hyperparameters))
    model.user_factors, model.item_factors = fit.user_factors, fit.item_factors
    return model


def ndcg(model: ALS, train: sp.csr_matrix, test: sp.csr_matrix) -> float:
    users = np.flatnonzero(np.diff(test.indptr))
    ids, _ = model.recommend(users, train[users], N=K)
    return evaluate_ranking(ids, test[users], n_items=train.shape[1], k=K)[f"ndcg@{K}"]


def test_spark_and_als_core_agree_on_movielens_100k(pipeline):
    train, test = movielens_split()
    ours = ALS.from_hyperparameters(als_core_equivalent(HYPERPARAMETERS)).fit(train)
    spark = spark_model(pipeline, train, HYPERPARAMETERS)
    assert spark.user_factors.shape == ours.user_factors.shape and spark.item_factors.shape == ours.item_factors.shape

    ndcg_ours, ndcg_spark = ndcg(ours, train, test), ndcg(spark, train, test)
    objective_ours, objective_spark = ours.objective(train), spark.objective(train)
    assert objective_ours == pytest.approx(ours.loss_history[-1], rel=1e-5)
    print(f"NDCG@{K}: als_core {ndcg_ours:.4f}, Spark {ndcg_spark:.4f}; objective: als_core {objective_ours:.6f}, "
          f"Spark {objective_spark:.6f}")
    assert ndcg_ours > 0.4  # a model worth comparing (popularity: ~0.25)
    assert abs(ndcg_spark - ndcg_ours) <= 0.02 * ndcg_ours
    assert abs(objective_spark - objective_ours) <= 0.01 * objective_ours
