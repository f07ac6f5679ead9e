"""TrainingData: storage round trip, fingerprint, the temporal-holdout rule, random split, publishing, the asset."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from als_core.synthetic import generate_events
from conftest import query
from pipelines.defs.interactions import interactions
from pipelines.defs.training_data_asset import training_data
from pipelines.landing import write_day_files
from pipelines.training_data import (
    TrainingData, latest_dir, publish, random_split, temporal_split, type_id_axis, type_ids,
)

D1, D2, D3 = dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)


def _data(user_ids=("a", "b"), item_ids=("x", "y", "z"), holdout=(("a", "z"), ("c", "x"))) -> TrainingData:
    train = sp.csr_matrix(np.array([[1.0, 0, 2.5], [0, 4.0, 0]], dtype=np.float32))
    return TrainingData(
        user_ids=np.asarray(user_ids), item_ids=np.asarray(item_ids), train=train,
        holdout_user_ids=np.asarray([u for u, _ in holdout]), holdout_item_ids=np.asarray([i for _, i in holdout]),
        window_start="2026-01-01", window_end="2026-01-30", split="temporal",
    )


@pytest.mark.parametrize("ids", [("a", "b"), (7, 123456789012)])
def test_round_trip_keeps_arrays_types_and_fingerprint(tmp_path, ids):
    data = _data(user_ids=ids, holdout=((ids[0], "z"), (ids[1], "x")))
    data.save(tmp_path / "td")
    back = TrainingData.load(tmp_path / "td")
    for name in ("user_ids", "item_ids", "holdout_user_ids", "holdout_item_ids"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name))
        assert getattr(back, name).dtype == getattr(data, name).dtype
        assert getattr(back, name).dtype.kind in "iU"
    assert (back.train != data.train).nnz == 0 and back.train.dtype == np.float32
    assert (back.window_start, back.window_end, back.split) == (data.window_start, data.window_end, data.split)
    assert back.holdout_fingerprint == data.holdout_fingerprint
    with np.load(tmp_path / "td" / "arrays.npz", allow_pickle=False) as arrays:  # no object arrays inside
        assert all(arrays[key].dtype != object for key in arrays.files)
    meta = json.loads((tmp_path / "td" / "meta.json").read_text())
    assert meta["holdout_fingerprint"] == data.holdout_fingerprint and meta["nnz"] == 3


def test_save_replaces_an_existing_directory_and_load_detects_damage(tmp_path):
    _data().save(tmp_path / "td")
    _data(holdout=(("a", "x"),)).save(tmp_path / "td")
    assert TrainingData.load(tmp_path / "td").holdout_pairs == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    meta = json.loads((tmp_path / "td" / "meta.json").read_text())
    meta["holdout_fingerprint"] = "0" * 64
    (tmp_path / "td" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="fingerprint"):
        TrainingData.load(tmp_path / "td")


def test_fingerprint_depends_on_the_pairs_only():
    base = _data(holdout=(("a", "z"), ("c", "x")))
    assert _data(holdout=(("c", "x"), ("a", "z"))).holdout_fingerprint == base.holdout_fingerprint
    assert _data(holdout=(("a", "z"), ("c", "y"))).holdout_fingerprint != base.holdout_fingerprint
    numeric = _data(user_ids=(1, 2), holdout=((1, "z"),))
    textual = _data(user_ids=("1", "2"), holdout=(("1", "z"),))
    assert numeric.holdout_fingerprint == textual.holdout_fingerprint


def test_ids_become_int64_only_when_nothing_is_lost():
    assert type_ids(["3", "10", "-2", "0"]).dtype == np.int64
    for mixed in (["3", "007"], ["3", "x"], ["3", "1.5"], ["99999999999999999999"], ["+3"]):
        converted = type_ids(mixed)
        assert converted.dtype.kind == "U"
        assert converted.tolist() == mixed


def test_temporal_split_holds_out_pairs_first_seen_on_the_last_day():
    rows = [  # user, item, day, weight
        ("u1", "i1", D1, 3.0),
        ("u1", "i1", D3, 10.0),  # seen before the last day: train only, and this event is dropped
        ("u1", "i2", D3, 3.0),  # new on the last day: holdout
        ("u2", "i3", D3, 40.0),  # a user seen only on the last day: holdout, not a train row
        ("u3", "i1", D2, 3.0),
        ("u3", "i4", D1, 3.0),
        ("u3", "i4", D2, 10.0),
    ]
    users, items, days, weights = (np.asarray(col) for col in zip(*rows))
    data = temporal_split(users, items, np.asarray(days, dtype="datetime64[D]"), weights, D1, D3)
    assert data.user_ids.tolist() == ["u1", "u3"]
    assert data.item_ids.tolist() == ["i1", "i4"]
    assert data.train.toarray().tolist() == [[3.0, 0.0], [3.0, 13.0]]
    assert sorted(zip(data.holdout_user_ids.tolist(), data.holdout_item_ids.tolist())) == [("u1", "i2"), ("u2", "i3")]
    assert (data.window_start, data.window_end, data.split) == ("2026-01-01", "2026-01-03", "temporal")


def test_random_split_is_reproducible_and_partitions_the_pairs():
    rng = np.random.default_rng(5)
    pairs = {(int(u), int(i)) for u, i in rng.integers(0, 40, size=(600, 2))}
    users, items = (np.asarray(col) for col in zip(*sorted(pairs)))
    weights = rng.integers(1, 50, size=len(users)).astype(float)
    first = random_split(users.astype(str), items.astype(str), weights, D1, D3, fraction=0.25, seed=3)
    again = random_split(users.astype(str), items.astype(str), weights, D1, D3, fraction=0.25, seed=3)
    other = random_split(users.astype(str), items.astype(str), weights, D1, D3, fraction=0.25, seed=4)
    assert first.holdout_fingerprint == again.holdout_fingerprint != other.holdout_fingerprint
    assert first.user_ids.dtype == np.int64  # numeric ids stay numbers
    coo = first.train.tocoo()
    train_pairs = {(int(first.user_ids[r]), int(first.item_ids[c])) for r, c in zip(coo.row, coo.col)}
    held = set(zip(first.holdout_user_ids.tolist(), first.holdout_item_ids.tolist()))
    assert not train_pairs & held and train_pairs | held == pairs
    assert 0.15 < len(held) / len(pairs) < 0.35
    assert first.split == "random(fraction=0.25, seed=3)"


def test_publish_swaps_latest_atomically_and_keeps_a_few_snapshots(settings):
    published = [publish(_data(holdout=((f"u{n}", "x"),)), settings, keep=2) for n in range(4)]
    latest = latest_dir(settings)
    assert latest.is_symlink() and latest.resolve() == published[-1].resolve()
    assert TrainingData.load(latest).holdout_user_ids.tolist() == ["u3"]
    remaining = sorted(p.name for p in (settings.training_dir / "snapshots").iterdir())
    assert remaining == sorted(p.name for p in published[-2:])


def test_asset_builds_the_temporal_split_of_the_warehouse(settings, ingest_day, resources):
    events = generate_events(n_users=400, n_items=150, n_events=8_000, n_days=4, seed=3, start="2026-01-01")
    write_day_files(events, settings.landing_dir, "parquet")
    for day in ("2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"):
        ingest_day(day)
    result = dg.materialize([interactions, training_data], resources=resources)
    metadata = result.asset_materializations_for_node("training_data")[0].metadata
    data = TrainingData.load(latest_dir(settings))

    # the rule, computed independently with pandas
    weight = events["event_type"].map({"view": 3.0, "cart": 10.0, "purchase": 40.0})
    frame = events.assign(weight=weight, last_day=events["ts"].dt.date == dt.date(2026, 1, 4))
    before = frame[~frame["last_day"]].groupby(["user_id", "item_id"])["weight"].sum()
    on_last = set(map(tuple, frame[frame["last_day"]][["user_id", "item_id"]].drop_duplicates().values.tolist()))
    expected_holdout = on_last - set(before.index)
    assert set(zip(data.holdout_user_ids.tolist(), data.holdout_item_ids.tolist())) == expected_holdout
    coo = data.train.tocoo()
    got = {(int(data.user_ids[r]), int(data.item_ids[c])): float(v) for r, c, v in zip(coo.row, coo.col, coo.data)}
    assert got == pytest.approx({k: float(v) for k, v in before.items()})
    assert metadata["holdout_pairs"].value == len(expected_holdout)
    assert metadata["holdout_fingerprint"].value == data.holdout_fingerprint
    assert metadata["nnz"].value == len(before)
    assert (data.window_start, data.window_end) == ("2025-12-06", "2026-01-04")


def test_one_ingested_day_fails_the_temporal_split_saying_what_is_missing(settings, ingest_day, resources):
    events = generate_events(n_users=50, n_items=20, n_events=500, n_days=1, seed=5, start="2026-01-05")
    write_day_files(events, settings.landing_dir, "csv")
    ingest_day("2026-01-05")
    result = dg.materialize([interactions, training_data], resources=resources,
                            raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "no events were ingested before it" in message and "Ingest at least one earlier day" in message


def test_asset_random_split_by_config(settings, ingest_day, resources):
    events = generate_events(n_users=200, n_items=80, n_events=3_000, n_days=2, seed=4, start="2026-01-01")
    write_day_files(events, settings.landing_dir, "csv")
    for day in ("2026-01-01", "2026-01-02"):
        ingest_day(day)
    config = {"ops": {"training_data": {"config": {"split": "random", "holdout_fraction": 0.3, "seed": 9}}}}
    dg.materialize([interactions, training_data], resources=resources, run_config=config)
    data = TrainingData.load(latest_dir(settings))
    pairs = events.groupby(["user_id", "item_id"]).size()
    assert data.train.nnz + data.holdout_pairs == len(pairs)
    assert data.split == "random(fraction=0.3, seed=9)"
    assert isinstance(pd.Timestamp(data.window_end), pd.Timestamp)


def _assert_same_training_data(got: TrainingData, expected: TrainingData) -> None:
    for name in ("user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
        assert getattr(got, name).dtype == getattr(expected, name).dtype
    assert got.train.shape == expected.train.shape
    assert abs(got.train - expected.train).max() < 1e-4
    assert got.train.nnz == expected.train.nnz
    assert got.holdout_fingerprint == expected.holdout_fingerprint
    assert got.holdout_user_ids.dtype == expected.holdout_user_ids.dtype


@pytest.mark.parametrize("user_ids", ["text", "integer"])
@pytest.mark.parametrize("split", ["temporal", "random"])
def test_asset_split_in_duckdb_equals_the_python_reference(settings, ingest_day, resources, split, user_ids):
    """The asset codes ids and splits in DuckDB; the in-memory temporal_split / random_split define the result.
    Text user ids (not canonical integers) and a zero view weight exercise the typing and the > 0 rules; integer
    user and item ids make `interactions` store them as BIGINT, which must not change the rows, the columns or
    the split (the reference codes them from their text)."""
    events = generate_events(n_users=300, n_items=120, n_events=6_000, n_days=3, seed=11, start="2026-01-01")
    if user_ids == "text":
        events["user_id"] = "u" + events["user_id"].astype(str).str.zfill(4)
    write_day_files(events, settings.landing_dir, "csv")
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        ingest_day(day)
    weights = {"view": 0.0, "cart": 10.0, "purchase": 40.0}
    run_config = {"ops": {"interactions": {"config": {"view_weight": 0.0}},
                          "training_data": {"config": {"split": split, "holdout_fraction": 0.3, "seed": 2}}}}
    dg.materialize([interactions, training_data], resources=resources, run_config=run_config)
    got = TrainingData.load(latest_dir(settings))

    assert query(settings, "SELECT data_type FROM information_schema.columns WHERE table_name = 'interactions' "
                           "AND column_name IN ('user_id', 'item_id')") == [("VARCHAR" if user_ids == "text" else "BIGINT",)] * 2
    frame = events.assign(weight=events["event_type"].map(weights), day=events["ts"].dt.date,
                          user_id=events["user_id"].astype(str))
    item_text = frame["item_id"].astype(str)
    start, end = dt.date(2025, 12, 5), dt.date(2026, 1, 3)  # the default 30-day window ending on the last day
    if split == "temporal":
        daily = frame.assign(item_id=item_text).groupby(["user_id", "item_id", "day"])["weight"].sum().reset_index()
        daily = daily[daily["weight"] > 0]
        expected = temporal_split(daily["user_id"].to_numpy(), daily["item_id"].to_numpy(),
                                  np.asarray(daily["day"], dtype="datetime64[D]"), daily["weight"].to_numpy(), start, end)
    else:
        pairs = frame.assign(item_id=item_text).groupby(["user_id", "item_id"])["weight"].sum().reset_index()
        pairs = pairs[pairs["weight"] > 0]
        expected = random_split(pairs["user_id"].to_numpy(), pairs["item_id"].to_numpy(), pairs["weight"].to_numpy(),
                                start, end, fraction=0.3, seed=2)
    assert got.user_ids.dtype.kind == ("U" if user_ids == "text" else "i") and got.item_ids.dtype == np.int64
    assert got.holdout_pairs > 0
    _assert_same_training_data(got, expected)


# --------------------------------------------------------------------------- vectorised = the plain versions


def _reference_fingerprint(users: np.ndarray, items: np.ndarray) -> str:
    """The fingerprint as first written (sorted Python tuples, one update per line): the definition."""
    pairs = sorted(zip(map(str, users.tolist()), map(str, items.tolist())))
    digest = hashlib.sha256()
    for user, item in pairs:
        digest.update(f"{user}\t{item}\n".encode())
    return digest.hexdigest()


_REFERENCE_CANONICAL_INT = re.compile(r"^(0|-?[1-9][0-9]{0,18})$")


def _reference_type_id_axis(*id_arrays) -> list[np.ndarray]:
    """type_id_axis as first written (a regex per distinct id), but matching whole ids: the definition."""
    texts = [np.asarray(ids).astype(str) for ids in id_arrays]
    distinct = np.unique(np.concatenate(texts)) if texts else np.empty(0, dtype=str)
    if len(distinct) and all(_REFERENCE_CANONICAL_INT.fullmatch(s) for s in distinct.tolist()):
        try:
            return [text.astype(np.int64) for text in texts]
        except OverflowError:
            pass
    return texts


def _holdout_only(users, items) -> TrainingData:
    empty = np.empty(0, dtype=np.int64)
    return TrainingData(empty, empty, sp.csr_matrix((0, 0)), np.asarray(users), np.asarray(items),
                        "2026-01-01", "2026-01-30", "temporal")


_RNG = np.random.default_rng(5)
_INT64 = np.iinfo(np.int64)
_ODD_TEXT = ["10", "9", "", "a", "a!", "a\t", "a\x01", "a\x00b", "Z", "z", "é", "ä", "ß", "日本", "😀", "\ud7ff", "\ue000",
             " 7", "7"]


@pytest.mark.parametrize("users, items", [
    (_RNG.integers(-50, 50, 500), _RNG.integers(0, 30, 500)),  # duplicates, '-1' / '-10' / '0' orders
    (_RNG.integers(_INT64.min, _INT64.max, 300, endpoint=True), _RNG.integers(0, 10**12, 300)),
    ([_INT64.min, _INT64.max, 0, -1], [1, 2, 3, 4]),
    (["10", "9", "100", "10"], ["9", "10", "1", "10"]),  # string order is not numeric order; a duplicate
    ([10, 9, 100, 10], ["9", "10", "1", "10"]),  # int users, text items: the same text, the same fingerprint
    (_RNG.choice(_ODD_TEXT, 400), _RNG.choice(_ODD_TEXT, 400)),  # non-ASCII, astral, prefixes, control chars
    (["a", "a"], ["b", "a"]),
    (["1", "1", "2", "2"], ["a", "b", "a", "a"]),  # already in order (as the temporal split's holdout comes)
    ([1, 1, 2, 10], ["a", "b", "a", "a"]),  # in numeric order, not in text order ('10' < '2')
    (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)),
    (np.empty(0, dtype=str), np.empty(0, dtype=str)),
])
def test_fingerprint_equals_the_sorted_tuples_reference(users, items):
    data = _holdout_only(users, items)
    assert data.holdout_fingerprint == _reference_fingerprint(data.holdout_user_ids, data.holdout_item_ids)
    assert data.holdout_fingerprint is data.holdout_fingerprint  # computed once per object
    assert "holdout_fingerprint" not in {f.name for f in dataclasses.fields(data)}


def test_numpy_orders_unicode_as_python_orders_str():
    texts = _RNG.choice(_ODD_TEXT, 2_000).tolist() + ["".join(_RNG.choice(_ODD_TEXT, 3)) for _ in range(500)]
    assert np.sort(np.asarray(texts)).tolist() == sorted(texts)


_DIGITS = _RNG.integers(_INT64.min, _INT64.max, 1_000, endpoint=True)


@pytest.mark.parametrize("arrays", [
    (_DIGITS,), (_DIGITS, _DIGITS[:10]), (_DIGITS.astype(str),), (_DIGITS.astype(np.int32),), ([3, 10, -2, 0],),
    (["3", "10", "-2", "0"], ["10"]), ([_INT64.min, _INT64.max],),
    (["-9223372036854775808", "9223372036854775807"],), (["9223372036854775808"],), (["-9223372036854775809"],),
    (["9999999999999999999"],), (["99999999999999999999"],), (["1000000000000000000"],),
    (["007", "7"],), (["00"],), (["+7"],), ([" 7"],), (["7 "],), (["-0"],), (["-"],), ([""],), (["1e3"],), (["7.0"],),
    (["1_000"],), (["٧"],), (["0x7"],), (["7\n"],), (["7\n", "8"],), (["7\n\n"],), (["\n7"],), (["-7\n"],),
    (["3", "x"],), (["é", "3"],), ([1, 2], ["3", "x"]), ([1, 2], ["3"]), (np.asarray([1, 2]), np.asarray(["007"])),
    (np.asarray([2**63], dtype=np.uint64),), (np.asarray([5], dtype=np.uint64),), ([1.0, 2.0],), ([True],),
    (np.asarray([1, "a"], dtype=object),), (np.asarray([1, 2], dtype=object),),
    (), ([],), (np.empty(0, dtype=np.int64),), (np.empty(0, dtype=np.int64), np.empty(0, dtype=str)),
    (np.empty(0, dtype=np.int64), ["5"]), (np.empty(0, dtype=np.int64), [5]), (np.int64(5),),
])
def test_type_id_axis_equals_the_regex_reference(arrays):
    def outcome(fn):
        try:
            return [(a.dtype, a.shape, a.tolist()) for a in fn(*arrays)]
        except Exception as error:  # noqa: BLE001 - the reference's failures must be the same failures
            return type(error)

    assert outcome(type_id_axis) == outcome(_reference_type_id_axis)
