"""The Spark engine's own code: the job Spark runs (`job.py`, a standalone script), the Parquet exchange with it
(`exchange.py`) and the hyperparameter mapping (`params.py`). The Dagster side is pipelines/defs/spark_resource.py.
Nothing here imports pyspark at import time except `job.py`'s Spark functions, which a cluster runs."""
