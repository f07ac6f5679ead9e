-- The model that wrote `recommendations` (no row: never written).
SELECT model_name, model_version, mlflow_run_id, n FROM recommendations_model;
