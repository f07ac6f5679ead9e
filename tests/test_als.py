"""ALS against exact dense solutions, against `implicit`, and on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from als_core import ALS

K = 6
REG = 0.1
ALPHA = 5.0


def random_user_items(n_users=40, n_items=30, density=0.15, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density) * rng.integers(1, 5, (n_users, n_items))
    dense[0] = 0  # a user without interactions
    return sp.csr_matrix(dense.astype(np.float32))


def start_factors(n_users, n_items, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_users, K)).astype(np.float32), rng.normal(size=(n_items, K)).astype(np.float32)


def dense_implicit_solve(R: np.ndarray, fixed: np.ndarray, reg_per_row: np.ndarray) -> np.ndarray:
    """Exact weighted least squares per row: (Y^T C_u Y + reg I) x = Y^T C_u p_u."""
    C = 1 + ALPHA * R
    P = (R > 0).astype(float)
    Y = fixed.astype(np.float64)
    out = np.zeros((R.shape[0], Y.shape[1]))
    for u in range(R.shape[0]):
        if not R[u].any():
            continue
        A = Y.T @ (C[u][:, None] * Y) + reg_per_row[u] * np.eye(Y.shape[1])
        out[u] = np.linalg.solve(A, Y.T @ (C[u] * P[u]))
    return out


def implicit_objective(R, X, Y, reg_users, reg_items) -> float:
    C = 1 + ALPHA * R
    P = (R > 0).astype(float)
    S = X.astype(np.float64) @ Y.astype(np.float64).T
    data = float((C * (P - S) ** 2).sum())
    regs = float(reg_users @ (X.astype(np.float64) ** 2).sum(1) + reg_items @ (Y.astype(np.float64) ** 2).sum(1))
    return (data + regs) / C.sum()


def warm_model(R_csr, **params) -> ALS:
    model = ALS(factors=K, regularization=REG, alpha=ALPHA, iterations=1, random_state=0, **params)
    model.user_factors, model.item_factors = start_factors(*R_csr.shape)
    return model


@pytest.mark.parametrize("weighted", [False, True])
def test_cholesky_half_steps_match_dense_solution(weighted):
    R_csr = random_user_items()
    R = R_csr.toarray().astype(np.float64)
    model = warm_model(R_csr, solver="cholesky", weighted_regularization=weighted)
    _, Y0 = start_factors(*R.shape)
    model.fit(R_csr)
    reg_users = REG * ((R > 0).sum(1) if weighted else np.ones(R.shape[0]))
    reg_items = REG * ((R > 0).sum(0) if weighted else np.ones(R.shape[1]))
    X1 = dense_implicit_solve(R, Y0, reg_users)
    np.testing.assert_allclose(model.user_factors, X1, rtol=1e-4, atol=1e-4 * np.abs(X1).max())
    Y1 = dense_implicit_solve(R.T, model.user_factors, reg_items)
    np.testing.assert_allclose(model.item_factors, Y1, rtol=1e-4, atol=1e-4 * np.abs(Y1).max())
    assert np.all(model.user_factors[0] == 0), "a user without interactions gets zero factors"
    expected_loss = implicit_objective(R, model.user_factors, model.item_factors, reg_users, reg_items)
    assert model.loss_history[0] == pytest.approx(expected_loss, rel=1e-4)


def test_cg_converges_to_exact_solution_as_steps_grow():
    R_csr = random_user_items(seed=3)
    R = R_csr.toarray().astype(np.float64)
    _, Y0 = start_factors(*R.shape)
    exact = dense_implicit_solve(R, Y0, REG * np.ones(R.shape[0]))
    errors = []
    for steps in (1, 2, 4, 12):
        model = warm_model(R_csr, solver="cg", cg_steps=steps)
        model.fit(R_csr)
        errors.append(np.abs(model.user_factors - exact).max() / np.abs(exact).max())
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 1e-3, errors


def dense_cg_half_step(R, fixed, start, reg, steps):
    """``steps`` textbook CG steps per row on (Y^T C_u Y + reg I) x = Y^T C_u p_u from ``start``, in float64
    and in the basis the factors are given in (as `implicit` does it)."""
    C, P = 1 + ALPHA * R, (R > 0).astype(float)
    Y = fixed.astype(np.float64)
    out = np.zeros((R.shape[0], Y.shape[1]))
    for u in range(R.shape[0]):
        if not R[u].any():
            continue
        A = Y.T @ (C[u][:, None] * Y) + reg * np.eye(Y.shape[1])
        x = start[u].astype(np.float64)
        r = Y.T @ (C[u] * P[u]) - A @ x
        p, rs = r.copy(), r @ r
        for _ in range(steps):
            step = rs / (p @ A @ p)
            x, r = x + step * p, r - step * (A @ p)
            p, rs = r + (r @ r) / rs * p, r @ r
        out[u] = x
    return out


def test_cg_iterates_match_textbook_cg_in_the_factors_own_basis():
    """The CG user half-step runs in the eigenbasis of Y^T Y; the factors it returns are the same as plain CG's."""
    R_csr = random_user_items(n_users=60, n_items=30, density=0.3, seed=31)
    R = R_csr.toarray().astype(np.float64)
    X, Y = start_factors(*R.shape)
    for _ in range(3):
        X = dense_cg_half_step(R, Y, X, REG, steps=2)
        Y = dense_cg_half_step(R.T, X, Y, REG, steps=2)
    model = warm_model(R_csr, solver="cg", cg_steps=2)
    model.iterations = 3
    model.fit(R_csr)
    np.testing.assert_allclose(model.user_factors, X, atol=1e-4 * np.abs(X).max())
    np.testing.assert_allclose(model.item_factors, Y, atol=1e-4 * np.abs(Y).max())


def test_interrupted_cg_fit_leaves_factors_in_their_own_basis():
    R_csr = random_user_items(seed=37)

    def stop_after_two(iteration, loss, seconds):
        if iteration == 1:
            raise KeyboardInterrupt

    two = warm_model(R_csr, solver="cg")
    two.iterations = 2
    two.fit(R_csr)
    interrupted = warm_model(R_csr, solver="cg", callback=stop_after_two)
    interrupted.iterations = 10
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(R_csr)
    np.testing.assert_allclose(interrupted.user_factors, two.user_factors, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(interrupted.item_factors, two.item_factors, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_cg_and_cholesky_loss_agrees_with_dense_objective(solver):
    R_csr = random_user_items(seed=5)
    R = R_csr.toarray().astype(np.float64)
    model = ALS(factors=K, regularization=REG, alpha=ALPHA, iterations=4, solver=solver, random_state=2).fit(R_csr)
    ones_u, ones_i = REG * np.ones(R.shape[0]), REG * np.ones(R.shape[1])
    expected = implicit_objective(R, model.user_factors, model.item_factors, ones_u, ones_i)
    assert model.loss_history[-1] == pytest.approx(expected, rel=1e-3)


def test_cholesky_loss_never_increases():
    R_csr = random_user_items(n_users=80, n_items=50, seed=7)
    model = ALS(factors=8, regularization=REG, alpha=ALPHA, iterations=12, solver="cholesky", random_state=0)
    model.fit(R_csr)
    losses = np.array(model.loss_history)
    assert len(losses) == 12
    assert np.all(np.diff(losses) <= 1e-6 * losses[:-1]), losses


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_fixed_seed_and_threads_give_identical_factors(solver):
    R_csr = random_user_items(n_users=200, n_items=60, seed=11)
    fits = [ALS(factors=8, iterations=3, solver=solver, random_state=42, num_threads=2).fit(R_csr) for _ in range(2)]
    np.testing.assert_array_equal(fits[0].user_factors, fits[1].user_factors)
    np.testing.assert_array_equal(fits[0].item_factors, fits[1].item_factors)
    assert fits[0].loss_history == fits[1].loss_history  # blocks are handed out dynamically, summed in order
    other_seed = ALS(factors=8, iterations=3, solver=solver, random_state=43, num_threads=2).fit(R_csr)
    assert not np.array_equal(fits[0].item_factors, other_seed.item_factors)


def dense_explicit_solve(R, fixed, reg, target_offsets=None, with_bias=False):
    """Least squares over observed ratings only; with_bias appends a constant column to ``fixed``."""
    Y = fixed.astype(np.float64)
    if with_bias:
        Y = np.hstack([Y, np.ones((Y.shape[0], 1))])
    out = np.zeros((R.shape[0], Y.shape[1]))
    for u in range(R.shape[0]):
        seen = R[u] != 0
        if not seen.any():
            continue
        target = R[u, seen] - (target_offsets[seen] if target_offsets is not None else 0)
        A = Y[seen].T @ Y[seen] + reg * np.eye(Y.shape[1])
        out[u] = np.linalg.solve(A, Y[seen].T @ target)
    return out


def test_explicit_half_steps_match_dense_solution_without_biases():
    R_csr = random_user_items(seed=13)
    R = R_csr.toarray().astype(np.float64)
    model = warm_model(R_csr, solver="cholesky", implicit=False)
    _, Y0 = start_factors(*R.shape)
    model.fit(R_csr)
    np.testing.assert_allclose(model.user_factors, dense_explicit_solve(R, Y0, REG), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.item_factors, dense_explicit_solve(R.T, model.user_factors, REG),
                               rtol=1e-4, atol=1e-4)


def test_explicit_half_steps_match_dense_solution_with_biases():
    R_csr = random_user_items(seed=17)
    R = R_csr.toarray().astype(np.float64)
    model = warm_model(R_csr, solver="cholesky", implicit=False, use_biases=True)
    _, Y0 = start_factors(*R.shape)
    model.fit(R_csr)
    mu = R[R != 0].mean()
    assert model.global_mean == pytest.approx(mu)
    # users: [x_u, b_u] against [y_i, 1] with targets r - mu - b_i (item biases start at 0)
    users = dense_explicit_solve(R - mu * (R != 0), Y0, REG, with_bias=True)
    np.testing.assert_allclose(model.user_factors, users[:, :K], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.user_bias, users[:, K], rtol=1e-4, atol=1e-4)
    shifted = (R.T - mu - model.user_bias[None, :].astype(np.float64)) * (R.T != 0)
    items = dense_explicit_solve(np.where(R.T != 0, shifted, 0), model.user_factors, REG, with_bias=True)
    np.testing.assert_allclose(model.item_factors, items[:, :K], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.item_bias, items[:, K], rtol=1e-4, atol=1e-4)
    pred = model.predict(np.array([1, 2]), np.array([3, 4]))
    expected = [mu + model.user_bias[u] + model.item_bias[i] + model.user_factors[u] @ model.item_factors[i]
                for u, i in [(1, 3), (2, 4)]]
    np.testing.assert_allclose(pred, expected, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:OpenBLAS is configured")
def test_factors_and_loss_agree_with_implicit_cholesky():
    implicit_als = pytest.importorskip("implicit.cpu.als")
    from implicit.cpu import _als
    from threadpoolctl import threadpool_limits

    R_csr = random_user_items(n_users=120, n_items=70, density=0.1, seed=19)
    confidences = R_csr.copy()
    confidences.data = 1 + ALPHA * confidences.data  # implicit takes the stored value as the confidence
    theirs = implicit_als.AlternatingLeastSquares(factors=K, regularization=REG, alpha=1.0, iterations=3,
                                                  use_cg=False, random_state=0)
    X0, Y0 = start_factors(*R_csr.shape)
    theirs.user_factors, theirs.item_factors = X0.copy(), Y0.copy()
    with threadpool_limits(1, "blas"):
        theirs.fit(confidences, show_progress=False)
        their_loss = _als.calculate_loss(confidences, theirs.user_factors, theirs.item_factors, REG)
    ours = warm_model(R_csr, solver="cholesky")
    ours.iterations = 3
    ours.fit(R_csr)
    scale = np.abs(theirs.item_factors).max()
    np.testing.assert_allclose(ours.item_factors, theirs.item_factors, atol=1e-4 * scale)
    np.testing.assert_allclose(ours.user_factors, theirs.user_factors, atol=1e-4 * np.abs(theirs.user_factors).max())
    assert ours.loss_history[-1] == pytest.approx(their_loss, rel=1e-4)


def test_tol_stops_early_and_callback_sees_every_iteration():
    R_csr = random_user_items(seed=23)
    seen = []
    model = ALS(factors=K, iterations=50, solver="cholesky", tol=1e-2, random_state=0,
                callback=lambda it, loss, secs: seen.append((it, loss, secs)))
    model.fit(R_csr)
    assert 2 <= len(model.loss_history) < 50
    assert [s[0] for s in seen] == list(range(len(model.loss_history)))
    assert [s[1] for s in seen] == model.loss_history
    assert all(s[2] >= 0 for s in seen)


# ---------------------------------------------------------------- the objective of given factors


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_objective_of_the_fitted_factors_is_the_last_loss(solver, weighted):
    R_csr = random_user_items(n_users=300, n_items=120, density=0.08, seed=41)
    model = ALS(factors=8, regularization=0.5, alpha=ALPHA, iterations=4, solver=solver,
                weighted_regularization=weighted, random_state=3).fit(R_csr)
    assert model.objective(R_csr) == pytest.approx(model.loss_history[-1], rel=1e-6)


def test_objective_of_explicit_factors_with_biases_is_the_last_loss():
    R_csr = random_user_items(seed=43)
    model = ALS(factors=K, regularization=REG, implicit=False, use_biases=True, iterations=3, solver="cholesky",
                random_state=0).fit(R_csr)
    assert model.objective(R_csr) == pytest.approx(model.loss_history[-1], rel=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_objective_of_any_factors_is_the_dense_objective(weighted):
    """Factors no fit produced (as another engine's would be) get the objective itself, not a constant."""
    R_csr = random_user_items(seed=47)
    R = R_csr.toarray().astype(np.float64)
    model = ALS(factors=K, regularization=REG, alpha=ALPHA, weighted_regularization=weighted)
    reg_users = REG * ((R > 0).sum(1) if weighted else np.ones(R.shape[0]))
    reg_items = REG * ((R > 0).sum(0) if weighted else np.ones(R.shape[1]))
    values = []
    for seed in (1, 2):
        model.user_factors, model.item_factors = start_factors(*R.shape, seed=seed)
        values.append(model.objective(R_csr))
        expected = implicit_objective(R, model.user_factors, model.item_factors, reg_users, reg_items)
        assert values[-1] == pytest.approx(expected, rel=1e-9)
    assert values[0] != pytest.approx(values[1], rel=1e-3)
    with pytest.raises(ValueError, match="model has"):
        model.objective(R_csr[:, :-1])


# ---------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def fitted():
    R_csr = random_user_items(n_users=60, n_items=25, density=0.2, seed=29)
    model = ALS(factors=K, regularization=REG, iterations=5, solver="cholesky", random_state=0).fit(R_csr)
    return model, R_csr


def test_recommend_filters_seen_items_and_matches_brute_force(fitted):
    model, R_csr = fitted
    ids, scores = model.recommend(np.arange(60), R_csr, N=5)
    brute = model.user_factors @ model.item_factors.T
    brute[R_csr.toarray() > 0] = -np.inf
    for u in range(1, 60):
        expected = np.argsort(-brute[u], kind="stable")[:5]
        assert set(ids[u]) == set(expected)
        np.testing.assert_allclose(scores[u], brute[u, ids[u]], rtol=1e-5)
        assert not set(ids[u]) & set(R_csr[u].indices)
    one_ids, _ = model.recommend(7, R_csr[7], N=5)
    np.testing.assert_array_equal(one_ids, ids[7])


def test_recommend_filter_items_and_n_larger_than_catalog(fitted):
    model, R_csr = fitted
    ids, scores = model.recommend(3, R_csr[3], N=100, filter_items=[0, 1, 2])
    assert len(ids) == 25
    valid = ids[ids >= 0]
    assert not set(valid) & ({0, 1, 2} | set(R_csr[3].indices))
    assert len(valid) == 25 - len({0, 1, 2} | set(R_csr[3].indices))
    assert np.all(ids[len(valid):] == -1) and np.all(np.isneginf(scores[len(valid):]))


def test_recommend_all_equals_per_user_recommend(fitted):
    model, R_csr = fitted
    all_ids, all_scores = model.recommend_all(R_csr, N=4, batch_size=7)
    ids, scores = model.recommend(np.arange(60), R_csr, N=4)
    np.testing.assert_array_equal(all_ids, ids)
    np.testing.assert_allclose(all_scores, scores)


def test_user_without_interactions_is_served(fitted):
    model, R_csr = fitted
    ids, _ = model.recommend(0, R_csr[0], N=3)
    assert len(ids) == 3


def test_similar_items_are_cosine_neighbours_without_the_item(fitted):
    model, _ = fitted
    ids, scores = model.similar_items(4, N=3)
    assert 4 not in ids
    Y = model.item_factors / np.linalg.norm(model.item_factors, axis=1, keepdims=True)
    cosine = Y @ Y[4]
    cosine[4] = -np.inf
    np.testing.assert_array_equal(ids, np.argsort(-cosine)[:3])
    np.testing.assert_allclose(scores, cosine[ids], rtol=1e-5)


def test_recalculate_user_is_an_exact_fold_in(fitted):
    model, R_csr = fitted
    R = R_csr.toarray().astype(np.float64)
    folded = model.recalculate_user(R_csr[5])
    exact = dense_implicit_solve(R[5:6] * 1.0, model.item_factors, np.array([REG]))[0]
    # the model was trained with alpha=40 (default): recompute the exact solve with that alpha
    C = 1 + model.alpha * R[5]
    Y = model.item_factors.astype(np.float64)
    exact = np.linalg.solve(Y.T @ (C[:, None] * Y) + REG * np.eye(K), Y.T @ (C * (R[5] > 0)))
    np.testing.assert_allclose(folded.ravel(), exact, rtol=1e-3, atol=1e-4)
    ids, _ = model.recommend(0, R_csr[5], N=4, recalculate_user=True)
    assert not set(ids) & set(R_csr[5].indices)


def test_save_and_load_round_trip_without_pickle(fitted, tmp_path):
    model, R_csr = fitted
    model.save(tmp_path / "model")
    with np.load(tmp_path / "model.npz", allow_pickle=False) as data:
        assert all(data[name].dtype != object for name in data.files)
    loaded = ALS.load(tmp_path / "model.npz")
    np.testing.assert_array_equal(loaded.user_factors, model.user_factors)
    assert loaded.get_params() == model.get_params()
    assert loaded.loss_history == model.loss_history
    np.testing.assert_array_equal(loaded.recommend(2, R_csr[2])[0], model.recommend(2, R_csr[2])[0])


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad_value, message", [(-1.0, "negative"), (np.nan, "NaN"), (np.inf, "infinite")])
def test_fit_rejects_bad_values(bad_value, message):
    R = random_user_items().toarray()
    R[2, 3] = bad_value
    with pytest.raises(ValueError, match=message):
        ALS(factors=2, iterations=1).fit(sp.csr_matrix(R))


def test_fit_accepts_dense_and_coo_as_csr():
    R_csr = random_user_items(seed=31)
    reference = ALS(factors=3, iterations=2, random_state=0).fit(R_csr)
    for converted in (R_csr.toarray(), R_csr.tocoo(), R_csr.tocsc()):
        model = ALS(factors=3, iterations=2, random_state=0).fit(converted)
        np.testing.assert_allclose(model.item_factors, reference.item_factors, rtol=1e-5)


@pytest.mark.parametrize("bad", [[[1, 0], [0, 1]], "matrix", None])
def test_fit_rejects_other_types(bad):
    with pytest.raises(TypeError, match="scipy.sparse"):
        ALS(factors=2, iterations=1).fit(bad)


@pytest.mark.parametrize("empty", [sp.csr_matrix((0, 5)), sp.csr_matrix((4, 5))])
def test_fit_rejects_empty_matrices(empty):
    with pytest.raises(ValueError, match="empty|no nonzero"):
        ALS(factors=2, iterations=1).fit(empty)


def test_recommend_rejects_wrong_shapes_and_ids(fitted):
    model, R_csr = fitted
    with pytest.raises(ValueError, match="columns"):
        model.recommend(1, sp.csr_matrix((1, 24)))
    with pytest.raises(ValueError, match="rows"):
        model.recommend([1, 2], R_csr[:3])
    with pytest.raises(ValueError, match=r"\[0, 60\)"):
        model.recommend(60, R_csr[:1])
    with pytest.raises(ValueError, match="N must be"):
        model.recommend(1, R_csr[1], N=0)
    with pytest.raises(ValueError, match="not fitted"):
        ALS().recommend(0, R_csr[0])


@pytest.mark.parametrize("params", [dict(factors=0), dict(regularization=-1), dict(solver="sgd"),
                                    dict(alpha=-1), dict(use_biases=True), dict(cg_steps=0)])
def test_constructor_rejects_bad_parameters(params):
    with pytest.raises(ValueError):
        ALS(**params)


def test_fold_in_gram_follows_the_item_factors(fitted):
    model, R_csr = fitted
    before = model.recalculate_user(R_csr[5])
    np.testing.assert_array_equal(model.recalculate_user(R_csr[5]), before)  # cached gram, same answer
    original = model.item_factors
    try:
        model.item_factors = original * 2  # new factors: the gram must follow
        after = model.recalculate_user(R_csr[5])
        assert not np.allclose(after, before)
    finally:
        model.item_factors = original
    np.testing.assert_array_equal(model.recalculate_user(R_csr[5]), before)
