"""The recurrent and convolution views of a discrete LTI SSM.

Invariants: recurrence == direct convolution == FFT convolution; naive kernel ==
Vandermonde kernel; 2·Re of N/2 conjugate modes == the full N-mode system.
Outside oracles: scipy.signal.dlsim (recurrence), numpy.convolve (convolution),
scipy.linalg.expm (ZOH of S4D systems).
"""
import numpy as np
import pytest
import scipy.linalg
import scipy.signal
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm_ref import causal_conv, hippo_legs, s4d_inv, s4d_lin, scan_lti, ssm_kernel

KINDS = ["full", "diag_real", "diag_complex"]


def random_system(rng, N, kind, radius=0.95):
    """A random stable SISO system (spectral radius <= radius)."""
    if kind == "full":
        A = rng.standard_normal((N, N))
        A *= radius / max(np.abs(np.linalg.eigvals(A)).max(), 1e-12)
        B, C = rng.standard_normal(N), rng.standard_normal(N)
    elif kind == "diag_real":
        A = rng.uniform(-radius, radius, N)
        B, C = rng.standard_normal(N), rng.standard_normal(N)
    else:
        A = rng.uniform(0, radius, N) * np.exp(1j * rng.uniform(-np.pi, np.pi, N))
        B = rng.standard_normal(N) + 1j * rng.standard_normal(N)
        C = rng.standard_normal(N) + 1j * rng.standard_normal(N)
    return A, B, C


def zoh_diag(A, B, dt):
    """ZOH of a diagonal system through scipy.linalg.expm of the block matrix (oracle)."""
    N = A.shape[0]
    M = np.zeros((N + 1, N + 1), dtype=complex)
    M[:N, :N] = np.diag(A)
    M[:N, N] = B
    E = scipy.linalg.expm(dt * M)
    return np.diag(E[:N, :N]).copy(), E[:N, N].copy()


# ---------------------------------------------------------------------------
# CNN view == RNN view
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
@pytest.mark.parametrize("method", ["direct", "fft"])
def test_cnn_is_rnn(rng, kind, batch, method):
    N, L = 6, 64
    A, B, C = random_system(rng, N, kind)
    u = rng.standard_normal(batch + (L,))
    y_rnn = scan_lti(A, B, C, u)
    K = ssm_kernel(A, B, C, L)
    y_cnn = causal_conv(u, K, method=method)
    assert y_rnn.shape == y_cnn.shape == batch + (L,)
    assert_close(y_cnn, y_rnn, err_msg=f"{kind} {method}")


@pytest.mark.parametrize("kind", ["diag_real", "diag_complex"])
@pytest.mark.parametrize("L", [1, 7, 128])
def test_naive_kernel_equals_vandermonde(rng, kind, L):
    A, B, C = random_system(rng, 8, kind)
    assert_close(ssm_kernel(A, B, C, L, method="vandermonde"), ssm_kernel(A, B, C, L))


def test_kernel_full_matrix_equals_diagonalized(rng):
    """A full matrix and its eigendecomposition give the same kernel."""
    A, B, C = random_system(rng, 5, "full")
    lam, V = np.linalg.eig(A)
    Vinv = np.linalg.inv(V)
    K_full = ssm_kernel(A, B, C, 40)
    K_diag = ssm_kernel(lam, Vinv @ B, C @ V, 40, method="vandermonde")
    assert_close(K_diag.real, K_full, kind="backend")  # eig adds conditioning error
    assert np.max(np.abs(K_diag.imag)) < 1e-9


@pytest.mark.parametrize("init", [s4d_lin, s4d_inv])
@pytest.mark.parametrize("N", [2, 16])
def test_conjugate_pairs_equal_full_system(rng, init, N):
    """2·Re of N/2 modes == the full N-mode complex system (whose output is real)."""
    L, dt = 50, 0.05
    A_half = init(N)
    Ab, Bb = zoh_diag(A_half, np.ones(N // 2), dt)
    C = rng.standard_normal(N // 2) + 1j * rng.standard_normal(N // 2)
    Ab_full, Bb_full = zoh_diag(init(N, conjugate_pairs=False), np.ones(N), dt)
    C_full = np.concatenate([C, C.conj()])
    K_full = ssm_kernel(Ab_full, Bb_full, C_full, L, method="vandermonde")
    assert np.max(np.abs(K_full.imag)) < 1e-12, "a conjugate-closed system has a real kernel"
    for method in ("naive", "vandermonde"):
        K_half = ssm_kernel(Ab, Bb, C, L, method=method, conjugate_pairs=True)
        assert K_half.dtype == np.float64
        assert_close(K_half, K_full.real)
    u = rng.standard_normal((2, L))
    y_half = scan_lti(Ab, Bb, C, u, conjugate_pairs=True)
    assert y_half.dtype == np.float64
    assert_close(y_half, scan_lti(Ab_full, Bb_full, C_full, u).real)
    assert_close(y_half, causal_conv(u, K_half))


def test_zoh_discretized_systems_with_library_discretize():
    """HiPPO-LegS (full) and S4D-Lin (diagonal) after ssm_ref.discretize: views agree."""
    from ssm_ref.discretize import discretize

    L = 200
    u = np.sin(np.linspace(0, 20, L))
    A, B = hippo_legs(16)
    Ab, Bb = discretize(A, B, 1.0 / L)
    C = np.ones(16)
    assert_close(causal_conv(u, ssm_kernel(Ab, Bb, C, L)), scan_lti(Ab, Bb, C, u))
    A4 = s4d_lin(16)
    Ab4, Bb4 = discretize(A4, np.ones(8, dtype=complex), 0.01)
    Ab4_ref, Bb4_ref = zoh_diag(A4, np.ones(8), 0.01)
    assert_close(Ab4, Ab4_ref, kind="exact")
    assert_close(Bb4, Bb4_ref, kind="exact")
    C4 = np.linspace(1, 2, 8) + 0.5j
    K = ssm_kernel(Ab4, Bb4, C4, L, method="vandermonde", conjugate_pairs=True)
    assert_close(causal_conv(u, K), scan_lti(Ab4, Bb4, C4, u, conjugate_pairs=True))


# ---------------------------------------------------------------------------
# Outside oracles
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("N", [1, 4])
def test_scan_vs_scipy_dlsim(rng, N):
    """Our y_k = C x_k with x_k including u_k is dlsim's system (A, B, C A, C B)."""
    A, B, C = random_system(rng, N, "full")
    u = rng.standard_normal(30)
    _, y_ref, _ = scipy.signal.dlsim((A, B[:, None], (C @ A)[None, :], np.array([[C @ B]]), 1.0), u)
    assert_close(scan_lti(A, B, C, u), y_ref[:, 0])
    assert_close(scan_lti(A, B[:, None], C[None, :], u), y_ref[:, 0])  # (N, 1) / (1, N) forms


@pytest.mark.parametrize("M", [1, 3, 20, 45])
@pytest.mark.parametrize("method", ["direct", "fft"])
def test_causal_conv_vs_numpy_convolve(rng, M, method):
    L = 20
    u, K = rng.standard_normal(L), rng.standard_normal(M)
    assert_close(causal_conv(u, K, method=method), np.convolve(u, K)[:L])


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_causal_conv_per_channel_kernel_and_complex(rng, method):
    Bsz, D, L = 2, 3, 16
    u = rng.standard_normal((Bsz, D, L)) + 1j * rng.standard_normal((Bsz, D, L))
    K = rng.standard_normal((D, L))
    y = causal_conv(u, K, method=method)
    assert y.shape == (Bsz, D, L) and y.dtype == np.complex128
    for b in range(Bsz):
        for d in range(D):
            assert_close(y[b, d], np.convolve(u[b, d], K[d])[:L])


# ---------------------------------------------------------------------------
# dtype contract
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind,dtype", [("full", np.float32), ("diag_real", np.float32),
                                        ("diag_complex", np.complex64)])
def test_float32_in_float32_out(rng, kind, dtype):
    A, B, C = random_system(rng, 4, kind)
    u = rng.standard_normal(32)
    args32 = [x.astype(dtype) for x in (A, B, C)]
    y32 = scan_lti(*args32, u.astype(np.float32))
    K32 = ssm_kernel(*args32, 32)
    c32 = causal_conv(u.astype(np.float32), K32)
    assert y32.dtype == K32.dtype == c32.dtype == dtype
    y64 = scan_lti(*[x.astype(np.complex128 if x.dtype.kind == "c" else np.float64)
                     for x in args32], u.astype(np.float32).astype(np.float64))
    assert_close(y32, y64, dtype=dtype)
    assert_close(c32, y64, dtype=dtype)


# ---------------------------------------------------------------------------
# Property tests on random stable systems
# ---------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), N=st.integers(1, 8), L=st.integers(1, 70),
       kind=st.sampled_from(KINDS))
def test_property_views_agree(seed, N, L, kind):
    rng = np.random.default_rng(seed)
    A, B, C = random_system(rng, N, kind, radius=rng.uniform(0.1, 0.99))
    u = rng.standard_normal((2, L))
    y = scan_lti(A, B, C, u)
    K = ssm_kernel(A, B, C, L)
    assert_close(causal_conv(u, K, method="fft"), y)
    assert_close(causal_conv(u, K, method="direct"), y)
    if kind != "full":
        assert_close(ssm_kernel(A, B, C, L, method="vandermonde"), K)
    # linearity and time invariance: a delayed impulse gives the delayed kernel
    d = int(rng.integers(0, L))
    impulse = np.zeros(L)
    impulse[d] = 1.0
    expected = np.concatenate([np.zeros(d, dtype=K.dtype), K[:L - d]])
    assert_close(scan_lti(A, B, C, impulse), expected)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------
A2, B2, C2 = np.eye(2) * 0.5, np.ones(2), np.ones(2)


@pytest.mark.parametrize("args,exc,msg", [
    ((np.ones((2, 3)), B2, C2), ValueError, r"Abar has shape \(2, 3\) but should be square"),
    ((np.ones((2, 2, 2)), B2, C2), ValueError, "Abar has shape"),
    ((A2, np.ones(3), C2), ValueError, r"Bbar has shape \(3,\) but should be \(2,\) or \(2, 1\)"),
    ((A2, np.ones((2, 2)), C2), ValueError, "Bbar has shape"),
    ((A2, B2, np.ones((2, 1))), ValueError, r"C has shape \(2, 1\) but should be \(2,\) or \(1, 2\)"),
    ((np.array([0.5, np.nan]), B2, C2), ValueError, "Abar has 1 non-finite"),
    ((A2, B2, ["a", "b"]), TypeError, "C has dtype"),
    ((np.zeros(0), np.zeros(0), np.zeros(0)), ValueError, "N must be >= 1"),
])
def test_bad_system(args, exc, msg):
    with pytest.raises(exc, match=msg):
        scan_lti(*args, np.ones(4))
    with pytest.raises(exc, match=msg):
        ssm_kernel(*args, 4)


def test_bad_options():
    with pytest.raises(ValueError, match="method = 'vandermonde' needs a diagonal Abar"):
        ssm_kernel(A2, B2, C2, 4, method="vandermonde")
    with pytest.raises(ValueError, match="method = 'cauchy' is not one of"):
        ssm_kernel(A2, B2, C2, 4, method="cauchy")
    with pytest.raises(ValueError, match="L = 0"):
        ssm_kernel(A2, B2, C2, 0)
    with pytest.raises(TypeError, match="L = 4.0"):
        ssm_kernel(A2, B2, C2, 4.0)
    with pytest.raises(ValueError, match="conjugate_pairs = True needs a complex system"):
        ssm_kernel(A2, B2, C2, 4, conjugate_pairs=True)
    with pytest.raises(ValueError, match="conjugate_pairs = True needs a complex system"):
        scan_lti(A2, B2, C2, np.ones(4), conjugate_pairs=True)


@pytest.mark.parametrize("u,K,method,exc,msg", [
    (np.ones(4), np.ones(2), "circular", ValueError, "method = 'circular'"),
    (np.ones(0), np.ones(2), "fft", ValueError, r"u has shape \(0,\)"),
    (np.ones(4), np.ones(0), "fft", ValueError, r"K has shape \(0,\)"),
    (np.ones((2, 4)), np.ones((3, 4)), "fft", ValueError, r"K has shape \(3, 4\)"),
    (np.ones(4), np.ones((2, 4)), "direct", ValueError, r"K has shape \(2, 4\)"),
    (np.array([1.0, np.inf]), np.ones(2), "fft", ValueError, "u has 1 non-finite"),
    (np.ones(4), np.array(["x"]), "fft", TypeError, "K has dtype"),
])
def test_causal_conv_bad_input(u, K, method, exc, msg):
    with pytest.raises(exc, match=msg):
        causal_conv(u, K, method=method)


def test_scan_bad_u():
    with pytest.raises(ValueError, match=r"u has shape \(\)"):
        scan_lti(A2, B2, C2, 1.0)
    with pytest.raises(ValueError, match="u has 1 non-finite"):
        scan_lti(A2, B2, C2, np.array([1.0, np.nan]))
