"""The layers of ssm_ref.nn run on device arrays: same results, no host round-trips.

Every layer and its backward is run twice on the same inputs: once on NumPy
arrays, once on arrays of the strict fake device module (``tests/fake_device.py``,
fixture ``fake_xp``), which refuses what CuPy refuses and counts host reads.
The device run must return device arrays only (every output and gradient),
equal to the NumPy run, and must not read or move a value between host and
device.  The new :func:`ssm_ref.nn.sigmoid` is also checked against its
outside oracle, 1 / (1 + e^-x) in extended precision.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.special
from fake_device import COUNTS, NO_HOST_TRAFFIC, DeviceArray, fake, on_device, peek, reset_counts

from conftest import assert_close

import ssm_ref as sr
from ssm_ref.nn import SOFTPLUS_THRESHOLD, sigmoid



# --------------------------------------------------------------------------- helpers
def check_same_on_device(fn, args):
    """Run ``fn(*args)`` on NumPy and on the fake device; compare results and host traffic."""
    expected = fn(*args)
    dev_args = on_device(list(args))
    reset_counts()  # moving the inputs was the test's own transfer
    got = fn(*dev_args)
    assert COUNTS == NO_HOST_TRAFFIC, f"{fn.__name__} touched the host: {COUNTS}"
    if not isinstance(expected, tuple):
        expected, got = (expected,), (got,)
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected)):
        if e is None:
            assert g is None, f"{fn.__name__} output {k}"
            continue
        assert isinstance(g, DeviceArray), f"{fn.__name__} output {k} is {type(g).__name__}"
        assert g.dtype == e.dtype, f"{fn.__name__} output {k}: {g.dtype} vs {e.dtype}"
        assert_close(g, e, kind="exact", err_msg=f"{fn.__name__} output {k}")


def check_layer(forward, backward, args, rng):
    """Forward and backward of one layer on both modules (dy drawn in the output's shape)."""
    check_same_on_device(forward, args)
    y = forward(*args)
    dy = rng.standard_normal(y.shape).astype(y.dtype)
    check_same_on_device(backward, [dy, *args])


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


def test_sigmoid_on_device(fake_xp):
    x = np.linspace(-800.0, 800.0, 41)
    check_same_on_device(sigmoid, [x])
    check_same_on_device(sigmoid, [x.astype(np.float32)])


def test_sigmoid_is_exported():
    assert sr.sigmoid is sigmoid and "sigmoid" in sr.nn.__all__


# --------------------------------------------------------------------------- layers
DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_on_device(fake_xp, rng, dtype, with_bias):
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    W = rng.standard_normal((5, 4)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype) if with_bias else None
    check_layer(sr.linear, sr.linear_backward, [x, W, b], rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fn, bwd", [(sr.silu, sr.silu_backward),
                                     (sr.softplus, sr.softplus_backward)])
def test_activations_on_device(fake_xp, rng, dtype, fn, bwd):
    # both sides of the softplus threshold and the far tails of the sigmoid
    x = np.concatenate([rng.uniform(-6, 6, 8), [-800.0, -30.0, SOFTPLUS_THRESHOLD + 1, 800.0]])
    check_layer(fn, bwd, [x.reshape(3, 4).astype(dtype)], rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 4])
@pytest.mark.parametrize("with_bias", [True, False])
def test_causal_conv1d_on_device(fake_xp, rng, dtype, K, with_bias):
    x = rng.standard_normal((2, 3, 5)).astype(dtype)
    w = rng.standard_normal((3, K)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype) if with_bias else None
    check_layer(sr.causal_conv1d, sr.causal_conv1d_backward, [x, w, b], rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_on_device(fake_xp, rng, dtype):
    x = rng.standard_normal((2, 3, 6)).astype(dtype)
    w = rng.standard_normal(6).astype(dtype)
    check_layer(sr.rms_norm, sr.rms_norm_backward, [x, w], rng)
    check_layer(lambda *a: sr.rms_norm(*a, eps=0.3),
                lambda *a: sr.rms_norm_backward(*a, eps=0.3), [x, w], rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm_on_device(fake_xp, rng, dtype, with_bias):
    x = rng.standard_normal((2, 3, 6)).astype(dtype)
    w = rng.standard_normal(6).astype(dtype)
    b = rng.standard_normal(6).astype(dtype) if with_bias else None
    check_layer(sr.layer_norm, sr.layer_norm_backward, [x, w, b], rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", [(3, 3), (2, 3)])  # odd and even ('same' padding after)
@pytest.mark.parametrize("with_bias", [True, False])
def test_depthwise_conv2d_on_device(fake_xp, rng, dtype, kernel, with_bias):
    x = rng.standard_normal((2, 4, 5, 3)).astype(dtype)
    w = rng.standard_normal((3, *kernel)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype) if with_bias else None
    check_layer(sr.depthwise_conv2d, sr.depthwise_conv2d_backward, [x, w, b], rng)


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
