"""`interactions`: weights, window and decay against a hand computation."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
from conftest import query

from pipelines.defs.interactions import interactions

EVENTS = {
    "2026-01-01": ["u1,i1,view,2026-01-01 10:00:00", "u1,i1,cart,2026-01-01 11:00:00", "u2,i1,purchase,2026-01-01 12:00:00"],
    "2026-01-02": ["u1,i2,view,2026-01-02 00:00:00", "u1,i1,view,2026-01-02 12:00:00"],
    "2026-01-03": ["u2,i2,view,2026-01-03 06:00:00", "u3,i3,purchase,2026-01-03 23:00:00"],
}


@pytest.fixture
def three_days(settings, ingest_day):
    for day, rows in EVENTS.items():
        (settings.landing_dir / f"events-{day}.csv").write_text("user_id,item_id,event_type,ts\n" + "\n".join(rows) + "\n")
        ingest_day(day)
    return settings


def _build(duckdb_resource, **config):
    result = dg.materialize(
        [interactions],
        resources={"duckdb": duckdb_resource},
        run_config={"ops": {"interactions": {"config": config}}} if config else None,
    )
    return result.asset_materializations_for_node("interactions")[0].metadata


def _table(settings) -> dict:
    rows = query(settings, "SELECT user_id, item_id, weight, n_events FROM interactions")
    return {(u, i): (w, n) for u, i, w, n in rows}


def test_default_weights_over_the_whole_window(three_days, duckdb_resource):
    metadata = _build(duckdb_resource)
    assert _table(three_days) == {
        ("u1", "i1"): (3 + 10 + 3, 3),
        ("u2", "i1"): (40, 1),
        ("u1", "i2"): (3, 1),
        ("u2", "i2"): (3, 1),
        ("u3", "i3"): (40, 1),
    }
    assert (metadata["window_start"].value, metadata["window_end"].value) == ("2025-12-05", "2026-01-03")
    assert metadata["dagster/row_count"].value == 5
    assert metadata["events"].value == 7


def test_window_ends_at_the_configured_day(three_days, duckdb_resource):
    _build(duckdb_resource, window_days=2)  # 01-02 .. 01-03
    assert {k: v[0] for k, v in _table(three_days).items()} == {
        ("u1", "i1"): 3, ("u1", "i2"): 3, ("u2", "i2"): 3, ("u3", "i3"): 40,
    }
    _build(duckdb_resource, window_days=1, end_date="2026-01-02", view_weight=1.0)
    assert {k: v[0] for k, v in _table(three_days).items()} == {("u1", "i1"): 1, ("u1", "i2"): 1}
    assert query(three_days, "SELECT start_day, end_day FROM interactions_window") == [
        (dt.date(2026, 1, 2), dt.date(2026, 1, 2))
    ]


def test_exponential_decay_halves_per_half_life(three_days, duckdb_resource):
    _build(duckdb_resource, half_life_days=1.0, view_weight=1.0, cart_weight=2.0, purchase_weight=5.0)
    end = dt.datetime(2026, 1, 4)  # ages count from the end of the window's last day

    def decayed(weight, ts):
        age_days = (end - dt.datetime.fromisoformat(ts)).total_seconds() / 86400
        return weight * 0.5**age_days

    table = _table(three_days)
    expected_u1_i1 = decayed(1, "2026-01-01 10:00:00") + decayed(2, "2026-01-01 11:00:00") + decayed(1, "2026-01-02 12:00:00")
    assert table[("u1", "i1")][0] == pytest.approx(expected_u1_i1, rel=1e-12)
    assert table[("u3", "i3")][0] == pytest.approx(5 * 0.5 ** (1 / 24), rel=1e-12)
    assert table[("u2", "i1")][0] == pytest.approx(5 * 0.25 * 0.5 ** (12 / 24), rel=1e-12)


def test_empty_warehouse_fails_with_a_clear_message(settings, duckdb_resource):
    with pytest.raises(dg.Failure, match="materialise some `events`"):
        _build(duckdb_resource)


def _column_types(settings) -> list[tuple]:
    return query(settings, "SELECT column_name, data_type FROM information_schema.columns "
                           "WHERE table_name = 'interactions' AND column_name IN ('user_id', 'item_id') ORDER BY 1")


@pytest.mark.parametrize("odd_id,stored_as", [(None, "BIGINT"), ("007", "VARCHAR"), ("+8", "VARCHAR"),
                                              ("9223372036854775808", "VARCHAR")])
def test_ids_are_stored_as_integers_only_when_nothing_is_lost(settings, ingest_day, duckdb_resource, odd_id, stored_as):
    """Integer ids make the table smaller and faster to write; one id, on any day of the window, whose text an
    integer would not print back (leading zero, plus sign, past int64) keeps every id as text, verbatim."""
    days = {"2026-01-01": ["11,-5,view,2026-01-01 10:00:00", "9223372036854775807,12,cart,2026-01-01 11:00:00"],
            "2026-01-02": ["11,12,purchase,2026-01-02 12:00:00"]}
    if odd_id is not None:
        days["2026-01-02"].append(f"{odd_id},12,view,2026-01-02 13:00:00")
    for day, rows in days.items():
        (settings.landing_dir / f"events-{day}.csv").write_text("user_id,item_id,event_type,ts\n" + "\n".join(rows) + "\n")
        ingest_day(day)
    assert query(settings, "SELECT partition_day, integer_ids FROM partition_id_types ORDER BY 1") == [
        (dt.date(2026, 1, 1), True), (dt.date(2026, 1, 2), odd_id is None)]
    metadata = _build(duckdb_resource)
    assert metadata["id_type"].value == stored_as
    assert _column_types(settings) == [("item_id", stored_as), ("user_id", stored_as)]
    table = {(str(u), str(i)): w for u, i, w in query(settings, "SELECT user_id, item_id, weight FROM interactions")}
    expected = {("11", "-5"): 3.0, ("9223372036854775807", "12"): 10.0, ("11", "12"): 40.0}
    if odd_id is not None:
        expected[(odd_id, "12")] = 3.0
    assert table == expected


def test_id_types_follow_a_reingested_day(settings, ingest_day, duckdb_resource):
    path = settings.landing_dir / "events-2026-01-01.csv"
    path.write_text("user_id,item_id,event_type,ts\n1,2,view,2026-01-01 10:00:00\n")
    ingest_day("2026-01-01")
    assert _build(duckdb_resource)["id_type"].value == "BIGINT"
    path.write_text("user_id,item_id,event_type,ts\nu1,2,view,2026-01-01 10:00:00\n")  # the day landed again
    ingest_day("2026-01-01")
    assert query(settings, "SELECT integer_ids FROM partition_id_types") == [(False,)]
    assert _build(duckdb_resource)["id_type"].value == "VARCHAR"
    assert query(settings, "SELECT user_id, item_id FROM interactions") == [("u1", "2")]


def test_a_text_id_written_past_the_ingest_fails_clearly_and_keeps_the_table(settings, ingest_day, duckdb_resource):
    import duckdb

    (settings.landing_dir / "events-2026-01-01.csv").write_text("user_id,item_id,event_type,ts\n1,2,view,2026-01-01 10:00:00\n")
    ingest_day("2026-01-01")
    _build(duckdb_resource)
    with duckdb.connect(str(settings.duckdb_path)) as con:  # someone's own INSERT, not the ingest
        con.execute("INSERT INTO events VALUES ('u9', '2', 'view', TIMESTAMP '2026-01-01 11:00:00', DATE '2026-01-01', 'hand', 1)")
    with pytest.raises(dg.Failure, match="not an integer although `partition_id_types`"):
        _build(duckdb_resource)
    assert query(settings, "SELECT user_id, item_id FROM interactions") == [(1, 2)]  # the previous build stays
    with duckdb.connect(str(settings.duckdb_path)) as con:  # the way out the message names
        con.execute("DELETE FROM partition_id_types WHERE partition_day = DATE '2026-01-01'")
    assert _build(duckdb_resource)["id_type"].value == "VARCHAR"


def test_the_weighting_is_recorded_with_the_table_and_carried_by_the_training_snapshot(three_days, resources):
    """`interactions` records its weighting next to the pairs (`interactions_window`, same transaction);
    `training_data` reads it with the pairs and writes it into the snapshot, whence the challenger's bundle."""
    from als_core.weighting import EventWeighting
    from pipelines.defs.training_data_asset import training_data
    from pipelines.training_data import TrainingData, latest_dir

    weights = {"view_weight": 1.5, "cart_weight": 0.0, "purchase_weight": 7.0, "half_life_days": 2.5}
    result = dg.materialize([interactions, training_data], resources=resources,
                            run_config={"ops": {"interactions": {"config": weights}}})
    assert query(three_days, "SELECT view_weight, cart_weight, purchase_weight, half_life_days "
                             "FROM interactions_window") == [(1.5, 0.0, 7.0, 2.5)]
    snapshot = TrainingData.load(latest_dir(three_days))
    assert snapshot.weighting == EventWeighting(**weights)
    for asset in ("interactions", "training_data"):
        assert result.asset_materializations_for_node(asset)[0].metadata["weighting"].value == weights
    dg.materialize([interactions], resources=resources)  # no config: the defaults, recorded as such
    assert query(three_days, "SELECT view_weight, cart_weight, purchase_weight, half_life_days "
                             "FROM interactions_window") == [(3.0, 10.0, 40.0, 0.0)]
