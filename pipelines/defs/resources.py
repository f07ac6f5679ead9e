"""The resources of the code location, for every module under `pipelines/defs/`.

Keys: `duckdb` (DuckDBResource, below) and `mlflow` (MLflowResource from
`pipelines/defs/mlflow_resource.py`). Paths come from `Settings.from_env()` when the definitions
load, so `ALS_PIPELINE_HOME` moves them all.
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import dagster as dg
import duckdb
from pydantic import Field

from als_store import warehouse
from als_store.settings import Settings


class DuckDBResource(dg.ConfigurableResource):
    """The DuckDB warehouse file. Open it per step with `with duckdb.connect() as con:` and close it
    before long computations: DuckDB allows one writing process per file (assets that open it are
    in pool `duckdb`, limited to 1 by the project's dagster.yaml)."""

    database: str = Field(description="Absolute path of the DuckDB file (Settings.duckdb_path).")
    lock_timeout_s: float = Field(
        default=warehouse.DEFAULT_LOCK_TIMEOUT_S,
        description="How long to wait for another process's lock on the file before failing.",
    )

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        log = dg.get_dagster_logger()
        with warehouse.open_warehouse(
            self.database, read_only=read_only, lock_timeout_s=self.lock_timeout_s, on_wait=log.info
        ) as con:
            yield con


def build_resources(settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or Settings.from_env()
    resources: dict[str, Any] = {"duckdb": DuckDBResource(database=str(settings.duckdb_path))}
    try:
        from pipelines.defs.mlflow_resource import MLflowResource
    except ModuleNotFoundError as error:  # the model half is optional for the ingest half
        if error.name != "pipelines.defs.mlflow_resource":
            raise
    else:
        resources["mlflow"] = MLflowResource.from_settings(settings)
    return resources
