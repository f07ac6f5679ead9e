"""The code location: loads, wires jobs/schedules/sensor (RUNNING), pools, the instance config, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from conftest import query

from als_core.synthetic import generate_events
from pipelines.definitions import defs
from pipelines.defs import automation
from pipelines.instance import SHIPPED_CONFIG, dagster_env, prepare_dagster_home
from pipelines.landing import write_day_files

ROOT = Path(__file__).resolve().parents[1]
DUCKDB_ASSETS = {"events", "interactions", "training_data"}


@pytest.fixture(scope="module")
def repository():
    definitions = defs()
    dg.Definitions.validate_loadable(definitions)
    return definitions.get_repository_def()


def test_assets_checks_and_groups(repository):
    graph = repository.asset_graph
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert DUCKDB_ASSETS <= keys
    assert graph.get(dg.AssetKey("events")).group_name == "ingest"
    assert graph.get(dg.AssetKey("interactions")).group_name == "training"
    assert graph.get(dg.AssetKey("training_data")).group_name == "training"
    assert isinstance(graph.get(dg.AssetKey("events")).partitions_def, dg.DailyPartitionsDefinition)
    checks = {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys}
    assert {("events", "events_present_and_valid"), ("events", "rejected_share_below_threshold")} <= checks


def test_everything_that_opens_duckdb_is_in_the_duckdb_pool(repository):
    for assets_def in repository.assets_defs_by_key.values():
        for key in assets_def.keys:
            if key.to_user_string() in DUCKDB_ASSETS:
                assert assets_def.op.pool == "duckdb", key
    for checks_def in defs().asset_checks:
        if any(key.asset_key == dg.AssetKey("events") for key in checks_def.check_keys):
            assert checks_def.op.pool == "duckdb"


def test_jobs_schedules_and_sensor_run_by_default(repository):
    assert {"ingest", "daily_retrain"} <= {job.name for job in repository.get_all_jobs()}
    ingest_job = repository.get_job("ingest")
    assert ingest_job.partitions_def is not None
    assert {k.to_user_string() for k in ingest_job.asset_layer.executable_asset_keys} == {"events"}
    retrain = repository.get_job("daily_retrain")
    retrain_keys = {k.to_user_string() for k in retrain.asset_layer.executable_asset_keys}
    assert {"interactions", "training_data"} <= retrain_keys and "events" not in retrain_keys

    schedules = {schedule.name: schedule for schedule in repository.schedule_defs}
    assert schedules["daily_retrain_schedule"].cron_schedule == "0 3 * * *"
    assert schedules["daily_retrain_schedule"].execution_timezone == "UTC"
    assert schedules["ingest_daily"].job_name == "ingest"
    for schedule in schedules.values():
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    sensor = repository.get_sensor_def("landing_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "ingest"


def test_retrain_cron_comes_from_the_environment():
    code = "from pipelines.defs import automation; print(automation.daily_retrain_schedule.cron_schedule)"
    env = {**os.environ, "ALS_RETRAIN_CRON": "15 4 * * 1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "15 4 * * 1"


def _evaluate(cursor: str | None):
    with dg.instance_for_test() as instance:
        return automation.landing_sensor(dg.build_sensor_context(instance=instance, cursor=cursor))


def test_sensor_requests_days_of_new_or_changed_files(settings):
    landing = settings.landing_dir
    for name in ("events-2026-01-01.csv", "events-2026-01-02.csv", "2026-01-02/more.jsonl", "events-2025-12-31.csv"):
        (landing / name).parent.mkdir(exist_ok=True)
        (landing / name).write_text("user_id,item_id,event_type,ts\n")
    (landing / ".events-2026-01-03.csv.partial").write_text("in progress")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    (landing / f"events-{today}.csv").write_text("user_id,item_id,event_type,ts\n")  # no partition yet

    first = _evaluate(None)
    assert [r.partition_key for r in first.run_requests] == ["2026-01-01", "2026-01-02"]
    cursor = json.loads(first.cursor)
    assert set(cursor) == {"events-2026-01-01.csv", "events-2026-01-02.csv", "2026-01-02/more.jsonl", "events-2025-12-31.csv"}

    assert _evaluate(first.cursor).run_requests == []

    changed = landing / "2026-01-02" / "more.jsonl"
    changed.write_text('{"user_id": 1}\n')
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = _evaluate(first.cursor)
    assert [r.partition_key for r in again.run_requests] == ["2026-01-02"]
    assert again.run_requests[0].run_key != next(r for r in first.run_requests if r.partition_key == "2026-01-02").run_key


def test_instance_config_limits_every_pool_to_one(settings):
    home = prepare_dagster_home(settings)
    assert (home / "dagster.yaml").read_text() == SHIPPED_CONFIG.read_text()
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    finally:
        instance.dispose()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # a local edit survives
    prepare_dagster_home(settings)
    assert "concurrency" not in (home / "dagster.yaml").read_text()


# pipelines/dagster.yaml as the project shipped it before the instance class and run monitoring
_SHIPPED_BEFORE_RECOVERY = """\
# The Dagster instance config this project ships; `python -m pipelines.instance` copies it to
# $DAGSTER_HOME/dagster.yaml (DAGSTER_HOME = <ALS_PIPELINE_HOME>/dagster), storage stays there.
concurrency:
  pools:
    # Every pool of this project guards a single writer: `duckdb` (DuckDB allows one writing
    # process per file) and `promotion` (moving the MLflow champion alias). A default of 1 gives
    # each of them, and any pool added later, one slot without a `dagster instance concurrency set`.
    default_limit: 1
    granularity: op
  runs:
    max_concurrent_runs: 4

telemetry:
  enabled: false
"""


def test_an_unedited_older_instance_config_is_upgraded_an_edited_one_is_kept(settings):
    from pipelines.instance import SHIPPED_HASH_FILE

    home = settings.dagster_home
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(_SHIPPED_BEFORE_RECOVERY)  # an instance prepared by the previous version
    prepare_dagster_home(settings)
    assert (home / "dagster.yaml").read_text() == SHIPPED_CONFIG.read_text()

    # a copy this version wrote, unedited, when the shipped file changes later: replaced
    older = SHIPPED_CONFIG.read_text().replace("start_timeout_seconds: 180", "start_timeout_seconds: 120")
    (home / "dagster.yaml").write_text(older)
    (home / SHIPPED_HASH_FILE).write_text(hashlib.sha256(older.encode()).hexdigest() + "\n")
    prepare_dagster_home(settings)
    assert (home / "dagster.yaml").read_text() == SHIPPED_CONFIG.read_text()

    edited = _SHIPPED_BEFORE_RECOVERY.replace("max_concurrent_runs: 4", "max_concurrent_runs: 2")
    (home / "dagster.yaml").write_text(edited)
    prepare_dagster_home(settings)
    assert (home / "dagster.yaml").read_text() == edited


@pytest.mark.slow
def test_ingest_through_the_dagster_cli(settings):
    events = generate_events(n_users=100, n_items=40, n_events=1_500, n_days=2, seed=6, start="2026-01-01")
    write_day_files(events, settings.landing_dir, "csv.gz")
    command = [
        str(Path(sys.executable).parent / "dagster"), "asset", "materialize",
        "-m", "pipelines.definitions", "--select", "events", "--partition", "2026-01-02",
    ]
    out = subprocess.run(command, env=dagster_env(settings), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    expected = int((events["ts"].dt.date.astype(str) == "2026-01-02").sum())
    assert query(settings, "SELECT count(*) FROM events WHERE partition_day = DATE '2026-01-02'") == [(expected,)]
    instance = dg.DagsterInstance.from_config(str(settings.dagster_home))
    try:
        records = instance.get_run_records()
        assert [r.dagster_run.status for r in records] == [dg.DagsterRunStatus.SUCCESS]
        assert records[0].dagster_run.tags["dagster/partition"] == "2026-01-02"
        # the multiprocess executor ran events and its two checks under the instance's pool limit
        assert instance.event_log_storage.get_concurrency_info("duckdb").slot_count == 1
    finally:
        instance.dispose()


def test_settings_paths_are_absolute_and_follow_the_environment(tmp_path, monkeypatch):
    from als_store.settings import PROJECT_ROOT, Settings

    defaults = Settings.from_env({})
    assert defaults.home == PROJECT_ROOT / ".data"
    assert defaults.mlflow_tracking_uri == f"sqlite:///{PROJECT_ROOT / '.data' / 'mlflow.db'}"
    assert defaults.model_name == "als-recommender"

    monkeypatch.chdir(tmp_path)
    custom = Settings.from_env(
        {"ALS_PIPELINE_HOME": "rel/home", "ALS_PIPELINE_LANDING": "drop", "MLFLOW_TRACKING_URI": "sqlite:///m.db", "ALS_MODEL_NAME": "m"}
    )
    assert custom.home == tmp_path / "rel" / "home"
    assert custom.duckdb_path == tmp_path / "rel" / "home" / "warehouse.duckdb"
    assert custom.dagster_home == custom.home / "dagster" and custom.training_dir == custom.home / "training"
    assert custom.mlflow_artifact_root == custom.home / "mlartifacts"
    assert custom.landing_dir == tmp_path / "drop"
    assert custom.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'm.db'}"
    assert Settings.from_env({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}).mlflow_tracking_uri == "http://127.0.0.1:5000"
