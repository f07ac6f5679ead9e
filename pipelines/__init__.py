"""Dagster code location: orchestration, storage and the model registry (maths lives in als_core)."""

import os

# MLflow reports usage to its maintainers unless told not to (Dagster's reporting is off in
# pipelines/dagster.yaml): a pipeline trusted with its users' data keeps to itself. The API imports this
# package too. MLFLOW_DISABLE_TELEMETRY=false in the environment turns the reporting back on.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
