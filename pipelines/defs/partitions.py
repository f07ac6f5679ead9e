"""The daily partitions of `events` (UTC days); the first day comes from ALS_PIPELINE_START_DATE.

The partitions are part of the definitions' structure, so the variable is read when the definitions load
(`daily_partitions()` in the `@dg.definitions` functions of ingest.py and automation.py), never at import.
"""

import datetime as dt
import os

import click
import dagster as dg

DEFAULT_START_DATE = "2026-01-01"
START_DATE_VARIABLE = "ALS_PIPELINE_START_DATE"


class PartitionBeforeStartError(click.ClickException):
    """A day before the first partition. A ClickException, so that the `dagster` CLI prints it as one
    line (`Error: ...`, exit status 1) instead of a traceback; anywhere else it is a plain exception."""


def before_start_message(partition_key: str, start: dt.date) -> str | None:
    """The sentence for a day before the first partition; None when the key is no such day."""
    try:
        day = dt.date.fromisoformat(partition_key)
    except ValueError:
        return None
    if day >= start:
        return None
    now = os.environ.get(START_DATE_VARIABLE)
    setting = f"{START_DATE_VARIABLE} is {now}" if now else f"{START_DATE_VARIABLE} is not set: {DEFAULT_START_DATE}"
    return (
        f"{day} is before the first `events` partition {start} ({setting}). Set {START_DATE_VARIABLE} to the "
        f"first day of your data in the environment of the command, the UI and the daemon, e.g. "
        f"`export {START_DATE_VARIABLE}={day}` (Taobao's UserBehavior.csv starts on 2017-11-24 in UTC), and run again."
    )


class EventDays(dg.DailyPartitionsDefinition):
    """Daily UTC partitions whose error for a day before the first one says what to set."""

    def validate_partition_key(self, partition_key: str, context) -> None:
        try:
            super().validate_partition_key(partition_key, context)
        except dg.DagsterUnknownPartitionError:
            message = before_start_message(partition_key, self.start.date())
            if message is None:
                raise
            raise PartitionBeforeStartError(message) from None


def daily_partitions(start_date: str | None = None) -> dg.DailyPartitionsDefinition:
    """Days from `start_date`; None: from ALS_PIPELINE_START_DATE, else DEFAULT_START_DATE."""
    return EventDays(
        start_date=start_date or os.environ.get(START_DATE_VARIABLE) or DEFAULT_START_DATE,
        timezone="UTC",
    )

