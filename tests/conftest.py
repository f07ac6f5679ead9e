"""Shared fixtures: a private pipeline home per test (warehouse, landing, training, Dagster instance).

In-process runs get the home through the resources (`pipeline`, `resources`); the environment keeps none of the
pipeline's variables, so code that read them instead of its resources would miss the test's home. Commands
started as subprocesses get the home in their environment (`pipelines.instance.dagster_env`).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from als_store.settings import Settings

# Fixture modules loaded here, once: a `pytest_plugins` in a test module is loaded after pytest's assertion
# rewriting has started (PytestAssertRewriteWarning) and is deprecated outside the root conftest.
pytest_plugins = ["mlflow_server", "postgres_server", "registry_stores", "spark_cluster"]

# A suite started in the background (`nohup make test &`, a script's `cmd &`) inherits SIGINT ignored, and every
# server it starts would too: `dagster dev` would then ignore the Ctrl-C the tests press on `make ui`. The
# terminal's default, restored here, is what the children get (a handled signal is reset to default on exec).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_PIPELINE_ENV = (
    "ALS_PIPELINE_HOME",
    "ALS_PIPELINE_LANDING",
    "ALS_PIPELINE_START_DATE",
    "ALS_PIPELINE_EVENT_PRESET",
    "ALS_RETRAIN_CRON",
    "ALS_RETRAIN_ENGINE",
    "ALS_TUNING_CRON",
    "ALS_MODEL_NAME",
    "ALS_SPARK_MASTER",
    "ALS_SPARK_EXCHANGE_DIR",
    "ALS_SPARK_CONF",
    "ALS_SPARK_JAVA_HOME",
    "MLFLOW_TRACKING_URI",
    "DAGSTER_HOME",
)


def ci_forbids_skips() -> bool:
    """Under CI=true a green run must mean everything ran: a skip (missing browser, data, package or server)
    is turned into a failure by `pytest_runtest_makereport` below."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and ci_forbids_skips():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {reason}"


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    """The settings of a fresh home under tmp_path; the pipeline's variables are cleared from the environment."""
    for name in _PIPELINE_ENV:
        monkeypatch.delenv(name, raising=False)
    settings = Settings.build(tmp_path / "home")
    settings.landing_dir.mkdir(parents=True)
    return settings


@pytest.fixture
def pipeline(settings):
    """The `pipeline` resource at the test's home."""
    from pipelines.defs.resources import PipelineSettings

    return PipelineSettings.of(settings)


@pytest.fixture
def resources(pipeline) -> dict:
    """Every resource of the code location at the test's home (pipeline, duckdb, mlflow)."""
    from pipelines.defs.resources import build_resources

    return build_resources(pipeline)


@pytest.fixture
def duckdb_resource(resources):
    return resources["duckdb"]


def shared_data_file(relative: str) -> Path:
    """A file of /work/shared/data, or skip the test when the data is not there."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"shared test data {path} not available")
    return path


@pytest.fixture
def ingest_day(resources):
    """Materialise one `events` day (with its checks) through dg.materialize; returns the result."""
    import dagster as dg

    from pipelines.defs import checks
    from pipelines.defs.ingest import build_events_asset
    from pipelines.defs.partitions import daily_partitions

    def run(day: str, *, start_date: str = "2026-01-01", config: dict | None = None, raise_on_error: bool = True):
        events = build_events_asset(daily_partitions(start_date))
        return dg.materialize(
            [events, checks.events_present_and_valid, checks.rejected_share_below_threshold],
            partition_key=day,
            resources=resources,
            run_config={"ops": {"events": {"config": config}}} if config else None,
            raise_on_error=raise_on_error,
        )

    return run


def evaluate_landing_sensor(settings: Settings, instance, cursor: str | None = None, start_date: str = "2026-01-01"):
    """One tick of `landing_sensor` over the test's home (the days from `start_date`)."""
    import dagster as dg

    from pipelines.defs.automation import build_landing_sensor
    from pipelines.defs.partitions import daily_partitions
    from pipelines.defs.resources import PipelineSettings

    sensor = build_landing_sensor(daily_partitions(start_date))
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor,
                                          resources={"pipeline": PipelineSettings.of(settings)}))


def query(settings: Settings, sql: str, params=None) -> list[tuple]:
    """Read the test's warehouse with a short read-only connection."""
    import duckdb

    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        return con.execute(sql, params).fetchall()
