"""Bad rows go to rejected_events with a reason, file and line; their neighbours load. Presets read real layouts."""

from __future__ import annotations

import csv
import gzip
import shutil

import pandas as pd
from conftest import query, shared_data_file

DAY = "2026-01-05"

# one row per kind of problem, between good rows; (line, reason) of each bad one
BAD_CSV = """user_id,item_id,event_type,ts
u1,i1,view,2026-01-05 08:00:00
u1,i2,view
,i3,view,2026-01-05 09:00:00
u2,,cart,2026-01-05 09:00:00
u2,i4,wishlist,2026-01-05 09:30:00
u3,i5,view,2026-01-05 10:00:00,surplus
u3,i6,purchase,yesterday-ish
u4,i7,cart,2026-01-06 00:00:01
u4,i8,"purchase,2026-01-05 11:00:00
"""
BAD_CSV_TAIL = """u5,i9, Purchase ,2026-01-05T23:59:59+00:00
u6,i10,cart,2026-01-06 01:30:00+02:00
u7,i11,view,2026-01-05 12:00:00
u8,i12,view,2026-01-05 12:00"""  # no newline at the end, like a truncated export
EXPECTED_REJECTS = [
    (3, "malformed row"),
    (4, "missing user id"),
    (5, "missing item id"),
    (6, "unknown event type"),
    (7, "malformed row"),
    (8, "bad timestamp"),
    (9, "outside partition"),
    (10, "malformed row"),
]


def _rejects(settings) -> list[tuple]:
    return query(settings, "SELECT source_line, reason FROM rejected_events ORDER BY source_file, source_line")


def _loaded(settings) -> list[tuple]:
    return query(settings, "SELECT source_line, user_id, item_id, event_type, ts FROM events ORDER BY source_file, source_line")


def test_each_bad_row_kind_is_quarantined_and_neighbours_kept(settings, ingest_day):
    # the unbalanced quote on line 10 swallows the text up to the next quote: DuckDB reports the
    # broken record; what follows it must still load, so that part lives in a second file
    (settings.landing_dir / f"events-{DAY}.csv").write_text(BAD_CSV)
    (settings.landing_dir / f"late-{DAY}.csv").write_text("user_id,item_id,event_type,ts\n" + BAD_CSV_TAIL)
    result = ingest_day(DAY)

    rejected = query(
        settings,
        "SELECT source_file, source_line, reason, detail, raw FROM rejected_events ORDER BY source_file, source_line",
    )
    assert [(line, reason) for file, line, reason, _, _ in rejected if file.startswith("events-")] == EXPECTED_REJECTS
    by_line = {line: (detail, raw) for _, line, _, detail, raw in rejected}
    assert "Expected Number of Columns: 4 Found: 3" in by_line[3][0] and by_line[3][1] == "u1,i2,view"
    assert by_line[6][0] == "event type 'wishlist'"
    assert by_line[8][0] == "timestamp 'yesterday-ish'"
    assert by_line[9][0] == f"event on 2026-01-06, partition is {DAY}"

    loaded = _loaded(settings)
    assert [row[:4] for row in loaded] == [
        (2, "u1", "i1", "view"),
        (2, "u5", "i9", "purchase"),  # ' Purchase ' normalised
        (3, "u6", "i10", "cart"),  # 01:30 at +02:00 is 23:30 UTC of the partition's day
        (4, "u7", "i11", "view"),
        (5, "u8", "i12", "view"),  # the last line lacks its newline and still loads
    ]
    assert str(loaded[2][4]) == "2026-01-05 23:30:00"
    metadata = result.asset_materializations_for_node("events")[0].metadata
    assert metadata["rejected"].value == len(EXPECTED_REJECTS)
    assert metadata["rejected: malformed row"].value == 3
    assert metadata["rows_in"].value == len(EXPECTED_REJECTS) + len(loaded)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["events_present_and_valid"].passed
    assert not checks["rejected_share_below_threshold"].passed  # 8 of 13 rows: far over 5%, a warning


def test_jsonl_bad_lines_are_quarantined_with_their_line(settings, ingest_day):
    lines = [
        '{"user_id": 1, "item_id": "a", "event_type": "view", "ts": "2026-01-05T10:00:00Z"}',
        "",  # blank lines are skipped, not rejected
        '{"user_id": 2, "item_id": "b"',  # cut short
        "[1, 2, 3]",  # JSON, but not an object
        '{"user_id": 3, "event_type": "view", "ts": "2026-01-05T10:00:00Z"}',
        '{"user_id": 4, "item_id": 7, "event_type": "cart", "ts": "2026-01-05 11:00:00"}',
    ]
    with gzip.open(settings.landing_dir / f"{DAY}.jsonl.gz", "wt") as out:
        out.write("\r\n".join(lines) + "\r\n")
    ingest_day(DAY)
    assert _rejects(settings) == [(3, "malformed row"), (4, "malformed row"), (5, "missing item id")]
    assert [row[:4] for row in _loaded(settings)] == [(1, "1", "a", "view"), (6, "4", "7", "cart")]


def test_parquet_bad_values_are_quarantined_with_their_row(settings, ingest_day):
    frame = pd.DataFrame(
        {
            "user_id": pd.array([1, 2, None, 4], dtype="Int64"),
            "item_id": pd.Categorical(["x", "y", "z", "w"]),  # a dictionary column keeps the text path
            "event_type": ["view", "click", "view", "purchase"],
            "ts": pd.to_datetime(["2026-01-05 01:00", "2026-01-05 02:00", "2026-01-05 03:00", "2026-01-07 00:00"]),
        }
    )
    frame.to_parquet(settings.landing_dir / f"part-{DAY}.parquet", index=False)
    ingest_day(DAY)
    assert _rejects(settings) == [(2, "unknown event type"), (3, "missing user id"), (4, "outside partition")]
    assert [row[:4] for row in _loaded(settings)] == [(1, "1", "x", "view")]  # float ids: tests/test_ingest_id_rules.py


def test_retailrocket_preset_reads_its_layout(settings, ingest_day):
    # RetailRocket events.csv: timestamp in ms, visitorid, event, itemid, transactionid
    (settings.landing_dir / f"events-{DAY}.csv").write_text(
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1767607200000,257597,view,355908,\n"  # 2026-01-05 10:00:00 UTC
        "1767607260500,257597,addtocart,355908,\n"
        "1767607320000,257597,transaction,355908,4000\n"
        "1767607380000,111,removefromcart,355908,\n"
        "not-a-number,111,view,1,\n"
    )
    ingest_day(DAY, config={"preset": "retailrocket"})
    loaded = _loaded(settings)
    assert [(u, i, e) for _, u, i, e, _ in loaded] == [
        ("257597", "355908", "view"),
        ("257597", "355908", "cart"),
        ("257597", "355908", "purchase"),
    ]
    assert str(loaded[1][4]) == "2026-01-05 10:01:00.500000"
    assert _rejects(settings) == [(5, "unknown event type"), (6, "bad timestamp")]


def test_taobao_preset_reads_headerless_files_and_quarantines_fav(settings, ingest_day):
    # UserBehavior.csv: user, item, category, behavior, unix seconds; no header
    (settings.landing_dir / f"UserBehavior-{DAY}.csv").write_text(
        "1,2268318,2520377,pv,1767607200\n"
        "1,2333346,2520771,fav,1767607201\n"
        "1,2576651,149192,buy,1767607202\n"
        "2,3830808,4181361,cart,1767607203\n"
    )
    ingest_day(DAY, config={"preset": "taobao"})
    assert [(line, u, i, e) for line, u, i, e, _ in _loaded(settings)] == [
        (1, "1", "2268318", "view"),
        (3, "1", "2576651", "purchase"),
        (4, "2", "3830808", "cart"),
    ]
    assert _rejects(settings) == [(2, "unknown event type")]


def test_taobao_fav_can_be_mapped_in_the_run_config(settings, ingest_day):
    (settings.landing_dir / f"UserBehavior-{DAY}.csv").write_text("1,2,3,fav,1767607201\n")
    ingest_day(DAY, config={"preset": "taobao", "event_names": {"pv": "view", "fav": "cart", "buy": "purchase"}})
    assert [row[3] for row in _loaded(settings)] == ["cart"]


def _whole_rows(path) -> int:
    with gzip.open(path, "rt", newline="") as stream:
        rows = list(csv.reader(stream))
    return sum(1 for row in rows[1:] if len(row) == len(rows[0]))


def test_rees46_verbatim_file_loads_every_whole_row_and_rejects_the_cut_one(settings, ingest_day):
    verbatim = shared_data_file("rees46-2019oct-head/events.verbatim.csv.gz")
    clean = shared_data_file("rees46-2019oct-head/events.clean.csv.gz")
    shutil.copyfile(verbatim, settings.landing_dir / "rees46-2019-10-01.csv.gz")
    result = ingest_day("2019-10-01", start_date="2019-10-01", config={"preset": "rees46"})

    whole = _whole_rows(verbatim)
    assert whole == _whole_rows(clean)  # every row but the truncated last one
    metadata = result.asset_materializations_for_node("events")[0].metadata
    assert metadata["events"].value == whole
    rejected = query(settings, "SELECT source_line, reason, detail FROM rejected_events")
    assert len(rejected) == 1
    line, reason, detail = rejected[0]
    assert (line, reason) == (whole + 2, "malformed row")  # header + whole rows, then the cut one
    assert "Found: 8" in detail
    # the loaded events are exactly the clean file's
    with gzip.open(clean, "rt", newline="") as stream:
        expected = sorted((r["user_id"], r["product_id"], r["event_type"]) for r in csv.DictReader(stream))
    loaded = sorted(query(settings, "SELECT user_id, item_id, event_type FROM events"))
    assert loaded == expected
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"events_present_and_valid": True, "rejected_share_below_threshold": True}
