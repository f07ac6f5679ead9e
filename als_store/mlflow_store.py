"""Reaching the MLflow store: which tracking URIs are accepted, whether the store answers, a client, MLflow's
failures turned into one error, and the HTTP limits that keep a dead server from holding a caller for minutes.

Every function takes an explicit tracking URI; nothing relies on MLflow's process-global default store (a
relative ``sqlite:///mlflow.db`` in whatever directory the process runs in). `using_tracking_uri` is the one
place that sets that global, for the MLflow calls that read nothing else.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:  # mlflow is imported when used: `python -m pipelines registry` and the API start faster
    from mlflow import MlflowClient

REACHABILITY_TIMEOUT_S = 5.0

# MLflow's defaults (7 retries with exponential backoff, 120 s per request) hold a step for minutes against a
# dead tracking server. A variable the environment sets already wins.
MLFLOW_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": 2, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": 1,
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": 15}

# mlflow.pyfunc.log_model only talks to the process-global tracking URI; this lock keeps our own callers
# from switching it under each other.
_GLOBAL_URI_LOCK = threading.RLock()


class RegistryError(RuntimeError):
    """The registry is not in the state an operation needs (no champion to roll back to, ...)."""


class MlflowUnavailable(RegistryError):
    """MLflow could not be reached, or failed, while the pipeline needed it."""


class BundleUnloadable(RegistryError):
    """A registered version whose model cannot be loaded (its files gone or broken) while MLflow answers."""

    def __init__(self, name: str, version: int, cause: str):
        super().__init__(f"{name} version {version} cannot be loaded: {cause}")
        self.name, self.version, self.cause = name, int(version), cause


def bound_mlflow_http(limits: Mapping[str, int] = MLFLOW_HTTP_LIMITS) -> dict[str, str]:
    """Set the MLflow HTTP retry and timeout variables the environment leaves unset (MLflow reads them on
    every request). Returns what it set, for `unbound_mlflow_http`."""
    applied = {}
    for key, value in limits.items():
        if key not in os.environ:
            os.environ[key] = applied[key] = str(value)
    return applied


def unbound_mlflow_http(applied: Mapping[str, str]) -> None:
    for key, value in applied.items():
        if os.environ.get(key) == value:
            del os.environ[key]


def validate_tracking_uri(tracking_uri: str) -> str:
    """Refuse relative stores: a relative sqlite path silently creates a new, empty registry per cwd."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        path = tracking_uri[len("sqlite:///"):]
        if not tracking_uri.startswith("sqlite:///") or not path.startswith("/"):
            raise ValueError(f"MLflow tracking URI must be absolute (sqlite:////abs/path.db): {tracking_uri!r}")
    elif parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme else tracking_uri
        if not os.path.isabs(path):
            raise ValueError(f"MLflow tracking URI must be an absolute path: {tracking_uri!r}")
    return tracking_uri


def is_remote(tracking_uri: str) -> bool:
    return urlparse(tracking_uri).scheme in ("http", "https")


def sqlite_path(tracking_uri: str) -> Path | None:
    if urlparse(tracking_uri).scheme != "sqlite":
        return None
    return Path(tracking_uri[len("sqlite:///"):])


def check_reachable(tracking_uri: str, timeout_s: float = REACHABILITY_TIMEOUT_S) -> None:
    """Fail fast with a clear message instead of MLflow's minutes of HTTP retries on a dead server."""
    validate_tracking_uri(tracking_uri)
    if is_remote(tracking_uri):
        import httpx

        url = tracking_uri.rstrip("/") + "/health"
        try:
            response = httpx.get(url, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise MlflowUnavailable(
                f"MLflow tracking server {tracking_uri} is unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        if response.status_code != 200:
            raise MlflowUnavailable(
                f"MLflow tracking server {tracking_uri} is unhealthy: GET /health -> {response.status_code}"
            )
        return
    db_path = sqlite_path(tracking_uri)
    if db_path is not None:
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MlflowUnavailable(f"MLflow store {tracking_uri} is not writable: {exc}") from exc


def make_client(tracking_uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    validate_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@contextlib.contextmanager
def mlflow_errors(action: str) -> Iterator[None]:
    """Re-raise whatever MLflow or the network throws as MlflowUnavailable naming the step that failed."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except RegistryError:
        raise
    except (MlflowException, OSError, ConnectionError) as exc:
        raise MlflowUnavailable(f"MLflow failed while {action}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # requests' errors do not all derive from OSError
        if type(exc).__module__.startswith(("requests", "urllib3", "httpx")):
            raise MlflowUnavailable(f"MLflow failed while {action}: {type(exc).__name__}: {exc}") from exc
        raise


@contextlib.contextmanager
def using_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (log_model needs it) at ``tracking_uri`` for the block, then restore."""
    import mlflow

    with _GLOBAL_URI_LOCK:
        previous = os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI")
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        try:
            yield
        finally:
            for key, value in zip(("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"), previous):
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            mlflow.set_tracking_uri(previous[0])
            mlflow.set_registry_uri(previous[1])


def quoted(value: str) -> str:
    """``value`` for a single-quoted MLflow search filter; one holding a quote is refused (MLflow's filter
    syntax has no escape for it)."""
    if "'" in value:
        raise ValueError(f"value with quotes cannot be used in an MLflow filter: {value!r}")
    return value
