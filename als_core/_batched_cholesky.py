"""Many small symmetric positive definite solves at once, in the "compact" layout of batched BLAS libraries.

A batch holds ``lanes`` independent k x k systems (``_simd.lanes``: 16 in float32, 8 in float64), interleaved
element by element: element (i, j) of system l is ``C[(i * k + j) * lanes + l]``, so one 64-byte vector holds
the same element of every system and each step of the factorisation is one vector operation across them. A
LAPACK ``posv`` per 64 x 64 system spends most of its time in call overhead and in loops too short to fill the
vector units (about 13 us per system); here the vector lanes run across systems.

Only the lower triangle (j <= i) is read and written. The factor L (A = L L^T) overwrites it, except for its
diagonal, kept as reciprocals in ``inverse_diagonal`` (the solves multiply by them).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import _simd as V

# rows of the factor computed together: their accumulators stay in registers while row j streams past them
# once per tile (8 accumulators cover the latency of the fused multiply-adds of two units)
TILE = 8


@nb.njit(cache=True)
def _check_pivots(pivots, at, lanes, failed):
    """Replace each pivot (the diagonal of L squared) by 1 / sqrt(pivot); a lane whose pivot is not positive
    (the matrix is not positive definite, as LAPACK's ``potrf`` checks: <= 0 or NaN) is marked failed and goes
    on with pivot 1, which keeps its arithmetic finite without touching the other lanes. Compiled without
    fastmath so that NaN is caught."""
    for lane in range(lanes):
        pivot = pivots[at + lane]
        if not pivot > 0.0:
            failed[lane] = 1
            pivot = 1.0
        pivots[at + lane] = 1.0 / np.sqrt(pivot)


@nb.njit(cache=True)
def factor(C, k, lanes, inverse_diagonal, failed):
    """Cholesky factorisation of the batch in place (lower triangle), Cholesky-Banachiewicz order.

    Rows are taken TILE at a time: for each column j left of the tile, the tile's eight entries of column j
    are finished from row j (complete by then) with eight independent accumulators, so the tile's rows stay
    in L1 while the rows above stream through once. The tile's own triangle is then finished column by column.
    ``failed[lane]`` is set for systems that are not positive definite.
    """
    row = k * lanes
    for top in range(0, k, TILE):
        end = min(top + TILE, k)
        if end - top == TILE:
            r0 = top * row
            r1 = r0 + row
            r2 = r1 + row
            r3 = r2 + row
            r4 = r3 + row
            r5 = r4 + row
            r6 = r5 + row
            r7 = r6 + row
            # columns left of the tile, and the tile's own columns' sums over those (finished below); for rows
            # above the diagonal inside the tile this writes the unused upper triangle, never read
            for j in range(end):
                above = j * row
                at = j * lanes
                a0 = V.load(C, r0 + at)
                a1 = V.load(C, r1 + at)
                a2 = V.load(C, r2 + at)
                a3 = V.load(C, r3 + at)
                a4 = V.load(C, r4 + at)
                a5 = V.load(C, r5 + at)
                a6 = V.load(C, r6 + at)
                a7 = V.load(C, r7 + at)
                for p in range(min(j, top)):
                    q = p * lanes
                    y = V.load(C, above + q)
                    a0 = V.fnma(V.load(C, r0 + q), y, a0)
                    a1 = V.fnma(V.load(C, r1 + q), y, a1)
                    a2 = V.fnma(V.load(C, r2 + q), y, a2)
                    a3 = V.fnma(V.load(C, r3 + q), y, a3)
                    a4 = V.fnma(V.load(C, r4 + q), y, a4)
                    a5 = V.fnma(V.load(C, r5 + q), y, a5)
                    a6 = V.fnma(V.load(C, r6 + q), y, a6)
                    a7 = V.fnma(V.load(C, r7 + q), y, a7)
                if j < top:
                    scale = V.load(inverse_diagonal, at)
                    a0 = V.mul(a0, scale)
                    a1 = V.mul(a1, scale)
                    a2 = V.mul(a2, scale)
                    a3 = V.mul(a3, scale)
                    a4 = V.mul(a4, scale)
                    a5 = V.mul(a5, scale)
                    a6 = V.mul(a6, scale)
                    a7 = V.mul(a7, scale)
                V.store(C, r0 + at, a0)
                V.store(C, r1 + at, a1)
                V.store(C, r2 + at, a2)
                V.store(C, r3 + at, a3)
                V.store(C, r4 + at, a4)
                V.store(C, r5 + at, a5)
                V.store(C, r6 + at, a6)
                V.store(C, r7 + at, a7)
        else:  # a last tile of fewer rows: the same sums, a row at a time
            for i in range(top, end):
                ri = i * row
                for j in range(i + 1):
                    above = j * row
                    a = V.load(C, ri + j * lanes)
                    for p in range(min(j, top)):
                        a = V.fnma(V.load(C, ri + p * lanes), V.load(C, above + p * lanes), a)
                    if j < top:
                        a = V.mul(a, V.load(inverse_diagonal, j * lanes))
                    V.store(C, ri + j * lanes, a)
        # the tile's triangle: the terms from columns top..j-1
        for j in range(top, end):
            above = j * row
            pivot = V.load(C, above + j * lanes)
            for p in range(top, j):
                x = V.load(C, above + p * lanes)
                pivot = V.fnma(x, x, pivot)
            V.store(inverse_diagonal, j * lanes, pivot)
            _check_pivots(inverse_diagonal, j * lanes, lanes, failed)
            scale = V.load(inverse_diagonal, j * lanes)
            for i in range(j + 1, end):
                ri = i * row
                a = V.load(C, ri + j * lanes)
                for p in range(top, j):
                    a = V.fnma(V.load(C, ri + p * lanes), V.load(C, above + p * lanes), a)
                V.store(C, ri + j * lanes, V.mul(a, scale))


@nb.njit(cache=True)
def solve(C, k, lanes, inverse_diagonal, B):
    """Solve L L^T x = b in place in ``B`` (``B[i * lanes + l]``: entry i of system l's right-hand side),
    from ``factor``'s output."""
    row = k * lanes
    # forward, L z = b: row i's dot product with z in four partial sums (one chain would wait on each add)
    for i in range(k):
        ri = i * row
        a0 = V.load(B, i * lanes)
        a1 = V.splat(B, 0.0)
        a2 = a1
        a3 = a1
        p = 0
        while p + 3 < i:
            a0 = V.fnma(V.load(C, ri + p * lanes), V.load(B, p * lanes), a0)
            a1 = V.fnma(V.load(C, ri + (p + 1) * lanes), V.load(B, (p + 1) * lanes), a1)
            a2 = V.fnma(V.load(C, ri + (p + 2) * lanes), V.load(B, (p + 2) * lanes), a2)
            a3 = V.fnma(V.load(C, ri + (p + 3) * lanes), V.load(B, (p + 3) * lanes), a3)
            p += 4
        while p < i:
            a0 = V.fnma(V.load(C, ri + p * lanes), V.load(B, p * lanes), a0)
            p += 1
        total = V.add(V.add(a0, a1), V.add(a2, a3))
        V.store(B, i * lanes, V.mul(total, V.load(inverse_diagonal, i * lanes)))
    # backward, L^T x = z: x_i is final once the rows below have been taken out; then take row i out of the rest
    for i in range(k - 1, -1, -1):
        ri = i * row
        x = V.mul(V.load(B, i * lanes), V.load(inverse_diagonal, i * lanes))
        V.store(B, i * lanes, x)
        for p in range(i):
            V.store(B, p * lanes, V.fnma(V.load(C, ri + p * lanes), x, V.load(B, p * lanes)))


@nb.njit(cache=True)
def place(C, B, grams, rhs, base, diagonal, k, lanes):
    """Put the systems ``grams[l] + base + diagonal[l] * I`` with right-hand sides ``rhs[l]`` into the lanes.

    ``grams[l]`` is as BLAS ``syrk`` leaves it with uplo 'U' in column-major order: its upper triangle, so in
    numpy's row-major indexing the lower triangle ``grams[l, i, j]``, j <= i; ``base`` is symmetric. Each
    element is gathered across the lanes and written as one vector: the batch's matrix (tens of KiB per lane)
    is written once, a cache line at a time, instead of one element per line per lane."""
    row = k * lanes
    for i in range(k):
        for j in range(i + 1):
            at = i * row + j * lanes
            shift = base[i, j]
            for lane in range(lanes):
                C[at + lane] = grams[lane, i, j] + shift
        at = i * row + i * lanes
        for lane in range(lanes):
            C[at + lane] += diagonal[lane]
            B[i * lanes + lane] = rhs[lane, i]


@nb.njit(cache=True)
def place_identity(C, B, lane, k, lanes):
    """Fill an unused lane with the identity and a zero right-hand side (a solve that cannot fail)."""
    row = k * lanes
    for i in range(k):
        ri = i * row + lane
        for j in range(i):
            C[ri + j * lanes] = 0.0
        C[ri + i * lanes] = 1.0
        B[i * lanes + lane] = 0.0
