"""The scan algorithms of ssm_ref.scans against the sequential loop and each other.

Oracles: a plain Python loop (for the sequential scan itself), the sequential
scan in float64 (for every other algorithm), closed forms for the work/depth
counts, and a NumPy loop of a selective-scan channel (for the link to Mamba).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ssm_ref as sr
from conftest import assert_close

LENGTHS = [1, 2, 3, 7, 8, 64, 100, 1000]
LEAD = (2, 3)  # batched leading dims
PARALLEL = ["hillis_steele", "blelloch", "chunked", "logspace"]


def make_inputs(rng, lead, L, dtype, with_h0):
    """Stable random recurrence: |a| in [0.5, 1), b ~ N(0, 1) (complex if asked)."""
    a = rng.uniform(0.5, 1.0, lead + (L,))
    b = rng.normal(size=lead + (L,))
    h0 = rng.normal(size=lead) if with_h0 else None
    if np.dtype(dtype).kind == "c":
        a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, a.shape))
        b = b + 1j * rng.normal(size=b.shape)
        if with_h0:
            h0 = h0 + 1j * rng.normal(size=lead)
    a, b = a.astype(dtype), b.astype(dtype)
    h0 = None if h0 is None else h0.astype(dtype)
    return a, b, h0


def reference(a, b, h0):
    """float64 / complex128 sequential scan of the (possibly rounded) inputs."""
    up = np.complex128 if np.iscomplexobj(a) else np.float64
    return sr.scan_sequential(a.astype(up), b.astype(up),
                              None if h0 is None else h0.astype(up))


# --------------------------------------------------------------------------
# the sequential scan against a plain Python loop
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_sequential_matches_python_loop(rng, dtype):
    a, b, h0 = make_inputs(rng, (3,), 50, dtype, with_h0=True)
    expected = np.empty_like(b)
    for i in range(3):
        h = complex(h0[i]) if np.iscomplexobj(a) else float(h0[i])
        for t in range(50):
            h = a[i, t] * h + b[i, t]
            expected[i, t] = h
    assert_close(sr.scan_sequential(a, b, h0), expected, "exact")


def test_sequential_zero_h0_equals_no_h0(rng):
    a, b, _ = make_inputs(rng, LEAD, 20, np.float64, False)
    assert_close(sr.scan_sequential(a, b, np.zeros(LEAD)), sr.scan_sequential(a, b))


# --------------------------------------------------------------------------
# every algorithm equals the sequential one
# --------------------------------------------------------------------------
@pytest.mark.parametrize("with_h0", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128, np.float32, np.complex64])
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("method", PARALLEL)
def test_method_equals_sequential(rng, method, L, dtype, with_h0):
    a, b, h0 = make_inputs(rng, LEAD, L, dtype, with_h0)
    h = sr.scan(a, b, h0, method=method)
    assert h.dtype == np.dtype(dtype), f"{method}: {dtype} in, {h.dtype} out"
    assert h.shape == LEAD + (L,)
    assert_close(h, reference(a, b, h0), "exact", dtype=dtype, err_msg=f"{method} L={L}")


@pytest.mark.parametrize("method", ["sequential"] + PARALLEL)
def test_one_dimensional_input_and_scalar_h0(rng, method):
    a, b, _ = make_inputs(rng, (), 9, np.float64, False)
    h = sr.scan(a, b, 2.5, method=method)
    assert h.shape == (9,)
    assert_close(h, sr.scan_sequential(a, b, np.float64(2.5)))


@pytest.mark.parametrize("method", ["sequential"] + PARALLEL)
def test_mixed_dtypes_follow_result_type(rng, method):
    a, b, _ = make_inputs(rng, (2,), 10, np.float32, False)
    bc = (b + 1j * b).astype(np.complex64)
    h = sr.scan(a, bc, method=method)
    assert h.dtype == np.complex64
    assert_close(h, reference(a.astype(np.complex64), bc, None), "exact", dtype=np.complex64)


def test_inputs_not_modified(rng):
    a, b, h0 = make_inputs(rng, LEAD, 13, np.float64, True)
    copies = [a.copy(), b.copy(), h0.copy()]
    for method in ["sequential"] + PARALLEL:
        sr.scan(a, b, h0, method=method)
    for original, copy in zip((a, b, h0), copies):
        np.testing.assert_array_equal(original, copy)


@pytest.mark.parametrize("variant", ["segsum", "logsumexp"])
@pytest.mark.parametrize("L", [1, 7, 64, 100, 1000])
def test_logspace_variants_equal_sequential(rng, variant, L):
    # logsumexp needs real a > 0; b of both signs exercises the sign split
    a, b, h0 = make_inputs(rng, LEAD, L, np.float64, True)
    assert_close(sr.scan_logspace(a, b, h0, variant=variant), reference(a, b, h0),
                 "exact", err_msg=variant)


@pytest.mark.parametrize("block_size", [1, 5, 64, 128])
@pytest.mark.parametrize("dtype", [np.complex128, np.float32])
def test_logspace_segsum_blocks_and_dtypes(rng, block_size, dtype):
    a, b, h0 = make_inputs(rng, LEAD, 100, dtype, True)
    h = sr.scan_logspace(a, b, h0, variant="segsum", block_size=block_size)
    assert h.dtype == np.dtype(dtype)
    assert_close(h, reference(a, b, h0), "exact", dtype=dtype)


# --------------------------------------------------------------------------
# the associative operator
# --------------------------------------------------------------------------
finite = st.floats(min_value=-10, max_value=10, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.tuples(*[finite] * 6))
def test_combine_is_associative(values):
    a1, b1, a2, b2, a3, b3 = (np.float64(v) for v in values)
    x, y, z = (a1, b1), (a2, b2), (a3, b3)
    left = sr.scan_combine(sr.scan_combine(x, y), z)
    right = sr.scan_combine(x, sr.scan_combine(y, z))
    assert_close(np.array(left), np.array(right), "exact")
    # both bracketings are the closed form of the composed affine map
    closed = (a3 * a2 * a1, a3 * a2 * b1 + a3 * b2 + b3)
    assert_close(np.array(left), np.array(closed), "exact")


def test_combine_is_composition_identity_and_not_commutative(rng):
    x = (rng.normal(size=5), rng.normal(size=5))
    y = (rng.normal(size=5), rng.normal(size=5))
    h = rng.normal(size=5)
    a, b = sr.scan_combine(x, y)
    assert_close(a * h + b, y[0] * (x[0] * h + x[1]) + y[1])  # first x, then y
    identity = (np.ones(5), np.zeros(5))
    for got in (sr.scan_combine(identity, x), sr.scan_combine(x, identity)):
        assert_close(got[0], x[0])
        assert_close(got[1], x[1])
    assert sr.scan_combine((2.0, 1.0), (3.0, 4.0)) == (6.0, 7.0)
    assert sr.scan_combine((3.0, 4.0), (2.0, 1.0)) == (6.0, 9.0)  # order matters


def test_combine_folds_to_the_scan(rng):
    a, b, _ = make_inputs(rng, (), 12, np.complex128, False)
    acc = (1.0 + 0j, 0j)  # identity
    states = []
    for t in range(12):
        acc = sr.scan_combine(acc, (a[t], b[t]))
        states.append(acc[1])
    assert_close(np.array(states), sr.scan_sequential(a, b))


def test_combine_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        sr.scan_combine((np.ones(3), np.ones(3)), (np.ones(4), np.ones(4)))
    with pytest.raises(ValueError, match="pair"):
        sr.scan_combine((1.0, 2.0, 3.0), (1.0, 2.0))


# --------------------------------------------------------------------------
# work and depth against the closed forms
# --------------------------------------------------------------------------
ALL_L = list(range(1, 70)) + [100, 127, 128, 129, 1000, 1024, 1025]


@pytest.mark.parametrize("L", ALL_L)
def test_hillis_steele_work_and_depth(L):
    _, stats = sr.scan_hillis_steele(np.full(L, 0.9), np.ones(L), return_stats=True)
    depth = math.ceil(math.log2(L)) if L > 1 else 0
    work = sum(L - 2 ** k for k in range(depth))
    assert stats == dict(work=work, depth=depth)
    assert stats["work"] <= L * max(depth, 1)


@pytest.mark.parametrize("L", ALL_L)
def test_blelloch_work_and_depth(L):
    _, stats = sr.scan_blelloch(np.full(L, 0.9), np.ones(L), return_stats=True)
    n = 2 ** math.ceil(math.log2(L)) if L > 1 else 1
    assert stats["n"] == n and n >= L and (n == 1 or n // 2 < L)
    assert stats["work"] <= 2 * (n - 1)
    assert stats["work"] == 2 * (n - 1)  # every level of both sweeps is full
    assert stats["depth"] == 2 * int(math.log2(n))
    assert stats["work"] < 4 * L  # work-efficient: O(L)


def test_blelloch_does_less_work_than_hillis_steele_for_long_inputs():
    L = 4096
    _, hs = sr.scan_hillis_steele(np.full(L, 0.9), np.ones(L), return_stats=True)
    _, bl = sr.scan_blelloch(np.full(L, 0.9), np.ones(L), return_stats=True)
    assert bl["work"] < hs["work"] / 5 and hs["depth"] < bl["depth"]


# --------------------------------------------------------------------------
# the chunked scan
# --------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 10, 25, 64, 100, 150])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_chunked_any_chunk_size(rng, chunk_size, dtype):
    L = 100  # divisible by 1, 10, 25, 100; not by 3, 7, 64, 150
    a, b, h0 = make_inputs(rng, LEAD, L, dtype, True)
    h, states = sr.scan_chunked(a, b, h0, chunk_size=chunk_size, return_chunk_states=True)
    expected = reference(a, b, h0)
    assert_close(h, expected, "exact", err_msg=f"T={chunk_size}")
    n_chunks = -(-L // chunk_size)
    ends = [min((c + 1) * chunk_size, L) - 1 for c in range(n_chunks)]
    assert states.shape == LEAD + (n_chunks,) and states.dtype == np.dtype(dtype)
    assert_close(states, expected[..., ends], "exact")
    assert_close(states[..., -1], expected[..., -1], "exact")  # the last state


def test_chunked_states_float32(rng):
    a, b, h0 = make_inputs(rng, LEAD, 50, np.float32, True)
    h, states = sr.scan_chunked(a, b, h0, chunk_size=16, return_chunk_states=True)
    assert h.dtype == states.dtype == np.float32
    assert_close(states, reference(a, b, h0)[..., [15, 31, 47, 49]], "exact", dtype=np.float32)


# --------------------------------------------------------------------------
# the log-space form: where it holds and where it breaks
# --------------------------------------------------------------------------
def test_logspace_breaks_at_a_half_L_2000():
    a, b = np.full(2000, 0.5), np.ones(2000)
    expected = sr.scan_sequential(a, b)
    assert np.all(np.isfinite(expected))  # the true states stay below 2
    with pytest.warns(RuntimeWarning, match="non-finite"):
        h = sr.scan_logspace(a, b)
    assert not np.all(np.isfinite(h))
    # ... and every other method and variant is fine there
    for method in ["hillis_steele", "blelloch", "chunked"]:
        assert_close(sr.scan(a, b, method=method), expected, "exact")
    for variant in ["segsum", "logsumexp"]:
        assert_close(sr.scan_logspace(a, b, variant=variant), expected, "exact")


@pytest.mark.parametrize("r", [0.5, 0.9, 0.99])
def test_logspace_breaks_where_cumlog_leaves_the_float_range(rng, r):
    """Claim: naive is non-finite from the first t with |log P_t| + log|h_t| > 709.78.

    (cumsum(b / P)_t = h_t / P_t is the first quantity to overflow.)
    """
    log_max = np.log(np.finfo(np.float64).max)  # 709.78
    L = int(1.2 * log_max / -np.log(r))
    a, b = np.full(L, r), rng.uniform(1.0, 2.0, L)
    expected = sr.scan_sequential(a, b)
    assert np.all(np.isfinite(expected)) and np.all(expected > 0)
    log_P = np.arange(1, L + 1) * np.log(r)  # exact log P_t
    predicted = int(np.argmax(-log_P + np.log(expected) > log_max))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        h = sr.scan_logspace(a, b)
    first_bad = int(np.argmin(np.isfinite(h)))
    assert not np.isfinite(h[first_bad])
    assert abs(first_bad - predicted) <= 1, (first_bad, predicted)
    # before the edge the naive form is accurate
    assert_close(h[:predicted - 1], expected[:predicted - 1], "exact")


def test_logspace_complex_a_breaks_too(rng):
    a = 0.5 * np.exp(0.3j * np.ones(2000))
    b = rng.normal(size=2000) + 0j
    with pytest.warns(RuntimeWarning):
        h = sr.scan_logspace(a, b)
    assert not np.all(np.isfinite(h))
    assert_close(h[:1000], sr.scan_sequential(a, b)[:1000], "exact")
    assert_close(sr.scan_logspace(a, b, variant="segsum"), sr.scan_sequential(a, b), "exact")


def test_logspace_naive_fails_on_zero_a_segsum_does_not(rng):
    a = rng.uniform(0.5, 1.0, 40)
    a[[5, 17]] = 0.0  # the state is reset there
    b = rng.normal(size=40)
    expected = sr.scan_sequential(a, b, 3.0)
    with pytest.warns(RuntimeWarning):
        naive = sr.scan_logspace(a, b, 3.0)
    assert not np.all(np.isfinite(naive))
    assert_close(sr.scan_logspace(a, b, 3.0, variant="segsum", block_size=8), expected, "exact")


def test_logspace_negative_a_through_complex_log(rng):
    a = rng.uniform(0.5, 1.0, (3, 60)) * rng.choice([-1.0, 1.0], (3, 60))
    b = rng.normal(size=(3, 60))
    expected = sr.scan_sequential(a, b)
    for variant in ["naive", "segsum"]:
        h = sr.scan_logspace(a, b, variant=variant)
        assert h.dtype == np.float64  # real in, real out
        assert_close(h, expected, "exact", err_msg=variant)


def test_logspace_stable_variants_on_long_sequences(rng):
    """Claim: segsum and logsumexp stay accurate far beyond the naive limit."""
    L = 20000
    a = rng.uniform(0.3, 0.9, L)  # |sum log a| ~ 7000, ten times the float range
    b = rng.uniform(0.0, 1.0, L)  # b >= 0: logsumexp needs no sign split
    expected = sr.scan_sequential(a, b, 1.0)
    assert_close(sr.scan_logspace(a, b, 1.0, variant="segsum"), expected, "exact")
    assert_close(sr.scan_logspace(a, b, 1.0, variant="logsumexp"), expected, "exact")
    with pytest.warns(RuntimeWarning):
        assert not np.all(np.isfinite(sr.scan_logspace(a, b, 1.0)))


# --------------------------------------------------------------------------
# the link to Mamba: a selective-scan channel is this recurrence
# --------------------------------------------------------------------------
def selective_scan_oracle(u, delta, A, Bmat, C):
    """NumPy loop: h = exp(delta A) h + delta B u, y = <C, h> (variable B, C)."""
    batch, D, L = u.shape
    N = A.shape[1]
    y = np.zeros((batch, D, L))
    for i in range(batch):
        for d in range(D):
            h = np.zeros(N)
            for t in range(L):
                h = np.exp(delta[i, d, t] * A[d]) * h + delta[i, d, t] * Bmat[i, :, t] * u[i, d, t]
                y[i, d, t] = C[i, :, t] @ h
    return y


@pytest.mark.parametrize("method", ["sequential"] + PARALLEL)
def test_recurrence_reproduces_selective_scan_channel(rng, method):
    batch, D, L, N = 2, 3, 37, 4
    u = rng.normal(size=(batch, D, L))
    delta = rng.uniform(0.01, 0.5, (batch, D, L))
    A = -rng.uniform(0.5, 4.0, (D, N))
    Bmat = rng.normal(size=(batch, N, L))
    C = rng.normal(size=(batch, N, L))
    a = np.exp(delta[:, :, None, :] * A[None, :, :, None])  # (B, D, N, L)
    b = delta[:, :, None, :] * Bmat[:, None, :, :] * u[:, :, None, :]  # (B, D, N, L)
    h = sr.scan(a, b, method=method)  # (B, D, N, L)
    y = np.einsum("bdnl,bnl->bdl", h, C)  # (B, D, L)
    assert_close(y, selective_scan_oracle(u, delta, A, Bmat, C), "exact")
    if hasattr(sr, "selective_scan"):  # and the library's own selective scan
        assert_close(y, sr.selective_scan(u, delta, A, Bmat, C), "exact")


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------
ALL_FUNCS = [sr.scan_sequential, sr.scan_hillis_steele, sr.scan_blelloch,
             sr.scan_chunked, sr.scan_logspace]


@pytest.mark.parametrize("func", ALL_FUNCS, ids=lambda f: f.__name__)
def test_bad_shapes_and_values(func):
    a, b = np.full((2, 5), 0.5), np.ones((2, 5))
    with pytest.raises(ValueError, match=r"b has shape \(5,\) but should be \(2, 5\)"):
        func(a, np.ones(5))  # no silent broadcasting
    with pytest.raises(ValueError, match=r"h0 has shape \(5,\) but should be \(2,\)"):
        func(a, b, np.zeros(5))
    with pytest.raises(ValueError, match=r"h0 has shape \(2, 1\)"):
        func(a, b, np.zeros((2, 1)))
    with pytest.raises(ValueError, match="L >= 1"):
        func(np.ones((2, 0)), np.ones((2, 0)))
    with pytest.raises(ValueError, match="0-D"):
        func(0.5, 1.0)
    bad = a.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="a has 1 non-finite"):
        func(bad, b)
    with pytest.raises(ValueError, match="b has 1 non-finite"):
        func(a, np.where(bad != bad, np.inf, b))
    with pytest.raises(ValueError, match="h0 has 1 non-finite"):
        func(a, b, np.array([0.0, np.inf]))
    with pytest.raises(TypeError, match="Parameter a has dtype"):
        func(np.array([["x"] * 5] * 2), b)


@pytest.mark.parametrize("chunk_size, error", [(0, ValueError), (-3, ValueError),
                                               (2.5, TypeError), (True, TypeError),
                                               ("8", TypeError)])
def test_bad_chunk_size(chunk_size, error):
    with pytest.raises(error, match="chunk_size"):
        sr.scan_chunked(np.full(5, 0.5), np.ones(5), chunk_size=chunk_size)


def test_bad_method_variant_and_options():
    a, b = np.full(5, 0.5), np.ones(5)
    with pytest.raises(ValueError, match="method = 'kogge_stone' is not one of"):
        sr.scan(a, b, method="kogge_stone")
    with pytest.raises(ValueError, match="variant = 'exact' is not one of"):
        sr.scan_logspace(a, b, variant="exact")
    with pytest.raises(ValueError, match="block_size"):
        sr.scan_logspace(a, b, variant="segsum", block_size=0)
    with pytest.raises(TypeError):
        sr.scan(a, b, method="sequential", chunk_size=4)  # option it does not take
    with pytest.raises(ValueError, match="a > 0"):
        sr.scan_logspace(-a, b, variant="logsumexp")
    with pytest.raises(ValueError, match="complex"):
        sr.scan_logspace(a + 0j, b, variant="logsumexp")


def test_dispatcher_passes_options(rng):
    a, b, h0 = make_inputs(rng, LEAD, 20, np.float64, True)
    h, stats = sr.scan(a, b, h0, method="blelloch", return_stats=True)
    assert stats["n"] == 32
    h2, states = sr.scan(a, b, h0, method="chunked", chunk_size=6, return_chunk_states=True)
    assert states.shape == LEAD + (4,)
    assert_close(h, h2)
