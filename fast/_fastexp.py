"""A vectorizable exp (and softplus, sigmoid) for Numba kernels.

Glossary
--------
x       the argument, float32 or float64
k       the integer with x = k ln2 + r, |r| <= ln2 / 2 (range reduction)
r       the reduced argument
p       the polynomial approximation of e^r
2^k     built by adding k to the exponent bits of p (no libm call)

Why this module exists
----------------------
The selective scan spends its time on ``exp(delta_t * A[n])``: one exponential
per state update.  Numba lowers ``math.exp`` to a call of the C library's
scalar ``exp``; without Intel's SVML (not shipped here) LLVM cannot turn that
call into a vector instruction, so the loop over the state dimension N runs
one element at a time, about 0.5 G exponentials per second per core.
:func:`fast_exp` is written only with multiplications, additions, a
``floor``, comparisons and an integer add on the bit pattern: operations that
have vector forms, so LLVM vectorizes a loop that calls it (16 float32 lanes
with AVX-512) and the same loop runs roughly ten times faster.

The algorithm (Cody and Waite's range reduction, a polynomial, a scaling):

1. ``k = floor(x log2(e) + 1/2)`` and ``r = x - k ln2`` with ln2 split into a
   short ``LN2_HI`` (few significant bits, so ``k * LN2_HI`` is exact) and the
   remainder ``LN2_LO``; both products are taken with a fused multiply-add
   (an LLVM ``fma`` intrinsic, so ``fastmath`` reassociation in the calling
   kernel cannot fold the two constants into one and lose the split).
2. ``e^r`` by its Taylor polynomial, evaluated by Horner's rule with fused
   multiply-adds: degree 7 for float32 (truncation error below 6e-9 on
   ``|r| <= ln2/2``), degree 13 for float64 (below 4e-17).  Taylor
   coefficients 1/j! need no fitting; a minimax fit would save one term.
3. ``e^x = p * 2^k``: ``p`` lies in [0.70, 1.42], so adding ``k`` to its
   exponent field (``bits(p) + (k << 23)``, ``<< 52`` for float64) is the
   multiplication by 2^k, exact.  (In float64, ``k`` is read off the bits of
   ``k + 1.5 * 2^52`` rather than converted: a vector float64-to-int64
   conversion needs AVX-512, and on AVX2 LLVM converted lane by lane.)

Edges (branch-free selects, so they do not stop vectorization): results
below the smallest *normal* number are flushed to 0 (x < -87.33 in float32,
x < -708.39 in float64, where ``np.exp`` still gives subnormals: absolute
error below 1.2e-38 and 2.3e-308); results above the largest finite number
are ``inf``; NaN gives NaN.  Accuracy on the normal range, measured in
``tests/test_fastexp.py`` against ``np.exp`` in float64: at most 2 ulp.

:func:`fast_exp` is an ordinary Python function (it calls ``np.exp``) that
Numba replaces by the typed implementations below when it is called from
compiled code (``numba.extending.overload``).

References
----------
W. J. Cody and W. Waite, *Software Manual for the Elementary Functions*,
Prentice-Hall, 1980 (range reduction with a split ln 2).
J.-M. Muller, *Elementary Functions: Algorithms and Implementation*,
3rd ed., Birkhauser, 2016, chapter 11 (table-free exp).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from ._launch import launch

__all__ = ["fast_exp", "fast_exp_clamped", "fast_exp2_scan", "fast_exp2_normal", "exp2_terms",
           "fast_softplus", "fast_softplus_grad", "fast_sigmoid", "exp_array"]

#: fastmath flags of the helpers: contraction into FMA allowed, but no
#: reassociation (it would undo the split ln 2) and no "no NaN" assumption.
_FM = {"contract", "nsz", "arcp"}


# ---------------------------------------------------------------------------
# bit casts and a fused multiply-add that LLVM vectorizes
# ---------------------------------------------------------------------------

def _make_bitcast(src, dst):
    @intrinsic
    def cast(typingctx, x):
        if not isinstance(x, (types.Integer, types.Float)):
            return None
        sig = dst(x)

        def codegen(context, builder, signature, args):
            v = args[0]
            src_ty = context.get_value_type(src)
            if x.bitwidth > src.bitwidth:  # e.g. int64 arithmetic from Numba's promotion
                v = builder.trunc(v, src_ty)
            return builder.bitcast(v, context.get_value_type(dst))
        return sig, codegen
    return cast


_f32_from_bits = _make_bitcast(types.int32, types.float32)
_f32_bits = _make_bitcast(types.float32, types.int32)
_f64_from_bits = _make_bitcast(types.int64, types.float64)
_f64_bits = _make_bitcast(types.float64, types.int64)


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c with one rounding (llvm.fma); all three of one float type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(a)
        fnty = llvm_ir.FunctionType(ty, [ty, ty, ty])
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], fnty)
        return builder.call(fn, args)
    return sig, codegen


# ---------------------------------------------------------------------------
# constants, typed (a Python float literal would promote float32 to float64)
# ---------------------------------------------------------------------------

_F32 = np.float32
_LOG2E_32 = _F32(1.4426950408889634)
_LN2_HI_32 = _F32(0.693359375)           # 355/512: 9 significant bits
_LN2_LO_32 = _F32(math.log(2) - 0.693359375)
_HALF_32 = _F32(0.5)
_ZERO_32 = _F32(0.0)
_ONE_32 = _F32(1.0)
_INF_32 = _F32(np.inf)
_CLAMP_LO_32 = _F32(-88.0)               # keeps k representable; result selected away
_CLAMP_HI_32 = _F32(89.0)
_UNDER_32 = _F32(-87.33)                 # e^-87.33 > 1.1755e-38 = smallest normal
_OVER_32 = _F32(88.72283)                # log(float32 max)
_P32 = tuple(_F32(1.0 / math.factorial(j)) for j in range(8))  # e^r, degree 7

_LOG2E_64 = 1.4426950408889634
_LN2_HI_64 = 0.693145751953125           # 11 significant bits
_LN2_LO_64 = 1.4286068203094173e-06      # log(2) - _LN2_HI_64, correctly rounded
_UNDER_64 = -708.39                      # e^-708.39 > 2.2251e-308 = smallest normal
_OVER_64 = 709.782712893384              # log(float64 max)
_P64 = tuple(1.0 / math.factorial(j) for j in range(14))  # e^r, degree 13

#: per float width: the constants of the range reduction, the polynomial, the bit casts and
#: the exponent shift of the scaling, and the edges (argument clamp for k, underflow to 0,
#: overflow to inf)
_EXP = {
    32: dict(log2e=_LOG2E_32, half=_HALF_32, ln2_hi=_LN2_HI_32, ln2_lo=_LN2_LO_32, poly=_P32,
             bits=_f32_bits, from_bits=_f32_from_bits, int_t=np.int32, shift=23,
             clamp_lo=_CLAMP_LO_32, clamp_hi=_CLAMP_HI_32, under=_UNDER_32, over=_OVER_32,
             finite_top=_F32(88.0), zero=_ZERO_32, inf=_INF_32),
    64: dict(log2e=_LOG2E_64, half=0.5, ln2_hi=_LN2_HI_64, ln2_lo=_LN2_LO_64, poly=_P64,
             bits=_f64_bits, from_bits=_f64_from_bits, int_t=np.int64, shift=52,
             clamp_lo=-709.0, clamp_hi=710.0, under=_UNDER_64, over=_OVER_64,
             finite_top=709.0, zero=0.0, inf=np.inf),
}


#: 1.5 * 2^52: a whole float64 number k (|k| < 2^51) added to it lands, as an integer, in the
#: low bits of the sum (the float64 exponentials' conversion of k, see _whole_to_int)
_ROUND_64 = 6755399441055744.0


def _constants(x):
    """``_EXP``'s entry for the Numba type ``x``; None where the overloads do not apply."""
    if isinstance(x, types.Float) and x.bitwidth in _EXP:
        return _EXP[x.bitwidth]
    return None


def _typed(x, *values):
    """``values`` as numbers of the Numba float type ``x`` (an overload's constants)."""
    dt = np.float32 if x.bitwidth == 32 else np.float64
    return tuple(dt(v) for v in values)


def _exp_core(xc):
    """``e^xc`` for ``xc`` already clamped to where ``2^k`` is a normal number; no edge cases.

    The algorithm of the module docstring, written once for both float widths
    and used by :func:`fast_exp` and :func:`fast_exp_clamped`.  From Python it
    is ``np.exp``.
    """
    return np.exp(xc)


@overload(_exp_core, fastmath=_FM, jit_options={"fastmath": _FM, "error_model": "numpy"})
def _exp_core_impl(xc):
    c = _constants(xc)
    if c is None:
        return None
    log2e, half, ln2_hi, ln2_lo = c["log2e"], c["half"], c["ln2_hi"], c["ln2_lo"]
    bits, from_bits, shift = c["bits"], c["from_bits"], c["shift"]
    poly, degree = c["poly"], len(c["poly"]) - 1

    def impl(xc):
        kf = np.floor(_fma(xc, log2e, half))
        r = _fma(-kf, ln2_hi, xc)  # exact: k * LN2_HI has <= 17 (float32) or 27 bits
        r = _fma(-kf, ln2_lo, r)
        p = poly[degree]  # Horner: p = (...(c_deg r + c_deg-1) r + ...) r + c_0
        for j in range(degree - 1, -1, -1):  # unrolled by LLVM: constant trip count
            p = _fma(p, r, poly[j])  # e^r, in [0.70, 1.42] at the end
        return from_bits(bits(p) + (_whole_to_int(kf) << shift))  # p * 2^k
    return impl


def _whole_to_int(kf):
    """The whole number ``kf`` (a float32 or float64) as an integer of the same width.

    float32 -> int32 is one vector instruction on AVX2.  float64 -> int64 has a vector
    instruction only with AVX-512 (``vcvttpd2qq``): on AVX2 LLVM converts lane by lane (4
    scalar conversions and 7 moves and shuffles per vector).  So inside Numba a float64 is
    added to 1.5 * 2^52, which puts it, as a two's-complement integer, into the low bits of
    the sum: the bits of the sum less the bits of 1.5 * 2^52 are ``kf``, by two vector
    instructions on every CPU (exact for ``|kf| < 2^51``).  From Python it is ``int``.
    """
    return int(kf)


@overload(_whole_to_int, inline="always", fastmath=_FM,
          jit_options={"fastmath": _FM, "error_model": "numpy"})
def _whole_to_int_impl(kf):
    c = _constants(kf)
    if c is None:
        return None
    int_t, bits = c["int_t"], c["bits"]
    if kf.bitwidth == 32:
        return lambda kf: int_t(kf)
    round_bits = np.float64(_ROUND_64).view(np.int64)  # 0x4338000000000000

    def impl(kf):
        return bits(kf + _ROUND_64) - round_bits
    return impl


def fast_exp(x):
    """Exponential of a float32 or float64 scalar, vectorizable inside Numba.

    Parameters
    ----------
    x : float32 or float64
        Argument; any value, NaN and infinities included.

    Returns
    -------
    float
        ``e^x`` in the type of ``x``: within 2 ulp of the correctly rounded
        value for normal results; 0 where the true result is below the
        smallest normal number; ``inf`` above the largest finite one; NaN for
        NaN.

    Notes
    -----
    Called from Python it is ``np.exp``; called from a Numba-compiled
    function it is the range reduction + polynomial + exponent-bit scaling
    described in the module docstring, which LLVM vectorizes.

    Examples
    --------
    >>> import numpy as np
    >>> from fast._fastexp import exp_array
    >>> exp_array(np.array([0.0, 1.0, -1.0], dtype=np.float32))
    array([1.        , 2.7182817 , 0.36787945], dtype=float32)
    """
    return np.exp(x)


@overload(fast_exp, fastmath=_FM, jit_options={"fastmath": _FM, "error_model": "numpy"})
def _fast_exp_impl(x):
    c = _constants(x)
    if c is None:
        return None
    clamp_lo, clamp_hi, under, over = c["clamp_lo"], c["clamp_hi"], c["under"], c["over"]
    zero, inf = c["zero"], c["inf"]

    def impl(x):
        res = _exp_core(min(max(x, clamp_lo), clamp_hi))  # the clamp keeps k representable
        res = res if x > under else zero  # below the smallest normal: 0
        res = res if x < over else inf
        return res if x == x else x  # NaN stays NaN
    return impl


def fast_exp_clamped(x):
    """``e^max(x, x_min)``: the kernels' exp, for arguments that are never large.

    Parameters
    ----------
    x : float32 or float64
        Argument; finite, at most 88.7 (float32) or 709.7 (float64).  In the
        scan the argument is ``delta * A`` with ``delta >= 0`` and
        ``Re(A) <= 0``, so it is never positive.

    Returns
    -------
    float
        ``e^x`` (within 2 ulp) for ``x >= x_min``; ``e^x_min`` for smaller
        ``x``, where ``x_min`` = -87.33 (float32, ``e^x_min`` = 1.18e-38) or
        -708.39 (float64, 2.23e-308): the smallest normal numbers, so the
        absolute error is below them.

    Notes
    -----
    :func:`fast_exp` without its edge selects (underflow to 0, overflow to
    inf, NaN): one ``max`` replaces three compare-and-blend pairs, which
    makes the scan's inner loop about 25% faster (measured).  Large or NaN
    arguments give meaningless results, which is why it is private to the
    kernels, whose inputs are validated.

    Examples
    --------
    >>> import numpy as np
    >>> from fast._fastexp import fast_exp_clamped
    >>> float(fast_exp_clamped(np.float64(-1.0)))
    0.36787944117144233
    """
    x = np.asarray(x)
    lo = -87.33 if x.dtype == np.float32 else -708.39
    return np.exp(np.maximum(x, lo).astype(x.dtype))[()]


@overload(fast_exp_clamped, fastmath=_FM, jit_options={"fastmath": _FM, "error_model": "numpy"})
def _fast_exp_clamped_impl(x):
    c = _constants(x)
    if c is None:
        return None
    under = c["under"]

    def impl(x):
        return _exp_core(max(x, under))
    return impl


# ---------------------------------------------------------------------------
# the scan kernels' exp: 2^x2 with x2 = delta * (A log2 e) <= 0
# ---------------------------------------------------------------------------
# Fewer vector instructions than fast_exp_clamped per element (counted in chapter 11):
# the kernels scale A by log2(e) once per row, so that the argument is already in base 2
# and the range reduction is one subtraction; k is rounded by the "shifter" (adding
# 1.5 * 2^23 rounds to an integer and leaves it in the low mantissa bits), whose bits
# shifted by 23 are 2^k as a float; the polynomial is a fit of degree 5 in float32 instead
# of Taylor's degree 7.  And below 2^-126.5 the scale 2^k is exactly 0, so the result
# underflows to 0 instead of stopping at the smallest normal number.

#: float32: 2^f on |f| <= 1/2, p(f) = 1 + c1 f + ... + c5 f^5, fitted to minimise the error in
#: ulp of the result (1.05 ulp in exact arithmetic; 1.74 ulp measured with float32 Horner + FMA
#: on 400,001 points, and below 2 ulp in tests/test_fastexp.py): within the 2 ulp documented for
#: CUDA's exp2f, which the official kernels call for this factor (CUDA C++ Programming Guide,
#: "Single-Precision Floating-Point Functions").  Degree 6 stayed below 1 ulp, but the scan's
#: forward is bound by its multiplies and FMAs (9 per 16 updates with degree 5; chapter 11).
_P2_32 = tuple(_F32(c) for c in (1.0, 0.693146824836731, 0.24022236466407776,
                                   0.05550893768668175, 0.009671762585639954,
                                   0.0013225707225501537))
#: float64: 2^f on |f| <= 1/2 of degree 11, p(f) = 1 + f q(f) with q the Chebyshev
#: interpolant of degree 10 of (2^f - 1) / f (so p(0) = 1 exactly): 2.0e-17 relative error in
#: exact arithmetic with these float64 coefficients, 0.09 ulp; tests/test_fastexp.py measures
#: at most 1 ulp with float64 Horner and FMA.  Reproduced by, with mpmath 1.3 and
#: ``mp.mp.dps = 40``: ``q = lambda f: mp.log(2) if f == 0 else (2 ** f - 1) / f;
#: [1.0] + [float(c) for c in reversed(mp.chebyfit(q, [-0.5, 0.5], 11))]``.  Taylor's series
#: needed degree 13 (remainder 4.2e-18): two FMAs more per update in the float64 scans.
_P2_64 = (1.0, 0.6931471805599453, 0.24022650695910097, 0.0555041086648216,
          0.009618129107606888, 0.0013333558146416936, 0.0001540353044173605,
          1.525273382983612e-05, 1.321544258792169e-06, 1.0178062445845774e-07,
          7.072585949269223e-09, 4.4549605981865186e-10)

#: per float width: the polynomial, 1.5 * 2^mantissa_bits + exponent bias (the shifter),
#: the clamp that makes 2^k exactly 0 (exponent field 0), the bit casts and the shift
_EXP2 = {
    32: dict(poly=_P2_32, shifter=_F32(12582912.0 + 127.0), lowest=_F32(-127.0),
             bits=_f32_bits, from_bits=_f32_from_bits, shift=23, int_t=np.int32),
    64: dict(poly=_P2_64, shifter=6755399441055744.0 + 1023.0, lowest=-1023.0,
             bits=_f64_bits, from_bits=_f64_from_bits, shift=52, int_t=np.int64),
}


def exp2_terms(dtype):
    """The constants of :func:`fast_exp2_scan` and :func:`fast_exp2_normal` for ``dtype``.

    A tuple of scalars of ``dtype``: the shifter, the clamp and the polynomial's
    coefficients from degree 0 up (8 entries in float32, 14 in float64).  A
    kernel that takes this tuple as an argument and hands it to the two
    functions gets the same results as with their built-in constants, but as
    run-time values, which LLVM keeps in registers.  Its own constants it
    loads afresh at every pass of a loop that has many of them live (two
    instructions each, an address and a broadcast; measured in the scan's
    forward loop: 7 of the 38.5 instructions of a step, chapter 11).

    Examples
    --------
    >>> import numpy as np
    >>> from fast._fastexp import exp2_terms
    >>> len(exp2_terms(np.float32)), float(exp2_terms(np.float64)[2])
    (8, 1.0)
    """
    c = _EXP2[np.dtype(dtype).itemsize * 8]
    dt = np.dtype(dtype).type
    return (dt(c["shifter"]), dt(c["lowest"])) + tuple(dt(p) for p in c["poly"])


def _no_terms(terms):
    """True if the Numba type of an exp2 overload's ``terms`` says it was not given."""
    return terms is None or isinstance(terms, (types.NoneType, types.Omitted))


def _exp2_typed(x2, terms):
    """``_EXP2``'s entry for the Numba types of the exp2 overloads' arguments, or None.

    ``terms`` must be absent (None, or omitted) or a tuple of ``x2``'s type
    with the length of :func:`exp2_terms`.
    """
    if not (isinstance(x2, types.Float) and x2.bitwidth in _EXP2):
        return None
    c = _EXP2[x2.bitwidth]
    if _no_terms(terms):
        return c
    if isinstance(terms, types.UniTuple) and terms.dtype == x2 and terms.count == len(
            c["poly"]) + 2:
        return c
    return None


def _exp2_unpack(x2, terms):
    """``(shifter, lowest, poly)`` from ``terms``, or the built-in constants without them."""
    c = _EXP2[np.asarray(x2).dtype.itemsize * 8]
    return c["shifter"], c["lowest"], c["poly"]


@overload(_exp2_unpack, jit_options={"error_model": "numpy"})
def _exp2_unpack_impl(x2, terms):
    c = _exp2_typed(x2, terms)
    if c is None:
        return None
    if _no_terms(terms):
        shifter, lowest, poly = c["shifter"], c["lowest"], c["poly"]
        return lambda x2, terms: (shifter, lowest, poly)
    return lambda x2, terms: (terms[0], terms[1], terms[2:])


def fast_exp2_scan(x2, terms=None):
    """``2^x2`` for ``x2 <= 0``: the scan kernels' exponential, ``e^x = 2^(x log2 e)``.

    Parameters
    ----------
    x2 : float32 or float64
        Argument in base 2, finite and at most 0 (the kernels pass
        ``delta * A * log2(e)`` with ``delta >= 0`` and ``A <= 0``); larger
        or non-finite arguments give meaningless results.
    terms : tuple, optional
        :func:`exp2_terms` of ``x2``'s dtype, handed to the compiled kernel
        as an argument: the same result, with the constants as run-time
        values that stay in registers (see :func:`exp2_terms`).  Ignored
        from Python.

    Returns
    -------
    float
        ``2^x2`` within 2 ulp (float32) or 1 ulp (float64) where it is a normal number; 0 below
        ``2^-126.5`` (float32) or ``2^-1022.5`` (float64), so the absolute
        error is below the smallest normal number there; subnormal results
        between that and ``2^-126`` are rounded by the last multiplication.

    Notes
    -----
    ``k = round(x2)`` is taken by the shifter ``s = x2 + (1.5 * 2^23 + 127)``
    (float32; ``2^52`` and 1023 in float64), which rounds to an integer and
    leaves ``k + 127`` in the low bits of ``s``; ``f = x2 - k`` is exact in
    [-1/2, 1/2]; ``p(f)`` approximates ``2^f`` (float32: a fitted polynomial of
    degree 5; float64: a Chebyshev fit of degree 11); ``bits(s) << 23`` is the float
    ``2^k``, which is exactly 0 for ``k = -127`` (the clamp), so the product
    ``p(f) * 2^k`` underflows to 0 without a select.  Compared with
    :func:`fast_exp_clamped` this is 5 vector instructions fewer per 16
    elements in float32 (the Cody-Waite split of ln 2 is folded into the
    kernels' once-per-row ``A log2(e)``, two polynomial terms less) and it
    flushes to 0 instead of stopping at the smallest normal number.  The
    price is the rounding of ``A log2(e)``: one more rounding of the
    argument, a relative error of about ``|x| * 2^-24`` in the result, as
    large as the rounding of ``delta * A`` itself.

    Examples
    --------
    >>> import numpy as np
    >>> from fast._fastexp import fast_exp2_scan
    >>> float(fast_exp2_scan(np.float64(-1.0)))
    0.5
    """
    del terms  # the same constants: NumPy computes exp2 exactly enough
    x2 = np.asarray(x2)
    lowest = -126.5 if x2.dtype == np.float32 else -1022.5
    return np.where(x2 < lowest, 0, np.exp2(x2)).astype(x2.dtype)[()]


@overload(fast_exp2_scan, fastmath=_FM, jit_options={"fastmath": _FM, "error_model": "numpy"})
def _fast_exp2_scan_impl(x2, terms=None):
    c = _exp2_typed(x2, terms)
    if c is None:
        return None
    bits, from_bits, shift, int_t = c["bits"], c["from_bits"], c["shift"], c["int_t"]
    degree = len(c["poly"]) - 1

    def impl(x2, terms=None):
        shifter, lowest, poly = _exp2_unpack(x2, terms)
        x2 = max(x2, lowest)  # k >= -127: the exponent field of 2^k is >= 0
        s = x2 + shifter  # rounds to an integer: k + bias in the low mantissa bits
        f = x2 - (s - shifter)  # x2 - k, exact, in [-1/2, 1/2]
        p = poly[degree]  # Horner with fused multiply-adds: p(f) ~ 2^f
        for j in range(degree - 1, -1, -1):  # unrolled by LLVM: constant trip count
            p = _fma(p, f, poly[j])
        return p * from_bits(bits(s) << int_t(shift))  # p * 2^k (0 for k = -127)
    return impl


def fast_exp2_normal(x2, terms=None):
    """``2^x2`` for ``-125 <= x2 <= 0``: :func:`fast_exp2_scan` without its clamp.

    Where every argument of a row is known to lie in this range (its results
    then are normal numbers), the kernels use this variant.  It has no
    ``max``, and it scales by an integer add instead of a multiplication:
    rounded with the shifter less the exponent bias (``1.5 * 2^23``), the
    low bits of ``s`` hold ``k`` itself, and ``bits(p) + (bits(s) << 23)``
    adds ``k`` to the exponent of ``p(f)``, exact while the result is a
    normal number, so the results are bit for bit those of
    :func:`fast_exp2_scan`.  The scan's forward is bound by its multiplies
    and FMAs, and this takes one of them off each update: 3-4% of the
    headline forward on the AMD EPYC of chapter 11 (it measured slower
    there with a polynomial of degree 6).  Arguments outside the range give
    meaningless results.

    Examples
    --------
    >>> import numpy as np
    >>> from fast._fastexp import fast_exp2_normal
    >>> float(fast_exp2_normal(np.float32(-2.0)))
    0.25
    """
    del terms  # as fast_exp2_scan's
    return np.exp2(np.asarray(x2))[()]


@overload(fast_exp2_normal, fastmath=_FM, jit_options={"fastmath": _FM, "error_model": "numpy"})
def _fast_exp2_normal_impl(x2, terms=None):
    c = _exp2_typed(x2, terms)
    if c is None:
        return None
    bits, from_bits, shift, int_t = c["bits"], c["from_bits"], c["shift"], c["int_t"]
    degree = len(c["poly"]) - 1

    def impl(x2, terms=None):
        shifter, lowest, poly = _exp2_unpack(x2, terms)
        unbiased = shifter + lowest  # 1.5 * 2^23 (2^52 in float64): no exponent bias
        s = x2 + unbiased  # rounds to an integer: k itself in the low mantissa bits
        f = x2 - (s - unbiased)  # x2 - k, exact, in [-1/2, 1/2]
        p = poly[degree]
        for j in range(degree - 1, -1, -1):
            p = _fma(p, f, poly[j])
        return from_bits(bits(p) + (bits(s) << int_t(shift)))  # p * 2^k: k added to exponent
    return impl


# ---------------------------------------------------------------------------
# softplus and sigmoid built on it (per time step in the scan, also vectorized)
# ---------------------------------------------------------------------------

def fast_softplus(x):
    """softplus(x) = log(1 + e^x), and x itself above 20 (PyTorch's threshold).

    From Python it evaluates with NumPy; inside Numba it is written as
    ``max(x, 0) + log1p(e^{-|x|})`` with :func:`fast_exp`'s core and a
    branch-free ``log1p`` on (0, 1]: with ``s = e / (2 + e)`` in [0, 1/3],
    ``log(1 + e) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...)``: in float32
    a fitted polynomial of degree 4 in ``s^2`` (relative error 4.5e-9), in
    float64 the series to ``s^34`` (remainder below 2e-18 relative).
    Relative accuracy is kept for tiny ``e`` because ``s`` is computed
    directly, not as a difference.

    The exponential is :func:`fast_exp`'s core without its edge selects
    (its argument ``-|x|`` is never positive): below ``x = -87.33`` (float32;
    -708.39 in float64) the result is about the smallest normal number
    instead of ``e^x``, an absolute error below 1.2e-38 (2.3e-308).  NaN
    gives NaN and ``inf`` gives ``inf`` (the comparison with 20 passes them
    through).  The edges cost a third of the function in the scan's
    per-element work.

    Examples
    --------
    >>> import numpy as np
    >>> from fast._fastexp import fast_softplus
    >>> float(fast_softplus(np.float64(0.0)))  # log 2
    0.6931471805599453
    """
    x = np.asarray(x)
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))[()]


#: atanh(s) / s = 1 + s^2/3 + s^4/5 + ... as a polynomial in w = s^2 on [0, 1/9] (s in [0, 1/3]):
#: float32, degree 4, fitted to the relative error (4.5e-9, against 1.4e-9 for the series to
#: s^14: three FMAs fewer on the chain of every softplus); float64, the series to s^34 (2e-18)
_ATANH_32 = tuple(_F32(c) for c in (1.0, 0.3333320915699005, 0.2001076340675354,
                                     0.14000903069972992, 0.1400599479675293))
_ATANH_64 = tuple(1.0 / (2 * j + 1) for j in range(18))


@overload(fast_softplus, fastmath=_FM, jit_options={"fastmath": _FM, "error_model": "numpy"})
def _fast_softplus_impl(x):
    c = _constants(x)
    if c is None:
        return None
    under, zero = c["under"], c["zero"]
    two, threshold = _typed(x, 2.0, 20.0)
    series = _ATANH_32 if x.bitwidth == 32 else _ATANH_64  # atanh(s) / s in powers of s^2
    top = len(series) - 1

    def impl(x):
        e = _exp_core(max(-abs(x), under))  # e^-|x| in (0, 1]; e^-87.33 (f32) below that
        s = e / (two + e)
        s2 = s * s
        q = series[top]
        for j in range(top - 1, -1, -1):  # unrolled by LLVM: constant trip count
            q = _fma(q, s2, series[j])
        sp = max(x, zero) + two * s * q
        return sp if x <= threshold else x  # NaN fails the comparison: NaN comes back
    return impl


def fast_softplus_grad(x):
    """``(softplus(x), d softplus / dx)``: the step and its derivative, from one exponential.

    The derivative is sigmoid(x) up to 20 and 1 above (PyTorch's threshold, as
    :func:`fast_softplus`).  Inside Numba the first value is :func:`fast_softplus`'s,
    and the second reuses its ``e = e^{-|x|}``: sigmoid(x) = ``1 / (1 + e)``
    for x > 0 and ``e / (1 + e)`` otherwise (one more division, no second
    exponential).  The backward kernels take both in their first pass over a row, so
    that the input gradients need no exponential of their own.  In float64 Numba inlines
    the function into its caller: compiled as a function of its own, the float64 version
    was too large for LLVM to inline, and the loops that called it did not vectorize (17
    ms per million elements instead of 2.4; the float64 backward ran twice as long).
    Inlined, its numerator is written ``max(e, x > 0)`` (a conditional expression there
    made Numba's SSA check warn); until that, the float64 derivative took a second
    exponential (:func:`fast_sigmoid`'s), and a loop of this function alone ran at 7.7
    ms per million elements against 5.3 now (one thread, the Zen 3 of chapter 11).
    Below ``x = -87.33`` (float32; -708.39 in float64) the derivative is about
    the smallest normal number instead of ``e^x`` (the absolute error of
    :func:`fast_softplus`).  NaN gives ``(NaN, NaN)``, ``inf`` gives ``(inf, 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> from fast._fastexp import fast_softplus_grad
    >>> [float(v) for v in fast_softplus_grad(np.float64(0.0))]  # log 2, sigmoid(0)
    [0.6931471805599453, 0.5]
    """
    x = np.asarray(x)
    with np.errstate(over="ignore"):  # e^-x = inf far below 0: the derivative 0
        g = np.where(x > 20, 1.0, 1.0 / (1.0 + np.exp(-np.minimum(x, 20))))
    return fast_softplus(x), np.where(np.isnan(x), x, g)[()]


def _inline_in_float64(expr, caller_info, callee_info):
    """Numba's inlining rule for :func:`fast_softplus_grad`: float64 calls only (see there)."""
    return callee_info.signature.args[0].bitwidth == 64


@overload(fast_softplus_grad, fastmath=_FM, inline=_inline_in_float64,
          jit_options={"fastmath": _FM, "error_model": "numpy"})
def _fast_softplus_grad_impl(x):
    c = _constants(x)
    if c is None:
        return None
    under, zero = c["under"], c["zero"]
    one, threshold = _typed(x, 1.0, 20.0)

    def impl(x):
        sp = fast_softplus(x)
        e = _exp_core(max(-abs(x), under))  # fast_softplus's e^-|x|: LLVM computes it once
        g = (one if x > zero else e) / (one + e)  # sigmoid(x)
        return sp, g if x <= threshold else (one if x > threshold else x)  # NaN: NaN

    # float64, inlined by Numba: no conditional expression or loop of its own (inlined,
    # those made Numba's SSA check warn); the numerator of impl's sigmoid as a max
    def impl64(x):
        e = _exp_core(max(-abs(x), under))  # fast_softplus's e^-|x|: LLVM computes it once
        nan = min(abs(x), one)  # NaN only for NaN (max and min keep a NaN first argument)
        g = max(max(e, one * (x > zero)) / (one + e), one * (x > threshold)) + (nan - nan)
        return fast_softplus(x), g

    return impl if x.bitwidth == 32 else impl64


def fast_sigmoid(x):
    """sigmoid(x) = 1 / (1 + e^{-x}); inside Numba built on :func:`fast_exp`'s core.

    The argument of the exponential is clamped to where ``e^{-x}`` is a
    finite normal number (float32: [-87.33, 88]; float64: [-708.39, 709]),
    so no edge selects are needed: below ``x = -88`` the result is
    ``1 / (1 + e^88)`` = 6.1e-39 instead of ``e^x`` (absolute error below
    that; 1.2e-308 in float64), above ``x = 87.33`` it rounds to 1 as it
    should.  NaN gives NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from fast._fastexp import fast_sigmoid
    >>> float(fast_sigmoid(np.float64(0.0)))
    0.5
    """
    return 1.0 / (1.0 + np.exp(-np.asarray(x)))[()]


@overload(fast_sigmoid, fastmath=_FM, jit_options={"fastmath": _FM, "error_model": "numpy"})
def _fast_sigmoid_impl(x):
    c = _constants(x)
    if c is None:
        return None
    under, top = c["under"], c["finite_top"]
    one = _ONE_32 if x.bitwidth == 32 else 1.0

    def impl(x):
        e = _exp_core(min(max(-x, under), top))  # e^-x, finite: 1 / (1 + e) stays a division
        r = one / (one + e)
        return r if x == x else x  # the clamp turned NaN into a number: NaN comes back
    return impl


# ---------------------------------------------------------------------------
# array versions (tests, benchmarks, the book)
# ---------------------------------------------------------------------------

@njit(parallel=True, fastmath=_FM, error_model="numpy", cache=True)
def _exp_into(x, out):
    for i in prange(x.size):
        out[i] = fast_exp(x[i])


@njit(parallel=True, fastmath=_FM, error_model="numpy", cache=True)
def _exp_clamped_into(x, out):
    for i in prange(x.size):
        out[i] = fast_exp_clamped(x[i])


@njit(fastmath=_FM, error_model="numpy", cache=True)
def _libm_exp_into(x, out):
    for i in range(x.size):
        out[i] = math.exp(x[i])


def exp_array(x, libm=False, clamped=False):
    """Apply :func:`fast_exp` (or ``math.exp``, or :func:`fast_exp_clamped`) elementwise.

    Parameters
    ----------
    x : ndarray of float32 or float64
        Any shape.
    libm : bool, default False
        Use the C library's scalar exp inside the same compiled loop instead
        (for comparisons: that loop does not vectorize).
    clamped : bool, default False
        Use :func:`fast_exp_clamped` (the scan kernels' variant).

    Returns
    -------
    ndarray
        ``e^x``, same shape and dtype as ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> from fast._fastexp import exp_array
    >>> exp_array(np.array([-np.inf, np.nan, 1000.0]))
    array([ 0., nan, inf])
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"Parameter x has dtype {x.dtype} but float32 or float64 was expected")
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)
    if libm:
        _libm_exp_into(flat, out)  # serial: no lock needed
    else:  # parallel: through the package's one launch lock (safe under "workqueue")
        launch(_exp_clamped_into if clamped else _exp_into, flat, out)
    return out.reshape(x.shape)
