"""Train/holdout splits: invariants, per-user counts, reproducibility and the temporal rules."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from als_core.splits import leave_last_k, random_holdout, temporal_holdout

ML100K = Path("/work/shared/data/ml-100k/u.data.gz")


def _pattern(m: sp.csr_matrix) -> set[tuple[int, int]]:
    coo = m.tocoo()
    return set(zip(coo.row.tolist(), coo.col.tolist()))


def _assert_split_invariants(train: sp.csr_matrix, test: sp.csr_matrix, shape) -> None:
    for m in (train, test):
        assert isinstance(m, sp.csr_matrix) and m.shape == tuple(shape) and m.dtype == np.float32
        assert m.has_canonical_format and (m.data != 0).all()
    assert not _pattern(train) & _pattern(test)


def _random_matrix(seed: int = 0, shape=(200, 80), density=0.1) -> sp.csr_matrix:
    m = sp.random(*shape, density=density, format="csr", random_state=seed, dtype=np.float32)
    m.data = np.ceil(m.data * 5)
    return m


# --------------------------------------------------------------------------- random holdout


def test_random_holdout_partitions_the_input():
    m = _random_matrix()
    train, test = random_holdout(m, fraction=0.25, seed=3)
    _assert_split_invariants(train, test, m.shape)
    assert (train + test != m).nnz == 0
    assert test.nnz > 0.15 * m.nnz


def test_random_holdout_fraction_per_user():
    m = _random_matrix(density=0.2).tolil()
    m[0] = 0  # an empty user
    m[1] = 0
    m[1, 5] = 2.0  # a single-item user keeps it in train
    m = m.tocsr()
    train, test = random_holdout(m, fraction=0.3, seed=1)
    n = np.diff(m.indptr)
    want = np.minimum(np.floor(0.3 * n + 0.5), np.maximum(n - 1, 0))
    np.testing.assert_array_equal(np.diff(test.indptr), want)
    assert test[1].nnz == 0 and train[1, 5] == 2.0
    assert (np.diff(train.indptr)[n > 0] >= 1).all()  # nobody loses all training items


def test_random_holdout_extremes():
    m = _random_matrix()
    train, test = random_holdout(m, fraction=0.0)
    assert test.nnz == 0 and (train != m).nnz == 0
    train, test = random_holdout(m, fraction=1.0)
    np.testing.assert_array_equal(np.diff(train.indptr), np.minimum(np.diff(m.indptr), 1))


def test_random_holdout_reproducible_by_seed():
    m = _random_matrix()
    a, b, c = (random_holdout(m, 0.2, seed=s)[1] for s in (5, 5, 6))
    assert (a != b).nnz == 0
    assert (a != c).nnz > 0


def test_random_holdout_sums_duplicates_and_accepts_coo():
    coo = sp.coo_matrix(([1.0, 2.0, 3.0, 1.0], ([0, 0, 0, 1], [1, 1, 2, 0])), shape=(2, 3))
    train, test = random_holdout(coo, fraction=0.5, seed=0)
    assert (train + test).toarray().tolist() == [[0.0, 3.0, 3.0], [1.0, 0.0, 0.0]]


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_random_holdout_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        random_holdout(_random_matrix(), fraction=fraction)


def test_random_holdout_rejects_dense():
    with pytest.raises(ValueError, match="sparse"):
        random_holdout(np.ones((2, 2)))


# --------------------------------------------------------------------------- temporal holdout

# user 0: item 0 before and after the cutoff (train only), item 1 after only (test, summed);
# user 1: item 2 twice before (train, summed); item 0 exactly at the cutoff (test).
USERS = np.array([0, 0, 0, 0, 1, 1, 1])
ITEMS = np.array([0, 0, 1, 1, 2, 2, 0])
VALUES = np.array([1.0, 5.0, 2.0, 3.0, 1.0, 1.0, 4.0])
SECONDS = np.array([10, 30, 25, 40, 5, 6, 20])


def test_temporal_rule_on_hand_example():
    train, test = temporal_holdout(USERS, ITEMS, VALUES, SECONDS, cutoff=20, shape=(2, 3))
    _assert_split_invariants(train, test, (2, 3))
    assert train.toarray().tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]
    assert test.toarray().tolist() == [[0.0, 5.0, 0.0], [4.0, 0.0, 0.0]]


def test_temporal_accepts_datetime64_and_date_cutoffs():
    dates = np.datetime64("2026-01-01T00:00:00", "s") + SECONDS.astype("timedelta64[s]")
    want = temporal_holdout(USERS, ITEMS, VALUES, SECONDS, cutoff=20, shape=(2, 3))
    unix = SECONDS + int(np.datetime64("2026-01-01T00:00:00", "s").astype(np.int64))
    for ts, cutoff in [
        (dates, "2026-01-01T00:00:20"),
        (dates.astype("datetime64[ns]"), np.datetime64("2026-01-01T00:00:20")),
        (unix, "2026-01-01T00:00:20"),  # date cutoff against unix seconds
    ]:
        got = temporal_holdout(USERS, ITEMS, VALUES, ts, cutoff=cutoff, shape=(2, 3))
        for g, w in zip(got, want):
            assert (g != w).nnz == 0


def test_temporal_rejects_ambiguous_or_bad_input():
    dates = np.datetime64("2026-01-01", "s") + SECONDS.astype("timedelta64[s]")
    with pytest.raises(ValueError, match="cutoff"):
        temporal_holdout(USERS, ITEMS, VALUES, dates, cutoff=20, shape=(2, 3))
    with pytest.raises(ValueError, match="timestamps"):
        temporal_holdout(USERS, ITEMS, VALUES, SECONDS.astype(float), cutoff=20, shape=(2, 3))
    with pytest.raises(ValueError, match="items"):
        temporal_holdout(USERS, ITEMS, VALUES, SECONDS, cutoff=20, shape=(2, 2))
    with pytest.raises(ValueError, match="same length"):
        temporal_holdout(USERS[:-1], ITEMS, VALUES, SECONDS, cutoff=20, shape=(2, 3))


def _random_events(seed: int = 0, n: int = 3000, shape=(50, 40)):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, shape[0], n),
        rng.integers(0, shape[1], n),
        rng.integers(1, 4, n).astype(float),
        rng.integers(0, 1000, n),
        shape,
    )


def test_temporal_invariants_on_random_events():
    users, items, values, ts, shape = _random_events()
    train, test = temporal_holdout(users, items, values, ts, cutoff=700, shape=shape)
    _assert_split_invariants(train, test, shape)
    assert _pattern(train) | _pattern(test) == set(zip(users.tolist(), items.tolist()))
    before = ts < 700
    want_train = sp.csr_matrix((values[before], (users[before], items[before])), shape=shape)
    assert abs(train - want_train).max() < 1e-6
    # every test pair is new after the cutoff and carries its whole (post-cutoff) weight
    full = sp.csr_matrix((values, (users, items)), shape=shape)
    assert abs(test - full.multiply(test != 0)).max() < 1e-6


# --------------------------------------------------------------------------- leave last k


def test_leave_last_k_on_hand_example():
    # user 0: items by last time 1 (t=40) > 0 (t=30): k=1 sends item 1 (summed) to test
    # user 1: 2 distinct items, k=2 -> keeps everything in train
    train, test = leave_last_k(USERS, ITEMS, VALUES, SECONDS, k=1, shape=(2, 3))
    assert test.toarray().tolist() == [[0.0, 5.0, 0.0], [4.0, 0.0, 0.0]]
    assert train.toarray().tolist() == [[6.0, 0.0, 0.0], [0.0, 0.0, 2.0]]
    train, test = leave_last_k(USERS, ITEMS, VALUES, SECONDS, k=2, shape=(2, 3))
    assert test.nnz == 0 and train.sum() == VALUES.sum()


def test_leave_last_k_ties_go_to_larger_item():
    train, test = leave_last_k([0, 0, 0], [2, 1, 0], [1.0, 1.0, 1.0], [5, 5, 1], k=1, shape=(1, 3))
    assert test.toarray().tolist() == [[0.0, 0.0, 1.0]]


def test_leave_last_k_invariants_on_random_events():
    users, items, values, ts, shape = _random_events(seed=4, n=1500)
    k = 3
    train, test = leave_last_k(users, items, values, ts, k=k, shape=shape)
    _assert_split_invariants(train, test, shape)
    full = sp.csr_matrix((values, (users, items)), shape=shape)
    assert abs(train + test - full).max() < 1e-6
    distinct = np.diff(full.indptr)
    np.testing.assert_array_equal(np.diff(test.indptr), np.where(distinct > k, k, 0))
    last = {}
    for u, i, t in zip(users.tolist(), items.tolist(), ts.tolist()):
        last[u, i] = max(last.get((u, i), t), t)
    for u in range(shape[0]):
        if test[u].nnz:
            assert min(last[u, i] for i in test[u].indices) >= max(last[u, i] for i in train[u].indices)


def test_leave_last_k_accepts_datetime64_and_rejects_bad_k():
    users, items, values, ts, shape = _random_events(seed=2, n=500)
    dates = np.datetime64("2026-01-01", "us") + ts.astype("timedelta64[m]")
    a = leave_last_k(users, items, values, ts, 2, shape)
    b = leave_last_k(users, items, values, dates, 2, shape)
    assert all((x != y).nnz == 0 for x, y in zip(a, b))
    with pytest.raises(ValueError, match="k must"):
        leave_last_k(users, items, values, ts, 0, shape)


# --------------------------------------------------------------------------- real data (optional)


def test_splits_on_ml100k():
    if not ML100K.exists():
        pytest.skip(f"{ML100K} not available")
    with gzip.open(ML100K, "rt") as f:
        data = np.loadtxt(f, dtype=np.int64)
    users, items, ratings, ts = data[:, 0] - 1, data[:, 1] - 1, data[:, 2].astype(float), data[:, 3]
    shape = (users.max() + 1, items.max() + 1)
    full = sp.csr_matrix((ratings, (users, items)), shape=shape)

    train, test = random_holdout(full, 0.2, seed=0)
    _assert_split_invariants(train, test, shape)
    assert test.nnz == pytest.approx(0.2 * full.nnz, rel=0.02)

    train, test = temporal_holdout(users, items, ratings, ts, np.quantile(ts, 0.8).astype(np.int64), shape)
    _assert_split_invariants(train, test, shape)
    assert train.nnz + test.nnz == full.nnz  # ratings are unique per pair: nothing is dropped

    train, test = leave_last_k(users, items, ratings, ts, 5, shape)
    assert (np.diff(test.indptr) == 5).all()  # every ml-100k user has at least 20 ratings
    assert abs(train + test - full).max() == 0


def test_coordinate_splits_accept_no_events():
    none = np.array([], dtype=np.int64)
    for split in (temporal_holdout, leave_last_k):
        train, test = split(none, none, none.astype(float), none, 1, (3, 4))
        _assert_split_invariants(train, test, (3, 4))
        assert train.nnz == test.nnz == 0
