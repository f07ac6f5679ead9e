"""Shared fixtures for registry tests: a real MLflow store, either a sqlite file or a real `mlflow server`.

Test modules opt in with ``pytest_plugins = ["mlflow_server", "registry_stores"]``.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from pipelines import registry


@dataclass(frozen=True)
class Store:
    """One MLflow store under test, with a model name of its own (the server is shared by the session)."""

    kind: str
    tracking_uri: str
    artifact_root: Path
    model_name: str
    lock_path: Path

    def client(self):
        return registry.make_client(self.tracking_uri)

    def experiment_id(self, name: str = "tests") -> str:
        return registry.ensure_experiment(self.client(), name, self.artifact_root)


def sqlite_store(root: Path) -> Store:
    return Store(
        kind="sqlite",
        tracking_uri=f"sqlite:///{root.absolute() / 'mlflow.db'}",
        artifact_root=root.absolute() / "mlartifacts",
        model_name=f"als-test-{uuid.uuid4().hex[:8]}",
        lock_path=root / "promotion.lock",
    )


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def store(request, tmp_path) -> Store:
    """Parametrised: the same test against a sqlite file and against a real tracking server."""
    if request.param == "sqlite":
        return sqlite_store(tmp_path)
    uri = request.getfixturevalue("mlflow_server")
    return Store(kind="server", tracking_uri=uri, artifact_root=tmp_path / "unused",
                 model_name=f"als-test-{uuid.uuid4().hex[:8]}",
                 lock_path=registry.lock_path_for(uri, tmp_path))


@pytest.fixture
def sqlite_only(tmp_path) -> Store:
    return sqlite_store(tmp_path)


@pytest.fixture
def register_placeholder():
    """``register_placeholder(store, tags=None) -> version``."""
    return _register_placeholder


def _register_placeholder(store: Store, tags: dict[str, str] | None = None) -> int:
    """A registered version whose artifact is a small text file: enough for alias and tag logic."""
    client = store.client()
    run = client.create_run(store.experiment_id(), tags=tags or {})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "MLmodel"
        path.write_text("placeholder: true\n")
        client.log_artifact(run.info.run_id, str(path), artifact_path="model")
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(store.model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = client.create_model_version(store.model_name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                     tags=tags or {})
    return int(mv.version)
