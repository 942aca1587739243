"""Tests of ssm_ref.nn: every layer against an outside oracle and its backward against finite differences.

Oracles: scipy.signal.convolve / correlate for the convolutions, plain NumPy
formulas (np.var, np.linalg.norm, np.logaddexp) for norms and activations.
Gradients: central finite differences of the scalar loss sum(y * R) for a
random R, compared with kind "fd".
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from conftest import assert_close, numerical_gradient

import ssm_ref as sr
from ssm_ref.nn import SOFTPLUS_THRESHOLD


# --------------------------------------------------------------------------- helpers
def check_grads(forward, backward, inputs, rng, names):
    """Compare ``backward(R, *inputs)`` with finite differences of ``sum(forward(*inputs) * R)``."""
    y = forward(*inputs)
    R = rng.standard_normal(y.shape)
    analytic = backward(R, *inputs)
    if not isinstance(analytic, tuple):  # single-input layers return dx alone
        analytic = (analytic,)
    for k, name in enumerate(names):
        arr = inputs[k]
        numeric = numerical_gradient(lambda _: float(np.sum(forward(*inputs) * R)), arr)
        assert analytic[k] is not None, name
        assert_close(analytic[k], numeric, kind="fd", err_msg=f"d{name}")


# --------------------------------------------------------------------------- linear
@pytest.mark.parametrize("lead", [(5,), (2, 3), (1, 4, 2)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_einsum(rng, lead, with_bias):
    x = rng.standard_normal(lead + (4,))
    W = rng.standard_normal((3, 4))
    b = rng.standard_normal(3) if with_bias else None
    expected = np.einsum("...i,oi->...o", x, W) + (b if with_bias else 0.0)
    assert_close(sr.linear(x, W, b), expected)


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_gradients(rng, with_bias):
    x = rng.standard_normal((2, 3, 4))
    W = rng.standard_normal((5, 4))
    b = rng.standard_normal(5) if with_bias else None
    if with_bias:
        check_grads(sr.linear, sr.linear_backward, [x, W, b], rng, ["x", "W", "b"])
    else:
        check_grads(sr.linear, sr.linear_backward, [x, W], rng, ["x", "W"])
        assert sr.linear_backward(np.ones((2, 3, 5)), x, W)[2] is None


# --------------------------------------------------------------------------- activations
def test_silu_matches_formula_and_is_stable(rng):
    x = rng.standard_normal(50) * 5
    assert_close(sr.silu(x), x / (1 + np.exp(-x)))
    with np.errstate(all="raise"):  # no overflow at large |x|
        big = sr.silu(np.array([-800.0, 800.0]))
    assert_close(big, np.array([-0.0, 800.0]))


def test_softplus_matches_logaddexp_and_threshold(rng):
    x = rng.uniform(-30, 19.9, 200)
    assert_close(sr.softplus(x), np.logaddexp(0.0, x))
    above = np.array([20.001, 25.0, 1e4])
    np.testing.assert_array_equal(sr.softplus(above), above)  # linear above 20, like PyTorch
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        assert_close(sr.softplus(np.array([1e4, -1e4])), np.array([1e4, 0.0]))


@pytest.mark.parametrize("fn, bwd", [(sr.silu, sr.silu_backward), (sr.softplus, sr.softplus_backward)])
def test_activation_gradients(rng, fn, bwd):
    x = rng.uniform(-6, 6, (3, 7))
    check_grads(fn, bwd, [x], rng, ["x"])


def test_softplus_gradient_above_threshold(rng):
    x = SOFTPLUS_THRESHOLD + rng.uniform(0.5, 5, 6)
    dy = rng.standard_normal(6)
    assert_close(sr.softplus_backward(dy, x), dy)


# --------------------------------------------------------------------------- causal conv1d
@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("L", [1, 3, 9])
def test_causal_conv1d_matches_scipy(rng, K, L):
    x = rng.standard_normal((2, 3, L))
    w = rng.standard_normal((3, K))
    b = rng.standard_normal(3)
    y = sr.causal_conv1d(x, w, b)
    for bi in range(2):
        for d in range(3):
            # PyTorch's conv is a correlation: y = full convolution with the flipped kernel, first L
            via_convolve = scipy.signal.convolve(x[bi, d], w[d, ::-1], mode="full")[:L] + b[d]
            via_correlate = scipy.signal.correlate(x[bi, d], w[d], mode="full")[:L] + b[d]
            assert_close(y[bi, d], via_convolve)
            assert_close(y[bi, d], via_correlate)


def test_causal_conv1d_is_causal(rng):
    x = rng.standard_normal((1, 2, 8))
    w = rng.standard_normal((2, 4))
    y = sr.causal_conv1d(x, w)
    x2 = x.copy()
    x2[..., 5:] += 1.0  # change the future
    y2 = sr.causal_conv1d(x2, w)
    np.testing.assert_array_equal(y[..., :5], y2[..., :5])
    assert not np.allclose(y[..., 5:], y2[..., 5:])


@pytest.mark.parametrize("with_bias", [True, False])
def test_causal_conv1d_gradients(rng, with_bias):
    x = rng.standard_normal((2, 3, 6))
    w = rng.standard_normal((3, 4))
    if with_bias:
        check_grads(sr.causal_conv1d, sr.causal_conv1d_backward,
                    [x, w, rng.standard_normal(3)], rng, ["x", "weight", "bias"])
    else:
        check_grads(sr.causal_conv1d, sr.causal_conv1d_backward, [x, w], rng, ["x", "weight"])


# --------------------------------------------------------------------------- norms
@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.3])
def test_rms_norm_matches_numpy(rng, eps):
    x = rng.standard_normal((2, 5, 6))
    w = rng.standard_normal(6)
    rms = np.linalg.norm(x, axis=-1, keepdims=True) / np.sqrt(6)
    expected = x / np.sqrt(rms**2 + eps) * w
    assert_close(sr.rms_norm(x, w, eps), expected)


@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.3])
def test_layer_norm_matches_numpy(rng, eps):
    x = rng.standard_normal((3, 7)) * 4 + 2
    w, b = rng.standard_normal(7), rng.standard_normal(7)
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b
    assert_close(sr.layer_norm(x, w, b, eps), expected)
    assert_close(sr.layer_norm(x, w, None, eps), expected - b)


def test_rms_norm_gradients(rng):
    x = rng.standard_normal((2, 3, 5))
    w = rng.standard_normal(5)
    check_grads(lambda x, w: sr.rms_norm(x, w, 1e-3),
                lambda dy, x, w: sr.rms_norm_backward(dy, x, w, 1e-3), [x, w], rng, ["x", "weight"])


@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm_gradients(rng, with_bias):
    x = rng.standard_normal((4, 5))
    w = rng.standard_normal(5)
    if with_bias:
        check_grads(lambda x, w, b: sr.layer_norm(x, w, b, 1e-3),
                    lambda dy, x, w, b: sr.layer_norm_backward(dy, x, w, b, 1e-3),
                    [x, w, rng.standard_normal(5)], rng, ["x", "weight", "bias"])
    else:
        check_grads(lambda x, w: sr.layer_norm(x, w, None, 1e-3),
                    lambda dy, x, w: sr.layer_norm_backward(dy, x, w, None, 1e-3),
                    [x, w], rng, ["x", "weight"])


# --------------------------------------------------------------------------- depthwise conv2d
@pytest.mark.parametrize("k", [(3, 3), (1, 1), (2, 4), (5, 3)])
@pytest.mark.parametrize("hw", [(4, 5), (1, 6), (3, 3)])
def test_depthwise_conv2d_matches_scipy(rng, k, hw):
    kh, kw = k
    H, W = hw
    x = rng.standard_normal((2, H, W, 3))
    w = rng.standard_normal((3, kh, kw))
    b = rng.standard_normal(3)
    y = sr.depthwise_conv2d(x, w, b)
    top, left = (kh - 1) // 2, (kw - 1) // 2  # PyTorch 'same': the extra zero goes after
    for bi in range(2):
        for c in range(3):
            full = scipy.signal.correlate2d(x[bi, :, :, c], w[c], mode="full")
            r0, c0 = kh - 1 - top, kw - 1 - left
            expected = full[r0:r0 + H, c0:c0 + W] + b[c]
            assert_close(y[bi, :, :, c], expected)
            if kh % 2 and kw % 2:  # odd kernels: scipy's own 'same' centring agrees
                same = scipy.signal.correlate2d(x[bi, :, :, c], w[c], mode="same") + b[c]
                assert_close(y[bi, :, :, c], same)


@pytest.mark.parametrize("k", [(3, 3), (2, 3)])
def test_depthwise_conv2d_gradients(rng, k):
    x = rng.standard_normal((2, 3, 4, 2))
    w = rng.standard_normal((2,) + k)
    b = rng.standard_normal(2)
    check_grads(sr.depthwise_conv2d, sr.depthwise_conv2d_backward, [x, w, b], rng,
                ["x", "weight", "bias"])


# --------------------------------------------------------------------------- dtype contract
def _forward_cases(rng, dtype):
    x3 = rng.standard_normal((2, 3, 5)).astype(dtype)
    x4 = rng.standard_normal((2, 3, 4, 3)).astype(dtype)
    return [
        ("linear", lambda: sr.linear(x3, np.ones((2, 5)), np.ones(2))),
        ("silu", lambda: sr.silu(x3)),
        ("softplus", lambda: sr.softplus(x3)),
        ("causal_conv1d", lambda: sr.causal_conv1d(x3, np.ones((3, 4)), np.ones(3))),
        ("rms_norm", lambda: sr.rms_norm(x3, np.ones(5))),
        ("layer_norm", lambda: sr.layer_norm(x3, np.ones(5), np.zeros(5))),
        ("depthwise_conv2d", lambda: sr.depthwise_conv2d(x4, np.ones((3, 3, 3)), np.ones(3))),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_dtype_preserved(rng, dtype):
    for name, call in _forward_cases(rng, dtype):
        assert call().dtype == dtype, name


def test_float32_close_to_float64(rng):
    x = rng.standard_normal((2, 3, 4, 3))
    w, b = rng.standard_normal((3, 3, 3)), rng.standard_normal(3)
    y32 = sr.depthwise_conv2d(x.astype(np.float32), w, b)
    assert_close(y32, sr.depthwise_conv2d(x.astype(np.float32).astype(np.float64), w, b),
                 kind="exact", dtype=np.float32)


def test_backward_dtypes_follow_arguments(rng):
    x = rng.standard_normal((2, 3, 6)).astype(np.float32)
    w = rng.standard_normal((3, 4))  # float64 weight
    b = rng.standard_normal(3).astype(np.float32)
    dx, dw, db = sr.causal_conv1d_backward(np.ones((2, 3, 6), np.float32), x, w, b)
    assert (dx.dtype, dw.dtype, db.dtype) == (np.float32, np.float64, np.float32)
    dx, dW, db = sr.linear_backward(np.ones((2, 3, 2)), x, np.ones((2, 6)), None)
    assert dx.dtype == np.float32 and db is None


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, match", [
    (lambda: sr.linear(np.ones((2, 3)), np.ones((4, 5))), r"x has shape \(2, 3\).*last axis should be 5"),
    (lambda: sr.linear(np.ones((2, 3)), np.ones(3)), r"W has shape \(3,\)"),
    (lambda: sr.linear(np.ones((2, 3)), np.ones((4, 3)), np.ones(3)), r"b has shape \(3,\) but should be \(4,\)"),
    (lambda: sr.linear_backward(np.ones((2, 3)), np.ones((2, 3)), np.ones((4, 3))), r"dy has shape \(2, 3\) but should be \(2, 4\)"),
    (lambda: sr.linear_backward(np.ones((2, 4)), np.ones((2, 5)), np.ones((4, 3))), r"x has shape \(2, 5\).*last axis should be 3"),
    (lambda: sr.causal_conv1d(np.ones((2, 3)), np.ones((3, 4))), r"x has shape \(2, 3\)"),
    (lambda: sr.causal_conv1d(np.ones((1, 3, 5)), np.ones((3, 1, 4))), r"weight has shape \(3, 1, 4\)"),
    (lambda: sr.causal_conv1d(np.ones((1, 3, 5)), np.ones((2, 4))), r"weight has shape \(2, 4\) but should be \(3, K\)"),
    (lambda: sr.causal_conv1d(np.ones((1, 3, 5)), np.ones((3, 4)), np.ones(2)), r"bias has shape \(2,\)"),
    (lambda: sr.rms_norm(np.ones((2, 4)), np.ones(3)), r"weight has shape \(3,\) but should be \(4,\)"),
    (lambda: sr.layer_norm(np.ones((2, 4)), np.ones(4), np.ones(5)), r"bias has shape \(5,\)"),
    (lambda: sr.depthwise_conv2d(np.ones((2, 4, 4)), np.ones((4, 3, 3))), r"x has shape \(2, 4, 4\)"),
    (lambda: sr.depthwise_conv2d(np.ones((1, 4, 4, 2)), np.ones((3, 3, 3))), r"weight has shape \(3, 3, 3\) but should be \(2, kh, kw\)"),
    (lambda: sr.silu(np.array([1.0, np.nan])), r"x has 1 non-finite"),
    (lambda: sr.softplus_backward(np.ones(3), np.ones(2)), r"dy has shape \(3,\)"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call", [
    lambda: sr.silu(np.array(["a"])),
    lambda: sr.linear(np.ones((2, 3)) + 1j, np.ones((2, 3))),
])
def test_bad_dtype_raises_type_error(call):
    with pytest.raises(TypeError, match="Parameter x"):
        call()
