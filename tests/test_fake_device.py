"""The fake device library refuses what CuPy refuses and counts every host read.

These tests guard the guard: the device-path tests of the layers, blocks and
training loop are only as strict as ``tests/fake_device.py``.
"""
import numpy as np
import pytest
from fake_device import COUNTS, CUPY_VERSION, DeviceArray, fake, peek

from ssm_ref._xp import array_module, is_device, on_module, to_host


def test_arithmetic_and_numpy_dispatch_stay_on_the_device(fake_xp):
    x = fake.asarray(np.arange(6.0).reshape(2, 3))
    assert COUNTS["to_device"] == 1
    y = np.exp(x) * 2 + x.sum(axis=1, keepdims=True)      # ufuncs, operators, methods
    z = np.einsum("ij,kj->ik", y, x)                      # __array_function__
    assert isinstance(y, DeviceArray) and isinstance(z, DeviceArray)
    want = np.exp(np.arange(6.0).reshape(2, 3)) * 2 + np.array([[3.0], [12.0]])
    np.testing.assert_allclose(peek(y), want)
    assert isinstance(x.sum(), DeviceArray)               # reductions stay 0-d device arrays
    assert COUNTS == {"sync": 0, "to_host": 0, "to_device": 1}


def test_implicit_host_conversion_and_mixing_are_refused(fake_xp):
    x = fake.zeros((2, 3))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    with pytest.raises(TypeError, match="NumPy array"):
        x + np.ones((2, 3))
    with pytest.raises(TypeError, match="NumPy array"):
        x[np.array([0, 1])]
    with pytest.raises(TypeError, match="NumPy array"):
        np.stack([x, np.ones((2, 3))])
    with pytest.raises(TypeError, match="NumPy array"):
        fake.concatenate([x, np.ones((2, 3))])
    scipy_special = pytest.importorskip("scipy.special")
    with pytest.raises(TypeError):
        scipy_special.expit(x)                             # only NumPy's ufuncs dispatch


def test_only_names_cupy_has_are_callable(fake_xp):
    x = fake.ones((4,))
    with pytest.raises(TypeError, match=f"not in CuPy {CUPY_VERSION}"):
        np.insert(x, 1, 5.0)                              # NumPy has it, CuPy does not
    with pytest.raises(TypeError, match=f"not in CuPy {CUPY_VERSION}"):
        np.spacing(x)                                     # a ufunc CuPy lacks
    assert isinstance(np.lib.stride_tricks.sliding_window_view(x, 2), DeviceArray)
    with pytest.raises(AttributeError, match="not in CuPy"):
        fake.nanpercentile_of_nothing                     # noqa: B018
    assert fake.float64 is np.float64 and fake.newaxis is None
    assert fake.ndarray is DeviceArray


def test_host_reads_are_counted(fake_xp):
    x = fake.asarray([1.0, 2.0])
    float(x.sum()); bool((x > 0).all()); x.max().item()   # noqa: E702
    assert COUNTS["sync"] == 3
    fake.asnumpy(x); x.get()                               # noqa: E702
    assert COUNTS["to_host"] == 2


def test_the_array_module_helpers_follow_registration(fake_xp):
    x = fake.zeros(3)
    assert array_module(np.ones(2), x) is fake and array_module(np.ones(2)) is np
    assert is_device(x) and not is_device(np.ones(2))
    idx = on_module(np.array([2, 0, 1]), fake)
    assert isinstance(idx, DeviceArray) and on_module(idx, fake) is idx
    np.testing.assert_array_equal(to_host(idx), [2, 0, 1])
    assert COUNTS["to_host"] == 1 and COUNTS["to_device"] == 1


def test_special_functions_come_from_the_module_of_the_array(fake_xp):
    import scipy.special

    from ssm_ref._xp import special
    assert special(np) is scipy.special
    x = fake.asarray(np.linspace(-3, 3, 7))
    y = special(fake).erf(x)
    assert isinstance(y, DeviceArray)
    np.testing.assert_allclose(peek(y), scipy.special.erf(np.linspace(-3, 3, 7)), rtol=0, atol=0)
    with pytest.raises(AttributeError, match="cupyx.scipy.special has no"):
        special(fake).lambertw_of_nothing  # noqa: B018
