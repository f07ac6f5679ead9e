"""The promotion lock: what serialises every move of the ``champion`` alias (the gate, a rollback, a promotion by
hand), across threads, processes and, in the production profile, machines.

Two kinds, one interface (`hold(timeout_s)`, a context manager that raises RegistryError on timeout):
- `FileLock(path)`: an exclusive ``flock`` on a local file. Every writer of a sqlite MLflow store shares the
  file next to it; with a tracking server it is ``<home>/promotion.lock``, which only one machine sees.
- `AdvisoryLock(url, key)`: a Postgres session-level advisory lock in the database at ``url``. Every machine that
  reaches the database shares it, and a holder that dies loses its session and with it the lock (no stale lock).

`promotion_lock_for` picks one from the Dagster instance: its Postgres database when the instance's storage is
Postgres (the production profile: every process of the deployment shares that database), else the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ContextManager, Protocol

from als_store.mlflow_store import RegistryError, sqlite_path

if TYPE_CHECKING:
    import dagster as dg

    from als_store.settings import Settings

LOCK_TIMEOUT_S = 600.0
FILE_POLL_S = 0.05
ADVISORY_POLL_S = 0.1  # one cheap query per poll; a promotion takes seconds
APPLICATION_NAME = "als-pipeline lock"  # what pg_stat_activity shows for the holder's session

_log = logging.getLogger(__name__)


def _poll_until_taken(try_take: Callable[[], bool], timeout_s: float, poll_s: float, what: str) -> None:
    """Call ``try_take`` every ``poll_s`` seconds until it returns True; RegistryError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not try_take():
        if time.monotonic() > deadline:
            raise RegistryError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)


class PromotionLock(Protocol):
    def hold(self, timeout_s: float = LOCK_TIMEOUT_S) -> ContextManager[None]:
        """Held inside the ``with``; RegistryError after ``timeout_s`` seconds of waiting for another holder."""


@dataclasses.dataclass(frozen=True)
class FileLock:
    """Exclusive flock on ``path``. Each `hold` opens its own file description, so two threads of one process
    exclude each other too."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return str(self.path)

    @contextlib.contextmanager
    def hold(self, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as handle:
            def try_take() -> bool:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    return False

            _poll_until_taken(try_take, timeout_s, FILE_POLL_S, f"promotion lock {self}")
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@dataclasses.dataclass(frozen=True)
class AdvisoryLock:
    """Session-level ``pg_advisory_lock`` on the 64-bit id of ``key`` in the Postgres database at ``url``
    (a SQLAlchemy URL, ``postgresql+psycopg2://...``). Taken with ``pg_try_advisory_lock`` polled until the
    timeout, so a waiter can be interrupted; held by a connection of its own, which is closed on release."""

    url: str
    key: str
    label: str = "promotion lock"  # what the timeout says it waited for

    @property
    def lock_id(self) -> int:
        """A stable signed bigint for ``key`` (Python's hash() differs between processes)."""
        return int.from_bytes(hashlib.sha256(self.key.encode()).digest()[:8], "big", signed=True)

    def __str__(self) -> str:
        from sqlalchemy.engine import make_url

        where = make_url(self.url).render_as_string(hide_password=True)
        return f"{self.key!r} (pg advisory lock {self.lock_id} in {where})"

    @contextlib.contextmanager
    def hold(self, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        engine = sa.create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                                  connect_args={"application_name": APPLICATION_NAME})
        try:
            with engine.connect() as con:
                _poll_until_taken(
                    lambda: bool(con.execute(sa.text("SELECT pg_try_advisory_lock(:id)"), {"id": self.lock_id}).scalar()),
                    timeout_s, ADVISORY_POLL_S, f"{self.label} {self}")
                try:
                    yield
                finally:
                    # closing the session frees the lock anyway: a failed unlock (connection gone) is only logged
                    try:
                        con.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": self.lock_id})
                    except Exception as exc:
                        _log.warning(f"could not release {self.label} {self} ({exc}); closing its session")
        finally:
            engine.dispose()


def as_lock(lock: PromotionLock | Path | str) -> PromotionLock:
    """A lock object as is; a path as the `FileLock` there."""
    return FileLock(Path(lock)) if isinstance(lock, (str, Path)) else lock


def promotion_lock(lock: PromotionLock | Path | str, timeout_s: float = LOCK_TIMEOUT_S) -> ContextManager[None]:
    """Hold ``lock`` (a lock object, or the path of a file lock)."""
    return as_lock(lock).hold(timeout_s)


def lock_path_for(tracking_uri: str, fallback_dir: Path) -> Path:
    """The file lock lives next to a sqlite store (every writer of that file shares it); for a tracking server,
    in the pipeline home (shared by every process of one machine's deployment)."""
    db_path = sqlite_path(tracking_uri)
    if db_path is not None:
        return db_path.with_name(db_path.name + ".promotion.lock")
    return Path(fallback_dir) / "promotion.lock"


def promotion_key(model_name: str) -> str:
    """The advisory lock's key: one lock per registered model (two models' gates do not wait for each other)."""
    return f"als-pipeline:promotion:{model_name}"


def instance_postgres_url(instance: dg.DagsterInstance | None) -> str | None:
    """The SQLAlchemy URL of the instance's run storage when it is Postgres (shared by every process and machine
    of the deployment), else None (sqlite, an ephemeral instance, no instance)."""
    if instance is None:
        return None
    try:
        from dagster_postgres import PostgresRunStorage
    except ImportError:  # the `postgres` extra is not installed: the storage cannot be Postgres
        return None
    storage = instance.run_storage
    return storage.postgres_url if isinstance(storage, PostgresRunStorage) else None


def promotion_lock_for(instance: dg.DagsterInstance | None, tracking_uri: str, home: Path,
                       model_name: str) -> PromotionLock:
    """The lock every mover of ``model_name``'s champion in this deployment shares: an advisory lock in the
    instance's Postgres database (production profile), else the file lock of `lock_path_for`."""
    url = instance_postgres_url(instance)
    if url is not None:
        return AdvisoryLock(url, promotion_key(model_name))
    return FileLock(lock_path_for(tracking_uri, Path(home)))


def deployment_promotion_lock(settings: Settings, tracking_uri: str, model_name: str) -> PromotionLock:
    """For a command outside a run (the registry CLI): the lock that this deployment's runs take. In the production
    profile it is read from the project's instance (DAGSTER_PG_*, `pipelines.instance.open_instance`); the
    embedded profile's needs no instance."""
    from pipelines.instance import InstanceConfigError, open_instance, uses_postgres

    if not uses_postgres():
        return promotion_lock_for(None, tracking_uri, settings.home, model_name)
    try:
        with open_instance(settings) as instance:
            return promotion_lock_for(instance, tracking_uri, settings.home, model_name)
    except InstanceConfigError as exc:
        raise RegistryError(f"cannot open the Dagster instance that holds the promotion lock: {exc}") from exc
