"""Dagster code location: orchestration, storage and the model registry (maths lives in als_core, the
read side shared with the API in als_store)."""

import als_store  # noqa: F401  (MLflow's telemetry off before anything imports mlflow)
