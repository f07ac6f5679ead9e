"""ALS.explain against `implicit` 0.7.3's explain on the same factors, and against the fold-in it decomposes;
recommend(items=...) and similar_users against the dense computation (and `implicit`)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from als_core import ALS

implicit_als = pytest.importorskip("implicit.cpu.als")

ALPHA, REG, K = 3.0, 0.7, 6


def interactions(n_users: int, n_items: int, seed: int, density: float = 0.2) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    R = sp.random(n_users, n_items, density=density, format="csr", dtype=np.float32, random_state=seed)
    R.data[:] = rng.choice([1.0, 3.0, 10.0, 40.0], R.nnz) / 10
    return R


def fitted(R: sp.csr_matrix, seed: int = 0, **kwargs) -> ALS:
    params = dict(factors=K, regularization=REG, alpha=ALPHA, iterations=4, random_state=seed)
    params.update(kwargs)
    return ALS(**params).fit(R)


def implicit_twin(model: ALS):
    """implicit's model with our factors: it reads the stored value as the confidence, so it gets 1 + alpha*r
    and alpha 1 (see ALS's docstring)."""
    twin = implicit_als.AlternatingLeastSquares(factors=model.factors, regularization=model.regularization,
                                                alpha=1.0, dtype=np.float32, random_state=0)
    twin.user_factors = model.user_factors.copy()
    twin.item_factors = model.item_factors.copy()
    return twin


def confidences(R: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    C = R.copy()
    C.data = 1 + alpha * C.data
    return C


@pytest.mark.parametrize("n_top", [1, 3, 50])
def test_explain_matches_implicit_on_the_same_factors(n_top):
    R = interactions(40, 50, seed=3)
    model = fitted(R)
    twin = implicit_twin(model)
    C = confidences(R, ALPHA)
    rng = np.random.default_rng(1)
    for user in rng.choice(np.flatnonzero(np.diff(R.indptr) > 0), 8, replace=False):
        for item in rng.choice(50, 3, replace=False):
            total, top, weights = model.explain(int(user), R, int(item), N=n_top)
            ref_total, ref_top, ref_weights = twin.explain(int(user), C, int(item), N=n_top)
            assert total == pytest.approx(ref_total, rel=1e-5, abs=1e-6)
            assert len(top) == len(ref_top) == min(n_top, R[user].nnz)
            assert [i for i, _ in top] == [int(i) for i, _ in ref_top]
            np.testing.assert_allclose([s for _, s in top], [s for _, s in ref_top], rtol=1e-5, atol=1e-6)
            # the Cholesky factor of W_u^-1 (cho_factor leaves the other triangle unspecified)
            assert weights[1] == ref_weights[1]
            np.testing.assert_allclose(np.triu(weights[0]), np.triu(ref_weights[0]), rtol=1e-5, atol=1e-5)
            # each passes the other's factorisation back in and gets the same answer
            again = model.explain(int(user), R[user], int(item), user_weights=ref_weights, N=n_top)
            assert again[0] == pytest.approx(total, rel=1e-5, abs=1e-6) and again[2] is ref_weights


def test_contributions_add_up_to_the_fold_in_score():
    """The decomposition is exact: all contributions sum to x_u . y_i with x_u the user solved from its row."""
    R = interactions(30, 40, seed=5)
    for params in ({}, {"weighted_regularization": True},
                   {"implicit": False, "use_biases": True, "regularization": 0.3}):
        model = fitted(R, **params)
        items = np.arange(0, 40, 3)
        for user in (0, 4, 17):
            row = R[user]
            totals, tops, _ = model.explain(None, row, items, N=1000)
            x_u = model.recalculate_user(row)[0]
            np.testing.assert_allclose(totals, model.item_factors[items] @ x_u, rtol=2e-4, atol=2e-5)
            assert len(tops) == len(items)
            for total, top in zip(totals, tops):
                assert sorted(i for i, _ in top) == sorted(row.indices.tolist())
                assert sum(s for _, s in top) == pytest.approx(total, rel=1e-9, abs=1e-12)
                assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)


def test_explain_takes_the_users_row_or_the_full_matrix_and_checks_its_input():
    R = interactions(20, 30, seed=2)
    model = fitted(R)
    user = int(np.argmax(np.diff(R.indptr)))
    from_matrix = model.explain(user, R, 4)
    from_row = model.explain(user, R[user], 4)
    assert from_matrix[0] == pytest.approx(from_row[0], rel=1e-12) and from_matrix[1] == from_row[1]
    nothing = model.explain(None, sp.csr_matrix((1, 30), dtype=np.float32), 4)  # no items: nothing to explain
    assert nothing[0] == 0.0 and nothing[1] == []
    with pytest.raises(ValueError, match="item ids"):
        model.explain(user, R, 30)
    with pytest.raises(ValueError, match="rows"):
        model.explain(None, R, 4)  # the whole matrix but no user to take a row of
    with pytest.raises(ValueError, match="columns"):
        model.explain(user, R[:, :10], 4)


def dense_top(scores: np.ndarray, candidates: np.ndarray, excluded: set, n: int):
    """The reference: the dense scores of the candidates, excluded ones removed, best first (ties: lower id)."""
    keep = np.array([c for c in candidates if c not in excluded], dtype=np.int64)
    order = np.lexsort((keep, -scores[keep]))[:n]
    return keep[order], scores[keep][order]


@pytest.mark.parametrize("params", [{}, {"implicit": False, "use_biases": True}])
def test_recommend_among_candidates_is_the_dense_ranking_of_those_candidates(params):
    R = interactions(25, 60, seed=7, density=0.25)
    model = fitted(R, **params)
    rng = np.random.default_rng(4)
    dense = model.user_factors.astype(np.float64) @ model.item_factors.T.astype(np.float64)
    if model.use_biases:
        dense += model.item_bias  # what ranking adds per item
    for user in range(25):
        candidates = rng.choice(60, rng.integers(1, 25), replace=True)  # repeats count once
        unique = np.unique(candidates)
        for n, filtering in ((5, True), (40, True), (3, False)):
            ids, scores = model.recommend(user, R[user], N=n, items=candidates, filter_already_liked_items=filtering)
            excluded = set(R[user].indices.tolist()) if filtering else set()
            ref_ids, ref_scores = dense_top(dense[user], unique, excluded, n)
            assert len(ids) == min(n, len(unique))  # implicit's length; padded when liked ones were filtered
            assert ids[len(ref_ids):].tolist() == [-1] * (len(ids) - len(ref_ids))
            assert ids[:len(ref_ids)].tolist() == ref_ids.tolist()
            np.testing.assert_allclose(scores[:len(ref_ids)], ref_scores, rtol=1e-5, atol=1e-5)
    # many users at once, from the full matrix, and folded-in users: the same candidates for every row
    candidates = np.arange(0, 60, 4)
    ids, _ = model.recommend(np.arange(25), R, N=6, items=candidates)
    for user in range(25):
        assert ids[user].tolist() == model.recommend(user, R[user], N=6, items=candidates)[0].tolist()
    folded, _ = model.recommend([0, 1], R[:2], N=6, items=candidates, recalculate_user=True)
    vectors = model.recalculate_user(R[:2]).astype(np.float64) @ model.item_factors.T.astype(np.float64)
    if model.use_biases:
        vectors += model.item_bias
    for row in range(2):
        ref_ids, _ = dense_top(vectors[row], candidates, set(R[row].indices.tolist()), 6)
        assert folded[row][:len(ref_ids)].tolist() == ref_ids.tolist()


def test_recommend_among_candidates_matches_implicit_and_refuses_what_implicit_refuses():
    R = interactions(20, 40, seed=9)
    model = fitted(R)
    twin = implicit_twin(model)
    C = confidences(R, ALPHA)
    candidates = [3, 7, 8, 11, 19, 20, 25, 31, 39]
    for user in range(20):
        ids, scores = model.recommend(user, R[user], N=4, items=candidates)
        ref_ids, ref_scores = twin.recommend(user, C[user], N=4, items=candidates)
        keep = ids >= 0  # implicit pads with its own filler where liked candidates left fewer than N
        assert ids[keep].tolist() == ref_ids[:keep.sum()].tolist()
        np.testing.assert_allclose(scores[keep], ref_scores[:keep.sum()], rtol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        model.recommend(0, R[0], items=candidates, filter_items=[1])
    with pytest.raises(ValueError, match=r"\[0, 40\)"):
        model.recommend(0, R[0], items=[3, 40])
    with pytest.raises(ValueError, match="non-empty"):
        model.recommend(0, R[0], items=[])


def test_similar_users_is_the_cosine_ranking_without_the_user_itself():
    R = interactions(30, 40, seed=11)
    model = fitted(R)
    U = model.user_factors.astype(np.float64)
    cosine = (U @ U.T) / np.outer(np.linalg.norm(U, axis=1), np.linalg.norm(U, axis=1))
    twin = implicit_twin(model)
    for user in range(30):
        ids, scores = model.similar_users(user, N=5)
        ref_ids, ref_scores = dense_top(cosine[user], np.arange(30), {user}, 5)
        assert ids.tolist() == ref_ids.tolist()
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
        implicit_ids, _ = twin.similar_users(user, N=6)  # implicit lists the user itself first
        assert [int(i) for i in implicit_ids if i != user][:5] == ids.tolist()
        among = [2, 5, user, 9, 14, 27]
        ids, scores = model.similar_users(user, N=10, users=among)
        ref_ids, _ = dense_top(cosine[user], np.unique(among), {user}, 10)
        assert ids[:len(ref_ids)].tolist() == ref_ids.tolist() and (ids[len(ref_ids):] == -1).all()
    batch, _ = model.similar_users(np.array([0, 3]), N=4, filter_users=[1, 2])
    for row, user in enumerate((0, 3)):
        assert batch[row].tolist() == dense_top(cosine[user], np.arange(30), {user, 1, 2}, 4)[0].tolist()
    with pytest.raises(ValueError, match="not both"):
        model.similar_users(0, users=[1, 2], filter_users=[3])
