"""The per-row passes of short rows, run over spans of consecutive rows.

Around its recurrence each row of a scan has passes over its steps: softplus of the
steps and the gated output in the forward (:mod:`fast.numba_cpu`'s ``_row_steps``,
``_row_output``); the steps, their derivatives and dy before the sweeps and du, d delta
and dz after them in the backward (``_row_prep``, ``_row_grads``).  LLVM vectorizes these
loops several lanes times four at a time (8 float64 or 16 float32 lanes on AVX-512) and
ends each in a scalar remainder that evaluates its exponentials one by one, so a row of
17 steps (tiny Vim 8x8) never reaches the vector loop: at that length the passes took 60%
of the float64 pair kernels' forward and 44% of the float32 channel tiles'.

The rows of a scan are consecutive in its (B, D, L) arrays, and the pair kernels
(:mod:`fast.numba_pairs`) and the channel tiles (:mod:`fast.numba_tiles`) take their rows
in that order.  So for rows shorter than :data:`SPAN_BELOW` steps their kernels for short
rows run each pass once over a span of about :data:`SPAN_ITEMS` elements, rows r0 .. r1 - 1
in one loop, with the helpers below.  What differs from row to row, the bias of delta and
D, takes passes of its own (:func:`_with_bias`, :func:`_add_scaled`; the row passes then
get a bias and a D of 0), and so do each row's shares of dD and d delta_bias
(:func:`_row_sums`).  The row passes themselves are called unchanged.  A span's screen sum goes to each of its rows: a caller
only asks whether all are finite.

Measured: chapter 11, "Spans of rows and BLAS threads".
"""
from __future__ import annotations

from numba import njit

__all__ = ["SPAN_BELOW", "SPAN_ITEMS", "span_units", "span_steps", "span_output", "span_prep",
           "span_grads"]

#: rows shorter than this many steps run the kernels for short rows, their per-row passes
#: over spans of rows; longer ones run the kernels that take them row by row
SPAN_BELOW = 64

#: a span of short rows holds about this many elements (rows x steps)
SPAN_ITEMS = 2048


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def span_units(L, rows):
    """Units of ``rows`` rows each (a pair: 2, a tile: 16) per span of the per-row passes: about
    :data:`SPAN_ITEMS` elements, at least one unit.

    Each row's bias and D take passes of their own in a span (:func:`_with_bias`,
    :func:`_add_scaled`), which cost more than the remainder saves once the rows reach the
    vector loop by themselves (:data:`SPAN_BELOW`; chapter 11, "Spans of rows and BLAS
    threads").
    """
    return max(1, SPAN_ITEMS // (rows * L))


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _with_bias(delta1, bias, r0, r1, nd, L, out):
    """``out[(r - r0) L + t] = delta[r, t] + bias[r mod nd]`` for the rows r0 .. r1 - 1 of a
    span (``delta1``: all rows, one after the other): the passes then take the span with a
    bias of 0, the sum as the row kernels form it.  (Here and below each row is a slice
    indexed from 0 by the loop: an index computed as ``base + t`` gets Numba's
    negative-index select, which LLVM vectorizes only as a gather; see the comment at
    ``fast.numba_cpu._LANES``.)"""
    for r in range(r0, r1):
        bd = bias[r % nd]
        src = delta1[r * L:(r + 1) * L]
        dst = out[(r - r0) * L:(r - r0 + 1) * L]
        for t in range(L):
            dst[t] = src[t] + bd


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _add_scaled(X, Y, values, r0, r1, nd, L):
    """``X[j] += values[r mod nd] Y[j]``, j = (r - r0) L + t, for the rows r0 .. r1 - 1 of a
    span (``X``, ``Y``: the span's stretch): D u into the outputs y before the gate, D dy
    into du."""
    for r in range(r0, r1):
        v = values[r % nd]
        i = (r - r0) * L
        x, y = X[i:i + L], Y[i:i + L]
        for t in range(L):
            x[t] += v * y[t]


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def _row_sums(X, Y, times, r0, r1, L, nd, out, c):
    """``out[c, r mod nd] += sum_t X[j] Y[j]`` (``times`` False: X alone), j = (r - r0) L +
    t, for the rows r0 .. r1 - 1 of a span (``X``, ``Y``: the span's stretch): a channel's
    share of dD or d delta_bias."""
    for r in range(r0, r1):
        i = (r - r0) * L
        x, y = X[i:i + L], Y[i:i + L]
        acc = x[0] - x[0]  # typed zero
        for t in range(L):
            acc += x[t] * y[t] if times else x[t]
        out[c, r % nd] += acc


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def span_steps(delta1, u1, z1, bias, has_bias, softplus, has_z, r0, r1, nd, L, xb, dt1, bu1,
               zero):
    """:func:`fast.numba_cpu._row_steps` for the rows r0 .. r1 - 1 (``*1``: all rows, one after
    the other): their dt and bu one after the other into ``dt1`` and ``bu1``; the screen
    sum, in one pass over the span."""
    w, n = slice(r0 * L, r1 * L), (r1 - r0) * L
    if has_bias:
        _with_bias(delta1, bias, r0, r1, nd, L, xb)
    return _row_steps(xb[:n] if has_bias else delta1[w], u1[w], zero, softplus, dt1, bu1,
                      z1[w] if has_z else u1[w], has_z)


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def span_output(y1, u1, z1, Dv, has_D, has_z, r0, r1, nd, L, out1, zero):
    """:func:`fast.numba_cpu._row_output` for the rows r0 .. r1 - 1, their outputs before D u
    one after the other in ``y1`` (D u added there first); the screen sum."""
    w, n = slice(r0 * L, r1 * L), (r1 - r0) * L
    if has_D:
        _add_scaled(y1[:n], u1[w], Dv, r0, r1, nd, L)  # y + D u, as _row_output adds it
    return _row_output(y1[:n], u1[w], zero, False, z1[w] if has_z else u1[w], has_z, out1[w])


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def span_prep(delta1, u1, dout1, z1, bias, has_bias, softplus, has_z, r0, r1, nd, L, xb, dt1,
              bu1, dsp1, sz1, dy1, dD_c, c, zero):
    """:func:`fast.numba_cpu._row_prep` for the rows r0 .. r1 - 1, as :func:`span_steps`;
    adds each row's dD (the sum of dy u) into ``dD_c[c]``; the screen sum."""
    w, n = slice(r0 * L, r1 * L), (r1 - r0) * L
    if has_bias:
        _with_bias(delta1, bias, r0, r1, nd, L, xb)
    s, _ = _row_prep(xb[:n] if has_bias else delta1[w], u1[w], zero, softplus, dout1[w],
                     z1[w] if has_z else u1[w], has_z, dt1, bu1, dsp1, sz1, dy1, zero)
    _row_sums(dy1[:n], u1[w], True, r0, r1, L, nd, dD_c, c)  # dD: the sum of dy u
    return s


@njit(inline="always", cache=True)  # in Numba's IR: the kernels' code as written out
def span_grads(dt1, pA1, pB1, dy1, dsp1, y1, sz1, u1, dout1, z1, Dv, has_D, has_z, r0, r1,
               nd, L, du1, ddelta1, dz1, dbias_c, c, one):
    """:func:`fast.numba_cpu._row_grads` for the rows r0 .. r1 - 1 (the span's per-step
    arrays one after the other); adds each row's d delta_bias into ``dbias_c[c]``; the
    screen sum.  D's terms come around it (a D of 0 there): D u into y before (for dz) and
    D dy into du after."""
    zero = one - one
    w, n = slice(r0 * L, r1 * L), (r1 - r0) * L
    if has_D:
        _add_scaled(y1[:n], u1[w], Dv, r0, r1, nd, L)
    s, _ = _row_grads(dt1[:n], pA1[:n], pB1[:n], dy1[:n], dsp1[:n], u1[w], zero, du1[w],
                      ddelta1[w], has_z, dout1[w], z1[w] if has_z else u1[w], sz1[:n], y1[:n],
                      dz1[w] if has_z else dz1[:1], one)
    if has_D:
        du = du1[w]
        _add_scaled(du, dy1[:n], Dv, r0, r1, nd, L)
        for j in range(n):  # du with D dy in the screen, as the row kernels' sum has it
            s += du[j]
    _row_sums(ddelta1[w], u1[w], False, r0, r1, L, nd, dbias_c, c)  # d delta_bias
    return s


# The row passes, at the end: numba_cpu imports the kernel modules at its end, and they import
# this module's functions, which must exist by then; Numba looks the names up when a kernel
# compiles.  (Called through the module, ``_spans.span_steps``, the helpers were compiled
# differently: other machine code for the pair kernels, measured with
# benchmarks/same_kernels.py.)
from .numba_cpu import _row_grads, _row_output, _row_prep, _row_steps  # noqa: E402
