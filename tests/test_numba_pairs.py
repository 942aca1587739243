"""Two rows per 16-lane block (``fast.numba_pairs``) against the reference and the 16-lane kernels.

Oracles: ``ssm_ref.selective_scan`` / ``selective_scan_backward`` in float64
(``assert_close(kind="backend")``), and the 16-lane kernels of
``fast.numba_cpu`` on the same input (``kind="exact"``: the same updates, sums
taken in another order).  A spy on the pair kernels proves each case ran them.
The decision :func:`fast.numba_pairs.pairs_apply` is checked case by case.
"""
from __future__ import annotations

import numpy as np
import pytest
from cases import check_grads, count_calls, numba_threads, scan_case
from conftest import assert_close

import ssm_ref
from fast import _spans, numba_cpu, numba_pairs
from ssm_ref.scan_args import check_scan_structure


@pytest.fixture
def calls(monkeypatch):
    """Count the launches of the pair kernels: ``calls["fwd_pairs"]``, ``calls["bwd_pairs"]``
    (with those of their versions for short rows, ``fwd_pairs_short``, ``bwd_pairs_short``)."""
    return count_calls(monkeypatch, numba_pairs, {
        "fwd_pairs": "fwd_pairs", "fwd_pairs_short": "fwd_pairs",
        "bwd_pairs": "bwd_pairs", "bwd_pairs_short": "bwd_pairs"})


def vmamba_case(rng, dtype, dstate=8, **kw):
    """A VMamba-like scan: 4 groups (directions) of 2 channels share B and C; 2 images."""
    kw.setdefault("length", 11)
    return scan_case(rng, "grouped", "grouped", False, dtype, batch=2, dim=8, dstate=dstate,
                     groups=4, **kw)


# ---------------------------------------------------------------------------
# when the pair kernels run
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("change, expected", [
    ({}, True),
    ({"dstate": 3}, True),
    ({"dstate": 9}, False),  # nine states do not fit in a half
    ({"dim": 6, "groups": 2}, False),  # three channels per group: pairs would straddle groups
    ({"dim": 7, "groups": 1}, False),  # an odd number of channels
    ({"form_B": "constant"}, False),  # B per channel: two rows read two B rows
    ({"form_C": "variable"}, True),  # one C for every channel
    ({"complex_": True}, False),
], ids=["vmamba", "N3", "N9", "odd-group", "odd-D", "B-constant", "C-variable", "complex"])
def test_pairs_apply(rng, change, expected):
    args = dict(form_B="grouped", form_C="grouped", complex_=False, dim=8, dstate=8, groups=4)
    args.update(change)
    kw = scan_case(rng, **args)
    kw.setdefault("delta_softplus", False)
    s = check_scan_structure(**{k: kw.get(k) for k in (
        "u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus", "h0")})
    f64, f32 = np.float64, np.float32
    assert numba_pairs.pairs_apply(s, 64, f64, "forward") is expected
    assert numba_pairs.pairs_apply(s, 64, f64, "backward") is expected
    assert numba_pairs.pairs_apply(s, 64, f32, "backward") is expected
    assert numba_pairs.pairs_apply(s, 64, f32, "forward") is False  # not faster: 16 lanes
    assert numba_pairs.pairs_apply(s, kw["u"].shape[2] - 1, f64, "forward") is False  # blocks
    with numba_pairs.forced(False):
        assert numba_pairs.pairs_apply(s, 64, f64, "forward") is False
    with numba_pairs.forced(True):
        assert numba_pairs.pairs_apply(s, 64, f32, "forward") is expected
    assert numba_pairs.pairs_apply(s, 64, f32, "forward") is False  # the table again


# ---------------------------------------------------------------------------
# the pair kernels against the reference and the 16-lane kernels
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("dstate", [8, 3])
@pytest.mark.parametrize("extras", [True, False], ids=["D-z-bias-softplus-h0", "plain"])
def test_forward_matches_reference_and_16_lanes(rng, calls, dtype, dstate, extras):
    """Forced on: the float32 forward runs 16 lanes per row by default (PAIRED_DTYPES), its
    pair kernel is checked all the same."""
    kw = vmamba_case(rng, dtype, dstate, extras=extras)
    with numba_pairs.forced(True):
        y, last = numba_cpu.selective_scan(**kw, return_last_state=True)
    assert calls["fwd_pairs"] == 1
    y_ref, last_ref = ssm_ref.selective_scan(**kw, return_last_state=True)
    assert y.dtype == y_ref.dtype and last.dtype == last_ref.dtype
    assert_close(y, y_ref, kind="backend", err_msg="y")
    assert_close(last, last_ref, kind="backend", err_msg="last state")
    with numba_pairs.forced(False):
        y16, last16 = numba_cpu.selective_scan(**kw, return_last_state=True)
    assert calls["fwd_pairs"] == 1
    assert_close(y, y16, kind="exact", err_msg="y against 16 lanes")
    assert_close(last, last16, kind="exact", err_msg="last state against 16 lanes")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("dstate", [8, 3])
@pytest.mark.parametrize("extras", [True, False], ids=["D-z-bias-softplus-h0", "plain"])
def test_backward_matches_reference_and_16_lanes(rng, calls, dtype, dstate, extras):
    kw = vmamba_case(rng, dtype, dstate, extras=extras)
    dout = rng.standard_normal(kw["u"].shape).astype(dtype)
    dlast = rng.standard_normal(kw["u"].shape[:2] + (dstate,)).astype(dtype)
    g = numba_cpu.selective_scan_backward(dout, **kw, dlast_state=dlast)
    assert calls["bwd_pairs"] == 1
    g_ref = ssm_ref.selective_scan_backward(dout, **kw, dlast_state=dlast)
    with numba_pairs.forced(False):
        g16 = numba_cpu.selective_scan_backward(dout, **kw, dlast_state=dlast)
    assert calls["bwd_pairs"] == 1
    check_grads(g, g_ref, g16, "16 lanes")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch, groups, unit", [
    (3, (2, 1), 8),  # B: 4 pairs per group, C: one group of 8 pairs; 3 units over 2 threads
    (5, (4, 2), 4),  # B: 2 pairs per group, C: 4; 5 units
    (1, (8, 8), 1),  # one pair per group, 8 units in one batch element
], ids=["B2-C1", "B4-C2", "B8-C8"])
def test_backward_threads_take_whole_groups(rng, calls, threads, batch, groups, unit):
    """Each thread adds into whole groups of B and C (``chunk_unit`` pairs at a time), which
    may span several pairs and differ between B and C, and units need not divide evenly
    between the threads: dB and dC match the reference and the 16-lane kernels."""
    kw = scan_case(rng, "grouped", "grouped", False, np.float64, batch=batch, dim=16,
                   dstate=5, groups=groups, length=13)
    s = check_scan_structure(**{k: kw.get(k) for k in (
        "u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus", "h0")})
    assert numba_pairs.chunk_unit(s) == unit
    dout = rng.standard_normal(kw["u"].shape)
    with numba_threads(threads):
        g = numba_cpu.selective_scan_backward(dout, **kw)
    assert calls["bwd_pairs"] == 1
    g_ref = ssm_ref.selective_scan_backward(dout, **kw)
    with numba_pairs.forced(False):
        g16 = numba_cpu.selective_scan_backward(dout, **kw)
    check_grads(g, g_ref, g16, "16 lanes")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("length, spans", [(17, 2), (63, 5), (64, None)],
                         ids=["tiny-vim", "short", "long"])
def test_short_rows_run_in_spans(rng, monkeypatch, threads, dtype, length, spans):
    """Rows shorter than ``SPAN_BELOW`` = 64 steps run the kernels for short rows, whose
    per-row passes go over spans of consecutive rows (``fast._spans``): at L = 17 a span of
    60 pairs holds rows of three images and the last span is shorter; at L = 64 the rows
    run ``fwd_pairs`` and ``bwd_pairs``.  Channels take their own bias and D in a span (and
    their own shares of dD and d delta_bias), B and C are grouped differently (5 and 25
    groups of 50 channels), and the spans need not fit the threads' units of whole groups.
    Against the 16-lane kernels in float64 only: in float32 the two layouts' outputs drift
    apart over hundreds of steps by more than the "exact" tolerance (1 of 45,000 at L =
    300, for the long rows' kernels too); both stay within the reference's."""
    kernels = ("fwd_pairs", "bwd_pairs", "fwd_pairs_short", "bwd_pairs_short")
    calls = count_calls(monkeypatch, numba_pairs, kernels)
    kw = scan_case(rng, "grouped", "grouped", False, dtype, batch=3, dim=50, dstate=8,
                   groups=(5, 25), length=length)
    if spans is not None:
        assert -(-(3 * 50 // 2) // _spans.span_units.py_func(length, 2)) == spans
    dout = rng.standard_normal(kw["u"].shape).astype(dtype)
    with numba_threads(threads), numba_pairs.forced(True):
        y, last = numba_cpu.selective_scan(**kw, return_last_state=True)
        g = numba_cpu.selective_scan_backward(dout, **kw)
    short = spans is not None
    assert calls == dict(zip(kernels, (int(not short),) * 2 + (int(short),) * 2))
    y_ref, last_ref = ssm_ref.selective_scan(**kw, return_last_state=True)
    assert_close(y, y_ref, kind="backend", err_msg="y")
    assert_close(last, last_ref, kind="backend", err_msg="last state")
    g_ref = ssm_ref.selective_scan_backward(dout, **kw)
    if dtype == np.float32:
        for key in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"):
            assert_close(g[key], g_ref[key], kind="backend", err_msg=f"d{key}")
        return
    with numba_pairs.forced(False):
        y16 = numba_cpu.selective_scan(**kw)
        g16 = numba_cpu.selective_scan_backward(dout, **kw)
    assert_close(y, y16, kind="exact", err_msg="y against 16 lanes")
    check_grads(g, g_ref, g16, "16 lanes")


@pytest.mark.parametrize("batch, length", [(1, 1), (1, 6), (3, 1)],
                         ids=["one-image-one-step", "one-image", "one-step"])
def test_one_image_or_one_step(rng, calls, batch, length):
    """B and C read with no batch stride (one image) or no time stride (one step): each
    thread's doubled block of the group matches the reference both ways."""
    kw = scan_case(rng, "grouped", "variable", False, np.float64, batch=batch, dim=8,
                   dstate=6, groups=(4, 1), length=length)
    dout = rng.standard_normal(kw["u"].shape)
    with numba_threads(1):
        y = numba_cpu.selective_scan(**kw)
        g = numba_cpu.selective_scan_backward(dout, **kw)
    assert calls == {"fwd_pairs": 1, "bwd_pairs": 1}
    assert_close(y, ssm_ref.selective_scan(**kw), kind="backend", err_msg="y")
    g_ref = ssm_ref.selective_scan_backward(dout, **kw)
    with numba_pairs.forced(False):
        g16 = numba_cpu.selective_scan_backward(dout, **kw)
    check_grads(g, g_ref, g16, "16 lanes")


def test_backward_with_fewer_units_than_threads_runs_16_lanes(rng, calls):
    """One image and one group: a single unit of work.  On two threads the pair backward
    would leave one idle, so the 16-lane kernels (which split rows) run; on one, the pairs."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one thread only: no idle thread to avoid")
    kw = scan_case(rng, "variable", "variable", False, np.float64, batch=1, dim=8, dstate=8)
    s = check_scan_structure(**{k: kw.get(k) for k in (
        "u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus", "h0")})
    assert numba_pairs.unit_count(s) == 1
    dout = rng.standard_normal(kw["u"].shape)
    g_ref = ssm_ref.selective_scan_backward(dout, **kw)
    for threads, pairs_ran in ((2, 0), (1, 1)):
        calls.update(dict.fromkeys(calls, 0))
        with numba_threads(threads):
            assert numba_pairs.pairs_apply(s, 64, np.float64, "backward") is bool(pairs_ran)
            assert numba_pairs.pairs_apply(s, 64, np.float64, "forward") is True
            g = numba_cpu.selective_scan_backward(dout, **kw)
            # a forward kept for its backward: in pairs either way; on two threads its
            # backward lays B and C out for the 16 lanes from the forward's arrays
            _, _, saved = numba_cpu.selective_scan_for_backward(**kw)
            g_saved = numba_cpu.selective_scan_backward_saved(dout, saved)
        assert calls == {"fwd_pairs": 1, "bwd_pairs": 2 * pairs_ran}
        for key in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"):
            for got, how in ((g, "plain"), (g_saved, "kept")):
                assert_close(got[key], g_ref[key], kind="backend",
                             err_msg=f"d{key}, {threads} threads, {how}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_rows_whose_decay_underflows(rng, calls, dtype):
    """One row of a pair with steps whose exp(dt A) is below 2^-125 (the clamped exponential),
    its partner with moderate steps: both rows still match the reference."""
    kw = vmamba_case(rng, dtype, extras=False, length=20)
    kw["A"] = kw["A"].copy()
    kw["A"][0] *= 400.0  # row 0's dt A reaches far below -125 / log2(e)
    with numba_pairs.forced(True):
        y = numba_cpu.selective_scan(**kw)
    dout = rng.standard_normal(y.shape).astype(dtype)
    g = numba_cpu.selective_scan_backward(dout, **kw)
    assert calls == {"fwd_pairs": 1, "bwd_pairs": 1}
    assert_close(y, ssm_ref.selective_scan(**kw), kind="backend", err_msg="y")
    g_ref = ssm_ref.selective_scan_backward(dout, **kw)
    for key in ("u", "delta", "A", "B", "C"):
        assert_close(g[key], g_ref[key], kind="backend", err_msg=f"d{key}")


@pytest.mark.parametrize("where", [(0, 1, 4), (1, 6, 10)], ids=["second-row", "last-pair"])
def test_screen_sees_nan_in_either_row(rng, calls, where):
    """A NaN in either row of a pair reaches the screen: the reference's error, forward
    and backward."""
    kw = vmamba_case(rng, np.float64)
    kw["u"] = kw["u"].copy()
    kw["u"][where] = np.nan
    with pytest.raises(ValueError, match="u"):
        numba_cpu.selective_scan(**kw)
    with pytest.raises(ValueError, match="u"):
        numba_cpu.selective_scan_backward(np.ones_like(kw["u"]), **kw)
    assert calls == {"fwd_pairs": 1, "bwd_pairs": 1}


def test_float32_overflow_runs_again_in_float64(rng, calls):
    """dt * u beyond float32 in a pair (the output fits: B is small): the screen sees it and
    the call is computed again in float64 (by the pair kernels again), as the reference."""
    kw = vmamba_case(rng, np.float32, extras=False)
    kw["u"] = kw["u"].copy()
    kw["u"][1, 3, 2] = 3e38
    kw["delta"] = np.full_like(kw["delta"], 4.0)
    kw["B"] = kw["B"] * np.float32(1e-3)
    with numba_pairs.forced(True):
        y = numba_cpu.selective_scan(**kw)
    assert calls["fwd_pairs"] == 2  # float32, then float64
    y_ref = ssm_ref.selective_scan(**{k: (v.astype(np.float64) if isinstance(v, np.ndarray)
                                          else v) for k, v in kw.items()})
    assert np.isfinite(y_ref).all()
    assert_close(y, y_ref.astype(np.float32), kind="backend", dtype=np.float32)
