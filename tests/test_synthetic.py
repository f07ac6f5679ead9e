"""Synthetic generators: schema, determinism, funnel, power laws and planted low-rank structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from als_core.synthetic import generate_events, generate_user_items

SMALL = dict(n_users=1500, n_items=400, n_events=100_000, n_days=10, factors=6)


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return generate_events(**SMALL, seed=3)


def test_schema_and_ranges(events):
    assert list(events.columns) == ["user_id", "item_id", "event_type", "ts"]
    assert events.user_id.dtype == np.int64 and events.item_id.dtype == np.int64
    assert pd.api.types.is_string_dtype(events.event_type)
    assert events.ts.dtype == np.dtype("datetime64[us]")
    assert len(events) == SMALL["n_events"]  # exact row count
    assert events.user_id.between(1, SMALL["n_users"]).all()
    assert events.item_id.between(1, SMALL["n_items"]).all()
    assert set(events.event_type.unique()) == {"view", "cart", "purchase"}
    start = pd.Timestamp("2026-01-01")
    assert events.ts.min() >= start and events.ts.max() < start + pd.Timedelta(days=SMALL["n_days"])
    assert events.ts.is_monotonic_increasing
    # spread over the whole window, not bunched at its start
    assert events.ts.dt.day.nunique() == SMALL["n_days"]


def test_deterministic_by_seed(events):
    pd.testing.assert_frame_equal(events, generate_events(**SMALL, seed=3))
    other = generate_events(**SMALL, seed=4)
    assert not other.user_id.equals(events.user_id)


def test_funnel_ratios_and_causality():
    df = generate_events(**SMALL, seed=5, funnel=(0.2, 0.5))
    counts = df.event_type.value_counts()
    assert counts["cart"] / counts["view"] == pytest.approx(0.2, abs=0.01)
    assert counts["purchase"] / counts["cart"] == pytest.approx(0.5, abs=0.03)
    # every cart follows a view of the same user and item, every purchase a cart
    first = df.groupby(["user_id", "item_id", "event_type"]).ts.min().unstack()
    carted = first.cart.notna()
    assert (first.view[carted] <= first.cart[carted]).all()
    bought = first.purchase.notna()
    assert carted[bought].all() and (first.cart[bought] <= first.purchase[bought]).all()


def test_no_funnel_means_views_only():
    df = generate_events(n_users=50, n_items=20, n_events=1000, funnel=(0.0, 0.5))
    assert (df.event_type == "view").all() and len(df) == 1000


def _top_decile_share(ids: pd.Series, n: int) -> float:
    counts = np.sort(np.bincount(ids.to_numpy(), minlength=n + 1)[1:])[::-1]
    return counts[: n // 10].sum() / counts.sum()


def test_power_law_heads(events):
    views = events[events.event_type == "view"]
    assert _top_decile_share(views.item_id, SMALL["n_items"]) > 0.35  # uniform would be 0.10
    assert _top_decile_share(views.user_id, SMALL["n_users"]) > 0.30


def _low_rank_share(users: np.ndarray, items: np.ndarray, shape, rank: int) -> float:
    """Share of the squared singular values in components 2..rank+1 (the first is popularity)."""
    m = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=shape)
    m.data = np.log1p(m.data)
    s = np.linalg.svd(m.toarray(), compute_uv=False)
    return float((s[1 : rank + 1] ** 2).sum() / (s**2).sum())


def test_planted_structure_beats_shuffled(events):
    views = events[events.event_type == "view"]
    users, items = views.user_id.to_numpy() - 1, views.item_id.to_numpy() - 1
    shape = (SMALL["n_users"], SMALL["n_items"])
    planted = _low_rank_share(users, items, shape, SMALL["factors"])
    # shuffling items across events keeps user activity and item popularity, kills the taste
    shuffled = _low_rank_share(users, np.random.default_rng(0).permutation(items), shape, SMALL["factors"])
    assert planted > 1.6 * shuffled  # about 2.3x for this seed; no structure would give about 1x


@pytest.mark.parametrize(
    "kwargs", [{"n_users": 0}, {"n_events": -1}, {"factors": 0}, {"funnel": (1.2, 0.3)}, {"funnel": (0.1,)}]
)
def test_events_reject_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        generate_events(**{"n_users": 10, "n_items": 10, "n_events": 100} | kwargs)


# --------------------------------------------------------------------------- user x item matrix


def test_user_items_exact_nnz_and_type():
    m = generate_user_items(2000, 500, 30_000, seed=1, factors=8)
    assert isinstance(m, sp.csr_matrix) and m.shape == (2000, 500) and m.dtype == np.float32
    assert m.nnz == 30_000 and m.has_canonical_format
    assert (m.data >= 1).all() and (m.data == np.round(m.data)).all()  # counts
    per_item = np.sort(np.diff(m.tocsc().indptr))[::-1]
    assert per_item[:50].sum() / m.nnz > 0.3  # popular head: top 10% of items
    per_user = np.sort(np.diff(m.indptr))[::-1]
    assert per_user[:200].sum() / m.nnz > 0.2


def test_user_items_deterministic():
    a = generate_user_items(300, 100, 2000, seed=7)
    assert (a != generate_user_items(300, 100, 2000, seed=7)).nnz == 0
    assert (a != generate_user_items(300, 100, 2000, seed=8)).nnz > 0


def test_user_items_dense_request_is_filled_exactly():
    m = generate_user_items(20, 10, 100, seed=0, factors=2)  # half of all cells
    assert m.nnz == 100


@pytest.mark.parametrize(("nnz", "match"), [(0, "nnz"), (51, "half")])
def test_user_items_rejects_bad_nnz(nnz, match):
    with pytest.raises(ValueError, match=match):
        generate_user_items(10, 10, nnz)
