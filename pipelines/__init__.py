"""Dagster code location: orchestration, storage and the model registry (maths lives in als_core)."""
