"""als_core: the numeric core (numpy, scipy, numba only; nothing of Dagster, MLflow, DuckDB or FastAPI)."""

from .als import ALS

__all__ = ["ALS"]
