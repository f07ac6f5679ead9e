"""The resources of the code location, for every module under `pipelines/defs/`.

Keys: `pipeline` (PipelineSettings: where everything lives), `duckdb` (DuckDBResource), `mlflow`
(MLflowResource from `pipelines/defs/mlflow_resource.py`) and `spark` (SparkEngine from
`pipelines/defs/spark_resource.py`: where `engine: spark` runs). The others take their paths from the
`pipeline` resource they hold, so a path is spelled once: `als_store.settings.Settings.build`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import duckdb
from pydantic import Field, PrivateAttr

from als_store import warehouse
from als_store.settings import DEFAULT_HOME, DEFAULT_MODEL_NAME, VARIABLES, Settings
from pipelines import warehouse_claim

EVENT_PRESET_VARIABLE = "ALS_PIPELINE_EVENT_PRESET"


class PipelineSettings(dg.ConfigurableResource):
    """Where the pipeline's files and model live (`settings` gives the whole layout) and which kind of log
    the landing files are. Assets, checks and sensors take it instead of reading the environment."""

    home: str = Field(default=str(DEFAULT_HOME), description="Pipeline home (ALS_PIPELINE_HOME): the warehouse, "
                      "training snapshots, MLflow store and Dagster instance live under it.")
    landing_dir: str = Field(default="", description="Landing directory (ALS_PIPELINE_LANDING); empty: <home>/landing.")
    mlflow_tracking_uri: str = Field(default="", description="MLflow tracking and registry URI "
                                     "(MLFLOW_TRACKING_URI); empty: sqlite:///<home>/mlflow.db.")
    model_name: str = Field(default=DEFAULT_MODEL_NAME, description="Registered model name (ALS_MODEL_NAME).")
    event_preset: str = Field(default="default", description=f"Preset of the landing files' columns when the "
                              f"run config names none ({EVENT_PRESET_VARIABLE}).")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PipelineSettings:
        """A field whose variable is set becomes `dg.EnvVar(variable)`: Dagster reads it when a run or a sensor
        tick starts, in that process, and the UI and `dg list envs` show the variable's name. EnvVar has no
        default and fails a run whose variable is unset, so a field whose variable is unset when the definitions
        load keeps its default instead: the same as `Settings.from_env`'s."""
        env = os.environ if environ is None else environ
        variables = {**VARIABLES, "event_preset": EVENT_PRESET_VARIABLE}
        return cls(**{field: dg.EnvVar(name) for field, name in variables.items() if env.get(name)})

    @classmethod
    def of(cls, settings: Settings, event_preset: str = "default") -> PipelineSettings:
        """The resource for given settings (tests, scripts that run the assets in-process)."""
        return cls(home=str(settings.home), landing_dir=str(settings.landing_dir),
                   mlflow_tracking_uri=settings.mlflow_tracking_uri, model_name=settings.model_name,
                   event_preset=event_preset)

    @property
    def settings(self) -> Settings:
        """The layout under the home. Only in a run or a tick: before, a field may still be an unread EnvVar."""
        return Settings.build(**{field: getattr(self, field) for field in VARIABLES})


class DuckDBResource(dg.ConfigurableResource):
    """The DuckDB warehouse file. Open it per step with `with duckdb.connect() as con:` and close it
    before long computations: DuckDB allows one writing process per file (assets that open it are
    in pool `duckdb`, limited to 1 by the project's dagster.yaml). On an instance shared by machines (the
    production profile) a write also checks the instance's claim of the warehouse's machine
    (pipelines/warehouse_claim.py)."""

    pipeline: PipelineSettings
    lock_timeout_s: float = Field(
        default=warehouse.DEFAULT_LOCK_TIMEOUT_S,
        description="How long to wait for another process's lock on the file before failing.",
    )

    _instance: dg.DagsterInstance | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._instance = context.instance

    @property
    def database(self) -> str:
        """Absolute path of the DuckDB file (Settings.duckdb_path)."""
        return str(self.pipeline.settings.duckdb_path)

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        log = dg.get_dagster_logger()
        if not read_only:
            warehouse_claim.check_or_claim(self._instance, self.database)
        with warehouse.open_warehouse(
            self.database, read_only=read_only, lock_timeout_s=self.lock_timeout_s, on_wait=log.info
        ) as con:
            yield con


def build_resources(pipeline: PipelineSettings, spark: Any = None) -> dict[str, Any]:
    """Every resource of the code location, all at `pipeline`'s paths; `spark` (a SparkEngine) defaults to the one
    the environment configures (`SparkEngine.from_env`)."""
    # imported here: mlflow_resource and spark_resource import PipelineSettings from this module
    from pipelines.defs.mlflow_resource import MLflowResource
    from pipelines.defs.spark_resource import SparkEngine

    return {"pipeline": pipeline, "duckdb": DuckDBResource(pipeline=pipeline), "mlflow": MLflowResource(pipeline=pipeline),
            "spark": spark if spark is not None else SparkEngine.from_env(pipeline)}


@dg.definitions
def defs() -> dg.Definitions:
    """The resources from the environment of the process that loads the definitions (see
    `PipelineSettings.from_env`)."""
    return dg.Definitions(resources=build_resources(PipelineSettings.from_env()))
