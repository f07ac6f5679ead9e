"""Numba hot loops for ALS half-steps, parallel over rows.

Every half-step solves, for each row u (a user when solving users, an item when solving items),

    (G + reg_u * I + sum_{i in N(u)} w_ui * y_i y_i^T) x_u = sum_{i in N(u)} t_ui * y_i

over u's own nonzeros only. ``G`` is computed once per half-step by the caller (YtY in implicit mode, zero in
explicit mode); ``w`` and ``t`` are per-nonzero weights (implicit: w = c - 1, t = c; explicit: w = 1,
t = residual target). One formulation serves both modes and both solvers.

The exact solver gathers each row's scaled item vectors into a small buffer and accumulates the gram with
BLAS ``syrk`` (called through scipy's Cython BLAS exports, so no Python runs per row), then factors and solves
the rows' systems a batch at a time, vector lanes across rows (``_batched_cholesky``). Callers pin BLAS to one
thread while these run: the parallelism is over rows, and nested BLAS threads would oversubscribe the cores.

Both solvers also return the half-step's objective, summed over its rows from quantities the solve has. The
row's objective is the quadratic x^T A x - 2 b.x + constant (constant = sum of c over the row's nonzeros in
implicit mode, sum of squared targets in explicit mode; A includes the gram G, so the implicit "all missing
pairs" part is in it). With the residual r = b - A x, x^T A x = b.x - r.x, so the objective is
constant - b.x - r.x (r = 0 for the exact solve; CG keeps its r): no extra pass over the data.
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numba as nb
import numpy as np
from numba.extending import get_cython_function_address

from als_core import _batched_cholesky, _simd
from als_core._prefetch import prefetch_row

_VOID_P = ctypes.c_void_p
# rows of item vectors gathered per syrk call: bounds the scratch buffer for very popular items/heavy users
GATHER_CHUNK = 256


def _cython_function(module: str, name: str, n_args: int):
    address = get_cython_function_address(module, name)
    return ctypes.CFUNCTYPE(None, *([_VOID_P] * n_args))(address)


# nonzeros ahead whose factor rows the gather asks for early (A/B of the CG kernel on the bench matrix:
# 4 and 16 were slower)
PREFETCH_AHEAD = 8


@nb.njit(fastmath=True, inline="always")
def _prefetch_ahead(Y, indices, nz, hi, next_lo, next_hi):
    """Ask for the factor rows of the two nonzeros PREFETCH_AHEAD after nz (running on into next_lo..next_hi)."""
    for ahead in range(nz + PREFETCH_AHEAD, nz + PREFETCH_AHEAD + 2):
        if ahead < hi:
            prefetch_row(Y, indices[ahead])
        elif next_lo + ahead - hi < next_hi:
            prefetch_row(Y, indices[next_lo + ahead - hi])


@nb.njit(fastmath=True, inline="always")
def _gather(Y, indices, gram_w, rhs_w, lo, hi, implicit, buf, first, residual, x, next_lo, next_hi):
    """Copy sqrt(w) y of nonzeros lo..hi into buf rows first.., and add (t - w (y . x)) y to ``residual``: the
    nonzeros' part of b - A x at the warm start x (CG), or of b = sum t y when ``x`` is None (Cholesky; numba
    compiles that case without the dot products). Taking it while each y is in registers saves CG a pass over
    buf and a separate sum for b. Returns the nonzeros' part of the row's objective constant (sum of t in
    implicit mode, of t^2 in explicit mode) and of b . x.

    The loads of Y's rows are random; each is prefetched PREFETCH_AHEAD nonzeros early, running on into the
    nonzeros next_lo..next_hi of the row gathered next. Two nonzeros per pass halve the read-modify-writes of
    ``residual``, whose chain through memory would otherwise bound the loop.
    """
    k = Y.shape[1]
    constant = 0.0
    b_dot_x = 0.0
    pos = first
    nz = lo
    while nz < hi:
        _prefetch_ahead(Y, indices, nz, hi, next_lo, next_hi)
        row0 = Y[indices[nz]]
        w0 = gram_w[nz]
        t0 = rhs_w[nz]
        constant += t0 if implicit else t0 * t0
        dot0 = row0[0] - row0[0]  # a zero of the factors' float type
        if nz + 1 < hi:
            row1 = Y[indices[nz + 1]]
            w1 = gram_w[nz + 1]
            t1 = rhs_w[nz + 1]
            constant += t1 if implicit else t1 * t1
            dot1 = dot0
            if x is not None:
                for f in range(k):
                    dot0 += row0[f] * x[f]
                    dot1 += row1[f] * x[f]
            scale0, scale1 = np.sqrt(w0), np.sqrt(w1)
            coef0, coef1 = t0 - w0 * dot0, t1 - w1 * dot1
            for f in range(k):
                buf[pos, f] = scale0 * row0[f]
                buf[pos + 1, f] = scale1 * row1[f]
                residual[f] += coef0 * row0[f] + coef1 * row1[f]
            b_dot_x += np.float64(t0) * dot0 + np.float64(t1) * dot1
            pos += 2
            nz += 2
        else:
            if x is not None:
                for f in range(k):
                    dot0 += row0[f] * x[f]
            scale0 = np.sqrt(w0)
            coef0 = t0 - w0 * dot0
            for f in range(k):
                buf[pos, f] = scale0 * row0[f]
                residual[f] += coef0 * row0[f]
            b_dot_x += np.float64(t0) * dot0
            pos += 1
            nz += 1
    return constant, b_dot_x


def _make_kernels(syrk, dtype):
    """Build the kernels for one float type (the BLAS routine is type-specific, and so are the vector lanes)."""
    lanes = _simd.lanes(dtype)

    # no fastmath: its no-NaN assumption reaches the pivot check of the inlined factorisation, and a NaN pivot
    # must fail the row as LAPACK's would (the hot loops are explicit vector code, which fastmath does not change)
    @nb.njit(parallel=True)
    def solve_cholesky(indptr, indices, gram_w, rhs_w, Y, base, reg, out, n_blocks, implicit):
        """Solve every row exactly: each row's gram (BLAS syrk over its gathered, scaled vectors) and
        right-hand side go into one lane of a batch; the batch is factored and solved at once. Rows whose
        system is not positive definite keep their values in ``out``; returns (their count, the objective)."""
        n_rows = indptr.shape[0] - 1
        k = Y.shape[1]
        # at least a batch of rows per block: a block's batches all cost a full batch's factorisation
        n_blocks = max(1, min(n_blocks, (n_rows + lanes - 1) // lanes))
        # per block, summed in block order after the loop: the same totals whichever thread ran which block
        failures = np.zeros(n_blocks, dtype=np.int64)
        objective = np.zeros(n_blocks, dtype=np.float64)
        for block in nb.prange(n_blocks):
            # each lane's sum of w y y^T and of t y (zeros: a lane left unused holds finite numbers)
            grams = np.zeros((lanes, k, k), dtype=Y.dtype)
            bs = np.zeros((lanes, k), dtype=Y.dtype)
            diagonal = np.empty(lanes, dtype=Y.dtype)
            buf = np.empty((GATHER_CHUNK, k), dtype=Y.dtype)
            # a batch of systems in the compact layout (zeros: the upper triangle is never placed, only read)
            C = np.zeros(k * k * lanes, dtype=Y.dtype)
            B = np.empty(k * lanes, dtype=Y.dtype)
            rhs = np.empty(k * lanes, dtype=Y.dtype)
            inverse_diagonal = np.empty(k * lanes, dtype=Y.dtype)
            failed = np.empty(lanes, dtype=np.int32)
            rows = np.empty(lanes, dtype=np.int64)
            constants = np.empty(lanes, dtype=np.float64)
            # Fortran arguments are passed by pointer: small arrays hold them
            ints = np.empty(3, dtype=np.int32)  # n, rows in buf
            ints[0] = k
            chars = np.empty(2, dtype=np.uint8)
            chars[0] = 85  # 'U': fill the upper triangle (column-major)
            chars[1] = 78  # 'N': buf is k x m column-major, syrk computes buf buf^T
            scalars = np.zeros(2, dtype=Y.dtype)  # beta 0 (the first chunk overwrites), alpha and beta 1
            scalars[1] = 1.0
            u = block + 0 * n_blocks  # a copy: numba refuses writes to the parallel loop's index
            while u < n_rows:
                # the block's next rows (every n_blocks-th), up to a batch of non-empty ones
                n = 0
                while n < lanes and u < n_rows:
                    lo = indptr[u]
                    hi = indptr[u + 1]
                    if lo == hi:
                        out[u, :] = 0.0
                        u += n_blocks
                        continue
                    b = bs[n]
                    for f in range(k):
                        b[f] = 0.0
                    constant = 0.0
                    for chunk_lo in range(lo, hi, GATHER_CHUNK):
                        m = min(GATHER_CHUNK, hi - chunk_lo)
                        part, _ = _gather(Y, indices, gram_w, rhs_w, chunk_lo, chunk_lo + m, implicit, buf, 0, b,
                                          None, 0, 0)
                        constant += part
                        ints[1] = m
                        beta = scalars[0:1] if chunk_lo == lo else scalars[1:2]
                        syrk(chars[0:1].ctypes, chars[1:2].ctypes, ints[0:1].ctypes, ints[1:2].ctypes,
                             scalars[1:2].ctypes, buf.ctypes, ints[0:1].ctypes, beta.ctypes, grams[n].ctypes,
                             ints[0:1].ctypes)
                    diagonal[n] = reg[u]
                    rows[n] = u
                    constants[n] = constant
                    n += 1
                    u += n_blocks
                if n == 0:
                    break
                _batched_cholesky.place(C, B, grams, bs, base, diagonal, k, lanes)
                for lane in range(n, lanes):
                    _batched_cholesky.place_identity(C, B, lane, k, lanes)
                rhs[:] = B
                failed[:] = 0
                _batched_cholesky.factor(C, k, lanes, inverse_diagonal, failed)
                _batched_cholesky.solve(C, k, lanes, inverse_diagonal, B)
                for lane in range(n):
                    if failed[lane]:  # not positive definite (e.g. zero regularization): keep the old row
                        failures[block] += 1
                        continue
                    row = rows[lane]
                    # the row's objective at its exact solution: constant - b.x (module docstring)
                    acc = constants[lane]
                    for f in range(k):
                        x = B[f * lanes + lane]
                        out[row, f] = x
                        acc -= np.float64(rhs[f * lanes + lane]) * x
                    objective[block] += acc
        return failures.sum(), objective.sum()

    return SimpleNamespace(solve_cholesky=solve_cholesky)


_F32 = _make_kernels(_cython_function("scipy.linalg.cython_blas", "ssyrk", 10), np.float32)
_F64 = _make_kernels(_cython_function("scipy.linalg.cython_blas", "dsyrk", 10), np.float64)


def kernels_for(dtype) -> SimpleNamespace:
    return _F32 if np.dtype(dtype) == np.float32 else _F64


# rows that step through CG together: their dense products G @ p become one BLAS matrix product
CG_BATCH = 128
# nonzeros gathered per CG batch (a row with more gets a batch, and a buffer, of its own)
CG_GATHER = 4096


@nb.njit(fastmath=True, inline="always")
def _gram_times(B, lo, hi, v, out):
    """out += B[lo:hi]^T (B[lo:hi] v): the row's sum of w_ui (y_i . v) y_i, from its gathered vectors.

    Four vectors per pass: four independent dot products in flight and a quarter of the read-modify-writes of
    out, whose chain through memory otherwise bounds the loop (CG half-steps ~1.15x faster in an A/B).
    """
    k = B.shape[1]
    j = lo
    while j + 3 < hi:
        t0 = B[j, 0] - B[j, 0]  # a zero of the factors' float type (a float64 one halves the SIMD width)
        t1 = t0
        t2 = t0
        t3 = t0
        for f in range(k):
            t0 += B[j, f] * v[f]
            t1 += B[j + 1, f] * v[f]
            t2 += B[j + 2, f] * v[f]
            t3 += B[j + 3, f] * v[f]
        for f in range(k):
            out[f] += t0 * B[j, f] + t1 * B[j + 1, f] + t2 * B[j + 2, f] + t3 * B[j + 3, f]
        j += 4
    while j < hi:
        t = B[j, 0] - B[j, 0]
        for f in range(k):
            t += B[j, f] * v[f]
        for f in range(k):
            out[f] += t * B[j, f]
        j += 1


@nb.njit(parallel=True, fastmath=True, cache=True)
def solve_cg(indptr, indices, gram_w, rhs_w, Y, base, reg, out, cg_steps, n_blocks, implicit, diagonal, rotation,
             rotate):
    """``cg_steps`` conjugate-gradient steps per row, warm-started from ``out``, without forming the matrix:
    A p = G p + reg_u p + sum_i w_ui (y_i . p) y_i.

    Each block takes every ``n_blocks``-th row (balanced even when rows are sorted by popularity) and steps
    batches of rows together: G p for the whole batch is one BLAS product, and each row's item vectors,
    scaled by sqrt(w), are gathered once into a contiguous buffer that every CG step then streams.

    ``diagonal``: G (``base``) is diagonal, so G p is an elementwise product instead of a k x k one per row
    and step. ``rotate``: the warm-start rows of ``out`` are in another basis and are multiplied by
    ``rotation`` as they are read (the caller rotated ``Y`` into the basis where G is diagonal; the rows are
    written back in that basis). Together they take the k^2 per row and step out of the user half-step.
    """
    n_rows = indptr.shape[0] - 1
    k = Y.shape[1]
    objective = np.zeros(n_blocks, dtype=np.float64)  # per block, summed in block order (as solve_cholesky)
    for block in nb.prange(n_blocks):
        rows = np.arange(block, n_rows, n_blocks)
        widest = 0
        for u in rows:
            widest = max(widest, indptr[u + 1] - indptr[u])
        B = np.empty((max(widest, CG_GATHER), k), dtype=Y.dtype)
        start = np.empty(CG_BATCH + 1, dtype=np.int64)
        Xb = np.empty((CG_BATCH, k), dtype=Y.dtype)
        R = np.empty((CG_BATCH, k), dtype=Y.dtype)
        # the warm start and its residual: b . p = r0 . p + x0 . A p tracks b . x for the objective without b
        X0 = np.empty((CG_BATCH, k), dtype=Y.dtype)
        R0 = np.empty((CG_BATCH, k), dtype=Y.dtype)
        constant = np.empty(CG_BATCH, dtype=np.float64)
        b_dot_x = np.empty(CG_BATCH, dtype=np.float64)
        P = np.empty((CG_BATCH, k), dtype=Y.dtype)
        AP = np.empty((CG_BATCH, k), dtype=Y.dtype)
        rs_old = np.empty(CG_BATCH, dtype=np.float64)
        gram_diagonal = np.empty(k, dtype=Y.dtype)
        for f in range(k):
            gram_diagonal[f] = base[f, f]
        next_row = 0
        while next_row < rows.shape[0]:
            # a batch: up to CG_BATCH rows whose nonzeros fit the buffer (at least one row)
            m = 0
            start[0] = 0
            while next_row + m < rows.shape[0] and m < CG_BATCH:
                u = rows[next_row + m]
                width = indptr[u + 1] - indptr[u]
                if m > 0 and start[m] + width > B.shape[0]:
                    break
                start[m + 1] = start[m] + width
                m += 1
            batch = rows[next_row:next_row + m]
            next_row += m
            if rotate:
                for j in range(m):
                    P[j] = out[batch[j]]
                np.dot(P[:m], rotation, Xb[:m])
            else:
                for j in range(m):
                    Xb[j] = out[batch[j]]
            if diagonal:
                for j in range(m):
                    for f in range(k):
                        AP[j, f] = gram_diagonal[f] * Xb[j, f]
            else:
                np.dot(Xb[:m], base, AP[:m])
            # gather sqrt(w) y into B and form R = b - A x (AP holds G x)
            for j in range(m):
                u = batch[j]
                for f in range(k):
                    R[j, f] = 0.0
                next_lo = next_hi = 0
                if j + 1 < m:
                    next_lo, next_hi = indptr[batch[j + 1]], indptr[batch[j + 1] + 1]
                constant[j], b_dot_x[j] = _gather(Y, indices, gram_w, rhs_w, indptr[u], indptr[u + 1], implicit, B,
                                                  start[j], R[j], Xb[j], next_lo, next_hi)
                acc = 0.0
                for f in range(k):
                    R[j, f] -= AP[j, f] + reg[u] * Xb[j, f]
                    P[j, f] = R[j, f]
                    R0[j, f] = R[j, f]
                    X0[j, f] = Xb[j, f]
                    acc += R[j, f] * R[j, f]
                rs_old[j] = acc
            for _ in range(cg_steps):
                if not diagonal:
                    np.dot(P[:m], base, AP[:m])
                for j in range(m):
                    u = batch[j]
                    if rs_old[j] < 1e-20:  # converged (or an empty row): freeze it
                        continue
                    if diagonal:
                        for f in range(k):
                            AP[j, f] = (gram_diagonal[f] + reg[u]) * P[j, f]
                    else:
                        for f in range(k):
                            AP[j, f] += reg[u] * P[j, f]
                    _gram_times(B, start[j], start[j + 1], P[j], AP[j])
                    pAp = 0.0
                    b_dot_p = 0.0
                    for f in range(k):
                        pAp += P[j, f] * AP[j, f]
                        b_dot_p += R0[j, f] * P[j, f] + X0[j, f] * AP[j, f]
                    if pAp <= 0.0:
                        rs_old[j] = 0.0
                        continue
                    step = rs_old[j] / pAp
                    b_dot_x[j] += step * b_dot_p
                    rs_new = 0.0
                    for f in range(k):
                        Xb[j, f] += step * P[j, f]
                        R[j, f] -= step * AP[j, f]
                        rs_new += R[j, f] * R[j, f]
                    beta = rs_new / rs_old[j]
                    for f in range(k):
                        P[j, f] = R[j, f] + beta * P[j, f]
                    rs_old[j] = rs_new
            for j in range(m):
                u = batch[j]
                if indptr[u] == indptr[u + 1]:
                    out[u, :] = 0.0
                else:
                    out[u, :] = Xb[j]
                    # constant - b.x - r.x (module docstring), with b.x tracked through the steps
                    r_dot_x = 0.0
                    for f in range(k):
                        r_dot_x += np.float64(R[j, f]) * Xb[j, f]
                    objective[block] += constant[j] - b_dot_x[j] - r_dot_x
    return objective.sum()
