"""The `spark` resource: ALS fits and top-N scoring on Spark, for the challenger's and `recommendations`'
`engine: spark`.

The Spark work is one standalone script, als_spark/job.py, run by Dagster Pipes (`dg.PipesSubprocessClient`) as
`python job.py --spec spec.json`: no JVM in the step's process (a crashed or killed driver fails the step, not the
run worker), and the same script runs with `spark-submit` on any cluster. The data goes both ways as Parquet in an
exchange directory that this process and Spark both see (als_spark/exchange.py), one fresh sub-directory per call,
deleted after success and kept, with the job's log, after a failure.

Where Spark runs comes from the environment when the definitions load (`SparkEngine.from_env`): `ALS_SPARK_MASTER`
(`local[*]` when unset, `spark://host:7077`, `sc://host:15002` for Spark Connect), `ALS_SPARK_EXCHANGE_DIR`
(default `<home>/spark`; a mount every Spark node shares for a cluster on other machines), `ALS_SPARK_CONF` (JSON
object of extra Spark conf, e.g. `{"spark.executor.memory": "4g"}`) and `ALS_SPARK_JAVA_HOME` (the Java 17 the
driver runs on; default: JAVA_HOME, else `java` on PATH).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import scipy.sparse as sp
from dagster._core.errors import DagsterPipesExecutionError
from pydantic import Field

from als_core.hyperparameters import Hyperparameters
from als_spark import exchange, job
from als_spark.params import spark_als_params
from pipelines.defs.resources import PipelineSettings

MASTER_VARIABLE = "ALS_SPARK_MASTER"
EXCHANGE_VARIABLE = "ALS_SPARK_EXCHANGE_DIR"
CONF_VARIABLE = "ALS_SPARK_CONF"
JAVA_HOME_VARIABLE = "ALS_SPARK_JAVA_HOME"
VARIABLES = {"master": MASTER_VARIABLE, "exchange_dir": EXCHANGE_VARIABLE, "java_home": JAVA_HOME_VARIABLE}
DEFAULT_MASTER = "local[*]"
MIN_JAVA = 17
JOB_SCRIPT = Path(job.__file__)
INSTALL_HINT = "engine: spark needs the `spark` extra (make install-spark) and Java 17"
_LOG_TAIL_LINES = 40


class SparkUnavailable(dg.Failure):
    """pyspark or Java is missing: nothing was started."""


@dataclass(frozen=True)
class SparkFit:
    """Spark's ALS factors (float32; rows = the training matrix's rows / columns, 0 for a row without ratings)
    and what the job reported (`report`: engine, spark_version, master, executors, executor_cores,
    default_parallelism, seconds_session/read/fit/write, n_ratings, params, seconds_job)."""

    user_factors: np.ndarray
    item_factors: np.ndarray
    report: dict
    seconds_moving: float  # coordinates written and factors read back here, plus the job's read and write
    seconds_fitting: float  # the job's ALS fit


@dataclass(frozen=True)
class SparkScore:
    """A scoring's result: ``rows_written`` staged rows in the caller's ``out_path``."""

    rows_written: int
    report: dict
    seconds_moving: float  # factors and seen pairs written here, the job's read, the part files merged here
    seconds_scoring: float  # the job's scoring and writing of the lists


class SparkEngine(dg.ConfigurableResource):
    """Spark, for ALS fits (`fit`) and top-N scoring (`score`), through the job als_spark/job.py (Dagster Pipes)."""

    pipeline: PipelineSettings  # the home: the default exchange directory
    master: str = Field(default="", description=f"Spark master ({MASTER_VARIABLE}): local[*], spark://host:7077, "
                        f"sc://host:15002 (Spark Connect); empty: {DEFAULT_MASTER}.")
    exchange_dir: str = Field(default="", description=f"Directory the pipeline and Spark exchange Parquet in "
                              f"({EXCHANGE_VARIABLE}); empty: <home>/spark. On a cluster of other machines: a "
                              f"mount all of them share.")
    conf: dict[str, str] = Field(default_factory=dict, description=f"Extra Spark conf ({CONF_VARIABLE}, a JSON "
                                 f"object), e.g. spark.executor.memory.")
    java_home: str = Field(default="", description=f"JAVA_HOME of the Java 17 the Spark driver runs on "
                           f"({JAVA_HOME_VARIABLE}); empty: JAVA_HOME, else java on PATH.")

    @classmethod
    def from_env(cls, pipeline: PipelineSettings, environ: Mapping[str, str] | None = None) -> SparkEngine:
        """As `PipelineSettings.from_env`: a field whose variable is set becomes `dg.EnvVar(variable)` (read when a
        run starts), an unset one keeps its default. `ALS_SPARK_CONF` is parsed here (a map is not an EnvVar)."""
        env = os.environ if environ is None else environ
        fields = {field: dg.EnvVar(name) for field, name in VARIABLES.items() if env.get(name)}
        return cls(pipeline=pipeline, conf=parse_conf(env.get(CONF_VARIABLE, "")), **fields)

    # ------------------------------------------------------------------ where
    @property
    def master_url(self) -> str:
        return self.master or DEFAULT_MASTER

    @property
    def exchange_root(self) -> Path:
        return Path(self.exchange_dir) if self.exchange_dir else self.pipeline.settings.home / "spark"

    def check_available(self) -> None:
        """Raise SparkUnavailable, saying what to install, when pyspark or (for a driver on this machine) Java
        17+ is missing."""
        problems = []
        if importlib.util.find_spec("pyspark") is None:
            problems.append(f"pyspark is not installed in {sys.executable}'s environment")
        if not job.is_connect(self.master_url):  # a Spark Connect client runs no JVM
            problem = java_problem(self._java_home())
            if problem:
                problems.append(problem)
        if problems:
            raise SparkUnavailable(description=f"{INSTALL_HINT}: {'; '.join(problems)}", allow_retries=False)

    def _java_home(self) -> str:
        return self.java_home or os.environ.get("JAVA_HOME", "")

    # ------------------------------------------------------------------ the engine
    def fit(self, context, train: sp.csr_matrix, hp: Hyperparameters) -> SparkFit:
        """Fit Spark's implicit ALS on ``train`` (users x items; ids = its rows and columns) with ``hp`` mapped by
        als_spark.params (ValueError for what Spark cannot fit)."""
        params = spark_als_params(hp)
        self.check_available()
        train = sp.csr_matrix(train)
        with self._run_dir(context, "fit") as run_dir:
            started = time.perf_counter()
            n_coords = exchange.write_coords(train, run_dir / "coords.parquet")
            seconds_in = time.perf_counter() - started
            context.log.info(f"spark fit: wrote {n_coords} training coordinates in {seconds_in:.2f}s to {run_dir}")
            report = self._run_job(context, run_dir, "fit", {
                "coords": str(run_dir / "coords.parquet"), "params": params,
                "user_factors_out": str(run_dir / "user_factors"), "item_factors_out": str(run_dir / "item_factors"),
                "checkpoint_dir": str(run_dir / "checkpoints")})
            started = time.perf_counter()
            user_factors = exchange.read_factors(run_dir / "user_factors", train.shape[0], hp.factors)
            item_factors = exchange.read_factors(run_dir / "item_factors", train.shape[1], hp.factors)
            seconds_out = time.perf_counter() - started
        moving = seconds_in + report["seconds_read"] + report["seconds_write"] + seconds_out
        report = {**report, "seconds_coords_out": seconds_in, "seconds_factors_in": seconds_out}
        context.log.info(f"spark fit on {report['master']}: {report['seconds_fit']:.1f}s fitting, {moving:.1f}s "
                         f"moving data, {report['seconds_job']:.1f}s in the job")
        return SparkFit(user_factors, item_factors, report, moving, float(report["seconds_fit"]))

    def score(self, context, user_factors: np.ndarray, item_factors: np.ndarray, seen: sp.csr_matrix, n: int,
              out_path: Path) -> SparkScore:
        """Write ``out_path``, one STAGED_SCHEMA Parquet file: for every row u of ``user_factors`` (user_index u)
        its top-``n`` items by ``user_factors[u] @ item_factors.T`` without the items of row u of ``seen``,
        rank 1 = best, ties by lower item index (the numba path's order); fewer rows where fewer items are
        unseen."""
        n_users, n_factors = user_factors.shape
        if item_factors.ndim != 2 or item_factors.shape[1] != n_factors:
            raise ValueError(f"item_factors must have {n_factors} columns, got shape {item_factors.shape}")
        if seen.shape != (n_users, len(item_factors)):
            raise ValueError(f"seen has shape {seen.shape}, expected {(n_users, len(item_factors))}")
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.check_available()
        out_path = Path(out_path)
        with self._run_dir(context, "score") as run_dir:
            started = time.perf_counter()
            exchange.write_factors(user_factors, run_dir / "user_factors.parquet")
            exchange.write_factors(item_factors, run_dir / "item_factors.parquet")
            exchange.write_coords(seen, run_dir / "seen.parquet")
            seconds_in = time.perf_counter() - started
            report = self._run_job(context, run_dir, "score", {
                "user_factors": str(run_dir / "user_factors.parquet"),
                "item_factors": str(run_dir / "item_factors.parquet"), "n_items": int(len(item_factors)),
                "seen": str(run_dir / "seen.parquet"), "n": int(n), "staged_out": str(run_dir / "staged")})
            started = time.perf_counter()
            rows = exchange.merge_staged(run_dir / "staged", out_path)
            seconds_out = time.perf_counter() - started
        moving = seconds_in + report["seconds_read"] + seconds_out
        report = {**report, "rows_written": rows, "seconds_inputs_out": seconds_in, "seconds_lists_in": seconds_out}
        context.log.info(f"spark score on {report['master']}: {rows} rows for {n_users} users, "
                         f"{report['seconds_score']:.1f}s scoring, {moving:.1f}s moving data")
        return SparkScore(rows, report, moving, float(report["seconds_score"]))

    # ------------------------------------------------------------------ running the job
    def _run_dir(self, context, mode: str):
        return _RunDirectory(self.exchange_root / f"{context.run.run_id}-{_step_key(context)}-{mode}")

    def _run_job(self, context, run_dir: Path, mode: str, spec: dict) -> dict:
        report_path, log_path = run_dir / "report.json", run_dir / "job.log"
        spec = {"mode": mode, "master": self.master_url, "app_name": f"als-{mode}-{context.run.run_id[:8]}",
                "conf": dict(self.conf), "report_out": str(report_path), "log_out": str(log_path), **spec}
        spec_path = run_dir / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        env = {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
        if self.java_home:
            env["JAVA_HOME"] = self.java_home
        context.log.info(f"spark {mode}: starting {JOB_SCRIPT.name} on {self.master_url} (log: {log_path})")
        started = time.perf_counter()
        try:
            invocation = dg.PipesSubprocessClient().run(
                context=context, command=[sys.executable, str(JOB_SCRIPT), "--spec", str(spec_path)], env=env)
        except DagsterPipesExecutionError as error:
            raise dg.Failure(description=failure_message(mode, self.master_url, report_path, log_path),
                             metadata={"job_log": dg.MetadataValue.path(str(log_path))}) from error
        reports = [m for m in invocation.get_custom_messages() if isinstance(m, dict) and m.get("engine") == "spark"]
        report = reports[-1] if reports else json.loads(report_path.read_text())
        return {**report, "seconds_job": time.perf_counter() - started}


class _RunDirectory:
    """A fresh directory for one call (what a failed earlier attempt left there is removed first), deleted when
    the call succeeds and kept, with the job's log, when it fails."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            shutil.rmtree(self.path, ignore_errors=True)


def _step_key(context) -> str:
    try:
        key = context.get_step_execution_context().step.key
    except Exception:  # a context built outside a run's step (dg.build_asset_context)
        key = "step"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


def parse_conf(text: str) -> dict[str, str]:
    """`ALS_SPARK_CONF`: a JSON object of Spark conf (values made strings); empty: none."""
    if not text.strip():
        return {}
    try:
        conf = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{CONF_VARIABLE} must be a JSON object of Spark conf, got {text!r}: {error}") from None
    if not isinstance(conf, dict):
        raise ValueError(f"{CONF_VARIABLE} must be a JSON object of Spark conf, got {text!r}")
    return {str(key): str(value).lower() if isinstance(value, bool) else str(value) for key, value in conf.items()}


def java_problem(java_home: str) -> str | None:
    """What is wrong with the Java a Spark driver would start (None: Java 17 or later)."""
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        return f"no java at {java}" if java_home else "no java on PATH (set JAVA_HOME or ALS_SPARK_JAVA_HOME)"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{java} -version failed: {error}"
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not found:
        return f"{java} -version printed no version: {(out.stderr + out.stdout).strip()[:200]!r}"
    major = int(found.group(1)) if found.group(1) != "1" else int(found.group(2) or 0)  # "1.8" is Java 8
    return None if major >= MIN_JAVA else f"{java} is Java {major}; Spark 4 needs Java {MIN_JAVA} or later"


def failure_message(mode: str, master: str, report_path: Path, log_path: Path) -> str:
    """The job's error (from its report) and the tail of its log, for the step's failure."""
    error = None
    if report_path.exists():
        try:
            error = json.loads(report_path.read_text()).get("error")
        except json.JSONDecodeError:
            pass
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    tail = "\n".join(lines[-_LOG_TAIL_LINES:]) or "(the job wrote no log)"
    headline = error or "the job exited without reporting an error (killed? see its log)"
    return f"Spark {mode} job on {master} failed: {headline}\n--- last lines of {log_path} ---\n{tail}"
