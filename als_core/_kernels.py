"""Numba hot loops for ALS half-steps, parallel over rows.

Every half-step solves, for each row u (a user when solving users, an item when solving items),

    (G + reg_u * I + sum_{i in N(u)} w_ui * y_i y_i^T) x_u = sum_{i in N(u)} t_ui * y_i

over u's own nonzeros only. ``G`` is computed once per half-step by the caller (YtY in implicit mode, zero in
explicit mode); ``w`` and ``t`` are per-nonzero weights (implicit: w = c - 1, t = c; explicit: w = 1,
t = residual target). One formulation serves both modes and both solvers.

The exact solver gathers each row's scaled item vectors into a small buffer and accumulates the gram with
BLAS ``syrk``, then solves with LAPACK ``posv`` (Cholesky); both are called through scipy's Cython BLAS/LAPACK
exports, so no Python runs per row. Callers pin BLAS to one thread while these run: the parallelism is over
rows, and nested BLAS threads would oversubscribe the cores.
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numba as nb
import numpy as np
from numba.extending import get_cython_function_address

_VOID_P = ctypes.c_void_p
# rows of item vectors gathered per syrk call: bounds the scratch buffer for very popular items/heavy users
GATHER_CHUNK = 256


def _cython_function(module: str, name: str, n_args: int):
    address = get_cython_function_address(module, name)
    return ctypes.CFUNCTYPE(None, *([_VOID_P] * n_args))(address)


def _make_kernels(syrk, posv):
    """Build the kernels for one float type (the BLAS/LAPACK routines are type-specific)."""

    @nb.njit(parallel=True, fastmath=True)
    def solve_cholesky(indptr, indices, gram_w, rhs_w, Y, base, reg, out, n_blocks):
        n_rows = indptr.shape[0] - 1
        k = Y.shape[1]
        failures = 0
        for block in nb.prange(n_blocks):
            start = block * n_rows // n_blocks
            stop = (block + 1) * n_rows // n_blocks
            A = np.empty((k, k), dtype=Y.dtype)
            b = np.empty(k, dtype=Y.dtype)
            buf = np.empty((GATHER_CHUNK, k), dtype=Y.dtype)
            # Fortran arguments are passed by pointer: small arrays hold them
            ints = np.empty(4, dtype=np.int32)  # n, nrhs, rows in buf, info
            ints[0] = k
            ints[1] = 1
            chars = np.empty(2, dtype=np.uint8)
            chars[0] = 85  # 'U': fill/use one triangle (symmetric, so either works)
            chars[1] = 78  # 'N': buf is k x m column-major, syrk computes buf buf^T
            one = np.ones(1, dtype=Y.dtype)
            for u in range(start, stop):
                lo = indptr[u]
                hi = indptr[u + 1]
                if lo == hi:
                    out[u, :] = 0.0
                    continue
                A[:, :] = base
                for f in range(k):
                    A[f, f] += reg[u]
                    b[f] = 0.0
                for chunk_lo in range(lo, hi, GATHER_CHUNK):
                    m = min(GATHER_CHUNK, hi - chunk_lo)
                    for j in range(m):
                        nz = chunk_lo + j
                        row = Y[indices[nz]]
                        scale = np.sqrt(gram_w[nz])
                        t = rhs_w[nz]
                        for f in range(k):
                            buf[j, f] = scale * row[f]
                            b[f] += t * row[f]
                    ints[2] = m
                    syrk(chars[0:1].ctypes, chars[1:2].ctypes, ints[0:1].ctypes, ints[2:3].ctypes,
                         one.ctypes, buf.ctypes, ints[0:1].ctypes, one.ctypes, A.ctypes, ints[0:1].ctypes)
                posv(chars[0:1].ctypes, ints[0:1].ctypes, ints[1:2].ctypes, A.ctypes, ints[0:1].ctypes,
                     b.ctypes, ints[0:1].ctypes, ints[3:4].ctypes)
                if ints[3] != 0:  # not positive definite (e.g. zero regularization): keep the old row
                    failures += 1
                    continue
                out[u, :] = b
        return failures

    return SimpleNamespace(solve_cholesky=solve_cholesky)


_F32 = _make_kernels(
    _cython_function("scipy.linalg.cython_blas", "ssyrk", 10),
    _cython_function("scipy.linalg.cython_lapack", "sposv", 8),
)
_F64 = _make_kernels(
    _cython_function("scipy.linalg.cython_blas", "dsyrk", 10),
    _cython_function("scipy.linalg.cython_lapack", "dposv", 8),
)


def kernels_for(dtype) -> SimpleNamespace:
    return _F32 if np.dtype(dtype) == np.float32 else _F64


@nb.njit(parallel=True, fastmath=True, cache=True)
def solve_cg(indptr, indices, gram_w, rhs_w, Y, base, reg, out, cg_steps):
    """``cg_steps`` conjugate-gradient steps per row, warm-started from ``out``, without forming the matrix:
    A p = G p + reg_u p + sum_i w_ui (y_i . p) y_i costs k^2 + 2k * nnz_u."""
    n_rows = indptr.shape[0] - 1
    k = Y.shape[1]
    for u in nb.prange(n_rows):
        lo = indptr[u]
        hi = indptr[u + 1]
        if lo == hi:
            out[u, :] = 0.0
            continue
        x = out[u].copy()
        r = np.empty(k, dtype=Y.dtype)
        Ap = np.empty(k, dtype=Y.dtype)
        # r = b - A x
        for f in range(k):
            acc = reg[u] * x[f]
            for g in range(k):
                acc += base[f, g] * x[g]
            r[f] = -acc
        for nz in range(lo, hi):
            row = Y[indices[nz]]
            yx = 0.0
            for f in range(k):
                yx += row[f] * x[f]
            coef = rhs_w[nz] - gram_w[nz] * yx
            for f in range(k):
                r[f] += coef * row[f]
        p = r.copy()
        rs_old = 0.0
        for f in range(k):
            rs_old += r[f] * r[f]
        for _ in range(cg_steps):
            if rs_old < 1e-20:
                break
            for f in range(k):
                acc = reg[u] * p[f]
                for g in range(k):
                    acc += base[f, g] * p[g]
                Ap[f] = acc
            for nz in range(lo, hi):
                row = Y[indices[nz]]
                yp = 0.0
                for f in range(k):
                    yp += row[f] * p[f]
                coef = gram_w[nz] * yp
                for f in range(k):
                    Ap[f] += coef * row[f]
            pAp = 0.0
            for f in range(k):
                pAp += p[f] * Ap[f]
            if pAp <= 0.0:
                break
            step = rs_old / pAp
            rs_new = 0.0
            for f in range(k):
                x[f] += step * p[f]
                r[f] -= step * Ap[f]
                rs_new += r[f] * r[f]
            beta = rs_new / rs_old
            for f in range(k):
                p[f] = r[f] + beta * p[f]
            rs_old = rs_new
        out[u, :] = x


@nb.njit(parallel=True, fastmath=True, cache=True)
def nonzero_loss(indptr, indices, values, X, Y, implicit):
    """The part of the objective that lives on the nonzeros, in float64.

    implicit: sum c (1 - s)^2 - s^2 (the dense part sum_{all u,i} s^2 is added by the caller with a gram);
    explicit: sum (t - s)^2 where ``values`` are the targets left after biases.
    """
    n_rows = indptr.shape[0] - 1
    k = X.shape[1]
    total = 0.0
    for u in nb.prange(n_rows):
        acc = 0.0
        for nz in range(indptr[u], indptr[u + 1]):
            row = Y[indices[nz]]
            s = 0.0
            for f in range(k):
                s += X[u, f] * row[f]
            v = values[nz]
            if implicit:
                acc += v * (1.0 - s) ** 2 - s * s
            else:
                acc += (v - s) ** 2
        total += acc
    return total
