"""The champion's top-N for every user it knows, in DuckDB: view `recommendations(user_id, rank, item_id, score,
model_version)` over the coded tables `recommendation_lists`, `recommendation_users` and `recommendation_items`
(als_store/sql/recommendations_schema.sql), and the one-row table `recommendations_model` that says which model wrote
them. No Dagster import.

- `stage` scores the users into Parquet (bounded memory, no DuckDB lock held), in this process or through a
  `Scorer` (another engine: Spark), and `replace` swaps the contents for them in one transaction;
- `written_by` reads which model the tables hold, so that the asset can leave them alone while they hold the
  champion's top-N, and `evaluation` can read the champion's lists back instead of scoring them again
  (`top_k_lists`): a registered version never changes, so its stored lists are what scoring would give.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from als_store import sql_files
from als_store.warehouse import transaction

# Staged as numbers: bundle row of the user, rank, bundle index of the item, the float32 score. The external ids
# are staged once each (two small id maps) and joined back by als_store/sql/recommendations_replace.sql: formatting 10M
# ids as strings in numpy took 5.6 s at 200k users x top 50.
_STAGED_SCHEMA = pa.schema([("user_index", pa.int32()), ("rank", pa.int32()), ("item_index", pa.int32()),
                            ("score", pa.float32())])

# Scores the ALS lists of some bundle rows (users with a history) N deep, seen items excluded, best first and ties
# by item index, as `ModelBundle.recommend_many`: yields staged tables whose user_index are those bundle rows.
Scorer = Callable[[np.ndarray, int], Iterable[pa.Table]]


@dataclass(frozen=True)
class TableModel:
    """The model behind the rows of `recommendations`: registered name and version, its MLflow run, and N."""

    name: str
    version: int
    run_id: str
    n: int

    def same_model(self, other: TableModel | None) -> bool:
        return other is not None and (self.name, self.version, self.run_id) == (other.name, other.version,
                                                                                 other.run_id)


@dataclass(frozen=True)
class PrescoredLists:
    """Some users' lists, already scored by the same bundle (`pipelines.scored_lists`): ``rows`` are bundle
    rows, ``item_index``/``scores`` their top lists (-1 / -inf padded), at least as deep as the table's N."""

    rows: np.ndarray
    item_index: np.ndarray
    scores: np.ndarray


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    sql_files.run(con, "recommendations_schema")


def written_by(con: duckdb.DuckDBPyConnection) -> TableModel | None:
    """Which model wrote the table (None: never written)."""
    try:
        rows = sql_files.run(con, "recommendations_model").fetchall()
    except duckdb.CatalogException:  # a read-only connection to a warehouse the asset never wrote to
        return None
    return TableModel(rows[0][0], int(rows[0][1]), rows[0][2], int(rows[0][3])) if len(rows) == 1 else None


def holds(con: duckdb.DuckDBPyConnection, model: TableModel) -> int | None:
    """The number of rows when the table holds exactly ``model``'s top ``model.n`` (the recorded writer, and
    every row of that version, ranks down to n), else None."""
    [(oldest, newest, deepest, rows)] = sql_files.run(con, "recommendations_state").fetchall()
    writer = written_by(con)
    current = (rows > 0 and oldest == newest == model.version and deepest == model.n
               and model.same_model(writer) and writer.n == model.n)
    return int(rows) if current else None


def stage(bundle, version: int, n: int, batch_size: int, directory: Path, log: Callable[[str], None],
          prescored: PrescoredLists | None = None, scorer: Scorer | None = None) -> tuple[int, dict]:
    """Score every known user of ``bundle`` into Parquet files under ``directory``: users in ``prescored`` are
    written from it instead of being scored again; ``scorer`` (ALS bundles only) scores the ALS lists of the
    others that have a history; the bundle itself scores the rest in batches of ``batch_size`` (without a
    scorer all of them, with one the users without a history, whose lists are the popularity fallback).
    Returns the number of rows staged and the staged files' parameters of
    als_store/sql/recommendations_replace.sql."""
    if scorer is not None and bundle.model is None:
        raise ValueError(f"a scorer scores ALS lists; this bundle is of kind {bundle.kind}")
    user_ids = bundle.user_ids
    params = {"staged_files": [str(directory / "recommendations.parquet")], "model_version": int(version)}
    for what, ids in (("user", user_ids), ("item", bundle.item_ids)):
        params[f"{what}_ids_file"] = str(directory / f"{what}_ids.parquet")
        pq.write_table(pa.table({f"{what}_index": np.arange(len(ids), dtype=np.int32), f"{what}_id": ids}),
                       params[f"{what}_ids_file"])
    to_score = np.arange(len(user_ids))
    written = 0
    # no dictionaries (random item indices defeat them; trying made the write 4x slower), no statistics (nothing
    # filters on them)
    with pq.ParquetWriter(params["staged_files"][0], _STAGED_SCHEMA, compression="lz4", use_dictionary=False,
                          write_statistics=False) as writer:
        if prescored is not None and len(prescored.rows):
            table = _batch(prescored.rows, prescored.item_index[:, :n], prescored.scores[:, :n])
            writer.write_table(table)
            written += table.num_rows
            to_score = np.setdiff1d(to_score, prescored.rows, assume_unique=True)
            log(f"{len(prescored.rows)} users' lists taken as scored by the evaluation; scoring the other "
                f"{len(to_score)}")
        if scorer is not None:
            with_history = np.diff(bundle.seen.indptr)[to_score] > 0
            engine_rows, to_score = to_score[with_history], to_score[~with_history]
            for table in scorer(engine_rows, n) if len(engine_rows) else ():
                writer.write_table(table)
                written += table.num_rows
            log(f"{len(engine_rows)} users' lists scored by the engine ({written} rows); {len(to_score)} without "
                f"a history left to the popularity fallback")
        for start in range(0, len(to_score), batch_size):
            rows = to_score[start:start + batch_size]
            recs = bundle.recommend_many(user_ids[rows], n=n)  # the bundle's own ids: all known
            table = _batch(rows, recs.item_index, recs.scores)
            writer.write_table(table)
            written += table.num_rows
            log(f"scored users {start + len(rows)}/{len(to_score)} ({written} rows)")
    return written, params


def staged_from(path: Path, rows: np.ndarray) -> Iterator[pa.Table]:
    """The staged lists another engine wrote to Parquet ``path`` (a file or a directory of parts) for bundle
    rows ``rows``, its user_index being a position in ``rows``: read batch by batch, user_index made the bundle
    row."""
    rows = np.asarray(rows, dtype=np.int32)
    for batch in pads.dataset(path, format="parquet").to_batches(columns=_STAGED_SCHEMA.names):
        table = pa.Table.from_batches([batch]).cast(_STAGED_SCHEMA)
        positions = table.column("user_index").to_numpy()
        yield table.set_column(0, _STAGED_SCHEMA.field("user_index"), pa.array(rows[positions]))


def _batch(rows: np.ndarray, item_index: np.ndarray, scores: np.ndarray) -> pa.Table:
    """Staged rows of some users' lists, padding (-1) dropped."""
    n_users, n_out = item_index.shape
    columns = [np.repeat(rows.astype(np.int32), n_out), np.tile(np.arange(1, n_out + 1, dtype=np.int32), n_users),
               item_index.astype(np.int32).ravel(), scores.astype(np.float32, copy=False).ravel()]
    filled = (item_index >= 0).ravel()
    if not filled.all():
        columns = [column[filled] for column in columns]
    return pa.table(columns, schema=_STAGED_SCHEMA)


def replace(con: duckdb.DuckDBPyConnection, staged: dict, model: TableModel) -> None:
    """Swap the contents for the staged rows and record ``model`` as their writer, in one transaction: a
    reader sees the previous model's rows or these, never a mix."""
    with transaction(con):
        sql_files.run(con, "recommendations_replace", {**staged, "model_name": model.name,
                                                       "model_version": model.version,
                                                       "mlflow_run_id": model.run_id, "n": model.n})


def top_k_lists(con: duckdb.DuckDBPyConnection, model: TableModel, bundle, users: np.ndarray, k: int):
    """``bundle``'s top-``k`` lists for ``users`` (external ids), as `ModelBundle.recommend_many` gives them,
    with the lists of the users it knows read from the table: ``model`` must be the table's writer and
    ``bundle`` its bundle (whose rows and item indices the table stores). None when the table does not hold
    them (another writer, shallower than ``k``, or a list is not the length scoring gives), so that the
    caller scores instead."""
    from als_core.bundle import SOURCE_ALS, SOURCE_POPULARITY, Recommendations

    writer = written_by(con)
    if not model.same_model(writer) or writer.n < k:
        return None
    rows = bundle.users.lookup(users)
    known = rows >= 0
    seen_counts = np.diff(bundle.seen.indptr)
    known[known] = seen_counts[rows[known]] > 0  # no history: the fallback, as in serving
    depth = min(k, len(bundle.items))
    position_of_row = np.full(len(bundle.users), -1, dtype=np.int64)
    position_of_row[rows[known]] = np.flatnonzero(known)
    found = sql_files.run(con, "recommendations_top_k", {"k": depth}).fetchnumpy()
    position = position_of_row[found["user_index"]]
    wanted = position >= 0
    position, rank = position[wanted], found["rank"][wanted].astype(np.int64) - 1
    item_index = np.full((len(users), depth), -1, dtype=np.int64)
    scores = np.full((len(users), depth), -np.inf, dtype=np.float32)
    item_index[position, rank] = found["item_index"][wanted]
    scores[position, rank] = found["score"][wanted]
    # scoring gives each known user min(depth, unseen items) items: anything else is not this model's table
    unseen = len(bundle.items) - seen_counts[rows[known]]
    if not np.array_equal((item_index[known] >= 0).sum(axis=1), np.minimum(depth, unseen)):
        return None
    sources = np.full(len(users), SOURCE_ALS if bundle.model is not None else SOURCE_POPULARITY, dtype="<U10")
    lists = Recommendations(item_index, scores, sources, bundle.item_ids)
    if not known.all():  # unknown users: the popularity fallback, cheap to compute
        fallback = bundle.recommend_many(np.asarray(users)[~known], n=depth)
        lists.item_index[~known], lists.scores[~known], lists.sources[~known] = (
            fallback.item_index, fallback.scores, fallback.sources)
    return lists
