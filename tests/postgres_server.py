"""A throwaway PostgreSQL cluster on 127.0.0.1 for the production profile's tests (Dagster and MLflow storage,
the promotion lock).

tests/conftest.py loads this module as a plugin. One cluster per test session (initdb + start take about a
second), in a temp directory of its own, with fsync off (nothing in it outlives the session); each test makes
its own databases. Run as root (CI), the server runs as the `postgres` user that Debian's package creates,
since initdb refuses root. Without PostgreSQL installed the tests skip, which CI=true turns into failures
(`.ci/run` installs Debian's `postgresql`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlflow_server import Server, free_port, start_server, stop

SUPERUSER = "postgres"
START_TIMEOUT_S = 30


def postgres_bin() -> Path | None:
    """The newest installed server's bin directory (Debian keeps initdb and pg_ctl off PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: [int(x) for x in p.split("/")[4].split(".")])
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresCluster:
    """A running cluster: trust authentication for `postgres` on 127.0.0.1:``port``."""

    root: Path
    port: int
    bin_dir: Path
    host: str = "127.0.0.1"
    user: str = SUPERUSER

    def url(self, database: str) -> str:
        """A SQLAlchemy URL (psycopg2: SQLAlchemy 2.1's plain `postgresql` means psycopg 3)."""
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{database}"

    def dagster_environment(self, database: str) -> dict[str, str]:
        """The variables that select the production profile with its storage in ``database``."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_USERNAME": self.user,
                "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": database}

    def create_database(self, prefix: str = "db") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def sql(self, statement: str, database: str = "postgres") -> list[tuple]:
        import psycopg2

        with contextlib.closing(psycopg2.connect(host=self.host, port=self.port, user=self.user,
                                                 dbname=database)) as con:
            con.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with con.cursor() as cur:
                cur.execute(statement)
                return cur.fetchall() if cur.description else []


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--", *command] if os.geteuid() == 0 else command


def start_cluster() -> PostgresCluster:
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    # Directly in /tmp, not under pytest's tmp_path: its parents are private to root, and the server runs as
    # `postgres`
    root = Path(tempfile.mkdtemp(prefix="pgtest."))
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SUPERUSER)
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, log = root / "data", root / "server.log"
    try:
        subprocess.run(_as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
                                        "-E", "UTF8", "--locale=C.UTF-8", "-N"]),
                       check=True, capture_output=True, text=True, timeout=START_TIMEOUT_S)
        for attempt in range(3):  # the port is free when chosen; another process may take it first
            port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
                       "-c full_page_writes=off -c max_connections=200")
            started = subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                                                      "-t", str(START_TIMEOUT_S), "-o", options, "start"]),
                                     capture_output=True, text=True, timeout=START_TIMEOUT_S + 10)
            if started.returncode == 0:
                return PostgresCluster(root=root, port=port, bin_dir=bin_dir)
            time.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}")
    except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        detail = getattr(exc, "stderr", "") or ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start a PostgreSQL cluster: {exc}\n{detail}\n--- server log ---\n{tail}")


def stop_cluster(cluster: PostgresCluster) -> None:
    subprocess.run(_as_server_user([str(cluster.bin_dir / "pg_ctl"), "-D", str(cluster.root / "data"), "-m",
                                    "immediate", "-w", "stop"]), capture_output=True, timeout=60)
    shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> PostgresCluster:
    """A PostgreSQL cluster for the session, stopped and deleted at the end."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture(scope="session")
def postgres_mlflow_server(postgres, tmp_path_factory) -> Server:
    """An `mlflow server` whose backend store is a database of the session's cluster (proxied artifacts in a
    temp dir); stopped before the cluster. Tests isolate themselves by model and experiment name."""
    database = postgres.create_database("mlflow")
    server = start_server(tmp_path_factory.mktemp("mlflow-pg-server"), backend_uri=postgres.url(database))
    try:
        yield server
    finally:
        stop(server.process)


@dataclass(frozen=True)
class ProductionProfile:
    """A pipeline home on the production profile: Dagster storage in ``dagster_database`` (the DAGSTER_PG_*
    variables are set in this test's environment) and MLflow at a tracking server backed by Postgres."""

    settings: object  # als_store.settings.Settings
    cluster: PostgresCluster
    dagster_database: str
    mlflow: Server

    @property
    def environment(self) -> dict[str, str]:
        return {**self.settings.environment(), **self.cluster.dagster_environment(self.dagster_database)}


@pytest.fixture
def production_profile(settings, postgres, postgres_mlflow_server, monkeypatch) -> ProductionProfile:
    """The test's home (``settings``) switched to the production profile: a fresh Dagster database, the
    session's Postgres-backed tracking server, a model name of the test's own."""
    from als_store.settings import Settings

    database = postgres.create_database("dagster")
    for name, value in postgres.dagster_environment(database).items():
        monkeypatch.setenv(name, value)
    production = Settings.build(settings.home, settings.landing_dir, postgres_mlflow_server.uri,
                                f"als-{uuid.uuid4().hex[:8]}")
    return ProductionProfile(production, postgres, database, postgres_mlflow_server)
