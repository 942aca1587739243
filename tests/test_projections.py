"""SS2D's per-direction projections (and the Mamba inner path's x_proj and dt_proj): the
reference twins and their Numba versions.

``ssm_ref.vision.vmamba.direction_projections`` (``x_dbl = w_x @ x``, ``delta =
w_dt @ x_dbl[:, :R]``) and its backward against ``np.einsum`` and central
differences; ``fast.numba_projections`` against the twins with the shared
``"backend"`` tolerance, float64 and float32, for the views the models hand over
(direction k's channels of the grouped scan's arrays, transposed sequences,
other views that must be copied, and an output that must be written in place).
Its kernels run only where they pay (two threads, long enough sequences); the
fixture ``kernels`` makes them run on these tests' small sizes, and one test
checks the rule itself.
"""
from __future__ import annotations

import numpy as np
import pytest
from cases import count_calls, numba_against_reference, small_model
from conftest import assert_close, numerical_gradient

import ssm_ref as sr
from fast import numba_projections
from ssm_ref.vision.vmamba import direction_projections, direction_projections_backward

DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
B, K, D, L, N, R = 3, 4, 5, 7, 2, 3  # batch, directions, channels, length, state, rank
M = R + 2 * N


@pytest.fixture
def kernels(monkeypatch):
    """The compiled kernels for every size and thread count (the tests' sizes are small)."""
    monkeypatch.setattr(numba_projections, "_kernels_pay", lambda x: True)


def weights(rng, dtype=np.float64):
    return (rng.standard_normal((M, D)).astype(dtype),  # w_x
            rng.standard_normal((D, R)).astype(dtype))  # w_dt


#: direction 1's (B, D, L) sequences, cut in the ways the models cut them
VIEWS = {"channels of the grouped scan": lambda a: a[:, D:2 * D],  # SS2D: u[:, k·D:(k+1)·D]
         "contiguous": lambda a: np.ascontiguousarray(a[:, D:2 * D]),
         "transposed tokens": lambda a: np.ascontiguousarray(  # a sequence (B, L, c).T
             a[:, D:2 * D].transpose(0, 2, 1)).transpose(0, 2, 1),
         "every other step": lambda a: np.ascontiguousarray(
             np.repeat(a[:, D:2 * D], 2, axis=2))[:, :, ::2]}


def test_twins_match_einsum(rng):
    """The forward is the two products per batch element (an einsum oracle), ``out`` given or
    not."""
    x = rng.standard_normal((B, D, L))
    w_x, w_dt = weights(rng)
    x_dbl, delta = direction_projections(x, w_x, w_dt, R)
    want = np.einsum("md,bdl->bml", w_x, x)
    assert_close(x_dbl, want, kind="fd")
    assert_close(delta, np.einsum("dr,brl->bdl", w_dt, want[:, :R]), kind="fd")
    out = np.zeros((B, K * D, L))
    _, delta_out = direction_projections(x, w_x, w_dt, R, out=out[:, D:2 * D])
    assert np.shares_memory(delta_out, out)
    assert_close(out[:, D:2 * D], delta, kind="fd")
    assert not out[:, :D].any() and not out[:, 2 * D:].any()


def test_twin_backward_matches_finite_differences(rng):
    """dw_x, dw_dt and the gradient added into dx against central differences of
    ``<g_delta, delta> + <g_B, B> + <g_C, C>``, B and C being x_dbl's rows after the steps'."""
    x = rng.standard_normal((B, D, L))
    w_x, w_dt = weights(rng)
    g_delta, g_B, g_C = (rng.standard_normal(s) for s in ((B, D, L), (B, N, L), (B, N, L)))

    def loss():
        x_dbl, delta = direction_projections(x, w_x, w_dt, R)
        return (np.sum(g_delta * delta) + np.sum(g_B * x_dbl[:, R:R + N])
                + np.sum(g_C * x_dbl[:, R + N:]))

    x_dbl, _ = direction_projections(x, w_x, w_dt, R)
    already = rng.standard_normal((B, D, L))  # what reached x another way: kept, added to
    dx = already.copy()
    dw_x, dw_dt = direction_projections_backward(g_delta, g_B, g_C, x, x_dbl[:, :R], w_x,
                                                 w_dt, dx)
    for name, analytic, arr in (("w_x", dw_x, w_x), ("w_dt", dw_dt, w_dt),
                                ("x", dx - already, x)):
        assert_close(analytic, numerical_gradient(lambda _: loss(), arr), kind="fd",
                     err_msg=name)


@DTYPES
@pytest.mark.parametrize("view", VIEWS)
def test_numba_projections_match_twins(rng, dtype, view, kernels):
    """Forward and backward against the twins; ``out`` and ``dx`` slices written in place,
    other layouts copied in and (for ``dx``) back."""
    cut = VIEWS[view]
    x = cut(rng.standard_normal((B, K * D, L)).astype(dtype))
    w_x, w_dt = weights(rng, dtype)
    want = direction_projections(x.astype(np.float64), w_x.astype(np.float64),
                                 w_dt.astype(np.float64), R)
    out = np.zeros((B, K * D, L), dtype)  # the grouped scan's delta
    delta_out = cut(out)  # direction 1's part (a view of out or, cut otherwise, its own array)
    for given in (None, delta_out):
        x_dbl, delta = numba_projections.direction_projections(x, w_x, w_dt, R, out=given)
        assert_close(x_dbl, want[0], kind="backend", dtype=dtype, err_msg="x_dbl")
        assert_close(delta, want[1], kind="backend", dtype=dtype, err_msg="delta")
    assert delta is delta_out
    if np.shares_memory(delta_out, out):
        assert_close(out[:, D:2 * D], want[1], kind="backend", dtype=dtype, err_msg="in out")
        assert not out[:, :D].any() and not out[:, 2 * D:].any()  # the other directions'

    grads = rng.standard_normal((B, K * D, L)).astype(dtype)
    dBC = rng.standard_normal((B, 2, K, N, L)).astype(dtype)  # the scan's dB, dC: (B, K, N, L)
    dx_given = cut(rng.standard_normal((B, K * D, L)).astype(dtype))
    args = (cut(grads), dBC[:, 0, 1], dBC[:, 1, 1], x, x_dbl[:, :R], w_x, w_dt)
    dx_want = dx_given.astype(np.float64)
    dw_want = direction_projections_backward(*(a.astype(np.float64) for a in args), dx_want)
    dx = dx_given.copy() if view == "contiguous" else dx_given
    dw = numba_projections.direction_projections_backward(*args, dx)
    assert_close(dx, dx_want, kind="backend", dtype=dtype, err_msg="dx")
    for name, got, ref in zip(("dw_x", "dw_dt"), dw, dw_want):
        assert_close(got, ref, kind="backend", dtype=dtype, err_msg=name)


@pytest.mark.parametrize("name", ["vmamba", "localmamba", "efficientvmamba", "multihead"])
def test_ss2d_models_use_the_numba_projections(rng, name, monkeypatch, kernels):
    """The SS2D variants run the compiled projections with Numba's scan functions, once per
    direction each way, and match the reference's output and gradients."""
    build = ((lambda: sr.vision.MultiHeadSS2D(d_model=8, d_state=4, seed=0))
             if name == "multihead" else small_model(name))
    x = rng.standard_normal((3, 8, 8, 8 if name == "multihead" else 1))
    forward, both = numba_against_reference(monkeypatch, build, numba_projections,
                                            ["_projections_fwd", "_projections_bwd"], x, rng)
    assert forward["_projections_fwd"] > 0 and forward["_projections_fwd"] % 2 == 0
    assert both["_projections_bwd"] == both["_projections_fwd"]


@pytest.mark.parametrize("name", ["vim", "mamba-block"])
def test_mamba_inner_path_uses_the_numba_projections(rng, name, monkeypatch, kernels):
    """The fused inner path (Vim's two directions, the Mamba block's one) runs x_proj and
    dt_proj through the compiled projections with Numba's scan functions."""
    build = ((lambda: sr.MambaBlock(d_model=8, d_state=4, seed=0)) if name == "mamba-block"
             else small_model(name))
    x = rng.standard_normal((3, 9, 8) if name == "mamba-block" else (3, 8, 8, 1))
    forward, both = numba_against_reference(monkeypatch, build, numba_projections,
                                            ["_projections_fwd", "_projections_bwd"], x, rng)
    assert forward["_projections_fwd"] == (1 if name == "mamba-block" else 2)
    assert both["_projections_bwd"] == both["_projections_fwd"]


@pytest.mark.parametrize("length", [numba_projections.MIN_LENGTH - 1,
                                    numba_projections.MIN_LENGTH])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_run_where_they_pay(rng, monkeypatch, length, threads):
    """Two threads or more and at least ``MIN_LENGTH`` steps: the kernels; otherwise the
    twins' NumPy products, with the same results either way."""
    import numba
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"Numba has {numba.config.NUMBA_NUM_THREADS} thread(s) on this machine")
    calls = count_calls(monkeypatch, numba_projections, ["_projections_fwd", "_projections_bwd"])
    x = rng.standard_normal((B, D, length))
    w_x, w_dt = weights(rng)
    dd, dB, dC = (rng.standard_normal(s) for s in ((B, D, length), (B, N, length),
                                                   (B, N, length)))
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        got = numba_projections.direction_projections(x, w_x, w_dt, R)
        dx = np.zeros_like(x)
        dw = numba_projections.direction_projections_backward(dd, dB, dC, x, got[0][:, :R],
                                                              w_x, w_dt, dx)
    finally:
        numba.set_num_threads(before)
    runs = threads > 1 and length >= numba_projections.MIN_LENGTH
    assert calls == {"_projections_fwd": int(runs), "_projections_bwd": int(runs)}
    want = direction_projections(x, w_x, w_dt, R)
    dx_want = np.zeros_like(x)
    dw_want = direction_projections_backward(dd, dB, dC, x, want[0][:, :R], w_x, w_dt, dx_want)
    for name, a, b in zip(("x_dbl", "delta", "dx", "dw_x", "dw_dt"), (*got, dx, *dw),
                          (*want, dx_want, *dw_want)):
        assert_close(a, b, kind="backend", err_msg=name)
