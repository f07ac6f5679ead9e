"""Ids are integers or printable text (the API's rule): junk ids go to rejected_events with why, and the API
accepts every id the ingest keeps."""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import query
from hypothesis import HealthCheck, example, given, settings as hypothesis_settings, strategies as st
from pydantic import StringConstraints, TypeAdapter, ValidationError

from als_store import warehouse
from pipelines import event_ingest
from pipelines.event_sources import preset
from pipelines.landing import files_for_day
from serving.schemas import ID_PATTERN, MAX_ID_LENGTH

DAY = dt.date(2026, 1, 5)
T = "2026-01-05 08:00:00"
TS = dt.datetime(2026, 1, 5, 8)
API_ID = TypeAdapter(Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)])


def _ingest(landing: Path, con) -> event_ingest.DayResult:
    return event_ingest.ingest_day(con, DAY, files_for_day(landing, DAY), preset("default"), log=lambda m: None)


def _rows(settings, table: str, columns: str) -> list[tuple]:
    return query(settings, f"SELECT source_file, source_line, {columns} FROM {table} ORDER BY source_file, source_line")


def test_junk_ids_in_every_format_are_rejected_with_why(settings):
    landing = settings.landing_dir
    (landing / f"a-{DAY}.csv").write_bytes(
        (
            "user_id,item_id,event_type,ts\n"
            f"u\x001,i1,view,{T}\n"  # a NUL byte
            f" u2 ,i2,view,{T}\n"  # spaces around are trimmed: good
            f"u3,{'x' * 129},view,{T}\n"
            f"u\t4,i4,view,{T}\n"
            f"u5,i\u00855,view,{T}\n"  # U+0085, a C1 control character
            f"u6,i 6,view,{T}\n"
            f"\u00e9\u00e8,{'y' * 128},view,{T}\n"  # non-ASCII text and exactly 128 characters: good
        ).encode()
    )
    (landing / f"b-{DAY}.jsonl").write_text(
        "".join(
            json.dumps({"user_id": user, "item_id": item, "event_type": "view", "ts": T}) + "\n"
            for user, item in [
                ({"a": 1}, "i1"),
                ([1, 2], "i2"),
                (2.5, "i3"),
                (1.0, "i4"),
                (True, "i5"),
                (7, "i6"),  # an integer: good
                (100000000000000000000000, "i7"),  # an integer past 64 bits is still an integer: good
                ("u8", {"sku": 8}),
            ]
        )
    )
    ts = pa.array([TS] * 3, pa.timestamp("us"))
    floats = pa.table({"user_id": pa.array([1.0, 2.5, float("nan")]), "item_id": ["i1", "i2", "i3"],
                       "event_type": ["view"] * 3, "ts": ts})
    structs = pa.table({"user_id": pa.array([{"a": 1}, None, {"a": 3}]), "item_id": ["i1", "i2", "i3"],
                        "event_type": ["view"] * 3, "ts": ts})
    lists = pa.table({"user_id": ["u1", "u2", "u3"], "item_id": pa.array([[1], [2, 3], None]),
                      "event_type": ["view"] * 3, "ts": ts})
    typed = pa.table({"user_id": ["u\x001", " u2 ", "u\u009f3"], "item_id": pa.array([1, 2, 3]),
                      "event_type": ["view"] * 3, "ts": ts})
    for name, table in [("c", floats), ("d", structs), ("e", lists), ("f", typed)]:
        pq.write_table(table, landing / f"{name}-{DAY}.parquet")
    assert event_ingest.is_typed_parquet(typed.schema, preset("default"))
    assert not event_ingest.is_typed_parquet(floats.schema, preset("default"))

    with warehouse.open_warehouse(settings.duckdb_path) as con:
        result = _ingest(landing, con)

    assert _rows(settings, "events", "user_id, item_id") == [
        (f"a-{DAY}.csv", 3, "u2", "i2"),
        (f"a-{DAY}.csv", 8, "\u00e9\u00e8", "y" * 128),
        (f"b-{DAY}.jsonl", 6, "7", "i6"),
        (f"b-{DAY}.jsonl", 7, "100000000000000000000000", "i7"),
        (f"f-{DAY}.parquet", 2, "u2", "2"),
    ]
    assert _rows(settings, "rejected_events", "reason, detail") == [
        (f"a-{DAY}.csv", 2, "bad user id", "user id has a control character U+0000"),
        (f"a-{DAY}.csv", 4, "bad item id", "item id longer than 128 characters (129)"),
        (f"a-{DAY}.csv", 5, "bad user id", "user id has a control character U+0009"),
        (f"a-{DAY}.csv", 6, "bad item id", "item id has a control character U+0085"),
        (f"a-{DAY}.csv", 7, "bad item id", "item id has a space"),
        (f"b-{DAY}.jsonl", 1, "bad user id", 'user id is a JSON object: {"a":1}'),
        (f"b-{DAY}.jsonl", 2, "bad user id", "user id is a JSON array: [1,2]"),
        (f"b-{DAY}.jsonl", 3, "bad user id", "user id is a float: 2.5"),
        (f"b-{DAY}.jsonl", 4, "bad user id", "user id is a float: 1.0"),
        (f"b-{DAY}.jsonl", 5, "bad user id", "user id is a boolean: true"),
        (f"b-{DAY}.jsonl", 8, "bad item id", 'item id is a JSON object: {"sku":8}'),
        (f"c-{DAY}.parquet", 1, "bad user id", "user id is a float: 1.0"),
        (f"c-{DAY}.parquet", 2, "bad user id", "user id is a float: 2.5"),
        (f"c-{DAY}.parquet", 3, "bad user id", "user id is a float: nan"),
        (f"d-{DAY}.parquet", 1, "bad user id", "user id is a struct: {'a': 1}"),
        (f"d-{DAY}.parquet", 2, "missing user id", None),
        (f"d-{DAY}.parquet", 3, "bad user id", "user id is a struct: {'a': 3}"),
        (f"e-{DAY}.parquet", 1, "bad item id", "item id is a list: [1]"),
        (f"e-{DAY}.parquet", 2, "bad item id", "item id is a list: [2, 3]"),
        (f"e-{DAY}.parquet", 3, "missing item id", None),
        (f"f-{DAY}.parquet", 1, "bad user id", "user id has a control character U+0000"),
        (f"f-{DAY}.parquet", 3, "bad user id", "user id has a control character U+009F"),
    ]
    assert result.rejected_by_reason["bad user id"] == 14
    # the raw text of a bad id is kept for the audit
    raw = dict(((f, line), r) for f, line, r in _rows(settings, "rejected_events", "raw"))
    assert json.loads(raw[(f"a-{DAY}.csv", 2)])["user"] == "u\x001"
    assert json.loads(raw[(f"b-{DAY}.jsonl", 1)])["user_id"] == {"a": 1}
    assert json.loads(raw[(f"c-{DAY}.parquet", 2)])["user"] == "2.5"


def _api_accepts(text: str) -> bool:
    try:
        API_ID.validate_python(text)
    except ValidationError:
        return False
    assert re.fullmatch(ID_PATTERN, text) and len(text) <= MAX_ID_LENGTH  # Python's re agrees with pydantic's
    return True


ID_TEXT = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(max_codepoint=0xA1), max_size=6),
    st.text(alphabet="ab \t\x00\x85", max_size=5),
    st.text(alphabet="ab", min_size=126, max_size=131).map(lambda s: f" {s} "),
)


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ids=st.lists(ID_TEXT, min_size=1, max_size=12))
@example(ids=["0\xa0", "\xa0", " 7 "])  # no-break spaces are kept (DuckDB's trim() alone strips them), spaces trimmed
def test_ingest_keeps_exactly_the_ids_the_api_accepts(ids):
    """Text path (JSON lines) and typed Parquet: an id is loaded iff the API's pattern accepts it trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        landing = Path(tmp)
        (landing / f"text-{DAY}.jsonl").write_text(
            "".join(json.dumps({"user_id": u, "item_id": "i", "event_type": "view", "ts": T}) + "\n" for u in ids)
        )
        pq.write_table(
            pa.table({"user_id": pa.array(ids, pa.string()), "item_id": ["i"] * len(ids),
                      "event_type": ["view"] * len(ids), "ts": pa.array([TS] * len(ids), pa.timestamp("us"))}),
            landing / f"typed-{DAY}.parquet",
        )
        with warehouse.open_warehouse(landing / "w.duckdb") as con:
            _ingest(landing, con)
            loaded = con.execute("SELECT source_file, source_line, user_id FROM events").fetchall()
            rejected = con.execute("SELECT source_file, source_line, reason FROM rejected_events").fetchall()
    for name in (f"text-{DAY}.jsonl", f"typed-{DAY}.parquet"):
        kept = {line: user for file, line, user in loaded if file == name}
        reasons = {line: reason for file, line, reason in rejected if file == name}
        for line, text in enumerate(ids, start=1):
            trimmed = text.strip(" ")
            if line in kept:
                assert kept[line] == trimmed and _api_accepts(trimmed), (name, text)
            else:
                assert not _api_accepts(trimmed), (name, text, reasons[line])
                assert reasons[line] == ("missing user id" if trimmed == "" else "bad user id")
