"""Where MLflow lives, as a Dagster resource (our own: the dagster-mlflow package is legacy and pins pandas<3).

The resource carries the configuration (tracking URI, experiment, model name, where the promotion lock goes)
and the operations the assets call that need it: a client, the experiment, a run's link, the model's
versions, champion and bundles, registration and the gate's promotion. The MLflow calls themselves live in
`als_store` (the read side, shared with the API) and `pipelines.registry` (the write side); a run's logging
takes the client and is `pipelines.registry.run_log`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field, PrivateAttr

from als_store import mlflow_store, model_registry
from als_store.model_registry import VersionRef
from als_store.settings import Settings
from pipelines.defs.resources import PipelineSettings
from pipelines.registry import locks, promotion, registration, run_log

if TYPE_CHECKING:
    import numpy as np
    from mlflow import MlflowClient

    from als_core.bundle import ModelBundle
    from pipelines.registry.gate import GateDecision, StabilityRule


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking + registry used by the model assets."""

    pipeline: PipelineSettings  # the tracking URI, the model's name, the artifact and lock directories
    experiment_name: str = Field(default=run_log.DEFAULT_EXPERIMENT, description="MLflow experiment of the training runs.")
    ui_url: str = Field(default="http://127.0.0.1:5000", description="MLflow UI for run links when the store is local (`mlflow ui --backend-store-uri <tracking_uri>`).")
    http_max_retries: int = Field(default=mlflow_store.MLFLOW_HTTP_LIMITS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"], ge=0,
                                  description="MLFLOW_HTTP_REQUEST_MAX_RETRIES for the step's process, unless the environment sets it (MLflow's default, 7 with backoff, holds a step for minutes on a dead server).")
    http_backoff_factor: int = Field(default=mlflow_store.MLFLOW_HTTP_LIMITS["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"], ge=0,
                                     description="MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR for the step's process, unless the environment sets it.")
    http_timeout_s: int = Field(default=mlflow_store.MLFLOW_HTTP_LIMITS["MLFLOW_HTTP_REQUEST_TIMEOUT"], ge=1,
                                description="MLFLOW_HTTP_REQUEST_TIMEOUT (seconds per request) for the step's process, unless the environment sets it.")

    _http_env_set: dict = PrivateAttr(default_factory=dict)
    _lock: locks.PromotionLock | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # per step process (the multiprocess executor starts one per step), not at import: the code server and
        # anything else importing the definitions keep their own settings
        self._http_env_set = mlflow_store.bound_mlflow_http({
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": self.http_max_retries,
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": self.http_backoff_factor,
            "MLFLOW_HTTP_REQUEST_TIMEOUT": self.http_timeout_s,
        })
        self._lock = locks.promotion_lock_for(context.instance, self.tracking_uri, Path(self.lock_dir),
                                              self.model_name)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        mlflow_store.unbound_mlflow_http(self._http_env_set)

    @classmethod
    def from_settings(cls, settings: Settings) -> MLflowResource:
        return cls(pipeline=PipelineSettings.of(settings))

    @property
    def tracking_uri(self) -> str:
        """Absolute MLflow tracking (and registry) URI: sqlite:////abs/mlflow.db or http://host:port."""
        return self.pipeline.settings.mlflow_tracking_uri

    @property
    def model_name(self) -> str:
        """Registered model name; every training run registers a new version of it."""
        return self.pipeline.settings.model_name

    @property
    def artifact_root(self) -> str:
        """Artifact directory for experiments created in a local (sqlite) store; a tracking server uses its own."""
        return str(self.pipeline.settings.mlflow_artifact_root)

    @property
    def lock_dir(self) -> str:
        """Directory for the file lock when the store is a tracking server: the pipeline's home."""
        return str(self.pipeline.settings.home)

    def client(self) -> MlflowClient:
        """A client for the tracking URI, after a quick reachability check (fails fast, says why)."""
        mlflow_store.check_reachable(self.tracking_uri)
        return mlflow_store.make_client(self.tracking_uri)

    def experiment_id(self, client: MlflowClient) -> str:
        return run_log.ensure_experiment(client, self.experiment_name, Path(self.artifact_root))

    @property
    def lock_path(self) -> Path:
        """Where the file lock is (the embedded profile's promotion lock)."""
        return locks.lock_path_for(self.tracking_uri, Path(self.lock_dir))

    @property
    def lock(self) -> locks.PromotionLock:
        """The promotion lock of the run's instance (`locks.promotion_lock_for`: an advisory lock in its Postgres
        database, else the file lock); the file lock outside a run."""
        return self._lock if self._lock is not None else locks.FileLock(self.lock_path)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        """Link for asset metadata: the run in the tracking server's UI, or in `ui_url` for a local store."""
        base = self.tracking_uri if mlflow_store.is_remote(self.tracking_uri) else self.ui_url
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    # ---------------------------------------------------------------------------------- the model's versions

    def version(self, client: MlflowClient, version: int) -> VersionRef:
        return model_registry.get_version(client, self.model_name, version)

    def challenger_of(self, client: MlflowClient, dagster_run_id: str) -> VersionRef:
        """The ALS version this Dagster run registered, else the newest ALS version."""
        return model_registry.find_version(client, self.model_name, dagster_run_id)

    def aliases(self, client: MlflowClient) -> dict[str, int]:
        return model_registry.aliases(client, self.model_name)

    def champion(self, client: MlflowClient) -> VersionRef | None:
        return model_registry.champion_ref(client, self.model_name)

    def load_bundle(self, version: int) -> ModelBundle:
        return model_registry.load_bundle(self.tracking_uri, self.model_name, version)

    def load_version_bundle(self, version: int) -> ModelBundle:
        """The bundle, or BundleUnloadable when MLflow answers but the version does not load."""
        return model_registry.load_version_bundle(self.tracking_uri, self.model_name, version)

    # ---------------------------------------------------------------------------------- registration, the gate

    def register_bundle(self, run_id: str, bundle_dir: Path, example_user_ids: np.ndarray,
                        tags: Mapping[str, str]) -> VersionRef:
        return registration.register_bundle(self.tracking_uri, run_id, self.model_name, bundle_dir,
                                            example_user_ids, tags)

    def register_popularity(self, client: MlflowClient, challenger: VersionRef, bundle: ModelBundle, run_name: str,
                            tags: Mapping[str, str], metrics: Mapping[str, float]) -> VersionRef:
        return registration.register_popularity(self.tracking_uri, self.experiment_id(client), self.model_name,
                                                challenger, bundle, run_name, tags, metrics)

    def promote_if_better(self, client: MlflowClient, challenger_version: int, challenger_ndcg: float,
                          popularity_ndcg: float, evaluated_champion: tuple[int | None, float | None],
                          score_champion: Callable[[int], float], margin: float = 0.0,
                          extra_tags: Mapping[str, str] | None = None, champion_load_error: str | None = None,
                          register_popularity: Callable[[GateDecision], int] | None = None,
                          stability_rule: StabilityRule | None = None,
                          first_item_changed: float | None = None) -> GateDecision:
        """`pipelines.registry.promotion.promote_if_better` on this model under this deployment's lock."""
        return promotion.promote_if_better(
            client, self.model_name, challenger_version, challenger_ndcg, popularity_ndcg, evaluated_champion,
            score_champion, self.lock, margin=margin, extra_tags=extra_tags,
            champion_load_error=champion_load_error, register_popularity=register_popularity,
            stability_rule=stability_rule, first_item_changed=first_item_changed)
