"""Train/holdout splits of implicit-feedback interactions.

Every split returns ``(train, test)``: two ``scipy.sparse.csr_matrix`` of the same shape with
float32 data, canonical format (sorted indices, no duplicates, no explicit zeros) and disjoint
nonzero patterns. Coordinate inputs (``users``, ``items``, ``values``, ``timestamps``) are 1-D
arrays of equal length; duplicate (user, item) pairs are summed. ``timestamps`` may be integers
(e.g. unix seconds) or ``datetime64`` of any unit (compared at microsecond resolution).
"""

from __future__ import annotations

import datetime as _dt

import numpy as np
import scipy.sparse as sp

__all__ = ["leave_last_k", "random_holdout", "temporal_holdout"]

_US_PER_SECOND = 1_000_000


# --------------------------------------------------------------------------- helpers


def _csr(rows: np.ndarray, cols: np.ndarray, data: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Canonical float32 CSR from coordinates; duplicates summed (in float64), zeros dropped."""
    m = sp.csr_matrix((np.asarray(data, dtype=np.float64), (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.eliminate_zeros()
    return m.astype(np.float32)


def _subset(m: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """The entries of ``m`` where ``keep`` (one bool per stored entry) is True, same shape."""
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    indptr = np.zeros(m.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[keep], minlength=m.shape[0]), out=indptr[1:])
    return sp.csr_matrix((m.data[keep], m.indices[keep], indptr), shape=m.shape)


def _pair_keys(m: sp.csr_matrix) -> np.ndarray:
    """One int64 per stored entry: row * n_cols + col."""
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    return rows * m.shape[1] + m.indices


def _check_shape(shape) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(f"shape must be (n_users, n_items) with positive integers, got {shape!r}")
    return int(shape[0]), int(shape[1])


def _times(timestamps) -> tuple[np.ndarray, bool]:
    """Timestamps as int64 (microseconds since the epoch for datetime64) and whether they were dates."""
    t = np.asarray(timestamps)
    if np.issubdtype(t.dtype, np.datetime64):
        if np.isnat(t).any():
            raise ValueError("timestamps contain NaT")
        return t.astype("datetime64[us]").astype(np.int64), True
    if np.issubdtype(t.dtype, np.integer):
        return t.astype(np.int64), False
    raise ValueError(f"timestamps must be integers or datetime64, got dtype {t.dtype}")


def _cutoff_value(cutoff, dates: bool) -> float | int:
    """``cutoff`` on the scale of ``_times``: µs for datetime64 timestamps, as given for integers.

    A date-like cutoff (str, datetime, np.datetime64, pandas Timestamp) against integer timestamps
    is read as unix seconds; an integer cutoff against datetime64 timestamps is ambiguous.
    """
    is_number = isinstance(cutoff, (int, float, np.integer, np.floating)) and not isinstance(cutoff, bool)
    if dates:
        if is_number:
            raise ValueError("timestamps are datetime64: give cutoff as a date/time, not a number")
        return int(np.datetime64(cutoff, "us").astype(np.int64))
    if is_number:
        return cutoff
    if isinstance(cutoff, (str, _dt.date, np.datetime64)):
        return int(np.datetime64(cutoff, "us").astype(np.int64)) / _US_PER_SECOND
    raise ValueError(f"cannot compare cutoff {cutoff!r} with integer timestamps")


def _coordinates(users, items, values, timestamps, shape) -> tuple[np.ndarray, ...]:
    """Validated (users, items, values float64, times int64, dates flag, shape)."""
    shape = _check_shape(shape)
    u = np.asarray(users)
    i = np.asarray(items)
    v = np.asarray(values, dtype=np.float64)
    t, dates = _times(timestamps)
    if not (u.ndim == i.ndim == v.ndim == t.ndim == 1) or not (len(u) == len(i) == len(v) == len(t)):
        raise ValueError("users, items, values and timestamps must be 1-D arrays of the same length")
    for name, ids, bound in (("users", u, shape[0]), ("items", i, shape[1])):
        if len(ids) and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{name} must be integer indices, got dtype {ids.dtype}")
        if len(ids) and (ids.min() < 0 or ids.max() >= bound):
            raise ValueError(f"{name} must be in [0, {bound}) for shape {shape}")
    if not np.isfinite(v).all():
        raise ValueError("values must be finite")
    return u.astype(np.int64), i.astype(np.int64), v, t, dates, shape


# --------------------------------------------------------------------------- splits


def random_holdout(
    user_items: sp.spmatrix, fraction: float = 0.2, seed: int = 0
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Per user, a uniformly random ``fraction`` of that user's items goes to test.

    A user with n items sends round(fraction * n) of them (halves rounded up) to test, capped at
    n - 1 so that every user keeps at least one training item (in particular a user with a single
    item keeps it in train). Values stay with their item; train + test equals the input (duplicates
    summed, explicit zeros dropped). Reproducible for a given ``seed``.
    """
    if not sp.issparse(user_items):
        raise ValueError(f"user_items must be a scipy sparse matrix, got {type(user_items).__name__}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    m = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    per_user = np.diff(m.indptr)
    n_test = np.minimum(np.floor(fraction * per_user + 0.5), np.maximum(per_user - 1, 0)).astype(np.int64)
    rows = np.repeat(np.arange(m.shape[0]), per_user)
    # a random order within each row (rows stay grouped as in CSR); the first n_test go to test
    order = np.lexsort((np.random.default_rng(seed).random(m.nnz), rows))
    position = np.empty(m.nnz, dtype=np.int64)
    position[order] = np.arange(m.nnz) - m.indptr[rows]
    in_test = position < n_test[rows]
    return _subset(m, ~in_test), _subset(m, in_test)


def temporal_holdout(
    users, items, values, timestamps, cutoff, shape: tuple[int, int]
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split by time: the holdout measures discovery of new items after ``cutoff``.

    Rule: interactions with timestamp < cutoff form train and those with timestamp >= cutoff form
    test, each side summed per (user, item); then any (user, item) already in train is dropped
    from test, since re-consuming a known item is not a recommendation to discover. So the union
    of the two nonzero patterns is the input's, but post-cutoff interactions with a pair already
    seen before the cutoff are discarded (never added to train, which would leak the future).

    ``cutoff`` is a date/time (str, datetime, np.datetime64, pandas Timestamp) for datetime64
    timestamps; for integer timestamps, a number on the same scale or a date/time read as unix
    seconds.
    """
    u, i, v, t, dates, shape = _coordinates(users, items, values, timestamps, shape)
    after = t >= _cutoff_value(cutoff, dates)
    train = _csr(u[~after], i[~after], v[~after], shape)
    test = _csr(u[after], i[after], v[after], shape)
    return train, _subset(test, ~np.isin(_pair_keys(test), _pair_keys(train)))


def leave_last_k(
    users, items, values, timestamps, k: int, shape: tuple[int, int]
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Per user, the ``k`` most recent distinct items go to test, with all their interactions.

    Each (user, item) pair is summed and dated by its latest interaction; pairs are ordered by that
    date, ties broken by the larger item index counting as more recent. Users with at most ``k``
    distinct items keep everything in train. train + test equals the input summed per pair.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    u, i, v, t, _, shape = _coordinates(users, items, values, timestamps, shape)
    if not len(u):
        return _csr(u, i, v, shape), _csr(u, i, v, shape)
    pair = u * shape[1] + i
    order = np.lexsort((t, pair))  # grouped by pair, latest interaction last in its group
    pair, v, t = pair[order], v[order], t[order]
    starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
    ends = np.r_[starts[1:], len(pair)]
    key, total, last = pair[starts], np.add.reduceat(v, starts), t[ends - 1]
    pu, pi = key // shape[1], key % shape[1]
    # most recent first within each user; the first k of a user with more than k pairs go to test
    recent = np.lexsort((-pi, -last, pu))
    pu, pi, total = pu[recent], pi[recent], total[recent]
    per_user = np.bincount(pu, minlength=shape[0])
    first_of_user = np.cumsum(per_user) - per_user
    rank = np.arange(len(pu)) - first_of_user[pu]
    in_test = (rank < k) & (per_user[pu] > k)
    return (
        _csr(pu[~in_test], pi[~in_test], total[~in_test], shape),
        _csr(pu[in_test], pi[in_test], total[in_test], shape),
    )
