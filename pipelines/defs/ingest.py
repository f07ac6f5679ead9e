"""`events`: one UTC day of landing files into DuckDB, bad rows quarantined (pipelines.event_ingest)."""

import datetime as dt

import dagster as dg
from duckdb import FatalException as DuckDBFatalException
from duckdb import IOException as DuckDBIOException
from pydantic import Field

from pipelines import event_ingest
from pipelines.defs.partitions import daily_partitions
from pipelines.defs.resources import DuckDBResource, PipelineSettings
from pipelines.event_sources import PRESETS, EventMapping, preset
from pipelines.landing import files_for_day
from pipelines.markdown import markdown_table


class EventsConfig(dg.Config):
    """Which kind of log the landing files are; any field left empty keeps the preset's value."""

    preset: str | None = Field(
        default=None,
        description=f"One of {sorted(PRESETS)}; empty: the `pipeline` resource's event_preset "
        "($ALS_PIPELINE_EVENT_PRESET or 'default').",
    )
    user_column: str | None = Field(default=None, description="Source column of the user id.")
    item_column: str | None = Field(default=None, description="Source column of the item id.")
    event_column: str | None = Field(default=None, description="Source column of the event name.")
    time_column: str | None = Field(default=None, description="Source column of the event time.")
    time_unit: str | None = Field(default=None, description="iso | epoch_s | epoch_ms | format")
    time_format: str | None = Field(default=None, description="DuckDB strptime format when time_unit is 'format'.")
    event_names: dict[str, str] | None = Field(
        default=None, description="Raw event name -> view | cart | purchase; unlisted names are quarantined."
    )
    header: bool | None = Field(default=None, description="Whether CSV files start with a header line.")
    column_names: list[str] | None = Field(default=None, description="Columns of header-less CSV files, in order.")
    delimiter: str | None = Field(default=None, description="CSV field delimiter.")
    allow_empty: bool = Field(
        default=False,
        description="Let landing files with no rows (0 bytes, a header only), or rows that are all rejected, "
        "replace what the day holds. Off: such a run fails, names the file and keeps the day as it was.",
    )

    def mapping(self, default_preset: str) -> EventMapping:
        base = preset(self.preset or default_preset)
        return base.with_overrides(
            user_column=self.user_column,
            item_column=self.item_column,
            event_column=self.event_column,
            time_column=self.time_column,
            time_unit=self.time_unit,
            time_format=self.time_format,
            event_names=self.event_names,
            header=self.header,
            column_names=self.column_names,
            delimiter=self.delimiter,
        )


def _metadata(result: event_ingest.DayResult, preview: list[tuple]) -> dict:
    md = dg.MetadataValue
    metadata = {
        "dagster/row_count": md.int(result.events),
        "rows_in": md.int(result.rows_in),
        "events": md.int(result.events),
        "rejected": md.int(result.rejected),
        "users": md.int(result.users),
        "items": md.int(result.items),
        "files": md.int(len(result.files)),
        "duplicate_files": md.int(len(result.duplicate_files)),
        **{f"events_{kind}": md.int(n) for kind, n in result.events_by_type.items()},
        **{f"rejected: {reason}": md.int(n) for reason, n in result.rejected_by_reason.items()},
        "files_read": md.md(
            markdown_table(
                ["file", "loaded", "rejected", "duplicate of"],
                [(f.source_file, f.rows_loaded, f.rows_rejected, f.duplicate_of or "") for f in result.files],
            )
        ),
        "preview": md.md(markdown_table(["user_id", "item_id", "event_type", "ts", "file", "line"], preview)),
    }
    return metadata


def build_events_asset(partitions_def: dg.DailyPartitionsDefinition) -> dg.AssetsDefinition:
    """The asset for a given partitioning (tests use their own start dates)."""

    @dg.asset(
        name="events",
        group_name="ingest",
        partitions_def=partitions_def,
        pool="duckdb",
        kinds={"duckdb"},
        description="One UTC day of landing files in DuckDB table `events`; bad rows in `rejected_events`.",
    )
    def events(context: dg.AssetExecutionContext, config: EventsConfig, duckdb: DuckDBResource,
               pipeline: PipelineSettings) -> dg.MaterializeResult:
        landing_dir = pipeline.settings.landing_dir
        day = dt.date.fromisoformat(context.partition_key)
        mapping = config.mapping(pipeline.event_preset)
        files = files_for_day(landing_dir, day)
        context.log.info(f"{day}: {len(files)} landing file(s) in {landing_dir}, mapping {mapping.name!r}")
        if not files:
            # failing keeps what the day holds: files may not have landed yet, or been archived
            raise dg.Failure(
                f"no landing files for {day} in {landing_dir} (names must contain {day}); nothing changed"
            )
        try:
            with duckdb.connect() as con:
                result = event_ingest.ingest_day(
                    con, day, files, mapping, log=context.log.info, allow_empty=config.allow_empty
                )
                preview = event_ingest.preview(con, day)
        except (DuckDBIOException, DuckDBFatalException) as error:  # DuckDB's bare "IO Error" names no cause
            failure = event_ingest.warehouse_write_error(error, duckdb.database, day)
            if failure is None:
                raise
            raise failure from error
        context.log.info(
            f"{day}: {result.events:,} events, {result.rejected:,} rejected {result.rejected_by_reason}, "
            f"{result.users:,} users, {result.items:,} items"
        )
        return dg.MaterializeResult(metadata=_metadata(result, preview))

    return events


@dg.definitions
def defs() -> dg.Definitions:
    """`events` over the days from ALS_PIPELINE_START_DATE, read when the definitions load."""
    return dg.Definitions(assets=[build_events_asset(daily_partitions())])
