"""Where MLflow lives, as a Dagster resource (our own: the dagster-mlflow package is legacy and pins pandas<3).

The resource only carries configuration (tracking URI, experiment, model name, where the promotion lock
goes); the MLflow calls themselves live in `pipelines.registry`, which the serving API reuses.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

from pipelines import registry
from als_store.settings import Settings


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking + registry used by the model assets."""

    tracking_uri: str = Field(description="Absolute MLflow tracking (and registry) URI: sqlite:////abs/mlflow.db or http://host:port.")
    artifact_root: str = Field(description="Artifact directory for experiments created in a local (sqlite) store; a tracking server uses its own.")
    experiment_name: str = Field(default=registry.DEFAULT_EXPERIMENT, description="MLflow experiment of the training runs.")
    model_name: str = Field(description="Registered model name; every training run registers a new version of it.")
    lock_dir: str = Field(description="Directory for the promotion lock when the store is a tracking server.")
    ui_url: str = Field(default="http://127.0.0.1:5000", description="MLflow UI for run links when the store is local (`mlflow ui --backend-store-uri <tracking_uri>`).")
    http_max_retries: int = Field(default=registry.MLFLOW_HTTP_LIMITS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"], ge=0,
                                  description="MLFLOW_HTTP_REQUEST_MAX_RETRIES for the step's process, unless the environment sets it (MLflow's default, 7 with backoff, holds a step for minutes on a dead server).")
    http_backoff_factor: int = Field(default=registry.MLFLOW_HTTP_LIMITS["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"], ge=0,
                                     description="MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR for the step's process, unless the environment sets it.")
    http_timeout_s: int = Field(default=registry.MLFLOW_HTTP_LIMITS["MLFLOW_HTTP_REQUEST_TIMEOUT"], ge=1,
                                description="MLFLOW_HTTP_REQUEST_TIMEOUT (seconds per request) for the step's process, unless the environment sets it.")

    _http_env_set: dict = PrivateAttr(default_factory=dict)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # per step process (the multiprocess executor starts one per step), not at import: the code server and
        # anything else importing the definitions keep their own settings
        self._http_env_set = registry.bound_mlflow_http({
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": self.http_max_retries,
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": self.http_backoff_factor,
            "MLFLOW_HTTP_REQUEST_TIMEOUT": self.http_timeout_s,
        })

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        registry.unbound_mlflow_http(self._http_env_set)

    @classmethod
    def from_settings(cls, settings: Settings) -> MLflowResource:
        return cls(
            tracking_uri=settings.mlflow_tracking_uri,
            artifact_root=str(settings.mlflow_artifact_root),
            model_name=settings.model_name,
            lock_dir=str(settings.home),
        )

    def client(self):
        """A client for the tracking URI, after a quick reachability check (fails fast, says why)."""
        registry.check_reachable(self.tracking_uri)
        return registry.make_client(self.tracking_uri)

    def experiment_id(self, client) -> str:
        return registry.ensure_experiment(client, self.experiment_name, Path(self.artifact_root))

    @property
    def lock_path(self) -> Path:
        return registry.lock_path_for(self.tracking_uri, Path(self.lock_dir))

    def run_url(self, experiment_id: str, run_id: str) -> str:
        """Link for asset metadata: the run in the tracking server's UI, or in `ui_url` for a local store."""
        base = self.tracking_uri if registry.is_remote(self.tracking_uri) else self.ui_url
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
