"""Shared fixtures for registry tests: a real MLflow store, either a sqlite file or a real `mlflow server`.

tests/conftest.py loads this module as a plugin: `store` (both kinds; the server one marked slow),
`sqlite_only` and `register_placeholder` are there for every test module.
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from als_store import mlflow_store
from pipelines.registry import promotion, run_log


@dataclass(frozen=True)
class Store:
    """One MLflow store under test, with a model name of its own (the server is shared by the session)."""

    kind: str
    tracking_uri: str
    artifact_root: Path
    model_name: str
    lock_path: Path

    def client(self):
        return mlflow_store.make_client(self.tracking_uri)

    def experiment_id(self, name: str = "tests") -> str:
        return run_log.ensure_experiment(self.client(), name, self.artifact_root)


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
                 lock_path=promotion.lock_path_for(uri, tmp_path))


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


def spawn_context():
    """Processes started fresh (no fork of a process holding MLflow's and Dagster's threads and sqlite handles)."""
    return multiprocessing.get_context("spawn")


def promote_in_another_process(tracking_uri: str, model_name: str, lock_path: str, version: int,
                               ndcg: dict[int, float], popularity: float, barrier) -> None:
    """Target of a spawned process: the gate for ``version`` evaluated while there was no champion, with a
    champion re-scored from ``ndcg`` (slowly, to widen the race). Exits non-zero on any error."""
    try:
        from als_store import mlflow_store
        from pipelines.registry import promotion

        client = mlflow_store.make_client(tracking_uri)

        def slow_score(champion_version: int) -> float:
            time.sleep(0.05)
            return ndcg[champion_version]

        barrier.wait(timeout=60)
        promotion.promote_if_better(client, model_name, version, ndcg[version], popularity, (None, None), slow_score,
                                    lock_path)
    except BaseException:
        traceback.print_exc()
        sys.exit(1)


def run_processes(ctx, target, arg_sets, timeout_s: float = 120.0) -> None:
    """Start one process per argument tuple, wait for all; fail naming the ones that did not exit 0."""
    processes = [ctx.Process(target=target, args=args) for args in arg_sets]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout_s
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    failed = [(args, process.exitcode) for args, process in zip(arg_sets, processes) if process.exitcode != 0]
    assert not failed, f"processes failed (see their stderr above): {failed}"
