"""Synthetic implicit-feedback data with planted structure, deterministic by seed.

This is the one module of ``als_core`` that imports pandas (``generate_events`` returns a
DataFrame); everything else in the package is numpy/scipy/numba only.

The planted model, shared by both generators:

* items have a latent vector v_i ~ N(0, I / factors) (so |v_i| is about 1) and a power-law
  popularity p_i proportional to rank^-ITEM_EXPONENT, ranks assigned in random order;
* users belong to one of ``4 * factors`` taste clusters with centre c ~ N(0, TASTE_SCALE^2 I)
  and have taste u = c + d with a personal offset d ~ N(0, PERSONAL_SCALE^2 I / factors)
  (user ids are a random relabelling, unrelated to clusters);
* user activity is power-law too, proportional to rank^-USER_EXPONENT;
* an interaction picks its user by activity and then an item with probability
  proportional to p_i * exp(u . v_i).

Items are sampled exactly and without a users x items matrix: a proposal from the user's cluster,
q(i) proportional to p_i * exp(c . v_i) (one cumulative table per cluster), is accepted with
probability exp(d . v_i - |d| max_j |v_j|) <= 1 (Cauchy-Schwarz); rejected draws are redrawn.
Internally users are numbered cluster by cluster, so draws made user by user come grouped by
cluster and each binary search runs in one small, cache-resident table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["generate_events", "generate_user_items"]

ITEM_EXPONENT = 0.8  # Zipf exponent of item popularity (1.0 gives the top item ~10% of 20k items)
USER_EXPONENT = 0.75  # of user activity; 1.0 would give one user ~10% of all events
TASTE_SCALE = 2.0  # c . v has standard deviation ~2: taste, not only popularity, decides (ALS beats popularity ~2x)
PERSONAL_SCALE = 0.3  # length of a user's offset from its cluster centre (acceptance ~60%)
CLUSTERS_PER_FACTOR = 4
EVENT_TYPES = ("view", "cart", "purchase")
_CHUNK = 1 << 20  # events sampled at once, bounds the memory of gathered latent vectors
_US_PER_DAY = 86_400 * 1_000_000
_CART_DELAY_US = (30 * 1_000_000, 5 * 60 * 1_000_000)  # minimum, mean extra (exponential)
_PURCHASE_DELAY_US = (30 * 1_000_000, 10 * 60 * 1_000_000)


@dataclass(frozen=True)
class _Planted:
    item_vectors: np.ndarray  # (n_items, factors) float32
    cluster_cdf: np.ndarray  # (n_clusters, n_items) float64: proposal CDF of each cluster
    user_cluster: np.ndarray  # (n_users,) int64, non-decreasing
    user_label: np.ndarray  # (n_users,) int64: public id (0-based) of each internal user
    user_offsets: np.ndarray  # (n_users, factors) float32
    offset_bound: np.ndarray  # (n_users,) float64: |d_u| * max_i |v_i|
    activity: np.ndarray  # (n_users,) float64, sums to 1
    n_items: int


def _power_law(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities proportional to rank^-exponent, ranks in random order."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return rng.permutation(weights / weights.sum())


def _plant(n_users: int, n_items: int, factors: int, rng: np.random.Generator) -> _Planted:
    n_clusters = min(n_users, CLUSTERS_PER_FACTOR * factors)
    item_vectors = rng.normal(0.0, 1.0 / np.sqrt(factors), (n_items, factors))
    centres = rng.normal(0.0, TASTE_SCALE, (n_clusters, factors))
    log_q = np.log(_power_law(n_items, ITEM_EXPONENT, rng)) + centres @ item_vectors.T
    q = np.exp(log_q - log_q.max(axis=1, keepdims=True))
    cdf = np.cumsum(q, axis=1)
    cdf /= cdf[:, -1:]
    cdf[:, -1] = 1.0  # exact, so a uniform draw in [0, 1) always lands inside the table
    offsets = rng.normal(0.0, PERSONAL_SCALE / np.sqrt(factors), (n_users, factors))
    return _Planted(
        item_vectors=item_vectors.astype(np.float32),
        cluster_cdf=cdf,
        user_cluster=np.sort(rng.integers(0, n_clusters, n_users)),
        user_label=rng.permutation(n_users),
        user_offsets=offsets.astype(np.float32),
        offset_bound=np.linalg.norm(offsets, axis=1) * np.linalg.norm(item_vectors, axis=1).max(),
        activity=_power_law(n_users, USER_EXPONENT, rng),
        n_items=n_items,
    )


def _propose(planted: _Planted, cluster: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of ``cluster`` (non-decreasing) from that cluster's proposal."""
    uniform = rng.random(len(cluster))
    bounds = np.searchsorted(cluster, np.arange(len(planted.cluster_cdf) + 1))
    candidate = np.empty(len(cluster), dtype=np.int64)
    for c in np.flatnonzero(np.diff(bounds)):
        lo, hi = bounds[c], bounds[c + 1]
        candidate[lo:hi] = planted.cluster_cdf[c].searchsorted(uniform[lo:hi], side="right")
    return np.minimum(candidate, planted.n_items - 1)


def _sample_items_chunk(planted: _Planted, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Items for ``users`` (non-decreasing internal indices) by accept/reject on cluster proposals."""
    items = np.empty(len(users), dtype=np.int64)
    todo = np.arange(len(users))
    while len(todo):
        u = users[todo]  # still sorted: rejected draws keep their order
        candidate = _propose(planted, planted.user_cluster[u], rng)
        affinity = np.einsum("ij,ij->i", planted.user_offsets[u], planted.item_vectors[candidate])
        accept = rng.random(len(todo)) < np.exp(affinity - planted.offset_bound[u])
        items[todo[accept]] = candidate[accept]
        todo = todo[~accept]
    return items


def _sample_items(planted: _Planted, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of ``users`` (sorted), drawn with probability proportional to p_i * exp(u . v_i)."""
    if not len(users):
        return np.empty(0, dtype=np.int64)
    chunks = range(0, len(users), _CHUNK)
    return np.concatenate([_sample_items_chunk(planted, users[s : s + _CHUNK], rng) for s in chunks])


def _sample_users(planted: _Planted, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` internal users drawn by activity, sorted (hence grouped by cluster)."""
    counts = rng.multinomial(n, planted.activity)
    return np.repeat(np.arange(len(counts)), counts)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


# --------------------------------------------------------------------------- events


def _funnel_chains(
    n_events: int, funnel: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(carted, bought) flags per view, for just enough views to make exactly ``n_events`` rows.

    Each view is a chain of 1 to 3 rows; chains are drawn for the worst case (n_events views) and
    cut where the row count reaches n_events, the last chain losing its tail if it overshoots.
    """
    carted = rng.random(n_events, dtype=np.float32) < funnel[0]
    bought = carted & (rng.random(n_events, dtype=np.float32) < funnel[1])
    rows = np.cumsum(1 + carted.astype(np.int64) + bought)
    n_views = int(np.searchsorted(rows, n_events)) + 1
    carted, bought = carted[:n_views], bought[:n_views]
    room = n_events - (rows[n_views - 2] if n_views > 1 else 0)  # rows left for the last chain
    carted[-1] &= room >= 2
    bought[-1] &= room >= 3
    return carted, bought


def _later(ts: np.ndarray, delay: tuple[int, int], end: int, rng: np.random.Generator) -> np.ndarray:
    """Timestamps a little after ``ts`` (minimum + exponential), kept inside the window."""
    extra = rng.exponential(delay[1], len(ts)).astype(np.int64)
    return np.minimum(ts + delay[0] + extra, end - 1)


def generate_events(
    n_users: int = 10_000,
    n_items: int = 2_000,
    n_events: int = 1_000_000,
    n_days: int = 30,
    factors: int = 8,
    seed: int = 0,
    start: str = "2026-01-01",
    funnel: tuple[float, float] = (0.06, 0.35),
) -> pd.DataFrame:
    """A synthetic e-commerce event log of exactly ``n_events`` rows, sorted by ``ts``.

    Columns: ``user_id`` and ``item_id`` (int64, starting at 1), ``event_type`` (str: view, cart,
    purchase) and ``ts`` (datetime64[us], UTC-naive, in [start, start + n_days)).
    Views follow the planted model of this module; each view becomes a cart with probability
    ``funnel[0]`` and each cart a purchase with probability ``funnel[1]``, for the same user and
    item, 30 s plus an exponential delay (mean 5 min for carts, 10 min for purchases) later,
    clipped to the window. Deterministic for a given seed.
    """
    _check_positive(n_users=n_users, n_items=n_items, n_events=n_events, n_days=n_days, factors=factors)
    if len(funnel) != 2 or not all(0.0 <= p <= 1.0 for p in funnel):
        raise ValueError(f"funnel must be two probabilities (view->cart, cart->purchase), got {funnel!r}")
    rng = np.random.default_rng(seed)
    planted = _plant(n_users, n_items, factors, rng)
    carted, bought = _funnel_chains(n_events, funnel, rng)
    users = _sample_users(planted, len(carted), rng)
    items = _sample_items(planted, users, rng)
    begin = int(np.datetime64(start, "us").astype(np.int64))
    end = begin + n_days * _US_PER_DAY
    view_ts = rng.integers(begin, end, len(carted))
    cart_ts = _later(view_ts[carted], _CART_DELAY_US, end, rng)
    purchase_ts = _later(cart_ts[bought[carted]], _PURCHASE_DELAY_US, end, rng)

    ts = np.concatenate([view_ts, cart_ts, purchase_ts])
    order = np.argsort(ts, kind="stable")  # stable: a clipped cart still follows its view
    kind = (order >= len(view_ts)).astype(np.intp) + (order >= len(view_ts) + len(cart_ts))  # 0, 1, 2
    user_ids = planted.user_label[users] + 1
    return pd.DataFrame(
        {
            "user_id": np.concatenate([user_ids, user_ids[carted], user_ids[bought]])[order],
            "item_id": np.concatenate([items, items[carted], items[bought]])[order] + 1,
            "event_type": pd.array(EVENT_TYPES, dtype="str").take(kind),  # 3 strings, shared
            "ts": ts[order].view("datetime64[us]"),
        },
        copy=False,  # the arrays are fresh; consolidating them would only copy 10M-row blocks
    )


# --------------------------------------------------------------------------- user x item matrix

_MAX_MODEL_ROUNDS = 8


def _count_runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and how often each occurs."""
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return sorted_keys[starts], np.diff(np.r_[starts, len(sorted_keys)])


def _distinct_pairs(planted: _Planted, nnz: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(sorted keys user * n_items + item, draw counts) of about ``nnz`` distinct drawn pairs; fewer
    than ``nnz`` only if the model saturates, else at least ``nnz``."""
    keys = np.empty(0, dtype=np.int64)
    n_draw, have = nnz, 0
    for _ in range(_MAX_MODEL_ROUNDS):
        users = _sample_users(planted, n_draw, rng)
        drawn = planted.user_label[users] * planted.n_items + _sample_items(planted, users, rng)
        keys = np.sort(np.concatenate([keys, drawn]))
        distinct = int(np.count_nonzero(keys[1:] != keys[:-1])) + 1
        novelty = max((distinct - have) / n_draw, 0.02)  # share of this round's draws that were new pairs
        have = distinct
        if have >= nnz:
            break
        n_draw = int(1.2 * (nnz - have) / novelty) + 16
    return _count_runs(keys)


def _uniform_fill(taken: np.ndarray, needed: int, n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """``needed`` distinct cells not in ``taken``, uniformly at random."""
    found = np.empty(0, dtype=np.int64)
    while len(found) < needed:
        cells = np.unique(rng.integers(0, n_cells, 2 * (needed - len(found)) + 16))
        found = np.union1d(found, cells[~np.isin(cells, taken)])
    return rng.permutation(found)[:needed]


def generate_user_items(n_users: int, n_items: int, nnz: int, seed: int = 0, factors: int = 16) -> sp.csr_matrix:
    """A (n_users x n_items) float32 CSR of interaction counts with exactly ``nnz`` nonzeros.

    Interactions are drawn from the planted model of this module, in rounds, until at least
    ``nnz`` distinct (user, item) pairs have appeared; a uniformly random ``nnz`` of them are kept,
    each with its number of draws as value. In the rare case the model saturates (very dense
    requests), the remainder is filled with uniformly random cells of count 1. Some users and items
    may have no interactions. ``nnz`` must be between 1 and half of the cells. Deterministic for a
    given seed.
    """
    _check_positive(n_users=n_users, n_items=n_items, nnz=nnz, factors=factors)
    n_cells = n_users * n_items
    if nnz > n_cells // 2:
        raise ValueError(f"nnz={nnz} exceeds half of the {n_users} x {n_items} cells")
    rng = np.random.default_rng(seed)
    planted = _plant(n_users, n_items, factors, rng)
    keys, counts = _distinct_pairs(planted, nnz, rng)
    if len(keys) > nnz:
        keep = np.sort(rng.permutation(len(keys))[:nnz])
        keys, counts = keys[keep], counts[keep]
    elif len(keys) < nnz:
        filled = _uniform_fill(keys, nnz - len(keys), n_cells, rng)
        keys = np.concatenate([keys, filled])
        counts = np.concatenate([counts, np.ones(len(filled), dtype=counts.dtype)])
    return sp.csr_matrix(
        (counts.astype(np.float32), (keys // n_items, keys % n_items)), shape=(n_users, n_items)
    )
