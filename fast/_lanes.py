"""Sixteen vectors at a time: the sums of 16 vectors' lanes and 16 x 16 transposes, written
as LLVM shuffles for the Numba kernels.

A sum across the 16 lanes of one vector takes 4 shuffles and 4 adds, each waiting for the
one before.  The sums of 16 vectors taken together (:func:`halve_in_rounds`) take 30
shuffles and 15 adds, independent within a round.  The tile kernels use them for the lanes
of dB and dC (:func:`add_lane_sums`) and the transposes of their inputs
(:func:`transpose_block`); the backward's row sweep (:mod:`fast._row_sweep`) for the
per-step output ``y_t = <C_t, h_t>``, 16 steps at a time.

The intrinsics here are called from ``@njit`` code only and check nothing at run time (the
caller guarantees the indices).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["WIDTH", "halve_in_rounds", "add_lane_sums", "transpose_block"]

#: lanes per vector, and vectors per sum or transpose: 16 float32 fill one AVX-512 register
#: (float64 takes two, which LLVM handles as pairs)
WIDTH = 16


def _address(context, builder, aryty, ary, row, col):
    """``(address of ary[row, col], row stride in bytes)`` as LLVM integers."""
    arr = context.make_array(aryty)(context, builder, ary)
    i64 = ir.IntType(64)
    item = ir.Constant(i64, context.get_abi_sizeof(context.get_data_type(aryty.dtype)))
    stride = builder.extract_value(arr.strides, 0)
    base = builder.ptrtoint(arr.data, i64)
    return builder.add(base, builder.add(builder.mul(row, stride), builder.mul(col, item))), stride


def _row_pointer(builder, at, stride, i, vty):
    """Pointer to a ``vty`` vector at row ``i`` (a Python int) after the address ``at``."""
    i64 = ir.IntType(64)
    return builder.inttoptr(builder.add(at, builder.mul(ir.Constant(i64, i), stride)),
                            vty.as_pointer())


def halve_in_rounds(builder, rows):
    """The 16 LLVM vectors ``rows`` (16 lanes each) summed lane by lane: one vector whose
    lane c is the sum of the lanes of ``rows[c]``.  Round k pairs vector a (bit k of a
    clear) with vector a + 2^k and keeps, in each lane c, the sum of lanes c and c xor 2^k
    of the first if bit k of c is clear, of the second if it is set (two shuffles and an add
    per pair; the adds carry no fast-math flags, so the kernel's are theirs)."""
    w = WIDTH
    for k in range(4):
        bit = 1 << k
        own = [c if not c & bit else w + c for c in range(w)]  # lane c of a or of b
        other = [c ^ bit if not c & bit else w + (c ^ bit) for c in range(w)]
        own_m = ir.Constant(ir.VectorType(ir.IntType(32), w), own)
        other_m = ir.Constant(ir.VectorType(ir.IntType(32), w), other)
        rows = [builder.fadd(builder.shuffle_vector(rows[a], rows[a + 1], own_m),
                             builder.shuffle_vector(rows[a], rows[a + 1], other_m))
                for a in range(0, len(rows), 2)]
    return rows[0]


@intrinsic
def add_lane_sums(typingctx, src, r0, dst, k0):
    """``dst[k0 + i] += src[r0 + i, :16].sum()`` for i < 16, and those 16 rows of ``src``
    set to zero: the sums of 16 vectors, one per row, as one vector.

    ``src`` is 2-D with contiguous rows (any row stride), ``dst`` 1-D and contiguous (its
    Numba type says so), both float32; the indices are not checked.  The 16 rows are
    loaded as vectors and halved in 4 rounds (:func:`halve_in_rounds`): 30 shuffles and
    15 adds for 16 rows, where a sum across one vector's lanes takes 4 shuffles and 4 adds.
    """
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.ndim == 2 and dst.ndim == 1 and dst.layout == "C"
            and src.dtype == dst.dtype == types.float32):
        return None
    sig = types.void(src, types.intp, dst, types.intp)
    w = WIDTH

    def codegen(context, builder, signature, args):
        s, r0, d, k0 = args
        vty = ir.VectorType(context.get_value_type(types.float32), w)
        i64 = ir.IntType(64)
        zero_i = ir.Constant(i64, 0)
        s_at, s_stride = _address(context, builder, src, s, r0, zero_i)
        d_at, _ = _address(context, builder, dst, d, zero_i, k0)  # 1-D: entry k0

        def row_pointer(i):
            return _row_pointer(builder, s_at, s_stride, i, vty)

        rows = [builder.load(row_pointer(j), align=4) for j in range(w)]
        d_ptr = builder.inttoptr(d_at, vty.as_pointer())
        builder.store(builder.fadd(builder.load(d_ptr, align=4), halve_in_rounds(builder, rows)),
                      d_ptr, align=4)
        zeros = ir.Constant(vty, [0.0] * w)
        for j in range(w):
            builder.store(zeros, row_pointer(j), align=4)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def transpose_block(typingctx, src, r0, c0, dst, q0, k0):
    """``dst[q0 + i, k0 + j] = src[r0 + j, c0 + i]`` for i, j < 16: one 16 x 16 float32 block.

    Both arrays are 2-D with contiguous rows (any row stride); nothing is
    checked, the block must lie inside both.  The 16 rows are loaded as
    vectors and the transpose is 4 rounds of 16 two-vector shuffles: round
    k exchanges bit k of the row index with bit k of the column index (rows
    a and a + 2^k, bit k of a clear, trade the entries whose column has bit
    k set for the other's entries whose column has it clear), so after the
    4 rounds entry (r, c) sits at (c, r).
    """
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.ndim == dst.ndim == 2 and src.dtype == dst.dtype == types.float32):
        return None
    sig = types.void(src, types.intp, types.intp, dst, types.intp, types.intp)
    w = WIDTH

    def codegen(context, builder, signature, args):
        s, r0, c0, d, q0, k0 = args
        vty = ir.VectorType(context.get_value_type(types.float32), w)
        s_at, s_stride = _address(context, builder, src, s, r0, c0)
        d_at, d_stride = _address(context, builder, dst, d, q0, k0)

        rows = [builder.load(_row_pointer(builder, s_at, s_stride, j, vty), align=4)
                for j in range(w)]
        for k in range(4):
            bit = 1 << k
            # shuffle masks over the 32 entries of (row a, row b): b's entries count from 16
            keep_low = [c if not c & bit else w + c - bit for c in range(w)]
            keep_high = [c + bit if not c & bit else w + c for c in range(w)]
            low = ir.Constant(ir.VectorType(ir.IntType(32), w), keep_low)
            high = ir.Constant(ir.VectorType(ir.IntType(32), w), keep_high)
            new = list(rows)
            for a in range(w):
                if not a & bit:
                    new[a] = builder.shuffle_vector(rows[a], rows[a | bit], low)
                    new[a | bit] = builder.shuffle_vector(rows[a], rows[a | bit], high)
            rows = new
        for i in range(w):
            builder.store(rows[i], _row_pointer(builder, d_at, d_stride, i, vty), align=4)
        return context.get_dummy_value()
    return sig, codegen
