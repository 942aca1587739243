"""The vectorizable exp of ``fast._fastexp`` against NumPy in extended precision.

Oracle: ``np.exp`` on ``np.longdouble`` (80-bit on x86: ~1e-19 relative),
so the measured error is the error of the function under test.  Errors are
counted in ulp of the result's dtype.
"""
from __future__ import annotations

import math
import platform
import time

import numpy as np
import pytest
from numba import njit

from fast._fastexp import (exp2_terms, exp_array, fast_exp, fast_exp2_normal, fast_exp2_scan,
                           fast_sigmoid, fast_softplus, fast_softplus_grad)

#: (dtype, smallest x with a normal result, largest x with a finite result)
RANGES = {np.float32: (-87.33, 88.72), np.float64: (-708.39, 709.78)}


def ulp_error(approx, x):
    """|approx - e^x| in units of the last place of ``approx``'s dtype."""
    exact = np.exp(x.astype(np.longdouble))
    spacing = np.spacing(np.abs(exact).astype(approx.dtype)).astype(np.longdouble)
    return np.abs(approx.astype(np.longdouble) - exact) / spacing


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_at_most_two_ulp_on_the_normal_range(dtype):
    lo, hi = RANGES[dtype]
    x = np.concatenate([np.linspace(lo + 1e-3, hi - 1e-3, 400_001),  # the whole range
                        np.linspace(-20.0, 0.0, 200_001),  # where the scan lives
                        np.linspace(-1e-3, 1e-3, 2001)]).astype(dtype)
    err = ulp_error(exp_array(x), x)
    assert float(err.max()) <= 2.0, f"max error {float(err.max()):.2f} ulp"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_relative_error_is_float_rounding(dtype):
    rng = np.random.default_rng(1)
    x = rng.uniform(-30, 5, 100_000).astype(dtype)
    rel = np.abs(exp_array(x) / np.exp(x.astype(np.longdouble)) - 1)
    assert float(rel.max()) < 2.5 * np.finfo(dtype).eps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_edges_underflow_overflow_nan(dtype):
    lo, hi = RANGES[dtype]
    tiny = np.finfo(dtype).tiny
    x = np.array([lo - 0.5, lo - 50, -1e30, -np.inf, hi + 0.5, 1e30, np.inf, np.nan,
                  0.0, -0.0], dtype=dtype)
    y = exp_array(x)
    np.testing.assert_array_equal(y[:4], 0.0)  # below the normal range: flushed to 0
    np.testing.assert_array_equal(y[4:7], np.inf)
    assert np.isnan(y[7])
    np.testing.assert_array_equal(y[8:], 1.0)
    # just inside the normal range the result is normal and accurate
    x_in = np.array([lo + 1e-3, hi - 1e-3], dtype=dtype)
    y_in = exp_array(x_in)
    assert np.all(y_in >= tiny) and np.all(np.isfinite(y_in))
    assert float(ulp_error(y_in, x_in).max()) <= 2.0
    # subnormal results of np.exp are flushed: absolute error below the smallest normal
    x_sub = np.linspace(lo - 15, lo - 0.01, 1001).astype(dtype)
    assert float(np.abs(exp_array(x_sub) - np.exp(x_sub)).max()) <= tiny


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clamped_variant_used_by_the_kernels(dtype):
    lo, _ = RANGES[dtype]
    x = np.concatenate([np.linspace(lo + 1e-3, 80.0, 200_001), [lo - 1, -1e4]]).astype(dtype)
    y = exp_array(x, clamped=True)
    assert float(ulp_error(y[:-2], x[:-2]).max()) <= 2.0
    # below the normal range it returns e^lo (the smallest normal numbers), never garbage
    assert np.all(y[-2:] > 0) and np.all(y[-2:] <= 1.01 * np.finfo(dtype).tiny)


def test_libm_and_fast_agree_and_dtype_is_kept():
    x = np.linspace(-50, 50, 10_001)
    for dtype in (np.float32, np.float64):
        fast, libm = exp_array(x.astype(dtype)), exp_array(x.astype(dtype), libm=True)
        assert fast.dtype == libm.dtype == dtype
        assert float(np.max(np.abs(fast / libm - 1))) < 4 * np.finfo(dtype).eps


def test_exp_array_refuses_other_dtypes():
    with pytest.raises(TypeError, match="Parameter x has dtype int64"):
        exp_array(np.arange(3))


@njit(fastmath=True, error_model="numpy")
def _softplus_sigmoid(x, sp, sg):
    for i in range(x.size):
        sp[i] = fast_softplus(x[i])
        sg[i] = fast_sigmoid(x[i])


def _exact_softplus_sigmoid(x):
    """softplus (PyTorch's: linear above 20) and sigmoid of ``x`` in extended precision."""
    xl = x.astype(np.longdouble)
    return np.where(xl > 20, xl, np.log1p(np.exp(np.minimum(xl, 20)))), 1 / (1 + np.exp(-xl))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_and_sigmoid(dtype):
    x = np.concatenate([np.linspace(-60, 60, 20_001), [19.999, 20.0, 20.001, 1e-8, -1e-8]])
    x = x.astype(dtype)
    sp, sg = np.empty_like(x), np.empty_like(x)
    _softplus_sigmoid(x, sp, sg)
    sp_ref, sg_ref = _exact_softplus_sigmoid(x)
    eps = np.finfo(dtype).eps
    assert float(np.max(np.abs(sp / sp_ref - 1))) < 4 * eps
    assert float(np.max(np.abs(sg / sg_ref - 1))) < 4 * eps
    np.testing.assert_array_equal(sp[x > 20], x[x > 20])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_and_sigmoid_edges(dtype):
    """No edge selects inside: NaN and inf still come back right, and far below the normal
    range of e^x the results are off by less than twice the smallest normal number."""
    tiny = 2 * np.finfo(dtype).tiny
    far = -700.0 if dtype == np.float32 else -1e4
    x = np.array([np.nan, np.inf, -np.inf, -87.0, -90.0, -103.0, -750.0, far, 88.5, 1e30],
                 dtype)
    sp, sg = np.empty_like(x), np.empty_like(x)
    _softplus_sigmoid(x, sp, sg)
    assert np.isnan(sp[0]) and np.isnan(sg[0])
    assert sp[1] == np.inf and sg[1] == 1.0
    assert sp[2] >= 0 and sp[2] <= tiny and sg[2] >= 0 and sg[2] <= tiny
    sp_ref, sg_ref = _exact_softplus_sigmoid(x[3:])
    assert np.all(np.abs(sp[3:] - sp_ref) <= np.maximum(tiny, 4 * np.finfo(dtype).eps * sp_ref))
    assert np.all(np.abs(sg[3:] - sg_ref) <= np.maximum(tiny, 4 * np.finfo(dtype).eps * sg_ref))


@njit(fastmath=True, error_model="numpy")
def _softplus_grad(x, sp, g):
    for i in range(x.size):
        sp[i], g[i] = fast_softplus_grad(x[i])


def _exact_softplus_grad(x):
    """softplus's derivative (PyTorch's: 1 above 20) in extended precision."""
    xl = x.astype(np.longdouble)
    return np.where(xl > 20, 1, 1 / (1 + np.exp(-np.minimum(xl, 20))))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_grad_is_softplus_and_its_derivative(dtype):
    x = np.concatenate([np.linspace(-60, 60, 20_001), [19.999, 20.0, 20.001, 1e-8, -1e-8, 0.0],
                        [np.nan, np.inf, -np.inf, -90.0, -750.0, 1e30]]).astype(dtype)
    sp, g, sp_alone, sg = (np.empty_like(x) for _ in range(4))
    _softplus_grad(x, sp, g)
    _softplus_sigmoid(x, sp_alone, sg)
    finite = np.isfinite(x)
    # fast_softplus's value (to an ulp: LLVM may contract a multiply-add differently here)
    np.testing.assert_allclose(sp[finite], sp_alone[finite], rtol=2 * np.finfo(dtype).eps)
    tiny = 2 * np.finfo(dtype).tiny
    sp_ref, _ = _exact_softplus_sigmoid(x[finite])
    assert np.all(np.abs(sp[finite] - sp_ref) <= np.maximum(tiny, 4 * np.finfo(dtype).eps * sp_ref))
    want = _exact_softplus_grad(x[finite])
    assert np.all(np.abs(g[finite] - want) <= np.maximum(tiny, 4 * np.finfo(dtype).eps * want))
    np.testing.assert_array_equal(g[x > 20], 1)
    assert np.isnan(g[np.isnan(x)]).all() and np.isnan(sp[np.isnan(x)]).all()
    assert g[x == np.inf] == 1 and 0 <= g[x == -np.inf] <= tiny
    # the Python version (NumPy) agrees
    sp_np, g_np = fast_softplus_grad(x)
    np.testing.assert_allclose(g_np[finite], want, rtol=4 * np.finfo(dtype).eps, atol=tiny)
    np.testing.assert_allclose(sp_np, sp, rtol=4 * np.finfo(dtype).eps, atol=tiny)


def test_python_fallbacks_are_numpy():
    assert fast_exp(np.float64(1.0)) == np.exp(1.0)
    assert float(fast_softplus(np.float64(30.0))) == 30.0
    assert float(fast_sigmoid(np.float64(0.0))) == 0.5


@njit(fastmath=True, error_model="numpy")
def _serial_fast(x, out):
    for i in range(x.size):
        out[i] = fast_exp(x[i])


@njit(fastmath=True, error_model="numpy")
def _serial_libm(x, out):
    for i in range(x.size):
        out[i] = math.exp(x[i])


def test_vectorized_exp_is_faster_than_libm():
    """A loose micro-benchmark on one thread (not a timing target): why the module exists."""
    x = np.random.default_rng(0).uniform(-20, 0, 1 << 18).astype(np.float32)
    out = np.empty_like(x)

    def best(kernel):
        kernel(x, out)  # compile
        times = []
        for _ in range(7):
            t = time.perf_counter()
            kernel(x, out)
            times.append(time.perf_counter() - t)
        return min(times)

    assert best(_serial_fast) < best(_serial_libm)


@njit(fastmath={"contract", "reassoc", "nsz", "arcp"}, error_model="numpy")
def _exp_sigmoid_64(x, out):  # the kernels' fastmath flags
    for i in range(x.size):
        out[i] = fast_exp(x[i]) + fast_sigmoid(x[i])


def test_float64_exp_converts_k_without_scalar_instructions():
    """k reaches the exponent bits by vector instructions.  ``int64(k)`` of a float64 has a
    vector form only with AVX-512 (``vcvttpd2qq``); without it (AVX2) LLVM converted lane
    by lane with ``vcvttsd2si``, a quarter of the float64 exponential's instructions."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("an x86 instruction is looked for")
    x = np.zeros(64)
    _exp_sigmoid_64(x, np.empty_like(x))
    asm = "\n".join(_exp_sigmoid_64.inspect_asm().values())
    assert "pd" in asm  # packed double: the loop is vectorized
    assert "cvttsd2si" not in asm and "cvtsd2si" not in asm


@njit(fastmath={"contract", "reassoc", "nsz", "arcp"}, error_model="numpy")
def _exp2_both(x, scan, normal):  # the kernels' fastmath flags
    for i in range(x.size):
        scan[i] = fast_exp2_scan(x[i])
        normal[i] = fast_exp2_normal(x[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scan_exp2_ulp_bound_and_flush_to_zero(dtype):
    """The scan kernels' 2^x: within 2 ulp (float32: degree 5, the bound documented for CUDA's
    exp2f) or 1 ulp (float64) where normal, exactly 0 below 2^-(emin + 1/2)."""
    emin = 126 if dtype == np.float32 else 1022
    x = np.concatenate([np.linspace(-emin + 1, 0, 400_001),
                        -np.logspace(-30, 0, 1001)]).astype(dtype)
    scan, normal = np.empty_like(x), np.empty_like(x)
    _exp2_both(x, scan, normal)
    exact = np.exp2(x.astype(np.longdouble))
    ulp = np.abs(scan.astype(np.longdouble) - exact) / np.spacing(
        exact.astype(dtype)).astype(np.longdouble)
    assert float(ulp.max()) <= (2.0 if dtype == np.float32 else 1.0)
    assert float(ulp.mean()) <= 0.75  # most results within one rounding of the exact value
    assert np.all(scan[x == 0] == 1.0) and np.all(scan[x == -1] == 0.5)  # exact at integers
    ok = x >= -125  # the unclamped variant's range: the same numbers
    assert np.array_equal(normal[ok], scan[ok])
    low = np.array([-emin - 0.6, -emin - 1, -emin - 100, -1e30, -np.finfo(dtype).max], dtype)
    out_low, _ = np.empty_like(low), np.empty_like(low)
    _exp2_both(low, out_low, _)
    assert np.all(out_low == 0.0)
    assert np.array_equal(fast_exp2_scan(low), out_low)  # the Python version agrees


@njit(fastmath={"contract", "reassoc", "nsz", "arcp"}, error_model="numpy")
def _exp2_with_terms(x, terms, scan, normal):  # the kernels' fastmath flags, run-time constants
    for i in range(x.size):
        scan[i] = fast_exp2_scan(x[i], terms)
        normal[i] = fast_exp2_normal(x[i], terms)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp2_with_run_time_terms_is_bit_for_bit_the_same(dtype):
    """exp2_terms handed in as an argument: the same numbers as the built-in constants
    (the kernels' fastmath flags could only change them by reassociating the shifter)."""
    emin = 126 if dtype == np.float32 else 1022
    x = np.concatenate([np.linspace(-emin - 3, 0, 200_001), [-1e30, -0.0]]).astype(dtype)
    scan, normal = np.empty_like(x), np.empty_like(x)
    _exp2_both(x, scan, normal)
    scan_t, normal_t = np.empty_like(x), np.empty_like(x)
    _exp2_with_terms(x, exp2_terms(dtype), scan_t, normal_t)
    assert np.array_equal(scan_t, scan)
    ok = x >= -125
    assert np.array_equal(normal_t[ok], normal[ok])
    terms = exp2_terms(dtype)
    assert len(terms) == (8 if dtype == np.float32 else 14)  # 2 + degree 5 or 11 + 1
    assert all(type(t) is np.dtype(dtype).type for t in terms)


def test_exp2_terms_of_another_dtype_do_not_compile():
    """Terms of the other float width (or a wrong count) match no overload: a typing error,
    not a silent conversion."""
    from numba.core.errors import TypingError  # noqa: PLC0415
    x = np.zeros(4, np.float32)
    with pytest.raises(TypingError):
        _exp2_with_terms(x, exp2_terms(np.float64), np.empty_like(x), np.empty_like(x))
    with pytest.raises(TypingError):
        _exp2_with_terms(x, exp2_terms(np.float32)[:-1], np.empty_like(x), np.empty_like(x))
