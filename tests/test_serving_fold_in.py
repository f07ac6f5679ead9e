"""serving.fold_in against a real DuckDB warehouse file: which events are read, how they are weighted, and
what happens when the file is missing, empty or locked by the pipeline's writer."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import time

import duckdb
import numpy as np
import pytest

from als_store import sql_files
from serving.fold_in import WarehouseEvents


def write_events(path, rows):
    """rows: (user_id, item_id, event_type, 'YYYY-MM-DD HH:MM:SS') into the pipeline's own `events` table."""
    with duckdb.connect(str(path)) as con:
        sql_files.run(con, "events_schema")
        for user, item, kind, ts in rows:
            stamp = dt.datetime.fromisoformat(ts)
            con.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, 'test.csv', 1)",
                        [str(user), str(item), kind, stamp, stamp.date()])


def as_dict(history):
    items, weights = history
    return dict(zip(items.tolist(), weights.tolist()))


def test_recent_events_are_weighted_and_summed_per_item(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    write_events(path, [
        ("new", "10", "view", "2026-01-11 08:00:00"),
        ("new", "10", "cart", "2026-01-11 08:01:00"),
        ("new", "11", "purchase", "2026-01-12 09:00:00"),
        ("new", "12", "view", "2026-01-09 09:00:00"),  # before the model's window end: not read
        ("other", "10", "view", "2026-01-12 10:00:00"),
    ])
    events = WarehouseEvents(path, max_age_s=60)
    snapshot = events.refresh(since_day=dt.date(2026, 1, 10))
    assert snapshot is not None and len(snapshot) == 2
    new, other, missing = events.histories(["new", "other", "nobody"])
    assert as_dict(new) == {"10": 13.0, "11": 40.0}
    assert as_dict(other) == {"10": 3.0}
    assert missing is None
    assert events.status()["users"] == 2 and events.status()["last_error"] is None


def test_without_a_window_the_last_days_are_read_and_the_newest_events_win(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    write_events(path, [("u", str(item), "view", f"2026-01-{day:02d} 12:00:00")
                        for day, item in [(1, 1), (5, 2), (6, 3), (6, 4), (7, 5)]])
    events = WarehouseEvents(path, max_age_s=60, lookback_days=2)
    events.refresh(since_day=None)
    assert set(as_dict(events.histories(["u"])[0])) == {"3", "4", "5"}  # days 6 and 7
    capped = WarehouseEvents(path, max_age_s=60, lookback_days=30, max_events=2)
    capped.refresh(since_day=None)
    newest = set(as_dict(capped.histories(["u"])[0]))
    assert len(newest) == 2 and "5" in newest and newest <= {"3", "4", "5"}  # day 7, and one of day 6's two


def test_missing_warehouse_or_table_means_no_fold_in(tmp_path):
    events = WarehouseEvents(tmp_path / "absent.duckdb", max_age_s=60)
    assert events.refresh(None) is None
    assert events.histories(["u"]) == [None]
    assert "does not exist" in events.status()["last_error"]
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    events = WarehouseEvents(empty, max_age_s=60)
    assert events.refresh(None) is None
    assert "events" in events.status()["last_error"]


def test_a_locked_warehouse_keeps_the_last_snapshot_until_it_is_too_old(tmp_path, caplog):
    path = tmp_path / "warehouse.duckdb"
    write_events(path, [("u", "1", "purchase", "2026-01-05 12:00:00")])
    events = WarehouseEvents(path, max_age_s=1.0)
    assert events.refresh(None) is not None
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(path)!r})  # the pipeline's writer: an exclusive lock on the file
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        assert events.refresh(None) is None
        assert time.monotonic() - started < 5, "a locked warehouse must not stall the refresher"
        assert "lock" in events.status()["last_error"].lower()
        assert any("fold-in" in record.message for record in caplog.records)
        assert as_dict(events.histories(["u"])[0]) == {"1": 40.0}  # the previous snapshot still serves
        time.sleep(1.1)
        assert events.histories(["u"]) == [None] and not events.status()["fresh"]
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert events.refresh(None) is not None  # lock released: back in business
    assert np.isclose(as_dict(events.histories(["u"])[0])["1"], 40.0)


@pytest.mark.parametrize("user", ["x' OR '1'='1", "🙂", "a" * 128])
def test_unusual_ids_round_trip(tmp_path, user):
    path = tmp_path / "warehouse.duckdb"
    write_events(path, [(user, "7", "cart", "2026-01-05 12:00:00"), ("someone", "8", "view", "2026-01-05 12:00:00")])
    events = WarehouseEvents(path, max_age_s=60)
    events.refresh(None)
    assert as_dict(events.histories([user])[0]) == {"7": 10.0}
