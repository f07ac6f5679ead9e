"""serving.fold_in against a real DuckDB warehouse file: which events are read, how they are weighted (exactly
as training weighs them, with the served model's own weighting), what happens when the file is missing, empty
or locked by the pipeline's writer, and that the API imports nothing of the Dagster code location."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import time

import duckdb
import numpy as np
import pytest

from als_store import sql_files
from als_core.weighting import EventWeighting
from serving.fold_in import EventReading, WarehouseEvents

DEFAULT = EventReading()  # the last few days with events, the default weighting


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
    reading = EventReading(since_day=dt.date(2026, 1, 10))
    snapshot = events.refresh(reading)
    assert snapshot is not None and len(snapshot) == 2
    new, other, missing = events.histories(["new", "other", "nobody"], reading)
    assert as_dict(new) == {"10": 13.0, "11": 40.0}
    assert as_dict(other) == {"10": 3.0}
    assert missing is None
    assert events.status()["users"] == 2 and events.status()["last_error"] is None


def test_without_a_window_the_last_days_are_read_and_the_newest_events_win(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    write_events(path, [("u", str(item), "view", f"2026-01-{day:02d} 12:00:00")
                        for day, item in [(1, 1), (5, 2), (6, 3), (6, 4), (7, 5)]])
    events = WarehouseEvents(path, max_age_s=60, lookback_days=2)
    events.refresh(DEFAULT)
    assert set(as_dict(events.histories(["u"], DEFAULT)[0])) == {"3", "4", "5"}  # days 6 and 7
    capped = WarehouseEvents(path, max_age_s=60, lookback_days=30, max_events=2)
    capped.refresh(DEFAULT)
    newest = set(as_dict(capped.histories(["u"], DEFAULT)[0]))
    assert len(newest) == 2 and "5" in newest and newest <= {"3", "4", "5"}  # day 7, and one of day 6's two


def test_missing_warehouse_or_table_means_no_fold_in(tmp_path):
    events = WarehouseEvents(tmp_path / "absent.duckdb", max_age_s=60)
    assert events.refresh(DEFAULT) is None
    assert events.histories(["u"], DEFAULT) == [None]
    assert "does not exist" in events.status()["last_error"]
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    events = WarehouseEvents(empty, max_age_s=60)
    assert events.refresh(DEFAULT) is None
    assert "events" in events.status()["last_error"]


def test_a_locked_warehouse_keeps_the_last_snapshot_until_it_is_too_old(tmp_path, caplog):
    path = tmp_path / "warehouse.duckdb"
    write_events(path, [("u", "1", "purchase", "2026-01-05 12:00:00")])
    events = WarehouseEvents(path, max_age_s=1.0)
    assert events.refresh(DEFAULT) is not None
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(path)!r})  # the pipeline's writer: an exclusive lock on the file
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        assert events.refresh(DEFAULT) is None
        assert time.monotonic() - started < 5, "a locked warehouse must not stall the refresher"
        assert "lock" in events.status()["last_error"].lower()
        assert any("fold-in" in record.message for record in caplog.records)
        assert as_dict(events.histories(["u"], DEFAULT)[0]) == {"1": 40.0}  # the previous snapshot still serves
        time.sleep(1.1)
        assert events.histories(["u"], DEFAULT) == [None] and not events.status()["fresh"]
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert events.refresh(DEFAULT) is not None  # lock released: back in business
    assert np.isclose(as_dict(events.histories(["u"], DEFAULT)[0])["1"], 40.0)


@pytest.mark.parametrize("user", ["x' OR '1'='1", "🙂", "a" * 128])
def test_unusual_ids_round_trip(tmp_path, user):
    path = tmp_path / "warehouse.duckdb"
    write_events(path, [(user, "7", "cart", "2026-01-05 12:00:00"), ("someone", "8", "view", "2026-01-05 12:00:00")])
    events = WarehouseEvents(path, max_age_s=60)
    events.refresh(DEFAULT)
    assert as_dict(events.histories([user], DEFAULT)[0]) == {"7": 10.0}


def age_files(path, seconds: float = 60) -> None:
    """Back-date the warehouse files, as a file last written a minute ago looks."""
    for file in (path, path.with_name(path.name + ".wal")):
        if file.exists():
            stamp = file.stat().st_mtime - seconds
            os.utime(file, (stamp, stamp))


def test_unchanged_files_republish_the_snapshot_and_a_write_is_read(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    write_events(path, [("a", "1", "view", "2026-01-05 12:00:00")])
    age_files(path)
    events = WarehouseEvents(path, max_age_s=60)
    first = events.refresh(DEFAULT)
    second = events.refresh(DEFAULT)
    assert second.read_at > first.read_at, "a republished snapshot counts as read now (its age starts again)"
    assert second.item_ids is first.item_ids, "unchanged files: nothing re-read"
    other = EventReading(weighting=EventWeighting(view_weight=2.0))
    assert as_dict(events.refresh(other).histories(["a"])[0]) == {"1": 2.0}, "another reading is read anew"
    write_events(path, [("b", "2", "cart", "2026-01-05 13:00:00")])
    after_write = events.refresh(other)
    assert as_dict(after_write.histories(["b"])[0]) == {"2": 10.0}, "a write is read"
    # files written within the last seconds may change again within the same timestamp: they are read again
    assert events.refresh(other).item_ids is not after_write.item_ids


# ------------------------------------------------------------------------- the model's own weighting

NEWBIE_EVENTS = [  # a user the model does not know, on the days since its training window ended (01-10)
    ("newbie", "10", "view", "2026-01-10 08:00:00"),
    ("newbie", "10", "cart", "2026-01-11 09:30:00"),
    ("newbie", "11", "purchase", "2026-01-12 18:00:00"),
    ("newbie", "11", "view", "2026-01-12 17:00:00"),
    ("newbie", "12", "view", "2026-01-10 23:59:59"),
    ("other", "12", "cart", "2026-01-12 00:00:00"),
    ("old", "10", "purchase", "2026-01-09 12:00:00"),  # before the window: read by neither
]
TRAINED_WITH = EventWeighting(view_weight=1.5, cart_weight=4.0, purchase_weight=25.0, half_life_days=2.0)


def training_weights(resources, weighting: EventWeighting, start: str, end: str) -> dict:
    """{(user, item): weight} that training gives the window start..end: the `interactions` asset itself."""
    import dagster as dg

    from pipelines.defs.interactions import interactions

    days = (dt.date.fromisoformat(end) - dt.date.fromisoformat(start)).days + 1
    config = {"window_days": days, "end_date": end, **weighting.as_dict()}
    dg.materialize([interactions], resources=resources, run_config={"ops": {"interactions": {"config": config}}})
    with duckdb.connect(resources["duckdb"].database, read_only=True) as con:
        return {(u, i): w for u, i, w in con.execute("SELECT user_id, item_id, weight FROM interactions").fetchall()}


def snapshot_weights(events: WarehouseEvents, reading: EventReading, users) -> dict:
    return {(user, item): weight for user, history in zip(users, events.histories(users, reading))
            if history is not None for item, weight in as_dict(history).items()}


def test_a_new_user_is_folded_in_with_the_weights_training_would_have_given(settings, resources):
    """The acceptance test of the weighting's one definition: with non-default weights and a half-life, the
    fold-in snapshot's weights of a new user equal the `interactions` weights of the same events over the
    same window (the days since the model's window end; ages from the end of the last day read)."""
    write_events(settings.duckdb_path, NEWBIE_EVENTS)
    events = WarehouseEvents(settings.duckdb_path, max_age_s=60)
    reading = EventReading(since_day=dt.date(2026, 1, 10), weighting=TRAINED_WITH)
    assert events.refresh(reading) is not None
    folded = snapshot_weights(events, reading, ["newbie", "other", "old"])
    trained = training_weights(resources, TRAINED_WITH, "2026-01-10", "2026-01-12")
    assert folded.keys() == trained.keys() == {("newbie", "10"), ("newbie", "11"), ("newbie", "12"), ("other", "12")}
    for pair, weight in trained.items():
        assert folded[pair] == pytest.approx(weight, rel=1e-6), pair
    end = dt.datetime(2026, 1, 13)  # the hand computation of one pair: view + purchase of item 11 on 01-12

    def decayed(weight, ts):
        return weight * 0.5 ** ((end - dt.datetime.fromisoformat(ts)).total_seconds() / 86400 / 2.0)

    assert folded[("newbie", "11")] == pytest.approx(
        decayed(1.5, "2026-01-12 17:00:00") + decayed(25.0, "2026-01-12 18:00:00"), rel=1e-6)
    assert events.status()["weighting"] == TRAINED_WITH.as_dict()

    # a model with the default weighting reads its own snapshot; the other one's is never used for it
    default = EventReading(since_day=dt.date(2026, 1, 10))
    assert events.histories(["newbie"], default) == [None]
    assert events.due(default, every_s=3600) and not events.due(reading, every_s=3600)
    events.refresh(default)
    assert snapshot_weights(events, default, ["newbie"]) == {
        ("newbie", "10"): 3.0 + 10.0, ("newbie", "11"): 40.0 + 3.0, ("newbie", "12"): 3.0}
    assert events.histories(["newbie"], reading) == [None]


def test_a_zero_weight_pair_is_left_out_as_training_leaves_it_out(settings, resources):
    write_events(settings.duckdb_path, NEWBIE_EVENTS)
    views_count_nothing = EventWeighting(view_weight=0.0)
    reading = EventReading(since_day=dt.date(2026, 1, 10), weighting=views_count_nothing)
    events = WarehouseEvents(settings.duckdb_path, max_age_s=60)
    events.refresh(reading)
    folded = snapshot_weights(events, reading, ["newbie", "other"])
    trained = training_weights(resources, views_count_nothing, "2026-01-10", "2026-01-12")
    assert folded == trained == {("newbie", "10"): 10.0, ("newbie", "11"): 40.0, ("other", "12"): 10.0}


def test_the_api_imports_neither_dagster_nor_the_code_location():
    """serving/ reads the warehouse and the registry through als_store: importing the app in a fresh
    interpreter loads no module of `dagster` (or its integrations) and none of `pipelines`."""
    probe = textwrap.dedent("""
        import sys
        import serving.app
        print("\\n".join(sorted(name for name in sys.modules
                                 if name.split(".")[0].startswith("dagster") or name.split(".")[0] == "pipelines")))
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []


@pytest.mark.slow
def test_the_champion_trained_with_its_weighting_folds_a_new_user_in_under_uvicorn(settings, ingest_day, resources):
    """End to end: `interactions` with non-default weights and a half-life -> training_data -> challenger ->
    champion; the bundle carries the weighting, and the API under uvicorn folds a user who appeared after the
    training window in with exactly the weights training gives those events (same scores as the bundle's own
    fold-in with them)."""
    import pandas as pd
    from model_half import GATE_ASSETS, GOOD, materialize, mlflow_resource
    from test_serving_api import items_of, serving, wait_for

    from als_core.synthetic import generate_events
    from als_store import model_registry
    from pipelines.defs.interactions import interactions
    from pipelines.defs.training_data_asset import training_data
    from pipelines.landing import write_day_files
    from serving.config import ServingConfig

    log = generate_events(n_users=300, n_items=100, n_events=9_000, n_days=3, seed=4, start="2026-01-01")
    items = log["item_id"].drop_duplicates().to_numpy()[:3]
    newbie = 999_999
    late = pd.DataFrame({"user_id": newbie, "item_id": items[[0, 0, 1, 2, 1]],
                         "event_type": ["view", "cart", "purchase", "view", "view"],
                         "ts": pd.to_datetime(["2026-01-04 01:00", "2026-01-04 02:00", "2026-01-04 12:30",
                                               "2026-01-04 20:00", "2026-01-04 23:00"])})
    write_day_files(pd.concat([log, late], ignore_index=True), settings.landing_dir, "csv")
    for day in ("2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"):
        ingest_day(day)
    materialize([interactions, training_data, *GATE_ASSETS], mlflow_resource(settings), settings,
                interactions={"end_date": "2026-01-03", **TRAINED_WITH.as_dict()}, challenger=GOOD,
                champion={"popularity": False})
    _, bundle = model_registry.load_champion_bundle(settings.mlflow_tracking_uri, settings.model_name)
    assert bundle.weighting == TRAINED_WITH and bundle.users.lookup([newbie])[0] < 0
    trained = training_weights(resources, TRAINED_WITH, "2026-01-03", "2026-01-04")
    weights = {item: weight for (user, item), weight in trained.items() if str(user) == str(newbie)}
    assert len(weights) == 3
    ref_ids, ref_scores, source = bundle.fold_in(list(weights), list(weights.values()), n=10)
    assert source == "fold_in"

    config = ServingConfig(model_name=settings.model_name, tracking_uri=settings.mlflow_tracking_uri,
                           duckdb_path=settings.duckdb_path, poll_seconds=0.2, fold_in_refresh_seconds=0.2)
    with serving(config) as api:
        wait_for(lambda: api.get(f"/recommendations/{newbie}").json().get("source") == "fold_in", 30,
                 "the new user to be folded in")
        body = api.get(f"/recommendations/{newbie}", params={"n": 10}).json()
        assert items_of(body) == ref_ids.tolist()
        np.testing.assert_allclose([entry["score"] for entry in body["recommendations"]], ref_scores, rtol=1e-5)
        fold_in = api.get("/ready").json()["fold_in"]
        assert fold_in["weighting"] == TRAINED_WITH.as_dict() and fold_in["since_day"] == "2026-01-03"
