"""Jobs, schedules and the landing sensor; all start RUNNING with the code location.

- `ingest`: the `events` asset, one day per run; scheduled daily for the day just ended, and
  requested by `landing_sensor` for the days of new or changed landing files (not for a day the
  warehouse already holds from these same files, e.g. every day `make run` ingested).
- `daily_retrain`: the whole `training` group (interactions -> training_data -> challenger ->
  evaluation -> champion -> recommendations) on the cron $ALS_RETRAIN_CRON (default 03:00 UTC), training and
  scoring with the engine $ALS_RETRAIN_ENGINE (`numba` by default, `spark`: docs/scale.md).
- `tune_hyperparameters` (pipelines/defs/tuning.py) on the cron $ALS_TUNING_CRON (default Sundays 01:00 UTC).

The crons, the retrain's engine and the first partition (ALS_PIPELINE_START_DATE, for the sensor) shape the definitions, so
`defs()` reads them when the definitions load, never at import. A module with a `@dg.definitions` function
contributes only what that function returns (dg.load_from_defs_folder): a new job here goes into `defs()`.
"""

import datetime as dt
import hashlib
import json
import os

import dagster as dg
import duckdb

from als_store import sql_files, warehouse
from als_store.settings import Settings
from pipelines.defs import tuning
from pipelines.defs.model_assets import ENGINES
from pipelines.defs.partitions import daily_partitions
from pipelines.defs.resources import PipelineSettings
from pipelines.event_ingest import content_sha256
from pipelines.landing import LandingFile, landing_files

WAREHOUSE_WAIT_S = 1.0  # the sensor reads the warehouse between the runs' writes, never waits for them

RETRAIN_CRON_VARIABLE, DEFAULT_RETRAIN_CRON = "ALS_RETRAIN_CRON", "0 3 * * *"
TUNING_CRON_VARIABLE, DEFAULT_TUNING_CRON = "ALS_TUNING_CRON", "0 1 * * 0"
RETRAIN_ENGINE_VARIABLE = "ALS_RETRAIN_ENGINE"
# the assets whose run config has `engine`: the challenger trains, `recommendations` scores
ENGINE_ASSETS = ("challenger", "recommendations")

ingest_job = dg.define_asset_job(
    name="ingest",
    selection=dg.AssetSelection.assets("events"),  # partitioned like `events`
    description="Ingest one day of landing files into `events`.",
)

ingest_schedule = dg.build_schedule_from_partitioned_job(
    ingest_job,
    name="ingest_daily",
    hour_of_day=0,
    minute_of_hour=30,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

daily_retrain_job = dg.define_asset_job(
    name="daily_retrain",
    selection=dg.AssetSelection.groups("training"),
    description="Rebuild interactions and training data, train a challenger and gate it against the champion.",
)


def daily_retrain_schedule(cron: str, engine: str = ENGINES[0]) -> dg.ScheduleDefinition:
    """The scheduled retrain; ``engine`` other than numba goes into its run config for the challenger and
    `recommendations`, as a person would set it in the launchpad (the UI shows it on every scheduled run)."""
    if engine not in ENGINES:
        raise ValueError(f"{RETRAIN_ENGINE_VARIABLE}={engine!r}: the engine is one of {', '.join(ENGINES)}")
    run_config = None
    if engine != ENGINES[0]:
        run_config = {"ops": {asset: {"config": {"engine": engine}} for asset in ENGINE_ASSETS}}
    return dg.ScheduleDefinition(
        name="daily_retrain_schedule",
        job=daily_retrain_job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        run_config=run_config,
    )


def _file_state(path) -> list[int]:
    stat = path.stat()
    return [stat.st_mtime_ns, stat.st_size]


def already_ingested(settings: Settings, files_by_day: dict[str, list[LandingFile]]) -> set[str]:
    """The days whose last ingest read exactly these files: same names, sizes and content (`ingested_files`).
    A warehouse that cannot be read now (none yet, or a run holds its lock) vouches for no day: they are
    requested, which is what an ingest of the same files costs, never a lost day."""
    if not files_by_day or not settings.duckdb_path.exists():
        return set()
    try:
        with warehouse.open_warehouse(settings.duckdb_path, read_only=True, lock_timeout_s=WAREHOUSE_WAIT_S) as con:
            rows = sql_files.run(con, "landing_ingested_files", {"days": sorted(files_by_day)}).fetchall()
    except duckdb.Error:
        return set()
    recorded: dict[str, dict[str, tuple[int, str]]] = {}
    for day, source_file, size, sha in rows:
        recorded.setdefault(day, {})[source_file] = (int(size), sha)
    same = set()
    for day, files in files_by_day.items():
        before = recorded.get(day, {})
        now = {f.relative: f for f in files}
        if now.keys() != before.keys() or any(f.path.stat().st_size != before[r][0] for r, f in now.items()):
            continue
        if all(content_sha256(f.path) == before[r][1] for r, f in now.items()):  # only when all else matched
            same.add(day)
    return same


def build_landing_sensor(event_days: dg.DailyPartitionsDefinition) -> dg.SensorDefinition:
    """The sensor over the days of `event_days` (the partitions of `events`)."""

    @dg.sensor(
        name="landing_sensor",
        job=ingest_job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Requests the `events` partition of every landing file that is new or changed.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineSettings) -> dg.SensorResult:
        return _landing_tick(context, pipeline.settings, event_days)

    return landing_sensor


def _landing_tick(context: dg.SensorEvaluationContext, settings: Settings,
                  event_days: dg.DailyPartitionsDefinition) -> dg.SensorResult:
    """Cursor: {relative path: [mtime_ns, size]} of the files already requested or ingested. A file
    whose day has no partition yet (today, or the future) is left out of the cursor and requested
    once the day is over; a file before the first partition is recorded and skipped. A new or
    changed day whose files the warehouse says it ingested last (same names, sizes and content)
    is recorded without a run: the first `make ui` after `make run` queues nothing."""
    seen: dict[str, list[int]] = json.loads(context.cursor) if context.cursor else {}
    now = dt.datetime.now(dt.UTC)
    valid_days = set(event_days.get_partition_keys(current_time=now))
    first_day = event_days.start.date().isoformat()
    cursor: dict[str, list[int]] = {}
    day_files: dict[str, list[str]] = {}
    files_by_day: dict[str, list[LandingFile]] = {}
    changed: set[str] = set()
    for landing_file in landing_files(settings.landing_dir):
        day = landing_file.day.isoformat()
        state = _file_state(landing_file.path)
        if day in valid_days:
            cursor[landing_file.relative] = state
            day_files.setdefault(day, []).append(f"{landing_file.relative}:{state}")
            files_by_day.setdefault(day, []).append(landing_file)
            if seen.get(landing_file.relative) != state:
                changed.add(day)
        elif day < first_day:
            cursor[landing_file.relative] = state
            if landing_file.relative not in seen:
                context.log.warning(f"{landing_file.relative}: {day} is before the first partition {first_day}")
    ingested = already_ingested(settings, {day: files_by_day[day] for day in changed})
    if ingested:
        context.log.info(f"already ingested from these same files, not requested: {sorted(ingested)}")
    changed -= ingested
    run_requests = [
        dg.RunRequest(
            partition_key=day,
            # keyed by the day's whole set of file versions: the same state never runs twice
            run_key=f"{day}:{hashlib.sha256(json.dumps(sorted(day_files[day])).encode()).hexdigest()[:16]}",
            tags={"landing/files": str(len(day_files[day]))},
        )
        for day in sorted(changed)
    ]
    if run_requests:
        context.log.info(f"new or changed landing files for {[r.partition_key for r in run_requests]}")
    return dg.SensorResult(run_requests=run_requests, cursor=json.dumps(cursor, sort_keys=True))


@dg.definitions
def defs() -> dg.Definitions:
    """The jobs, the schedules on the crons (and the retrain's engine) the environment sets and the sensor over
    `events`' days."""
    return dg.Definitions(
        jobs=[ingest_job, daily_retrain_job],
        schedules=[
            ingest_schedule,
            daily_retrain_schedule(os.environ.get(RETRAIN_CRON_VARIABLE) or DEFAULT_RETRAIN_CRON,
                                   os.environ.get(RETRAIN_ENGINE_VARIABLE) or ENGINES[0]),
            tuning.weekly_tuning(os.environ.get(TUNING_CRON_VARIABLE) or DEFAULT_TUNING_CRON),
        ],
        sensors=[build_landing_sensor(daily_partitions())],
    )
