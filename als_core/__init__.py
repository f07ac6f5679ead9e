"""als_core: the numeric core (numpy, scipy, numba only; nothing of Dagster, MLflow, DuckDB or FastAPI)."""

from .als import ALS
from .bundle import ModelBundle, evaluate_on_holdout
from .hyperparameters import Hyperparameters
from .popularity import PopularityRecommender

__all__ = ["ALS", "Hyperparameters", "ModelBundle", "PopularityRecommender", "evaluate_on_holdout"]
