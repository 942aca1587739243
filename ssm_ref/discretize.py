"""Discretization: from the continuous SSM to a recurrence on samples.

The continuous system x'(t) = A x(t) + B u(t) (chapter 1, ``eq-ssm-state``)
is turned into the recurrence

    h_k = Abar h_{k-1} + Bbar u_k

for a step Δ (``dt``).  Chapter 2 of the book derives every rule used here.

Glossary
--------
N       state size
P       number of inputs (columns of B); a 1-D ``B`` is a single input
dt      the step size Δ (``delta`` in the Mamba code), a real number > 0
A       (N, N) state matrix, or its diagonal given as an (N,) vector
B       (N, P) or (N,) input matrix
Abar    discrete state matrix, same shape as ``A`` (a diagonal stays a vector)
Bbar    discrete input matrix, same shape as ``B``

Methods (book label of the formula in brackets)
-----------------------------------------------
``"zoh"``             zero-order hold, exact for piecewise-constant inputs
                      (``eq-zoh``, ``eq-zoh-b``, diagonal: ``eq-zoh-diag``)
``"bilinear"``        Tustin / trapezoidal rule (``eq-bilinear``)
``"euler"``           forward Euler (``eq-euler``)
``"backward_euler"``  backward Euler (``eq-backward-euler``)
``"mamba"``           ZOH for A, Euler for B: Abar = exp(ΔA), Bbar = ΔB
                      (``eq-mamba-disc``), what the official Mamba code does

All arithmetic is done in float64 (complex128 for complex input); the results
are cast back to the input dtype (float32 in, float32 out).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

from ._validation import as_array, check_choice, check_finite, check_positive_scalar

__all__ = ["discretize", "phi1", "DISCRETIZATION_METHODS"]

#: The method names accepted by :func:`discretize`.
DISCRETIZATION_METHODS = ("zoh", "bilinear", "euler", "backward_euler", "mamba")

# The three rules that are one formula with a different weight alpha:
#   Abar = (I - alpha dt A)^-1 (I + (1 - alpha) dt A),  Bbar = (I - alpha dt A)^-1 dt B
# (the generalized bilinear transform, ``gbt`` in scipy.signal.cont2discrete).
_GBT_ALPHA = {"euler": 0.0, "bilinear": 0.5, "backward_euler": 1.0}


def phi1(z):
    """Return φ1(z) = (exp(z) - 1) / z elementwise, with φ1(0) = 1 exactly.

    This is the factor that zero-order hold puts in front of ``dt * B`` for a
    diagonal ``A``: Bbar = dt · φ1(dt a) · B.

    Parameters
    ----------
    z : array_like, real or complex, any shape

    Returns
    -------
    ndarray, same shape and dtype as ``z`` (integers give float64)

    Raises
    ------
    TypeError
        If ``z`` is not a real or complex numeric array.

    Notes
    -----
    Written as ``expm1(z) / z``.  The naive ``(exp(z) - 1) / z`` loses every
    digit when ``|z|`` is tiny: ``exp(z)`` rounds to 1 + z with an absolute
    error of about 1e-16, so for z = 1e-12 the difference ``exp(z) - 1`` keeps
    only 4 correct digits.  ``expm1`` computes exp(z) - 1 directly to full
    relative precision (also for complex z), and the division by z is then
    harmless.  The removable singularity is filled in with its limit,

        φ1(z) = 1 + z/2 + z²/6 + ...  →  1   as z → 0,

    so z == 0 (for example a = 0 in ``eq-zoh-diag``) gives exactly 1 and
    ``dt * phi1(dt * a)`` gives exactly ``dt``.  Computed in float64
    (complex128) and cast back.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import phi1
    >>> phi1(np.array([0.0, 1e-20, -1.0, 1.0]))
    array([1.        , 1.        , 0.63212056, 1.71828183])
    """
    z = as_array(z, "z")
    work = z.astype(np.complex128 if z.dtype.kind == "c" else np.float64)
    # [book:phi1]
    is_zero = work == 0
    safe_z = np.where(is_zero, 1.0, work)  # avoid 0/0; those entries are replaced
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.where(is_zero, 1.0, np.expm1(work) / safe_z)
    # [/book:phi1]
    return out.astype(z.dtype, copy=False)


def discretize(A, B, dt, method="zoh"):
    """Discretize x'(t) = A x + B u with step ``dt``: return ``(Abar, Bbar)``.

    Parameters
    ----------
    A : array_like, shape (N, N) or (N,)
        State matrix; a 1-D ``A`` is the diagonal of a diagonal state matrix
        (as in S4D and Mamba).  Real or complex.
    B : array_like, shape (N, P) or (N,)
        Input matrix; a 1-D ``B`` is a single input column.
    dt : float
        Step size Δ > 0.
    method : {"zoh", "bilinear", "euler", "backward_euler", "mamba"}
        Discretization rule, see the module docstring.  ``"mamba"`` keeps the
        exact ZOH transition Abar = exp(ΔA) but the Euler input matrix
        Bbar = ΔB, as the official Mamba code does.

    Returns
    -------
    Abar : ndarray, same shape as ``A`` (a diagonal stays an (N,) vector)
    Bbar : ndarray, same shape as ``B``
        Both in the result dtype of ``A`` and ``B`` (float32 in, float32 out;
        complex if either is complex), computed in float64 / complex128.

    Raises
    ------
    ValueError
        Unknown ``method``; ``A`` not square; ``B`` with a first dimension
        other than N; ``dt`` not finite or not > 0; NaN or inf in ``A`` or
        ``B``; ``I - alpha dt A`` singular (bilinear / backward Euler);
        a result that overflows (dt · Re(A) too large).
    TypeError
        Non-numeric ``A``, ``B`` or ``dt``.

    Notes
    -----
    Implements the book's equations:

    * ``"zoh"``: Abar = exp(ΔA) (``eq-zoh``) and
      Bbar = (ΔA)^-1 (exp(ΔA) - I) ΔB (``eq-zoh-b``).  For a full matrix both
      come from one block matrix exponential (Van Loan's trick),
      expm([[A, B], [0, 0]] Δ) = [[Abar, Bbar], [0, I]], which needs no
      inverse and so also works for singular ``A``.  For a diagonal ``A`` the
      closed form Bbar_n = Δ φ1(Δ a_n) B_n (``eq-zoh-diag``) is used, with
      φ1(z) = expm1(z)/z and its limit φ1(0) = 1, i.e. Bbar_n → Δ B_n as
      a_n → 0 (see :func:`phi1`).
    * ``"bilinear"`` (``eq-bilinear``), ``"euler"`` (``eq-euler``),
      ``"backward_euler"`` (``eq-backward-euler``) are the generalized
      bilinear transform with weight alpha = 1/2, 0, 1:
      Abar = (I - alpha ΔA)^-1 (I + (1 - alpha) ΔA),
      Bbar = (I - alpha ΔA)^-1 ΔB, computed with a linear solve, never an
      explicit inverse.
    * ``"mamba"`` (``eq-mamba-disc``): Abar = exp(ΔA), Bbar = ΔB.  The
      official ``selective_scan_ref`` forms ``deltaB_u = delta * B * u``;
      the authors call it "a mix of ZOH for A and Euler discretization for
      B" that "makes the implementation slightly simpler without affecting
      empirical performance" (state-spaces/mamba issue #114).  It differs
      from ZOH's Bbar by Δ²AB/2 + O(Δ³).

    Agrees with ``scipy.signal.cont2discrete`` (methods ``zoh``,
    ``bilinear``, ``euler``, ``backward_diff``) to float64 rounding.

    References
    ----------
    C. F. Van Loan, "Computing integrals involving the matrix exponential",
    IEEE Trans. Automatic Control 23(3), 1978.
    A. Gu, K. Goel, C. Ré, "Efficiently Modeling Long Sequences with
    Structured State Spaces" (S4), 2021, arXiv:2111.00396 (bilinear).
    A. Gu, T. Dao, "Mamba: Linear-Time Sequence Modeling with Selective
    State Spaces", 2023, arXiv:2312.00752, eq. (4) (ZOH).
    G. F. Franklin, J. D. Powell, M. L. Workman, "Digital Control of Dynamic
    Systems", 3rd ed., 1998 (ZOH and Tustin); ``scipy.signal.cont2discrete``.

    Examples
    --------
    A diagonal A stays a vector; the a → 0 entry gets Bbar = dt exactly:

    >>> import numpy as np
    >>> from ssm_ref import discretize
    >>> Abar, Bbar = discretize(np.array([-1.0, 0.0]), np.ones(2), dt=0.1)
    >>> Abar
    array([0.90483742, 1.        ])
    >>> Bbar
    array([0.09516258, 0.1       ])

    A full matrix (a damped oscillator) with the bilinear rule:

    >>> A = np.array([[0.0, 1.0], [-1.0, -0.5]])
    >>> Abar, Bbar = discretize(A, np.array([[0.0], [1.0]]), 0.1, method="bilinear")
    >>> Abar.shape, Bbar.shape
    ((2, 2), (2, 1))
    """
    method = check_choice(method, "method", DISCRETIZATION_METHODS)
    dt = check_positive_scalar(dt, "dt")
    A = as_array(A, "A", ndim=(1, 2))
    B = as_array(B, "B", ndim=(1, 2))
    N = A.shape[0]
    if A.ndim == 2 and A.shape != (N, N):
        raise ValueError(f"Parameter A has shape {A.shape} but should be square (N, N) "
                         "or a diagonal (N,)")
    if B.shape[0] != N:
        want = f"({N},) or ({N}, P)"
        raise ValueError(f"Parameter B has shape {B.shape} but should be {want} "
                         f"to match A of shape {A.shape}")
    if N == 0:
        raise ValueError(f"Parameter A has shape {A.shape}: N = 0 states; expected N >= 1")
    if B.ndim == 2 and B.shape[1] == 0:
        raise ValueError(f"Parameter B has shape {B.shape}: inputs P = 0; expected at least one")
    check_finite(A, "A")
    check_finite(B, "B")

    out_dtype = np.result_type(A.dtype, B.dtype)
    work = np.complex128 if out_dtype.kind == "c" else np.float64
    A64 = A.astype(work)
    B64 = B.astype(work)

    # [book:discretize-dispatch]
    with np.errstate(over="ignore", invalid="ignore"):
        if A.ndim == 1:
            Abar, Bbar = _discretize_diagonal(A64, B64, dt, method)
        else:
            Abar, Bbar = _discretize_matrix(A64, B64, dt, method)
    # [/book:discretize-dispatch]

    if not (np.all(np.isfinite(Abar)) and np.all(np.isfinite(Bbar))):
        growth = float(np.max(np.real(np.linalg.eigvals(A64) if A.ndim == 2 else A64)))
        raise ValueError(
            f"discretize: the result overflowed for dt = {dt!r} and A with largest "
            f"real part {growth!r} (dt * Re(A) too large); use a smaller dt or a "
            "stable A"
        )
    return Abar.astype(out_dtype, copy=False), Bbar.astype(out_dtype, copy=False)


def _discretize_diagonal(a, B, dt, method):
    """Diagonal A given as a vector a (N,); B (N,) or (N, P).  No validation."""
    if method in ("zoh", "mamba"):
        abar = np.exp(dt * a)  # (N,)  eq-zoh on the diagonal
        if method == "zoh":
            gain = dt * phi1(dt * a)  # (N,)  (exp(dt a) - 1) / a, -> dt as a -> 0  (eq-zoh-diag)
        else:
            gain = np.full_like(a, dt)  # (N,)  Euler for B  (eq-mamba-disc)
    else:
        alpha = _GBT_ALPHA[method]
        denom = 1.0 - alpha * dt * a  # (N,)  the diagonal of I - alpha dt A
        if np.any(denom == 0):
            raise ValueError(
                f"discretize: 1 - {alpha} * dt * a is zero for some entry of A "
                f"(dt = {dt!r}); the {method} rule is undefined there"
            )
        abar = (1.0 + (1.0 - alpha) * dt * a) / denom  # (N,)  eq-bilinear / eq-euler / eq-backward-euler
        gain = dt / denom  # (N,)
    Bbar = gain * B if B.ndim == 1 else gain[:, None] * B  # same shape as B
    return abar, Bbar


def _discretize_matrix(A, B, dt, method):
    """Full A (N, N); B (N,) or (N, n_u).  No validation."""
    N = A.shape[0]
    B2 = B.reshape(N, -1)  # (N, n_u)   a 1-D B is one input column
    n_u = B2.shape[1]
    if method == "zoh":
        # [book:zoh-van-loan]
        # Van Loan: expm([[A, B], [0, 0]] dt) = [[exp(A dt), ∫_0^dt exp(A s) ds B], [0, I]]
        M = np.zeros((N + n_u, N + n_u), dtype=A.dtype)  # (N+n_u, N+n_u)
        M[:N, :N] = A
        M[:N, N:] = B2
        E = scipy.linalg.expm(dt * M)  # (N+n_u, N+n_u)
        Abar, Bbar = E[:N, :N], E[:N, N:]  # (N, N), (N, n_u)   eq-zoh, eq-zoh-b
        # [/book:zoh-van-loan]
    elif method == "mamba":
        Abar = scipy.linalg.expm(dt * A)  # (N, N)  ZOH for A
        Bbar = dt * B2  # (N, n_u)  Euler for B  (eq-mamba-disc)
    else:
        alpha = _GBT_ALPHA[method]
        eye = np.eye(N, dtype=A.dtype)
        lhs = eye - alpha * dt * A  # (N, N)
        try:
            Abar = np.linalg.solve(lhs, eye + (1.0 - alpha) * dt * A)  # (N, N)
            Bbar = np.linalg.solve(lhs, dt * B2)  # (N, n_u)
        except np.linalg.LinAlgError:
            raise ValueError(
                f"discretize: I - {alpha} * dt * A is singular (dt = {dt!r}); the "
                f"{method} rule is undefined for this A and dt"
            ) from None
    return Abar, Bbar.reshape(B.shape)  # Bbar back to B's shape
