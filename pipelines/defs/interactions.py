"""`interactions`: summed event weights per (user, item) over a window of days (als_store/sql/interactions.sql)."""

import datetime as dt

import dagster as dg
import duckdb
from pydantic import Field

from als_core.weighting import DEFAULT_WEIGHTING, EventWeighting
from als_store import sql_files
from als_store.warehouse import at_least_threads, transaction
from pipelines.event_ingest import ensure_schema
from pipelines.defs.resources import DuckDBResource


# Threads for the GROUP BY of `interactions`, at least. DuckDB partitions its hash aggregate by its thread count
# (and takes a shortcut with 1 or 2 threads, duckdb/duckdb#20357): on a 2-core machine the statement over 10M
# events took 1.4 s with 3 or 4 threads against 1.9-2.1 s with the default 2 (6-8: 1.5-1.7 s), the same table.
# training_data's reads were slower with 4, so only this step raises it.
AGGREGATE_THREADS = 4


class InteractionsConfig(dg.Config):
    window_days: int = Field(default=30, ge=1, description="Days of events summed, ending at end_date.")
    end_date: str | None = Field(
        default=None, description="Last day of the window (YYYY-MM-DD); empty: the latest day with events."
    )
    view_weight: float = Field(default=DEFAULT_WEIGHTING.view_weight, ge=0, description="Weight of one view.")
    cart_weight: float = Field(default=DEFAULT_WEIGHTING.cart_weight, ge=0, description="Weight of one add-to-cart.")
    purchase_weight: float = Field(default=DEFAULT_WEIGHTING.purchase_weight, ge=0,
                                   description="Weight of one purchase.")
    half_life_days: float = Field(
        default=DEFAULT_WEIGHTING.half_life_days, ge=0,
        description="Exponential time decay: an event this many days old counts half. 0 = off."
    )

    @property
    def weighting(self) -> EventWeighting:
        """The weighting these fields give; recorded with the table (`interactions_window`), then carried by
        the training snapshot and the model bundle."""
        return EventWeighting(self.view_weight, self.cart_weight, self.purchase_weight, self.half_life_days)


def build_interactions(con, config: InteractionsConfig) -> dict:
    """Rebuild `interactions` (and `interactions_window`) in one transaction; returns the counts."""
    end_day = dt.date.fromisoformat(config.end_date) if config.end_date else None
    start_day, end_day = sql_files.run(
        con, "interactions_window", {"window_days": config.window_days, "end_day": end_day}
    ).fetchone()
    if end_day is None:
        raise dg.Failure("table `events` is empty: materialise some `events` partitions first")
    params = {"start_day": start_day, "end_day": end_day, **config.weighting.as_dict()}
    sql_files.run(con, "weighted_events")
    # the setting changes outside the transaction, so that a failed statement cannot keep it from going back
    with at_least_threads(con, AGGREGATE_THREADS), transaction(con):
        sql_files.run(con, "partition_id_types", params)  # days without a record (one deleted to be recomputed)
        (integer_ids,) = sql_files.run(con, "interactions_id_type", params).fetchone()
        sql_files.run(con, "interactions_ids_integer" if integer_ids else "interactions_ids_text")
        try:
            sql_files.run(con, "interactions", params)
        except duckdb.ConversionException as exc:  # `events` written to outside the ingest
            raise dg.Failure(
                f"a day of {start_day}..{end_day} holds an id that is not an integer although `partition_id_types` "
                f"says its ids are ({exc}): delete that day's row from `partition_id_types` (it is recomputed) or "
                "materialise the day's `events` again") from exc
        pairs, users, items, n_events, total_weight = sql_files.run(con, "interactions_record", params).fetchone()
    return {
        "start_day": start_day,
        "end_day": end_day,
        "pairs": int(pairs),
        "users": int(users),
        "items": int(items),
        "events": int(n_events),
        "total_weight": float(total_weight),
        "id_type": "BIGINT" if integer_ids else "VARCHAR",
    }


@dg.asset(
    group_name="training",
    deps=["events"],  # built when the definitions load (pipelines/defs/ingest.py)
    pool="duckdb",
    kinds={"duckdb"},
    description="DuckDB table `interactions(user_id, item_id, weight, n_events, weight_before_last_day)` over a "
                "window; ids BIGINT when every one is an integer, else text.",
)
def interactions(
    context: dg.AssetExecutionContext, config: InteractionsConfig, duckdb: DuckDBResource
) -> dg.MaterializeResult:
    with duckdb.connect() as con:
        ensure_schema(con)  # a fresh warehouse has no tables yet: fail below with a clear message
        counts = build_interactions(con, config)
    context.log.info(
        f"interactions {counts['start_day']}..{counts['end_day']}: {counts['pairs']:,} pairs from "
        f"{counts['events']:,} events, {counts['users']:,} users, {counts['items']:,} items"
    )
    if counts["pairs"] == 0:
        raise dg.Failure(f"no events between {counts['start_day']} and {counts['end_day']}")
    md = dg.MetadataValue
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": md.int(counts["pairs"]),
            "window_start": md.text(str(counts["start_day"])),
            "window_end": md.text(str(counts["end_day"])),
            "users": md.int(counts["users"]),
            "items": md.int(counts["items"]),
            "events": md.int(counts["events"]),
            "total_weight": md.float(counts["total_weight"]),
            "weighting": md.json(config.weighting.as_dict()),
            "half_life_days": md.float(config.half_life_days),
            "id_type": md.text(counts["id_type"]),
        }
    )
