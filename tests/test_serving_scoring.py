"""serving.scoring answers exactly what als_core's ModelBundle answers (the reference the pipeline evaluates
with), for known users, users without history, unknown users, fold-in and similar items."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from als_core import ALS
from als_core.bundle import SOURCE_ALS, SOURCE_FOLD_IN, SOURCE_POPULARITY, ModelBundle
from serving import _vnni
from serving.scoring import ItemMatrix, Scorer


def random_bundle(n_users: int, n_items: int, factors: int, density: float, seed: int, string_ids=False):
    rng = np.random.default_rng(seed)
    model = ALS(factors=factors)
    model.user_factors = rng.standard_normal((n_users, factors)).astype(np.float32)
    model.item_factors = rng.standard_normal((n_items, factors)).astype(np.float32)
    seen = sp.random(n_users, n_items, density=density, format="csr", dtype=np.float32, random_state=seed)
    seen.data[:] = rng.integers(1, 50, seen.nnz)
    if n_users > 1:  # one known user with an empty row: served from popularity, like the bundle does
        seen = sp.csr_matrix(sp.diags((np.arange(n_users) != 1).astype(np.float32)) @ seen)
        seen.eliminate_zeros()
    user_ids = np.arange(n_users) * 7 + 3
    item_ids = np.arange(n_items) * 11 + 5
    if string_ids:
        user_ids, item_ids = np.char.add("u", user_ids.astype(str)), np.char.add("i", item_ids.astype(str))
    return ModelBundle.build(model, user_ids, item_ids, seen)


def assert_same_ranking(ids_a, scores_a, ids_b, scores_b, tie=1e-4):
    """Same items in the same order, except that items whose scores tie (within float summation-order noise)
    may come in any order, and which of the tied items at the cut-off made it into the top n is arbitrary."""
    assert len(ids_a) == len(ids_b)
    np.testing.assert_allclose(scores_a, scores_b, rtol=1e-5, atol=1e-5)
    if len(ids_b) == 0:
        return
    group = np.concatenate([[0], np.cumsum(np.abs(np.diff(np.asarray(scores_b, np.float64))) > tie)])
    for g in np.unique(group)[:-1]:
        assert set(np.asarray(ids_a)[group == g].tolist()) == set(np.asarray(ids_b)[group == g].tolist())


def compare_users(bundle: ModelBundle, scorer: Scorer, user_ids, n: int):
    reference = bundle.recommend_many(user_ids, n=n)
    got = scorer.recommend_rows(bundle.users.lookup(user_ids), n)
    assert got.sources.tolist() == reference.sources.tolist()
    for row in range(len(user_ids)):
        ref_ids, ref_scores = reference.items_of(row)
        keep = got.item_index[row] >= 0
        assert_same_ranking(bundle.item_ids[got.item_index[row][keep]], got.scores[row][keep], ref_ids, ref_scores)
        seen = bundle.seen[max(bundle.users.lookup([user_ids[row]])[0], 0)].indices
        if reference.sources[row] == SOURCE_ALS:
            assert not set(got.item_index[row][keep]) & set(seen), "a seen item was recommended"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_users=st.integers(1, 30), n_items=st.integers(1, 60), factors=st.integers(1, 12),
       density=st.floats(0.0, 0.9), n=st.integers(1, 80), seed=st.integers(0, 2**16))
def test_recommendations_match_the_bundle(n_users, n_items, factors, density, n, seed):
    bundle = random_bundle(n_users, n_items, factors, density, seed)
    scorer = Scorer(bundle, max_n=80)
    unknown = [-1, "nobody", 10**30]
    compare_users(bundle, scorer, list(bundle.user_ids) + unknown, n)


def test_sources_and_string_ids():
    bundle = random_bundle(20, 50, 8, 0.2, seed=3, string_ids=True)
    scorer = Scorer(bundle, max_n=20)
    compare_users(bundle, scorer, ["u3", "u10", "nobody", "3"], 10)
    got = scorer.recommend_rows(bundle.users.lookup(["u3", "u10", "nobody"]), 5)
    assert got.sources.tolist() == [SOURCE_ALS, SOURCE_POPULARITY, SOURCE_POPULARITY]  # u10 is row 1: no history


def test_a_large_catalogue_against_the_bundle():
    bundle = random_bundle(300, 20_000, 32, 0.002, seed=5)
    scorer = Scorer(bundle, max_n=100)
    compare_users(bundle, scorer, list(bundle.user_ids[:64]), 100)


@pytest.mark.parametrize("n_events", [1, 5, 40])
def test_fold_in_matches_the_bundle(n_events):
    bundle = random_bundle(40, 200, 8, 0.05, seed=n_events)
    scorer = Scorer(bundle, max_n=30)
    rng = np.random.default_rng(n_events)
    items = bundle.item_ids[rng.integers(0, 200, n_events)]
    weights = rng.choice([3.0, 10.0, 40.0], n_events)
    # an unknown item id and a zero weight are ignored by both
    items, weights = np.append(items, [999_999, items[0]]), np.append(weights, [40.0, 0.0])
    ref_ids, ref_scores, ref_source = bundle.fold_in(items, weights, n=30)
    ref_scores = ref_scores[np.isfinite(ref_scores)]
    got = scorer.fold_in([(items.astype(str), weights), (np.array(["999999"]), np.array([3.0]))], 30)
    assert got.sources.tolist() == [ref_source, SOURCE_POPULARITY] and ref_source == SOURCE_FOLD_IN
    keep = got.item_index[0] >= 0
    assert_same_ranking(bundle.item_ids[got.item_index[0][keep]], got.scores[0][keep], ref_ids, ref_scores)
    assert not set(bundle.item_ids[got.item_index[0][keep]]) & set(items.tolist())
    popular = scorer.recommend_rows(np.array([-1]), 30)
    np.testing.assert_array_equal(got.item_index[1], popular.item_index[0])


@pytest.mark.parametrize("n", [1, 7, 199, 500])
def test_similar_items_match_the_model(n):
    bundle = random_bundle(10, 200, 6, 0.1, seed=n)
    bundle.model.item_factors[17] = 0  # a zero vector: similarity 0 with everything, as in als_core
    scorer = Scorer(bundle, max_n=500)
    for item in (0, 17, 199):
        ref_ids, ref_scores = bundle.similar_items(bundle.item_ids[item], n)
        ref_scores = ref_scores[np.isfinite(ref_scores)]  # als_core drops padded ids but not their -inf scores
        ids, scores = scorer.similar_items(item, n)
        assert item not in ids
        assert_same_ranking(bundle.item_ids[ids], scores, ref_ids, ref_scores)


@st.composite
def hard_factors(draw):
    """Item factors that make int8 bounds loose or useless: huge dynamic range within a vector, exact
    duplicates (ties), zero vectors, a few dominant items; and a user vector that may be zero."""
    n_items, k = draw(st.integers(1, 300)), draw(st.integers(1, 16))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    items = rng.standard_normal((n_items, k))
    kind = draw(st.sampled_from(["spiky", "duplicates", "zeros", "scaled", "plain"]))
    if kind == "spiky":  # one component dwarfs the rest: the rest quantise to 0
        items[:, 0] *= 1e4
    elif kind == "duplicates":
        items = items[rng.integers(0, max(1, n_items // 10), n_items)]
    elif kind == "zeros":
        items[rng.random(n_items) < 0.5] = 0
    elif kind == "scaled":
        items *= 10.0 ** rng.integers(-6, 6, (n_items, 1))
    user = rng.standard_normal(k) * draw(st.sampled_from([0.0, 1e-6, 1.0, 1e6]))
    excluded = np.unique(rng.integers(0, n_items, draw(st.integers(0, n_items))))
    return items.astype(dtype), user.astype(dtype), excluded, draw(st.integers(1, 40))


@pytest.mark.parametrize("tiles", [
    False, pytest.param(True, marks=pytest.mark.skipif(not _vnni.AVAILABLE, reason="this CPU has no AVX-512 VNNI"))])
@settings(max_examples=150, deadline=None)
@given(case=hard_factors())
def test_top_n_is_exact_on_adversarial_factors(tiles, case):
    items, user, excluded, n = case
    matrix = ItemMatrix.of(items, tiles=tiles)
    dense = items.astype(np.float64) @ user.astype(np.float64)
    dense[excluded] = -np.inf
    expected = np.argsort(-dense, kind="stable")[:min(n, len(items))]
    expected = expected[np.isfinite(dense[expected])]
    scale = max(float(np.abs(dense[np.isfinite(dense)]).max(initial=0)), 1e-30)
    # one user: the int8-bounds kernel; 20 users: the matrix-product path. Both must be exact.
    for n_users in (1, 20):
        indptr = np.arange(n_users + 1) * len(excluded)
        ids, _ = matrix.top_n(np.tile(user, (n_users, 1)), n, indptr, np.tile(excluded, n_users))
        for row in ids:
            keep = row >= 0
            assert keep.sum() == len(expected)
            assert not set(row[keep].tolist()) & set(excluded.tolist())
            assert_same_ranking(row[keep], dense[row[keep]] / scale, expected, dense[expected] / scale, tie=1e-5)


def test_non_finite_factors_are_refused():
    bundle = random_bundle(5, 10, 3, 0.3, seed=0)
    bundle.model.item_factors[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        Scorer(bundle, max_n=10)
