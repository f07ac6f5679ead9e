"""Load one day of landing files into DuckDB `events`, quarantining bad rows in `rejected_events`.

The whole day is one transaction: the day's previous rows are deleted, every file is staged as
text, validated by `als_store/sql/ingest_classify.sql` and inserted, and the result is verified before the
commit. Parquet files whose mapped columns are typed (integer or string ids, string event names, a
timestamp or, with an epoch preset, an integer time) skip the text round trip: each Arrow batch is
registered with DuckDB and validated by `als_store/sql/ingest_typed_rows.sql` with the same rules, reasons and
details; good rows go straight into `events`, bad ones into `rejected_events`. Any failure rolls
back to the previous state of the day. A file whose (decompressed) content was already loaded for
the day under another name is recorded as a duplicate and skipped.
No Dagster import: the asset in `pipelines/defs/ingest.py` is a thin wrapper.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from als_store import sql_files
from als_store.warehouse import transaction
from pipelines.event_sources import EventMapping
from pipelines.landing import LandingFile

_PARQUET_BATCH_ROWS = 1 << 20
_MAX_RAW_BYTES = 1 << 20  # of a line re-read for its raw copy
_JSONL_DELIMITER = "\x1f"  # unit separator: JSON text never holds it unescaped
_MAPPED_NAMES = ("user_raw", "item_raw", "event_raw", "ts_raw")
# DuckDB's TIMESTAMP range in microseconds since the epoch (one further up is infinity)
_TIMESTAMP_MIN_US = -9_223_372_022_400_000_000
_TIMESTAMP_MAX_US = 9_223_372_036_854_775_806


class LandingFileError(ValueError):
    """A landing file that cannot be read with the configured mapping (not a bad row: a bad file)."""


class WarehouseWriteError(RuntimeError):
    """The warehouse file could not be written: a full disk, a file-size limit."""


# DuckDB's words for a failed write (IOException, or FatalException when it invalidates the database)
_WRITE_FAILURE = re.compile(r"could not (write|fsync|truncate)|no space left|file too large|disk i/o|disk is full", re.I)


def warehouse_write_error(error: Exception, path, day: dt.date) -> WarehouseWriteError | None:
    """The error to show for a DuckDB error of `ingest_day` on warehouse `path`, when it is a failed write."""
    if not _WRITE_FAILURE.search(str(error)):
        return None
    return WarehouseWriteError(
        f"could not write the warehouse {path}: {error}. The disk may be full (or a file-size limit reached); "
        f"{day} was kept as it was (the day is replaced in one transaction, which was rolled back). "
        f"Free space on the disk of {Path(path).parent} and run the day again."
    )


@dataclass
class FileResult:
    source_file: str
    content_sha256: str
    size_bytes: int
    rows_loaded: int = 0
    rows_rejected: int = 0
    duplicate_of: str | None = None
    seconds: float = 0.0


@dataclass
class DayResult:
    day: dt.date
    files: list[FileResult] = field(default_factory=list)
    events: int = 0
    users: int = 0
    items: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def rows_in(self) -> int:
        return self.events + self.rejected

    @property
    def duplicate_files(self) -> list[FileResult]:
        return [f for f in self.files if f.duplicate_of is not None]


def content_sha256(path) -> str:
    """sha256 of the file's content, decompressed when gzip: a re-landed copy gives the same hash."""
    digest = hashlib.sha256()
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    sql_files.run(con, "events_schema")


def ingest_day(
    con: duckdb.DuckDBPyConnection,
    day: dt.date,
    files: list[LandingFile],
    mapping: EventMapping,
    log: Callable[[str], None] = print,
    *,
    allow_empty: bool = False,
) -> DayResult:
    """Replace partition `day` with the rows of `files`, all or nothing.

    Unless `allow_empty`, a file with no rows (0 bytes, a header only) fails the day, and so do
    files whose rows are all rejected when the day held events: a failed export must not wipe a day."""
    ensure_schema(con)
    sql_files.run(con, "ingest_id_rule")
    sql_files.run(con, "ingest_line_gaps")
    result = DayResult(day=day)
    with transaction(con):
        held = int(sql_files.run(con, "ingest_day_events", {"day": day}).fetchone()[0])
        sql_files.run(con, "ingest_delete_partition", {"day": day})
        loaded_by_hash: dict[str, str] = {}
        for number, landing_file in enumerate(files, start=1):
            file_result = _ingest_file(con, day, landing_file, mapping, loaded_by_hash)
            result.files.append(file_result)
            _log_file(log, number, len(files), file_result)
        sql_files.run(con, "partition_id_types", {"start_day": day, "end_day": day})
        _summarise(con, result)
        _verify(result)
        if not allow_empty:
            _refuse_empty(result, held)
    return result


def _ingest_file(
    con: duckdb.DuckDBPyConnection,
    day: dt.date,
    landing_file: LandingFile,
    mapping: EventMapping,
    loaded_by_hash: dict[str, str],
) -> FileResult:
    started = time.perf_counter()
    try:
        checksum = content_sha256(landing_file.path)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise LandingFileError(
            f"{landing_file.relative}: truncated or corrupt gzip file, it cannot be read to its end "
            f"({type(error).__name__}: {error}); {day} was kept as it was. Land the file again."
        ) from error
    result = FileResult(landing_file.relative, checksum, landing_file.path.stat().st_size)
    if checksum in loaded_by_hash:
        result.duplicate_of = loaded_by_hash[checksum]
    elif result.size_bytes == 0:  # no rows, in any format (a 0-byte Parquet file has no footer to read)
        loaded_by_hash[checksum] = landing_file.relative
    elif landing_file.format == "parquet":
        with _open_parquet(landing_file, mapping, day) as parquet:
            if is_typed_parquet(parquet.schema_arrow, mapping):
                loaded, rejected = _load_typed_parquet(con, day, landing_file, parquet, mapping)
            else:
                _stage_parquet(con, day, landing_file, parquet, mapping)
                loaded, rejected = _classify_and_insert(con, day, landing_file, mapping)
        result.rows_loaded, result.rows_rejected = loaded, rejected
        loaded_by_hash[checksum] = landing_file.relative
    else:
        _stage(con, landing_file, mapping)
        result.rows_loaded, result.rows_rejected = _classify_and_insert(con, day, landing_file, mapping)
        loaded_by_hash[checksum] = landing_file.relative
    sql_files.run(
        con,
        "ingest_record_file",
        {
            "day": day,
            "source_file": result.source_file,
            "content_sha256": result.content_sha256,
            "size_bytes": result.size_bytes,
            "rows_loaded": result.rows_loaded,
            "rows_rejected": result.rows_rejected,
            "duplicate_of": result.duplicate_of,
        },
    )
    result.seconds = time.perf_counter() - started
    return result


def _event_params(mapping: EventMapping) -> dict:
    return {
        "raw_events": list(mapping.event_names.keys()),
        "canonical_events": list(mapping.event_names.values()),
    }


def _classify_and_insert(
    con: duckdb.DuckDBPyConnection, day: dt.date, landing_file: LandingFile, mapping: EventMapping
) -> tuple[int, int]:
    """The text path: validate the staged text rows and move them; (loaded, rejected)."""
    sql_files.run(
        con,
        "ingest_classify",
        {"day": day, "time_unit": mapping.time_unit, "time_format": mapping.time_format, **_event_params(mapping)},
    )
    loaded, rejected = sql_files.run(
        con, "ingest_insert", {"day": day, "source_file": landing_file.relative}
    ).fetchone()
    return int(loaded), int(rejected)


def _log_file(log: Callable[[str], None], number: int, total: int, f: FileResult) -> None:
    if f.duplicate_of is not None:
        log(f"file {number}/{total} {f.source_file}: same content as {f.duplicate_of}, skipped")
        return
    rows = f.rows_loaded + f.rows_rejected
    rate = rows / f.seconds if f.seconds > 0 else float("inf")
    log(
        f"file {number}/{total} {f.source_file}: {rows:,} rows ({f.rows_loaded:,} loaded, "
        f"{f.rows_rejected:,} rejected) in {f.seconds:.2f}s, {rate:,.0f} rows/s"
    )


# --------------------------------------------------------------------------- staging per format


def _stage(con: duckdb.DuckDBPyConnection, landing_file: LandingFile, mapping: EventMapping) -> None:
    if landing_file.format == "csv":
        _stage_csv(con, landing_file, mapping)
    elif landing_file.format == "jsonl":
        _stage_jsonl(con, landing_file, mapping)
    else:  # landing.file_format only yields the three above
        raise LandingFileError(f"{landing_file.relative}: unsupported format {landing_file.format!r}")


def _read_header(landing_file: LandingFile, delimiter: str) -> list[str] | None:
    opener = gzip.open if landing_file.path.name.lower().endswith(".gz") else open
    with opener(landing_file.path, "rb") as stream:
        first = stream.readline()
    if not first.strip():
        return None
    text = first.decode("utf-8-sig", errors="replace")
    return [name.strip() for name in next(csv.reader(io.StringIO(text), delimiter=delimiter))]


def _csv_columns(landing_file: LandingFile, mapping: EventMapping) -> dict[str, str] | None:
    """Every column of the file as VARCHAR, the mapped ones renamed to the staging names."""
    if mapping.header:
        names = _read_header(landing_file, mapping.delimiter)
        if names is None:
            return None  # an empty file
    else:
        names = list(mapping.column_names)
    missing = [c for c in mapping.mapped_columns() if c not in names]
    if missing:
        raise LandingFileError(
            f"{landing_file.relative}: columns {missing} of mapping {mapping.name!r} not in the file's "
            f"columns {names}; choose another preset or set the column names in the run config"
        )
    renamed = dict(zip(mapping.mapped_columns(), _MAPPED_NAMES))
    return {renamed.get(name, f"unused_{i}"): "VARCHAR" for i, name in enumerate(names)}


def _stage_csv(con: duckdb.DuckDBPyConnection, landing_file: LandingFile, mapping: EventMapping) -> None:
    columns = _csv_columns(landing_file, mapping)
    if columns is None:
        sql_files.run(con, "ingest_stage_empty")
        return
    header_lines = 1 if mapping.header else 0
    sql_files.run(
        con,
        "ingest_stage_csv",
        {
            "path": str(landing_file.path),
            "header": mapping.header,
            "header_lines": header_lines,
            "columns": columns,
            "delim": mapping.delimiter,
        },
    )
    _restore_raw_of_bad_encoding(con, landing_file)


def _restore_raw_of_bad_encoding(con: duckdb.DuckDBPyConnection, landing_file: LandingFile) -> None:
    """DuckDB's copy of a line that is not UTF-8 shows '?' for a bad byte and may swallow the byte after
    it (a comma): read those lines from the file instead, bad bytes written as \\xNN."""
    found = sql_files.run(con, "ingest_stage_csv_bad_encoding").fetchall()
    if not found:
        return
    lines, texts = [], []
    opener = gzip.open if landing_file.path.name.lower().endswith(".gz") else open
    with opener(landing_file.path, "rb") as stream:
        for line, position, duckdb_text in found:  # by position: a gzip stream only seeks forward cheaply
            # 1-based start of the line, or (CRLF) the end of the line before it
            stream.seek(max(position - 1, 0))
            data = stream.readline(_MAX_RAW_BYTES)
            if not data.strip(b"\r\n"):
                data = stream.readline(_MAX_RAW_BYTES)
            text = data.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")
            if text.startswith((duckdb_text or "").strip("\r\n").split("?")[0]):  # else keep DuckDB's copy
                lines.append(line)
                texts.append(text)
    con.register("raw_lines", pa.table({"line": pa.array(lines, pa.int64()), "raw": pa.array(texts, pa.string())}))
    try:
        sql_files.run(con, "ingest_stage_set_raw")
    finally:
        con.unregister("raw_lines")


def _json_path(key: str) -> str:
    return '$."' + key.replace('"', '\\"') + '"'


def _stage_jsonl(con: duckdb.DuckDBPyConnection, landing_file: LandingFile, mapping: EventMapping) -> None:
    sql_files.run(
        con,
        "ingest_stage_jsonl",
        {
            "path": str(landing_file.path),
            "delim": _JSONL_DELIMITER,
            "user_path": _json_path(mapping.user_column),
            "item_path": _json_path(mapping.item_column),
            "event_path": _json_path(mapping.event_column),
            "ts_path": _json_path(mapping.time_column),
        },
    )


def _unreadable_parquet(landing_file: LandingFile, day: dt.date, error: Exception) -> LandingFileError:
    return LandingFileError(
        f"{landing_file.relative}: not a readable Parquet file, truncated or corrupt ({type(error).__name__}: "
        f"{error}); {day} was kept as it was. Land the file again."
    )


def _batches(parquet: pq.ParquetFile, columns: list[str], landing_file: LandingFile, day: dt.date):
    """The file's record batches; a page that cannot be read fails the file with its name."""
    batches = parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as error:
            raise _unreadable_parquet(landing_file, day, error) from error
        yield batch


def _open_parquet(landing_file: LandingFile, mapping: EventMapping, day: dt.date) -> pq.ParquetFile:
    try:
        parquet = pq.ParquetFile(landing_file.path)
    except (pa.ArrowException, OSError) as error:
        raise _unreadable_parquet(landing_file, day, error) from error
    names = parquet.schema_arrow.names
    missing = [c for c in mapping.mapped_columns() if c not in names]
    if missing:
        parquet.close()
        raise LandingFileError(
            f"{landing_file.relative}: columns {missing} of mapping {mapping.name!r} not in the file's columns {names}"
        )
    return parquet


def id_kind(t: pa.DataType) -> str | None:
    """What an id column of this Arrow type holds when it is no integer or text ('a float', 'a struct'),
    for the reject's detail; None for integers, text, and text or integers dictionary-encoded."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if _is_id_type(t) or pa.types.is_null(t):
        return None
    if pa.types.is_decimal(t):
        return None if t.scale == 0 else "a decimal"
    for test, kind in (
        (pa.types.is_floating, "a float"),
        (pa.types.is_boolean, "a boolean"),
        (pa.types.is_struct, "a struct"),
        (pa.types.is_map, "a map"),  # before the lists: a map is a list of pairs to Arrow
        (lambda t: pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
         or pa.types.is_list_view(t) or pa.types.is_large_list_view(t), "a list"),
        (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
         or pa.types.is_binary_view(t), "binary"),
        (pa.types.is_temporal, "a date or time"),
    ):
        if test(t):
            return kind
    return f"of Arrow type {t}"


def _stage_parquet(
    con: duckdb.DuckDBPyConnection, day: dt.date, landing_file: LandingFile, parquet: pq.ParquetFile,
    mapping: EventMapping,
) -> None:
    """The text path for Parquet: every mapped column staged as text (see is_typed_parquet); an id
    column that is no integer or text stages its kind, and each of its values is rejected with it."""
    sql_files.run(con, "ingest_stage_empty")
    schema = parquet.schema_arrow
    kinds = {
        "user_kind": id_kind(schema.field(mapping.user_column).type),
        "item_kind": id_kind(schema.field(mapping.item_column).type),
    }
    offset = 0
    for batch in _batches(parquet, list(mapping.mapped_columns()), landing_file, day):
        lines = pa.array(range(offset + 1, offset + batch.num_rows + 1), type=pa.int64())
        arrow_batch = pa.Table.from_arrays(
            [lines, *(batch.column(name) for name in mapping.mapped_columns())],
            names=["line", *_MAPPED_NAMES],
        )
        con.register("arrow_batch", arrow_batch)
        try:
            sql_files.run(con, "ingest_stage_arrow", kinds)
        finally:
            con.unregister("arrow_batch")
        offset += batch.num_rows


# --------------------------------------------------------------------------- typed Parquet


def _is_id_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or _is_string_type(t)


def _is_string_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def is_typed_parquet(schema: pa.Schema, mapping: EventMapping) -> bool:
    """Whether the mapped columns can be validated in their own types (else they are staged as text):
    ids integer or string, the event name a string, and the time an Arrow timestamp read as ISO
    (naive = UTC) or an integer read as epoch_s / epoch_ms. Anything else (a float id, a time held as
    text, a 'format' time, ...) keeps the text path, which decides as it always did; a float or
    nested id is rejected there row by row (see id_kind)."""
    user, item, event, time = (schema.field(name).type for name in mapping.mapped_columns())
    if not (_is_id_type(user) and _is_id_type(item) and _is_string_type(event)):
        return False
    if mapping.time_unit == "iso":
        return pa.types.is_timestamp(time)
    if mapping.time_unit in ("epoch_s", "epoch_ms"):
        return pa.types.is_integer(time)
    return False


def _canonical_events(con: duckdb.DuckDBPyConnection, events: pa.Array, mapping: EventMapping) -> pa.Array:
    """The canonical event of every row (null: unknown), matching each distinct raw name once in SQL."""
    encoded = events.dictionary_encode()
    names = encoded.dictionary.to_pylist()
    canonical = dict(
        sql_files.run(con, "ingest_typed_event_names", {"names": names, **_event_params(mapping)}).fetchall()
    )
    return pa.DictionaryArray.from_arrays(encoded.indices, pa.array([canonical[n] for n in names], pa.string()))


def _utc_timestamps(column: pa.Array, time_unit: str, relative: str) -> pa.Array:
    """The mapped time as naive UTC timestamp[us], null where the text path finds no timestamp.

    Gives what `als_store/sql/ingest_classify.sql` makes of the column's text: a timestamp keeps its instant
    (a zone only says how it was written), nanoseconds are cut to the microsecond below as the
    text parse does; an epoch is `CAST(CAST(value AS DOUBLE) * 1e6 (or 1e3) AS BIGINT)`
    microseconds, null where that is no TIMESTAMP, as the text path's TRY gives (it raises instead
    for the 14 seconds before DuckDB's first timestamp, 290309 BC)."""
    missing = column.is_null().to_numpy(zero_copy_only=False)
    unit = getattr(column.type, "unit", None)
    if pa.types.is_timestamp(column.type):
        if column.type.tz is not None:
            column = column.cast(pa.timestamp(unit))  # the stored values are UTC already
        if unit == "us":
            return column
        values = column.cast(pa.int64()).fill_null(0).to_numpy()
        if unit == "ns":
            return pa.array(values // 1000, pa.timestamp("us"), mask=missing)
        factor = 1_000_000 if unit == "s" else 1_000
        outside = (values < _TIMESTAMP_MIN_US // factor) | (values > _TIMESTAMP_MAX_US // factor)
        if outside.any():  # DuckDB cannot even print these: the text path failed on them as well
            raise LandingFileError(
                f"{relative}: {int(outside.sum())} timestamp(s) in unit {unit!r} lie outside DuckDB's range"
            )
        return pa.array(values * factor, pa.timestamp("us"), mask=missing)
    # an integer epoch; the product of an integer and 1e6 / 1e3 is a whole double, so the cast is exact
    scaled = column.fill_null(0).to_numpy().astype(np.float64) * (1e6 if time_unit == "epoch_s" else 1e3)
    valid = (scaled >= _TIMESTAMP_MIN_US) & (scaled < 2.0**63)  # 2**63 - 1024 is the largest double below
    micros = np.where(valid, scaled, 0).astype(np.int64)
    return pa.array(micros, pa.timestamp("us"), mask=missing | ~valid)


def _load_typed_parquet(
    con: duckdb.DuckDBPyConnection,
    day: dt.date,
    landing_file: LandingFile,
    parquet: pq.ParquetFile,
    mapping: EventMapping,
) -> tuple[int, int]:
    """Validate and insert a typed Parquet file batch by batch without a text copy; (loaded, rejected).

    Each batch is registered as `typed_batch`: line (the row number from 1), the mapped columns as
    they are (for the reject's text), event_type (canonical or null) and ts (UTC or null). Good rows
    go to events and bad ones to rejected_events in two scans of it, each in line order (DuckDB
    keeps insertion order, so no sort)."""
    params = {"day": day, "source_file": landing_file.relative}
    loaded = rejected = offset = 0
    for batch in _batches(parquet, list(mapping.mapped_columns()), landing_file, day):
        user, item, event, when = (batch.column(name) for name in mapping.mapped_columns())
        lines = pa.array(np.arange(offset + 1, offset + batch.num_rows + 1, dtype=np.int64))
        typed_batch = pa.Table.from_arrays(
            [
                lines,
                user,
                item,
                event,
                when,
                _canonical_events(con, event, mapping),
                _utc_timestamps(when, mapping.time_unit, landing_file.relative),
            ],
            names=["line", *_MAPPED_NAMES, "event_type", "ts"],
        )
        con.register("typed_batch", typed_batch)
        try:
            sql_files.run(con, "ingest_typed_rows")  # DuckDB binds the macro's table when creating it
            loaded += int(sql_files.run(con, "ingest_typed_insert_events", params).fetchone()[0])
            rejected += int(sql_files.run(con, "ingest_typed_insert_rejects", params).fetchone()[0])
        finally:
            con.unregister("typed_batch")
        offset += batch.num_rows
    if loaded + rejected != offset:
        raise RuntimeError(
            f"{landing_file.relative}: {offset} rows read but {loaded} loaded and {rejected} rejected; "
            "nothing committed"
        )
    return loaded, rejected


# --------------------------------------------------------------------------- summary and checks


def _summarise(con: duckdb.DuckDBPyConnection, result: DayResult) -> None:
    row = sql_files.run(con, "ingest_partition_summary", {"day": result.day}).fetchone()
    events, users, items, views, carts, purchases, rejected, off_day = (int(v) for v in row)
    if off_day:
        raise RuntimeError(f"{off_day} events of {result.day} lie on another day; nothing committed")
    result.events, result.users, result.items, result.rejected = events, users, items, rejected
    result.events_by_type = {"view": views, "cart": carts, "purchase": purchases}
    result.rejected_by_reason = dict(
        sql_files.run(con, "ingest_rejected_by_reason", {"day": result.day}).fetchall()
    )


def _verify(result: DayResult) -> None:
    """The partition holds exactly what the files gave: else roll back rather than commit a mix."""
    loaded = sum(f.rows_loaded for f in result.files)
    rejected = sum(f.rows_rejected for f in result.files)
    if (loaded, rejected) != (result.events, result.rejected):
        raise RuntimeError(
            f"partition {result.day}: files gave {loaded} events and {rejected} rejects but the tables "
            f"hold {result.events} and {result.rejected}; nothing committed"
        )


def _refuse_empty(result: DayResult, held: int) -> None:
    """Fail rather than let a file with no rows, or rows that are all rejected, replace a day."""
    how = "set allow_empty: true in the events run config (ops: events: config: allow_empty: true)"
    empty = [f.source_file for f in result.files if f.duplicate_of is None and f.rows_loaded + f.rows_rejected == 0]
    if empty:
        raise LandingFileError(
            f"{', '.join(empty)}: no rows (an empty file, or a header only); {result.day} was kept as it was. "
            f"A file without rows is taken for a failed export: land it again, or, if it really has no events, {how}"
        )
    if result.events == 0 and held > 0:
        reasons = ", ".join(f"{reason}: {n:,}" for reason, n in result.rejected_by_reason.items())
        files = ", ".join(f.source_file for f in result.files)
        raise LandingFileError(
            f"{result.day}: all {result.rejected:,} rows of {files} were rejected ({reasons}); the day's {held:,} "
            f"events were kept as they were. Check the mapping (preset, columns, time unit), or, to replace the "
            f"day with no events, {how}"
        )


def preview(con: duckdb.DuckDBPyConnection, day: dt.date, n: int = 10) -> list[tuple]:
    return sql_files.run(con, "ingest_preview", {"day": day, "n": n}).fetchall()
