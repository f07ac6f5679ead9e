"""The code location: loads, wires jobs/schedules/sensor (RUNNING), pools, the instance config, the CLIs (`dagster`,
`dg`); settings reach it through its resources, and nothing reads the environment at import."""

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
from conftest import evaluate_landing_sensor, query

from als_core.synthetic import generate_events
from pipelines.definitions import defs, defs_at
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
    assert schedules["tune_hyperparameters_schedule"].cron_schedule == "0 1 * * 0"
    assert schedules["daily_retrain_schedule"].execution_timezone == "UTC"
    assert schedules["ingest_daily"].job_name == "ingest"
    for schedule in schedules.values():
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    sensor = repository.get_sensor_def("landing_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "ingest"


def test_crons_and_first_day_come_from_the_environment_when_the_definitions_load(settings, monkeypatch):
    monkeypatch.setenv("ALS_RETRAIN_CRON", "15 4 * * 1")
    monkeypatch.setenv("ALS_TUNING_CRON", "0 2 * * 3")
    monkeypatch.setenv("ALS_PIPELINE_START_DATE", "2025-06-01")
    repository = defs().get_repository_def()
    schedules = {schedule.name: schedule.cron_schedule for schedule in repository.schedule_defs}
    assert schedules["daily_retrain_schedule"] == "15 4 * * 1"
    assert schedules["tune_hyperparameters_schedule"] == "0 2 * * 3"
    events = repository.asset_graph.get(dg.AssetKey("events")).partitions_def
    assert events.get_first_partition_key() == "2025-06-01"


def test_the_scheduled_retrain_trains_and_scores_with_the_engine_the_environment_names(settings, monkeypatch):
    from pipelines.defs.automation import ENGINE_ASSETS

    def scheduled_config() -> dict:
        schedule = defs().get_repository_def().get_schedule_def("daily_retrain_schedule")
        [request] = schedule.evaluate_tick(dg.build_schedule_context()).run_requests
        return request.run_config

    assert scheduled_config() == {}  # numba: every asset on its defaults
    monkeypatch.setenv("ALS_RETRAIN_ENGINE", "spark")
    config = scheduled_config()
    assert {asset: config["ops"][asset]["config"] for asset in ENGINE_ASSETS} == {
        "challenger": {"engine": "spark"}, "recommendations": {"engine": "spark"}}
    dg.validate_run_config(defs().get_job_def("daily_retrain"), config)  # raises for a config the job refuses
    monkeypatch.setenv("ALS_RETRAIN_ENGINE", "flink")
    with pytest.raises(Exception) as refused:  # Dagster wraps the module's error in its component tree's
        defs()
    assert "ALS_RETRAIN_ENGINE='flink': the engine is one of numba, spark" in str(refused.value.__cause__)


def test_the_resources_come_from_the_environment_as_env_vars_where_it_sets_them(monkeypatch):
    from als_store.settings import PROJECT_ROOT

    for name in ("ALS_PIPELINE_HOME", "ALS_PIPELINE_LANDING", "MLFLOW_TRACKING_URI", "ALS_MODEL_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALS_PIPELINE_EVENT_PRESET", "taobao")
    pipeline = defs().resources["pipeline"]
    assert pipeline.home == str(PROJECT_ROOT / ".data") and pipeline.model_name == "als-recommender"
    assert isinstance(pipeline.event_preset, dg.EnvVar) and pipeline.event_preset.env_var_name == "ALS_PIPELINE_EVENT_PRESET"
    # nested: the warehouse and the MLflow store are found through the same resource
    assert defs().resources["duckdb"].pipeline == pipeline == defs().resources["mlflow"].pipeline


def _evaluate(settings, cursor: str | None):
    with dg.instance_for_test() as instance:
        return evaluate_landing_sensor(settings, instance, cursor)


def test_sensor_requests_days_of_new_or_changed_files(settings):
    landing = settings.landing_dir
    for name in ("events-2026-01-01.csv", "events-2026-01-02.csv", "2026-01-02/more.jsonl", "events-2025-12-31.csv"):
        (landing / name).parent.mkdir(exist_ok=True)
        (landing / name).write_text("user_id,item_id,event_type,ts\n")
    (landing / ".events-2026-01-03.csv.partial").write_text("in progress")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    (landing / f"events-{today}.csv").write_text("user_id,item_id,event_type,ts\n")  # no partition yet

    first = _evaluate(settings, None)
    assert [r.partition_key for r in first.run_requests] == ["2026-01-01", "2026-01-02"]
    cursor = json.loads(first.cursor)
    assert set(cursor) == {"events-2026-01-01.csv", "events-2026-01-02.csv", "2026-01-02/more.jsonl", "events-2025-12-31.csv"}

    assert _evaluate(settings, first.cursor).run_requests == []

    changed = landing / "2026-01-02" / "more.jsonl"
    changed.write_text('{"user_id": 1}\n')
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = _evaluate(settings, first.cursor)
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


@pytest.mark.slow
def test_dg_checks_and_lists_the_definitions_from_the_project_root():
    dg_cli = str(Path(sys.executable).parent / "dg")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALS_", "MLFLOW_", "DAGSTER_"))}
    check = subprocess.run([dg_cli, "check", "defs"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    assert "All definitions loaded successfully" in check.stdout + check.stderr
    listed = subprocess.run([dg_cli, "list", "defs", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=240)
    assert listed.returncode == 0, listed.stderr[-3000:]
    found = json.loads(listed.stdout)
    assert DUCKDB_ASSETS | {"challenger", "evaluation", "champion", "recommendations"} <= {
        asset["asset_key"] for asset in found["assets"]}
    assert {"ingest", "daily_retrain"} <= {job["name"] for job in found["jobs"]}
    assert {"landing_sensor"} == {sensor["name"] for sensor in found["sensors"]}
    assert {"pipeline", "duckdb", "mlflow", "spark"} == {resource["name"] for resource in found["resources"]}


# Every module of the pipelines package imported with the environment's reads recorded: none of the pipeline's
# variables may be read at import (they are read when the definitions load, or by a command's main).
IMPORT_EVERYTHING = """
import importlib, json, os, pkgutil, sys
from pathlib import Path

PACKAGES = [Path(sys.argv[1]) / name for name in ("pipelines", "als_store", "als_core")]
read = set()


class Recording(type(os.environ)):
    def __getitem__(self, key):
        frame = sys._getframe(1)
        while frame.f_globals.get("__name__") in ("os", "collections.abc"):  # os.environ.get, os.getenv
            frame = frame.f_back
        if any(Path(frame.f_code.co_filename).is_relative_to(package) for package in PACKAGES):
            read.add(key)  # read by the project's code, not by a library it imports
        return super().__getitem__(key)


os.environ.__class__ = Recording
import pipelines

for module in pkgutil.walk_packages(pipelines.__path__, "pipelines."):
    if not module.name.endswith(".__main__"):  # a command runs when imported
        importlib.import_module(module.name)
print(json.dumps(sorted(read)))
"""


def test_no_module_reads_the_pipelines_variables_at_import():
    poisoned = {"ALS_PIPELINE_HOME": "/nonexistent/home", "ALS_PIPELINE_LANDING": "/nonexistent/landing",
                "ALS_PIPELINE_START_DATE": "not a date", "ALS_PIPELINE_EVENT_PRESET": "no such preset",
                "ALS_RETRAIN_CRON": "not a cron", "ALS_TUNING_CRON": "not a cron", "ALS_RETRAIN_ENGINE": "flink",
                "MLFLOW_TRACKING_URI": "relative.db", "ALS_MODEL_NAME": "poisoned"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALS_", "MLFLOW_TRACKING", "DAGSTER_"))}
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING, str(ROOT)], env={**env, **poisoned}, cwd=ROOT,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    read = set(json.loads(out.stdout.splitlines()[-1]))
    assert not read & set(poisoned), sorted(read & set(poisoned))


@pytest.mark.slow
def test_runs_in_process_write_where_the_resources_say_not_where_the_environment_says(settings, pipeline, tmp_path,
                                                                                        monkeypatch):
    """The ingest and the whole retrain run on the definitions with the test's resources while every variable
    names another home: everything lands in the test's home, nothing in the other."""
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("ALS_PIPELINE_HOME", str(elsewhere))
    monkeypatch.setenv("ALS_PIPELINE_LANDING", str(elsewhere / "landing"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere / 'mlflow.db'}")
    monkeypatch.setenv("ALS_MODEL_NAME", "elsewhere")
    events = generate_events(n_users=150, n_items=60, n_events=3_000, n_days=3, seed=2, start="2026-01-01")
    write_day_files(events, settings.landing_dir, "csv")
    definitions = defs_at(pipeline)
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with dg.instance_for_test() as instance:
        for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
            assert definitions.resolve_job_def("ingest").execute_in_process(
                partition_key=day, instance=instance, run_config=quiet).success
        retrain = definitions.resolve_job_def("daily_retrain").execute_in_process(instance=instance, run_config={
            **quiet, "ops": {"challenger": {"config": {"factors": 4, "iterations": 2}}}})
    assert retrain.success
    assert query(settings, "SELECT count(DISTINCT partition_day) FROM events") == [(3,)]
    assert (settings.training_dir / "latest").is_dir()
    assert (settings.home / "mlflow.db").is_file() and any(settings.scored_lists_dir.glob("*.npz"))
    assert not elsewhere.exists()
