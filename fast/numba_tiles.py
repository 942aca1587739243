"""Sixteen channels per vector: the float32 scan kernels of :mod:`fast.numba_cpu` by channel tiles.

Glossary
--------
======  ================================================================
tile    16 channels d0 .. d0 + 15 of one batch element and one group of B
        and C: the unit of parallel work here (fewer at the end of a group,
        the missing lanes padded with zero steps)
lane    one of the 16 entries of a vector; here lane j is channel d0 + j
TILE    the tile width: 16 float32 lanes, one AVX-512 vector
======  ================================================================

Why this module exists
----------------------
The kernels of :mod:`fast.numba_cpu` put the state dimension N in the
vector lanes: one row (one channel) at a time, 16 states per vector.  Each
step then ends in ``y_t = <C_t, h_t>``, a sum across the lanes, which costs
8 instructions (4 shuffles, 4 adds) of a 29.5-instruction step.  When the
16 channels of a tile read the same B and C (their variable or grouped
form, Mamba's case), the channels can take the lanes instead: lane j holds
state n of channel d0 + j, and a step of state n is

    h[n] = 2^(dt * a2[n]) * h[n] + bu * B_t[n],    y += h[n] * C_t[n]

with ``dt``, ``bu``, ``y``, ``h[n]`` and ``a2[n]`` 16-lane vectors and
``B_t[n]``, ``C_t[n]`` one number broadcast to all lanes (a memory operand
of the multiply, no extra instruction).  ``y`` sums over n in its own
lanes: no sum across lanes at all, 20 instructions per 16 state updates
(loop overhead included) instead of 29.5, and the N states of a step are N
independent chains instead of one.

The price is a transpose: the steps ``dt`` and ``dt * u`` are computed
row by row (one channel, vectorized over time, as in :mod:`fast.numba_cpu`),
but the scan reads them one time step (16 channels) at a time, and ``y``
comes out the other way round.  :func:`transpose_block` turns a 16 x 16
block in 64 two-vector shuffles (an LLVM ``shufflevector`` network written
with llvmlite in :mod:`fast._lanes`; element by element the three transposes
took as long as the scan itself, measured); on AVX2 as four 8 x 8 squares.

Rows whose B and C (two (L, N) arrays) exceed the forward's block of
``fast.numba_cpu._FWD_BC_BYTES`` run :func:`fwd_tiles_long`: time blocks
outside, the thread's tiles inside, so that a block's B and C stay in
cache, each tile's state carried from block to block.  At N = 64, L = 16384
(B and C 4 MB each) that keeps the forward at about 6.9 G updates/s on the
2 cores of chapter 11, where the row kernels in time blocks ran at 3.8.

Everything else is the row kernel's arithmetic: the same exponential
(:func:`fast._fastexp.fast_exp2_normal` or ``fast_exp2_scan`` by tile, as
:func:`fast.numba_cpu._all_normal` decides by row), the same softplus and
output passes (:func:`fast.numba_cpu._row_steps`,
:func:`fast.numba_cpu._row_output`), the same screen sums.  Only the sum
over n for ``y`` is taken in another order, so the results agree with the
row kernels to rounding (``tests/test_numba_tiles.py``).

The backward pass
-----------------
:func:`bwd_tiles` is :func:`fast.numba_cpu._bwd_real` with the same change:
the forward sweep again (keeping the records Abar_t and Abar_t h_{t-1}),
then the reverse sweep, 16 channels per vector.  The per-step sums over the
states (``y_t``, and the ``pA_t``, ``pB_t`` that become ``d delta`` and
``du``) are again lane by lane, with no sum across lanes.  What is summed
over channels now is dB_t and dC_t, shared by the tile's channels: each
step adds its products into a per-thread (L, N, 16) array of lanes, and the
16 lanes are summed once per batch element and group, not once per step
(:func:`add_lane_sums`, 16 steps and states at a time).
The price is memory: the records and the lanes are four (L, N, 16) arrays
per thread, 16 times a row's records, so the tiles run only while these
fit in about a core's level-2 cache (:data:`BWD_TILE_BYTES`, L N <= 4096 in
float32, which covers VMamba's scan but not the headline size, where they
measured as fast as the row kernels and no faster).

Short rows
----------
The per-row passes around the recurrence (softplus of the steps, the gated output; in
the backward the steps, derivatives and dy before the sweeps, du, d delta and dz after
them) are loops over a row's steps that LLVM vectorizes 16 float32 lanes x 4 at a time;
a row of 17 steps (tiny Vim 8x8) runs them in the scalar remainder, and left out they
were 44% of the forward kernel and 35% of the backward on one thread.  For rows shorter
than :data:`~fast._spans.SPAN_BELOW` steps, :func:`fwd_tiles_short` and
:func:`bwd_tiles_short` run them over spans of whole tiles, whose rows are consecutive
in the (B, D, L) arrays (:mod:`fast._spans`), and transpose a tile's 16 rows straight
from and into the span's rows (:func:`_rows_to_lanes`, :func:`_lanes_to_rows`).  The
recurrence is that of :func:`fwd_tiles` and :func:`bwd_tiles`, which longer rows run.
Measured: chapter 11, "Spans of rows and BLAS threads".

When they run
-------------
:func:`fast.numba_cpu.selective_scan` and
:func:`~fast.numba_cpu.selective_scan_backward` use the tile kernels when
:func:`tiles_apply` says so: real A, a float32 computation, a row short
enough for the row-by-row kernels (the backward; the forward runs longer
rows in time blocks, :func:`fwd_tiles_long`), B and C both given per
batch element or per group (variable or grouped form) with the same groups
of at least 16 channels, so that a tile's channels read one B and one C,
and for the backward records within :data:`BWD_TILE_BYTES`.  They come
before the pair kernels of :mod:`fast.numba_pairs` (which run where the
tiles do not, unless ``numba_pairs.forced(True)``), then the row kernels.
float64 is not tiled: tiles of 8 channels (one float64 vector) are loops of
8 constant trips, which LLVM leaves to the unroller, mostly scalar
(0.25-0.81x the pairs or rows); 16 channels in two float64 vectors were no faster in
the forward and 0.6-0.7x as fast as the pairs in the backward, measured at
VMamba's size.

Measured on the 2-core AMD EPYC of chapter 11: see chapter 11, "Sixteen
channels per vector", and the ``tiles`` rows of the scan benchmark.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._lanes import WIDTH, add_lane_sums, transpose_block
from ._override import Override
from ._spans import span_grads, span_output, span_prep, span_steps, span_units
from .numba_cpu import (_FMK, _GAP, _LOG2E, _bc_offsets, _bc_strides, _decay, _NORMAL_LOW,
                        _njit_noalias, _row_dy, _row_dz, _row_input_grads, _row_output,
                        _row_steps, _time_slice)

__all__ = ["tiles_apply", "backward_fits", "tile_count", "forced", "TILED_DTYPES", "TILE",
           "fwd_tiles", "fwd_tiles_long", "bwd_tiles", "fwd_tiles_short", "bwd_tiles_short",
           "sum_copies", "transpose_block", "add_lane_sums"]

#: channels per tile: one float32 AVX-512 vector
TILE = WIDTH

#: the compute dtypes whose forward runs in tiles (16 float32 lanes per vector)
TILED_DTYPES = (np.dtype(np.float32),)

#: the backward runs in tiles while its per-thread records (Abar_t, Abar_t h_{t-1}) and lanes
#: of dB and dC, four (L, N, 16) arrays, take at most this many bytes (L N <= 4096 in
#: float32), about the level-2 cache of a core.  Measured (chapter 11), tiles against the
#: row kernels: 1.3-1.45x at 0.5 MB (VMamba's scan), 1.1-1.4x at 1 MB, 0.95-1.07x at 2 MB,
#: 0.98-0.99x at 4 MB (the headline size): beyond the cache the records and lanes are read
#: back from level 3 at every step.
BWD_TILE_BYTES = 1024 * 1024

#: None: the rules of :func:`tiles_apply`; False inside ``forced(False)``
_override = Override()


def forced(on):
    """Inside the ``with`` block, tiles run wherever :func:`tiles_apply`'s layout rules allow
    (``on=True``) or nowhere (``on=False``): for comparisons (not thread-safe).

    Only float32 has a tile kernel, so ``on=True`` changes nothing today; it
    is there so that the tests and the benchmark can say which they time.

    Examples
    --------
    >>> from fast import numba_tiles
    >>> with numba_tiles.forced(False):
    ...     numba_tiles._override.value
    False
    >>> numba_tiles._override.value is None
    True
    """
    return _override.forced(on)


def tiles_apply(s, block, dtype, direction="forward"):
    """True if the real scan of :class:`~ssm_ref.scan_args.ScanArgs` ``s`` runs in tiles.

    ``block`` is the longest row that the row-by-row kernel of ``direction``
    (``"forward"`` or ``"backward"``) takes, and ``dtype`` the compute dtype.
    Longer rows run in time blocks: the forward's in tiles too
    (:func:`fwd_tiles_long`), the backward's only in rows.  The backward also
    needs its per-thread records and lanes of dB and dC, four (L, N, 16)
    arrays, within :data:`BWD_TILE_BYTES`.
    """
    if _override.value is False or np.dtype(dtype) not in TILED_DTYPES:
        return False
    if s.is_complex or (direction == "backward" and s.length > block):
        return False
    if direction == "backward" and not backward_fits(s.length, s.dstate, dtype):
        return False
    groups = []
    for X, form in ((s.B, s.form_B), (s.C, s.form_C)):
        shape = form.view_shape(X.shape)  # (B|1, G', N, L|1); G' = D for the constant form
        if shape[3] != s.length:  # constant in time: B per channel, nothing to share
            return False
        groups.append(shape[1])
    return groups[0] == groups[1] and s.dim // groups[0] >= TILE


def backward_fits(length, dstate, dtype):
    """True if the backward's per-thread records and lanes of dB and dC, four
    (``length``, ``dstate``, 16) arrays of ``dtype``, fit :data:`BWD_TILE_BYTES`."""
    return 4 * length * dstate * TILE * np.dtype(dtype).itemsize <= BWD_TILE_BYTES


def tile_count(s):
    """Tiles of a scan that :func:`tiles_apply` accepts: batch x groups x tiles per group."""
    groups = s.form_B.view_shape(s.B.shape)[1]
    return s.batch * groups * -(-(s.dim // groups) // TILE)


# ---------------------------------------------------------------------------
# the pieces of a tile
# ---------------------------------------------------------------------------

@njit(inline="always", cache=True)  # in Numba's IR: the kernel's code as written out
def _tile_grid(nb, nd, gsize):
    """The kernels' numbering of tiles (:func:`tile_count`'s count, inside Numba): tiles per
    group (the last one short when ``gsize`` is not a multiple of 16), groups, tiles."""
    per_group = (gsize + TILE - 1) // TILE
    ngroups = nd // gsize
    return per_group, ngroups, nb * ngroups * per_group


@njit(inline="always", cache=True)  # in Numba's IR: the kernel's code as written out
def _tile_of(tile, ngroups, per_group, gsize):
    """Tile number -> ``(b, d0, nv)``: batch element, first channel, channels in the tile."""
    b = tile // (ngroups * per_group)
    rest = tile - b * ngroups * per_group
    g = rest // per_group
    d0 = g * gsize + (rest - g * per_group) * TILE
    return b, d0, min(TILE, (g + 1) * gsize - d0)


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # no call per tile
def _tile_normal(L, N, dt_r, a2, zero):
    """True if every ``dt * a2[n, j]`` of the tile is >= -125 (``_all_normal``'s rule).

    Counted over the steps by row (``dt_r``, one channel per row): a loop over
    contiguous memory, vectorized.
    """
    lo = zero
    for n in range(N):
        for j in range(TILE):
            lo = min(lo, a2[n, j])
    below = 0
    for j in range(TILE):
        row = dt_r[j]
        for t in range(L):
            below += 1 if row[t] * lo < _NORMAL_LOW else 0
    return below == 0


@njit(inline="always", cache=True)  # in Numba's IR: `normal` is a constant
def _tile_step(dt, bu, a2, h, tt, nn, jj, bn, normal, terms):
    """h[n] of lane j after step t: ``2^(dt a2[n]) h[n] + bu B_t[n]`` (written back, returned).

    Which product the FMA takes is LLVM's choice here.  The row kernels write it
    out as ``fma(bu, B_t[n], 2^(..) h[n])``, which their backward needs (its record
    is the rounded ``2^(..) h[n]``); in this loop that order measured 2-6% slower (the
    forward at the headline, VMamba's and the N = 64 long size on the Zen 3, paired
    rounds), so the states that :func:`fwd_tiles_long` keeps for the backward (``save``)
    may differ from the backward's own by a rounding.
    """
    hv = _decay(dt[tt, jj] * a2[nn, jj], normal, terms) * h[nn, jj] + bu[tt, jj] * bn
    h[nn, jj] = hv
    return hv


@njit(inline="always", cache=True)  # in Numba's IR: `normal` is a constant
def _tile_scan(L, N, dt, bu, a2, h, y, B_row, C_row, normal, terms):
    """The recurrence of a tile: lane j of ``h[n]`` is state n of channel d0 + j.

    ``dt``, ``bu`` and ``y`` are (L, 16): time steps by channels.  The loop
    over the 16 lanes is innermost with a constant trip count (one vector);
    the loop over n inside the loop over time keeps the step's ``y`` in a
    register.  State 0 writes ``y``, the others add to it (no zeroing pass,
    no load of ``y`` at each step).  Indices are unsigned (no negative-index
    wraparound selects).
    """
    first = np.uint64(0)
    for t in range(L):
        tt = np.uint64(t)
        Bt = B_row[tt]  # (N,): one number per state, broadcast to the 16 channels
        Ct = C_row[tt]
        b0 = Bt[first]
        c0 = Ct[first]
        for j in range(TILE):
            jj = np.uint64(j)
            y[tt, jj] = _tile_step(dt, bu, a2, h, tt, first, jj, b0, normal, terms) * c0
        for n in range(1, N):
            nn = np.uint64(n)
            bn = Bt[nn]
            cn = Ct[nn]
            for j in range(TILE):
                jj = np.uint64(j)
                y[tt, jj] += _tile_step(dt, bu, a2, h, tt, nn, jj, bn, normal, terms) * cn


# ---------------------------------------------------------------------------
# the kernel
# ---------------------------------------------------------------------------

@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def fwd_tiles(u, delta, A, Bx, Cx, Dv, z, bias, h0,
              has_D, has_z, has_bias, softplus, has_h0, out, last, screen, nchunks, terms):
    """``fast.numba_cpu._fwd_real`` by tiles of 16 channels; A, h0 and the last state with N
    states (not padded), Bx and Cx (B|1, G, L, N) with G groups of at least 16 channels."""
    nb, nd, L = u.shape
    N = A.shape[1]
    zero = u.dtype.type(0)
    log2e = u.dtype.type(_LOG2E)
    b_sb, b_st, gsize, c_sb, c_st, c_gd = _bc_strides(Bx, Cx, nd)
    per_group, ngroups, ntiles = _tile_grid(nb, nd, gsize)
    Lp = (L + TILE - 1) // TILE * TILE  # whole 16 x 16 blocks
    # per-thread scratch: rows (channel, time) and their transposes (time, channel), each
    # array of its own, so that LLVM knows that a store into one leaves the others alone
    # (in one shared array it reloaded dt and bu and kept y in memory: up to 1.7x slower)
    dt_rs = np.zeros((nchunks, TILE, Lp + _GAP), u.dtype)  # steps by channel; zeros beyond L
    bu_rs = np.zeros((nchunks, TILE, Lp + _GAP), u.dtype)
    y_rs = np.empty((nchunks, TILE, Lp + _GAP), u.dtype)
    dt_s = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)  # steps by time
    bu_s = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    y_s = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    a2_s = np.empty((nchunks, N + 1, TILE), u.dtype)  # A log2(e)
    h_s = np.empty((nchunks, N + 1, TILE), u.dtype)
    sums_s = np.empty((nchunks, TILE + _GAP), u.dtype)
    for c in prange(nchunks):  # one block of tiles per thread
        dt_r, bu_r, y_r, dt, bu, y = dt_rs[c], bu_rs[c], y_rs[c], dt_s[c], bu_s[c], y_s[c]
        a2, h, sums = a2_s[c], h_s[c], sums_s[c]
        for tile in range(c * ntiles // nchunks, (c + 1) * ntiles // nchunks):
            b, d0, nv = _tile_of(tile, ngroups, per_group, gsize)
            for j in range(TILE):  # steps by row, as the row kernel; missing channels: zeros
                if j < nv:
                    d = d0 + j
                    sums[j] = _row_steps(delta[b, d], u[b, d], bias[d] if has_bias else zero,
                                         softplus, dt_r[j], bu_r[j], z[b, d] if has_z else u[b, d],
                                         has_z)
                    for n in range(N):
                        a2[n, j] = A[d, n] * log2e  # exp(dt a) = 2^(dt a log2 e)
                        h[n, j] = h0[b, d, n] if has_h0 else zero
                else:
                    for t in range(L):
                        dt_r[j, t] = zero
                        bu_r[j, t] = zero
                    for n in range(N):
                        a2[n, j] = zero
                        h[n, j] = zero
            for t0 in range(0, L, TILE):  # entries L .. Lp - 1 are zeros from the start
                transpose_block(dt_r, 0, t0, dt, t0, 0)
                transpose_block(bu_r, 0, t0, bu, t0, 0)
            bb, bg, cb, cg = _bc_offsets(b, d0, b_sb, gsize, c_sb, c_gd)
            B_row = Bx[bb, bg]  # (L, N)
            C_row = Cx[cb, cg]
            if _tile_normal(L, N, dt_r, a2, zero):  # two copies of the loop, each one exp
                _tile_scan(L, N, dt, bu, a2, h, y, B_row, C_row, True, terms)
            else:
                _tile_scan(L, N, dt, bu, a2, h, y, B_row, C_row, False, terms)
            for t0 in range(0, L, TILE):
                transpose_block(y, t0, 0, y_r, 0, t0)
            for j in range(nv):
                d = d0 + j
                s = sums[j] + _row_output(y_r[j], u[b, d], Dv[d] if has_D else zero, has_D,
                                          z[b, d] if has_z else u[b, d], has_z, out[b, d])
                for n in range(N):
                    last[b, d, n] = h[n, j]
                    s += h[n, j]
                screen[b * nd + d] = s  # not finite: bad input, or float32 overflowed


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def fwd_tiles_long(u, delta, A, Bx, Cx, Dv, z, bias, h0,
                   has_D, has_z, has_bias, softplus, has_h0, out, last, screen, nchunks,
                   block, starts, save, terms):
    """:func:`fwd_tiles` for rows longer than ``block`` steps, in time blocks.

    The loop over blocks of T steps (``block`` rounded down to a multiple of
    16) is outside the loop over the thread's tiles, so that a block's B and
    C, shared by the tiles of a group, stay in cache while every tile passes
    through it (as :func:`fast.numba_cpu._fwd_real_long` does for rows).
    Each tile's state and its channels' screen sums are carried from block
    to block in per-thread scratch; the arithmetic is :func:`fwd_tiles`'s,
    step by step.  With ``save``, the state entering block k of row (b, d)
    is written to ``starts[b * D + d, k, :N]`` (the chunk states that
    ``fast.numba_cpu._bwd_real_long`` starts its blocks from).
    """
    nb, nd, L = u.shape
    N = A.shape[1]
    zero = u.dtype.type(0)
    log2e = u.dtype.type(_LOG2E)
    b_sb, b_st, gsize, c_sb, c_st, c_gd = _bc_strides(Bx, Cx, nd)
    per_group, ngroups, ntiles = _tile_grid(nb, nd, gsize)
    T = max(TILE, min(block, L) // TILE * TILE)  # whole 16 x 16 blocks
    nblocks = (L + T - 1) // T
    maxtiles = ntiles // nchunks + 1
    # per-thread scratch of one block (see fwd_tiles); entries beyond a short last block
    # are left from the block before, transposed along but never read
    dt_rs = np.zeros((nchunks, TILE, T + _GAP), u.dtype)
    bu_rs = np.zeros((nchunks, TILE, T + _GAP), u.dtype)
    y_rs = np.empty((nchunks, TILE, T + _GAP), u.dtype)
    dt_s = np.empty((nchunks, T + _GAP, TILE), u.dtype)
    bu_s = np.empty((nchunks, T + _GAP, TILE), u.dtype)
    y_s = np.empty((nchunks, T + _GAP, TILE), u.dtype)
    a2_s = np.empty((nchunks, N + 1, TILE), u.dtype)
    h_s = np.empty((nchunks, maxtiles, N + 1, TILE), u.dtype)  # each tile's state
    sums_s = np.zeros((nchunks, maxtiles, TILE), u.dtype)  # its channels' screen sums
    for c in prange(nchunks):
        dt_r, bu_r, y_r, dt, bu, y = dt_rs[c], bu_rs[c], y_rs[c], dt_s[c], bu_s[c], y_s[c]
        a2 = a2_s[c]
        t_lo = c * ntiles // nchunks
        for k in range(nblocks):
            t0 = k * T
            tn = min(T, L - t0)
            for tile in range(t_lo, (c + 1) * ntiles // nchunks):
                h, sums = h_s[c, tile - t_lo], sums_s[c, tile - t_lo]
                b, d0, nv = _tile_of(tile, ngroups, per_group, gsize)
                for j in range(TILE):
                    if j < nv:
                        d = d0 + j
                        u_blk = u[b, d, t0:t0 + tn]
                        sums[j] += _row_steps(delta[b, d, t0:t0 + tn], u_blk,
                                              bias[d] if has_bias else zero, softplus, dt_r[j],
                                              bu_r[j], z[b, d, t0:t0 + tn] if has_z else u_blk,
                                              has_z)
                        for n in range(N):
                            a2[n, j] = A[d, n] * log2e
                            if k == 0:
                                h[n, j] = h0[b, d, n] if has_h0 else zero
                            if save:
                                starts[b * nd + d, k, n] = h[n, j]
                    else:
                        for t in range(tn):
                            dt_r[j, t] = zero
                            bu_r[j, t] = zero
                        for n in range(N):
                            a2[n, j] = zero
                            h[n, j] = zero
                for tb in range(0, tn, TILE):
                    transpose_block(dt_r, 0, tb, dt, tb, 0)
                    transpose_block(bu_r, 0, tb, bu, tb, 0)
                bb, bg, cb, cg = _bc_offsets(b, d0, b_sb, gsize, c_sb, c_gd)
                B_blk = _time_slice(Bx[bb, bg], t0, tn, b_st)  # (tn, N)
                C_blk = _time_slice(Cx[cb, cg], t0, tn, c_st)
                if _tile_normal(tn, N, dt_r, a2, zero):
                    _tile_scan(tn, N, dt, bu, a2, h, y, B_blk, C_blk, True, terms)
                else:
                    _tile_scan(tn, N, dt, bu, a2, h, y, B_blk, C_blk, False, terms)
                for tb in range(0, tn, TILE):
                    transpose_block(y, tb, 0, y_r, 0, tb)
                for j in range(nv):
                    d = d0 + j
                    u_blk = u[b, d, t0:t0 + tn]
                    sums[j] += _row_output(y_r[j], u_blk, Dv[d] if has_D else zero, has_D,
                                           z[b, d, t0:t0 + tn] if has_z else u_blk, has_z,
                                           out[b, d, t0:t0 + tn])
                    if k == nblocks - 1:
                        s = sums[j]
                        for n in range(N):
                            last[b, d, n] = h[n, j]
                            s += h[n, j]
                        screen[b * nd + d] = s  # not finite: bad input, or float32 overflowed


# ---------------------------------------------------------------------------
# the backward pass
# ---------------------------------------------------------------------------

@njit(inline="always", cache=True)  # in Numba's IR: `normal` is a constant
def _tile_record(dt, bu, dy, a2, h, abar, ah, dCl, tt, nn, jj, bn, normal, terms):
    """Step t of state n, lane j, in the backward's forward sweep: records Abar_t and
    Abar_t h_{t-1}, adds dy_t h_t to the lanes of dC; returns h_t (also written back)."""
    e = _decay(dt[tt, jj] * a2[nn, jj], normal, terms)
    ahv = e * h[nn, jj]
    hv = ahv + bu[tt, jj] * bn
    abar[tt, nn, jj] = e
    ah[tt, nn, jj] = ahv
    h[nn, jj] = hv
    dCl[tt, nn, jj] += dy[tt, jj] * hv
    return hv


@njit(inline="always", cache=True)  # in Numba's IR: `normal` is a constant
def _tile_bwd_forward(L, N, dt, bu, dy, a2, h, y, abar, ah, dCl, B_row, C_row, normal, terms):
    """The backward's forward sweep of a tile: y_t, the records and the lanes of dC.

    State 0 writes ``y``, the others add (as :func:`_tile_scan`).
    """
    first = np.uint64(0)
    for t in range(L):
        tt = np.uint64(t)
        Bt = B_row[tt]
        Ct = C_row[tt]
        b0 = Bt[first]
        c0 = Ct[first]
        for j in range(TILE):
            jj = np.uint64(j)
            y[tt, jj] = _tile_record(dt, bu, dy, a2, h, abar, ah, dCl, tt, first, jj, b0, normal,
                                     terms) * c0
        for n in range(1, N):
            nn = np.uint64(n)
            bn = Bt[nn]
            cn = Ct[nn]
            for j in range(TILE):
                jj = np.uint64(j)
                y[tt, jj] += _tile_record(dt, bu, dy, a2, h, abar, ah, dCl, tt, nn, jj, bn,
                                          normal, terms) * cn


@njit(inline="always", cache=True)  # in Numba's IR: the kernel's code as written out
def _tile_grad(dt, bu, dy, a, g, sdA, abar, ah, dBl, tt, nn, jj, bn, cn):
    """Step t of state n, lane j, in the reverse sweep (eq-selective-backward): updates
    g = dLoss/dh, the dA sum and the lanes of dB; returns the step's terms of
    ``pA`` (sum_n g_n Abar h_{t-1} A_n) and ``pB`` (sum_n g_n B_n)."""
    gn = g[nn, jj] + dy[tt, jj] * cn
    ga = gn * ah[tt, nn, jj]  # gradient w.r.t. dt_t * A_n
    sdA[nn, jj] += ga * dt[tt, jj]
    dBl[tt, nn, jj] += gn * bu[tt, jj]
    g[nn, jj] = gn * abar[tt, nn, jj]
    return ga * a[nn, jj], gn * bn


@njit(inline="always", cache=True)  # in Numba's IR: the kernel's code as written out
def _tile_bwd_reverse(L, N, dt, bu, dy, a, g, sdA, abar, ah, dBl, pA, pB, B_row, C_row):
    """The reverse sweep of a tile over steps L - 1 ... 0: ``pA``, ``pB`` (written by state 0,
    added by the others), g, the dA sums and the lanes of dB."""
    first = np.uint64(0)
    for i in range(L):
        tt = np.uint64(L - 1 - i)
        Bt = B_row[tt]
        Ct = C_row[tt]
        b0 = Bt[first]
        c0 = Ct[first]
        for j in range(TILE):
            jj = np.uint64(j)
            vA, vB = _tile_grad(dt, bu, dy, a, g, sdA, abar, ah, dBl, tt, first, jj, b0, c0)
            pA[tt, jj] = vA
            pB[tt, jj] = vB
        for n in range(1, N):
            nn = np.uint64(n)
            bn = Bt[nn]
            cn = Ct[nn]
            for j in range(TILE):
                jj = np.uint64(j)
                vA, vB = _tile_grad(dt, bu, dy, a, g, sdA, abar, ah, dBl, tt, nn, jj, bn, cn)
                pA[tt, jj] += vA
                pB[tt, jj] += vB


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _flush_unit(L, N, lanes, Xc, touched, c, xb, xg, zero):
    """:func:`_flush_lanes` into thread ``c``'s copy of dB or dC at batch entry ``xb`` and group
    ``xg``; that (L, N) unit of the copy (given unset) is zeroed at the thread's first flush
    into it, and ``touched[c, xb, xg]`` set, so the copies are only ever written, and
    :func:`sum_copies` read, where the thread's tiles went."""
    X_row = Xc[c, xb, xg]
    if touched[c, xb, xg] == 0:
        X_row[:, :] = zero
        touched[c, xb, xg] = 1
    _flush_lanes(L, N, lanes, X_row, zero)


@njit(inline="always", fastmath=_FMK, error_model="numpy", cache=True)  # no call per tile
def _flush_lanes(L, N, lanes, X_row, zero):
    """``X_row[t, n] += sum_j lanes[t, n, j]`` (dB or dC of one batch element and group), and
    the lanes zeroed for the next group.

    The lanes of 16 consecutive pairs (t, n) are 16 rows of 16 (``lanes`` is
    contiguous), summed as one vector by :func:`add_lane_sums`.  (Summed pair by pair,
    the loop compiled to 16 scalar adds and 16 scalar stores per pair: about a tenth of the
    backward at tiny Vim's size, L = 17, N = 8.)  The pairs after the last whole block,
    ``L N`` mod 16 of them, are summed one by one.
    """
    m = L * N
    rows = lanes.reshape((lanes.shape[0] * N, TILE))  # pair (t, n) by lane
    sums = X_row.reshape(m)  # pair (t, n)
    whole = m - m % TILE
    for r0 in range(0, whole, TILE):
        add_lane_sums(rows, r0, sums, r0)
    for r in range(whole, m):
        s = zero
        for j in range(TILE):
            s += rows[r, j]
            rows[r, j] = zero
        sums[r] += s


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def bwd_tiles(dout, u, delta, A, Bx, Cx, Dv, z, bias, h0, dlast,
              has_D, has_z, has_bias, softplus, has_h0, has_dlast,
              du, ddelta, dz, dh0, dA_c, dB_c, dC_c, dD_c, dbias_c, screen, touched_B,
              touched_C, terms):
    """``fast.numba_cpu._bwd_real`` by tiles of 16 channels; A, h0, dlast, dh0, dA_c with N
    states (not padded), Bx, Cx, dB_c, dC_c (.., B|1, G, L, N) with groups of at least 16
    channels.  ``dB_c`` and ``dC_c`` (threads, B|1, G, L, N) come unset, ``touched_B``
    and ``touched_C`` (threads, B|1, G) zero: thread c writes the units of its copy that its
    tiles reach and marks them in its row of ``touched_*`` (:func:`_flush_unit`), the
    units :func:`sum_copies` adds.

    dB_t and dC_t are sums over the channels that share them.  Within a tile
    the 16 channels are the lanes, so each step adds its products into a
    per-thread (L, N, 16) array of lanes without summing across them; the
    lanes are summed (and zeroed) once, when the thread moves on to another
    batch element or group and at its end.
    """
    nb, nd, L = u.shape
    N = A.shape[1]
    zero = u.dtype.type(0)
    one = u.dtype.type(1)
    log2e = u.dtype.type(_LOG2E)
    b_sb, b_st, gsize, c_sb, c_st, c_gd = _bc_strides(Bx, Cx, nd)
    per_group, ngroups, ntiles = _tile_grid(nb, nd, gsize)
    nchunks = dA_c.shape[0]
    Lp = (L + TILE - 1) // TILE * TILE
    # per-thread scratch, each array of its own (see fwd_tiles)
    dt_rs = np.zeros((nchunks, TILE, Lp + _GAP), u.dtype)  # by channel; zeros beyond L
    bu_rs = np.zeros((nchunks, TILE, Lp + _GAP), u.dtype)
    dy_rs = np.zeros((nchunks, TILE, Lp + _GAP), u.dtype)
    sz_rs = np.empty((nchunks, TILE, Lp + _GAP), u.dtype)  # sigmoid(z)
    y_rs = np.empty((nchunks, TILE, Lp + _GAP), u.dtype)
    pA_rs = np.empty((nchunks, TILE, Lp + _GAP), u.dtype)
    pB_rs = np.empty((nchunks, TILE, Lp + _GAP), u.dtype)
    dt_s = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)  # by time step
    bu_s = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    dy_s = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    y_s = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    pA_s = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    pB_s = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    abar_s = np.empty((nchunks, L + 1, N, TILE), u.dtype)  # records; +1: a gap
    ah_s = np.empty((nchunks, L + 1, N, TILE), u.dtype)
    dBl_s = np.zeros((nchunks, L + 1, N, TILE), u.dtype)  # lanes of dB, dC
    dCl_s = np.zeros((nchunks, L + 1, N, TILE), u.dtype)
    a_s = np.empty((nchunks, N + 1, TILE), u.dtype)
    a2_s = np.empty((nchunks, N + 1, TILE), u.dtype)
    h_s = np.empty((nchunks, N + 1, TILE), u.dtype)
    g_s = np.empty((nchunks, N + 1, TILE), u.dtype)
    sdA_s = np.empty((nchunks, N + 1, TILE), u.dtype)
    sums_s = np.empty((nchunks, TILE + _GAP), u.dtype)
    sD_s = np.empty((nchunks, TILE + _GAP), u.dtype)
    for c in prange(nchunks):  # one block of tiles per thread, its own dA/dB/dC copies
        dt_r, bu_r, dy_r, sz_r = dt_rs[c], bu_rs[c], dy_rs[c], sz_rs[c]
        y_r, pA_r, pB_r = y_rs[c], pA_rs[c], pB_rs[c]
        dt, bu, dy, y, pA, pB = dt_s[c], bu_s[c], dy_s[c], y_s[c], pA_s[c], pB_s[c]
        abar, ah, dBl, dCl = abar_s[c], ah_s[c], dBl_s[c], dCl_s[c]
        a, a2, h, g, sdA = a_s[c], a2_s[c], h_s[c], g_s[c], sdA_s[c]
        sums, sDs = sums_s[c], sD_s[c]
        t_hi = (c + 1) * ntiles // nchunks
        for tile in range(c * ntiles // nchunks, t_hi):
            b, d0, nv = _tile_of(tile, ngroups, per_group, gsize)
            for j in range(TILE):  # per row, as the row kernel; missing channels: zeros
                if j < nv:
                    d = d0 + j
                    u_row = u[b, d]
                    z_row = z[b, d] if has_z else u_row
                    s = _row_steps(delta[b, d], u_row, bias[d] if has_bias else zero, softplus,
                                   dt_r[j], bu_r[j], z_row, has_z)
                    s_dy, sD = _row_dy(dout[b, d], z_row, u_row, has_z, sz_r[j], dy_r[j], zero)
                    sums[j] = s + s_dy
                    sDs[j] = sD
                    for n in range(N):
                        a[n, j] = A[d, n]
                        a2[n, j] = A[d, n] * log2e  # exp(dt a) = 2^(dt a log2 e)
                        h[n, j] = h0[b, d, n] if has_h0 else zero
                        g[n, j] = dlast[b, d, n] if has_dlast else zero
                        sdA[n, j] = zero
                else:
                    for t in range(L):
                        dt_r[j, t] = zero
                        bu_r[j, t] = zero
                        dy_r[j, t] = zero
                    for n in range(N):
                        a[n, j] = zero
                        a2[n, j] = zero
                        h[n, j] = zero
                        g[n, j] = zero
                        sdA[n, j] = zero
            for t0 in range(0, L, TILE):
                transpose_block(dt_r, 0, t0, dt, t0, 0)
                transpose_block(bu_r, 0, t0, bu, t0, 0)
                transpose_block(dy_r, 0, t0, dy, t0, 0)
            bb, bg, cb, cg = _bc_offsets(b, d0, b_sb, gsize, c_sb, c_gd)
            B_row = Bx[bb, bg]  # (L, N)
            C_row = Cx[cb, cg]
            # 1. forward again: y, the records and the lanes of dC
            if _tile_normal(L, N, dt_r, a2, zero):  # two copies of the loop, each one exp
                _tile_bwd_forward(L, N, dt, bu, dy, a2, h, y, abar, ah, dCl, B_row, C_row, True,
                                  terms)
            else:
                _tile_bwd_forward(L, N, dt, bu, dy, a2, h, y, abar, ah, dCl, B_row, C_row, False,
                                  terms)
            # 2. the reverse sweep over the records
            _tile_bwd_reverse(L, N, dt, bu, dy, a, g, sdA, abar, ah, dBl, pA, pB, B_row, C_row)
            for t0 in range(0, L, TILE):
                transpose_block(y, t0, 0, y_r, 0, t0)
                transpose_block(pA, t0, 0, pA_r, 0, t0)
                transpose_block(pB, t0, 0, pB_r, 0, t0)
            for j in range(nv):
                d = d0 + j
                u_row = u[b, d]
                Dd = Dv[d] if has_D else zero
                s = sums[j]
                if has_z:
                    s += _row_dz(dout[b, d], z[b, d], sz_r[j], y_r[j], u_row, Dd, dz[b, d], one)
                s_g, sb = _row_input_grads(dt_r[j], pA_r[j], pB_r[j], dy_r[j], u_row, Dd,
                                           delta[b, d], bias[d] if has_bias else zero, softplus,
                                           du[b, d], ddelta[b, d])
                s += s_g
                dbias_c[c, d] += sb
                dD_c[c, d] += sDs[j]
                for n in range(N):
                    dA_c[c, d, n] += sdA[n, j]
                    dh0[b, d, n] = g[n, j]
                    s += g[n, j]
                screen[b * nd + d] = s  # not finite: bad input, or float32 overflowed
            # the lanes hold this batch element's and group's dB, dC: summed when the next
            # tile of the thread (if any) belongs to another (tile // per_group: b and group)
            if tile == t_hi - 1 or (tile + 1) // per_group != tile // per_group:
                _flush_unit(L, N, dBl, dB_c, touched_B, c, bb, bg, zero)
                _flush_unit(L, N, dCl, dC_c, touched_C, c, cb, cg, zero)


@_njit_noalias(parallel=True, error_model="numpy", cache=True)
def sum_copies(Xc, touched, out):
    """``out[p, g, n, t] = sum_c Xc[c, p, g, t, n]`` over the copies c with ``touched[c, p,
    g]``: the tile backward's per-thread copies of dB or dC, (threads, B|1, G, L, N),
    summed into the argument's layout (B|1, G, N, L); a unit no copy touched is zero.

    One parallel pass over the (batch element, group) units, each unit's
    touched copies read once (most units lie in one thread's tiles) and its
    (N, L) sum written once: the first touched copy stored, the others added.
    NumPy's way, whole zeroed copies summed on one thread and the sum copied
    transposed, took three passes (0.56 against 0.17 ms an array at VMamba
    32x32's size on chapter 11's Xeon, two threads).  The sums are those of
    ``Xc.sum(axis=0)`` with the untouched units zero (the same order of additions).
    """
    ncopies, npb, ng, nl, nn = Xc.shape
    for unit in prange(npb * ng):
        p = unit // ng
        g = unit - p * ng
        o = out[p, g]  # (N, L)
        first = True
        for c in range(ncopies):
            if touched[c, p, g]:
                X = Xc[c, p, g]  # (L, N)
                if first:
                    for t in range(nl):
                        for n in range(nn):
                            o[n, t] = X[t, n]
                else:
                    for t in range(nl):
                        for n in range(nn):
                            o[n, t] += X[t, n]
                first = False
        if first:
            o[:, :] = Xc.dtype.type(0)


# ---------------------------------------------------------------------------
# short rows: the per-row passes over spans of tiles
# ---------------------------------------------------------------------------

@njit(inline="always", cache=True)  # in Numba's IR: the kernel's code as written out
def _span_rows(tile0, tile1, ngroups, per_group, gsize, nd):
    """The rows ``r0 .. r1 - 1`` (row ``b nd + d``) of the tiles ``tile0 .. tile1 - 1``.

    Tiles are numbered by batch element, group and channel, so a run of them
    covers consecutive channels, and across a batch element's end, consecutive
    rows of the (B, D, L) arrays.
    """
    b, d0, _ = _tile_of(tile0, ngroups, per_group, gsize)
    bl, dl, nvl = _tile_of(tile1 - 1, ngroups, per_group, gsize)
    return b * nd + d0, bl * nd + dl + nvl


@njit(inline="always", cache=True)  # in Numba's IR: the kernel's code as written out
def _rows_to_lanes(L, k, nv, rows, lanes, zero):
    """Rows ``k .. k + 15`` of a span's (rows, L) array into ``lanes`` (time steps by the
    tile's channels), the lanes of missing channels (``nv .. 15``) set to 0.

    The 16 x 16 transposes read whole blocks of 16 steps: past a row's L steps
    they read the next row's first steps (past the span's last row, what the
    scratch holds there), which land in the lanes' steps L .. Lp - 1, never read.
    """
    for t0 in range(0, L, TILE):
        transpose_block(rows, k, t0, lanes, t0, 0)
    for t in range(L):
        for j in range(nv, TILE):
            lanes[t, j] = zero


@njit(inline="always", cache=True)  # in Numba's IR: the kernel's code as written out
def _lanes_to_rows(Lp, k, lanes, rows):
    """``lanes`` (time steps by channels) into rows ``k .. k + 15`` of a span's (rows, L)
    array, the block of the last 16 steps first.

    A block's row of 16 steps that runs past the row's L steps writes what the lanes
    hold there over the next row's first ``Lp - L`` (< 16) steps.  Within a transpose
    the next row's own store comes later; across blocks, the first block (steps
    0 .. 15) comes last.  The 16th row's spill goes to the next tile's rows, which that
    tile writes afterwards, or past the span's rows.  Rows of missing channels take
    what their lanes hold: the next tile's rows, written again by it, or past the span.
    """
    for t0 in range(Lp - TILE, -1, -TILE):
        transpose_block(lanes, t0, 0, rows, k, t0)


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def fwd_tiles_short(u, delta, A, Bx, Cx, Dv, z, bias, h0,
                    has_D, has_z, has_bias, softplus, has_h0, out, last, screen, nchunks, terms):
    """:func:`fwd_tiles` for rows shorter than :data:`~fast._spans.SPAN_BELOW` steps: the
    per-row passes over spans of tiles (:mod:`fast._spans`), whose screen sum each of their
    rows gets.

    A span's steps and outputs stay in its rows' order, one row after the other; the
    transposes read and write a tile's 16 rows there (:func:`_rows_to_lanes`,
    :func:`_lanes_to_rows`).  The recurrence of a tile is :func:`fwd_tiles`' (the same
    helpers), in a kernel of its own so that :func:`fwd_tiles` keeps its machine code
    (the pair kernels' reason, :func:`fast.numba_pairs.fwd_pairs_short`).
    """
    nb, nd, L = u.shape
    N = A.shape[1]
    zero = u.dtype.type(0)
    log2e = u.dtype.type(_LOG2E)
    b_sb, b_st, gsize, c_sb, c_st, c_gd = _bc_strides(Bx, Cx, nd)
    per_group, ngroups, ntiles = _tile_grid(nb, nd, gsize)
    Lp = (L + TILE - 1) // TILE * TILE
    span = span_units(L, TILE)
    items = TILE * span * L
    u1, delta1, z1, out1 = (u.reshape(u.size), delta.reshape(delta.size), z.reshape(z.size),
                            out.reshape(out.size))  # the rows one after the other
    # per-thread scratch: a span's rows (and what the transposes touch past them), a tile's
    # steps by time, each array of its own (see fwd_tiles)
    dt_s = np.zeros((nchunks, items + Lp + _GAP), u.dtype)
    bu_s = np.zeros((nchunks, items + Lp + _GAP), u.dtype)
    y_s = np.zeros((nchunks, items + Lp + _GAP), u.dtype)
    xb_s = np.empty((nchunks, items + _GAP), u.dtype)  # a span's delta + bias
    dt_ts = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    bu_ts = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    y_ts = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    a2_s = np.empty((nchunks, N + 1, TILE), u.dtype)
    h_s = np.empty((nchunks, N + 1, TILE), u.dtype)
    for c in prange(nchunks):  # one block of tiles per thread, span after span
        dt1, bu1, y1, xb = dt_s[c], bu_s[c], y_s[c], xb_s[c]
        dt_r = dt1[:items].reshape((TILE * span, L))  # the span's rows
        bu_r = bu1[:items].reshape((TILE * span, L))
        y_r = y1[:items].reshape((TILE * span, L))
        dt, bu, y, a2, h = dt_ts[c], bu_ts[c], y_ts[c], a2_s[c], h_s[c]
        t_end = (c + 1) * ntiles // nchunks
        for tile0 in range(c * ntiles // nchunks, t_end, span):
            tile1 = min(tile0 + span, t_end)
            r0, r1 = _span_rows(tile0, tile1, ngroups, per_group, gsize, nd)
            s = span_steps(delta1, u1, z1, bias, has_bias, softplus, has_z, r0, r1, nd, L, xb,
                           dt1, bu1, zero)
            for tile in range(tile0, tile1):
                b, d0, nv = _tile_of(tile, ngroups, per_group, gsize)
                k = b * nd + d0 - r0  # the tile's first row in the span
                for j in range(TILE):  # missing channels: zeros
                    for n in range(N):
                        a2[n, j] = A[d0 + j, n] * log2e if j < nv else zero
                        h[n, j] = h0[b, d0 + j, n] if has_h0 and j < nv else zero
                _rows_to_lanes(L, k, nv, dt_r, dt, zero)
                _rows_to_lanes(L, k, nv, bu_r, bu, zero)
                bb, bg, cb, cg = _bc_offsets(b, d0, b_sb, gsize, c_sb, c_gd)
                B_row = Bx[bb, bg]  # (L, N)
                C_row = Cx[cb, cg]
                # the rows past nv are other tiles' (or stale): they can only send a tile
                # to the clamped exponential, which is right for any tile
                if _tile_normal(L, N, dt_r[k:k + TILE], a2, zero):
                    _tile_scan(L, N, dt, bu, a2, h, y, B_row, C_row, True, terms)
                else:
                    _tile_scan(L, N, dt, bu, a2, h, y, B_row, C_row, False, terms)
                _lanes_to_rows(Lp, k, y, y_r)
                for j in range(nv):
                    for n in range(N):
                        last[b, d0 + j, n] = h[n, j]
                        s += h[n, j]
            s += span_output(y1, u1, z1, Dv, has_D, has_z, r0, r1, nd, L, out1, zero)
            for r in range(r0, r1):
                screen[r] = s  # the span's sum: any non-finite term shows


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def bwd_tiles_short(dout, u, delta, A, Bx, Cx, Dv, z, bias, h0, dlast,
                    has_D, has_z, has_bias, softplus, has_h0, has_dlast,
                    du, ddelta, dz, dh0, dA_c, dB_c, dC_c, dD_c, dbias_c, screen, touched_B,
                    touched_C, terms):
    """:func:`bwd_tiles` for rows shorter than :data:`~fast._spans.SPAN_BELOW` steps: the
    per-row passes over spans of tiles, as :func:`fwd_tiles_short`.  They are the two passes
    of the pair kernels (:func:`fast._spans.span_prep`, :func:`~fast._spans.span_grads`:
    the softplus derivative kept from the first), not :func:`bwd_tiles`' four; the sweeps
    and the lanes of dB and dC are :func:`bwd_tiles`'."""
    nb, nd, L = u.shape
    N = A.shape[1]
    zero = u.dtype.type(0)
    one = u.dtype.type(1)
    log2e = u.dtype.type(_LOG2E)
    b_sb, b_st, gsize, c_sb, c_st, c_gd = _bc_strides(Bx, Cx, nd)
    per_group, ngroups, ntiles = _tile_grid(nb, nd, gsize)
    nchunks = dA_c.shape[0]
    Lp = (L + TILE - 1) // TILE * TILE
    span = span_units(L, TILE)
    items = TILE * span * L
    dout1, u1, delta1, z1, du1, ddelta1, dz1 = (  # the rows one after the other
        dout.reshape(dout.size), u.reshape(u.size), delta.reshape(delta.size), z.reshape(z.size),
        du.reshape(du.size), ddelta.reshape(ddelta.size), dz.reshape(dz.size))
    # per-thread scratch (see fwd_tiles_short): a span's rows ...
    dt_s = np.zeros((nchunks, items + Lp + _GAP), u.dtype)
    bu_s = np.zeros((nchunks, items + Lp + _GAP), u.dtype)
    dy_s = np.zeros((nchunks, items + Lp + _GAP), u.dtype)
    y_s = np.zeros((nchunks, items + Lp + _GAP), u.dtype)
    pA_s = np.zeros((nchunks, items + Lp + _GAP), u.dtype)
    pB_s = np.zeros((nchunks, items + Lp + _GAP), u.dtype)
    dsp_s = np.empty((nchunks, items + _GAP), u.dtype)  # softplus'(delta + bias)
    sz_s = np.empty((nchunks, items + _GAP), u.dtype)  # sigmoid(z)
    xb_s = np.empty((nchunks, items + _GAP), u.dtype)  # delta + bias
    # ... a tile's steps by time, its records, the lanes of dB and dC, its per-lane numbers
    dt_ts = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    bu_ts = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    dy_ts = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    y_ts = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    pA_ts = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    pB_ts = np.empty((nchunks, Lp + _GAP, TILE), u.dtype)
    abar_s = np.empty((nchunks, L + 1, N, TILE), u.dtype)  # +1: a gap
    ah_s = np.empty((nchunks, L + 1, N, TILE), u.dtype)
    dBl_s = np.zeros((nchunks, L + 1, N, TILE), u.dtype)
    dCl_s = np.zeros((nchunks, L + 1, N, TILE), u.dtype)
    a_s = np.empty((nchunks, N + 1, TILE), u.dtype)
    a2_s = np.empty((nchunks, N + 1, TILE), u.dtype)
    h_s = np.empty((nchunks, N + 1, TILE), u.dtype)
    g_s = np.empty((nchunks, N + 1, TILE), u.dtype)
    sdA_s = np.empty((nchunks, N + 1, TILE), u.dtype)
    for c in prange(nchunks):  # one block of tiles per thread, its own dA/dB/dC copies
        dt1, bu1, dy1, y1, pA1, pB1, dsp1, sz1, xb = (
            dt_s[c], bu_s[c], dy_s[c], y_s[c], pA_s[c], pB_s[c], dsp_s[c], sz_s[c], xb_s[c])
        dt_r = dt1[:items].reshape((TILE * span, L))  # the span's rows
        bu_r = bu1[:items].reshape((TILE * span, L))
        dy_r = dy1[:items].reshape((TILE * span, L))
        y_r = y1[:items].reshape((TILE * span, L))
        pA_r = pA1[:items].reshape((TILE * span, L))
        pB_r = pB1[:items].reshape((TILE * span, L))
        dt, bu, dy, y, pA, pB = dt_ts[c], bu_ts[c], dy_ts[c], y_ts[c], pA_ts[c], pB_ts[c]
        abar, ah, dBl, dCl = abar_s[c], ah_s[c], dBl_s[c], dCl_s[c]
        a, a2, h, g, sdA = a_s[c], a2_s[c], h_s[c], g_s[c], sdA_s[c]
        t_hi = (c + 1) * ntiles // nchunks
        for tile0 in range(c * ntiles // nchunks, t_hi, span):
            tile1 = min(tile0 + span, t_hi)
            r0, r1 = _span_rows(tile0, tile1, ngroups, per_group, gsize, nd)
            s = span_prep(delta1, u1, dout1, z1, bias, has_bias, softplus, has_z, r0, r1, nd, L,
                          xb, dt1, bu1, dsp1, sz1, dy1, dD_c, c, zero)
            for tile in range(tile0, tile1):
                b, d0, nv = _tile_of(tile, ngroups, per_group, gsize)
                k = b * nd + d0 - r0  # the tile's first row in the span
                for j in range(TILE):  # missing channels: zeros
                    for n in range(N):
                        a[n, j] = A[d0 + j, n] if j < nv else zero
                        a2[n, j] = a[n, j] * log2e  # exp(dt a) = 2^(dt a log2 e)
                        h[n, j] = h0[b, d0 + j, n] if has_h0 and j < nv else zero
                        g[n, j] = dlast[b, d0 + j, n] if has_dlast and j < nv else zero
                        sdA[n, j] = zero
                _rows_to_lanes(L, k, nv, dt_r, dt, zero)
                _rows_to_lanes(L, k, nv, bu_r, bu, zero)
                _rows_to_lanes(L, k, nv, dy_r, dy, zero)
                bb, bg, cb, cg = _bc_offsets(b, d0, b_sb, gsize, c_sb, c_gd)
                B_row = Bx[bb, bg]  # (L, N)
                C_row = Cx[cb, cg]
                # 1. forward again: y, the records and the lanes of dC
                if _tile_normal(L, N, dt_r[k:k + TILE], a2, zero):  # rows past nv: as forward
                    _tile_bwd_forward(L, N, dt, bu, dy, a2, h, y, abar, ah, dCl, B_row, C_row,
                                      True, terms)
                else:
                    _tile_bwd_forward(L, N, dt, bu, dy, a2, h, y, abar, ah, dCl, B_row, C_row,
                                      False, terms)
                # 2. the reverse sweep over the records
                _tile_bwd_reverse(L, N, dt, bu, dy, a, g, sdA, abar, ah, dBl, pA, pB, B_row,
                                  C_row)
                _lanes_to_rows(Lp, k, y, y_r)
                _lanes_to_rows(Lp, k, pA, pA_r)
                _lanes_to_rows(Lp, k, pB, pB_r)
                for j in range(nv):
                    for n in range(N):
                        dA_c[c, d0 + j, n] += sdA[n, j]
                        dh0[b, d0 + j, n] = g[n, j]
                        s += g[n, j]
                # the lanes hold this batch element's and group's dB, dC (see bwd_tiles)
                if tile == t_hi - 1 or (tile + 1) // per_group != tile // per_group:
                    _flush_unit(L, N, dBl, dB_c, touched_B, c, bb, bg, zero)
                    _flush_unit(L, N, dCl, dC_c, touched_C, c, cb, cg, zero)
            # 3. du, d delta and dz
            s += span_grads(dt1, pA1, pB1, dy1, dsp1, y1, sz1, u1, dout1, z1, Dv, has_D, has_z,
                            r0, r1, nd, L, du1, ddelta1, dz1, dbias_c, c, one)
            for r in range(r0, r1):
                screen[r] = s  # the span's sum: any non-finite term shows
