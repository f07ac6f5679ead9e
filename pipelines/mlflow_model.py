"""The registered model, as an MLflow "models from code" pyfunc: this file is logged as the model's code and
the `als_core.bundle.ModelBundle` directory (arrays + JSON, no pickles) as its artifact ``bundle``.

The same file serves both kinds of bundle (``als`` and ``popularity``, said by the bundle itself).

Input: a DataFrame with a ``user_id`` column. Params: ``n`` (top-N, default 10; declared in the signature, see
`pipelines.registry.registration.model_signature`). Output: one row per (user, rank): ``user_id, rank, item_id,
score, source`` where source is "als" for users an ALS model knows and "popularity" for the others (for every user of
a popularity model, known users without their seen items), exactly as the serving API answers. Needs
`als_core` and `als_store` importable (this project installed).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from als_store.model_tags import BUNDLE_ARTIFACT_KEY, DEFAULT_N


class RecommenderModel(PythonModel):
    """Top-N recommendations from a ModelBundle of either kind."""

    def load_context(self, context) -> None:
        from als_core.bundle import ModelBundle

        self.bundle = ModelBundle.load(context.artifacts[BUNDLE_ARTIFACT_KEY])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        n = int((params or {}).get("n", DEFAULT_N))
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if "user_id" not in model_input.columns:
            raise ValueError(f"input needs a `user_id` column, got {list(model_input.columns)}")
        user_ids = model_input["user_id"].to_numpy()
        return recommendations_frame(user_ids, self.bundle.recommend_many(user_ids, n=n))


def recommendations_frame(user_ids, recs) -> pd.DataFrame:
    """`als_core.bundle.Recommendations` in long format; padded slots (fewer candidates than n) dropped."""
    rows, ranks = np.nonzero(recs.item_index >= 0)
    return pd.DataFrame({
        "user_id": np.asarray(user_ids)[rows],
        "rank": (ranks + 1).astype(np.int64),
        "item_id": recs.item_ids[recs.item_index[rows, ranks]],
        "score": recs.scores[rows, ranks].astype(np.float64),
        "source": recs.sources[rows].astype(str),
    })


mlflow.models.set_model(RecommenderModel())
