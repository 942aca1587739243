"""Structured initializations: HiPPO-LegS, its NPLR/DPLR forms, S4D, Mamba's A_log,
and HiPPO's online memory with its Legendre reconstruction.

Oracles: the papers' formulas and small hard-coded facts, the definition of the
LegS projection computed by Gauss-Legendre quadrature (independent of the
matrices), numpy.linalg.eigvals, numpy.polynomial.legendre.
"""
import numpy as np
import pytest
from conftest import assert_close
from numpy.polynomial import legendre as npleg

from ssm_ref import (
    hippo_legs,
    hippo_legs_diagonalized,
    hippo_legs_memory,
    hippo_legs_nplr,
    legendre_reconstruct,
    mamba_a_log,
    s4d_inv,
    s4d_lin,
    s4d_real,
)

SIZES = [1, 2, 3, 8, 17]


def legs_projection(f, t, N, nodes=200):
    """Exact LegS coefficients c_n(t) = (1/t) ∫_0^t f(s) sqrt(2n+1) P_n(2s/t - 1) ds."""
    x, w = npleg.leggauss(nodes)  # on [-1, 1]
    s = (x + 1) * t / 2
    fs = f(s)
    return np.array([0.5 * np.sum(w * fs * np.sqrt(2 * n + 1) * npleg.legval(x, np.eye(N)[n]))
                     for n in range(N)])


def smooth(s):
    return np.sin(6 * s) + np.cos(15 * s ** 2)


# ---------------------------------------------------------------------------
# HiPPO-LegS
# ---------------------------------------------------------------------------
def test_hippo_legs_n3_facts():
    A, B = hippo_legs(3)
    r3, r5, r15 = np.sqrt(3), np.sqrt(5), np.sqrt(15)
    expected_A = np.array([[-1, 0, 0], [-r3, -2, 0], [-r5, -r15, -3]])
    assert_close(A, expected_A)
    assert_close(B, np.array([1, r3, r5]))
    assert A.dtype == np.float64 and B.dtype == np.float64


@pytest.mark.parametrize("N", SIZES)
def test_hippo_legs_entries_and_triangular(N):
    A, B = hippo_legs(N)
    assert A.shape == (N, N) and B.shape == (N,)
    assert np.all(np.triu(A, 1) == 0), "HiPPO-LegS A must be lower triangular"
    for n in range(N):
        assert A[n, n] == -(n + 1)
        assert np.isclose(B[n], np.sqrt(2 * n + 1), rtol=1e-15)
        for k in range(n):
            assert np.isclose(A[n, k], -np.sqrt((2 * n + 1) * (2 * k + 1)), rtol=1e-15)
    # eigenvalues of a triangular matrix: its diagonal -1..-N (stable)
    assert_close(np.sort(np.linalg.eigvals(A).real), -np.arange(N, 0, -1.0))


@pytest.mark.parametrize("t", [0.7, 1.3])
def test_hippo_legs_is_the_derivative_of_the_legendre_projection(t):
    """d/dt c(t) = (1/t)(A c + B f(t)) for the exact projection c(t) (HiPPO's theorem)."""
    N, h = 6, 2e-5
    A, B = hippo_legs(N)
    dc = (legs_projection(smooth, t + h, N) - legs_projection(smooth, t - h, N)) / (2 * h)
    rhs = (A @ legs_projection(smooth, t, N) + B * smooth(t)) / t
    assert_close(dc, rhs, kind="fd")


# ---------------------------------------------------------------------------
# NPLR and DPLR
# ---------------------------------------------------------------------------
def test_nplr_n3_facts():
    A_normal, P, B = hippo_legs_nplr(3)
    assert_close(P, np.sqrt([0.5, 1.5, 2.5]))
    r3, r5, r15 = np.sqrt(3), np.sqrt(5), np.sqrt(15)
    expected = np.array([[-0.5, r3 / 2, r5 / 2], [-r3 / 2, -0.5, r15 / 2], [-r5 / 2, -r15 / 2, -0.5]])
    assert_close(A_normal, expected)
    assert_close(B, np.array([1, r3, r5]))


@pytest.mark.parametrize("N", SIZES)
def test_nplr_structure(N):
    A, _ = hippo_legs(N)
    A_normal, P, _ = hippo_legs_nplr(N)
    assert_close(A_normal - np.outer(P, P), A, err_msg="A = A_normal - P P^T")
    S = A_normal + 0.5 * np.eye(N)
    assert_close(S + S.T, np.zeros((N, N)), err_msg="S must be skew-symmetric")
    assert_close(A_normal @ A_normal.T, A_normal.T @ A_normal, err_msg="normality")
    eig = np.linalg.eigvals(A_normal)  # independent of our eigh-based route
    assert_close(eig.real, np.full(N, -0.5))


@pytest.mark.parametrize("N", SIZES)
def test_diagonalization(N):
    Lam, V = hippo_legs_diagonalized(N)
    A_normal, P, B = hippo_legs_nplr(N)
    A, _ = hippo_legs(N)
    assert Lam.shape == (N,) and V.shape == (N, N) and Lam.dtype == np.complex128
    assert_close(V.conj().T @ V, np.eye(N, dtype=complex), err_msg="V unitary")
    assert_close(V @ np.diag(Lam) @ V.conj().T, A_normal.astype(complex))
    assert_close(Lam.real, np.full(N, -0.5))
    eig = np.linalg.eigvals(A_normal)
    assert_close(np.sort(Lam.imag), np.sort(eig.imag), err_msg="vs numpy.linalg.eigvals")
    # conjugate pairs: the imaginary parts are symmetric about 0
    assert_close(np.sort(Lam.imag), -np.sort(Lam.imag)[::-1])
    # DPLR: A = V (Lambda - p p^H) V^H with p = V^H P
    p = V.conj().T @ P
    assert_close(V @ (np.diag(Lam) - np.outer(p, p.conj())) @ V.conj().T, A.astype(complex))


# ---------------------------------------------------------------------------
# S4D and Mamba
# ---------------------------------------------------------------------------
def test_s4d_facts():
    assert_close(s4d_lin(4), np.array([-0.5, -0.5 + 1j * np.pi]))
    assert_close(s4d_inv(4), np.array([-0.5 + 12j / np.pi, -0.5 + 4j / (3 * np.pi)]))
    assert_close(s4d_real(3), np.array([-1.0, -2.0, -3.0]))
    assert s4d_lin(4).dtype == np.complex128 and s4d_real(3).dtype == np.float64


@pytest.mark.parametrize("N", [2, 8, 64])
@pytest.mark.parametrize("init", [s4d_lin, s4d_inv])
def test_s4d_complex_conventions(N, init):
    half = init(N)
    full = init(N, conjugate_pairs=False)
    assert half.shape == (N // 2,) and full.shape == (N,)
    assert_close(full, np.concatenate([half, half.conj()]))
    assert_close(half.real, np.full(N // 2, -0.5))
    n = np.arange(N // 2)
    formula = np.pi * n if init is s4d_lin else (N / np.pi) * (N / (2 * n + 1) - 1)
    assert_close(half.imag, formula)


@pytest.mark.parametrize("N", [1, 5, 16])
def test_s4d_real_is_legs_diagonal(N):
    A, _ = hippo_legs(N)
    assert_close(s4d_real(N), np.diag(A))


@pytest.mark.parametrize("d_inner,d_state", [(1, 1), (3, 16), (8, 4)])
def test_mamba_a_log(d_inner, d_state):
    A_log = mamba_a_log(d_inner, d_state)
    assert A_log.shape == (d_inner, d_state) and A_log.dtype == np.float64
    assert_close(A_log, np.log(np.tile(np.arange(1.0, d_state + 1), (d_inner, 1))))
    assert_close(-np.exp(A_log), np.tile(s4d_real(d_state), (d_inner, 1)))


@pytest.mark.parametrize("fn", [hippo_legs, hippo_legs_nplr, hippo_legs_diagonalized, s4d_real,
                                s4d_lin, s4d_inv])
@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                     (True, TypeError), ("4", TypeError)])
def test_bad_N(fn, bad, exc):
    with pytest.raises(exc, match="N"):
        fn(bad)


@pytest.mark.parametrize("fn", [s4d_lin, s4d_inv])
def test_s4d_complex_odd_N(fn):
    with pytest.raises(ValueError, match="N = 5 must be even"):
        fn(5)


def test_mamba_a_log_bad():
    with pytest.raises(ValueError, match="d_inner"):
        mamba_a_log(0, 16)
    with pytest.raises(TypeError, match="d_state"):
        mamba_a_log(4, 16.0)


# ---------------------------------------------------------------------------
# HiPPO memory and reconstruction
# ---------------------------------------------------------------------------
def test_memory_of_constant_is_exact():
    c = hippo_legs_memory(np.full(50, 3.0), 6)
    assert_close(c, np.array([3.0, 0, 0, 0, 0, 0]))


def test_memory_converges_to_projection_second_order():
    N = 12
    exact = legs_projection(smooth, 1.0, N)
    errors = []
    Ls = [100, 200, 400, 800]
    for L in Ls:
        t = np.arange(1, L + 1) / L
        errors.append(np.max(np.abs(hippo_legs_memory(smooth(t), N) - exact)))
    slope = np.polyfit(np.log(Ls), np.log(errors), 1)[0]
    assert slope < -1.8, f"expected second order (slope -2), got {slope:.2f}; errors {errors}"
    assert errors[-1] < 1e-4


def test_memory_intermediate_times():
    """Every intermediate state is the projection of the history seen so far."""
    L, N = 400, 8
    t = np.arange(1, L + 1) / L
    hist = hippo_legs_memory(smooth(t), N, return_all=True)
    assert hist.shape == (L, N)
    for k in (99, 249):
        assert np.max(np.abs(hist[k] - legs_projection(smooth, t[k], N))) < 1e-3


def test_reconstruction_error_decreases_with_N():
    L = 1000
    t = np.arange(1, L + 1) / L
    s = np.linspace(0, 1, 301)
    errs = []
    for N in (4, 8, 16, 32):
        c = hippo_legs_memory(smooth(t), N)
        errs.append(np.sqrt(np.mean((legendre_reconstruct(c, s) - smooth(s)) ** 2)))
    assert all(e2 < e1 for e1, e2 in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-3, errs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_memory_batch_and_dtype(rng, dtype):
    u = rng.standard_normal((2, 3, 40)).astype(dtype)
    out = hippo_legs_memory(u, 5)
    hist = hippo_legs_memory(u, 5, return_all=True)
    assert out.shape == (2, 3, 5) and out.dtype == dtype
    assert hist.shape == (2, 3, 40, 5) and hist.dtype == dtype
    for i in range(2):
        for j in range(3):
            assert_close(out[i, j], hippo_legs_memory(u[i, j], 5))
    assert_close(hist[..., -1, :], out)


def test_reconstruct_polynomials_exactly():
    """A polynomial of degree < N is its own projection: project, rebuild, compare."""
    N, t = 5, 2.0
    poly = lambda s: 1 - 2 * s + 0.5 * s ** 3 - 0.1 * s ** 4  # noqa: E731
    c = legs_projection(poly, t, N)
    s = np.linspace(0, t, 17)
    assert_close(legendre_reconstruct(c, s, t=t), poly(s))


def test_reconstruct_vs_numpy_legendre(rng):
    c = rng.standard_normal((3, 6))
    s = rng.uniform(0, 4.0, 11)
    x = 2 * s / 4.0 - 1
    expected = np.stack([npleg.legval(x, ci * np.sqrt(2 * np.arange(6) + 1)) for ci in c])
    got = legendre_reconstruct(c, s, t=4.0)
    assert got.shape == (3, 11)
    assert_close(got, expected)
    assert legendre_reconstruct(c.astype(np.float32), s, t=4.0).dtype == np.float32


@pytest.mark.parametrize("u,N,exc,msg", [
    (np.zeros(0), 4, ValueError, "u has shape"),
    (np.float64(1.0), 4, ValueError, "u has shape"),
    (np.array([1.0, np.nan]), 4, ValueError, "u has 1 non-finite"),
    (np.ones(5, dtype=complex), 4, TypeError, "u is complex"),
    (np.ones(5), 0, ValueError, "N = 0"),
])
def test_memory_bad_input(u, N, exc, msg):
    with pytest.raises(exc, match=msg):
        hippo_legs_memory(u, N)


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(coeffs=np.ones(3), s=np.array([0.0, 1.5])), ValueError, r"s has values in"),
    (dict(coeffs=np.ones(3), s=np.array([-0.1])), ValueError, r"\[0, t\]"),
    (dict(coeffs=np.ones(3), s=np.array([0.5]), t=0.0), ValueError, "t = 0.0"),
    (dict(coeffs=np.ones(3), s=np.ones((2, 2))), ValueError, "s has shape"),
    (dict(coeffs=np.ones(0), s=np.array([0.5])), ValueError, "coeffs has shape"),
    (dict(coeffs=np.array([1.0, np.inf]), s=np.array([0.5])), ValueError, "coeffs has 1 non-finite"),
])
def test_reconstruct_bad_input(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        legendre_reconstruct(**kwargs)
