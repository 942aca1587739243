"""Structured initializations of the state matrix: HiPPO-LegS, S4's NPLR form, S4D, Mamba.

Glossary
--------
N        state size (number of rows of ``A``)
L        sequence length
D        channels (Mamba's ``d_inner``)
A, B     the continuous-time SSM matrices of x'(t) = A x(t) + B u(t)
P        the low-rank correction of S4's normal-plus-low-rank (NPLR) form
S        a skew-symmetric matrix (S^T = -S)
Lambda   eigenvalues of the normal part, V its unitary eigenvectors
c        the HiPPO memory: Legendre coefficients of the signal's history

Sign convention: every ``A`` here is the matrix of the *stable* system
x' = A x + B u, so its eigenvalues have negative real part.  The HiPPO paper
writes LegS as c' = -(1/t) A c + (1/t) B f with a positive A; our ``hippo_legs``
returns minus that matrix.

Conjugate pairs (S4D): a real SSM with complex diagonal ``A`` has its modes in
conjugate pairs, so S4D stores only N/2 of them and takes 2·Re of the output.
``s4d_lin(N)`` and ``s4d_inv(N)`` follow the official S4D code: ``N`` is the
real state size (even) and, by default, N/2 modes are returned
(``conjugate_pairs=True``); with ``conjugate_pairs=False`` the N/2 modes are
followed by their N/2 conjugates, a full N-mode complex system with the same
real output.

Everything is computed and returned in float64 (complex128 for complex
eigenvalues); cast the result if you want float32.  Book chapter:
``tutorials/03_convolution_s4.md`` (label ``convolution-s4``).
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import solve_triangular
from scipy.special import eval_legendre

from ._validation import (as_array, check_bool, check_finite, check_positive_int,
                          check_positive_scalar)

__all__ = [
    "hippo_legs",
    "hippo_legs_nplr",
    "hippo_legs_diagonalized",
    "s4d_lin",
    "s4d_inv",
    "s4d_real",
    "mamba_a_log",
    "hippo_legs_memory",
    "legendre_reconstruct",
]


# ----------------------------------------------------------------------------
# HiPPO-LegS and its normal-plus-low-rank form
# ----------------------------------------------------------------------------
def hippo_legs(N):
    """HiPPO-LegS matrices (A, B) of the stable system x' = A x + B u.

    Parameters
    ----------
    N : int
        State size (number of Legendre coefficients kept), N >= 1.

    Returns
    -------
    A : ndarray, shape (N, N), float64
        Lower triangular: ``A[n, k] = -sqrt(2n+1) sqrt(2k+1)`` for n > k,
        ``-(n+1)`` for n = k and 0 above the diagonal.
    B : ndarray, shape (N,), float64
        ``B[n] = sqrt(2n+1)``.

    Raises
    ------
    TypeError
        If ``N`` is not an integer.
    ValueError
        If ``N < 1``.

    Notes
    -----
    Implements ``eq-hippo-legs``.  With the 1/t time scaling these matrices
    give the online Legendre projection of a signal's whole history, see
    :func:`hippo_legs_memory`; without it (a fixed step) they are the
    initialization of S4.  Indices ``n, k`` start at 0.

    References
    ----------
    A. Gu, T. Dao, S. Ermon, A. Rudra, C. Ré, "HiPPO: Recurrent Memory with
    Optimal Polynomial Projections", NeurIPS 2020, arXiv:2008.07669.

    Examples
    --------
    >>> A, B = hippo_legs(3)
    >>> A.round(4)
    array([[-1.    ,  0.    ,  0.    ],
           [-1.7321, -2.    ,  0.    ],
           [-2.2361, -3.873 , -3.    ]])
    >>> B.round(4)
    array([1.    , 1.7321, 2.2361])
    """
    N = check_positive_int(N, "N")
    A = np.zeros((N, N))  # (N, N)
    for n in range(N):
        for k in range(n + 1):
            if n > k:
                A[n, k] = -np.sqrt(2 * n + 1) * np.sqrt(2 * k + 1)
            else:
                A[n, k] = -(n + 1)
    B = np.sqrt(2 * np.arange(N) + 1.0)  # (N,)
    return A, B


def hippo_legs_nplr(N):
    """Normal-plus-low-rank (NPLR) form of HiPPO-LegS: A = A_normal - P P^T.

    Parameters
    ----------
    N : int
        State size, N >= 1.

    Returns
    -------
    A_normal : ndarray, shape (N, N), float64
        ``A + P P^T = -I/2 + S`` with ``S`` skew-symmetric, so ``A_normal`` is
        a normal matrix whose eigenvalues all have real part -1/2.
    P : ndarray, shape (N,), float64
        The rank-one correction ``P[n] = sqrt(n + 1/2)``.
    B : ndarray, shape (N,), float64
        The HiPPO-LegS input vector ``sqrt(2n+1)`` (unchanged).

    Raises
    ------
    TypeError, ValueError
        As :func:`hippo_legs`.

    Notes
    -----
    Implements ``eq-nplr``.  Because ``P[n] P[k] = sqrt(2n+1) sqrt(2k+1) / 2``,
    adding ``P P^T`` halves the strictly lower triangle of ``A``, puts
    ``+sqrt(2n+1) sqrt(2k+1) / 2`` above the diagonal and ``-1/2`` on it.
    The normal part is diagonalized by a unitary matrix
    (:func:`hippo_legs_diagonalized`), which is what makes S4's kernel cheap.

    References
    ----------
    A. Gu, K. Goel, C. Ré, "Efficiently Modeling Long Sequences with
    Structured State Spaces" (S4), ICLR 2022, arXiv:2111.00396, Sec. 3.

    Examples
    --------
    >>> A_normal, P, B = hippo_legs_nplr(3)
    >>> A, _ = hippo_legs(3)
    >>> bool(np.allclose(A_normal - np.outer(P, P), A))
    True
    >>> np.diag(A_normal)
    array([-0.5, -0.5, -0.5])
    """
    A, B = hippo_legs(N)  # (N, N), (N,)
    P = np.sqrt(np.arange(N) + 0.5)  # (N,)
    A_normal = A + np.outer(P, P)  # (N, N)  = -I/2 + S
    return A_normal, P, B


def hippo_legs_diagonalized(N):
    """Unitary eigendecomposition of the normal part of HiPPO-LegS.

    Parameters
    ----------
    N : int
        State size, N >= 1.

    Returns
    -------
    Lambda : ndarray, shape (N,), complex128
        Eigenvalues ``-1/2 + i ω`` of ``A_normal`` (ω real, ascending).  They
        come in conjugate pairs ±ω (one ω = 0 when N is odd).
    V : ndarray, shape (N, N), complex128
        Unitary eigenvectors: ``A_normal = V diag(Lambda) V^H``.

    Raises
    ------
    TypeError, ValueError
        As :func:`hippo_legs`.

    Notes
    -----
    Implements ``eq-dplr``.  ``A_normal = -I/2 + S`` with ``S`` real
    skew-symmetric, so ``-i S`` is Hermitian; ``numpy.linalg.eigh`` of it gives
    real ω and an exactly unitary ``V`` (an eigendecomposition of the
    non-normal ``A`` itself would be badly conditioned).  In the eigenbasis
    ``A = V (diag(Lambda) - (V^H P)(V^H P)^H) V^H``: diagonal plus low rank
    (DPLR).  Keeping only ``Lambda`` (its upper half) is the S4D-LegS
    initialization.

    References
    ----------
    A. Gu, K. Goel, C. Ré, S4, arXiv:2111.00396, Sec. 3 and Appendix C.1.

    Examples
    --------
    >>> Lam, V = hippo_legs_diagonalized(4)
    >>> Lam.real
    array([-0.5, -0.5, -0.5, -0.5])
    >>> A_normal, _, _ = hippo_legs_nplr(4)
    >>> bool(np.allclose(V @ np.diag(Lam) @ V.conj().T, A_normal))
    True
    """
    A_normal, _, _ = hippo_legs_nplr(N)  # (N, N)
    S = A_normal + 0.5 * np.eye(N)  # (N, N) skew-symmetric
    H = -1j * S  # (N, N) Hermitian, since S^T = -S
    omega, V = np.linalg.eigh(H)  # (N,), (N, N)
    Lambda = -0.5 + 1j * omega  # (N,)
    return Lambda, V


# ----------------------------------------------------------------------------
# S4D diagonal initializations and Mamba's A_log
# ----------------------------------------------------------------------------
def _s4d_modes(N, name):
    N = check_positive_int(N, "N")
    if N % 2:
        raise ValueError(
            f"Parameter N = {N} must be even for {name}: it is the real state "
            "size and the complex modes come in N/2 conjugate pairs"
        )
    return N, np.arange(N // 2)


def _finish_pairs(A_half, conjugate_pairs):
    if check_bool(conjugate_pairs, "conjugate_pairs"):
        return A_half  # (N/2,)
    return np.concatenate([A_half, A_half.conj()])  # (N,)


def s4d_lin(N, conjugate_pairs=True):
    """S4D-Lin initialization: A_n = -1/2 + i π n.

    Parameters
    ----------
    N : int
        Real state size, even, N >= 2.
    conjugate_pairs : bool, default True
        If True return the N/2 modes n = 0..N/2-1 (use with the 2·Re output
        convention); if False return those followed by their conjugates.

    Returns
    -------
    A : ndarray, shape (N // 2,) or (N,), complex128
        Diagonal of the continuous-time state matrix.

    Raises
    ------
    TypeError
        If ``N`` is not an integer.
    ValueError
        If ``N`` is odd or < 2.

    Notes
    -----
    Implements ``eq-s4d-lin``.  The imaginary parts are the frequencies of
    a Fourier basis; the real part -1/2 is the one shared by all eigenvalues
    of the HiPPO-LegS normal part.  S4D pairs it with ``B = 1``.

    References
    ----------
    A. Gu, A. Gupta, K. Goel, C. Ré, "On the Parameterization and
    Initialization of Diagonal State Space Models" (S4D), NeurIPS 2022,
    arXiv:2206.11893, Sec. 4.

    Examples
    --------
    >>> s4d_lin(4)
    array([-0.5+0.j        , -0.5+3.14159265j])
    >>> s4d_lin(4, conjugate_pairs=False).shape
    (4,)
    """
    N, n = _s4d_modes(N, "s4d_lin")
    A_half = -0.5 + 1j * np.pi * n  # (N/2,)
    return _finish_pairs(A_half, conjugate_pairs)


def s4d_inv(N, conjugate_pairs=True):
    """S4D-Inv initialization: A_n = -1/2 + i (N/π) (N/(2n+1) - 1).

    Parameters
    ----------
    N : int
        Real state size, even, N >= 2 (the ``N`` in the formula).
    conjugate_pairs : bool, default True
        As in :func:`s4d_lin`.

    Returns
    -------
    A : ndarray, shape (N // 2,) or (N,), complex128

    Raises
    ------
    TypeError, ValueError
        As :func:`s4d_lin`.

    Notes
    -----
    Implements ``eq-s4d-inv``.  The imaginary parts follow an inverse law
    and approximate those of the S4D-LegS eigenvalues (the diagonalized HiPPO
    normal part); n runs over 0..N/2-1.

    References
    ----------
    S4D, arXiv:2206.11893, Sec. 4.

    Examples
    --------
    >>> s4d_inv(4)
    array([-0.5+3.81971863j, -0.5+0.42441318j])
    """
    N, n = _s4d_modes(N, "s4d_inv")
    A_half = -0.5 + 1j * (N / np.pi) * (N / (2 * n + 1) - 1)  # (N/2,)
    return _finish_pairs(A_half, conjugate_pairs)


def s4d_real(N):
    """S4D-Real initialization: A_n = -(n+1), n = 0..N-1 (real, no pairs).

    Parameters
    ----------
    N : int
        State size, N >= 1.

    Returns
    -------
    A : ndarray, shape (N,), float64

    Raises
    ------
    TypeError, ValueError
        As :func:`hippo_legs`.

    Notes
    -----
    Implements ``eq-s4d-real``: the diagonal of HiPPO-LegS.  Mamba's default
    ``A = -exp(A_log)`` (:func:`mamba_a_log`) is the same values for every
    channel.

    References
    ----------
    S4D, arXiv:2206.11893, Sec. 4.

    Examples
    --------
    >>> s4d_real(3)
    array([-1., -2., -3.])
    """
    N = check_positive_int(N, "N")
    return -(np.arange(N) + 1.0)  # (N,)


def mamba_a_log(d_inner, d_state):
    """Mamba's initialization of ``A_log`` (A = -exp(A_log)).

    Parameters
    ----------
    d_inner : int
        Number of channels D (``expand * d_model`` in the Mamba block).
    d_state : int
        State size N (16 in the official Mamba).

    Returns
    -------
    A_log : ndarray, shape (d_inner, d_state), float64
        ``A_log[d, n] = log(n + 1)`` for every channel d, so
        ``A = -exp(A_log)`` is S4D-Real repeated over channels.

    Raises
    ------
    TypeError, ValueError
        If ``d_inner`` or ``d_state`` is not an integer >= 1.

    Notes
    -----
    Implements ``eq-mamba-alog``.  Storing ``log(-A)`` keeps ``A`` negative
    (the recurrence stable) whatever the optimizer does to ``A_log``.  The
    official module stores it in float32; this reference returns float64.

    References
    ----------
    A. Gu, T. Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
    Spaces", arXiv:2312.00752; official ``state-spaces/mamba``,
    ``mamba_ssm/modules/mamba_simple.py`` (S4D-Real initialization).

    Examples
    --------
    >>> A_log = mamba_a_log(2, 3)
    >>> A_log.shape
    (2, 3)
    >>> -np.exp(A_log[0])
    array([-1., -2., -3.])
    """
    D = check_positive_int(d_inner, "d_inner")
    N = check_positive_int(d_state, "d_state")
    row = np.log(np.arange(1, N + 1, dtype=np.float64))  # (N,)
    return np.tile(row, (D, 1))  # (D, N)


# ----------------------------------------------------------------------------
# HiPPO's memory: online Legendre coefficients and the reconstruction
# ----------------------------------------------------------------------------
def hippo_legs_memory(u, N, return_all=False):
    """Online HiPPO-LegS memory of sampled signals (the 1/t-scaled recurrence).

    Parameters
    ----------
    u : array_like, shape (..., L), real
        Samples f(t_k) at t_k = k·dt, k = 1..L (dt cancels: LegS is
        timescale invariant).  Leading dimensions are a batch.
    N : int
        Number of Legendre coefficients (state size), N >= 1.
    return_all : bool, default False
        If True return the memory after every step.

    Returns
    -------
    c : ndarray, shape (..., N) or (..., L, N)
        Coefficients of the history in the basis
        ``sqrt(2n+1) P_n(2s/t - 1)`` on [0, t] (reconstruct it with
        :func:`legendre_reconstruct`), at t = t_L or at every t_k.  Same
        dtype as ``u``; computed in float64.

    Raises
    ------
    TypeError
        If ``u`` is complex or not numeric, or ``N`` not an integer.
    ValueError
        If ``u`` is 0-D or empty or not finite, or ``N < 1``.

    Notes
    -----
    Implements ``eq-hippo-memory``: c'(t) = (1/t) (A c(t) + B f(t)) with
    ``(A, B) = hippo_legs(N)``.  Sampling at t_k = k·dt makes dt/t_k = 1/k, and
    the trapezoidal (bilinear) rule for this time-varying system reads

        (I - A/(2k)) c_k = (I + A/(2(k-1))) c_{k-1} + B f_k/(2k) + B f_{k-1}/(2(k-1)),

    for k = 2..L, started from c_1 = f_1 e_0 (the history on [0, t_1] held at
    f_1, whose projection is f_1 times the constant basis function).  Both
    sides are exact for a constant signal, and the error against the exact
    projection falls as dt^2 (tested).  The HiPPO authors' code instead runs
    the bilinear step 1/k from c_0 = 0 with only the f_k term, which is
    first order.  (I - A/(2k)) is lower triangular, so each step is a
    triangular solve.  The state is an average over the whole history: no
    window and no forgetting rate.

    References
    ----------
    Gu et al., HiPPO, arXiv:2008.07669, Sec. 3 (LegS) and Appendix B.

    Examples
    --------
    >>> t = np.linspace(0, 1, 201)[1:]
    >>> c = hippo_legs_memory(np.ones_like(t), 4)
    >>> c.round(12) + 0.0  # a constant is (1, 0, 0, ...) in the Legendre basis
    array([1., 0., 0., 0.])
    """
    u = as_array(u, "u", allow_complex=False)
    if u.ndim == 0 or u.shape[-1] == 0:
        raise ValueError(
            f"Parameter u has shape {u.shape} but should be (..., L) with L >= 1"
        )
    check_finite(u, "u")
    N = check_positive_int(N, "N")
    out_dtype = u.dtype
    u64 = u.astype(np.float64)  # (..., L)
    L = u64.shape[-1]
    A, B = hippo_legs(N)  # (N, N), (N,)
    I = np.eye(N)
    c = np.zeros(u64.shape[:-1] + (N,))  # (..., N)
    c[..., 0] = u64[..., 0]  # c_1 = f_1 e_0
    history = np.zeros(u64.shape[:-1] + (L, N)) if return_all else None  # (..., L, N)
    if return_all:
        history[..., 0, :] = c
    for k in range(2, L + 1):
        M = I - A / (2 * k)  # (N, N) lower triangular
        rhs = (c @ (I + A / (2 * (k - 1))).T  # (..., N)
               + u64[..., k - 1, None] * B / (2 * k)
               + u64[..., k - 2, None] * B / (2 * (k - 1)))
        flat = rhs.reshape(-1, N)  # (batch, N)
        c = solve_triangular(M, flat.T, lower=True).T.reshape(rhs.shape)  # (..., N)
        if return_all:
            history[..., k - 1, :] = c
    result = history if return_all else c
    return result.astype(out_dtype)


def legendre_reconstruct(coeffs, s, t=1.0):
    """Rebuild a history f(s), 0 <= s <= t, from its LegS coefficients.

    Parameters
    ----------
    coeffs : array_like, shape (..., N), real
        Legendre coefficients, e.g. from :func:`hippo_legs_memory`.
    s : array_like, shape (M,)
        Times at which to evaluate the reconstruction, each in [0, t].
    t : float, default 1.0
        The present time: the memory covers [0, t].

    Returns
    -------
    f : ndarray, shape (..., M)
        ``sum_n coeffs[..., n] sqrt(2n+1) P_n(2 s / t - 1)``, same dtype as
        ``coeffs``; computed in float64.

    Raises
    ------
    TypeError
        If ``coeffs`` or ``s`` is not real numeric, or ``t`` not a number.
    ValueError
        If ``coeffs`` is 0-D or empty, ``s`` is not 1-D, any ``s`` is outside
        [0, t], any input is not finite, or ``t <= 0``.

    Notes
    -----
    Implements ``eq-legendre-reconstruct``.  The functions
    ``g_n(s) = sqrt(2n+1) P_n(2s/t - 1)`` are orthonormal for the uniform
    measure (1/t) ds on [0, t], so the reconstruction is the orthogonal
    projection of the history on polynomials of degree < N.  Uses
    ``scipy.special.eval_legendre``.

    References
    ----------
    Gu et al., HiPPO, arXiv:2008.07669, Sec. 2-3.

    Examples
    --------
    >>> legendre_reconstruct(np.array([1.0, 0.5]), np.array([0.0, 0.5, 1.0]))
    array([0.1339746, 1.       , 1.8660254])
    """
    coeffs = as_array(coeffs, "coeffs", allow_complex=False)
    if coeffs.ndim == 0 or coeffs.shape[-1] == 0:
        raise ValueError(
            f"Parameter coeffs has shape {coeffs.shape} but should be (..., N) with N >= 1"
        )
    check_finite(coeffs, "coeffs")
    s = as_array(s, "s", allow_complex=False, ndim=1)
    check_finite(s, "s")
    t = check_positive_scalar(t, "t")
    if np.any(s < 0) or np.any(s > t):
        raise ValueError(
            f"Parameter s has values in [{s.min()!r}, {s.max()!r}] but every "
            f"entry must lie in [0, t] = [0, {t!r}]"
        )
    N = coeffs.shape[-1]
    x = 2.0 * s / t - 1.0  # (M,) mapped to [-1, 1]
    G = np.zeros((N, s.shape[0]))  # (N, M) orthonormal Legendre basis
    for n in range(N):
        G[n] = np.sqrt(2 * n + 1) * eval_legendre(n, x)
    f = coeffs.astype(np.float64) @ G  # (..., M)
    return f.astype(coeffs.dtype)
