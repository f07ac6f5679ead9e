"""The daily partitions of `events` (UTC days); the first day comes from ALS_PIPELINE_START_DATE."""

import os

import dagster as dg

DEFAULT_START_DATE = "2026-01-01"


def daily_partitions(start_date: str | None = None) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(
        start_date=start_date or os.environ.get("ALS_PIPELINE_START_DATE") or DEFAULT_START_DATE,
        timezone="UTC",
    )


event_days = daily_partitions()
