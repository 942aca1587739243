"""Sixteen vectors at a time: the sums of 16 vectors' lanes and 16 x 16 transposes, written
as LLVM shuffles for the Numba kernels.

A sum across the 16 lanes of one vector takes 4 shuffles and 4 adds, each waiting for the
one before.  The sums of 16 vectors taken together (:func:`halve_in_rounds`) take 30
shuffles and 15 adds, independent within a round.  The tile kernels use them for the lanes
of dB and dC (:func:`add_lane_sums`) and the transposes of their inputs
(:func:`transpose_block`); the backward's row sweep (:mod:`fast._row_sweep`) for the
per-step output ``y_t = <C_t, h_t>``, 16 steps at a time.

The intrinsics here are called from ``@njit`` code only and check nothing at run time (the
caller guarantees the indices).  Where the CPU that Numba compiles for has 256-bit vectors
only (AVX2: 16 registers of 8 float32), 16 vectors of 16 lanes take all 32 register halves
at once and go through the stack; there the transpose and the lane sums work in pieces of 8
lanes (:func:`vector_bits` decides; chapter 11, "A CPU without AVX-512").
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["WIDTH", "vector_bits", "halve_in_rounds", "add_lane_sums", "transpose_block"]

#: lanes per vector, and vectors per sum or transpose: 16 float32 fill one AVX-512 register
#: (float64 takes two, which LLVM handles as pairs)
WIDTH = 16


def vector_bits(context):
    """The widest vectors, in bits, of the CPU that ``context`` (a Numba target context)
    compiles for: 512 with AVX-512, else 256 (AVX2; the kernels assume at least that)."""
    features = context.codegen().magic_tuple()[2].split(",")
    return 512 if "+avx512f" in features else 256


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
    """The n LLVM vectors ``rows`` (n lanes each, n a power of two: 16 in the kernels, 8 in
    :func:`add_lane_sums` on AVX2) summed lane by lane: one vector whose lane c is the sum
    of the lanes of ``rows[c]``.  Round k pairs vector a (bit k of a clear) with vector
    a + 2^k and keeps, in each lane c, the sum of lanes c and c xor 2^k of the first if bit
    k of c is clear, of the second if it is set (two shuffles and an add per pair; the adds
    carry no fast-math flags, so the kernel's are theirs)."""
    w = len(rows)
    for k in range(w.bit_length() - 1):
        bit = 1 << k
        own = [c if not c & bit else w + c for c in range(w)]  # lane c of a or of b
        other = [c ^ bit if not c & bit else w + (c ^ bit) for c in range(w)]
        own_m = ir.Constant(ir.VectorType(ir.IntType(32), w), own)
        other_m = ir.Constant(ir.VectorType(ir.IntType(32), w), other)
        rows = [builder.fadd(builder.shuffle_vector(rows[a], rows[a + 1], own_m),
                             builder.shuffle_vector(rows[a], rows[a + 1], other_m))
                for a in range(0, len(rows), 2)]
    return rows[0]


def _make_add_lane_sums(piece=None):
    """:func:`add_lane_sums`, halving vectors of ``piece`` lanes (16 or 8; None: 16 on CPUs
    with 512-bit vectors, else 8)."""

    @intrinsic
    def add_lane_sums(typingctx, src, r0, dst, k0):
        """``dst[k0 + i] += src[r0 + i, :16].sum()`` for i < 16, and those 16 rows of ``src``
        set to zero: the sums of 16 vectors, one per row, as one vector.

        ``src`` is 2-D with contiguous rows (any row stride), ``dst`` 1-D and contiguous (its
        Numba type says so), both float32; the indices are not checked.  With 512-bit
        vectors the 16 rows are loaded as vectors and halved in 4 rounds
        (:func:`halve_in_rounds`): 30 shuffles and 15 adds for 16 rows, where a sum across
        one vector's lanes takes 4 shuffles and 4 adds.  With 256-bit vectors (AVX2) each
        row's two halves are added first, and the 16 sums of 8 lanes are halved as two
        groups of 8 in 3 rounds each, so that no more than 8 vectors are live.
        """
        if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
                and src.ndim == 2 and dst.ndim == 1 and dst.layout == "C"
                and src.dtype == dst.dtype == types.float32):
            return None
        sig = types.void(src, types.intp, dst, types.intp)
        w = WIDTH

        def codegen(context, builder, signature, args):
            s, r0, d, k0 = args
            p = piece or vector_bits(context) // 32  # float32 lanes per vector
            f32 = context.get_value_type(types.float32)
            vty, pty = ir.VectorType(f32, w), ir.VectorType(f32, p)
            i64 = ir.IntType(64)
            zero_i = ir.Constant(i64, 0)
            s_at, s_stride = _address(context, builder, src, s, r0, zero_i)
            d_at, _ = _address(context, builder, dst, d, zero_i, k0)  # 1-D: entry k0

            def row_pointer(i, ty, at=s_at):
                return _row_pointer(builder, at, s_stride, i, ty)

            # each row of w lanes as w / p pieces of p lanes, added (one piece when p = w);
            # then the rows halved in groups of p, and the groups' sums concatenated
            rows = []
            for j in range(w):
                total = None
                for q in range(0, w, p):
                    at = builder.add(s_at, ir.Constant(i64, 4 * q))
                    piece_j = builder.load(row_pointer(j, pty, at), align=4)
                    total = piece_j if total is None else builder.fadd(total, piece_j)
                rows.append(total)
            groups = [halve_in_rounds(builder, rows[g:g + p]) for g in range(0, w, p)]
            while len(groups) > 1:
                n = 2 * groups[0].type.count
                groups = [builder.shuffle_vector(groups[a], groups[a + 1],
                                                 ir.Constant(ir.VectorType(ir.IntType(32), n),
                                                             list(range(n))))
                          for a in range(0, len(groups), 2)]
            sums = groups[0]
            d_ptr = builder.inttoptr(d_at, vty.as_pointer())
            builder.store(builder.fadd(builder.load(d_ptr, align=4), sums), d_ptr, align=4)
            zeros = ir.Constant(vty, [0.0] * w)
            for j in range(w):
                builder.store(zeros, row_pointer(j, vty), align=4)
            return context.get_dummy_value()
        return sig, codegen
    return add_lane_sums


add_lane_sums = _make_add_lane_sums()


def _transpose_square(builder, rows):
    """The ``len(rows)`` LLVM vectors ``rows`` (as many lanes each, a power of two) as the
    rows of a square matrix, transposed: log2(n) rounds of n two-vector shuffles.  Round
    k exchanges bit k of the row index with bit k of the column index (rows a and a + 2^k,
    bit k of a clear, trade the entries whose column has bit k set for the other's entries
    whose column has it clear), so after the last round entry (r, c) sits at (c, r)."""
    w = len(rows)
    for k in range(w.bit_length() - 1):
        bit = 1 << k
        # shuffle masks over the 2w entries of (row a, row b): b's entries count from w
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
    return rows


def _make_transpose_block(piece=None):
    """:func:`transpose_block`, transposing its 16 x 16 block as squares of ``piece`` x
    ``piece`` (16 or 8; None: 16 on CPUs with 512-bit vectors, else 8)."""

    @intrinsic
    def transpose_block(typingctx, src, r0, c0, dst, q0, k0):
        """``dst[q0 + i, k0 + j] = src[r0 + j, c0 + i]`` for i, j < 16: one 16 x 16 float32
        block.

        Both arrays are 2-D with contiguous rows (any row stride); nothing is checked, the
        block must lie inside both.  With 512-bit vectors (AVX-512) the 16 rows are loaded
        as vectors and transposed in 4 rounds of 16 two-vector shuffles
        (:func:`_transpose_square`): 64 shuffles for 256 numbers.  With 256-bit vectors
        (AVX2: 16 registers of 8 float32) those 16 rows would take all 32 halves of the
        registers at once and go through the stack; there the block is four 8 x 8 squares,
        each 8 vectors of 8 in 3 rounds (chapter 11, "A CPU without AVX-512").
        """
        if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
                and src.ndim == dst.ndim == 2 and src.dtype == dst.dtype == types.float32):
            return None
        sig = types.void(src, types.intp, types.intp, dst, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            s, r0, c0, d, q0, k0 = args
            p = piece or vector_bits(context) // 32  # float32 lanes per vector
            vty = ir.VectorType(context.get_value_type(types.float32), p)
            i64 = ir.IntType(64)
            for bi in range(0, WIDTH, p):  # source rows r0 + bi ..
                for bj in range(0, WIDTH, p):  # .. and columns c0 + bj, to dst's (bj, bi)
                    s_at, s_stride = _address(context, builder, src, s,
                                              builder.add(r0, ir.Constant(i64, bi)),
                                              builder.add(c0, ir.Constant(i64, bj)))
                    d_at, d_stride = _address(context, builder, dst, d,
                                              builder.add(q0, ir.Constant(i64, bj)),
                                              builder.add(k0, ir.Constant(i64, bi)))
                    rows = [builder.load(_row_pointer(builder, s_at, s_stride, j, vty), align=4)
                            for j in range(p)]
                    for i, row in enumerate(_transpose_square(builder, rows)):
                        builder.store(row, _row_pointer(builder, d_at, d_stride, i, vty), align=4)
            return context.get_dummy_value()
        return sig, codegen
    return transpose_block


transpose_block = _make_transpose_block()
