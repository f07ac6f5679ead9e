"""Explicit SIMD vectors for numba kernels: a 64-byte vector type and the few operations the batched solves use.

The batched Cholesky (``_batched_cholesky``) keeps one matrix element of many independent solves in one vector
(element (i, j) of solve l at lane l), so every step of the factorisation is one vector operation across the
solves. Written as loops over lanes, LLVM leaves those loops scalar: the accumulators live in the same array
as the operands (the factor overwrites the matrix in place), and without proof that they do not alias it
reloads and stores each one per multiply-add. As values of this type they are SSA registers instead.

A vector holds 64 bytes of the array's float type (16 float32 or 8 float64 lanes: one AVX-512 register; LLVM
splits the operations on narrower machines). Loads and stores take an offset in elements into a 1-D
contiguous array and need no alignment.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

VECTOR_BYTES = 64


def lanes(dtype) -> int:
    """Lanes of a vector of ``dtype``."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


class Vector(types.Type):
    def __init__(self, dtype: types.Float):
        self.dtype = dtype
        self.lanes = VECTOR_BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"Vector({dtype}x{self.lanes})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


def _element_pointer(context, builder, array_type, array_value, offset_value, offset_type):
    array = context.make_array(array_type)(context, builder, array_value)
    offset = context.cast(builder, offset_value, offset_type, types.intp)
    element = context.get_value_type(array_type.dtype)
    vector = ir.VectorType(element, VECTOR_BYTES // (array_type.dtype.bitwidth // 8))
    address = builder.gep(builder.bitcast(array.data, element.as_pointer()), [offset])
    return builder.bitcast(address, vector.as_pointer()), vector


def _is_vector_array(array) -> bool:
    return isinstance(array, types.Array) and array.ndim == 1 and isinstance(array.dtype, types.Float)


@intrinsic
def load(typingctx, array, offset):
    """The vector of ``array[offset:offset + lanes]``."""
    if not (_is_vector_array(array) and isinstance(offset, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        pointer, vector = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.load(pointer, align=array.dtype.bitwidth // 8, typ=vector)

    return Vector(array.dtype)(array, offset), codegen


@intrinsic
def store(typingctx, array, offset, value):
    """``array[offset:offset + lanes] = value``."""
    if not (_is_vector_array(array) and isinstance(offset, types.Integer) and isinstance(value, Vector)
            and value.dtype == array.dtype):
        return None

    def codegen(context, builder, sig, args):
        pointer, _ = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        builder.store(args[2], pointer, align=array.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(array, offset, value), codegen


@intrinsic
def splat(typingctx, array, value):
    """A vector of ``array``'s float type with ``value`` in every lane (the array only gives the type)."""
    if not (_is_vector_array(array) and isinstance(value, types.Number)):
        return None
    vector_type = Vector(array.dtype)

    def codegen(context, builder, sig, args):
        scalar = context.cast(builder, args[1], sig.args[1], array.dtype)
        return _broadcast(builder, context.get_value_type(vector_type), scalar)

    return vector_type(array, value), codegen


def _broadcast(builder, vector, scalar):
    undefined = ir.Constant(vector, ir.Undefined)
    first = builder.insert_element(undefined, scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(first, undefined, ir.Constant(ir.VectorType(ir.IntType(32), vector.count), None))


def _fma(builder, a, b, c):
    suffix = "f32" if a.type.element == ir.FloatType() else "f64"
    function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(a.type, [a.type] * 3),
                                              f"llvm.fma.v{a.type.count}{suffix}")
    return builder.call(function, [a, b, c])


def _same_vectors(*args) -> bool:
    return all(isinstance(a, Vector) for a in args) and len({a.dtype for a in args}) == 1


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c, lane by lane, with one rounding."""
    if not _same_vectors(a, b, c):
        return None

    def codegen(context, builder, sig, args):
        return _fma(builder, *args)

    return a(a, b, c), codegen


@intrinsic
def fnma(typingctx, a, b, c):
    """c - a * b, lane by lane, with one rounding."""
    if not _same_vectors(a, b, c):
        return None

    def codegen(context, builder, sig, args):
        return _fma(builder, builder.fneg(args[0]), args[1], args[2])

    return a(a, b, c), codegen


def _lane_by_lane(instruction: str):
    """An intrinsic applying one LLVM instruction (``fmul``, ``fadd``) to two vectors lane by lane."""

    @intrinsic
    def operation(typingctx, a, b):
        if not _same_vectors(a, b):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, instruction)(args[0], args[1])

        return a(a, b), codegen

    return operation


mul = _lane_by_lane("fmul")
add = _lane_by_lane("fadd")
