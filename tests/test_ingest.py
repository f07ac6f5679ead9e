"""`events` from synthetic landing files through dg.materialize: counts, idempotence, replacement, duplicates, atomicity."""

from __future__ import annotations

import gzip
import shutil

import pandas as pd
import pytest
from conftest import query

from als_core.synthetic import generate_events
from pipelines.event_ingest import LandingFileError
from pipelines.landing import write_day_files

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]


@pytest.fixture
def synthetic(settings) -> pd.DataFrame:
    events = generate_events(n_users=300, n_items=120, n_events=6_000, n_days=3, seed=1, start="2026-01-01")
    write_day_files(events, settings.landing_dir, "csv.gz")
    return events


def _events_of(settings, day: str) -> list[tuple]:
    return query(
        settings,
        "SELECT user_id, item_id, event_type, ts, source_file, source_line FROM events "
        "WHERE partition_day = ? ORDER BY source_file, source_line",
        [day],
    )


def _metadata(result, key: str):
    return result.asset_materializations_for_node("events")[0].metadata[key].value


def test_three_days_load_with_counts_from_the_files(settings, synthetic, ingest_day):
    for day in DAYS:
        result = ingest_day(day)
        expected = synthetic[synthetic["ts"].dt.date.astype(str) == day]
        assert _metadata(result, "events") == len(expected)
        assert _metadata(result, "rejected") == 0
        assert _metadata(result, "users") == expected["user_id"].nunique()
        assert _metadata(result, "items") == expected["item_id"].nunique()
        for kind in ("view", "cart", "purchase"):
            assert _metadata(result, f"events_{kind}") == int((expected["event_type"] == kind).sum())
        assert all(check.passed for check in result.get_asset_check_evaluations())
    loaded = query(settings, "SELECT user_id, item_id, event_type, ts FROM events ORDER BY ts, user_id, item_id, event_type")
    frame = synthetic.sort_values(["ts", "user_id", "item_id", "event_type"])
    assert len(loaded) == len(frame)
    assert [(int(u), int(i), e) for u, i, e, _ in loaded] == list(
        zip(frame["user_id"].tolist(), frame["item_id"].tolist(), frame["event_type"].tolist())
    )
    # source lines point at the record in the file: line n of the CSV holds the (n-1)-th event
    first_file = sorted(settings.landing_dir.iterdir())[0]
    lines = gzip.open(first_file, "rt").read().splitlines()
    for user, item, kind, _ts, _file, line in _events_of(settings, DAYS[0])[:50]:
        assert lines[line - 1].split(",")[:3] == [user, item, kind]


def test_reingest_is_idempotent(settings, synthetic, ingest_day):
    ingest_day(DAYS[1])
    first = _events_of(settings, DAYS[1])
    ingest_day(DAYS[1])
    assert _events_of(settings, DAYS[1]) == first
    assert query(settings, "SELECT count(*) FROM ingested_files")[0][0] == 1


def test_rerun_replaces_the_partition_only(settings, synthetic, ingest_day):
    for day in DAYS[:2]:
        ingest_day(day)
    other_day = _events_of(settings, DAYS[0])
    path = settings.landing_dir / f"events-{DAYS[1]}.csv.gz"
    day_rows = synthetic[synthetic["ts"].dt.date.astype(str) == DAYS[1]]
    kept = day_rows.iloc[: len(day_rows) // 3].copy()
    kept["user_id"] = kept["user_id"] + 1_000_000  # ids the old file never had
    path.unlink()
    write_day_files(kept, settings.landing_dir, "csv.gz")

    result = ingest_day(DAYS[1])
    assert _metadata(result, "events") == len(kept)
    users = {row[0] for row in _events_of(settings, DAYS[1])}
    assert users == {str(u) for u in kept["user_id"]}  # none of the old rows survived
    assert _events_of(settings, DAYS[0]) == other_day


def test_same_file_landed_twice_adds_nothing(settings, synthetic, ingest_day):
    original = settings.landing_dir / f"events-{DAYS[2]}.csv.gz"
    (settings.landing_dir / DAYS[2]).mkdir()
    shutil.copyfile(original, settings.landing_dir / DAYS[2] / "resent.csv.gz")
    with gzip.open(original) as packed:  # the same content uncompressed is the same file too
        (settings.landing_dir / f"again-{DAYS[2]}.csv").write_bytes(packed.read())

    result = ingest_day(DAYS[2])
    expected = int((synthetic["ts"].dt.date.astype(str) == DAYS[2]).sum())
    assert _metadata(result, "events") == expected
    assert _metadata(result, "duplicate_files") == 2
    recorded = query(settings, "SELECT source_file, duplicate_of FROM ingested_files ORDER BY source_file")
    # files are read in path order; the first copy is loaded, the others point at it
    assert recorded == [
        (f"{DAYS[2]}/resent.csv.gz", None),
        (f"again-{DAYS[2]}.csv", f"{DAYS[2]}/resent.csv.gz"),
        (f"events-{DAYS[2]}.csv.gz", f"{DAYS[2]}/resent.csv.gz"),
    ]


def test_a_failure_mid_write_leaves_the_previous_rows(settings, synthetic, ingest_day):
    ingest_day(DAYS[0])
    before = _events_of(settings, DAYS[0])
    before_files = query(settings, "SELECT * FROM ingested_files")
    # sorted after events-...: the good file is deleted and re-inserted before this one fails
    (settings.landing_dir / f"zz-{DAYS[0]}.csv").write_text("visitor,thing,what,when\n1,2,view,2026-01-01\n")

    with pytest.raises(LandingFileError, match=r"columns \['user_id', 'item_id', 'event_type', 'ts'\]"):
        ingest_day(DAYS[0])
    assert _events_of(settings, DAYS[0]) == before
    assert query(settings, "SELECT * FROM ingested_files") == before_files


def test_a_day_without_files_fails_and_keeps_its_rows(settings, synthetic, ingest_day):
    ingest_day(DAYS[0])
    before = _events_of(settings, DAYS[0])
    for path in settings.landing_dir.iterdir():
        path.unlink()
    result = ingest_day(DAYS[0], raise_on_error=False)
    assert not result.success
    assert _events_of(settings, DAYS[0]) == before


@pytest.mark.parametrize("fmt", ["jsonl.gz", "parquet", "csv"])
def test_every_landing_format_loads_the_same_events(settings, ingest_day, fmt):
    events = generate_events(n_users=50, n_items=30, n_events=500, n_days=1, seed=2, start="2026-01-02")
    write_day_files(events, settings.landing_dir, fmt)
    result = ingest_day("2026-01-02")
    assert _metadata(result, "events") == len(events)
    loaded = query(settings, "SELECT user_id, item_id, event_type, ts FROM events ORDER BY source_line")
    assert [(int(u), int(i), e, t) for u, i, e, t in loaded] == list(
        zip(events["user_id"], events["item_id"], events["event_type"], events["ts"].dt.to_pydatetime())
    )


def test_which_files_belong_to_a_day(tmp_path):
    from pipelines.landing import files_for_day, landing_files

    for name in (
        "events-2026-01-05.csv.gz",
        "2026-01-05/part-0.parquet",
        "2026-01-05/events-2026-01-06.jsonl",  # the file name's date wins over the directory's
        "2026-01-05/.part-1.parquet",  # hidden: still being written
        "_tmp/events-2026-01-05.csv",  # under a hidden directory
        "events-2026-13-45.csv",  # not a date
        "notes-2026-01-05.txt",  # not a landing format
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    day = pd.Timestamp("2026-01-05").date()
    assert [f.relative for f in files_for_day(tmp_path, day)] == ["2026-01-05/part-0.parquet", "events-2026-01-05.csv.gz"]
    assert {f.relative: (str(f.day), f.format) for f in landing_files(tmp_path)} == {
        "2026-01-05/events-2026-01-06.jsonl": ("2026-01-06", "jsonl"),
        "2026-01-05/part-0.parquet": ("2026-01-05", "parquet"),
        "events-2026-01-05.csv.gz": ("2026-01-05", "csv"),
    }


def test_landing_cli_writes_one_file_per_day(tmp_path, capsys):
    from pipelines.landing import main

    main(["--users", "20", "--items", "10", "--events", "300", "--days", "3", "--format", "jsonl", "--landing", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"events-{d}.jsonl" for d in DAYS]
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_a_locked_warehouse_is_waited_for(settings):
    """DuckDB lets one process hold the file; a second one retries until the lock is released."""
    import subprocess
    import sys
    import time

    import duckdb

    from als_store import warehouse

    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(2)",
         str(settings.duckdb_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(duckdb.IOException, match="lock"):
            warehouse.connect(settings.duckdb_path, lock_timeout_s=0.2)
        waits: list[str] = []
        started = time.monotonic()
        con = warehouse.connect(settings.duckdb_path, lock_timeout_s=30, on_wait=waits.append)
        assert con.execute("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)
        con.close()
        assert waits and time.monotonic() - started < 30
    finally:
        holder.wait(timeout=30)
