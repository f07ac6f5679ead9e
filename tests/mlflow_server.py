"""A real `mlflow server` on 127.0.0.1 for tests where the HTTP path matters.

tests/conftest.py loads this module as a plugin (tests/ is on sys.path under pytest's default import mode),
so its fixtures are there for every test module; a test may also import its helpers. One server per test
session (start-up costs seconds); tests isolate themselves by model and experiment name, not by
server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 2.0  # a test server's graceful shutdown is not worth waiting for


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port_uri() -> str:
    """An http URI on 127.0.0.1 where nothing listens (the port is bound, then released)."""
    return f"http://127.0.0.1:{free_port()}"


def _mlflow_executable() -> list[str]:
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    return [str(mlflow_bin)] if mlflow_bin.exists() else [sys.executable, "-m", "mlflow"]


def wait_healthy(uri: str, process: subprocess.Popen, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited early with code {process.returncode}")
        try:
            if httpx.get(f"{uri}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {uri} not healthy after {timeout_s:.0f}s")


def stop(process: subprocess.Popen) -> None:
    """Terminate the server's process group (it forks workers), then kill what is left."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)
    except ProcessLookupError:
        pass


@dataclass
class Server:
    """A running `mlflow server`: its URI, process (own process group) and root (store, artifacts, log)."""

    uri: str
    process: subprocess.Popen
    root: Path

    @property
    def artifacts(self) -> Path:
        return self.root / "mlartifacts"

    def kill(self) -> None:
        """SIGKILL the whole process group (a crashed server, not a shutdown), and wait for it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def start_server(root: Path, port: int | None = None, backend_uri: str | None = None) -> Server:
    """Start `mlflow server` on 127.0.0.1 over ``root`` (backend ``backend_uri``, by default the sqlite file
    ``root/mlflow.db``; proxied artifacts in ``root/mlartifacts``; one worker); a second start over the same
    root and backend serves the same store."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    log_path = root / "server.log"
    command = [
        *_mlflow_executable(),
        "server",
        "--backend-store-uri", backend_uri or f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "mlartifacts"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # the async job runner (GenAI jobs) adds worker processes this registry never uses
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
    try:
        wait_healthy(uri, process)
    except Exception as exc:
        stop(process)
        tail = log_path.read_text(errors="replace")[-3000:]
        pytest.fail(f"could not start mlflow server: {exc}\n--- server log ---\n{tail}")
    return Server(uri, process, root)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """Start `mlflow server` (sqlite backend, proxied artifacts, one worker); yield its http URI."""
    server = start_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server.uri
    finally:
        stop(server.process)


@pytest.fixture
def own_mlflow_server(tmp_path):
    """``start(port=None) -> Server``: servers of this test alone (it may kill them), over one store in
    tmp_path; each is stopped at the end of the test."""
    servers: list[Server] = []

    def start(port: int | None = None) -> Server:
        servers.append(start_server(tmp_path / "mlflow-server", port))
        return servers[-1]

    yield start
    for server in servers:
        stop(server.process)
