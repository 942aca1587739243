"""The shared test helpers themselves: the comparison must be able to fail, the finite
differences must agree with a known derivative."""
import numpy as np
import pytest

from conftest import assert_close, numerical_gradient, tolerance


def test_passes_within_tolerance():
    x = np.linspace(0, 1, 10)
    assert_close(x * (1 + 1e-12), x, kind="exact")


@pytest.mark.parametrize("perturb", [1e-6, np.nan, np.inf])
def test_fails_outside_tolerance_or_on_nonfinite(perturb):
    x = np.linspace(1, 2, 10)
    y = x.copy()
    y[3] = y[3] + perturb if np.isfinite(perturb) else perturb
    with pytest.raises(AssertionError, match="not close"):
        assert_close(y, x, kind="exact")


def test_shape_mismatch_is_not_broadcast():
    with pytest.raises(AssertionError, match="shape mismatch"):
        assert_close(np.zeros((3, 1)), np.zeros(3))


def test_float32_tolerance_is_looser_than_float64():
    assert tolerance("backend", np.float32)[0] > tolerance("backend", np.float64)[0]
    with pytest.raises(KeyError):
        tolerance("fd", np.float16)


def test_numerical_gradient_of_a_known_function_restores_x(rng):
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal((3, 4))
    before = x.copy()
    g = numerical_gradient(lambda v: float(np.sum(w * np.sin(v))), x)
    assert_close(g, w * np.cos(x), kind="fd")
    np.testing.assert_array_equal(x, before)
    idx = np.array([7, 0, 11])
    sub = numerical_gradient(lambda v: float(np.sum(w * np.sin(v))), x, indices=idx)
    assert_close(sub, (w * np.cos(x)).flat[idx], kind="fd")


def test_numerical_gradient_complex_gives_real_plus_i_imaginary_parts(rng):
    z = rng.standard_normal(5) + 1j * rng.standard_normal(5)
    c = rng.standard_normal(5) + 1j * rng.standard_normal(5)
    # L = sum Re(conj(c) z^2), w = 2 conj(c) z: dL/dRe = Re(w), dL/dIm = -Im(w), so g = conj(w)
    g = numerical_gradient(lambda v: float(np.sum(np.conj(c) * v**2).real), z)
    assert_close(g, 2 * c * np.conj(z), kind="fd")


def test_numerical_gradient_refuses_low_precision():
    with pytest.raises(TypeError, match="float64"):
        numerical_gradient(lambda v: float(v.sum()), np.ones(3, dtype=np.float32))


def test_dtype_mismatch_fails_naming_both_dtypes():
    x = np.linspace(1, 2, 10)
    with pytest.raises(AssertionError, match="dtype mismatch: actual float32 vs expected float64"):
        assert_close(x.astype(np.float32), x, kind="backend")
    with pytest.raises(AssertionError, match="actual complex128 vs expected float64"):
        assert_close(x.astype(np.complex128), x)


def test_required_dtype_is_asserted_and_picks_the_tolerance():
    x = np.linspace(1, 2, 10)
    x32 = x.astype(np.float32)
    assert_close(x32, x, kind="backend", dtype=np.float32)  # float32 result, float64 reference
    with pytest.raises(AssertionError, match="dtype mismatch: actual float64 vs required float32"):
        assert_close(x, x, kind="backend", dtype=np.float32)
    with pytest.raises(AssertionError, match="not close"):  # float64 tolerance on float32 values
        assert_close(x32.astype(np.float64), x, kind="backend", dtype=np.float64)


def test_precision_picks_the_tolerance_of_a_widened_result():
    x = np.linspace(1, 2, 10)
    widened = x.astype(np.float32).astype(np.float64)  # a float32 computation returned in float64
    assert_close(widened, x, kind="backend", precision=np.float32)
    with pytest.raises(AssertionError, match="dtype mismatch"):
        assert_close(x.astype(np.float32), x, kind="backend", precision=np.float32)
