"""Software prefetch for numba kernels.

The ALS half-steps gather rows of the other side's factors in the order of a row's nonzeros, which is random
as far as the hardware prefetcher can tell; most of the gather's time is waiting on those loads (the item
half-step reads rows of the 25 MB user factor matrix). Asking for a row several nonzeros ahead overlaps those
waits. numba has no prefetch, so this emits LLVM's ``llvm.prefetch`` intrinsic, which compiles to one
``prefetcht0`` instruction and never faults, even for an address past the end of the array.
"""

from __future__ import annotations

import numba as nb
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

CACHE_LINE = 64


@intrinsic
def _prefetch_line(typingctx, array, row, byte_offset):
    """Prefetch the cache line ``byte_offset`` bytes into row ``row`` of a 2-D array, into every cache level."""
    signature = types.void(array, row, byte_offset)

    def codegen(context, builder, sig, args):
        array_value = context.make_array(sig.args[0])(context, builder, args[0])
        i64 = ir.IntType(64)
        row_value = builder.sext(args[1], i64) if args[1].type.width < 64 else args[1]
        offset_value = builder.sext(args[2], i64) if args[2].type.width < 64 else args[2]
        row_stride = builder.extract_value(array_value.strides, 0)
        address = builder.add(builder.ptrtoint(array_value.data, i64),
                              builder.add(builder.mul(row_value, row_stride), offset_value))
        i8_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8_pointer, i32, i32, i32]), "llvm.prefetch.p0i8")
        # read (0), highest temporal locality (3), data cache (1)
        builder.call(prefetch, [builder.inttoptr(address, i8_pointer), ir.Constant(i32, 0), ir.Constant(i32, 3),
                                ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return signature, codegen


@nb.njit(inline="always")
def prefetch_row(array, row):
    """Start loading row ``row`` of the C-contiguous 2-D ``array`` (every cache line of it)."""
    for offset in range(0, array.shape[1] * array.itemsize, CACHE_LINE):
        _prefetch_line(array, row, offset)
