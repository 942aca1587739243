"""Sixteen channels per vector (``fast.numba_tiles``) against the reference and the row kernels.

Forward and backward.

Oracles: ``ssm_ref.selective_scan`` (``assert_close(kind="backend")``), the
row kernels of ``fast.numba_cpu`` on the same input (``kind="exact"``: the
same updates, the sum over N taken in another order), and ``np.transpose``
for the 16 x 16 block transpose.  A spy on the tile kernel proves each case
ran it; the decision :func:`fast.numba_tiles.tiles_apply` is checked case by
case.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from cases import check_grads, count_calls, numba_threads, scan_case
from conftest import ROOT, assert_close
from numba import njit
from numba.core.errors import TypingError

import ssm_ref
from fast import _lanes, _spans, numba_cpu, numba_tiles
from ssm_ref.scan_args import check_scan_structure

TILE = numba_tiles.TILE


@pytest.fixture
def calls(monkeypatch):
    """Count the launches of the tile kernels: ``calls["fwd_tiles"]``, ``calls["bwd_tiles"]``
    (with those of their versions for short rows, ``fwd_tiles_short``, ``bwd_tiles_short``),
    and ``calls["fwd_tiles_long"]``, the forward in time blocks."""
    return count_calls(monkeypatch, numba_tiles, {
        "fwd_tiles": "fwd_tiles", "fwd_tiles_short": "fwd_tiles",
        "fwd_tiles_long": "fwd_tiles_long",
        "bwd_tiles": "bwd_tiles", "bwd_tiles_short": "bwd_tiles"})


def tiled_case(rng, dtype=np.float32, *, dim=40, groups=1, length=37, dstate=5, **kw):
    """A Mamba-like scan whose channels share B and C: by default 40 channels in one group
    (tiles of 16, 16 and 8 channels), 2 batch elements, L not a multiple of 16."""
    form = "variable" if groups == 1 else "grouped"
    return scan_case(rng, form, form, False, dtype, dim=dim, groups=groups, length=length,
                     dstate=dstate, **kw)


def structure(kw):
    kw = dict(kw)
    kw.setdefault("delta_softplus", False)
    return check_scan_structure(**{k: kw.get(k) for k in (
        "u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus", "h0")})


# ---------------------------------------------------------------------------
# the block transpose
# ---------------------------------------------------------------------------

def _transpose_with(transpose):
    """A jitted function that calls the intrinsic ``transpose`` (intrinsics run only inside
    Numba)."""
    return njit(lambda src, r0, c0, dst, q0, k0: transpose(src, r0, c0, dst, q0, k0))


_transpose_at = _transpose_with(numba_tiles.transpose_block)
_transpose_at_8 = _transpose_with(_lanes._make_transpose_block(8))
_transpose_at_16 = _transpose_with(_lanes._make_transpose_block(16))


@pytest.mark.parametrize("transpose", [_transpose_at, _transpose_at_8, _transpose_at_16],
                         ids=["this-cpu", "squares-of-8", "squares-of-16"])
def test_transpose_block_against_numpy(rng, transpose):
    """One 16 x 16 block of a strided source into a strided destination; nothing else moves.
    Both ways of doing it (four 8 x 8 squares, for AVX2, or one of 16) on any CPU."""
    src = rng.standard_normal((40, 50)).astype(np.float32)
    dst = np.full((30, 45), np.float32(7.0))
    transpose(src, 3, 5, dst, 2, 20)
    expected = np.full_like(dst, 7.0)
    expected[2:2 + TILE, 20:20 + TILE] = src[3:3 + TILE, 5:5 + TILE].T
    assert np.array_equal(dst, expected)
    rows = src[::2]  # a row stride of two rows
    out = np.zeros((TILE, TILE), np.float32)
    transpose(rows, 1, 0, out, 0, 0)
    assert np.array_equal(out, rows[1:1 + TILE, :TILE].T)


def test_vector_bits_follow_the_cpu():
    """The transposes' choice: 512-bit vectors exactly where the CPU has AVX-512, as Linux
    lists its flags (Numba compiles for the host unless told otherwise)."""
    import os
    from pathlib import Path

    from numba.core.registry import cpu_target
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists() or os.environ.get("NUMBA_CPU_NAME") or os.environ.get(
            "NUMBA_CPU_FEATURES"):
        pytest.skip("needs Linux's /proc/cpuinfo and Numba compiling for the host")
    flags = next(line for line in cpuinfo.read_text().splitlines()
                 if line.startswith("flags")).split()
    bits = _lanes.vector_bits(cpu_target.target_context)
    assert bits == (512 if "avx512f" in flags else 256)


def test_transpose_block_is_float32_only():
    with pytest.raises(TypingError):
        _transpose_at(np.zeros((16, 16)), 0, 0, np.zeros((16, 16)), 0, 0)


def _lane_sums_with(add_lane_sums):
    """A jitted function that calls the intrinsic ``add_lane_sums``."""
    return njit(lambda src, r0, dst, k0: add_lane_sums(src, r0, dst, k0))


_lane_sums_at = _lane_sums_with(numba_tiles.add_lane_sums)
_lane_sums_at_8 = _lane_sums_with(_lanes._make_add_lane_sums(8))
_lane_sums_at_16 = _lane_sums_with(_lanes._make_add_lane_sums(16))


@pytest.mark.parametrize("lane_sums", [_lane_sums_at, _lane_sums_at_8, _lane_sums_at_16],
                         ids=["this-cpu", "halves-of-8", "halves-of-16"])
def test_add_lane_sums_against_numpy(rng, lane_sums):
    """16 rows of a strided source summed over their first 16 entries into 16 entries of the
    destination (added to what is there) and set to zero; nothing else moves.  Both ways of
    doing it (pieces of 8 lanes, for AVX2, or vectors of 16) on any CPU."""
    base = rng.standard_normal((60, 20)).astype(np.float32)
    base_before = base.copy()
    src = base[::2]  # a row stride of two rows, 20 entries per row
    before = src.copy()
    dst = rng.standard_normal(40).astype(np.float32)
    expected = dst.astype(np.float64)
    expected[7:7 + TILE] += before[3:3 + TILE, :TILE].astype(np.float64).sum(axis=1)
    lane_sums(src, 3, dst, 7)
    np.testing.assert_allclose(dst, expected, rtol=1e-6, atol=1e-6)
    untouched = np.ones(before.shape, bool)
    untouched[3:3 + TILE, :TILE] = False
    assert np.array_equal(src[untouched], before[untouched])
    assert not src[3:3 + TILE, :TILE].any()
    assert np.array_equal(base[1::2], base_before[1::2])  # the rows in between


def test_add_lane_sums_takes_float32_and_a_contiguous_destination():
    with pytest.raises(TypingError):
        _lane_sums_at(np.zeros((16, 16)), 0, np.zeros(16), 0)
    with pytest.raises(TypingError):  # every other entry: one vector store would not do
        _lane_sums_at(np.zeros((16, 16), np.float32), 0, np.zeros(32, np.float32)[::2], 0)


# ---------------------------------------------------------------------------
# when the tile kernel runs
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("change, expected", [
    ({}, True),
    ({"dim": 16}, True),
    ({"dim": 15}, False),  # fewer channels than a tile
    ({"dim": 64, "groups": 4}, True),  # 16 channels per group
    ({"dim": 60, "groups": 4}, False),  # 15 channels per group
    ({"groups": (1, 2), "dim": 64}, False),  # B and C grouped differently
    ({"form": ("constant", "variable")}, False),  # B per channel
    ({"dtype": np.float64}, False),  # 8 lanes per vector: not tiled
], ids=["mamba", "D16", "D15", "G4", "G4-15", "G-differ", "B-constant", "float64"])
def test_tiles_apply(rng, change, expected):
    args = dict(dim=40, groups=1, dtype=np.float32)
    args.update(change)
    form_B, form_C = args.pop("form", ("variable" if args["groups"] == 1 else "grouped",) * 2)
    dtype = args.pop("dtype")
    kw = scan_case(rng, form_B, form_C, False, dtype, length=20, **args)
    s = structure(kw)
    assert numba_tiles.tiles_apply(s, 64, dtype) is expected
    assert numba_tiles.tiles_apply(s, 64, dtype, "backward") is expected
    # rows longer than a block: the forward in tiles of time blocks, the backward in rows
    assert numba_tiles.tiles_apply(s, 19, dtype) is expected
    assert numba_tiles.tiles_apply(s, 19, dtype, "backward") is False
    with numba_tiles.forced(False):
        assert numba_tiles.tiles_apply(s, 64, dtype) is False
    with numba_tiles.forced(True):
        assert numba_tiles.tiles_apply(s, 64, dtype) is expected


def test_backward_tiles_need_records_within_the_budget(rng):
    """The backward runs in tiles while 4 (L, N, 16) float32 arrays fit BWD_TILE_BYTES."""
    budget = numba_tiles.BWD_TILE_BYTES
    fits = budget // (4 * TILE * 4)  # L * N
    for length, dstate, expected in ((fits // 8, 8, True), (fits // 8 + 1, 8, False)):
        s = structure(tiled_case(rng, length=length, dstate=dstate))
        assert numba_tiles.tiles_apply(s, 10 ** 6, np.float32, "backward") is expected
        assert numba_tiles.tiles_apply(s, 10 ** 6, np.float32, "forward") is True


def test_tiles_come_before_pairs_unless_pairs_are_forced(rng, calls, monkeypatch):
    """N <= 8 with 16 channels per group: both layouts fit; tiles run, pairs only when forced."""
    from fast import numba_pairs
    kw = tiled_case(rng, dim=32, groups=2, dstate=8)
    dout = rng.standard_normal(kw["u"].shape).astype(np.float32)
    numba_cpu.selective_scan_backward(dout, **kw)  # the float32 backward has pairs by default
    assert calls["bwd_tiles"] == 1
    pair_calls = count_calls(monkeypatch, numba_pairs, {"bwd_pairs": "bwd_pairs",
                                                        "bwd_pairs_short": "bwd_pairs"})
    with numba_pairs.forced(True):
        g = numba_cpu.selective_scan_backward(dout, **kw)
    assert calls["bwd_tiles"] == 1 and pair_calls == {"bwd_pairs": 1}
    assert_close(g["B"], ssm_ref.selective_scan_backward(dout, **kw)["B"], kind="backend")


def test_tile_count(rng):
    s = structure(tiled_case(rng, dim=72, groups=2))  # 36 channels per group: 3 tiles each
    assert numba_tiles.tile_count(s) == 2 * 2 * 3


# ---------------------------------------------------------------------------
# the tile kernel against the reference and the row kernels
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [
    dict(),  # 40 channels: tiles of 16, 16, 8
    dict(dim=16, length=1, dstate=1),
    dict(dim=33, length=16, dstate=16),
    dict(dim=48, groups=3, length=50, dstate=17),
    dict(dim=34, groups=2, length=5, dstate=8),
], ids=["D40-L37-N5", "D16-L1-N1", "D33-L16-N16", "G3-L50-N17", "G2-L5-N8"])
@pytest.mark.parametrize("extras", [True, False], ids=["D-z-bias-softplus-h0", "plain"])
def test_forward_matches_reference_and_rows(rng, calls, shape, extras):
    kw = tiled_case(rng, extras=extras, **shape)
    y, last = numba_cpu.selective_scan(**kw, return_last_state=True)
    assert calls["fwd_tiles"] == 1
    y_ref, last_ref = ssm_ref.selective_scan(**kw, return_last_state=True)
    assert y.dtype == y_ref.dtype and last.dtype == last_ref.dtype
    assert y.shape == y_ref.shape and last.shape == last_ref.shape
    assert_close(y, y_ref, kind="backend", err_msg="y")
    assert_close(last, last_ref, kind="backend", err_msg="last state")
    with numba_tiles.forced(False):
        y_rows, last_rows = numba_cpu.selective_scan(**kw, return_last_state=True)
    assert calls["fwd_tiles"] == 1
    assert_close(y, y_rows, kind="exact", err_msg="y against the row kernel")
    assert_close(last, last_rows, kind="exact", err_msg="last state against the row kernel")


@pytest.mark.parametrize("shape", [
    dict(length=100),  # 40 channels, blocks of 32 steps: 3 whole and one of 4
    dict(dim=96, groups=2, length=64, dstate=16, batch=3),  # several tiles per thread
    dict(dim=33, length=33, dstate=17),  # blocks of 32 and 1
], ids=["D40-L100-N5", "B3-G2-D96-L64-N16", "D33-L33-N17"])
@pytest.mark.parametrize("extras", [True, False], ids=["D-z-bias-softplus-h0", "plain"])
def test_long_rows_forward_in_time_blocks(rng, calls, monkeypatch, shape, extras):
    """Rows longer than the forward's block run fwd_tiles_long (B and C of a block: 32 steps
    here): the same updates as fwd_tiles, block after block, so the same numbers to the
    bit; and the reference's to rounding."""
    kw = tiled_case(rng, extras=extras, **shape)
    y_one, last_one = numba_cpu.selective_scan(**kw, return_last_state=True)  # one block
    assert calls["fwd_tiles"] == 1 and calls["fwd_tiles_long"] == 0
    dstate = kw["A"].shape[1]
    monkeypatch.setattr(numba_cpu, "_FWD_BC_BYTES", 32 * 2 * dstate * 4 + 7)  # T = 32
    assert numba_cpu._fwd_block(dstate, np.float32) == 32 < kw["u"].shape[2]
    y, last = numba_cpu.selective_scan(**kw, return_last_state=True)
    assert calls["fwd_tiles"] == 1 and calls["fwd_tiles_long"] == 1
    assert_close(y, y_one, kind="exact", err_msg="y against one block")
    assert_close(last, last_one, kind="exact", err_msg="last state against one block")
    y_ref, last_ref = ssm_ref.selective_scan(**kw, return_last_state=True)
    assert_close(y, y_ref, kind="backend", err_msg="y")
    assert_close(last, last_ref, kind="backend", err_msg="last state")


def test_long_rows_forward_block_not_a_multiple_of_the_tile(rng, calls, monkeypatch):
    """A block of 20 steps runs as blocks of 16 (whole 16 x 16 transposes)."""
    kw = tiled_case(rng, length=45)
    y_one = numba_cpu.selective_scan(**kw)
    monkeypatch.setattr(numba_cpu, "_FWD_BC_BYTES", 20 * 2 * 5 * 4)  # T = 20
    assert numba_cpu._fwd_block(5, np.float32) == 20
    y = numba_cpu.selective_scan(**kw)
    assert calls["fwd_tiles_long"] == 1
    assert_close(y, y_one, kind="exact", err_msg="y against one block")


def test_long_rows_forward_screens_bad_input(rng, calls, monkeypatch):
    """A NaN in the last block of the last channel reaches the screen: the reference's error."""
    kw = tiled_case(rng, length=100)
    monkeypatch.setattr(numba_cpu, "_FWD_BC_BYTES", 32 * 2 * 5 * 4)
    kw["delta"] = kw["delta"].copy()
    kw["delta"][1, 39, 99] = np.nan
    with pytest.raises(ValueError, match="delta"):
        numba_cpu.selective_scan(**kw)
    assert calls["fwd_tiles_long"] == 1


@pytest.mark.parametrize("shape", [
    dict(),
    dict(dim=16, length=1, dstate=1),
    dict(dim=33, length=16, dstate=16),
    dict(dim=48, groups=3, length=50, dstate=17),
    dict(dim=34, groups=2, length=5, dstate=8),
    dict(dim=96, groups=2, length=9, dstate=3, batch=3),  # several tiles per group and thread
], ids=["D40-L37-N5", "D16-L1-N1", "D33-L16-N16", "G3-L50-N17", "G2-L5-N8", "B3-G2-D96"])
@pytest.mark.parametrize("extras", [True, False], ids=["D-z-bias-softplus-h0", "plain"])
def test_backward_matches_reference_and_rows(rng, calls, shape, extras):
    """Every gradient, with and without dlast_state; dB and dC summed over the lanes of each
    batch element and group (a thread's tiles cross groups and batch elements)."""
    kw = tiled_case(rng, extras=extras, **shape)
    dout = rng.standard_normal(kw["u"].shape).astype(np.float32)
    dlast = (rng.standard_normal(kw["u"].shape[:2] + (kw["A"].shape[1],)).astype(np.float32)
             if extras else None)
    g = numba_cpu.selective_scan_backward(dout, **kw, dlast_state=dlast)
    assert calls["bwd_tiles"] == 1
    g_ref = ssm_ref.selective_scan_backward(dout, **kw, dlast_state=dlast)
    with numba_tiles.forced(False):
        g_rows = numba_cpu.selective_scan_backward(dout, **kw, dlast_state=dlast)
    assert calls["bwd_tiles"] == 1
    check_grads(g, g_ref, g_rows, "the rows")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("length, spans", [(1, (1, 1)), (17, (3, 2)), (63, (9, 5)), (64, None)],
                         ids=["one-step", "tiny-vim", "short", "long"])
def test_short_rows_run_in_spans(rng, monkeypatch, threads, length, spans):
    """Rows shorter than ``SPAN_BELOW`` = 64 steps run the tile kernels for short rows, whose
    per-row passes go over spans of whole tiles (``fast._spans``): 3 images x 2 groups of
    36 channels are 18 tiles of 16, 16 and 4 channels, so at L = 17 a span of 7 tiles crosses
    groups and images and holds short tiles inside it (their transposes write rows of the
    next tile), and the last span of a thread is shorter; at L = 64 the rows run
    ``fwd_tiles`` and ``bwd_tiles``.  Each channel has its own bias, D, h0 and dlast_state.
    Against the reference; against the row kernels to rounding where a result is not a sum
    over many steps: in float32 the two layouts' sums drift apart where they cancel (d
    delta_bias, 189 terms at L = 63: 3e-4 relative on a sum of 0.009), the tiles' as close
    to the float64 reference as the rows' (4e-8 to 2e-7 of the terms' absolute sum, the
    tiles for long rows alike)."""
    kernels = ("fwd_tiles", "bwd_tiles", "fwd_tiles_short", "bwd_tiles_short")
    calls = count_calls(monkeypatch, numba_tiles, kernels)
    kw = tiled_case(rng, dim=72, groups=2, batch=3, length=length, dstate=7)
    assert numba_tiles.tile_count(structure(kw)) == 18
    if spans is not None:  # spans per thread: 18 tiles on one thread, 9 on each of two
        per_span = _spans.span_units.py_func(length, TILE)
        assert -(-(18 // threads) // per_span) == spans[threads - 1]
    dout = rng.standard_normal(kw["u"].shape).astype(np.float32)
    dlast = rng.standard_normal((3, 72, 7)).astype(np.float32)
    with numba_threads(threads):
        y, last = numba_cpu.selective_scan(**kw, return_last_state=True)
        g = numba_cpu.selective_scan_backward(dout, **kw, dlast_state=dlast)
    short = spans is not None
    assert calls == dict(zip(kernels, (int(not short),) * 2 + (int(short),) * 2))
    y_ref, last_ref = ssm_ref.selective_scan(**kw, return_last_state=True)
    assert_close(y, y_ref, kind="backend", err_msg="y")
    assert_close(last, last_ref, kind="backend", err_msg="last state")
    with numba_tiles.forced(False):
        y_rows, last_rows = numba_cpu.selective_scan(**kw, return_last_state=True)
        g_rows = numba_cpu.selective_scan_backward(dout, **kw, dlast_state=dlast)
    assert_close(y, y_rows, kind="exact", err_msg="y against the row kernel")
    assert_close(last, last_rows, kind="exact", err_msg="last state against the row kernel")
    g_ref = ssm_ref.selective_scan_backward(dout, **kw, dlast_state=dlast)
    for key in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"):
        assert_close(g[key], g_ref[key], kind="backend", err_msg=f"d{key}")
    for key in ("u", "delta", "z", "h0"):  # per step (h0: per channel)
        assert_close(g[key], g_rows[key], kind="exact", err_msg=f"d{key} against the rows")


@pytest.mark.parametrize("first", ["fast._spans", "fast.numba_tiles", "fast.numba_pairs",
                                   "fast.numba_cpu"])
def test_kernel_modules_import_in_any_order(first):
    """``fast.numba_cpu`` imports the kernel modules at its end, they import ``fast._spans``'
    helpers, and ``_spans`` imports ``numba_cpu``'s row passes at its end: whichever of them
    a program imports first, all of them come out whole (a fresh interpreter each)."""
    code = (f"import {first}\n"
            "from fast import _spans, numba_cpu, numba_pairs, numba_tiles\n"
            "assert numba_tiles.span_steps is _spans.span_steps is numba_pairs.span_steps\n"
            "assert _spans._row_steps is numba_cpu._row_steps\n"
            "assert numba_cpu._tiles is numba_tiles and numba_cpu._spans is _spans\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_backward_on_one_thread_and_many(rng, calls):
    """The lanes of dB and dC are flushed per thread: one thread (all tiles in turn) and as
    many threads as tiles give the same gradients."""
    kw = tiled_case(rng, dim=64, groups=2, batch=2)  # 2 x 2 x 2 tiles
    dout = rng.standard_normal(kw["u"].shape).astype(np.float32)
    with numba_threads(1):
        g1 = numba_cpu.selective_scan_backward(dout, **kw)
    g = numba_cpu.selective_scan_backward(dout, **kw)
    assert calls["bwd_tiles"] == 2
    for key in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"):
        assert_close(g1[key], g[key], kind="exact", err_msg=f"d{key}")


@pytest.mark.parametrize("shape", [(2, 3, 2, 37, 5), (1, 1, 1, 16, 16), (3, 2, 4, 1, 8)])
def test_sum_copies_adds_the_touched_units_transposed(rng, shape):
    """The threads' copies of dB or dC: the touched units summed (exactly NumPy's sums of the
    copies with the untouched units zero), (L, N) -> (N, L); untouched units are never read
    (NaN there) and a unit no copy touched comes out zero."""
    Xc = rng.standard_normal(shape).astype(np.float32)
    touched = rng.integers(0, 2, shape[:3]).astype(np.uint8)
    touched[:, 0, 0] = 0  # touched by no copy
    want = np.swapaxes(np.where(touched[..., None, None] == 1, Xc, 0).sum(axis=0), 2, 3)
    Xc[touched == 0] = np.nan
    out = np.full(shape[1:3] + (shape[4], shape[3]), np.nan, np.float32)
    numba_cpu._launch(numba_tiles.sum_copies, Xc, touched, out)
    np.testing.assert_array_equal(out, want)
    assert not out[0, 0].any()


def test_channels_whose_decay_underflows(rng, calls):
    """One channel with steps whose exp(dt A) is below 2^-125 (the clamped exponential for
    its tile), the others moderate: all match the reference."""
    kw = tiled_case(rng, extras=False, length=20)
    kw["A"] = kw["A"].copy()
    kw["A"][3] *= 400.0  # channel 3's dt A reaches far below -125 / log2(e)
    y = numba_cpu.selective_scan(**kw)
    dout = rng.standard_normal(y.shape).astype(np.float32)
    g = numba_cpu.selective_scan_backward(dout, **kw)
    assert calls == {"fwd_tiles": 1, "fwd_tiles_long": 0, "bwd_tiles": 1}
    assert_close(y, ssm_ref.selective_scan(**kw), kind="backend", err_msg="y")
    g_ref = ssm_ref.selective_scan_backward(dout, **kw)
    for key in ("u", "delta", "A", "B", "C"):
        assert_close(g[key], g_ref[key], kind="backend", err_msg=f"d{key}")


def test_channels_last_views(rng, calls):
    """u, delta and z as transposed views of (B, L, D) tokens, as the vision blocks pass them."""
    kw = tiled_case(rng)
    for key in ("u", "delta", "z"):
        kw[key] = np.ascontiguousarray(kw[key].transpose(0, 2, 1)).transpose(0, 2, 1)
    y = numba_cpu.selective_scan(**kw)
    assert calls["fwd_tiles"] == 1
    assert_close(y, ssm_ref.selective_scan(**kw), kind="backend", err_msg="y")


@pytest.mark.parametrize("where", [(0, 1, 4), (1, 39, 36)], ids=["first-tile", "last-channel"])
def test_screen_sees_nan_in_any_channel(rng, calls, where):
    """A NaN anywhere in a tile reaches the screen: the reference's error."""
    kw = tiled_case(rng)
    kw["u"] = kw["u"].copy()
    kw["u"][where] = np.nan
    with pytest.raises(ValueError, match="u"):
        numba_cpu.selective_scan(**kw)
    with pytest.raises(ValueError, match="u"):
        ssm_ref.selective_scan(**kw)
    with pytest.raises(ValueError, match="u"):
        numba_cpu.selective_scan_backward(np.ones_like(kw["u"]), **kw)
    assert calls == {"fwd_tiles": 1, "fwd_tiles_long": 0, "bwd_tiles": 1}


def test_float32_overflow_runs_again_in_float64(rng, calls):
    """dt * u beyond float32 in one channel (the output fits: B is small): the screen sees it
    and the call is computed again in float64 (by the row kernel), as the reference."""
    kw = tiled_case(rng, extras=False)
    kw["u"] = kw["u"].copy()
    kw["u"][1, 20, 2] = 3e38
    kw["delta"] = np.full_like(kw["delta"], 4.0)
    kw["B"] = (kw["B"] * 1e-10).astype(np.float32)
    y = numba_cpu.selective_scan(**kw)
    assert calls["fwd_tiles"] == 1  # the float32 try; float64 is not tiled
    assert y.dtype == np.float32 and np.isfinite(y).all()
    kw64 = {k: v.astype(np.float64) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    assert_close(y, ssm_ref.selective_scan(**kw64).astype(np.float32), kind="backend",
                 dtype=np.float32, err_msg="y")
