"""The registered model, as an MLflow "models from code" pyfunc: this file is logged as the model's code and
the `als_core.bundle.ModelBundle` directory (arrays + JSON, no pickles) as its artifact ``bundle``.

Input: a DataFrame with a ``user_id`` column. Params: ``n`` (top-N, default 10; declared in the signature, see
`pipelines.registry.model_signature`). Output: one row per (user, rank): ``user_id, rank, item_id, score,
source`` where source is "als" for users the model knows and "popularity" for the others, exactly as the
serving API answers. Needs `als_core` importable (this project installed).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

BUNDLE_ARTIFACT_KEY = "bundle"  # same key as pipelines.registry.BUNDLE_ARTIFACT_KEY (not imported: this
DEFAULT_N = 10                  # file is executed standalone by MLflow's loader)


class ALSRecommenderModel(PythonModel):
    """Top-N recommendations from a ModelBundle."""

    def load_context(self, context) -> None:
        from als_core.bundle import ModelBundle

        self.bundle = ModelBundle.load(context.artifacts[BUNDLE_ARTIFACT_KEY])

    def predict(self, context, model_input, params=None):
        n = int((params or {}).get("n", DEFAULT_N))
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if "user_id" not in model_input.columns:
            raise ValueError(f"input needs a `user_id` column, got {list(model_input.columns)}")
        user_ids = np.asarray(model_input["user_id"].to_numpy()).astype(self.bundle.user_ids.dtype)
        items, scores, sources = self.bundle.recommend_many(user_ids, n=n)
        return recommendations_frame(user_ids, items, scores, sources)


def recommendations_frame(user_ids, items, scores, sources) -> pd.DataFrame:
    """Long format, padded slots dropped: a user with fewer than n candidate items gets fewer rows."""
    items = np.asarray(items)
    scores = np.asarray(scores, dtype=np.float64)
    n_users, n = scores.shape if scores.ndim == 2 else (len(user_ids), 0)
    valid = np.isfinite(scores)
    rows, ranks = np.nonzero(valid)
    return pd.DataFrame({
        "user_id": np.asarray(user_ids)[rows],
        "rank": (ranks + 1).astype(np.int64),
        "item_id": items[rows, ranks],
        "score": scores[rows, ranks],
        "source": np.asarray(sources).astype(str)[rows],
    })


mlflow.models.set_model(ALSRecommenderModel())
