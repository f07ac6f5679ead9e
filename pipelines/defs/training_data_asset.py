"""`training_data`: id maps, the train matrix and the holdout, published to `latest_dir(settings)`."""

from typing import Literal

import dagster as dg
import numpy as np
from pydantic import Field

from als_core.weighting import EventWeighting
from als_store import sql_files
from pipelines.defs.interactions import interactions
from pipelines.defs.resources import DuckDBResource, PipelineSettings
from pipelines.training_data import (
    CodedPairs,
    TrainingData,
    latest_dir,
    publish,
    random_from_coded,
    temporal_from_coded,
)


class TrainingDataConfig(dg.Config):
    split: Literal["temporal", "random"] = Field(
        default="temporal",
        description="temporal: hold out pairs first seen on the window's last day; random: per user, a random fraction.",
    )
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1, description="Share of each user's items held out (random split).")
    seed: int = Field(default=0, description="Seed of the random split.")


def _read_window(con) -> tuple[dict, EventWeighting]:
    """The window and the weighting `interactions` recorded with the table (`interactions_window`)."""
    result = sql_files.run(con, "training_window")
    row = result.fetchone()
    if row is None:
        raise dg.Failure("table `interactions_window` is empty: materialise `interactions` first")
    record = dict(zip((column[0] for column in result.description), row))
    window = {key: record.pop(key) for key in ("start_day", "end_day")}
    return window, EventWeighting(**record)


def build_training_data(con, config: TrainingDataConfig) -> TrainingData:
    """Read what the split needs, ids coded by DuckDB (then the caller closes the connection before
    anything heavy). The snapshot records the weighting read with the pairs, in the same connection."""
    window, weighting = _read_window(con)
    if config.split == "temporal":
        sql_files.run(con, "training_temporal_pairs")
        train = _coded_pairs(con)
        holdout_users, holdout_items = _columns(sql_files.run(con, "training_holdout_pairs"))
        return temporal_from_coded(train, holdout_users, holdout_items, window["start_day"], window["end_day"],
                                   weighting)
    sql_files.run(con, "training_random_pairs")
    return random_from_coded(
        _coded_pairs(con), window["start_day"], window["end_day"], config.holdout_fraction, config.seed, weighting
    )


def _no_training_pairs_message(data: TrainingData, config: TrainingDataConfig) -> str:
    window = f"{data.window_start}..{data.window_end}"
    if config.split == "temporal":
        return (f"no training interactions in {window}: the temporal split trains on the days before "
                f"{data.window_end} and holds that day out, and no events were ingested before it in the window. "
                "Ingest at least one earlier day of `events` (one run per partition), then `interactions` "
                "again; or use split=random for a single day")
    return f"no interactions in {window}: ingest `events` for days in the window, then `interactions` again"


def _coded_pairs(con) -> CodedPairs:
    """The pairs of temp table `split_pairs` with a training weight, ids coded by als_store/sql/training_encode.sql."""
    sql_files.run(con, "training_encode")
    (user_ids,) = _columns(sql_files.run(con, "training_user_ids"))
    (item_ids,) = _columns(sql_files.run(con, "training_item_ids"))
    rows, cols, weights = _columns(sql_files.run(con, "training_coordinates"))
    return CodedPairs(user_ids, item_ids, rows, cols, weights)  # BIGINT or text ids: typed by the split


def _columns(result) -> list[np.ndarray]:
    return list(result.fetchnumpy().values())


@dg.asset(
    group_name="training",
    deps=[interactions],
    pool="duckdb",
    kinds={"duckdb", "numpy"},
    description="Train matrix + holdout (external ids) as npz/JSON under <home>/training/latest.",
)
def training_data(
    context: dg.AssetExecutionContext, config: TrainingDataConfig, duckdb: DuckDBResource, pipeline: PipelineSettings
) -> dg.MaterializeResult:
    settings = pipeline.settings
    with duckdb.connect(read_only=True) as con:
        data = build_training_data(con, config)
    if data.train.nnz == 0:
        raise dg.Failure(_no_training_pairs_message(data, config))
    if data.holdout_pairs == 0:
        raise dg.Failure(
            f"empty holdout ({data.split} split of {data.window_start}..{data.window_end}): no model could be "
            "evaluated; use more days of events or split=random"
        )
    snapshot = publish(data, settings)
    context.log.info(
        f"training data {data.window_start}..{data.window_end} ({data.split}): {len(data.user_ids):,} users x "
        f"{len(data.item_ids):,} items, {data.train.nnz:,} nonzeros, {data.holdout_pairs:,} holdout pairs -> {snapshot}"
    )
    md = dg.MetadataValue
    return dg.MaterializeResult(
        metadata={
            "users": md.int(len(data.user_ids)),
            "items": md.int(len(data.item_ids)),
            "nnz": md.int(int(data.train.nnz)),
            "holdout_pairs": md.int(data.holdout_pairs),
            "holdout_fingerprint": md.text(data.holdout_fingerprint),
            "split": md.text(data.split),
            "window_start": md.text(data.window_start),
            "window_end": md.text(data.window_end),
            "weighting": md.json(data.weighting.as_dict()),
            "path": md.path(str(latest_dir(settings))),
            "snapshot": md.path(str(snapshot)),
        }
    )
