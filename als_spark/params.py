"""The hyperparameters of als_core in Spark MLlib's terms, and the als_core model that solves Spark's problem.

Spark's implicit ALS minimises the objective of als_core's ALS (confidence 1 + alpha * r, preference r > 0)
with the regularisation of each user and item scaled by its number of positive ratings (ALS-WR:
`weighted_regularization=True` here), solving every row exactly (als_core's `solver="cholesky"`). Spark holds
float32 factors and always seeds its initialisation; it has neither biases nor a convergence tolerance.

| als_core            | Spark ALS                                   |
| ------------------- | ------------------------------------------- |
| factors             | rank                                        |
| iterations          | maxIter                                     |
| regularization      | regParam (times the row's ratings, always)  |
| alpha               | alpha                                       |
| implicit            | implicitPrefs                               |
| random_state        | seed (None: 0, Spark has no unseeded fit)   |
| solver, cg_steps    | - (Spark solves exactly: Cholesky)          |
| dtype               | - (float32)                                 |
"""

from __future__ import annotations

from als_core.hyperparameters import Hyperparameters


def spark_als_params(hp: Hyperparameters) -> dict:
    """Keyword arguments of `pyspark.ml.recommendation.ALS` for ``hp``; ValueError for what Spark cannot fit."""
    if hp.use_biases:
        raise ValueError("Spark's ALS has no user or item biases: use_biases must be false on the spark engine")
    if hp.tol is not None:
        raise ValueError("Spark's ALS runs every iteration (no tol): leave tol unset on the spark engine")
    return {"rank": hp.factors, "maxIter": hp.iterations, "regParam": hp.regularization, "alpha": hp.alpha,
            "implicitPrefs": hp.implicit, "seed": 0 if hp.random_state is None else hp.random_state,
            "nonnegative": False}


def als_core_equivalent(hp: Hyperparameters) -> Hyperparameters:
    """The als_core hyperparameters that fit and evaluate the objective Spark minimises for ``hp``."""
    spark_als_params(hp)  # the same checks
    return hp.replace(weighted_regularization=True, solver="cholesky")
