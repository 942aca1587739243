"""The shared comparison helper itself must be able to fail."""
import numpy as np
import pytest

from conftest import assert_close, tolerance


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
