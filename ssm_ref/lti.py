"""The two views of a discrete linear time-invariant (LTI) SSM: recurrence and convolution.

Glossary
--------
L        sequence length
N        state size
M        kernel length (``len(K)``, usually L)
...      leading batch dimensions of the input ``u``
Abar     discrete state matrix, (N, N) full or (N,) diagonal
Bbar     discrete input vector, (N,) (or (N, 1))
C        output vector, (N,) (or (1, N))
u, y     input and output sequences, (..., L)
h        the state, (..., N)
K        the SSM convolution kernel, K[l] = C Abar^l Bbar

Single input, single output: one scalar sequence in, one out, per batch entry.
The recurrence h_k = Abar h_{k-1} + Bbar u_k, y_k = C h_k with h_{-1} = 0
unrolls into the causal convolution y = K * u with the kernel K above: the RNN
view and the CNN view of the same model (S4).

Conjugate pairs: a complex diagonal system whose modes come in conjugate pairs
has a real output; S4D stores only one mode of each pair and takes 2·Re of the
output (``conjugate_pairs=True`` here).

Precision: computed in float64 (complex128 when any input is complex); the
output has the precision of the inputs' common dtype (float32 in, float32 out).
Book chapter: ``tutorials/03_convolution_s4.md`` (label ``convolution-s4``).
"""
from __future__ import annotations

import numpy as np

from ._validation import as_array, check_bool, check_choice, check_finite, check_positive_int

__all__ = ["scan_lti", "ssm_kernel", "causal_conv"]


# ----------------------------------------------------------------------------
# Validation helpers (private; public functions call them at entry)
# ----------------------------------------------------------------------------
def _check_system(Abar, Bbar, C):
    """Validate a SISO system; return (Abar, Bbar (N,), C (N,), diagonal)."""
    Abar = as_array(Abar, "Abar", ndim=(1, 2))
    if Abar.ndim == 2 and Abar.shape[0] != Abar.shape[1]:
        raise ValueError(
            f"Parameter Abar has shape {Abar.shape} but should be square (N, N) "
            "or a diagonal given as (N,)"
        )
    N = Abar.shape[0]
    if N == 0:
        raise ValueError(f"Parameter Abar has shape {Abar.shape} but N must be >= 1")
    Bbar = as_array(Bbar, "Bbar", ndim=(1, 2))
    if Bbar.shape not in ((N,), (N, 1)):
        raise ValueError(
            f"Parameter Bbar has shape {Bbar.shape} but should be ({N},) or ({N}, 1) "
            f"to match Abar {Abar.shape} (single input)"
        )
    C = as_array(C, "C", ndim=(1, 2))
    if C.shape not in ((N,), (1, N)):
        raise ValueError(
            f"Parameter C has shape {C.shape} but should be ({N},) or (1, {N}) "
            f"to match Abar {Abar.shape} (single output)"
        )
    for arr, name in ((Abar, "Abar"), (Bbar, "Bbar"), (C, "C")):
        check_finite(arr, name)
    return Abar, Bbar.reshape(N), C.reshape(N), Abar.ndim == 1


def _output_dtype(arrays, conjugate_pairs):
    """Common dtype of the inputs; real when the 2·Re convention is used."""
    dtype = np.result_type(*arrays)
    if check_bool(conjugate_pairs, "conjugate_pairs"):
        if dtype.kind != "c":
            raise ValueError(
                "Parameter conjugate_pairs = True needs a complex system (Abar, Bbar "
                "or C complex): it takes 2·Re of the output of N/2 complex modes"
            )
        dtype = np.empty(0, dtype).real.dtype
    return dtype


def _compute_dtype(arrays):
    """float64, or complex128 when any input is complex."""
    return np.complex128 if any(a.dtype.kind == "c" for a in arrays) else np.float64


def _check_sequence(u, name):
    u = as_array(u, name)
    if u.ndim == 0 or u.shape[-1] == 0:
        raise ValueError(
            f"Parameter {name} has shape {u.shape} but should be (..., L) with L >= 1"
        )
    check_finite(u, name)
    return u


# ----------------------------------------------------------------------------
# The recurrent view
# ----------------------------------------------------------------------------
def scan_lti(Abar, Bbar, C, u, conjugate_pairs=False):
    """Run the discrete LTI recurrence x_k = Abar x_{k-1} + Bbar u_k, y_k = C x_k.

    Parameters
    ----------
    Abar : array_like, shape (N, N) or (N,)
        Discrete state matrix, full or diagonal; real or complex.
    Bbar : array_like, shape (N,) or (N, 1)
        Discrete input vector.
    C : array_like, shape (N,) or (1, N)
        Output vector.
    u : array_like, shape (..., L)
        Input sequences; leading dimensions are a batch.
    conjugate_pairs : bool, default False
        Return 2·Re(y): the output of the system made of these modes and
        their conjugates (S4D's convention).

    Returns
    -------
    y : ndarray, shape (..., L)
        Output; dtype the common dtype of the inputs (its real counterpart
        with ``conjugate_pairs``).

    Raises
    ------
    TypeError
        If an input is not a real/complex numeric array.
    ValueError
        On shape mismatches, non-finite values, an empty ``u``, or
        ``conjugate_pairs=True`` for a real system.

    Notes
    -----
    Implements ``eq-recurrence`` with x_{-1} = 0, one step per sample in an
    explicit loop: O(L N^2) for a full ``Abar``, O(L N) for a diagonal one.
    The input enters the state at the same step (y_0 = C Bbar u_0), as in S4
    and Mamba; ``scipy.signal.dlsim``'s y_k = C x_k uses x_k before u_k
    enters.  Computed in float64/complex128.

    References
    ----------
    A. Gu, K. Goel, C. Ré, "Efficiently Modeling Long Sequences with
    Structured State Spaces" (S4), ICLR 2022, arXiv:2111.00396, Sec. 2.3.

    Examples
    --------
    >>> scan_lti(np.array([0.5]), np.array([1.0]), np.array([2.0]), np.array([1.0, 0.0, 0.0]))
    array([2. , 1. , 0.5])
    """
    Abar, Bbar, C, diagonal = _check_system(Abar, Bbar, C)
    u = _check_sequence(u, "u")
    out_dtype = _output_dtype((Abar, Bbar, C, u), conjugate_pairs)
    work = _compute_dtype((Abar, Bbar, C, u))
    A = Abar.astype(work)  # (N, N) or (N,)
    Bv = Bbar.astype(work)  # (N,)
    Cv = C.astype(work)  # (N,)
    u = u.astype(work)  # (..., L)
    L = u.shape[-1]
    N = Bv.shape[0]
    h = np.zeros(u.shape[:-1] + (N,), dtype=work)  # (..., N)
    y = np.zeros(u.shape, dtype=work)  # (..., L)
    for k in range(L):
        if diagonal:
            h = A * h + Bv * u[..., k, None]  # (..., N)
        else:
            h = h @ A.T + Bv * u[..., k, None]  # (..., N)
        y[..., k] = h @ Cv  # (...,)
    if conjugate_pairs:
        y = 2.0 * y.real  # (..., L)
    return y.astype(out_dtype)


# ----------------------------------------------------------------------------
# The convolution view: the kernel
# ----------------------------------------------------------------------------
def ssm_kernel(Abar, Bbar, C, L, method="naive", conjugate_pairs=False):
    """The SSM convolution kernel K = (C Bbar, C Abar Bbar, ..., C Abar^(L-1) Bbar).

    Parameters
    ----------
    Abar : array_like, shape (N, N) or (N,)
        Discrete state matrix, full or diagonal; real or complex.
    Bbar : array_like, shape (N,) or (N, 1)
    C : array_like, shape (N,) or (1, N)
    L : int
        Kernel length, L >= 1.
    method : {"naive", "vandermonde"}, default "naive"
        ``"naive"``: repeated products Abar^l Bbar, any ``Abar``.
        ``"vandermonde"``: for a diagonal ``Abar`` only,
        K = (C ∘ Bbar) · V with the Vandermonde matrix V[n, l] = Abar_n^l.
    conjugate_pairs : bool, default False
        Return 2·Re(K), the kernel of these modes plus their conjugates.

    Returns
    -------
    K : ndarray, shape (L,)
        The kernel; dtype as in :func:`scan_lti`.

    Raises
    ------
    TypeError
        If an input is not numeric, or ``L`` not an integer.
    ValueError
        On shape mismatches, non-finite values, ``L < 1``, an unknown
        ``method``, ``"vandermonde"`` with a full ``Abar``, or
        ``conjugate_pairs=True`` for a real system.

    Notes
    -----
    Implements ``eq-kernel``; the Vandermonde form is ``eq-vandermonde``.
    The naive loop costs O(L N^2) (O(L N) diagonal); the Vandermonde product
    is one (N,) by (N, L) product, O(L N) work in a single matrix operation,
    and is what S4D computes.  With ``conjugate_pairs`` and the S4D
    initializations (:func:`ssm_ref.s4d_lin`), N/2 stored modes give the
    real kernel of an N-dimensional system (``eq-conj-pairs``).  Computed in
    float64/complex128.

    References
    ----------
    S4, arXiv:2111.00396, Sec. 2.4 and 3.  A. Gu, A. Gupta, K. Goel, C. Ré,
    "On the Parameterization and Initialization of Diagonal State Space
    Models" (S4D), NeurIPS 2022, arXiv:2206.11893, Sec. 3.

    Examples
    --------
    >>> ssm_kernel(np.array([0.5]), np.array([1.0]), np.array([2.0]), 4)
    array([2.  , 1.  , 0.5 , 0.25])
    >>> ssm_kernel(np.array([0.5, 0.25]), np.ones(2), np.ones(2), 3, method="vandermonde")
    array([2.    , 0.75  , 0.3125])
    """
    Abar, Bbar, C, diagonal = _check_system(Abar, Bbar, C)
    L = check_positive_int(L, "L")
    check_choice(method, "method", ("naive", "vandermonde"))
    out_dtype = _output_dtype((Abar, Bbar, C), conjugate_pairs)
    work = _compute_dtype((Abar, Bbar, C))
    A = Abar.astype(work)  # (N, N) or (N,)
    Bv = Bbar.astype(work)  # (N,)
    Cv = C.astype(work)  # (N,)
    if method == "vandermonde":
        if not diagonal:
            raise ValueError(
                f"Parameter method = 'vandermonde' needs a diagonal Abar of shape (N,), "
                f"but Abar has shape {Abar.shape}; use method='naive' (or diagonalize)"
            )
        V = A[:, None] ** np.arange(L)[None, :]  # (N, L), V[n, l] = Abar_n^l
        K = (Cv * Bv) @ V  # (L,)
    else:
        K = np.zeros(L, dtype=work)  # (L,)
        v = Bv.copy()  # (N,)  = Abar^l Bbar
        for l in range(L):
            K[l] = Cv @ v
            v = A * v if diagonal else A @ v  # (N,)
    if conjugate_pairs:
        K = 2.0 * K.real  # (L,)
    return K.astype(out_dtype)


# ----------------------------------------------------------------------------
# The convolution view: applying the kernel
# ----------------------------------------------------------------------------
def causal_conv(u, K, method="fft"):
    """Causal convolution y_k = sum_{j=0..k} K_j u_{k-j}, directly or by FFT.

    Parameters
    ----------
    u : array_like, shape (..., L)
        Input sequences; leading dimensions are a batch.
    K : array_like, shape (M,) or (..., M)
        Kernel.  A 1-D kernel is shared by every sequence; a kernel with
        leading dimensions must match the trailing batch dimensions of ``u``
        exactly (e.g. one kernel per channel: ``K`` (D, M) with ``u`` (B, D, L)).
        Taps K_j with j >= L never reach the output and are ignored.
    method : {"fft", "direct"}, default "fft"
        ``"direct"``: the sum above in an explicit loop over k, O(L M).
        ``"fft"``: zero-pad both to n >= 2L (a power of two) so the FFT's
        circular convolution has no wrap-around, multiply the spectra and keep
        the first L outputs, O(L log L); ``rfft`` when both are real, ``fft``
        otherwise.

    Returns
    -------
    y : ndarray, same shape as ``u``
        dtype the common dtype of ``u`` and ``K``.

    Raises
    ------
    TypeError
        If ``u`` or ``K`` is not numeric.
    ValueError
        If ``u`` or ``K`` is empty or not finite, if ``K``'s leading
        dimensions do not match ``u``'s trailing batch dimensions, or on an
        unknown ``method``.

    Notes
    -----
    Implements ``eq-conv`` (direct) and ``eq-fft-conv`` (FFT).  With
    ``K = ssm_kernel(Abar, Bbar, C, L)`` the result equals
    ``scan_lti(Abar, Bbar, C, u)``: the convolution view is the recurrent view
    (tested to 1e-10 in float64).  Computed in float64/complex128.

    References
    ----------
    S4, arXiv:2111.00396, Sec. 2.4 (the convolution view, computed with FFTs).

    Examples
    --------
    >>> u = np.array([1.0, 2.0, 3.0])
    >>> causal_conv(u, np.array([1.0, 1.0]), method="direct")
    array([1., 3., 5.])
    >>> causal_conv(u, np.array([1.0, 1.0]), method="fft")
    array([1., 3., 5.])
    """
    u = _check_sequence(u, "u")
    K = _check_sequence(K, "K")
    check_choice(method, "method", ("fft", "direct"))
    if K.ndim > u.ndim or K.shape[:-1] != u.shape[u.ndim - K.ndim:-1]:
        raise ValueError(
            f"Parameter K has shape {K.shape} but should be (M,) or (..., M) with "
            f"leading dimensions equal to the trailing batch dimensions of u "
            f"{u.shape} (i.e. {u.shape[:-1]} or a suffix of it)"
        )
    out_dtype = np.result_type(u, K)
    work = _compute_dtype((u, K))
    L = u.shape[-1]
    M = min(K.shape[-1], L)  # taps j >= L never reach the output
    u = u.astype(work)  # (..., L)
    K = K[..., :M].astype(work)  # (..., M)
    if method == "direct":
        y = np.zeros(u.shape, dtype=work)  # (..., L)
        for k in range(L):
            J = min(k + 1, M)  # taps K_0 .. K_{J-1} meet u_k .. u_{k-J+1}
            window = u[..., k - J + 1:k + 1][..., ::-1]  # (..., J): u_k, u_{k-1}, ...
            y[..., k] = np.sum(K[..., :J] * window, axis=-1)  # (...,)
    else:
        n = 1 << int(np.ceil(np.log2(2 * L)))  # power of two >= 2L >= L + M - 1
        if work == np.float64:
            spectrum = np.fft.rfft(u, n=n) * np.fft.rfft(K, n=n)  # (..., n//2 + 1)
            y = np.fft.irfft(spectrum, n=n)[..., :L]  # (..., L)
        else:
            spectrum = np.fft.fft(u, n=n) * np.fft.fft(K, n=n)  # (..., n)
            y = np.fft.ifft(spectrum, n=n)[..., :L]  # (..., L)
    return y.astype(out_dtype)
