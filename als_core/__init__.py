"""als_core: the numeric core (numpy, scipy, numba only; nothing of Dagster, MLflow, DuckDB or FastAPI)."""
