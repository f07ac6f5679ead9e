"""Dagster definitions, one module per concern; `pipelines.definitions` loads every module here."""
