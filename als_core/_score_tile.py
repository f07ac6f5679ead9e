"""A register-blocked score tile for `topk.score_top_n`, written in LLVM IR through a numba intrinsic.

``score_tile(users, row0, packed, strip, thresholds, offsets, out, masks)`` computes, for the ``ROWS`` users
``users[row0:row0 + ROWS]`` and the items of one strip of ``packed`` (shape (strips, factors, width):
the strip's item factors transposed, ``width`` items side by side), the scores
``out[r, j] = users[row0 + r] . items[strip * width + j] + offsets[strip * width + j]`` and per user a
bitmask ``masks[r]`` of the items scoring at or above ``thresholds[r]`` (NaN never sets a bit).

Why not BLAS: with 64 factors a matrix product does 64 multiply-adds per score it writes, so a BLAS call
(which packs both inputs, zeroes its output and writes every score to memory for a second pass to read)
runs at about 60% of the matrix-product peak before any selection. Here the ``ROWS x width`` scores live in
vector registers for the whole factor loop (one fused multiply-add per register per factor, the item vector
loaded once for all rows, the user's factor broadcast once for all vectors) and the comparison with each
user's threshold happens while they are there: the selection reads only the few items that can enter a list.
numba's own loops do not get this register blocking from LLVM, hence the IR.

The vector width follows the host: 512-bit registers (32 of them) with AVX-512, 256-bit (16) without; the
tile keeps ``ROWS * VECTORS`` accumulators plus the item vectors within the register file.

topk.py's cached kernel compiles this IR into itself, and numba's cache checks only the file of the cached
function: after changing this one, touch als_core/topk.py (or clear its __pycache__) as well.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

_WIDE = bool(llvm.get_host_cpu_features().get("avx512f"))
_VECTOR_BYTES = 64 if _WIDE else 32
ROWS = 6  # users per tile
VECTORS = 4 if _WIDE else 2  # item vectors per tile: 6 x 4 accumulators + 4 item vectors + 1 broadcast <= 32


def strip_width(dtype) -> int:
    """Items per strip (and bits used in each mask) for factors of ``dtype``."""
    return VECTORS * _VECTOR_BYTES // np.dtype(dtype).itemsize


@intrinsic
def score_tile(typingctx, users, row0, packed, strip, thresholds, offsets, out, masks):
    sig = types.void(users, row0, packed, strip, thresholds, offsets, out, masks)

    def codegen(context, builder, signature, args):
        users_v, row0_v, packed_v, strip_v, thr_v, off_v, out_v, masks_v = args
        u_arr = context.make_array(signature.args[0])(context, builder, users_v)
        p_arr = context.make_array(signature.args[2])(context, builder, packed_v)
        t_arr = context.make_array(signature.args[4])(context, builder, thr_v)
        o_arr = context.make_array(signature.args[5])(context, builder, off_v)
        c_arr = context.make_array(signature.args[6])(context, builder, out_v)
        m_arr = context.make_array(signature.args[7])(context, builder, masks_v)
        elem = context.get_value_type(signature.args[0].dtype)
        itemsize = context.get_abi_sizeof(elem)
        lanes = _VECTOR_BYTES // itemsize
        width = VECTORS * lanes
        vec = ir.VectorType(elem, lanes)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        k = cgutils.unpack_tuple(builder, u_arr.shape)[1]
        row0 = context.cast(builder, row0_v, signature.args[1], types.int64)
        strip = context.cast(builder, strip_v, signature.args[3], types.int64)
        zero_vec = ir.Constant(vec, [ir.Constant(elem, 0.0)] * lanes)
        splat_mask = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                             f"llvm.fma.v{lanes}f{8 * itemsize}")

        def splat(scalar):
            one = builder.insert_element(ir.Constant(vec, ir.Undefined), scalar, ir.Constant(i32, 0))
            return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), splat_mask)

        def load_vec(base, index):
            return builder.load(builder.bitcast(builder.gep(base, [index]), vec.as_pointer()), align=itemsize)

        users_base = builder.gep(u_arr.data, [builder.mul(row0, k)])
        strip_base = builder.gep(p_arr.data, [builder.mul(builder.mul(strip, k), ir.Constant(i64, width))])

        entry = builder.block
        loop = builder.append_basic_block("tile_loop")
        done = builder.append_basic_block("tile_done")
        builder.cbranch(builder.icmp_signed(">", k, ir.Constant(i64, 0)), loop, done)

        builder.position_at_end(loop)
        f = builder.phi(i64)
        acc = [[builder.phi(vec) for _ in range(VECTORS)] for _ in range(ROWS)]
        items = [load_vec(strip_base, builder.add(builder.mul(f, ir.Constant(i64, width)),
                                                  ir.Constant(i64, j * lanes))) for j in range(VECTORS)]
        new = []
        for r in range(ROWS):
            factor = builder.load(builder.gep(users_base, [builder.add(builder.mul(ir.Constant(i64, r), k), f)]))
            u = splat(factor)
            new.append([builder.call(fma, [u, items[j], acc[r][j]]) for j in range(VECTORS)])
        f_next = builder.add(f, ir.Constant(i64, 1))
        builder.cbranch(builder.icmp_signed("<", f_next, k), loop, done)
        f.add_incoming(ir.Constant(i64, 0), entry)
        f.add_incoming(f_next, loop)
        for r in range(ROWS):
            for j in range(VECTORS):
                acc[r][j].add_incoming(zero_vec, entry)
                acc[r][j].add_incoming(new[r][j], loop)

        builder.position_at_end(done)
        totals = [[builder.phi(vec) for _ in range(VECTORS)] for _ in range(ROWS)]  # phis lead the block
        for r in range(ROWS):
            for j in range(VECTORS):
                totals[r][j].add_incoming(zero_vec, entry)
                totals[r][j].add_incoming(new[r][j], loop)
        offsets_base = builder.gep(o_arr.data, [builder.mul(strip, ir.Constant(i64, width))])
        offsets = [load_vec(offsets_base, ir.Constant(i64, j * lanes)) for j in range(VECTORS)]
        for r in range(ROWS):
            threshold = splat(builder.load(builder.gep(t_arr.data, [ir.Constant(i64, r)])))
            mask = ir.Constant(i64, 0)
            for j in range(VECTORS):
                score = builder.fadd(totals[r][j], offsets[j])
                target = builder.bitcast(builder.gep(c_arr.data, [ir.Constant(i64, r * width + j * lanes)]),
                                         vec.as_pointer())
                builder.store(score, target, align=itemsize)
                above = builder.bitcast(builder.fcmp_ordered(">=", score, threshold), ir.IntType(lanes))
                mask = builder.or_(mask, builder.shl(builder.zext(above, i64), ir.Constant(i64, j * lanes)))
            builder.store(mask, builder.gep(m_arr.data, [ir.Constant(i64, r)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def lowest_bit(typingctx, mask):
    """Index of the lowest set bit of a nonzero int64."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return sig, codegen
