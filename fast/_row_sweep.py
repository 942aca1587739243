"""The row kernels' sweeps over time in LLVM IR, their sums over the states taken 16 steps at
a time.

The row kernels of :mod:`fast.numba_cpu` put 16 states in a vector's lanes, so the output
of a step, ``y_t = <C_t, h_t>``, is a sum across the lanes of one vector.  Written in
Numba (``_bwd_row_forward``), every step takes that sum on its own: 4 shuffles and 4 adds,
one after the other.  Here the loop over time runs 16 steps per pass and keeps their 16
vectors of products in registers; :func:`fast._lanes.halve_in_rounds` turns them into one
vector of the 16 steps' sums (30 shuffles and 15 adds, independent within a round), stored
with one vector add into ``y``.  Numba cannot express this: its loops over the states are
vectorized by LLVM, and their vectors never reach Python code as values.  Measured at the
headline size (chapter 11, "Sixteen sums at a time"): the backward runs about 1.1x as fast
on one thread.  The same sums written through a 16-row buffer in memory from Numba ran
slower than the per-step sums (the compiled loop gained a scalar copy behind a run-time
test).

The arithmetic is that of ``_bwd_row_forward`` operation for operation, so the records
``Abar_t``, ``Abar_t h_{t-1}``, the state and ``dC`` come out the same (tested bit for
bit); only ``y`` is summed in another order::

    Abar = 2^(dt_t a2);  ah = Abar h;  h = bu_t B_t + ah     (one FMA)
    records Abar, ah;    dC_t = dy_t h + dC_t                (one FMA)
    y_t += sum over the 16 lanes of h C_t

The forward pass's row scan (``numba_cpu._fwd_row_scan``) sums its outputs the same way
(:func:`row_scan_normal`, :func:`row_scan_clamped`: no records, no dC), in float32 only:
at the headline size with the tiles switched off it ran 1.2x as fast, while in float64 it
ran 0.97x (16 float64 lanes are two registers, and the exponential, then of degree 13,
dominates).

The ``_normal`` and ``_clamped`` intrinsics differ in their exponential:
:func:`fast._fastexp.fast_exp2_normal` (every ``dt a2`` of the row in [-125, 0]) or
:func:`fast._fastexp.fast_exp2_scan`.  They take float32 or float64 arrays (in float64 a
vector of 16 lanes is two AVX-512 registers, which LLVM handles as pairs).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._fastexp import _FM
from ._lanes import WIDTH, halve_in_rounds

__all__ = ["row_sweep_normal", "row_sweep_clamped", "row_scan_normal", "row_scan_clamped",
           "Vectors"]

#: the operations' fast-math flags: fast._fastexp's (contraction, no reassociation).  An
#: IR operation without flags would get the kernel's, "reassoc" included, and LLVM would
#: fold the exponential's rounding ``x - (s - shifter)`` away.
_FLAGS = tuple(sorted(_FM))

_ARRAYS = ("dt", "bu", "dy", "a2", "h", "y", "abar", "ah", "dC", "B", "C")
_SCAN_ARRAYS = ("dt", "bu", "a2", "h", "y", "B", "C")


class Vectors:
    """Addresses, loads, stores and arithmetic on vectors of 16 lanes of one dtype, for the
    arrays of one intrinsic call (``names``, their Numba types ``tys`` and LLVM values);
    also used by the LLVM IR variants of ``benchmarks/_sweeps_ir.py``."""

    def __init__(self, context, builder, dtype, names, tys, values, row_items=None):
        self.b = builder
        self.et = context.get_value_type(dtype)
        self.vty = ir.VectorType(self.et, WIDTH)
        self.align = context.get_abi_sizeof(self.et)
        self.i64 = ir.IntType(64)
        self.arrays = {}
        for name, ty, value in zip(names, tys, values):
            arr = context.make_array(ty)(context, builder, value)
            strides = [builder.extract_value(arr.strides, i) for i in range(ty.ndim)]
            if ty.layout == "C":  # the last stride is the item's size
                strides[-1] = self.c64(self.align)
                if ty.ndim == 2 and row_items is not None:  # rows of ``row_items`` items
                    strides[0] = self.c64(row_items * self.align)
            self.arrays[name] = (builder.ptrtoint(arr.data, self.i64), strides)
        fname = f"llvm.fma.v{WIDTH}{'f32' if self.align == 4 else 'f64'}"
        fma = builder.module.globals.get(fname)
        if fma is None:
            fma = ir.Function(builder.module, ir.FunctionType(self.vty, [self.vty] * 3),
                              name=fname)
        self.fma_fn = fma

    def c64(self, v):
        return ir.Constant(self.i64, v)

    def pointer(self, name, ty, *index):
        base, strides = self.arrays[name]
        at = base
        for i, stride in zip(index, strides):
            at = self.b.add(at, self.b.mul(i, stride))
        return self.b.inttoptr(at, ty.as_pointer())

    def load(self, name, *index):
        return self.b.load(self.pointer(name, self.vty, *index), align=self.align)

    def store(self, v, name, *index):
        self.b.store(v, self.pointer(name, self.vty, *index), align=self.align)

    def splat(self, x):
        v = self.b.insert_element(ir.Constant(self.vty, ir.Undefined), x,
                                  ir.Constant(ir.IntType(32), 0))
        return self.b.shuffle_vector(v, ir.Constant(self.vty, ir.Undefined),
                                     ir.Constant(ir.VectorType(ir.IntType(32), WIDTH),
                                                 [0] * WIDTH))

    def broadcast(self, name, *index):
        """One entry, in all 16 lanes."""
        return self.splat(self.b.load(self.pointer(name, self.et, *index), align=self.align))

    def fma(self, x, y, z):
        return self.b.call(self.fma_fn, [x, y, z])

    def fadd(self, x, y):
        return self.b.fadd(x, y, flags=_FLAGS)

    def fsub(self, x, y):
        return self.b.fsub(x, y, flags=_FLAGS)

    def fmul(self, x, y):
        return self.b.fmul(x, y, flags=_FLAGS)

    def exp2(self, x, terms, normal):
        """``fast_exp2_normal(x)`` (``normal``) or ``fast_exp2_scan(x)`` lane by lane, from
        the splatted constants of :func:`fast._fastexp.exp2_terms`."""
        b = self.b
        shifter, lowest, poly = terms[0], terms[1], terms[2:]
        ity = ir.VectorType(ir.IntType(8 * self.align), WIDTH)
        shift = ir.Constant(ity, [23 if self.align == 4 else 52] * WIDTH)
        if normal:
            rnd = self.fadd(shifter, lowest)  # 1.5 * 2^23: k itself in the low bits
        else:
            x = b.select(b.fcmp_ordered(">", x, lowest), x, lowest)  # k >= -127
            rnd = shifter
        s = self.fadd(x, rnd)
        f = self.fsub(x, self.fsub(s, rnd))
        p = poly[-1]
        for c in poly[-2::-1]:
            p = self.fma(p, f, c)
        two_k = b.shl(b.bitcast(s, ity), shift)
        if normal:  # k added to the exponent of p
            return b.bitcast(b.add(b.bitcast(p, ity), two_k), self.vty)
        return self.fmul(p, b.bitcast(two_k, self.vty))  # p * 2^k (0 for k = -127)

    def loop(self, count, carried, body, label):
        """``for j in range(count)`` with the vectors ``carried`` in phi nodes:
        ``body(j, values)`` returns their next values; their values after the loop."""
        b = self.b
        zero = self.c64(0)
        entry = b.block
        loop = b.append_basic_block(label)
        done = b.append_basic_block(label + "_done")
        b.cbranch(b.icmp_signed(">", count, zero), loop, done)
        b.position_at_end(loop)
        j = b.phi(self.i64)
        j.add_incoming(zero, entry)
        phis = [b.phi(self.vty) for _ in carried]
        for p, v in zip(phis, carried):
            p.add_incoming(v, entry)
        new = body(j, phis)
        j_next = b.add(j, self.c64(1))
        j.add_incoming(j_next, b.block)
        for p, v in zip(phis, new):
            p.add_incoming(v, b.block)
        b.cbranch(b.icmp_signed("<", j_next, count), loop, done)
        b.position_at_end(done)
        out = []
        for v0, v1 in zip(carried, new):
            p = b.phi(self.vty)
            p.add_incoming(v0, entry)
            p.add_incoming(v1, loop)
            out.append(p)
        return out


def _dtype_of(arrays, ndims, terms):
    """The common float dtype of an intrinsic's arrays if their types fit, else None."""
    if not all(isinstance(a, types.Array) for a in arrays):
        return None
    dtype = arrays[0].dtype
    if dtype not in (types.float32, types.float64) or any(a.dtype != dtype for a in arrays):
        return None
    if [a.ndim for a in arrays] != list(ndims):
        return None
    if not (isinstance(terms, types.UniTuple) and terms.dtype == dtype):
        return None
    return dtype


def _blocks(context, builder, signature, args, names, normal, step, scalars, label,
            row_items=None):
    """The loop over blocks of 16 steps shared by both sweeps.  The arguments are the arrays
    ``names``, ``terms``, ``t0``, ``nblocks``, ``n0``, ``b_st``, ``c_st`` and for the scan
    ``add``; ``step(x, t, tB, tC, s, e, hv, n0)`` makes the update ``hv = bu_t B_t + Abar_t
    hv`` and what else a step does, from the broadcasts ``s`` of the 1-D arrays ``scalars``
    at step t, and returns ``(hv, product for y)``."""
    m = len(names)
    x = Vectors(context, builder, signature.args[0].dtype, names, signature.args[:m], args[:m],
                row_items)
    t0, nblocks, n0, b_st, c_st = (context.cast(builder, v, ty, types.int64)
                                   for v, ty in zip(args[m + 1:m + 6], signature.args[m + 1:]))
    add = (context.cast(builder, args[m + 6], signature.args[m + 6], types.boolean)
           if len(args) > m + 6 else ir.Constant(ir.IntType(1), 1))
    consts = [x.splat(builder.extract_value(args[m], i))
              for i in range(signature.args[m].count)]
    a2v = x.load("a2", n0)
    zeros = ir.Constant(x.vty, [0.0] * WIDTH)

    def block(j, carried):  # steps t0 + 16 j ... t0 + 16 j + 15
        hv = carried[0]
        tb = builder.add(t0, builder.mul(j, x.c64(WIDTH)))
        products = []
        for i in range(WIDTH):
            t = builder.add(tb, x.c64(i))
            s = {name: x.broadcast(name, t) for name in scalars}  # first: as the loops did
            e = x.exp2(x.fmul(s["dt"], a2v), consts, normal)
            hv, product = step(x, t, builder.mul(t, b_st), builder.mul(t, c_st), s, e, hv, n0)
            products.append(product)
        old = builder.select(add, x.load("y", tb), zeros)  # the first block of states writes
        x.store(x.fadd(old, halve_in_rounds(builder, products)), "y", tb)
        return [hv]

    hv, = x.loop(nblocks, [x.load("h", n0)], block, label)
    x.store(hv, "h", n0)
    return context.get_dummy_value()


def _records_step(x, t, tB, tC, s, e, hv, n0):
    """A step of the backward's forward sweep: records, dC, and the product for y."""
    ahv = x.fmul(e, hv)
    hv = x.fma(s["bu"], x.load("B", tB, n0), ahv)
    x.store(e, "abar", t, n0)
    x.store(ahv, "ah", t, n0)
    x.store(x.fma(s["dy"], hv, x.load("dC", tC, n0)), "dC", tC, n0)
    return hv, x.fmul(hv, x.load("C", tC, n0))


def _scan_step(x, t, tB, tC, s, e, hv, n0):
    """A step of the forward pass: the update and the product for y."""
    hv = x.fma(s["bu"], x.load("B", tB, n0), x.fmul(e, hv))
    return hv, x.fmul(hv, x.load("C", tC, n0))


def _row_sweep(normal):
    @intrinsic
    def row_sweep(typingctx, dt, bu, dy, a2, h, y, abar, ah, dC, B, C, terms, t0, nblocks, n0,
                  b_st, c_st):
        arrays = (dt, bu, dy, a2, h, y, abar, ah, dC, B, C)
        if _dtype_of(arrays, [1] * 6 + [2] * 5, terms) is None:
            return None
        sig = types.void(*arrays, terms, *[types.intp] * 5)

        def codegen(context, builder, signature, args):
            return _blocks(context, builder, signature, args, _ARRAYS, normal, _records_step,
                           ("dt", "bu", "dy"), "row_sweep_" + ("normal" if normal else "clamped"),
                           WIDTH)
        return sig, codegen
    row_sweep.__doc__ = (
        f"""Steps ``t0 .. t0 + 16 nblocks - 1`` of the backward's forward sweep of a row, for
        states ``n0 .. n0 + 15``, with {"fast_exp2_normal" if normal else "fast_exp2_scan"}.

        ``dt``, ``bu``, ``dy``, ``a2`` (the poles times log2 e), ``h`` (the state, read and
        written back) and ``y`` (added to, 16 entries at a time) are 1-D; ``abar`` and
        ``ah`` (the records, row t written), ``dC`` (row ``t c_st`` added to), ``B`` and ``C``
        (rows ``t b_st`` and ``t c_st`` read; a stride 0 for a B or C constant in time) are
        2-D and C-contiguous with rows of exactly 16 items (one block of states, the row
        backward's layout: their addresses are then constant offsets from step to step;
        read from the arrays at run time, they were spilled to the stack); ``terms`` is
        :func:`fast._fastexp.exp2_terms` of their dtype.  Nothing is checked at run
        time.""")
    return row_sweep


def _row_scan(normal):
    @intrinsic
    def row_scan(typingctx, dt, bu, a2, h, y, B, C, terms, t0, nblocks, n0, b_st, c_st, add):
        arrays = (dt, bu, a2, h, y, B, C)
        if _dtype_of(arrays, [1] * 5 + [2] * 2, terms) is None:
            return None
        sig = types.void(*arrays, terms, *[types.intp] * 5, types.boolean)

        def codegen(context, builder, signature, args):
            return _blocks(context, builder, signature, args, _SCAN_ARRAYS, normal, _scan_step,
                           ("dt", "bu"), "row_scan_" + ("normal" if normal else "clamped"))
        return sig, codegen
    row_scan.__doc__ = (
        f"""Steps ``t0 .. t0 + 16 nblocks - 1`` of the forward pass of a row, for states
        ``n0 .. n0 + 15``, with {"fast_exp2_normal" if normal else "fast_exp2_scan"}: the
        arrays of :func:`row_sweep_normal` without records, dy and dC; ``y`` written, or
        added to if ``add`` (the later blocks of 16 states).""")
    return row_scan


row_sweep_normal = _row_sweep(True)
row_sweep_clamped = _row_sweep(False)
row_scan_normal = _row_scan(True)
row_scan_clamped = _row_scan(False)
