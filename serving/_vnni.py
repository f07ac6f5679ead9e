"""int8 dot products of 16 items at once with AVX-512 VNNI (`vpdpbusd`), for serving/scoring.py's kernel.

The per-request scan of every item (serving/scoring.py, step 1) reads 64 bytes per item and spends most of its
time widening int8 to float or int32: LLVM vectorises it along each item's 64 components and then reduces every
item's vector to one number. `vpdpbusd` multiplies 64 unsigned bytes by 64 signed bytes and adds each group of
four products into one of 16 int32 lanes, one instruction per 64 bytes. With the items stored in tiles of 16
(4 components of each item in turn, the `tile_layout` below), a lane is an item: 16 instructions give the 16
items' full dot products and nothing is reduced across lanes. numba has no such operation, so `dot_tile` is
written in LLVM IR; `AVAILABLE` says whether this CPU (and so LLVM's target) has the instruction, and the
kernel is only used where it does.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import config, types
from numba.extending import intrinsic

TILE = 16  # items per tile: one int32 lane each in a 512-bit vector
GROUP = 4  # components per lane and instruction
OFFSET = 128  # item bytes are stored as q + 128 (the instruction's unsigned operand)

_features = llvm.get_host_cpu_features()
# numba compiles for this CPU unless told another (NUMBA_CPU_NAME, e.g. "generic" for portable caches), and a
# target without the instruction cannot compile it
AVAILABLE = bool(_features.get("avx512f") and _features.get("avx512vnni")
                 and config.CPU_NAME in (None, "host") and not config.CPU_FEATURES)


def tile_layout(q: np.ndarray) -> np.ndarray:
    """int8 rows (items x components) as int32 words ordered tile, group of 4 components, item in the tile: the
    word for item ``16 t + l`` and components ``4 g .. 4 g + 3`` is at ``(t * groups + g) * 16 + l``. Items are
    padded to a whole tile and components to a whole group with zeros (stored as OFFSET, multiplied by 0)."""
    n_items, k = q.shape
    groups = -(-k // GROUP)
    tiles = -(-n_items // TILE)
    padded = np.zeros((tiles * TILE, groups * GROUP), np.int16)
    padded[:n_items, :k] = q
    stored = (padded + OFFSET).astype(np.uint8)
    return np.ascontiguousarray(stored.reshape(tiles, TILE, groups, GROUP).transpose(0, 2, 1, 3)).reshape(-1).view(
        np.int32)


@intrinsic
def dot_tile(typingctx, words, start, user, out):
    """``out[l] = sum over g of the 4-byte dot products of words[start + 16 g + l] (unsigned) with user[g] (4
    signed bytes)``, for l < 16 and g < len(user): the 16 items of one tile against the user's int8 vector."""
    if not (isinstance(words, types.Array) and words.dtype == types.int32 and isinstance(user, types.Array)
            and user.dtype == types.int32 and isinstance(out, types.Array) and out.dtype == types.int32
            and isinstance(start, types.Integer)):
        return None
    signature = types.void(words, start, user, out)

    def codegen(context, builder, sig, args):
        if not AVAILABLE:  # LLVM cannot emit the instruction here; callers pass no tiles, so this never runs
            return context.get_dummy_value()
        words_v, start_v, user_v, out_v = args
        i32 = ir.IntType(32)
        vector = ir.VectorType(i32, TILE)
        intp = context.get_value_type(types.intp)
        dpbusd = builder.module.declare_intrinsic("llvm.x86.avx512.vpdpbusd.512",
                                                  fnty=ir.FunctionType(vector, [vector, vector, vector]))
        words_a = context.make_array(sig.args[0])(context, builder, words_v)
        user_a = context.make_array(sig.args[2])(context, builder, user_v)
        out_a = context.make_array(sig.args[3])(context, builder, out_v)
        words_p = builder.bitcast(words_a.data, i32.as_pointer())
        user_p = builder.bitcast(user_a.data, i32.as_pointer())
        groups = builder.extract_value(user_a.shape, 0)
        start64 = context.cast(builder, start_v, sig.args[1], types.intp)
        zero, one = ir.Constant(intp, 0), ir.Constant(intp, 1)
        empty = ir.Constant(vector, None)
        entry = builder.block
        body = builder.append_basic_block("tile.group")
        done = builder.append_basic_block("tile.done")
        builder.cbranch(builder.icmp_signed(">", groups, zero), body, done)
        builder.position_at_end(body)
        g = builder.phi(intp)
        acc = builder.phi(vector)
        g.add_incoming(zero, entry)
        acc.add_incoming(empty, entry)
        offset = builder.add(start64, builder.mul(g, ir.Constant(intp, TILE)))
        items = builder.load(builder.bitcast(builder.gep(words_p, [offset]), vector.as_pointer()), align=4)
        word = builder.load(builder.gep(user_p, [g]))
        spread = builder.shuffle_vector(builder.insert_element(ir.Constant(vector, ir.Undefined), word,
                                                               ir.Constant(i32, 0)),
                                        ir.Constant(vector, ir.Undefined), ir.Constant(vector, [0] * TILE))
        summed = builder.call(dpbusd, [acc, items, spread])
        following = builder.add(g, one)
        g.add_incoming(following, body)
        acc.add_incoming(summed, body)
        builder.cbranch(builder.icmp_signed("<", following, groups), body, done)
        builder.position_at_end(done)
        result = builder.phi(vector)
        result.add_incoming(empty, entry)
        result.add_incoming(summed, body)
        builder.store(result, builder.bitcast(out_a.data, vector.as_pointer()), align=4)
        return context.get_dummy_value()

    return signature, codegen
