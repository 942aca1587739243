"""Shared test configuration: the one tolerance table, the one assert helper, finite differences.

Every equivalence test in the project compares through :func:`assert_close`,
with tolerances looked up in :data:`TOLERANCES` by the *dtype of the result
under test* and by the kind of comparison.  References are computed in float64.

Kinds of comparison
-------------------
``exact``     two algorithms for the same float64 quantity (recurrence vs
              convolution, sequential vs parallel scan).
``backend``   a fast backend (Numba, CUDA) against the float64 reference.
``golden``    against the official ``mamba_ssm`` reference (computed by it in
              float32), see ``../shared/golden``.
``fd``        analytic gradients against central finite differences
              (:func:`numerical_gradient`).

The dtype is part of the comparison: the result must have the expected array's
dtype, or the ``dtype`` passed (a float32 result against a float64 reference).

Fixtures instead of twin tests: ``xp`` runs a test on NumPy and on the strict
fake device (``fake_device.py``; the device-only checks go through
:func:`assert_same_on` and :func:`assert_no_host_traffic`), ``backend`` over the
selective-scan backends of ``fast``.  The scan inputs come from ``cases.py``.
"""
from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from fake_device import COUNTS, NO_HOST_TRAFFIC, DeviceArray, fake, on_device, peek, reset_counts

from ssm_ref._xp import is_cupy

ROOT = Path(__file__).resolve().parents[1]

#: (rtol, atol) by comparison kind and result dtype.
TOLERANCES = {
    "exact": {np.float64: (1e-10, 1e-12), np.float32: (2e-5, 2e-6),
              np.complex128: (1e-10, 1e-12), np.complex64: (2e-5, 2e-6)},
    "backend": {np.float64: (1e-9, 1e-11), np.float32: (2e-4, 2e-5),
                np.complex128: (1e-9, 1e-11), np.complex64: (2e-4, 2e-5),
                # a bfloat16 result (8 significant bits, one ulp = 2^-7 relative) against the
                # float32 computation rounded to bfloat16: the two roundings may differ by an ulp
                ml_dtypes.bfloat16: (1.6e-2, 1e-3)},
    # the official reference computes in float32; measured error ~4e-6 on |y| <= 31
    "golden": {np.float64: (2e-5, 2e-5), np.float32: (2e-5, 2e-5)},
    "fd": {np.float64: (1e-5, 1e-7), np.complex128: (1e-5, 1e-7)},
}


def tolerance(kind, dtype):
    """Return ``(rtol, atol)`` for comparison ``kind`` at ``dtype``."""
    table = TOLERANCES[kind]
    key = np.dtype(dtype).type
    if key not in table:
        raise KeyError(f"no {kind!r} tolerance for dtype {np.dtype(dtype)}")
    return table[key]


def assert_close(actual, expected, kind="exact", dtype=None, err_msg="", precision=None):
    """Assert ``actual`` ≈ ``expected`` with the shared tolerance for ``kind``.

    The dtype is compared too: ``actual.dtype`` must equal ``dtype`` when it is
    given (the dtype the result must have, e.g. float32 against a float64
    reference), and ``expected.dtype`` otherwise.  That dtype also picks the
    tolerance, unless ``precision`` names the dtype the result was computed in
    (a float32 computation handed back in float64).  On failure the message
    reports the maximum absolute and relative error and where it occurs.
    Shapes must match exactly (no broadcasting).
    """
    actual = _to_numpy(actual)
    expected = _to_numpy(expected)
    want = np.dtype(dtype) if dtype is not None else expected.dtype
    assert actual.dtype == want, (
        f"{err_msg} dtype mismatch: actual {actual.dtype} vs "
        f"{'required' if dtype is not None else 'expected'} {want}"
    )
    assert actual.shape == expected.shape, (
        f"{err_msg} shape mismatch: actual {actual.shape} vs expected {expected.shape}"
    )
    rtol, atol = tolerance(kind, want if precision is None else precision)
    diff = np.abs(actual.astype(np.complex128) - expected.astype(np.complex128))
    scale = np.abs(expected.astype(np.complex128))
    both_nonfinite_equal = ~np.isfinite(expected) & (actual == expected)
    bad = (diff > atol + rtol * scale) & ~both_nonfinite_equal
    finite_mismatch = np.isfinite(actual) != np.isfinite(expected)
    if np.any(bad) or np.any(finite_mismatch):
        i = np.unravel_index(np.argmax(diff - rtol * scale), diff.shape) if diff.size else ()
        rel = diff / np.maximum(scale, np.finfo(np.float64).tiny)
        raise AssertionError(
            f"{err_msg} not close ({kind}, rtol={rtol}, atol={atol}): "
            f"{int(bad.sum())}/{bad.size} entries off; max abs err {diff.max():.3e}, "
            f"max rel err {rel.max():.3e}; worst at {i}: "
            f"actual {actual[i]!r} vs expected {expected[i]!r}"
        )


def numerical_gradient(f, x, eps=1e-6, indices=None):
    """Central finite differences of the scalar ``f(x)`` with respect to the entries of ``x``.

    ``x`` (float64 or complex128) is perturbed in place, one entry at a time,
    and restored afterwards, so ``f`` may also ignore its argument and read
    ``x`` through a closure (a parameter held by a module).  A complex entry
    is perturbed along its real and its imaginary part; the result is
    ``dL/dRe + 1j * dL/dIm``.  ``indices`` (flat indices into ``x``) selects
    entries: then a 1-D array of their derivatives comes back, otherwise the
    whole gradient in ``x``'s shape.  Compare with ``kind="fd"``.
    """
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float64, np.complex128):
        raise TypeError(f"numerical_gradient needs a float64/complex128 array, got "
                        f"{type(x).__name__} {getattr(x, 'dtype', '')}")
    flat = x.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("numerical_gradient perturbs x in place; x must be contiguous")
    chosen = range(flat.size) if indices is None else indices
    units = (1.0, 1j) if np.iscomplexobj(x) else (1.0,)
    grad = np.zeros(len(chosen), dtype=x.dtype)
    for k, i in enumerate(chosen):
        old = flat[i]
        for unit in units:
            flat[i] = old + eps * unit
            up = f(x)
            flat[i] = old - eps * unit
            down = f(x)
            flat[i] = old
            grad[k] += (up - down) / (2 * eps) * unit
    return grad.reshape(x.shape) if indices is None else grad


def assert_same_on_device(dev, host, what):
    """``dev`` is a DeviceArray (or None where ``host`` is None) equal to ``host``."""
    if host is None:
        assert dev is None, what
        return
    assert isinstance(dev, DeviceArray), f"{what} is a {type(dev).__name__}, not on the device"
    assert dev.dtype == host.dtype, f"{what}: dtype {dev.dtype} vs {host.dtype}"
    assert_close(dev, host, kind="exact", err_msg=what)


def _to_numpy(x):
    if is_cupy(x):
        x = x.get()
    if isinstance(x, DeviceArray):  # the fake device: the tests' own look is not counted
        return peek(x)
    return np.asarray(x)


def on_cuda_simulator():
    """True when Numba's CUDA simulator is switched on for this process."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def real_gpu_available():
    """True only with a real CUDA GPU and CuPy (never under the simulator)."""
    if on_cuda_simulator():
        return False
    try:
        from numba.core import config
        if config.ENABLE_CUDASIM:
            return False
        import cupy
        return cupy.cuda.is_available()
    except Exception:  # ImportError, CUDARuntimeError without a driver
        return False


@pytest.fixture
def fake_xp():
    """The strict fake device module (``tests/fake_device.py``), registered with ssm_ref.

    Device-array code paths run on it without a GPU; ``fake_device.COUNTS``
    starts at zero in every test.
    """
    from ssm_ref._xp import register_array_module
    undo = register_array_module(DeviceArray, fake)
    reset_counts()
    yield fake
    undo()


@pytest.fixture(params=["numpy", "fake-device"])
def xp(request):
    """The array module a shared test runs on: NumPy, then the strict fake device.

    On the fake device (:func:`on_fake_device`) a test also asserts what only a device
    run can break: the results are device arrays equal to the NumPy run with their dtype
    kept (:func:`assert_same_on`), and no value was read back to the host
    (:func:`assert_no_host_traffic`).
    """
    if request.param == "numpy":
        return np
    return request.getfixturevalue("fake_xp")


def on_fake_device(xp):
    """True when ``xp`` (the fixture's value) is the fake device."""
    return xp is fake


def to_xp(xp, tree):
    """Every NumPy array in ``tree`` moved to ``xp`` (unchanged for NumPy); counts reset."""
    if not on_fake_device(xp):
        return tree
    moved = on_device(tree)
    reset_counts()
    return moved


def assert_no_host_traffic(xp):
    """On the fake device: nothing read back to the host, nothing copied to the device
    since the last :func:`to_xp`."""
    if on_fake_device(xp):
        assert COUNTS == NO_HOST_TRAFFIC, f"host traffic on the device: {COUNTS}"


def assert_same_on(xp, actual, host, what):
    """``actual``, computed on ``xp``, is the NumPy result ``host``: the same dtype and
    values, and an array of ``xp`` (a DeviceArray on the fake device)."""
    if on_fake_device(xp):
        assert_same_on_device(actual, host, what)
    elif host is None:
        assert actual is None, what
    else:
        assert isinstance(actual, np.ndarray), f"{what} is a {type(actual).__name__}"
        assert_close(actual, host, kind="exact", err_msg=what)


def check_same_on(xp, fn, args, what=None):
    """Run ``fn(*args)`` on NumPy, then on ``args`` moved to ``xp``: every output is an
    array of ``xp`` equal to NumPy's, dtype kept (:func:`assert_same_on`), and on the fake
    device nothing went between host and device.  Returns the NumPy result."""
    what = what or getattr(fn, "__name__", "fn")
    expected = fn(*args)
    got = fn(*to_xp(xp, list(args)))
    assert_no_host_traffic(xp)
    many = isinstance(expected, tuple)
    exp_t, got_t = (expected, got) if many else ((expected,), (got,))
    assert isinstance(got, tuple) == many and len(got_t) == len(exp_t), what
    for k, (g, e) in enumerate(zip(got_t, exp_t)):
        assert_same_on(xp, g, e, f"{what} output {k}")
    return expected


#: The ``backend`` fixture's parameters with the "cuda" case marked ``cudasim``, for a test
#: whose cuda cases are small enough for Numba's CUDA simulator (~1000x slower than a GPU):
#: ``@pytest.mark.parametrize("backend", SIM_BACKENDS, indirect=True)``.  Those cases then run
#: in the simulator's own process (``NUMBA_ENABLE_CUDASIM=1 pytest -m cudasim``, part of
#: ``make test``) and are left out of the ``-m "not cudasim"`` run.
SIM_BACKENDS = ["ref", "numba", pytest.param("cuda", marks=pytest.mark.cudasim)]


@pytest.fixture(params=["ref", "numba", "cuda"])
def backend(request):
    """A selective-scan backend of ``fast``: the reference, Numba, and CUDA where it can
    run (Numba's CUDA simulator or a real GPU)."""
    if request.param == "cuda" and not (on_cuda_simulator() or real_gpu_available()):
        pytest.skip("backend 'cuda' needs a real CUDA GPU or NUMBA_ENABLE_CUDASIM=1")
    return request.param


@pytest.fixture
def rng():
    """A fresh, seeded generator per test (deterministic, independent tests)."""
    return np.random.default_rng(20261125)
