"""Two channels per vector: the real scan kernels of :mod:`fast.numba_cpu` for N <= 8.

Glossary
--------
======  ================================================================
pair    rows (b, d) and (b, d + 1), d even: the unit of parallel work here
lane    one of the 16 entries of a block; lanes 0-7 hold the first row's
        states 0-7 (padded with zeros), lanes 8-15 the second row's
half    8 lanes: one row's share of the block
======  ================================================================

Why this module exists
----------------------
The kernels of :mod:`fast.numba_cpu` run the loop over N in blocks of exactly
16 lanes (``_LANES``: a loop with a shorter constant trip count is not
vectorized by LLVM), so a row with N = 8, the state size of the tiny vision
models, pays for 16 state updates per step and throws half of them away.  In
float64 that is a whole wasted AVX-512 vector per step.  Here two rows that
read the same B and C (two rows of one group) share one block: each lane
takes its step ``dt`` and its ``dt * u`` from its own row (a select on the
lane index, which LLVM resolves at compile time for float64, where each half
is one vector), the lanes of B and C hold the group's 8 entries twice, and
the output ``y_t = <C_t, h_t>`` is summed over each half separately.
Every state update is the arithmetic of :mod:`fast.numba_cpu`; only sums are
taken in another order (dB and dC add up per half, then the halves), so the
results agree with the 16-lane kernels to rounding (``tests/test_numba_pairs.py``).

When it runs
------------
:func:`fast.numba_cpu.selective_scan` and
:func:`~fast.numba_cpu.selective_scan_backward` use these kernels when
:func:`pairs_apply` says so: real A, N <= 8, a row short enough for the
row-by-row kernels (no time blocks), an even number of channels, and B and
C given per batch element or per group (variable or grouped form) with an
even number of channels per group, so that both rows of a pair read the
same B and C, and a compute dtype that gains (:data:`PAIRED_DTYPES`: the
float64 forward and backward, the float32 backward); the backward also needs
a unit of whole groups for each of Numba's threads (:func:`chunk_unit`).  Otherwise the
16-lane kernels run.

Measured on the 2-core AMD EPYC of chapter 11, on one thread, old and new
kernels in alternating processes, VMamba's scan in a 32x32 training step
(B = 64, K·D = 192, L = 256, N = 8, grouped B and C, softplus): float64
forward 55 -> 39 ms, backward 99 -> 67 ms (1.45x); float32 forward 24 -> 23
ms, backward 48 -> 46 ms.  float32 gains little: its 16 lanes are one
vector, so the two rows' steps are blended into it (``vpermt2ps``) and each
of the two output sums reduces all 16 lanes with the other half zeroed;
in float64 each half is a vector of its own and the selects vanish.  On
two threads the float32 forward came out 0.78-1.03x, so it stays on 16
lanes per row (:data:`PAIRED_DTYPES`).

Layout
------
A, h0 and the last state are padded to 8 entries, (D, 8) and (B, D, 8).  B
and C come in the arguments' own layout, ``(B or 1, G, N, L)`` (no copy where
the argument is contiguous in the compute dtype); a thread lays out the group
its pair reads, ``(L, 16)``, its N entries written into both halves, in a
scratch block of its own when it reaches the group (:func:`_double_group`):
once per group.  Laying out all of B and C beforehand, twice as large, took 9 of
the scan forward's 32 ms in VMamba's 32x32 float64 step; without it the forward
ran 1.2x as fast on two threads (chapter 11, "dB and dC by whole groups").

The backward's threads take whole groups of B and C (:func:`chunk_unit`): a
thread adds a group's dB and dC into a scratch block of 16 lanes, ``(L, 16)``,
and when the group's last pair is done writes the sum of its two halves into
the gradient in the argument's own layout, ``(B, G, N, L)``.  No two threads
add into one group, so there are no per-thread copies of dB and dC to zero,
sum and transpose afterwards (8.4 MB per copy in VMamba's 32x32 float64 step:
without them its scan backward ran 1.5x as fast on two threads; chapter 11,
"dB and dC by whole groups").

Short rows
----------
Around the recurrence each row has its passes over the steps: softplus of the steps and
the gated output in the forward; the steps, derivatives and dy before the sweeps and du,
d delta and dz after them in the backward (:mod:`fast.numba_cpu`'s ``_row_steps``,
``_row_output``, ``_row_prep``, ``_row_grads``).  LLVM vectorizes them 8 float64 lanes x 4
at a time, so a row shorter than 32 steps runs them all in the scalar remainder, one
exponential at a time.  For rows shorter than :data:`~fast._spans.SPAN_BELOW` steps,
:func:`fwd_pairs_short` and :func:`bwd_pairs_short` run them over spans of consecutive
rows (:mod:`fast._spans`: consecutive in the (B, D, L) arrays, so a span is one loop),
each row's bias and D spread over its steps by passes of their own; otherwise the
recurrence is that of :func:`fwd_pairs` and :func:`bwd_pairs`, which longer rows run.
Measured in tiny Vim 8x8's training step (L = 17, float64; chapter 11, "Spans of rows and
BLAS threads").
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from ._override import Override
from ._spans import span_grads, span_output, span_prep, span_steps, span_units
from .numba_cpu import (_FMK, _GAP, _LANES, _LOG2E, _all_normal, _bc_offsets, _decay,
                        _njit_noalias, _row_grads, _row_output, _row_prep, _row_start,
                        _row_steps)

__all__ = ["pairs_apply", "forced", "forced_on", "PAIRED_DTYPES", "chunk_unit", "fwd_pairs",
           "bwd_pairs", "fwd_pairs_short", "bwd_pairs_short", "HALF"]

#: lanes per row in a shared block: half of ``_LANES``; rows with N <= HALF pair up
HALF = _LANES // 2


#: the compute dtypes that run in pairs, per pass: where the pairs measured faster than 16
#: lanes per row (the scan benchmark's ``pairs`` rows, chapter 11).  The float32 forward did
#: not (0.78-1.03x in seven runs): its 16 lanes are one vector, so the blends of the two
#: rows' steps and two 16-lane sums per step cost what the pairs save; its backward, with
#: two records and dC per step in the same vector, did (1.05-1.6x).
PAIRED_DTYPES = {"forward": (np.dtype(np.float64),),
                 "backward": (np.dtype(np.float32), np.dtype(np.float64))}

#: None: :data:`PAIRED_DTYPES` decides; True or False inside :func:`forced`
_override = Override()


def forced(on):
    """Inside the ``with`` block, pairs run wherever the layout allows (``on=True``, whatever
    :data:`PAIRED_DTYPES` says) or nowhere (``on=False``): for comparisons (not thread-safe).

    The scan benchmark times both, the tests check both against the reference.

    Examples
    --------
    >>> from fast import numba_pairs
    >>> with numba_pairs.forced(False):
    ...     numba_pairs._override.value
    False
    >>> numba_pairs._override.value is None
    True
    """
    return _override.forced(on)


def forced_on():
    """True inside ``forced(True)``: the pairs then run even where channel tiles
    (:mod:`fast.numba_tiles`) would."""
    return _override.value is True


def pairs_apply(s, block, dtype, direction):
    """True if the real scan of :class:`~ssm_ref.scan_args.ScanArgs` ``s`` runs two rows per block.

    ``block`` is the longest row that the row-by-row kernels of
    :mod:`fast.numba_cpu` take with 16 lanes (longer rows run in time blocks,
    which have no pair version); ``dtype`` the compute dtype and
    ``direction`` ``"forward"`` or ``"backward"`` (see :data:`PAIRED_DTYPES`).  The backward
    also needs a unit of work (:func:`chunk_unit`) for each of Numba's threads: with fewer,
    a thread would sit idle, and the 16-lane kernels, which split rows, run instead.
    """
    forced_to = _override.value
    wanted = np.dtype(dtype) in PAIRED_DTYPES[direction] if forced_to is None else forced_to
    if not wanted or s.is_complex or s.dstate > HALF or s.length > block or s.dim % 2:
        return False
    for X, form in ((s.B, s.form_B), (s.C, s.form_C)):
        groups = form.view_shape(X.shape)[1]  # G': D for the constant form (B per channel)
        if groups == s.dim or (s.dim // groups) % 2:  # two rows of a pair read two B rows
            return False
    return direction == "forward" or unit_count(s) >= numba.get_num_threads()


def chunk_unit(s):
    """Pairs per unit of the backward's parallel work: the fewest consecutive pairs that hold
    whole groups of both B and C (their channels per group, in pairs, have it as a multiple).

    The backward gives each thread whole units, so that one thread adds into a group's dB
    and dC.  Pairs run in order (b, d), so a group's pairs are consecutive, and a unit never
    straddles two batch elements (it divides the D / 2 pairs of one).
    """
    per_group = [s.dim // form.view_shape(X.shape)[1]
                 for X, form in ((s.B, s.form_B), (s.C, s.form_C))]  # channels, even
    return math.lcm(*per_group) // 2


def unit_count(s):
    """How many units of :func:`chunk_unit` pairs the backward of ``s`` has."""
    return s.batch * s.dim // 2 // chunk_unit(s)


# ---------------------------------------------------------------------------
# the recurrence of a pair
# ---------------------------------------------------------------------------

@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _pair_scan(L, dt, bu, a2, h, y, B_row, C_row, b_st, c_st, zero, normal, terms):
    """The recurrence of two rows in one block: lanes < 8 use ``dt[0]``, ``bu[0]`` and sum
    into ``y[0]``, lanes >= 8 ``dt[1]``, ``bu[1]`` and ``y[1]`` (compare ``_fwd_block_scan``)."""
    for t in range(L):
        dt0, dt1, bu0, bu1 = dt[0, t], dt[1, t], bu[0, t], bu[1, t]
        Bt = B_row[np.uint64(t * b_st)]  # (16,): the group's 8 entries, twice
        Ct = C_row[np.uint64(t * c_st)]
        acc0 = zero
        acc1 = zero
        for j in range(_LANES):  # constant trip count and constant halves: selects fold
            n = np.uint64(j)
            second = j >= HALF
            hn = (_decay((dt1 if second else dt0) * a2[n], normal, terms) * h[n]
                  + (bu1 if second else bu0) * Bt[n])
            h[n] = hn
            p = hn * Ct[n]
            acc0 += zero if second else p
            acc1 += p if second else zero
        y[0, t] = acc0
        y[1, t] = acc1


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _pair_bwd_forward(L, dt, bu, dy, a2, h, y, abar, ah, B_row, C_row, dC_row, b_st, c_st,
                      zero, normal, terms):
    """The backward's forward sweep of a pair (compare ``_bwd_row_forward``): writes ``y``,
    adds dy_t h_t into dC_t (each half into its own lanes) and records Abar_t, Abar_t h_{t-1}."""
    for t in range(L):
        tt = np.uint64(t)
        dt0, dt1, bu0, bu1 = dt[0, tt], dt[1, tt], bu[0, tt], bu[1, tt]
        dy0, dy1 = dy[0, tt], dy[1, tt]
        Bt = B_row[tt * np.uint64(b_st)]
        Ct = C_row[tt * np.uint64(c_st)]
        dCt = dC_row[tt * np.uint64(c_st)]
        abar_t = abar[tt]
        ah_t = ah[tt]
        acc0 = zero
        acc1 = zero
        for j in range(_LANES):
            n = np.uint64(j)
            second = j >= HALF
            at = _decay((dt1 if second else dt0) * a2[n], normal, terms)
            ahn = at * h[n]
            hn = ahn + (bu1 if second else bu0) * Bt[n]
            abar_t[n] = at
            ah_t[n] = ahn
            h[n] = hn
            p = hn * Ct[n]
            acc0 += zero if second else p
            acc1 += p if second else zero
            dCt[n] += (dy1 if second else dy0) * hn
        y[0, tt] = acc0
        y[1, tt] = acc1


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _pair_bwd_reverse(L, dy, dt, bu, a, g, sdA, abar, ah, B_row, C_row, dB_row, b_st, c_st,
                      pA, pB, zero):
    """The reverse sweep of a pair (compare ``_bwd_block_reverse``): writes ``pA[i, t]`` =
    sum_n g_n ah_n A_n and ``pB[i, t]`` = sum_n g_n B_n over row i's half, adds g_n bu_t to dB_t."""
    for i in range(L - 1, -1, -1):
        t = np.uint64(i)
        dt0, dt1, bu0, bu1 = dt[0, t], dt[1, t], bu[0, t], bu[1, t]
        dy0, dy1 = dy[0, t], dy[1, t]
        Bt = B_row[t * np.uint64(b_st)]
        Ct = C_row[t * np.uint64(c_st)]
        dBt = dB_row[t * np.uint64(b_st)]
        abar_t = abar[t]
        ah_t = ah[t]
        accA0 = zero
        accA1 = zero
        accB0 = zero
        accB1 = zero
        for j in range(_LANES):
            n = np.uint64(j)
            second = j >= HALF
            gn = g[n] + (dy1 if second else dy0) * Ct[n]
            ga = gn * ah_t[n]  # gradient w.r.t. dt_t * A_n
            pa = ga * a[n]
            pb = gn * Bt[n]
            accA0 += zero if second else pa
            accA1 += pa if second else zero
            accB0 += zero if second else pb
            accB1 += pb if second else zero
            sdA[n] += ga * (dt1 if second else dt0)
            dBt[n] += gn * (bu1 if second else bu0)
            g[n] = gn * abar_t[n]
        pA[0, t] = accA0
        pA[1, t] = accA1
        pB[0, t] = accB0
        pB[1, t] = accB1


# ---------------------------------------------------------------------------
# the kernels: the arguments of _fwd_real and _bwd_real, with the layout above
# ---------------------------------------------------------------------------

@njit(cache=True)
def _group_strides(Bx, Cx, nd):
    """How pair (b, d) reads B and C in their (Bb, G, N, Lb) layouts, as 6 ints (compare
    ``fast.numba_cpu._bc_strides``): for B then C the batch stride (0: one for the batch),
    the time stride (0: one step) and the channels per group."""
    return (1 if Bx.shape[0] > 1 else 0, 1 if Bx.shape[3] > 1 else 0, nd // Bx.shape[1],
            1 if Cx.shape[0] > 1 else 0, 1 if Cx.shape[3] > 1 else 0, nd // Cx.shape[1])


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _double_group(X_g, out):
    """A group's B or C, ``X_g`` (N, Lb) in the argument's layout, into the pairs' block
    ``out`` (Lb, 16): entry n in lanes n and 8 + n, for each row of the pair.  The lanes
    N..7 and 8 + N..15 are left as they are (zeros: the scratch is allocated zeroed)."""
    for n in range(X_g.shape[0]):
        for t in range(X_g.shape[1]):
            v = X_g[n, t]
            out[t, n] = v
            out[t, n + HALF] = v


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _load_groups(Bx, Cx, b, d, b_sb, b_gd, c_sb, c_gd, Bd, Cd, b_at, c_at):
    """Pair (b, d)'s groups of B and C doubled into the blocks ``Bd`` and ``Cd`` unless they
    hold them already (``b_at``, ``c_at``: which they hold, -1 for none); returns which they
    hold now."""
    bb, bg, cb, cg = _bc_offsets(b, d, b_sb, b_gd, c_sb, c_gd)
    b_key = bb * Bx.shape[1] + bg
    c_key = cb * Cx.shape[1] + cg
    if b_key != b_at:
        _double_group(Bx[bb, bg], Bd)
    if c_key != c_at:
        _double_group(Cx[cb, cg], Cd)
    return b_key, c_key


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _write_halves(acc, out, zero):
    """A group's dB or dC, added up in 16 lanes ``acc`` (Lb, 16): its two halves' sum into
    ``out`` (N, Lb), the argument's layout; ``acc`` is zeroed for the next group."""
    for t in range(out.shape[1]):
        for n in range(out.shape[0]):
            out[n, t] = acc[t, n] + acc[t, n + HALF]
        for n in range(_LANES):
            acc[t, n] = zero


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _pair_start(A, h0, b, d, has_h0, zero, log2e, a, a2, h):
    """The pair's poles ``a`` (and ``a2 = a log2 e``) and initial state ``h``, 16 lanes."""
    for i in range(2):  # A and h0 hold 8 states: each row fills its half
        _row_start(A, h0, b, d + i, has_h0, zero, a[i * HALF:], h[i * HALF:])
    for n in range(_LANES):
        a2[n] = a[n] * log2e


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def fwd_pairs(u, delta, A, Bx, Cx, Dv, z, bias, h0,
              has_D, has_z, has_bias, softplus, has_h0, out, last, screen, nchunks, terms):
    """``fast.numba_cpu._fwd_real`` with two rows per block; A (D, 8), Bx and Cx (Bb, G, N,
    Lb) as the arguments, each group doubled into the thread's block when first read."""
    nb, nd, L = u.shape
    zero = u.dtype.type(0)
    log2e = u.dtype.type(_LOG2E)
    b_sb, b_st, b_gd, c_sb, c_st, c_gd = _group_strides(Bx, Cx, nd)
    npairs = nb * nd // 2
    dt_s = np.empty((nchunks, 2, L + _GAP), u.dtype)
    bu_s = np.empty((nchunks, 2, L + _GAP), u.dtype)
    y_s = np.empty((nchunks, 2, L + _GAP), u.dtype)
    h_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    a_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    a2_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    Bd_s = np.zeros((nchunks, Bx.shape[3] + 1, _LANES), u.dtype)  # the group's B, doubled
    Cd_s = np.zeros((nchunks, Cx.shape[3] + 1, _LANES), u.dtype)
    for c in prange(nchunks):  # one block of pairs per thread
        dt, bu, y, h, a, a2 = dt_s[c], bu_s[c], y_s[c], h_s[c], a_s[c], a2_s[c]
        Bd, Cd = Bd_s[c], Cd_s[c]
        b_at, c_at = -1, -1  # the groups the blocks hold: bb * G + bg, none yet
        for p in range(c * npairs // nchunks, (c + 1) * npairs // nchunks):
            b = (2 * p) // nd
            d = 2 * p - b * nd  # even
            s = zero
            for i in range(2):
                s += _row_steps(delta[b, d + i], u[b, d + i], bias[d + i] if has_bias else zero,
                                softplus, dt[i], bu[i], z[b, d + i] if has_z else u[b, d + i],
                                has_z)
            _pair_start(A, h0, b, d, has_h0, zero, log2e, a, a2, h)
            b_at, c_at = _load_groups(Bx, Cx, b, d, b_sb, b_gd, c_sb, c_gd, Bd, Cd, b_at, c_at)
            if _all_normal(dt[0, :L], a2[:HALF], zero) and _all_normal(dt[1, :L], a2[HALF:_LANES],
                                                                      zero):
                _pair_scan(L, dt, bu, a2, h, y, Bd, Cd, b_st, c_st, zero, True, terms)
            else:
                _pair_scan(L, dt, bu, a2, h, y, Bd, Cd, b_st, c_st, zero, False, terms)
            for i in range(2):
                s += _row_output(y[i], u[b, d + i], Dv[d + i] if has_D else zero, has_D,
                                 z[b, d + i] if has_z else u[b, d + i], has_z, out[b, d + i])
                for n in range(HALF):
                    last[b, d + i, n] = h[i * HALF + n]
                    s += h[i * HALF + n]
                screen[2 * p + i] = s  # the pair's sum so far: any non-finite term shows


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def bwd_pairs(dout, u, delta, A, Bx, Cx, Dv, z, bias, h0, dlast,
              has_D, has_z, has_bias, softplus, has_h0, has_dlast,
              du, ddelta, dz, dh0, dA_c, dB, dC, dD_c, dbias_c, screen, unit, terms):
    """``fast.numba_cpu._bwd_real`` with two rows per block; A, h0, dlast and dh0 with 8
    states; Bx, Cx and dB, dC in the arguments' layout (B|1, G', N, L|1), each group doubled
    into the thread's 16-lane blocks (see the module docstring); each thread takes whole
    units of ``unit`` pairs."""
    nb, nd, L = u.shape
    zero = u.dtype.type(0)
    one = u.dtype.type(1)
    log2e = u.dtype.type(_LOG2E)
    b_sb, b_st, b_gd, c_sb, c_st, c_gd = _group_strides(Bx, Cx, nd)
    nunits = nb * nd // 2 // unit
    nchunks = dA_c.shape[0]
    # per-thread scratch, allocated here so the parallel body gets it as arguments
    dt_s = np.empty((nchunks, 2, L + _GAP), u.dtype)
    bu_s = np.empty((nchunks, 2, L + _GAP), u.dtype)
    y_s = np.empty((nchunks, 2, L + _GAP), u.dtype)
    dy_s = np.empty((nchunks, 2, L + _GAP), u.dtype)
    pA_s = np.empty((nchunks, 2, L + _GAP), u.dtype)
    pB_s = np.empty((nchunks, 2, L + _GAP), u.dtype)
    sz_s = np.empty((nchunks, 2, L + _GAP), u.dtype)
    dsp_s = np.empty((nchunks, 2, L + _GAP), u.dtype)
    abar_s = np.empty((nchunks, L + 1, _LANES), u.dtype)  # +1: a gap between threads
    ah_s = np.empty((nchunks, L + 1, _LANES), u.dtype)
    a_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    a2_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    h_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    g_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    sdA_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    dBs_s = np.zeros((nchunks, Bx.shape[3] + 1, _LANES), u.dtype)  # a group's dB, 16 lanes
    dCs_s = np.zeros((nchunks, Cx.shape[3] + 1, _LANES), u.dtype)
    Bd_s = np.zeros((nchunks, Bx.shape[3] + 1, _LANES), u.dtype)  # the group's B, doubled
    Cd_s = np.zeros((nchunks, Cx.shape[3] + 1, _LANES), u.dtype)
    for c in prange(nchunks):  # whole units of pairs per thread, its own dA copy
        dt, bu, y, dy, pA, pB, sz = (dt_s[c], bu_s[c], y_s[c], dy_s[c], pA_s[c], pB_s[c],
                                      sz_s[c])
        abar, ah, a, a2, h, g, sdA = abar_s[c], ah_s[c], a_s[c], a2_s[c], h_s[c], g_s[c], sdA_s[c]
        dsp, dBs, dCs, Bd, Cd = dsp_s[c], dBs_s[c], dCs_s[c], Bd_s[c], Cd_s[c]
        b_at, c_at = -1, -1  # the groups the blocks hold: bb * G + bg, none yet
        for p in range(c * nunits // nchunks * unit, (c + 1) * nunits // nchunks * unit):
            b = (2 * p) // nd
            d = 2 * p - b * nd  # even
            s = zero
            for i in range(2):
                u_row = u[b, d + i]
                z_row = z[b, d + i] if has_z else u_row
                s_in, sD = _row_prep(delta[b, d + i], u_row, bias[d + i] if has_bias else zero,
                                     softplus, dout[b, d + i], z_row, has_z, dt[i], bu[i],
                                     dsp[i], sz[i], dy[i], zero)
                s += s_in
                dD_c[c, d + i] += sD
            _pair_start(A, h0, b, d, has_h0, zero, log2e, a, a2, h)
            b_at, c_at = _load_groups(Bx, Cx, b, d, b_sb, b_gd, c_sb, c_gd, Bd, Cd, b_at, c_at)
            bb, bg, cb, cg = _bc_offsets(b, d, b_sb, b_gd, c_sb, c_gd)
            # 1. forward again: y, dC_t = dy_t h_t and the records of both rows
            if _all_normal(dt[0, :L], a2[:HALF], zero) and _all_normal(dt[1, :L], a2[HALF:_LANES],
                                                                      zero):
                _pair_bwd_forward(L, dt, bu, dy, a2, h, y, abar, ah, Bd, Cd, dCs, b_st,
                                  c_st, zero, True, terms)
            else:
                _pair_bwd_forward(L, dt, bu, dy, a2, h, y, abar, ah, Bd, Cd, dCs, b_st,
                                  c_st, zero, False, terms)
            # 2. reverse scan over the records: g = dLoss/dh_t (eq-selective-backward)
            for i in range(2):
                for n in range(HALF):
                    g[i * HALF + n] = dlast[b, d + i, n] if has_dlast else zero
            for n in range(_LANES):
                sdA[n] = zero
            _pair_bwd_reverse(L, dy, dt, bu, a, g, sdA, abar, ah, Bd, Cd, dBs, b_st,
                              c_st, pA, pB, zero)
            if (d + 2) % b_gd == 0:  # the group's last pair: its dB is whole
                _write_halves(dBs, dB[bb, bg], zero)
            if (d + 2) % c_gd == 0:
                _write_halves(dCs, dC[cb, cg], zero)
            for i in range(2):
                u_row = u[b, d + i]
                z_row = z[b, d + i] if has_z else u_row
                s_g, sb = _row_grads(dt[i], pA[i], pB[i], dy[i], dsp[i], u_row,
                                     Dv[d + i] if has_D else zero, du[b, d + i], ddelta[b, d + i],
                                     has_z, dout[b, d + i], z_row, sz[i], y[i],
                                     dz[b, d + i] if has_z else dz[0, 0], one)
                s += s_g
                dbias_c[c, d + i] += sb
                for n in range(HALF):
                    dA_c[c, d + i, n] += sdA[i * HALF + n]
                    dh0[b, d + i, n] = g[i * HALF + n]
                    s += g[i * HALF + n]
                screen[2 * p + i] = s  # the pair's sum so far: any non-finite term shows


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def fwd_pairs_short(u, delta, A, Bx, Cx, Dv, z, bias, h0,
                    has_D, has_z, has_bias, softplus, has_h0, out, last, screen, nchunks, terms):
    """:func:`fwd_pairs` for rows shorter than :data:`~fast._spans.SPAN_BELOW` steps: the
    per-row passes over spans of pairs (:mod:`fast._spans`), whose screen sum each of their
    rows gets.

    The recurrence of a pair is :func:`fwd_pairs`' written out again: with both row lengths
    in one kernel, the long rows' code measured 0.94x though its loops were the same
    (chapter 11, "Spans of rows and BLAS threads"), so :func:`fwd_pairs` is left as it was.
    """
    nb, nd, L = u.shape
    zero = u.dtype.type(0)
    log2e = u.dtype.type(_LOG2E)
    b_sb, b_st, b_gd, c_sb, c_st, c_gd = _group_strides(Bx, Cx, nd)
    npairs = nb * nd // 2
    span = span_units(L, 2)
    items = 2 * span * L
    u1, delta1, z1, out1 = (u.reshape(u.size), delta.reshape(delta.size), z.reshape(z.size),
                            out.reshape(out.size))  # the rows one after the other
    # per-thread scratch, allocated here so the parallel body gets it as arguments
    dt_s = np.empty((nchunks, items + _GAP), u.dtype)
    bu_s = np.empty((nchunks, items + _GAP), u.dtype)
    y_s = np.empty((nchunks, items + _GAP), u.dtype)
    xb_s = np.empty((nchunks, items + _GAP), u.dtype)  # a span's delta + bias
    h_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    a_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    a2_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    Bd_s = np.zeros((nchunks, Bx.shape[3] + 1, _LANES), u.dtype)  # the group's B, doubled
    Cd_s = np.zeros((nchunks, Cx.shape[3] + 1, _LANES), u.dtype)
    for c in prange(nchunks):  # one block of pairs per thread, span after span
        dt1, bu1, y1, xb, h, a, a2 = dt_s[c], bu_s[c], y_s[c], xb_s[c], h_s[c], a_s[c], a2_s[c]
        dt = dt1[:items].reshape((2 * span, L))  # the span's rows
        bu = bu1[:items].reshape((2 * span, L))
        y = y1[:items].reshape((2 * span, L))
        Bd, Cd = Bd_s[c], Cd_s[c]
        b_at, c_at = -1, -1  # the groups the blocks hold: bb * G + bg, none yet
        p_end = (c + 1) * npairs // nchunks
        for p0 in range(c * npairs // nchunks, p_end, span):
            r0, r1 = 2 * p0, 2 * min(p0 + span, p_end)  # the span's rows
            s = span_steps(delta1, u1, z1, bias, has_bias, softplus, has_z, r0, r1, nd, L, xb,
                           dt1, bu1, zero)
            for q in range(r0, r1, 2):  # the span's pairs
                b = q // nd
                d = q - b * nd  # even
                k = q - r0
                dtp, bup, yp = dt[k:k + 2], bu[k:k + 2], y[k:k + 2]
                _pair_start(A, h0, b, d, has_h0, zero, log2e, a, a2, h)
                b_at, c_at = _load_groups(Bx, Cx, b, d, b_sb, b_gd, c_sb, c_gd, Bd, Cd, b_at,
                                          c_at)
                if _all_normal(dtp[0], a2[:HALF], zero) and _all_normal(dtp[1], a2[HALF:_LANES],
                                                                        zero):
                    _pair_scan(L, dtp, bup, a2, h, yp, Bd, Cd, b_st, c_st, zero, True, terms)
                else:
                    _pair_scan(L, dtp, bup, a2, h, yp, Bd, Cd, b_st, c_st, zero, False, terms)
                for i in range(2):
                    for m in range(HALF):
                        last[b, d + i, m] = h[i * HALF + m]
                        s += h[i * HALF + m]
            s += span_output(y1, u1, z1, Dv, has_D, has_z, r0, r1, nd, L, out1, zero)
            for r in range(r0, r1):
                screen[r] = s  # the span's sum: any non-finite term shows


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def bwd_pairs_short(dout, u, delta, A, Bx, Cx, Dv, z, bias, h0, dlast,
                    has_D, has_z, has_bias, softplus, has_h0, has_dlast,
                    du, ddelta, dz, dh0, dA_c, dB, dC, dD_c, dbias_c, screen, unit, terms):
    """:func:`bwd_pairs` for rows shorter than :data:`~fast._spans.SPAN_BELOW` steps: the
    per-row passes over spans of pairs, as :func:`fwd_pairs_short` (and the sweeps of a pair
    written out again for the same reason)."""
    nb, nd, L = u.shape
    zero = u.dtype.type(0)
    one = u.dtype.type(1)
    log2e = u.dtype.type(_LOG2E)
    b_sb, b_st, b_gd, c_sb, c_st, c_gd = _group_strides(Bx, Cx, nd)
    nunits = nb * nd // 2 // unit
    nchunks = dA_c.shape[0]
    span = span_units(L, 2)
    items = 2 * span * L
    dout1, u1, delta1, z1, du1, ddelta1, dz1 = (  # the rows one after the other
        dout.reshape(dout.size), u.reshape(u.size), delta.reshape(delta.size), z.reshape(z.size),
        du.reshape(du.size), ddelta.reshape(ddelta.size), dz.reshape(dz.size))
    # per-thread scratch, allocated here so the parallel body gets it as arguments
    dt_s = np.empty((nchunks, items + _GAP), u.dtype)
    bu_s = np.empty((nchunks, items + _GAP), u.dtype)
    y_s = np.empty((nchunks, items + _GAP), u.dtype)
    dy_s = np.empty((nchunks, items + _GAP), u.dtype)
    pA_s = np.empty((nchunks, items + _GAP), u.dtype)
    pB_s = np.empty((nchunks, items + _GAP), u.dtype)
    sz_s = np.empty((nchunks, items + _GAP), u.dtype)
    dsp_s = np.empty((nchunks, items + _GAP), u.dtype)
    xb_s = np.empty((nchunks, items + _GAP), u.dtype)  # the span's delta + bias
    abar_s = np.empty((nchunks, L + 1, _LANES), u.dtype)  # +1: a gap between threads
    ah_s = np.empty((nchunks, L + 1, _LANES), u.dtype)
    a_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    a2_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    h_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    g_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    sdA_s = np.empty((nchunks, _LANES + _GAP), u.dtype)
    dBs_s = np.zeros((nchunks, Bx.shape[3] + 1, _LANES), u.dtype)  # a group's dB, 16 lanes
    dCs_s = np.zeros((nchunks, Cx.shape[3] + 1, _LANES), u.dtype)
    Bd_s = np.zeros((nchunks, Bx.shape[3] + 1, _LANES), u.dtype)  # the group's B, doubled
    Cd_s = np.zeros((nchunks, Cx.shape[3] + 1, _LANES), u.dtype)
    for c in prange(nchunks):  # whole units of pairs per thread, its own dA copy
        dt1, bu1, y1, dy1, pA1, pB1, sz1, dsp1, xb = (
            dt_s[c], bu_s[c], y_s[c], dy_s[c], pA_s[c], pB_s[c], sz_s[c], dsp_s[c], xb_s[c])
        dt = dt1[:items].reshape((2 * span, L))  # the span's rows
        bu = bu1[:items].reshape((2 * span, L))
        y = y1[:items].reshape((2 * span, L))
        dy = dy1[:items].reshape((2 * span, L))
        pA = pA1[:items].reshape((2 * span, L))
        pB = pB1[:items].reshape((2 * span, L))
        abar, ah, a, a2, h, g, sdA = abar_s[c], ah_s[c], a_s[c], a2_s[c], h_s[c], g_s[c], sdA_s[c]
        dBs, dCs, Bd, Cd = dBs_s[c], dCs_s[c], Bd_s[c], Cd_s[c]
        b_at, c_at = -1, -1  # the groups the blocks hold: bb * G + bg, none yet
        p_end = (c + 1) * nunits // nchunks * unit
        for p0 in range(c * nunits // nchunks * unit, p_end, span):
            r0, r1 = 2 * p0, 2 * min(p0 + span, p_end)  # the span's rows
            s = span_prep(delta1, u1, dout1, z1, bias, has_bias, softplus, has_z, r0, r1, nd, L,
                          xb, dt1, bu1, dsp1, sz1, dy1, dD_c, c, zero)
            for q in range(r0, r1, 2):  # the span's pairs
                b = q // nd
                d = q - b * nd  # even
                k = q - r0
                dtp, bup, yp, dyp, pAp, pBp = (dt[k:k + 2], bu[k:k + 2], y[k:k + 2],
                                               dy[k:k + 2], pA[k:k + 2], pB[k:k + 2])
                _pair_start(A, h0, b, d, has_h0, zero, log2e, a, a2, h)
                b_at, c_at = _load_groups(Bx, Cx, b, d, b_sb, b_gd, c_sb, c_gd, Bd, Cd, b_at,
                                          c_at)
                bb, bg, cb, cg = _bc_offsets(b, d, b_sb, b_gd, c_sb, c_gd)
                # 1. forward again: y, dC_t = dy_t h_t and the records of both rows
                if _all_normal(dtp[0], a2[:HALF], zero) and _all_normal(dtp[1], a2[HALF:_LANES],
                                                                        zero):
                    _pair_bwd_forward(L, dtp, bup, dyp, a2, h, yp, abar, ah, Bd, Cd, dCs, b_st,
                                      c_st, zero, True, terms)
                else:
                    _pair_bwd_forward(L, dtp, bup, dyp, a2, h, yp, abar, ah, Bd, Cd, dCs, b_st,
                                      c_st, zero, False, terms)
                # 2. reverse scan over the records: g = dLoss/dh_t (eq-selective-backward)
                for i in range(2):
                    for m in range(HALF):
                        g[i * HALF + m] = dlast[b, d + i, m] if has_dlast else zero
                for m in range(_LANES):
                    sdA[m] = zero
                _pair_bwd_reverse(L, dyp, dtp, bup, a, g, sdA, abar, ah, Bd, Cd, dBs, b_st,
                                  c_st, pAp, pBp, zero)
                if (d + 2) % b_gd == 0:  # the group's last pair: its dB is whole
                    _write_halves(dBs, dB[bb, bg], zero)
                if (d + 2) % c_gd == 0:
                    _write_halves(dCs, dC[cb, cg], zero)
                for i in range(2):
                    for m in range(HALF):
                        dA_c[c, d + i, m] += sdA[i * HALF + m]
                        dh0[b, d + i, m] = g[i * HALF + m]
                        s += g[i * HALF + m]
            # 3. du, d delta and dz
            s += span_grads(dt1, pA1, pB1, dy1, dsp1, y1, sz1, u1, dout1, z1, Dv, has_D, has_z,
                            r0, r1, nd, L, du1, ddelta1, dz1, dbias_c, c, one)
            for r in range(r0, r1):
                screen[r] = s  # the span's sum: any non-finite term shows
