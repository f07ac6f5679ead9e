"""Typed Parquet files skip the text round trip: same events, rejects, reasons, lines and numbers as the text path."""

from __future__ import annotations

import csv
import datetime as dt
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import query

from als_core.synthetic import generate_events
from als_store import sql_files, warehouse
from pipelines import event_ingest
from pipelines.event_ingest import LandingFileError, is_typed_parquet
from pipelines.event_sources import preset
from pipelines.landing import files_for_day

DAY = dt.date(2026, 1, 5)
EVENT_COLUMNS = "user_id, item_id, event_type, ts, partition_day, source_file, source_line"
REJECT_COLUMNS = "partition_day, source_file, source_line, reason, detail, raw"


def _ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


@pytest.fixture
def sql_names(monkeypatch) -> list[str]:
    """The names of the als_store/sql/ files run, in order (to see which path a file took)."""
    names: list[str] = []
    run = sql_files.run

    def spy(con, name, params=None):
        names.append(name)
        return run(con, name, params)

    monkeypatch.setattr(sql_files, "run", spy)
    return names


def _ingest(settings, mapping_name: str = "default", day: dt.date = DAY) -> event_ingest.DayResult:
    with warehouse.open_warehouse(settings.duckdb_path) as con:
        return event_ingest.ingest_day(
            con, day, files_for_day(settings.landing_dir, day), preset(mapping_name), log=lambda message: None
        )


def _ingest_as_text(settings, monkeypatch, mapping_name: str = "default", day: dt.date = DAY):
    """The same files through today's text path (every column staged as VARCHAR)."""
    with monkeypatch.context() as patch:
        patch.setattr(event_ingest, "is_typed_parquet", lambda schema, mapping: False)
        return _ingest(settings, mapping_name, day)


def _events(settings, day: dt.date = DAY) -> list[tuple]:
    sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE partition_day = ? ORDER BY source_file, source_line"
    return query(settings, sql, [day])


def _rejects(settings, day: dt.date = DAY) -> list[tuple]:
    sql = f"SELECT {REJECT_COLUMNS} FROM rejected_events WHERE partition_day = ? ORDER BY source_file, source_line"
    return query(settings, sql, [day])


def _write(settings, name: str, table: pa.Table, **kwargs) -> str:
    path = settings.landing_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **kwargs)
    return name


def _assert_same_as_text_path(settings, monkeypatch, mapping_name: str = "default") -> None:
    typed = (_events(settings), _rejects(settings))
    _ingest_as_text(settings, monkeypatch, mapping_name)
    assert (_events(settings), _rejects(settings)) == typed


# one row per kind of problem, between good rows; reasons in priority order
BAD_ROWS = pa.table(
    {
        "user_id": pa.array([1, None, 3, 4, 5, 6, 7, 8, 9, None, 11, 12], pa.int64()),
        "item_id": pa.array([" i1 ", "i2", "", "   ", "i5", "i6", "i7", "i8", "i9", "", "i11", "i12"], pa.large_string()),
        "event_type": pa.array(
            ["view", "view", "cart", "cart", "click", None, " Purchase ", "view", "CART", "click", "click", " Purchase "]
        ),
        "ts": pa.array(
            [
                _ts("2026-01-05 08:00:00"),
                _ts("2026-01-05 09:00:00"),
                _ts("2026-01-05 09:00:00"),
                _ts("2026-01-05 09:00:00"),
                _ts("2026-01-05 10:00:00"),
                _ts("2026-01-05 10:00:00"),
                None,
                _ts("2026-01-06 00:00:01"),
                _ts("2026-01-05 23:59:59.999999"),
                None,
                None,
                _ts("2026-01-05 12:00:00"),
            ],
            pa.timestamp("us"),
        ),
    }
)


def test_typed_parquet_bad_rows_are_quarantined_with_their_row(settings, monkeypatch, sql_names):
    name = _write(settings, f"part-{DAY}.parquet", BAD_ROWS)
    result = _ingest(settings)

    assert "ingest_typed_insert_events" in sql_names and "ingest_classify" not in sql_names
    assert _events(settings) == [
        ("1", "i1", "view", _ts("2026-01-05 08:00:00"), DAY, name, 1),
        ("9", "i9", "cart", _ts("2026-01-05 23:59:59.999999"), DAY, name, 9),
        ("12", "i12", "purchase", _ts("2026-01-05 12:00:00"), DAY, name, 12),
    ]
    rejects = _rejects(settings)
    assert [(line, reason, detail) for _, _, line, reason, detail, _ in rejects] == [
        (2, "missing user id", None),
        (3, "missing item id", None),
        (4, "missing item id", None),
        (5, "unknown event type", "event type 'click'"),
        (6, "unknown event type", "event type missing"),
        (7, "bad timestamp", "timestamp missing"),
        (8, "outside partition", f"event on 2026-01-06, partition is {DAY}"),
        (10, "missing user id", None),  # every field is bad: the first reason wins
        (11, "unknown event type", "event type 'click'"),
    ]
    raw = {line: text for _, _, line, _, _, text in rejects}
    assert raw[5] == '{"user":"5","item":"i5","event":"click","ts":"2026-01-05 10:00:00"}'
    assert raw[2] == '{"user":null,"item":"i2","event":"view","ts":"2026-01-05 09:00:00"}'

    assert (result.events, result.users, result.items, result.rejected) == (3, 3, 3, 9)
    assert result.events_by_type == {"view": 1, "cart": 1, "purchase": 1}
    assert result.rejected_by_reason == {
        "missing item id": 2,
        "missing user id": 2,
        "unknown event type": 3,
        "bad timestamp": 1,
        "outside partition": 1,
    }
    assert [(f.rows_loaded, f.rows_rejected) for f in result.files] == [(3, 9)]
    # the text path gives the very same rows, details and raw text
    _assert_same_as_text_path(settings, monkeypatch)


def test_zoned_timestamps_are_converted_to_utc(settings, monkeypatch, sql_names):
    paris = pa.table(
        {
            "user_id": pa.array(["a", "b", "c"]),
            "item_id": pa.array([1, 2, 3], pa.uint64()),
            "event_type": pa.array(["view", "cart", "view"]),
            # Paris is UTC+1 in January: 00:30 on the 6th is 23:30 UTC on the 5th
            "ts": pa.array(
                [
                    dt.datetime(2026, 1, 5, 23, 30, tzinfo=dt.UTC),
                    dt.datetime(2026, 1, 4, 23, 30, tzinfo=dt.UTC),  # 00:30 on the 5th in Paris
                    None,
                ],
                pa.timestamp("us", tz="UTC"),
            ).cast(pa.timestamp("ns", tz="Europe/Paris")),
        }
    )
    nanos = pa.array([1_767_614_400_123_456_789], pa.int64()).cast(pa.timestamp("ns", tz="Europe/Paris"))
    paris = pa.concat_tables([paris, pa.table({"user_id": ["d"], "item_id": pa.array([4], pa.uint64()),
                                               "event_type": ["purchase"], "ts": nanos})])
    new_york = pa.table(
        {
            "user_id": pa.array([10, 11], pa.int32()),
            "item_id": pa.array(["x", "y"]),
            "event_type": pa.array(["view", "view"]),
            # 18:00 at -05:00 is 23:00 UTC; 20:00 at -05:00 is 01:00 UTC on the 6th
            "ts": pa.array([1_767_654_000_000, 1_767_661_200_000], pa.timestamp("ms", tz="America/New_York")),
        }
    )
    _write(settings, f"paris-{DAY}.parquet", paris)
    _write(settings, f"york-{DAY}.parquet", new_york)
    _ingest(settings)

    assert "ingest_classify" not in sql_names
    assert [row[:4] + row[5:] for row in _events(settings)] == [
        ("a", "1", "view", _ts("2026-01-05 23:30:00"), f"paris-{DAY}.parquet", 1),
        ("d", "4", "purchase", _ts("2026-01-05 12:00:00.123456"), f"paris-{DAY}.parquet", 4),  # ns cut to us
        ("10", "x", "view", _ts("2026-01-05 23:00:00"), f"york-{DAY}.parquet", 1),
    ]
    assert [(file, line, reason, detail) for _, file, line, reason, detail, _ in _rejects(settings)] == [
        (f"paris-{DAY}.parquet", 2, "outside partition", f"event on 2026-01-04, partition is {DAY}"),
        (f"paris-{DAY}.parquet", 3, "bad timestamp", "timestamp missing"),
        (f"york-{DAY}.parquet", 2, "outside partition", f"event on 2026-01-06, partition is {DAY}"),
    ]
    _assert_same_as_text_path(settings, monkeypatch)


def test_epoch_integer_time_with_an_epoch_preset(settings, monkeypatch, sql_names):
    # RetailRocket layout (epoch ms) as Parquet, with a column the mapping does not use
    _write(
        settings,
        f"retailrocket-{DAY}.parquet",
        pa.table(
            {
                "timestamp": pa.array(
                    [1767607200000, 1767607260500, 1767607320000, 1767607380000, None, 10**17, 1767520800000], pa.int64()
                ),
                "visitorid": pa.array([257597] * 7, pa.int64()),
                "event": pa.array(["view", "addtocart", "transaction", "removefromcart", "view", "view", "view"]),
                "itemid": pa.array([355908, 355908, 355908, 355908, 1, 2, 3], pa.int32()),
                "transactionid": pa.array([None, None, 4000.0, None, None, None, None]),
            }
        ),
    )
    _ingest(settings, "retailrocket")
    assert "ingest_classify" not in sql_names
    assert [(line, u, i, e, ts) for u, i, e, ts, _, _, line in _events(settings)] == [
        (1, "257597", "355908", "view", _ts("2026-01-05 10:00:00")),
        (2, "257597", "355908", "cart", _ts("2026-01-05 10:01:00.500000")),
        (3, "257597", "355908", "purchase", _ts("2026-01-05 10:02:00")),
    ]
    assert [(line, reason, detail) for _, _, line, reason, detail, _ in _rejects(settings)] == [
        (4, "unknown event type", "event type 'removefromcart'"),
        (5, "bad timestamp", "timestamp missing"),
        (6, "bad timestamp", "timestamp '100000000000000000'"),  # beyond DuckDB's timestamps
        (7, "outside partition", f"event on 2026-01-04, partition is {DAY}"),
    ]
    _assert_same_as_text_path(settings, monkeypatch, "retailrocket")

    # Taobao layout (epoch s); fav stays unmapped
    (settings.landing_dir / f"retailrocket-{DAY}.parquet").unlink()
    _write(
        settings,
        f"UserBehavior-{DAY}.parquet",
        pa.table(
            {
                "user": pa.array([1, 1, 1], pa.int64()),
                "item": pa.array([2268318, 2333346, 2576651], pa.int64()),
                "category": pa.array([2520377, 2520771, 149192], pa.int64()),
                "behavior": pa.array(["pv", "fav", "buy"]),
                "ts": pa.array([1767607200, 1767607201, 1767607202], pa.int64()),
            }
        ),
    )
    _ingest(settings, "taobao")
    assert [(line, e, ts) for _, _, e, ts, _, _, line in _events(settings)] == [
        (1, "view", _ts("2026-01-05 10:00:00")),
        (3, "purchase", _ts("2026-01-05 10:00:02")),
    ]
    assert [(line, reason) for _, _, line, reason, _, _ in _rejects(settings)] == [(2, "unknown event type")]
    _assert_same_as_text_path(settings, monkeypatch, "taobao")


def test_typed_path_and_csv_text_path_load_identical_events(settings):
    frame = generate_events(n_users=40, n_items=25, n_events=3_000, n_days=1, seed=3, start=str(DAY))
    rows = list(zip(frame["user_id"].tolist(), frame["item_id"].tolist(), frame["event_type"].tolist(),
                    frame["ts"].dt.to_pydatetime().tolist()))
    # a few bad rows among them, the same in both files
    rows[10] = (None, rows[10][1], rows[10][2], rows[10][3])
    rows[20] = (rows[20][0], rows[20][1], "wishlist", rows[20][3])
    rows[30] = (rows[30][0], rows[30][1], rows[30][2], None)
    rows[40] = (rows[40][0], rows[40][1], rows[40][2], dt.datetime(2026, 1, 7, 3, 0))
    rows[50] = (rows[50][0], rows[50][1], " View ", rows[50][3] + dt.timedelta(microseconds=7))
    users, items, kinds, times = (list(column) for column in zip(*rows))
    _write(
        settings,
        f"events-{DAY}.parquet",
        pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(items, pa.int64()),
                  "event_type": pa.array(kinds), "ts": pa.array(times, pa.timestamp("us"))}),
    )
    _ingest(settings)
    typed_events = _events(settings)
    typed_rejects = [(line, reason, detail) for _, _, line, reason, detail, _ in _rejects(settings)]
    assert len(typed_events) == len(rows) - 4 and len(typed_rejects) == 4

    (settings.landing_dir / f"events-{DAY}.parquet").unlink()
    with open(settings.landing_dir / f"events-{DAY}.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["user_id", "item_id", "event_type", "ts"])
        for user, item, kind, ts in rows:
            writer.writerow(["" if user is None else user, item, kind, "" if ts is None else ts.isoformat(sep=" ")])
    _ingest(settings)
    text_events = _events(settings)
    # the CSV's header is line 1: record n of the Parquet file is line n + 1 of the CSV
    assert [row[:5] + (row[6] - 1,) for row in text_events] == [row[:5] + (row[6],) for row in typed_events]
    text_rejects = [(line - 1, reason, detail) for _, _, line, reason, detail, _ in _rejects(settings)]
    assert text_rejects == typed_rejects


def test_batches_keep_lines_and_the_stored_order(settings, monkeypatch):
    monkeypatch.setattr(event_ingest, "_PARQUET_BATCH_ROWS", 1000)
    n = 3_500
    bad = {999: "missing user id", 1000: "unknown event type", 1001: "outside partition", 2500: "bad timestamp"}
    users = [None if line == 999 else line for line in range(1, n + 1)]
    kinds = ["nope" if line == 1000 else "view" for line in range(1, n + 1)]
    times = [
        None if line == 2500 else dt.datetime(2026, 1, 6 if line == 1001 else 5) + dt.timedelta(seconds=line)
        for line in range(1, n + 1)
    ]
    _write(
        settings,
        f"events-{DAY}.parquet",
        pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array([str(line % 7) for line in range(n)]),
                  "event_type": pa.array(kinds), "ts": pa.array(times, pa.timestamp("us"))}),
        row_group_size=700,
    )
    result = _ingest(settings)
    assert (result.events, result.rejected) == (n - len(bad), len(bad))
    stored = query(settings, "SELECT source_line, user_id FROM events ORDER BY rowid")
    assert [line for line, _ in stored] == [line for line in range(1, n + 1) if line not in bad]
    assert all(user == str(line) for line, user in stored)
    assert query(settings, "SELECT source_line, reason FROM rejected_events ORDER BY rowid") == sorted(bad.items())


def test_rerun_duplicates_and_failures_on_the_typed_path(settings):
    name = _write(settings, f"events-{DAY}.parquet", BAD_ROWS)
    _ingest(settings)
    first = (_events(settings), _rejects(settings))
    _ingest(settings)  # re-running replaces the day with the same rows
    assert (_events(settings), _rejects(settings)) == first

    (settings.landing_dir / str(DAY)).mkdir()
    shutil.copyfile(settings.landing_dir / name, settings.landing_dir / str(DAY) / "again.parquet")
    result = _ingest(settings)
    assert [f.duplicate_of for f in result.files] == [None, f"{DAY}/again.parquet"]
    assert (result.events, result.rejected) == (3, 9)
    before = (_events(settings), _rejects(settings))

    # a timestamp beyond DuckDB's range fails the day cleanly (the text path cannot read it either)
    _write(
        settings,
        f"zz-{DAY}.parquet",
        pa.table({"user_id": [1], "item_id": [2], "event_type": ["view"],
                  "ts": pa.array([10**15], pa.timestamp("s"))}),
    )
    with pytest.raises(LandingFileError, match="outside DuckDB's range"):
        _ingest(settings)
    assert (_events(settings), _rejects(settings)) == before

    _write(settings, f"zz-{DAY}.parquet", pa.table({"visitor": [1], "thing": [2], "what": ["view"], "when": [1]}))
    with pytest.raises(LandingFileError, match=r"columns \['user_id', 'item_id', 'event_type', 'ts'\]"):
        _ingest(settings)
    assert (_events(settings), _rejects(settings)) == before


@pytest.mark.parametrize(
    ("types", "mapping_name", "typed"),
    [
        ((pa.int64(), pa.int64(), pa.large_string(), pa.timestamp("us")), "default", True),
        ((pa.string(), pa.uint32(), pa.string_view(), pa.timestamp("ns", tz="Asia/Tokyo")), "default", True),
        ((pa.int64(), pa.int64(), pa.string(), pa.int64()), "retailrocket", True),
        ((pa.float64(), pa.string(), pa.string(), pa.timestamp("us")), "default", False),  # a float id: rejected per row
        ((pa.int64(), pa.int64(), pa.string(), pa.string()), "default", False),  # time as text
        ((pa.int64(), pa.int64(), pa.string(), pa.int64()), "default", False),  # integer time read as ISO
        ((pa.int64(), pa.int64(), pa.string(), pa.timestamp("ms")), "retailrocket", False),  # timestamp read as epoch
        ((pa.int64(), pa.int64(), pa.dictionary(pa.int32(), pa.string()), pa.timestamp("us")), "default", False),
    ],
)
def test_which_parquet_files_take_the_typed_path(types, mapping_name, typed):
    mapping = preset(mapping_name)
    schema = pa.schema(list(zip(mapping.mapped_columns(), types)))
    assert is_typed_parquet(schema, mapping) is typed
