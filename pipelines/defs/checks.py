"""Checks of an `events` day: present and valid (blocking), few rows rejected (warning).

The checks are not partitioned themselves (partitioned checks are a preview feature in 1.13):
in an ingest run they check the run's partition; run on their own, the latest day in the table.
"""

import datetime as dt

import dagster as dg
from pydantic import Field

from als_store import sql_files
from pipelines.defs.resources import DuckDBResource
from pipelines.event_ingest import ensure_schema

EXPECTED_COLUMNS = [
    ("user_id", "VARCHAR"),
    ("item_id", "VARCHAR"),
    ("event_type", "VARCHAR"),
    ("ts", "TIMESTAMP"),
    ("partition_day", "DATE"),
    ("source_file", "VARCHAR"),
    ("source_line", "BIGINT"),
]
_RULES = ("missing_ids", "bad_event_types", "off_day")


class RejectedShareConfig(dg.Config):
    max_rejected_share: float = Field(
        default=0.05, ge=0, le=1, description="Warn when more than this share of a day's rows was rejected."
    )


def _day_counts(context: dg.AssetCheckExecutionContext, con) -> tuple[dt.date | None, dict]:
    """The checked day and its counts (events, rule breaks, rejected)."""
    if context.has_partition_key:
        day = dt.date.fromisoformat(context.partition_key)
    else:
        day = sql_files.run(con, "check_latest_day").fetchone()[0]
    row = sql_files.run(con, "check_events_partition", {"day": day}).fetchone()
    return day, dict(zip(("events", *_RULES, "rejected"), (int(v) for v in row)))


@dg.asset_check(
    asset="events",
    name="events_present_and_valid",
    blocking=True,
    pool="duckdb",
    description="The day has events, the table has the expected columns, every row obeys the ingest rules.",
)
def events_present_and_valid(context: dg.AssetCheckExecutionContext, duckdb: DuckDBResource) -> dg.AssetCheckResult:
    with duckdb.connect() as con:
        ensure_schema(con)
        columns = [tuple(c) for c in sql_files.run(con, "check_events_columns").fetchall()]
        day, counts = _day_counts(context, con)
    problems = []
    if columns != EXPECTED_COLUMNS:
        problems.append(f"columns {columns}, expected {EXPECTED_COLUMNS}")
    if counts["events"] == 0:
        problems.append(f"no events for {day}" if day else "table `events` is empty")
    problems += [f"{counts[rule]} rows with {rule.replace('_', ' ')}" for rule in _RULES if counts[rule]]
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or f"{day}: {counts['events']:,} valid events",
        metadata={"day": dg.MetadataValue.text(str(day)), **{k: dg.MetadataValue.int(n) for k, n in counts.items()}},
    )


@dg.asset_check(
    asset="events",
    name="rejected_share_below_threshold",
    pool="duckdb",
    description="The share of the day's rows that went to rejected_events stays under a threshold.",
)
def rejected_share_below_threshold(
    context: dg.AssetCheckExecutionContext, config: RejectedShareConfig, duckdb: DuckDBResource
) -> dg.AssetCheckResult:
    with duckdb.connect() as con:
        ensure_schema(con)
        day, counts = _day_counts(context, con)
    total = counts["events"] + counts["rejected"]
    share = counts["rejected"] / total if total else 0.0
    return dg.AssetCheckResult(
        passed=share <= config.max_rejected_share,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{day}: {counts['rejected']:,} of {total:,} rows rejected ({share:.2%})",
        metadata={
            "day": dg.MetadataValue.text(str(day)),
            "rejected_share": dg.MetadataValue.float(share),
            "rejected": dg.MetadataValue.int(counts["rejected"]),
            "rows_in": dg.MetadataValue.int(total),
            "max_rejected_share": dg.MetadataValue.float(config.max_rejected_share),
        },
    )
