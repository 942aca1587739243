"""The backward's forward sweep in LLVM IR (``fast._row_sweep``), 16 steps' outputs summed
at a time, against the Numba loop it replaces and against float64 oracles.

``numba_cpu._bwd_sweep_forward`` runs the first L mod 16 steps of a row with the Numba
loop ``_bwd_row_forward`` and the rest with the IR sweep.  Its records, state and dC must
equal the loop's bit for bit (the same operations in the same order); its outputs y are
summed in another order, so they are compared with the shared ``"exact"`` tolerance, and
against a float64 recurrence written out here.  End to end, the row kernels (pairs and
tiles switched off) must still give the reference's gradients at lengths with both a head
and whole blocks of 16 steps, with a gate (the only gradient that reads y is dz's).
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from cases import GRAD_NAMES, scan_case
from conftest import assert_close
from numba import njit

import ssm_ref
from fast import numba_cpu, numba_pairs, numba_tiles
from fast._fastexp import exp2_terms


@njit(fastmath=numba_cpu._FMK, error_model="numpy")  # the kernels' flags: the same FMAs
def _sweep_ir(L, N, dt, bu, dy, a2, h, y, abar, ah, B, C, dC, b_st, c_st, zero, normal, terms):
    """One sweep of a row by the IR path, on the blocked layout (blocks of 16 states)."""
    numba_cpu._bwd_sweep_forward(L, N, dt, bu, dy, a2, h, y, abar, ah, B, C, dC, b_st, c_st,
                                 zero, normal, terms)


@njit(fastmath=numba_cpu._FMK, error_model="numpy")
def _sweep_loop(L, N, dt, bu, dy, a2, h, y, abar, ah, B, C, dC, b_st, c_st, zero, normal, terms):
    """One sweep of a row by the Numba loop alone, on (L, N) rows."""
    numba_cpu._bwd_row_forward(L, N, dt, bu, dy, a2, h, y, abar, ah, B, C, dC, b_st, c_st,
                               zero, normal, terms)


def _row_inputs(rng, L, N, dtype, normal, b_st, c_st):
    """A row's steps, poles and B, C rows as the kernels hold them (scratch with room)."""
    gap = numba_cpu._GAP
    dt = np.zeros(L + gap, dtype)
    # normal: every dt a2 >= -125; else steps whose decay flushes to 0 (2^-127 in float32,
    # 2^-1023 in float64)
    dt[:L] = rng.uniform(0.01, 0.5 if normal else 60.0 * dtype(0).itemsize ** 2, L)
    bu = np.zeros(L + gap, dtype)
    bu[:L] = rng.standard_normal(L)
    dy = np.zeros(L + gap, dtype)
    dy[:L] = rng.standard_normal(L)
    a2 = np.zeros(N + gap, dtype)
    a2[:N] = -np.arange(1, N + 1) * numba_cpu._LOG2E  # S4D-real poles, in base 2
    h = np.zeros(N + gap, dtype)
    h[:N] = rng.standard_normal(N)
    B = rng.standard_normal((L if b_st else 1, N)).astype(dtype)
    C = rng.standard_normal((L if c_st else 1, N)).astype(dtype)
    return dt, bu, dy, a2, h, B, C


def _run(new, L, N, dtype, normal, b_st, c_st, inputs):
    dt, bu, dy, a2, h, B, C = (x.copy() for x in inputs)
    y = np.zeros(L + numba_cpu._GAP, dtype)
    abar = np.full((L + 1, N), np.nan, dtype)
    ah = np.full((L + 1, N), np.nan, dtype)
    dC = np.ones_like(C)
    if new:  # the IR sweep takes the row backward's layout: blocks of 16 states
        blocks, unblock = numba_cpu._blocks_of_16, numba_cpu._from_blocks_of_16
        abar, ah, B, C, dC = (blocks(x) for x in (abar, ah, B, C, dC))
    (_sweep_ir if new else _sweep_loop)(L, N, dt, bu, dy, a2, h, y, abar, ah, B, C, dC,
                                        b_st, c_st, dtype(0), normal, exp2_terms(dtype))
    if new:
        abar, ah, dC = (unblock(x) for x in (abar, ah, dC))
    return dict(y=y[:L], abar=abar[:L], ah=ah[:L], h=h[:N], dC=dC)


SWEEPS = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
SHAPES = pytest.mark.parametrize("L,N", [(5, 16), (16, 16), (37, 16), (40, 32)],
                                 ids=["head-only", "one-block", "head+2-blocks", "N=32"])
STRIDES = pytest.mark.parametrize("b_st,c_st", [(1, 1), (0, 1), (1, 0)],
                                  ids=["variable", "B-constant", "C-constant"])


@SWEEPS
@SHAPES
@STRIDES
@pytest.mark.parametrize("normal", [True, False], ids=["normal", "clamped"])
def test_sweep_equals_the_numba_loop(rng, dtype, L, N, b_st, c_st, normal):
    """Records, state and dC bit for bit; y within the exact tolerance."""
    inputs = _row_inputs(rng, L, N, dtype, normal, b_st, c_st)
    old = _run(False, L, N, dtype, normal, b_st, c_st, inputs)
    new = _run(True, L, N, dtype, normal, b_st, c_st, inputs)
    for key in ("abar", "ah", "h", "dC"):
        np.testing.assert_array_equal(new[key], old[key], err_msg=key)
    assert_close(new["y"], old["y"], kind="exact", err_msg="y")
    if not normal:  # the clamped exponential did flush some decays to 0
        assert (new["abar"] == 0).any()


@SWEEPS
@pytest.mark.parametrize("b_st,c_st", [(1, 1), (0, 0)], ids=["variable", "constant"])
def test_sweep_against_a_float64_recurrence(rng, dtype, b_st, c_st):
    """h_t = exp(dt_t A) h_{t-1} + bu_t B_t, y_t = <C_t, h_t>, dC_t += dy_t h_t in float64."""
    L, N = 37, 32
    inputs = _row_inputs(rng, L, N, dtype, True, b_st, c_st)
    new = _run(True, L, N, dtype, True, b_st, c_st, inputs)
    dt, bu, dy, a2, h, B, C = (x.astype(np.float64) for x in inputs)
    A = a2[:N] / numba_cpu._LOG2E
    h = h[:N].copy()
    y = np.zeros(L)
    dC = np.ones(C.shape)
    for t in range(L):
        h = np.exp(dt[t] * A) * h + bu[t] * B[t * b_st]
        y[t] = C[t * c_st] @ h
        dC[t * c_st] += dy[t] * h
    precision = None if dtype == np.float64 else np.float32
    assert_close(new["y"], y.astype(dtype), kind="backend", precision=precision, err_msg="y")
    assert_close(new["h"], h.astype(dtype), kind="backend", precision=precision, err_msg="h")
    assert_close(new["dC"], dC.astype(dtype), kind="backend", precision=precision,
                 err_msg="dC")


#: lengths with a head of L mod 16 steps and whole blocks of 16
case = functools.partial(scan_case, length=37, dstate=20)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("form_B,form_C", [("variable", "variable"), ("constant", "grouped")])
@pytest.mark.parametrize("long_rows", [False, True], ids=["rows", "time-blocks"])
def test_row_kernels_with_whole_blocks_match_the_reference(rng, monkeypatch, dtype, form_B,
                                                           form_C, long_rows):
    """The row kernels (``_bwd_real``, and ``_bwd_real_long`` in blocks of 32 steps: one of
    32 and one of 5) with a gate, N = 20 (two lane blocks), L = 37: the reference's
    gradients."""
    kw = case(rng, form_B, form_C, False, dtype, z=True)
    assert kw["z"] is not None
    if long_rows:
        itemsize = np.dtype(dtype).itemsize
        monkeypatch.setattr(numba_cpu, "_BWD_RECORD_BYTES", 32 * 2 * 32 * itemsize)
        assert numba_cpu._bwd_block(32, np.dtype(dtype)) == 32
    dout = rng.standard_normal(kw["u"].shape).astype(dtype)
    dlast = rng.standard_normal(kw["h0"].shape).astype(dtype)
    with numba_pairs.forced(False), numba_tiles.forced(False):
        g = numba_cpu.selective_scan_backward(dout, **kw, dlast_state=dlast)
    g_ref = ssm_ref.selective_scan_backward(dout, **kw, dlast_state=dlast)
    for key in GRAD_NAMES:
        assert_close(g[key], g_ref[key], kind="backend", err_msg=f"d{key}")


@njit(fastmath=numba_cpu._FMK, error_model="numpy")
def _scan_pair(L, N, dt, bu, a2, h, y, B, C, b_st, c_st, zero, normal, terms, new):
    """The forward pass's recurrence of a row: ``_fwd_row_scan`` (its IR blocks) or the
    Numba loop ``_fwd_block_scan`` over all L steps, block of states by block."""
    if new:
        numba_cpu._fwd_row_scan(L, N, dt, bu, a2, h, y, B, C, b_st, c_st, zero, normal, terms)
    else:
        for n0 in range(0, N, 16):
            numba_cpu._fwd_block_scan(L, n0, dt, bu, a2, h, y, B, C, b_st, c_st, zero, normal,
                                      terms, n0 > 0)


@SWEEPS
@SHAPES
@STRIDES
@pytest.mark.parametrize("normal", [True, False], ids=["normal", "clamped"])
def test_scan_equals_the_numba_loop(rng, dtype, L, N, b_st, c_st, normal):
    """The forward's state bit for bit, its y within the exact tolerance (and every entry
    written: y starts as NaN)."""
    dt, bu, _, a2, h0, B, C = _row_inputs(rng, L, N, dtype, normal, b_st, c_st)
    out = {}
    for new in (False, True):
        h, y = h0.copy(), np.full(L + numba_cpu._GAP, np.nan, dtype)
        _scan_pair(L, N, dt, bu, a2, h, y, B, C, b_st, c_st, dtype(0), normal,
                   exp2_terms(dtype), new)
        out[new] = h[:N], y[:L]
    np.testing.assert_array_equal(out[True][0], out[False][0], err_msg="h")
    assert np.isfinite(out[True][1]).all()
    assert_close(out[True][1], out[False][1], kind="exact", err_msg="y")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("form_B,form_C", [("variable", "variable"), ("constant", "grouped")])
@pytest.mark.parametrize("long_rows", [False, True], ids=["rows", "time-blocks"])
def test_row_forward_with_whole_blocks_matches_the_reference(rng, monkeypatch, dtype, form_B,
                                                             form_C, long_rows):
    """The forward's row kernels (``_fwd_real``, and ``_fwd_real_long`` in blocks of 32
    steps) at N = 20, L = 37: the reference's output and last state."""
    kw = case(rng, form_B, form_C, False, dtype, z=True)
    if long_rows:
        itemsize = np.dtype(dtype).itemsize
        monkeypatch.setattr(numba_cpu, "_FWD_BC_BYTES", 32 * 2 * 32 * itemsize)
        assert numba_cpu._fwd_block(32, np.dtype(dtype)) == 32
    with numba_pairs.forced(False), numba_tiles.forced(False):
        y, last = numba_cpu.selective_scan(**kw, return_last_state=True)
    y_ref, last_ref = ssm_ref.selective_scan(**kw, return_last_state=True)
    assert_close(y, y_ref, kind="backend", err_msg="y")
    assert_close(last, last_ref, kind="backend", err_msg="last state")


def test_blocks_of_16_and_back():
    """The row backward's layout of B and C: block k holds states 16 k .. 16 k + 15 of every
    step, contiguous; undone exactly (and N = 16 keeps its memory order)."""
    X = np.arange(2 * 3 * 5 * 48, dtype=np.float32).reshape(2, 3, 5, 48)  # (B, G, L, N)
    blocks = numba_cpu._blocks_of_16(X)
    assert blocks.shape == (2, 3, 3, 5, 16) and blocks.flags.c_contiguous
    np.testing.assert_array_equal(blocks[1, 2, 1, 4], X[1, 2, 4, 16:32])
    np.testing.assert_array_equal(numba_cpu._from_blocks_of_16(blocks), X)
    one = X[..., :16].copy()
    np.testing.assert_array_equal(numba_cpu._blocks_of_16(one).ravel(), one.ravel())
