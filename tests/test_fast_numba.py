"""The Numba CPU backend against the float64 NumPy reference.

Oracle: ``ssm_ref.selective_scan`` / ``selective_scan_backward`` /
``selective_state_update`` (themselves checked against the official
``selective_scan_ref``, scalar loops and finite differences).  Comparisons
go through ``assert_close(kind="backend")``: float64 inputs within 1e-9,
float32 inputs (computed in float32 by the kernels) within 2e-4 relative.
Sizes are small: N = 5 exercises the padding of N to 16 lanes, N = 20 two
lane blocks; D = 4 rows split over the threads.  With N = 5 and B, C shared
by pairs of channels, the kernels of ``fast.numba_pairs`` (two rows per
block) run; the ``lanes`` fixture runs the main comparisons once more with
them switched off, so that the 16-lane kernels are checked on every form
too (``tests/test_numba_pairs.py`` tests the pairs themselves).
"""
from __future__ import annotations

import functools
import re

import numpy as np
import pytest
from cases import (CASE_IDS, CASES, GRAD_NAMES, cotangents, count_calls, numba_threads,
                   scan_case)
from conftest import assert_close

import ssm_ref
from fast import numba_cpu, numba_pairs

#: Sizes of these tests' scans: N = 5 pads to 16 lanes.
case = functools.partial(scan_case, length=13, dstate=5)


@pytest.fixture(params=["pairs", "16-lanes"])
def lanes(request):
    """Run a test with the pair kernels where they apply, then with 16 lanes per row only."""
    if request.param == "pairs":
        yield request.param
    else:
        with numba_pairs.forced(False):
            yield request.param


# ---------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("u_dtype, A_dtype", [(np.float32, np.float64), (np.float64, np.float32)],
                         ids=["u32-A64", "u64-A32"])
def test_last_state_in_A_dtype(rng, complex_, u_dtype, A_dtype):
    """As the reference and the official package: the last state in A's dtype."""
    kw = case(rng, complex_=complex_, dtype=u_dtype)
    kw["A"] = kw["A"].astype(np.result_type(A_dtype, np.complex64) if complex_ else A_dtype)
    y, last = numba_cpu.selective_scan(**kw, return_last_state=True)
    _, last_ref = ssm_ref.selective_scan(**kw, return_last_state=True)
    assert y.dtype == u_dtype and last.dtype == last_ref.dtype == kw["A"].dtype
    # Numba computes in u's dtype: a float32 u (or A) leaves the state float32-precise
    assert_close(last, last_ref, kind="backend", dtype=kw["A"].dtype, precision=np.float32)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("form_B,form_C,complex_", CASES, ids=CASE_IDS)
def test_forward_matches_reference_all_forms(rng, lanes, form_B, form_C, complex_, dtype):
    kw = case(rng, form_B, form_C, complex_, dtype)
    y, last = numba_cpu.selective_scan(**kw, return_last_state=True)
    y_ref, last_ref = ssm_ref.selective_scan(**kw, return_last_state=True)
    assert y.dtype == y_ref.dtype == dtype and last.dtype == last_ref.dtype
    assert_close(y, y_ref, kind="backend", err_msg="y")
    assert_close(last, last_ref, kind="backend", err_msg="last state")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_forward_without_optional_arguments(rng, complex_, dtype):
    kw = case(rng, complex_=complex_, dtype=dtype, extras=False, dstate=20)
    assert_close(numba_cpu.selective_scan(**kw), ssm_ref.selective_scan(**kw), kind="backend")


@pytest.mark.parametrize("option", ["D", "z", "delta_bias", "h0"])
def test_forward_each_option_alone(rng, option):
    full = case(rng)
    kw = case(rng, extras=False)
    kw[option] = np.abs(full[option]) if option == "delta_bias" else full[option]  # steps >= 0
    assert_close(numba_cpu.selective_scan(**kw), ssm_ref.selective_scan(**kw), kind="backend")


def test_softplus_threshold_and_long_decay(rng):
    """Raw steps around softplus's linear threshold 20, and exp(delta A) underflowing."""
    kw = case(rng, extras=False, length=40)
    kw["delta"] = np.linspace(-30.0, 30.0, 40)[None, None, :] * np.ones((2, 4, 1))
    kw["delta"][:, :, 20] = 19.999
    kw["delta"][:, :, 21] = 20.001
    kw["A"] = -np.logspace(-3, 2, 20).reshape(4, 5)  # delta A down to -3000: Abar = 0
    for dtype in (np.float64, np.float32):
        kw32 = {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        y, last = numba_cpu.selective_scan(**kw32, delta_softplus=True, return_last_state=True)
        y_ref, last_ref = ssm_ref.selective_scan(**kw32, delta_softplus=True,
                                                 return_last_state=True)
        assert_close(y, y_ref, kind="backend")
        assert_close(last, last_ref, kind="backend")


def test_h0_continues_a_split_sequence(rng):
    kw = case(rng, "constant", "grouped", extras=False, length=20)
    y_all, h_all = numba_cpu.selective_scan(**kw, return_last_state=True)
    first = dict(kw, u=kw["u"][..., :11], delta=kw["delta"][..., :11],
                 C=kw["C"][..., :11])
    second = dict(kw, u=kw["u"][..., 11:], delta=kw["delta"][..., 11:],
                  C=kw["C"][..., 11:])
    y1, h1 = numba_cpu.selective_scan(**first, return_last_state=True)
    y2, h2 = numba_cpu.selective_scan(**second, h0=h1, return_last_state=True)
    assert_close(np.concatenate([y1, y2], axis=-1), y_all, kind="backend")
    assert_close(h2, h_all, kind="backend")


def test_float32_long_sequence_stays_within_backend_tolerance(rng):
    """float32 state accumulation over L = 2000 against the float64 reference."""
    kw = case(rng, dtype=np.float32, length=2000, dim=2, dstate=16)
    assert_close(numba_cpu.selective_scan(**kw), ssm_ref.selective_scan(**kw), kind="backend")


@pytest.mark.parametrize("in_dtype, u_dtype", [(np.float64, np.float64),
                                                (np.float64, np.float32),
                                                (np.float32, np.float64)])
def test_strided_views_give_the_contiguous_result_bit_for_bit(rng, in_dtype, u_dtype):
    """Channels-last tokens seen as (B, D, L) (the blocks' layout, copied by tiles) change nothing.

    The sizes span several 32 x 32 tiles with partial ones at both ends; the
    dtypes include a cast during the tiled copy (float64 views into a float32 scan).
    """
    batch, dim, length = 2, 40, 70
    def channels_last(dtype):  # values in (B, D, L), memory in (L, B, D)
        return np.moveaxis(rng.standard_normal((length, batch, dim)).astype(dtype), 0, -1)
    views = dict(u=channels_last(in_dtype), delta=np.abs(channels_last(in_dtype)) + 0.05,
                 z=channels_last(in_dtype))
    assert not views["u"].flags.c_contiguous and views["u"].size >= 4096
    kw = case(rng, batch=batch, dim=dim, length=length, dtype=u_dtype)
    kw.pop("u"), kw.pop("delta"), kw.pop("z")
    dense = {k: np.ascontiguousarray(v) for k, v in views.items()}
    y_view, last_view = numba_cpu.selective_scan(**views, **kw, return_last_state=True)
    y_dense, last_dense = numba_cpu.selective_scan(**dense, **kw, return_last_state=True)
    np.testing.assert_array_equal(y_view, y_dense)
    np.testing.assert_array_equal(last_view, last_dense)
    dout = np.moveaxis(rng.standard_normal((length, batch, dim)), 0, -1)
    g_view = numba_cpu.selective_scan_backward(dout, **views, **kw)
    g_dense = numba_cpu.selective_scan_backward(np.ascontiguousarray(dout), **dense, **kw)
    for k in GRAD_NAMES:
        if g_dense[k] is not None:
            np.testing.assert_array_equal(g_view[k], g_dense[k], err_msg=k)
    assert_close(y_view, ssm_ref.selective_scan(**views, **kw), kind="backend")


@pytest.mark.parametrize("dim", [6, 8], ids=["16-lanes", "pairs"])  # 8: two rows per block
def test_result_does_not_depend_on_thread_count(rng, dim):
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one thread only: nothing to compare")
    kw = case(rng, dim=dim)
    with numba_threads(1):
        y1 = numba_cpu.selective_scan(**kw)
        g1 = numba_cpu.selective_scan_backward(np.ones_like(y1), **kw)
    with numba_threads(2):
        y2 = numba_cpu.selective_scan(**kw)
        g2 = numba_cpu.selective_scan_backward(np.ones_like(y2), **kw)
    assert_close(y1, y2, kind="backend")
    for key in GRAD_NAMES:
        assert_close(g1[key], g2[key], kind="backend", err_msg=key)


# ---------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("form_B,form_C,complex_", CASES, ids=CASE_IDS)
def test_backward_matches_reference_every_gradient(rng, lanes, form_B, form_C, complex_,
                                                   dtype):
    kw = case(rng, form_B, form_C, complex_, dtype)
    dout = rng.standard_normal(kw["u"].shape).astype(dtype)
    dlast = rng.standard_normal(kw["h0"].shape)
    dlast = dlast + 1j * rng.standard_normal(dlast.shape) if complex_ else dlast.astype(dtype)
    g = numba_cpu.selective_scan_backward(dout, **kw, dlast_state=dlast)
    g_ref = ssm_ref.selective_scan_backward(dout, **kw, dlast_state=dlast)
    assert set(g) == set(GRAD_NAMES)
    for key in GRAD_NAMES:
        assert g[key].shape == g_ref[key].shape and g[key].dtype == g_ref[key].dtype, key
        assert_close(g[key], g_ref[key], kind="backend", err_msg=f"d{key}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("form_B,form_C", [("variable", "variable"), ("constant", "grouped"),
                                           ("grouped", "constant")])
@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "plain"])
def test_long_row_backward_in_time_blocks(rng, monkeypatch, form_B, form_C, dtype, softplus):
    """Rows longer than the records' block (here 16 steps, so 3 blocks of 16 and one of 7)
    go to _bwd_real_long: every gradient still equals the reference's."""
    kw = case(rng, form_B, form_C, False, dtype, length=55, softplus=softplus)
    length = kw["u"].shape[2]
    dtype_k = np.dtype(dtype)
    monkeypatch.setattr(numba_cpu, "_BWD_RECORD_BYTES", 16 * 2 * 16 * dtype_k.itemsize)
    assert numba_cpu._bwd_block(16, dtype_k) == 16 < length
    dout = rng.standard_normal(kw["u"].shape).astype(dtype)
    dlast = rng.standard_normal(kw["h0"].shape).astype(dtype)
    g = numba_cpu.selective_scan_backward(dout, **kw, dlast_state=dlast)
    g_ref = ssm_ref.selective_scan_backward(dout, **kw, dlast_state=dlast)
    for key in GRAD_NAMES:
        assert g[key].dtype == g_ref[key].dtype, key
        assert_close(g[key], g_ref[key], kind="backend", err_msg=f"d{key}")
    # the whole row at once (_bwd_real): the same updates, summed in another grouping
    monkeypatch.setattr(numba_cpu, "_BWD_RECORD_BYTES", 2 ** 20)
    g_row = numba_cpu.selective_scan_backward(dout, **kw, dlast_state=dlast)
    for key in GRAD_NAMES:
        assert_close(g[key], g_row[key], kind="exact", err_msg=f"d{key} against one block")


def _fake_cache_folder(root, caches):
    """A sysfs-like cache folder: ``index<i>/level``, ``type``, ``size`` per cache."""
    for i, (level, kind, size) in enumerate(caches):
        folder = root / f"index{i}"
        folder.mkdir(parents=True)
        for name, text in (("level", str(level)), ("type", kind), ("size", size)):
            (folder / name).write_text(text + "\n")
    return root


def test_level2_cache_size_from_sysfs(tmp_path):
    """The level-2 cache as Linux describes it; None where that cannot be read."""
    xeon = _fake_cache_folder(tmp_path / "xeon", [(1, "Data", "48K"), (1, "Instruction", "32K"),
                                                  (2, "Unified", "2048K"), (3, "Unified", "480M")])
    assert numba_cpu._level2_cache_bytes(xeon) == 2 * 1024 ** 2
    other = _fake_cache_folder(tmp_path / "other", [(3, "Unified", "32M"), (2, "Unified", "1M")])
    assert numba_cpu._level2_cache_bytes(other) == 1024 ** 2
    garbled = _fake_cache_folder(tmp_path / "garbled", [(2, "Unified", "big")])
    assert numba_cpu._level2_cache_bytes(garbled) is None
    assert numba_cpu._level2_cache_bytes(tmp_path / "no such folder") is None


def test_backward_time_blocks_fit_the_level2_cache(monkeypatch):
    """On AMD's Zen (LLVM's "znver") or without a known level-2 size the records' budget alone
    sets the block; elsewhere the block is the longest multiple of 16 steps whose working set
    (two 16-state records, and B, C, dB, dC of N states) fits 3/4 of the level-2 cache."""
    assert numba_cpu._default_cache_cap("znver4", 1024 ** 2) is None
    assert numba_cpu._default_cache_cap("sapphirerapids", None) is None
    cap = numba_cpu._default_cache_cap("rocketlake", 2 * 1024 ** 2)
    assert cap == 3 * 2 * 1024 ** 2 // 4
    monkeypatch.setattr(numba_cpu, "_BWD_CACHE_BYTES", cap)
    for npad, dtype in [(16, np.float32), (64, np.float32), (16, np.float64)]:
        steps = numba_cpu._bwd_block(npad, np.dtype(dtype))
        per_step = (2 * 16 + 4 * npad) * np.dtype(dtype).itemsize
        assert steps % 16 == 0 and steps * per_step <= cap < (steps + 16) * per_step
        assert steps < numba_cpu._BWD_RECORD_BYTES // (2 * npad * np.dtype(dtype).itemsize)
    monkeypatch.setattr(numba_cpu, "_BWD_CACHE_BYTES", None)
    assert (numba_cpu._bwd_block(16, np.dtype(np.float32))
            == numba_cpu._BWD_RECORD_BYTES // (2 * 16 * 4))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("form_B,form_C", [("variable", "variable"), ("constant", "grouped"),
                                           ("grouped", "constant")])
@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "plain"])
def test_long_row_forward_in_time_blocks(rng, monkeypatch, form_B, form_C, dtype, softplus):
    """Rows whose B and C outgrow the forward's block (here 16 steps, so 3 blocks of 16 and
    one of 7) go to _fwd_real_long: output and last state still equal the reference's."""
    kw = case(rng, form_B, form_C, False, dtype, length=55, softplus=softplus)
    length = kw["u"].shape[2]
    dtype_k = np.dtype(dtype)
    monkeypatch.setattr(numba_cpu, "_FWD_BC_BYTES", 16 * 2 * 16 * dtype_k.itemsize)
    assert numba_cpu._fwd_block(16, dtype_k) == 16 < length
    y, last = numba_cpu.selective_scan(**kw, return_last_state=True)
    y_ref, last_ref = ssm_ref.selective_scan(**kw, return_last_state=True)
    assert y.dtype == y_ref.dtype and last.dtype == last_ref.dtype
    assert_close(y, y_ref, kind="backend", err_msg="y")
    assert_close(last, last_ref, kind="backend", err_msg="last state")


def test_long_row_forward_screens_bad_input(rng, monkeypatch):
    """The blocked forward's screen sees a NaN in the last block: the reference's error."""
    kw = case(rng, "variable", "variable", False, np.float64, length=55)
    monkeypatch.setattr(numba_cpu, "_FWD_BC_BYTES", 16 * 2 * 16 * 8)
    kw["u"] = kw["u"].copy()
    kw["u"][0, 1, 50] = np.nan
    with pytest.raises(ValueError, match="u"):
        numba_cpu.selective_scan(**kw)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_backward_without_optional_arguments(rng, complex_):
    kw = case(rng, complex_=complex_, extras=False, dstate=20)
    dout = rng.standard_normal(kw["u"].shape)
    g = numba_cpu.selective_scan_backward(dout, **kw)
    g_ref = ssm_ref.selective_scan_backward(dout, **kw)
    for key in GRAD_NAMES:
        if g_ref[key] is None:
            assert g[key] is None, key
        else:
            assert_close(g[key], g_ref[key], kind="backend", err_msg=key)


def test_backward_of_last_state_only(rng):
    """dout = 0 and dlast_state = e_n: the gradient of one entry of the last state."""
    kw = case(rng, "grouped", "constant")
    dlast = np.zeros(kw["h0"].shape)
    dlast[1, 2, 3] = 1.0
    dout = np.zeros(kw["u"].shape)
    g = numba_cpu.selective_scan_backward(dout, **kw, dlast_state=dlast)
    g_ref = ssm_ref.selective_scan_backward(dout, **kw, dlast_state=dlast)
    assert np.abs(g["h0"]).sum() > 0  # the test can fail
    for key in GRAD_NAMES:
        assert_close(g[key], g_ref[key], kind="backend", err_msg=key)


def test_complex_a_with_real_b_and_c(rng):
    """Real B/C with complex A are read as complex with zero imaginary part; their
    gradients are real (the real part), as in the reference."""
    kw = case(rng, "constant", "variable", complex_=True)
    kw["B"], kw["C"] = kw["B"].real.copy(), kw["C"].real.copy()
    y, last = numba_cpu.selective_scan(**kw, return_last_state=True)
    y_ref, last_ref = ssm_ref.selective_scan(**kw, return_last_state=True)
    assert_close(y, y_ref, kind="backend")
    assert_close(last, last_ref, kind="backend")
    dout = rng.standard_normal(y.shape)
    g = numba_cpu.selective_scan_backward(dout, **kw)
    g_ref = ssm_ref.selective_scan_backward(dout, **kw)
    assert g["B"].dtype == g_ref["B"].dtype == np.float64
    for key in GRAD_NAMES:
        assert_close(g[key], g_ref[key], kind="backend", err_msg=key)


# ---------------------------------------------------------------------------
# the decoding step
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("grouped", [False, True], ids=["BN", "BGN"])
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "D-z-bias-softplus"])
def test_state_update_matches_reference(rng, dtype, complex_, grouped, extras):
    batch, dim, dstate = 2, 4, 5
    shape_bc = (batch, 2, dstate) if grouped else (batch, dstate)
    A = -np.exp(rng.standard_normal((dim, dstate)))
    Bm, Cm = rng.standard_normal(shape_bc), rng.standard_normal(shape_bc)
    state = rng.standard_normal((batch, dim, dstate))
    if complex_:
        A = A + 1j * rng.standard_normal(A.shape)
        Bm, Cm = Bm + 1j * rng.standard_normal(shape_bc), Cm + 1j * rng.standard_normal(shape_bc)
        state = state + 1j * rng.standard_normal(state.shape)
    else:
        A, Bm, Cm, state = (X.astype(dtype) for X in (A, Bm, Cm, state))
    kw = dict(state=state, x=rng.standard_normal((batch, dim)).astype(dtype),
              dt=(0.5 * rng.random((batch, dim)) + 0.05).astype(dtype), A=A, B=Bm, C=Cm)
    if extras:
        kw.update(D=rng.standard_normal(dim).astype(dtype),
                  z=rng.standard_normal((batch, dim)).astype(dtype),
                  dt_bias=rng.standard_normal(dim).astype(dtype), dt_softplus=True,
                  dt=rng.standard_normal((batch, dim)).astype(dtype))
    before = state.copy()
    y, new = numba_cpu.selective_state_step(**kw)
    y_ref, new_ref = ssm_ref.selective_state_step(**kw)
    np.testing.assert_array_equal(state, before)  # not modified in place
    assert y.dtype == y_ref.dtype and new.dtype == new_ref.dtype
    assert_close(y, y_ref, kind="backend")
    assert_close(new, new_ref, kind="backend")


def test_state_update_token_by_token_reproduces_numba_scan(rng):
    kw = case(rng, "variable", "grouped", dstate=20)
    y_scan, last = numba_cpu.selective_scan(**kw, return_last_state=True)
    state, ys = kw["h0"], []
    for t in range(kw["u"].shape[-1]):
        y_t, state = numba_cpu.selective_state_step(
            state, kw["u"][:, :, t], kw["delta"][:, :, t], kw["A"], kw["B"][..., t],
            kw["C"][..., t], kw["D"], kw["z"][:, :, t], kw["delta_bias"], True)
        ys.append(y_t)
    assert_close(np.stack(ys, axis=-1), y_scan, kind="backend")
    assert_close(state, last, kind="backend")


# ---------------------------------------------------------------------------
# bad input: the same exception, with the same message, as the reference
# ---------------------------------------------------------------------------

def _error(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except (ValueError, TypeError) as exc:
        return type(exc), str(exc)
    return None


def _nan_at_first(x):
    x = np.array(x, dtype=np.result_type(x, float))
    x.flat[0] = np.nan
    return x


SCAN_BAD = [
    ("u", np.zeros((2, 4))),
    ("delta", np.ones((2, 4, 8))),
    ("A", -np.ones((5, 5))),
    ("B", np.ones((2, 5, 8))),
    ("C", np.ones((4, 2))),
    ("B", np.ones((2, 3, 5, 13))),  # G = 3 does not divide D = 4
    ("C", np.ones((2, 4, 5, 13, 1))),
    ("D", np.ones(3)),
    ("z", np.ones((2, 4, 10))),
    ("delta_bias", np.ones((4, 1))),
    ("h0", np.ones((2, 4, 2))),
    ("B", np.ones((2, 5, 13)) * 1j),  # complex B with real A
    ("h0", np.ones((2, 4, 5)) * 1j),
    ("u", np.ones((2, 4, 13)) * 1j),
    ("A", np.ones((4, 5))),  # Re(A) > 0
    ("u", np.array([["a"]])),
    ("delta_softplus", "yes"),
    ("delta", -np.ones((2, 4, 13))),  # negative steps without softplus
    ("u", "nan"), ("delta", "nan"), ("z", "nan"), ("A", "nan"), ("B", "nan"),
    ("C", "nan"), ("D", "nan"), ("delta_bias", "nan"), ("h0", "nan"),
    ("u", "inf-last"), ("z", "inf-last"),
]


@pytest.mark.parametrize("arg,value", SCAN_BAD, ids=[f"{a}-{i}" for i, (a, _) in enumerate(SCAN_BAD)])
def test_scan_bad_input_same_error_as_reference(rng, arg, value):
    kw = case(rng)
    if arg == "delta" and not isinstance(value, str):
        kw["delta_softplus"] = False
    if isinstance(value, str) and value == "nan":
        value = _nan_at_first(kw[arg])
    elif isinstance(value, str) and value == "inf-last":
        value = np.array(kw[arg])
        value.flat[-1] = np.inf
    kw[arg] = value
    expected = _error(ssm_ref.selective_scan, **kw)
    assert expected is not None, "the reference accepted this input"
    assert _error(numba_cpu.selective_scan, **kw) == expected
    dout = np.ones((2, 4, 13))
    assert _error(numba_cpu.selective_scan_backward, dout, **kw) == \
        _error(ssm_ref.selective_scan_backward, dout, **kw)


def test_return_last_state_must_be_bool(rng):
    kw = case(rng)
    with pytest.raises(TypeError, match="return_last_state"):
        numba_cpu.selective_scan(**kw, return_last_state="yes")


@pytest.mark.parametrize("dout,dlast", [
    (np.ones((2, 4, 12)), None),
    (np.full((2, 4, 13), np.nan), None),
    (np.ones((2, 4, 13)) * 1j, None),
    (np.ones((2, 4, 13)), np.ones((2, 4, 4))),
    (np.ones((2, 4, 13)), np.ones((2, 4, 5)) * 1j),
    (np.ones((2, 4, 13)), np.full((2, 4, 5), np.inf)),
], ids=["dout-shape", "dout-nan", "dout-complex", "dlast-shape", "dlast-complex", "dlast-inf"])
def test_backward_bad_gradients_same_error_as_reference(rng, dout, dlast):
    kw = case(rng)
    expected = _error(ssm_ref.selective_scan_backward, dout, **kw, dlast_state=dlast)
    assert expected is not None
    assert _error(numba_cpu.selective_scan_backward, dout, **kw, dlast_state=dlast) == expected


UPDATE_BAD = [
    ("state", np.zeros((2, 4, 2))), ("x", np.zeros((2, 4, 1))), ("dt", np.ones((2, 3))),
    ("B", np.ones((2, 3, 5))), ("C", np.ones((2, 2))), ("B", np.ones((2, 5)) * 1j),
    ("z", np.ones((2, 5))), ("dt", -np.ones((2, 4))), ("A", np.ones((4, 5))),
    ("x", np.full((2, 4), np.inf)), ("D", np.ones(3)), ("dt_softplus", 1),
]


@pytest.mark.parametrize("arg,value", UPDATE_BAD,
                         ids=[f"{a}-{i}" for i, (a, _) in enumerate(UPDATE_BAD)])
def test_state_update_bad_input_same_error_as_reference(rng, arg, value):
    kw = dict(state=np.zeros((2, 4, 5)), x=np.ones((2, 4)), dt=np.ones((2, 4)),
              A=-np.ones((4, 5)), B=np.ones((2, 5)), C=np.ones((2, 5)))
    kw[arg] = value
    expected = _error(ssm_ref.selective_state_update, **kw)
    assert expected is not None
    assert _error(numba_cpu.selective_state_update, **kw) == expected


# ---------------------------------------------------------------------------
# mixed precision and float32 overflow: no silent wrong answer (issue 13)
# ---------------------------------------------------------------------------

def _mixed_precision_case(rng, case):
    """float32 ``u`` with arguments that float32 cannot hold, or an overflowing Δ·u."""
    batch, dim, length, dstate = 2, 3, 7, 5
    u = rng.standard_normal((batch, dim, length)).astype(np.float32)
    delta = 0.5 * rng.random((batch, dim, length)) + 0.05  # float64
    A = -np.exp(rng.standard_normal((dim, dstate)))  # float64
    B = rng.standard_normal((batch, dstate, length))
    C = rng.standard_normal((batch, dstate, length))
    h0 = rng.standard_normal((batch, dim, dstate))
    if case == "delta 1e300 where u = 0":
        u[:, :, 2:4] = 0.0
        delta[:, :, 2:4] = 1e300
    elif case == "A -1e300 with a zero step":
        A[1, 2] = -1e300
        delta[:, :, 3:] = 0.0
    else:  # "float32 delta u overflows, the answer fits": u = 1e30, delta = 1e10, B = 1e-20
        u[:] = 1e30
        delta = np.full(u.shape, 1e10, np.float32)
        A, B, C = A.astype(np.float32), np.full(B.shape, 1e-20, np.float32), C.astype(np.float32)
        h0 = h0.astype(np.float32)
    return dict(u=u, delta=delta, A=A, B=B, C=C, h0=h0)


MIXED = ["delta 1e300 where u = 0", "A -1e300 with a zero step",
         "float32 delta u overflows, the answer fits"]


@pytest.mark.parametrize("case", MIXED)
def test_mixed_precision_forward_matches_a_float64_loop(rng, case):
    from test_selective import oracle
    kw = _mixed_precision_case(rng, case)
    y, last = numba_cpu.selective_scan(**kw, return_last_state=True)
    y_loop, last_loop = oracle(**kw)  # scalar float64 loops
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(y_loop)), case
    assert y.dtype == np.float32 and last.dtype == kw["A"].dtype
    assert_close(y, y_loop.astype(np.float32), kind="backend", err_msg=case)
    assert_close(last, last_loop.astype(last.dtype), kind="backend", err_msg=case)
    y_ref, last_ref = ssm_ref.selective_scan(**kw, return_last_state=True)
    assert_close(y, y_ref, kind="backend", err_msg=case)
    assert_close(last, last_ref, kind="backend", err_msg=case)


@pytest.mark.parametrize("case", MIXED)
def test_mixed_precision_backward_matches_reference(rng, case):
    kw = _mixed_precision_case(rng, case)
    dout = rng.standard_normal(kw["u"].shape).astype(np.float32)
    grads = numba_cpu.selective_scan_backward(dout, **kw)
    want = ssm_ref.selective_scan_backward(dout, **kw)
    # Every gradient, also those that multiply Abar = exp(delta A) by delta = 1e300 (dA) or
    # by A = -1e300 (dA, ddelta): the kernels' exp underflows to 0 as np.exp does (an exp
    # that stopped at the smallest normal number, 2.2e-308, left an error near 1e-8 there)
    for name, g in grads.items():
        if g is not None:
            assert g.dtype == want[name].dtype, name
            assert np.array_equal(np.isfinite(g), np.isfinite(want[name])), (case, name)
            assert_close(g, want[name], kind="backend", err_msg=f"{case}: d{name}")


# ---------------------------------------------------------------------------
# the forward kept for its backward (selective_scan_for_backward)
# ---------------------------------------------------------------------------

def _saved_against_plain(kw, dout, dlast, grads_kind=None):
    """selective_scan_for_backward and selective_scan_backward_saved give what
    selective_scan and selective_scan_backward give on the same arguments, bit for bit
    (the gradients: to ``grads_kind``'s tolerance where given)."""
    y, last, saved = numba_cpu.selective_scan_for_backward(**kw, return_last_state=True)
    y_plain, last_plain = numba_cpu.selective_scan(**kw, return_last_state=True)
    for got, want in ((y, y_plain), (last, last_plain)):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert numba_cpu.selective_scan_for_backward(**kw)[1] is None  # no last state asked for
    g = numba_cpu.selective_scan_backward_saved(dout, saved, dlast)
    g_plain = numba_cpu.selective_scan_backward(dout, **kw, dlast_state=dlast)
    for key in GRAD_NAMES:
        if g_plain[key] is None:
            assert g[key] is None, key
            continue
        assert g[key].dtype == g_plain[key].dtype, key
        if grads_kind is None:
            assert np.array_equal(g[key], g_plain[key]), f"d{key}"
        else:
            assert_close(g[key], g_plain[key], kind=grads_kind, err_msg=f"d{key}")
    return saved


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("form_B,form_C,complex_", CASES, ids=CASE_IDS)
def test_saved_forward_gives_the_plain_results(rng, lanes, form_B, form_C, complex_, dtype):
    """Every form, with pairs and 16 lanes: the float64 pairs take one layout both ways, the
    float32 forward runs 16 lanes and its backward pairs, the 16-lane backward takes B and C
    in blocks of 16 states: the backward lays them out again where they differ."""
    kw = case(rng, form_B, form_C, complex_, dtype)
    _saved_against_plain(kw, *cotangents(rng, kw))


def test_saved_forward_of_tiles_and_time_blocks(rng, monkeypatch):
    kw = case(rng, "grouped", "grouped", False, np.float32, dim=32, groups=2)  # channel tiles
    saved = _saved_against_plain(kw, *cotangents(rng, kw))
    assert saved.k["tiled"]
    monkeypatch.setattr(numba_cpu, "_BWD_RECORD_BYTES", 16 * 2 * 16 * 8)  # blocks of 16 steps
    monkeypatch.setattr(numba_cpu, "_FWD_BC_BYTES", 16 * 2 * 16 * 8)
    kw = case(rng, "variable", "variable", False, np.float64, length=55)
    _saved_against_plain(kw, *cotangents(rng, kw, dlast=False))


#: rows longer than the backward's block, laid out as the forward's kernels take them:
#: channel tiles (float32, grouped B and C, groups of 16 channels), 16-lane rows in float32
#: (B constant: no tiles) and in float64 (N = 5 padded to 16)
_LONG_ROWS = {"tiles": dict(form_B="grouped", form_C="grouped", dtype=np.float32, dim=32,
                            dstate=16),
              "rows-f32": dict(form_B="constant", form_C="variable", dtype=np.float32, dim=3,
                               dstate=16),
              "rows-f64": dict(form_B="variable", form_C="grouped", dtype=np.float64, dim=4,
                               dstate=5)}


@pytest.mark.parametrize("layout", list(_LONG_ROWS))
def test_saved_forward_hands_its_chunk_states_to_the_backward(rng, monkeypatch, layout):
    """Rows longer than the backward's time block (16 steps here: 55 = 3 x 16 + 7): the
    forward keeps the state entering each block, as the official kernels' forward keeps
    its chunk states, and the backward starts its blocks from them instead of carrying
    the states through the row again (pass 1 of _bwd_real_long).  The states are the
    reference's (its last state after the first 16 k steps), the gradients the plain
    backward's (bit for bit from rows; from tiles, whose update's FMA rounds the other
    way, to rounding), and the backward reads them: changed states change them."""
    itemsize = np.dtype(_LONG_ROWS[layout]["dtype"]).itemsize
    monkeypatch.setattr(numba_cpu, "_BWD_RECORD_BYTES", 16 * 2 * 16 * itemsize)
    monkeypatch.setattr(numba_cpu, "_FWD_BC_BYTES", 16 * 2 * 16 * itemsize)  # rows: the same
    kw = scan_case(rng, length=55, **_LONG_ROWS[layout])
    dout, dlast = cotangents(rng, kw)
    saved = _saved_against_plain(kw, dout, dlast, "exact" if layout == "tiles" else None)
    assert saved.k["tiled"] == (layout == "tiles")
    batch, dim, dstate = kw["h0"].shape
    starts = saved.starts.reshape(batch, dim, 4, 16)  # (B D, blocks, N padded to 16)
    assert starts.dtype == saved.real and not starts[..., dstate:].any()
    for k in range(4):
        t = 16 * k
        want = kw["h0"] if k == 0 else ssm_ref.selective_scan(
            **{name: (X[..., :t] if name in ("u", "delta", "z")
                      or (name in "BC" and X.ndim > 2) else X) for name, X in kw.items()},
            return_last_state=True)[1]
        assert_close(starts[:, :, k, :dstate], want.astype(saved.real), kind="backend",
                     err_msg=f"state entering block {k}")
    g = numba_cpu.selective_scan_backward_saved(dout, saved, dlast)
    saved.starts[:, 2] *= 2  # the third block's starting states
    g_changed = numba_cpu.selective_scan_backward_saved(dout, saved, dlast)
    # d delta_t depends on h_{t-1} (d u_t does not: the states are linear in u)
    assert not np.array_equal(g_changed["delta"][:, :, 32:48], g["delta"][:, :, 32:48])
    assert np.array_equal(g_changed["delta"][:, :, 48:], g["delta"][:, :, 48:])  # later blocks
    # states kept for other blocks than the backward's (a bug): an error, not a recompute
    monkeypatch.setattr(numba_cpu, "_BWD_RECORD_BYTES", 32 * 2 * 16 * itemsize)
    rows = batch * dim
    message = f"chunk states of shape {(rows, 4, 16)}, the backward's blocks need {(rows, 2, 16)}"
    with pytest.raises(RuntimeError, match=re.escape(message)):
        numba_cpu.selective_scan_backward_saved(dout, saved, dlast)


@pytest.mark.parametrize("change", ["short rows", "pairs", "complex", "other row blocks"])
def test_saved_forward_keeps_no_chunk_states_where_it_cannot(rng, monkeypatch, change):
    """Rows within one backward block run whole (no states to keep); the pairs' forward
    (N <= 8) runs whole rows only, here longer than the backward's block, whose rows then
    carry their states themselves (pass 1); complex A has no blocked backward; a row
    forward in longer blocks than the backward's would sum its outputs in another grouping
    if it ran in the backward's.  The results are the plain functions', bit for bit."""
    monkeypatch.setattr(numba_cpu, "_BWD_RECORD_BYTES", 16 * 2 * 16 * 8)  # 16 steps
    monkeypatch.setattr(numba_cpu, "_FWD_BC_BYTES", 16 * 2 * 16 * 8)
    kw = scan_case(rng, "grouped", "grouped", change == "complex",
                   length=16 if change == "short rows" else 55, dstate=5)
    if change == "pairs":
        monkeypatch.setattr(numba_cpu, "_FWD_BC_BYTES", 2 ** 20)  # the pairs' forward: one block
    if change == "other row blocks":
        monkeypatch.setattr(numba_cpu, "_FWD_BC_BYTES", 32 * 2 * 16 * 8)
    with numba_pairs.forced(change == "pairs"):
        _, _, saved = numba_cpu.selective_scan_for_backward(**kw)
    assert saved.k["paired"] == (change == "pairs")
    assert saved.starts is None
    _saved_against_plain(kw, *cotangents(rng, kw))


@pytest.mark.parametrize("case_name", MIXED)
def test_saved_forward_keeps_its_float64_fallback(rng, case_name):
    """float32 input that float32 cannot hold: the forward settles on float64, and the
    backward starts there (the plain backward first tries float32, then falls back)."""
    kw = _mixed_precision_case(rng, case_name)
    saved = _saved_against_plain(kw, rng.standard_normal(kw["u"].shape).astype(np.float32), None)
    assert saved.real == np.float64


def test_saved_backward_skips_the_checks_and_layouts(rng, monkeypatch):
    """The backward of a kept forward checks only dout, and lays out B and C again only when
    its kernel takes another layout than the forward's."""
    kw = case(rng, "grouped", "grouped", False, np.float64)  # float64 pairs: one layout
    dout, dlast = cotangents(rng, kw)
    _, _, saved = numba_cpu.selective_scan_for_backward(**kw)
    calls = count_calls(monkeypatch, numba_cpu, ["_check_structure", "_layout_bc",
                                                 "_contiguous"])
    numba_cpu.selective_scan_backward_saved(dout, saved, dlast)
    assert calls == {"_check_structure": 0, "_layout_bc": 0, "_contiguous": 1}  # dout's
    with numba_pairs.forced(False):  # 16 lanes: the backward's B and C in blocks of 16
        _, _, saved = numba_cpu.selective_scan_for_backward(**kw)
        calls.update(dict.fromkeys(calls, 0))
        numba_cpu.selective_scan_backward_saved(dout, saved, dlast)
    assert calls == {"_check_structure": 0, "_layout_bc": 2, "_contiguous": 1}
    numba_cpu.selective_scan_backward(dout, **kw, dlast_state=dlast)  # the plain one does all
    assert calls["_check_structure"] == 1 and calls["_contiguous"] == 5


@pytest.mark.parametrize("dout,dlast", [
    (np.ones((2, 4, 12)), None),
    (np.full((2, 4, 13), np.nan), None),
    (np.ones((2, 4, 13)) * 1j, None),
    (np.ones((2, 4, 13)), np.ones((2, 4, 4))),
    (np.ones((2, 4, 13)), np.full((2, 4, 5), np.inf)),
], ids=["dout-shape", "dout-nan", "dout-complex", "dlast-shape", "dlast-inf"])
def test_saved_backward_bad_gradients_same_error_as_reference(rng, dout, dlast):
    kw = case(rng)
    expected = _error(ssm_ref.selective_scan_backward, dout, **kw, dlast_state=dlast)
    assert expected is not None
    _, _, saved = numba_cpu.selective_scan_for_backward(**kw)
    assert _error(numba_cpu.selective_scan_backward_saved, dout, saved, dlast) == expected


def test_saved_backward_refuses_anything_but_a_saved_scan(rng):
    kw = case(rng)
    with pytest.raises(TypeError, match="Parameter saved is a dict, but a SavedScan"):
        numba_cpu.selective_scan_backward_saved(np.ones(kw["u"].shape), kw)
