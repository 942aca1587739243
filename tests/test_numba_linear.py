"""The affine layer with Numba (``fast.numba_linear``) against ``ssm_ref.nn.linear``.

Forward and backward with the shared ``"backend"`` tolerance, the reference's
dtype rules (a checked call in float64, an unchecked float32 call in float32,
results in the arguments' dtypes), token counts that split into uneven blocks,
channels-first and other strided inputs, no tokens, the reference's errors, the
BLAS setting restored after a call, and the mixers running it with Numba's scan
functions.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from cases import count_calls, numba_against_reference, small_model
from conftest import assert_close
from threadpoolctl import threadpool_info

from fast import numba_linear
from ssm_ref import nn

CASES = [  # (leading shape, in, out, bias, dtype, check)
    ((5,), 3, 4, True, np.float64, True),
    ((2, 3), 6, 2, False, np.float32, False),  # float32 arithmetic
    ((2, 3), 6, 2, True, np.float32, True),  # checked: float64 arithmetic, float32 results
    ((3, 1025), 5, 7, True, np.float64, False),  # 3075 tokens: uneven blocks of ~512
    ((64, 16, 16), 24, 96, True, np.float64, False),  # VMamba 32x32's in_proj
    ((0, 3), 3, 2, True, np.float64, True),  # no tokens
]


@pytest.mark.parametrize("lead, n_in, n_out, bias, dtype, check", CASES)
def test_matches_the_reference(rng, lead, n_in, n_out, bias, dtype, check):
    x = rng.standard_normal(lead + (n_in,)).astype(dtype)
    W = rng.standard_normal((n_out, n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype) if bias else None
    want = nn.linear(x, W, b, check=check)
    got = numba_linear.linear(x, W, b, check=check)
    precision = np.float32 if dtype == np.float32 and not check else np.float64
    assert_close(got, want, kind="backend", dtype=want.dtype, precision=precision)
    dy = rng.standard_normal(want.shape).astype(dtype)
    for name, g, r in zip(("dx", "dW", "db"), numba_linear.linear_backward(dy, x, W, b,
                                                                          check=check),
                          nn.linear_backward(dy, x, W, b, check=check)):
        if r is None:
            assert g is None
        else:
            assert_close(g, r, kind="backend", dtype=r.dtype, precision=precision,
                         err_msg=name)


LAYOUTS = {  # (x's layout, dy's layout) -> the kernel that must run (None: NumPy's code)
    ("C", "C"): "_linear_bwd",
    ("channels first", "C"): "_linear_bwd_x_cf",  # Vim's out_proj: x = y.transpose(0, 2, 1)
    ("C", "channels first"): "_linear_bwd_dy_cf",  # Vim's in_proj: dy = dxz.transpose(0, 2, 1)
    ("channels first", "channels first"): None,
    ("C", "a channel slice"): None,
    ("every other token", "C"): None,
}
KERNELS = ["_linear_fwd", "_linear_fwd_cf", "_linear_bwd", "_linear_bwd_x_cf",
           "_linear_bwd_dy_cf"]


def laid_out(a, layout):
    """The (B, L, C) array ``a`` in ``layout``: the same values, other strides."""
    if layout == "channels first":  # the transpose of a C-contiguous (B, C, L) array
        return np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1)
    if layout == "a channel slice":
        return np.concatenate([a, a], axis=-1)[..., :a.shape[-1]]
    if layout == "every other token":
        return np.repeat(a, 2, axis=1)[:, ::2]
    return a


@pytest.mark.parametrize("layouts", LAYOUTS, ids=[" & ".join(k) for k in LAYOUTS])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_strided_tokens_and_gradients(rng, monkeypatch, layouts, dtype):
    """Tokens and gradients laid out as the mixers hand them over: channels-first views
    read in place by their kernels (and ``dx`` for a channels-first ``x`` written channels
    first), any other view by the reference's NumPy code; the same results."""
    calls = count_calls(monkeypatch, numba_linear, KERNELS)
    B, L, n_in, n_out = 3, 17, 8, 5
    x = laid_out(rng.standard_normal((B, L, n_in)).astype(dtype), layouts[0])
    dy = laid_out(rng.standard_normal((B, L, n_out)).astype(dtype), layouts[1])
    W, b = (rng.standard_normal(s).astype(dtype) for s in ((n_out, n_in), n_out))
    precision = np.float32 if dtype == np.float32 else np.float64
    assert_close(numba_linear.linear(x, W, b, check=False), nn.linear(x, W, b, check=False),
                 kind="backend", dtype=dtype, precision=precision)
    got = numba_linear.linear_backward(dy, x, W, b, check=False)
    for name, g, r in zip(("dx", "dW", "db"), got, nn.linear_backward(dy, x, W, b,
                                                                      check=False)):
        assert_close(g, r, kind="backend", dtype=dtype, precision=precision, err_msg=name)
    forward = {"C": "_linear_fwd", "channels first": "_linear_fwd_cf"}.get(layouts[0])
    want = {k: int(k in (forward, LAYOUTS[layouts])) for k in KERNELS}
    assert calls == want
    if LAYOUTS[layouts] == "_linear_bwd_x_cf":  # dx laid out as x
        assert got[0].transpose(0, 2, 1).flags.c_contiguous


@pytest.mark.parametrize("call", [
    lambda f: f(np.ones((2, 3)), np.ones((4, 2))),  # x's last axis is not W's in
    lambda f: f(np.ones((2, 3)), np.ones(3)),  # W not 2-D
    lambda f: f(np.ones((2, 3)), np.ones((4, 3)), np.ones(3)),  # b not (out,)
    lambda f: f(np.full((2, 3), np.nan), np.ones((4, 3))),  # not finite
])
def test_bad_input_raises_the_references_error(call):
    with pytest.raises(ValueError) as want:
        call(nn.linear)
    with pytest.raises(ValueError, match=re.escape(str(want.value))):
        call(numba_linear.linear)


def test_the_blas_setting_is_restored():
    """The kernels run with one BLAS thread per call; what the caller had is set again."""
    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    before = blas_threads()
    numba_linear.linear(np.ones((600, 4)), np.ones((3, 4)))
    numba_linear.linear_backward(np.ones((600, 3)), np.ones((600, 4)), np.ones((3, 4)))
    assert blas_threads() == before


@pytest.mark.parametrize("name", ["vim", "vmamba", "plainmamba", "mamba-block"])
def test_the_mixers_run_it_with_numba(rng, name, monkeypatch):
    """In- and out-projections (and PlainMamba's x_proj, dt_proj) through the Numba layer,
    the model's output and gradients as the reference's."""
    import ssm_ref
    build = ((lambda: ssm_ref.MambaBlock(d_model=8, d_state=4, seed=0))
             if name == "mamba-block" else small_model(name))
    x = rng.standard_normal((3, 9, 8) if name == "mamba-block" else (3, 8, 8, 1))
    forward, both = numba_against_reference(monkeypatch, build, numba_linear, KERNELS, x, rng)
    assert forward["_linear_fwd"] >= 1  # in_proj, and out_proj but in Vim and Mamba:
    if name in ("vim", "mamba-block"):  # out_proj reads the scan's output channels first,
        # and in_proj's gradient comes back channels first
        assert forward["_linear_fwd_cf"] == 1
        assert both["_linear_bwd_x_cf"] == both["_linear_bwd_dy_cf"] == 1
    else:
        assert both["_linear_bwd"] >= 1
