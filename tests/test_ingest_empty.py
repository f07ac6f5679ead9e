"""A landing file with no rows never replaces the rows a day holds, unless the run config says `allow_empty`."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import query

from pipelines.event_ingest import LandingFileError

DAY = "2026-01-05"
HEADER = "user_id,item_id,event_type,ts\n"
THREE = HEADER + "u1,i1,view,2026-01-05 08:00:00\nu2,i2,cart,2026-01-05 09:00:00\nu3,i3,view,2026-01-05 10:00:00\n"


def _day(settings) -> tuple[list[tuple], list[tuple]]:
    events = query(settings, "SELECT user_id, item_id, source_file, source_line FROM events ORDER BY ALL")
    files = query(settings, "SELECT source_file, rows_loaded, rows_rejected FROM ingested_files ORDER BY ALL")
    return events, files


def _write_three(path) -> None:
    if path.name.endswith(".parquet"):
        rows = [line.split(",") for line in THREE.splitlines()[1:]]
        pq.write_table(pa.table({name: [r[i] for r in rows] for i, name in enumerate(HEADER.strip().split(","))}), path)
    elif ".jsonl" in path.name:
        rows = [dict(zip(HEADER.strip().split(","), line.split(","))) for line in THREE.splitlines()[1:]]
        text = "".join(json.dumps(row) + "\n" for row in rows)
        path.write_bytes(gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode())
    else:
        path.write_bytes(gzip.compress(THREE.encode()) if path.name.endswith(".gz") else THREE.encode())


def _truncate(path, how: str) -> None:
    if how == "zero bytes":
        path.write_bytes(b"")
    elif path.name.endswith(".parquet"):  # a Parquet file with its schema and no rows
        pq.write_table(pq.read_table(path).slice(0, 0), path)
    elif ".jsonl" in path.name:  # only blank lines
        path.write_bytes(gzip.compress(b"\n\n") if path.name.endswith(".gz") else b"\n\n")
    else:
        path.write_bytes(gzip.compress(HEADER.encode()) if path.name.endswith(".gz") else HEADER.encode())


@pytest.mark.parametrize("how", ["zero bytes", "header only"])
@pytest.mark.parametrize("name", [f"events-{DAY}.{ext}" for ext in ("csv", "csv.gz", "jsonl", "parquet")])
def test_an_empty_file_fails_and_keeps_the_day(settings, ingest_day, name, how):
    path = settings.landing_dir / name
    _write_three(path)
    ingest_day(DAY)
    before = _day(settings)
    assert len(before[0]) == 3

    _truncate(path, how)
    with pytest.raises(LandingFileError, match=rf"{name}: no rows.*allow_empty") as failure:
        ingest_day(DAY)
    assert "kept as it was" in str(failure.value)
    assert _day(settings) == before


def test_allow_empty_in_the_run_config_replaces_the_day(settings, ingest_day):
    path = settings.landing_dir / f"events-{DAY}.csv"
    _write_three(path)
    ingest_day(DAY)
    _truncate(path, "header only")

    result = ingest_day(DAY, config={"allow_empty": True}, raise_on_error=False)
    assert result.is_node_success("events")
    assert _day(settings) == ([], [(f"events-{DAY}.csv", 0, 0)])
    # the day is empty now, which the blocking check reports
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["events_present_and_valid"].passed


def test_one_empty_file_among_others_fails_the_day(settings, ingest_day):
    _write_three(settings.landing_dir / f"a-{DAY}.csv")
    ingest_day(DAY)
    before = _day(settings)
    (settings.landing_dir / f"b-{DAY}.csv").write_text(HEADER)  # a failed export next to a good file

    with pytest.raises(LandingFileError, match=rf"b-{DAY}\.csv: no rows") as failure:
        ingest_day(DAY)
    assert f"a-{DAY}.csv" not in str(failure.value)
    assert _day(settings) == before

    ingest_day(DAY, config={"allow_empty": True})
    events, files = _day(settings)
    assert len(events) == 3 and files == [(f"a-{DAY}.csv", 3, 0), (f"b-{DAY}.csv", 0, 0)]


def test_rows_that_are_all_rejected_do_not_replace_a_days_events(settings, ingest_day):
    path = settings.landing_dir / f"events-{DAY}.csv"
    _write_three(path)
    ingest_day(DAY)
    before = _day(settings)
    path.write_text(HEADER + "u1,i1,view,yesterday\nu2,i2,cart,2026-01-07 09:00:00\n")  # e.g. a wrong time format

    with pytest.raises(LandingFileError, match=r"all 2 rows .* rejected .*bad timestamp: 1.*outside partition: 1"):
        ingest_day(DAY)
    assert _day(settings) == before

    ingest_day(DAY, config={"allow_empty": True}, raise_on_error=False)
    assert query(settings, "SELECT count(*) FROM events")[0][0] == 0
    assert query(settings, "SELECT count(*) FROM rejected_events")[0][0] == 2


def test_a_first_ingest_of_rejected_rows_keeps_them_for_audit(settings, ingest_day):
    (settings.landing_dir / f"events-{DAY}.csv").write_text(HEADER + "u1,i1,click,2026-01-05 08:00:00\n")
    result = ingest_day(DAY, raise_on_error=False)
    assert result.is_node_success("events")  # nothing to lose: the rejects are recorded, the check fails
    assert query(settings, "SELECT reason FROM rejected_events") == [("unknown event type",)]
