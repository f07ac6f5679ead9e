"""The exact half-step kernel (systems factored a batch at a time, vector lanes across rows) against dense solves."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from als_core import _kernels, _simd


def problem(n_rows, n_fixed, k, dtype, seed=0):
    """Rows of varied lengths: empty ones, one longer than a syrk gather chunk, a count that leaves a part batch."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 12, n_rows)
    lengths[::7] = 0
    lengths[3] = _kernels.GATHER_CHUNK + 37
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = np.concatenate([rng.choice(n_fixed, n, replace=False) for n in lengths]).astype(np.int64)
    gram_w = rng.random(indptr[-1]).astype(dtype) * 3
    rhs_w = (1 + gram_w).astype(dtype)
    Y = (rng.normal(size=(n_fixed, k)) / np.sqrt(k)).astype(dtype)
    base = (Y.T @ Y).astype(dtype)
    reg = rng.random(n_rows).astype(dtype) + 0.1
    return indptr, indices, gram_w, rhs_w, Y, base, reg


def dense_rows(indptr, indices, gram_w, rhs_w, Y, base, reg):
    """Each row's system, its solution and objective term (constant - b.x) in float64."""
    Y64 = Y.astype(np.float64)
    for u in range(len(indptr) - 1):
        nz = slice(indptr[u], indptr[u + 1])
        Yu = Y64[indices[nz]]
        A = base + reg[u] * np.eye(Y.shape[1]) + Yu.T @ (gram_w[nz, None] * Yu)
        b = Yu.T @ rhs_w[nz]
        x = np.linalg.solve(A, b)
        yield u, x, float(rhs_w[nz].sum()) - b @ x


@pytest.mark.parametrize("k", [3, 16, 65])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_match_dense_solves(k, dtype):
    n_rows = 3 * _simd.lanes(dtype) + 5
    args = problem(n_rows, 400, k, dtype)
    out = np.full((n_rows, k), 7.0, dtype=dtype)
    failures, objective = _kernels.kernels_for(dtype).solve_cholesky(*args, out, 4, True)
    assert failures == 0
    tolerance = 2e-3 if dtype == np.float32 else 1e-9
    expected_objective = 0.0
    indptr = args[0]
    for u, x, term in dense_rows(*args):
        if indptr[u] == indptr[u + 1]:
            assert not out[u].any()  # a row without nonzeros solves to zero
            continue
        np.testing.assert_allclose(out[u], x, rtol=tolerance, atol=tolerance * np.abs(x).max())
        expected_objective += term
    assert objective == pytest.approx(expected_objective, rel=tolerance)


def test_rows_that_are_not_positive_definite_keep_their_factors():
    """As LAPACK's posv reports them: a row whose system is not positive definite (here a negative
    regularisation larger than its gram, or NaN) keeps its previous factors and is counted; the other rows
    of its batch are solved as usual."""
    dtype = np.float32
    n_rows = 2 * _simd.lanes(dtype)
    indptr, indices, gram_w, rhs_w, Y, base, reg = problem(n_rows, 400, 8, dtype, seed=1)
    bad = [u for u in (1, 2, 5, 20) if indptr[u] < indptr[u + 1]]
    reg[bad[:-1]] = -1e4
    reg[bad[-1]] = np.nan
    previous = np.random.default_rng(2).normal(size=(n_rows, 8)).astype(dtype)
    out = previous.copy()
    failures, _ = _kernels.kernels_for(dtype).solve_cholesky(indptr, indices, gram_w, rhs_w, Y, base, reg, out, 2,
                                                             True)
    assert failures == len(bad)
    np.testing.assert_array_equal(out[bad], previous[bad])
    for u, x, _ in dense_rows(indptr, indices, gram_w, rhs_w, Y, base, reg):
        if u not in bad and indptr[u] < indptr[u + 1]:
            np.testing.assert_allclose(out[u], x, rtol=2e-3, atol=2e-3 * np.abs(x).max())
