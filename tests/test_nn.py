"""Tests of ssm_ref.nn: every layer against an outside oracle and its backward against finite differences.

Oracles: scipy.signal.convolve / correlate for the convolutions, plain NumPy
formulas (np.var, np.linalg.norm, np.logaddexp) for norms and activations.
Gradients: central finite differences of the scalar loss sum(y * R) for a
random R, compared with kind "fd".  Every layer and its backward also runs on the
``xp`` fixture (NumPy and the strict fake device of tests/fake_device.py): on the
device it returns device arrays only, equal to NumPy with the dtype kept, and reads
or moves nothing between host and device; ``sigmoid`` is also checked against
1 / (1 + e^-x) in extended precision.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import scipy.special

from conftest import assert_close, check_same_on, numerical_gradient
from fake_device import COUNTS, fake, peek

import ssm_ref as sr
from ssm_ref.nn import SOFTPLUS_THRESHOLD, sigmoid


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


# --------------------------------------------------------------------------- every array module
# Each layer and its backward on NumPy and on the strict fake device (tests/fake_device.py):
# device arrays only, equal to the NumPy run with the dtype kept, no value read or moved
# between host and device.  sigmoid is also checked against its outside oracle.
def check_layer(xp, forward, backward, args, rng):
    """Forward and backward of one layer on NumPy and on ``xp`` (dy drawn in the output's shape)."""
    check_same_on(xp, forward, args)
    y = forward(*args)
    dy = rng.standard_normal(y.shape).astype(y.dtype)
    check_same_on(xp, backward, [dy, *args])


# --------------------------------------------------------------------------- sigmoid
def test_sigmoid_matches_an_extended_precision_oracle_over_the_whole_range():
    x = np.linspace(-800.0, 800.0, 160_001)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = sigmoid(x)
    with np.errstate(over="ignore"):  # the oracle: 1 / (1 + e^-x) in x87 extended precision
        oracle = (1 / (1 + np.exp(-x.astype(np.longdouble)))).astype(np.float64)
    # a few ulp of relative error where the result is a normal float; below x ~ -708
    # the result may flush to 0 (atol: the smallest normal float)
    np.testing.assert_allclose(s, oracle, rtol=4 * np.finfo(np.float64).eps,
                               atol=np.finfo(np.float64).tiny)
    assert s.dtype == np.float64
    assert np.all((s >= 0) & (s <= 1)) and np.all(np.diff(s) >= 0)  # a monotone probability
    ulp1 = np.finfo(np.float64).eps  # s(-x) = 1 - s(x) within two ulp of 1
    np.testing.assert_allclose(sigmoid(-x), 1.0 - s, rtol=0, atol=2 * ulp1)


def test_sigmoid_tails_special_values_and_dtype():
    tail = np.array([-700.0, -100.0, -40.0])
    np.testing.assert_allclose(sigmoid(tail), np.exp(tail), rtol=1e-15)  # s(x) ~ e^x far left
    np.testing.assert_array_equal(sigmoid(np.array([0.0, 800.0, np.inf, -np.inf])),
                                  [0.5, 1.0, 1.0, 0.0])
    assert np.isnan(sigmoid(np.array([np.nan]))[0])
    x32 = np.array([-3.0, 0.5, 90.0], dtype=np.float32)
    assert sigmoid(x32).dtype == np.float32
    assert_close(sigmoid(x32), scipy.special.expit(x32.astype(np.float64)).astype(np.float32))
    assert_close(sigmoid([1, 2]), scipy.special.expit(np.array([1.0, 2.0])))  # ints promoted
    with pytest.raises(TypeError, match="Parameter x"):
        sigmoid(np.array([1j]))


def test_sigmoid_on_every_array_module(xp):
    x = np.linspace(-800.0, 800.0, 41)
    check_same_on(xp, sigmoid, [x])
    check_same_on(xp, sigmoid, [x.astype(np.float32)])


def test_sigmoid_is_exported():
    assert sr.sigmoid is sigmoid and "sigmoid" in sr.nn.__all__


# --------------------------------------------------------------------------- layers
DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_on_every_array_module(xp, rng, dtype, with_bias):
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    W = rng.standard_normal((5, 4)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype) if with_bias else None
    check_layer(xp, sr.linear, sr.linear_backward, [x, W, b], rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn, bwd", [(sr.silu, sr.silu_backward),
                                     (sr.softplus, sr.softplus_backward)])
def test_activations_on_every_array_module(xp, rng, dtype, fn, bwd):
    # both sides of the softplus threshold and the far tails of the sigmoid
    x = np.concatenate([rng.uniform(-6, 6, 8), [-800.0, -30.0, SOFTPLUS_THRESHOLD + 1, 800.0]])
    check_layer(xp, fn, bwd, [x.reshape(3, 4).astype(dtype)], rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 4])
@pytest.mark.parametrize("with_bias", [True, False])
def test_causal_conv1d_on_every_array_module(xp, rng, dtype, K, with_bias):
    x = rng.standard_normal((2, 3, 5)).astype(dtype)
    w = rng.standard_normal((3, K)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype) if with_bias else None
    check_layer(xp, sr.causal_conv1d, sr.causal_conv1d_backward, [x, w, b], rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_on_every_array_module(xp, rng, dtype):
    x = rng.standard_normal((2, 3, 6)).astype(dtype)
    w = rng.standard_normal(6).astype(dtype)
    check_layer(xp, sr.rms_norm, sr.rms_norm_backward, [x, w], rng)
    check_layer(xp, lambda *a: sr.rms_norm(*a, eps=0.3),
                lambda *a: sr.rms_norm_backward(*a, eps=0.3), [x, w], rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm_on_every_array_module(xp, rng, dtype, with_bias):
    x = rng.standard_normal((2, 3, 6)).astype(dtype)
    w = rng.standard_normal(6).astype(dtype)
    b = rng.standard_normal(6).astype(dtype) if with_bias else None
    check_layer(xp, sr.layer_norm, sr.layer_norm_backward, [x, w, b], rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", [(3, 3), (2, 3)])  # odd and even ('same' padding after)
@pytest.mark.parametrize("with_bias", [True, False])
def test_depthwise_conv2d_on_every_array_module(xp, rng, dtype, kernel, with_bias):
    x = rng.standard_normal((2, 4, 5, 3)).astype(dtype)
    w = rng.standard_normal((3, *kernel)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype) if with_bias else None
    check_layer(xp, sr.depthwise_conv2d, sr.depthwise_conv2d_backward, [x, w, b], rng)


# --------------------------------------------------------------------------- contract
def test_host_and_device_arrays_are_not_mixed(fake_xp, rng):
    x = fake.asarray(rng.standard_normal((2, 4)))
    with pytest.raises(TypeError, match="NumPy array"):  # a silent copy per step on a GPU
        sr.linear(x, rng.standard_normal((3, 4)))


def test_shape_checks_stay_on_for_device_arrays(fake_xp, rng):
    x = fake.asarray(rng.standard_normal((2, 3, 5)))
    with pytest.raises(ValueError, match="Parameter weight has shape"):
        sr.causal_conv1d(x, fake.zeros((4, 2)))
    with pytest.raises(ValueError, match="Parameter dy has shape"):
        sr.silu_backward(fake.zeros((2, 3)), x)
    assert COUNTS["sync"] == 0 and COUNTS["to_host"] == 0
    assert peek(sr.silu(x)).shape == (2, 3, 5)
