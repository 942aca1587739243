"""Parity with the official package beyond the decoding step (which has test_state_update.py):
complex B/C in the official interleaved real layout, and bfloat16 inputs.

* **Interleaved layout.**  The official ``selective_scan_ref`` stores a variable complex B or C
  as a real array (B, [G,] N, 2L) and reads it with ``rearrange(B, "... (L two) -> ... L two",
  two=2)`` then ``torch.view_as_complex``: ``B[..., 2t] + 1j * B[..., 2t+1]``.  Every backend of
  the scan accepts it and returns its gradient in the same layout, tested against the complex
  form (``cuda`` has real A only and refuses complex A by name).
* **bfloat16** (``ml_dtypes.bfloat16``).  Every backend computes it in float32 (the reference in
  float64) and returns bfloat16: compared with the float32 computation rounded to bfloat16, at
  the ``"bfloat16"`` tolerance of the shared table.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from cases import GRAD_NAMES, scan_case
from conftest import SIM_BACKENDS, assert_close

import fast
import ssm_ref
from ssm_ref.scan_args import deinterleave

BF16 = np.dtype(ml_dtypes.bfloat16)


def to_interleaved(X):
    """Complex (..., L) -> the official real layout (..., 2L): Re at 2t, Im at 2t + 1."""
    return np.stack([X.real, X.imag], axis=-1).reshape(X.shape[:-1] + (2 * X.shape[-1],))


# ---------------------------------------------------------------------------
# the interleaved layout
# ---------------------------------------------------------------------------

def test_deinterleave_reads_pairs_as_the_official_reference():
    X = np.arange(8.0).reshape(1, 1, 8)  # (B, N, 2L), L = 4
    np.testing.assert_array_equal(deinterleave(X), [[[0 + 1j, 2 + 3j, 4 + 5j, 6 + 7j]]])
    assert deinterleave(X.astype(np.float32)).dtype == np.complex64
    np.testing.assert_array_equal(to_interleaved(deinterleave(X)), X)


@pytest.mark.parametrize("form_B,form_C", [("variable", "variable"), ("grouped", "constant"),
                                           ("constant", "grouped"), ("grouped", "variable")])
@pytest.mark.parametrize("backend_name", ["ref", "numba"])
def test_interleaved_B_C_equal_the_complex_form(rng, form_B, form_C, backend_name):
    kw = scan_case(rng, form_B, form_C, complex_=True)
    y, last = fast.selective_scan(**kw, return_last_state=True, backend=backend_name)
    flat = dict(kw)
    for name in ("B", "C"):
        if kw[name].ndim >= 3:  # variable or grouped: the official layout
            flat[name] = to_interleaved(kw[name])
            assert flat[name].dtype == np.float64 and flat[name].shape[-1] == 2 * 9
    y_i, last_i = fast.selective_scan(**flat, return_last_state=True, backend=backend_name)
    assert_close(y_i, y, kind="exact")
    assert_close(last_i, last, kind="exact")
    assert last_i.dtype == np.complex128  # A's dtype, as the official reference

    dout = rng.standard_normal(y.shape)
    dlast = rng.standard_normal(last.shape) + 1j * rng.standard_normal(last.shape)
    g = fast.selective_scan_backward(dout, **kw, dlast_state=dlast, backend=backend_name)
    g_i = fast.selective_scan_backward(dout, **flat, dlast_state=dlast, backend=backend_name)
    for name in GRAD_NAMES:
        if g[name] is None:
            assert g_i[name] is None
            continue
        want = to_interleaved(g[name]) if flat[name] is not kw[name] else g[name]
        assert g_i[name].shape == np.shape(flat[name]), name
        assert g_i[name].dtype == np.asarray(flat[name]).dtype, name
        assert_close(g_i[name], want, kind="exact", err_msg=name)


def test_interleaved_gradient_is_dL_dRe_and_dL_dIm(rng):
    """The interleaved gradient is the real gradient of the real array (finite differences)."""
    kw = scan_case(rng, "variable", "variable", complex_=True, batch=1, dim=2, length=4,
                   dstate=2, extras=False)
    kw["B"] = to_interleaved(kw["B"])
    dout = rng.standard_normal((1, 2, 4))
    g = ssm_ref.selective_scan_backward(dout, **kw)["B"]
    eps = 1e-6
    for idx in [(0, 0, 0), (0, 1, 3), (0, 0, 5), (0, 1, 7)]:  # even: Re, odd: Im
        plus, minus = kw["B"].copy(), kw["B"].copy()
        plus[idx] += eps
        minus[idx] -= eps
        fd = (np.sum(dout * ssm_ref.selective_scan(**dict(kw, B=plus)))
              - np.sum(dout * ssm_ref.selective_scan(**dict(kw, B=minus)))) / (2 * eps)
        assert abs(g[idx] - fd) < 1e-6 * max(1.0, abs(fd)), (idx, g[idx], fd)


def test_interleaved_layout_with_real_A_is_a_clear_shape_error(rng):
    kw = scan_case(rng, "variable", "variable", extras=False)
    kw["B"] = np.concatenate([kw["B"], kw["B"]], axis=-1)  # (B, N, 2L) with real A
    for backend_name in ("ref", "numba"):
        with pytest.raises(ValueError, match=r"Parameter B has shape .*interleaved layout.*"
                                             r"only with a complex A"):
            fast.selective_scan(**kw, backend=backend_name)


# ---------------------------------------------------------------------------
# bfloat16
# ---------------------------------------------------------------------------

def _bf16(kw):
    return {k: (v.astype(BF16) if isinstance(v, np.ndarray) and v.dtype == np.float64 else v)
            for k, v in kw.items()}


def _f32(kw):
    return {k: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == BF16 else v)
            for k, v in kw.items()}


@pytest.mark.parametrize("backend", SIM_BACKENDS, indirect=True)  # cuda: simulator
@pytest.mark.parametrize("form_B,form_C", [("variable", "variable"), ("constant", "grouped")])
def test_bfloat16_scan_and_backward_are_float32_rounded(backend, rng, form_B, form_C):
    kw = _bf16(scan_case(rng, form_B, form_C))
    y, last = fast.selective_scan(**kw, return_last_state=True, backend=backend)
    y32, last32 = fast.selective_scan(**_f32(kw), return_last_state=True, backend="ref")
    assert y.dtype == BF16 and last.dtype == BF16  # u's and A's dtype
    assert_close(y, y32.astype(BF16), kind="backend")
    assert_close(last, last32.astype(BF16), kind="backend")

    dout = rng.standard_normal(y.shape).astype(BF16)
    g = fast.selective_scan_backward(dout, **kw, backend=backend)
    g32 = fast.selective_scan_backward(dout.astype(np.float32), **_f32(kw), backend="ref")
    for name in GRAD_NAMES:
        assert g[name].dtype == BF16, name
        assert_close(g[name], g32[name].astype(BF16), kind="backend", err_msg=name)


@pytest.mark.parametrize("backend", SIM_BACKENDS, indirect=True)  # cuda: simulator
def test_bfloat16_state_update_is_float32_rounded(backend, rng):
    kw = dict(state=rng.standard_normal((2, 4, 2, 3)), x=rng.standard_normal((2, 4, 2)),
              dt=rng.standard_normal((2, 4, 2)), A=-np.exp(rng.standard_normal((4, 2, 3))),
              B=rng.standard_normal((2, 2, 3)), C=rng.standard_normal((2, 2, 3)),
              D=rng.standard_normal((4, 2)), z=rng.standard_normal((2, 4, 2)),
              dt_bias=rng.standard_normal((4, 2)), dt_softplus=True)
    kw = _bf16(kw)
    kw32 = _f32(kw)
    out = fast.selective_state_update(**kw, backend=backend)
    out32 = fast.selective_state_update(**kw32, backend="ref")
    assert out.dtype == BF16 and kw["state"].dtype == BF16
    assert_close(out, out32.astype(BF16), kind="backend")
    assert_close(kw["state"], kw32["state"].astype(BF16), kind="backend")


def test_bfloat16_strided_input_of_the_numba_scan(rng):
    """A strided bfloat16 u (channels-last tokens seen as (B, D, L)) of >= 4096 entries."""
    tokens = rng.standard_normal((2, 512, 8)).astype(BF16)  # (B, L, D)
    u = tokens.transpose(0, 2, 1)  # (B, D, L), not contiguous
    kw = dict(u=u, delta=np.full((2, 8, 512), 0.1, BF16), A=-np.ones((8, 4)),
              B=rng.standard_normal((2, 4, 512)), C=rng.standard_normal((2, 4, 512)))
    y = fast.selective_scan(**kw, backend="numba")
    y32 = fast.selective_scan(**_f32(kw), backend="ref")
    assert y.dtype == BF16
    assert_close(y, y32.astype(BF16), kind="backend")
