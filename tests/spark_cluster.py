"""A real Spark standalone cluster on 127.0.0.1 (one master, one worker, started with `spark-class` from the
installed pyspark) for the Spark engine's tests, and `spark_master`: each Spark test once on `local[2]` and once
on that cluster. Also `spark_connect`: a Spark Connect server (local[2] behind it) from the same installation.

tests/conftest.py loads this module as a plugin. The cluster is per test session (start-up ~5 s on 2 cores) and
stopped at its end, process groups and all. Without pyspark or Java 17 the Spark tests are skipped (CI=true turns
that into a failure: .ci/run installs both).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipelines.defs.spark_resource import java_problem

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
WORKER_CORES = 2
WORKER_MEMORY = "1g"  # spark.executor.memory (default 1g) must fit in it
_MASTER_URL = re.compile(r"Starting Spark master at (spark://127\.0\.0\.1:\d+)")
_CONNECT_PORT = re.compile(r"Spark Connect server started at: 127\.0\.0\.1:(\d+)")


def spark_java_home() -> str | None:
    """A Java 17+ for Spark: JAVA_HOME when it is one, else an installed OpenJDK 17 (the machine may hold newer
    JDKs Spark does not support), else None (`java` on PATH, if any)."""
    candidates = [os.environ.get("JAVA_HOME", "")] + sorted(glob.glob("/usr/lib/jvm/java-17-openjdk*"))
    for home in candidates:
        if home and java_problem(home) is None:
            return home
    return None


def spark_unavailable() -> str | None:
    """Why Spark cannot run here (None: it can)."""
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (make install-spark)"
    problem = java_problem(spark_java_home() or "")
    return f"no Java 17 for Spark: {problem}" if problem else None


def skip_without_spark() -> None:
    reason = spark_unavailable()
    if reason:
        pytest.skip(reason)


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def spark_env(root: Path) -> dict[str, str]:
    """The environment of the cluster's processes: loopback only, every file under ``root``."""
    env = {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOCAL_HOSTNAME": "127.0.0.1", "SPARK_LOCAL_DIRS": str(root / "local"),
           "SPARK_WORKER_DIR": str(root / "work"), "SPARK_LOG_DIR": str(root / "logs"),
           "PYSPARK_PYTHON": sys.executable,
           # the REST submission server would take the fixed port 6066
           "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false"}
    java_home = spark_java_home()
    if java_home:
        env["JAVA_HOME"] = java_home
    for name in ("local", "work", "logs"):
        (root / name).mkdir(parents=True, exist_ok=True)
    return env


@dataclass
class SparkCluster:
    """A running standalone master + worker: the master's URL, their processes (own process groups), logs."""

    root: Path
    master_url: str = ""
    processes: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def log_tails(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {log} ---\n{log.read_text(errors='replace')[-chars:]}" for log in self.logs
                         if log.exists())


def _start(cluster: SparkCluster, name: str, arguments: list[str], env: dict[str, str],
           launcher: str = "spark-class") -> subprocess.Popen:
    log = cluster.root / f"{name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([str(spark_home() / "bin" / launcher), *arguments], cwd=cluster.root,
                                   env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    cluster.processes.append(process)
    cluster.logs.append(log)
    return process


def _wait_for(cluster: SparkCluster, process: subprocess.Popen, log: Path, pattern: str) -> re.Match:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace")) if log.exists() else None
        if found:
            return found
        if process.poll() is not None:
            raise RuntimeError(f"{log.stem} exited with code {process.returncode}")
        time.sleep(0.2)
    raise TimeoutError(f"{log.stem}: no {pattern!r} in its log after {START_TIMEOUT_S:.0f}s")


def start_cluster(root: Path, cores: int = WORKER_CORES, memory: str = WORKER_MEMORY) -> SparkCluster:
    """Start a master and one worker (``cores``, ``memory``) on 127.0.0.1, free ports chosen by Spark; fails
    the test (with the logs' tails) when either does not come up."""
    cluster = SparkCluster(root)
    env = spark_env(root)
    try:
        master = _start(cluster, "master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                            "--port", "0", "--webui-port", "0"], env)
        cluster.master_url = _wait_for(cluster, master, cluster.logs[0], _MASTER_URL.pattern).group(1)
        _wait_for(cluster, master, cluster.logs[0], "I have been elected leader")
        worker = _start(cluster, "worker", ["org.apache.spark.deploy.worker.Worker", cluster.master_url, "--host",
                                            "127.0.0.1", "--cores", str(cores), "--memory", memory,
                                            "--webui-port", "0", "--work-dir", str(root / "work")], env)
        _wait_for(cluster, worker, cluster.logs[1], "Successfully registered with master")
    except Exception as error:
        tails = cluster.log_tails()
        stop_cluster(cluster)
        pytest.fail(f"could not start a Spark standalone cluster: {error}\n{tails}")
    return cluster


def start_connect_server(root: Path, master: str = "local[2]") -> SparkCluster:
    """Start a Spark Connect server on 127.0.0.1 (a free port chosen by Spark) over ``master``; its
    `master_url` is the client's sc:// URL."""
    cluster = SparkCluster(root)
    try:
        server = _start(cluster, "connect", [
            "--class", "org.apache.spark.sql.connect.service.SparkConnectServer", "--name", "Spark Connect server",
            "--master", master, "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
            "--conf", "spark.connect.grpc.binding.port=0", "--conf", "spark.driver.host=127.0.0.1",
            "--conf", "spark.driver.bindAddress=127.0.0.1", "--conf", "spark.ui.enabled=false",
            # ALS checkpoints its lineage there (a client cannot set it: the server's context reads it at start)
            "--conf", f"spark.checkpoint.dir={root / 'checkpoints'}"],
            spark_env(root), launcher="spark-submit")
        port = _wait_for(cluster, server, cluster.logs[0], _CONNECT_PORT.pattern).group(1)
        cluster.master_url = f"sc://127.0.0.1:{port}"
    except Exception as error:
        tails = cluster.log_tails()
        stop_cluster(cluster)
        pytest.fail(f"could not start a Spark Connect server: {error}\n{tails}")
    return cluster


def stop_cluster(cluster: SparkCluster) -> None:
    """SIGTERM the worker's and the master's process groups (executors die with the worker), SIGKILL what is
    left after STOP_TIMEOUT_S."""
    for process in reversed(cluster.processes):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in reversed(cluster.processes):
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory) -> str:
    """The master URL (spark://127.0.0.1:<port>) of a standalone cluster for the whole session."""
    skip_without_spark()
    root = tmp_path_factory.mktemp("spark_cluster")
    cluster = start_cluster(root)
    yield cluster.master_url
    stop_cluster(cluster)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def spark_connect(tmp_path_factory) -> str:
    """The sc:// URL of a Spark Connect server (local[2] behind it) for the whole session."""
    skip_without_spark()
    root = tmp_path_factory.mktemp("spark_connect")
    server = start_connect_server(root)
    yield server.master_url
    stop_cluster(server)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["local[2]", "cluster"])
def spark_master(request) -> str:
    """Each Spark test on local[2] and on the session's standalone cluster."""
    skip_without_spark()
    return request.getfixturevalue("spark_cluster") if request.param == "cluster" else request.param
