"""What the pipeline and the API share on the read side: where things live (settings), the DuckDB
warehouse, the SQL files, and the model registry's read side with its tag keys. No Dagster here."""

import os

# MLflow reports usage to its maintainers unless told not to (Dagster's reporting is off in
# pipelines/dagster.yaml): a pipeline trusted with its users' data keeps to itself. Both the pipeline and
# the API import this package first. MLFLOW_DISABLE_TELEMETRY=false in the environment turns it back on.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
