"""The continuous-time state-space model (chapter 1 of the book).

    x'(t) = A x(t) + B u(t)        (state equation,  ``eq-ssm-state``)
    y(t)  = C x(t) + D u(t)        (output equation, ``eq-ssm-output``)

Glossary
--------
N       state size (length of x)
P       number of inputs (length of u); a 1-D ``B`` means one input
Q       number of outputs (length of y); a 1-D ``C`` means one output
L       number of time samples
F       number of frequency points
A       (N, N) state matrix, or its diagonal as an (N,) vector
B       (N, P) or (N,) input matrix
C       (Q, N) or (N,) output matrix
D       feedthrough, with the shape of ``C @ B``: () for a single-input
        single-output (SISO) system, (Q,), (P,) or (Q, P); the scalar 0 is
        always accepted and means "no feedthrough"
t       (L,) sample times;  u  (L,) or (L, P) input samples
delta   a step between two samples, t[k+1] - t[k]

Shapes follow NumPy's ``C @ M @ B`` rule: a 1-D ``B`` or ``C`` drops its
axis from the result, so a SISO system (``B`` and ``C`` vectors) gives plain
(L,) signals.  Everything is computed in float64 (complex128 for complex
systems) and returned in the dtype of the inputs (float32 in, float32 out).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from ._validation import as_array, check_finite, check_positive_scalar
from .discretize import discretize

__all__ = [
    "ContinuousSSM",
    "poles",
    "is_stable",
    "impulse_response",
    "step_response",
    "simulate",
    "transfer_function",
    "mass_spring_damper",
]


# --------------------------------------------------------------------------
# validation helpers (private)
# --------------------------------------------------------------------------

def _output_dtype(*objs):
    """Result dtype of the user's inputs; Python scalars do not upcast."""
    dtypes = []
    for obj in objs:
        if obj is None:
            continue
        if isinstance(obj, (numbers.Number, np.bool_)) and not isinstance(obj, np.generic):
            dtypes.append(obj)  # weak Python scalar (NEP 50)
        else:
            dtypes.append(np.asarray(obj).dtype)
    dt = np.result_type(*dtypes)
    return np.dtype(np.float64) if dt.kind in "biu" else dt


def _check_A(A):
    """Return A as an (N, N) array (a 1-D A is a diagonal)."""
    A = as_array(A, "A", ndim=(1, 2))
    if A.ndim == 2 and A.shape[0] != A.shape[1]:
        raise ValueError(f"Parameter A has shape {A.shape} but should be square (N, N) "
                         "or a diagonal (N,)")
    if A.shape[0] == 0:
        raise ValueError(f"Parameter A has shape {A.shape}: N = 0 states; expected N >= 1")
    check_finite(A, "A")
    return np.diag(A) if A.ndim == 1 else A


def _check_system(A, B, C, D):
    """Validate (A, B, C, D); return float64/complex128 copies and the dtype.

    The returned D has exactly the shape of ``C @ B`` (zeros for D == 0).
    """
    A2 = _check_A(A)
    N = A2.shape[0]
    Bv = as_array(B, "B", ndim=(1, 2))
    if Bv.shape[0] != N:
        raise ValueError(f"Parameter B has shape {Bv.shape} but should be ({N},) or "
                         f"({N}, P) to match A with N = {N}")
    Cv = as_array(C, "C", ndim=(1, 2))
    if Cv.shape[-1] != N:
        raise ValueError(f"Parameter C has shape {Cv.shape} but should be ({N},) or "
                         f"(Q, {N}) to match A with N = {N}")
    for arr, name, axis, what in ((Bv, "B", 1, "inputs P"), (Cv, "C", 0, "outputs Q")):
        if arr.ndim == 2 and arr.shape[axis] == 0:
            raise ValueError(f"Parameter {name} has shape {arr.shape}: {what} = 0; "
                             "expected at least one")
    Dv = as_array(D, "D", ndim=(0, 1, 2))
    out_shape = Cv.shape[:-1] + Bv.shape[1:]  # shape of C @ B
    if Dv.ndim == 0 and Dv == 0:
        Dv = np.zeros(out_shape, dtype=Dv.dtype)
    elif Dv.shape != out_shape:
        raise ValueError(
            f"Parameter D has shape {Dv.shape} but should be {out_shape} (the shape of "
            f"C @ B for C {Cv.shape} and B {Bv.shape}), or the scalar 0"
        )
    for arr, name in ((Bv, "B"), (Cv, "C"), (Dv, "D")):
        check_finite(arr, name)
    dtype = _output_dtype(A, B, C, D)
    work = np.complex128 if dtype.kind == "c" else np.float64
    return A2.astype(work), Bv.astype(work), Cv.astype(work), Dv.astype(work), dtype


def _check_times(t, name="t", *, nonnegative=False, increasing=False):
    t = as_array(t, name, allow_complex=False, ndim=1)
    if t.shape[0] == 0:
        raise ValueError(f"Parameter {name} has shape {t.shape} but needs at least one sample")
    check_finite(t, name)
    t = t.astype(np.float64)
    if nonnegative and np.any(t < 0):
        raise ValueError(f"Parameter {name} has negative times (min {t.min()!r}); "
                         "responses are defined for t >= 0")
    if increasing and np.any(np.diff(t) <= 0):
        raise ValueError(f"Parameter {name} must be strictly increasing")
    return t


# --------------------------------------------------------------------------
# stability
# --------------------------------------------------------------------------

def poles(A):
    """Return the poles of the system: the eigenvalues of ``A``.

    Parameters
    ----------
    A : array_like, shape (N, N) or (N,)
        State matrix, or its diagonal.

    Returns
    -------
    ndarray, shape (N,), complex
        Eigenvalues sorted by real part, then imaginary part; complex64 for
        float32/complex64 input, complex128 otherwise.

    Raises
    ------
    ValueError
        ``A`` not square, or with NaN/inf.

    Notes
    -----
    The free response x(t) = exp(At) x(0) is a combination of the modes
    exp(λ t) for the eigenvalues λ of A (``eq-ssm-modes`` in the book), and
    they are the poles of the transfer function ``eq-transfer``.

    Examples
    --------
    >>> from ssm_ref import poles, mass_spring_damper
    >>> A, B, C, D = mass_spring_damper(m=1.0, k=1.0, c=0.0)
    >>> poles(A)
    array([0.-1.j, 0.+1.j])
    """
    A2 = _check_A(A)
    dtype = _output_dtype(A)
    lam = np.linalg.eigvals(A2.astype(np.complex128 if dtype.kind == "c" else np.float64))
    lam = np.sort_complex(lam.astype(np.complex128))  # (N,)
    return lam.astype(np.result_type(dtype, np.complex64), copy=False)


def is_stable(A):
    """True when every eigenvalue of ``A`` has a strictly negative real part.

    Parameters
    ----------
    A : array_like, shape (N, N) or (N,)

    Returns
    -------
    bool

    Raises
    ------
    ValueError
        ``A`` not square, or with NaN/inf.

    Notes
    -----
    Asymptotic stability of ``eq-ssm-state``: exp(At) → 0 as t → ∞ exactly
    when all poles lie in the open left half plane.  An eigenvalue on the
    imaginary axis (an undamped oscillator, a pure integrator) is *not*
    counted as stable: its mode never decays.  The test is exact on the
    computed eigenvalues; a pole within rounding of the axis can go either
    way.

    Examples
    --------
    >>> from ssm_ref import is_stable, mass_spring_damper
    >>> is_stable(mass_spring_damper(1.0, 1.0, 0.5)[0])
    True
    >>> is_stable(mass_spring_damper(1.0, 1.0, 0.0)[0])
    False
    """
    return bool(np.all(np.real(poles(A)) < 0))


# --------------------------------------------------------------------------
# responses
# --------------------------------------------------------------------------

def impulse_response(A, B, C, D, t):
    """Return the impulse response h(t) = C exp(A t) B at times ``t``.

    Parameters
    ----------
    A : array_like, shape (N, N) or (N,)
    B : array_like, shape (N, P) or (N,)
    C : array_like, shape (Q, N) or (N,)
    D : array_like or 0, shape of ``C @ B``
        Accepted for a uniform signature.  Its contribution D δ(t) is a
        Dirac pulse at t = 0 and cannot be sampled; it is left out, as
        ``scipy.signal.impulse`` does.
    t : array_like, shape (L,)
        Times >= 0, in any order.

    Returns
    -------
    ndarray, shape (L,) + shape of ``C @ B``
        h[k] = C @ expm(A t[k]) @ B, e.g. (L,) for a SISO system, (L, Q, P)
        for matrices.

    Raises
    ------
    ValueError
        Shapes that do not fit together, NaN/inf, negative times.

    Notes
    -----
    The response to u(t) = δ(t) from x(0) = 0 is the free response from
    x(0+) = B; it is the kernel of the convolution y = h * u
    (``eq-ssm-impulse`` in the book).  Each sample uses its own matrix
    exponential (no error accumulates along t).

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import impulse_response
    >>> impulse_response(np.array([-2.0]), np.array([1.0]), np.array([3.0]), 0.0,
    ...                  np.array([0.0, 0.5]))   # 3 exp(-2 t)
    array([3.        , 1.10363832])
    """
    A2, B2, C2, _, dtype = _check_system(A, B, C, D)
    t = _check_times(t, nonnegative=True)
    # [book:impulse-response]
    K = np.stack([C2 @ scipy.linalg.expm(A2 * tk) @ B2 for tk in t])  # (L,) + C@B shape
    # [/book:impulse-response]
    return K.astype(dtype, copy=False)


def step_response(A, B, C, D, t):
    """Return the step response s(t) = C ∫_0^t exp(A τ) dτ B + D at times ``t``.

    Parameters
    ----------
    A, B, C, D : array_like
        The system, shapes as in :func:`impulse_response`.
    t : array_like, shape (L,)
        Times >= 0, in any order.

    Returns
    -------
    ndarray, shape (L,) + shape of ``C @ B``

    Raises
    ------
    ValueError
        Shapes that do not fit together, NaN/inf, negative times.

    Notes
    -----
    The response to u(t) = 1 for t >= 0 from x(0) = 0.  The integral is the
    zero-order-hold input matrix of a single step of length t (``eq-zoh-b``
    in chapter 2), computed with the block matrix exponential, so it needs
    no A^-1 and works for a singular A (an integrator).  For a stable
    system s(t) → H(0) = D - C A^-1 B as t → ∞ (``eq-transfer``).

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import step_response
    >>> step_response(np.array([-2.0]), np.array([1.0]), np.array([3.0]), 0.0,
    ...               np.array([0.0, 0.5, 50.0]))   # 1.5 (1 - exp(-2 t))
    array([0.        , 0.94818084, 1.5       ])
    """
    A2, B2, C2, D2, dtype = _check_system(A, B, C, D)
    t = _check_times(t, nonnegative=True)
    out = []
    for tk in t:
        if tk == 0:
            x = np.zeros_like(B2)  # (N,) or (N, P)  nothing has been integrated yet
        else:
            _, x = discretize(A2, B2, tk, method="zoh")  # ∫_0^tk exp(A s) ds B
        out.append(C2 @ x + D2)  # C @ B shape
    return np.stack(out).astype(dtype, copy=False)  # (L,) + C@B shape


def simulate(A, B, C, D, u, t, x0=None):
    """Simulate the system on samples ``u[k]`` held constant on [t[k], t[k+1]).

    Parameters
    ----------
    A, B, C, D : array_like
        The system, shapes as in :func:`impulse_response`.
    u : array_like, shape (L,) if ``B`` is 1-D, else (L, P)
        Input samples; ``u[k]`` is applied from t[k] to t[k+1]
        (zero-order hold).
    t : array_like, shape (L,)
        Strictly increasing sample times, uniform or not.  The simulation
        starts at t[0] with x(t[0]) = x0.
    x0 : array_like, shape (N,), optional
        Initial state, zero by default.

    Returns
    -------
    y : ndarray, shape (L,) + shape of ``C @ B`` without its input axis,
        i.e. (L,) for one output, (L, Q) for Q outputs.
        y[k] = C x(t[k]) + D u[k].
    x : ndarray, shape (L, N)
        The state at the sample times.

    Raises
    ------
    ValueError
        Shapes that do not fit together (``u`` must match ``t`` and ``B``),
        NaN/inf, ``t`` not strictly increasing.

    Notes
    -----
    Exact (to rounding) for a piecewise-constant input: each interval
    uses its own ZOH pair Abar_k = exp(Δ_k A), Bbar_k = ∫_0^Δ_k exp(A s) ds B
    with Δ_k = t[k+1] - t[k] (``eq-zoh``, ``eq-zoh-b``), and

        x[k+1] = Abar_k x[k] + Bbar_k u[k]     (``eq-zoh-recurrence``)

    On a uniform grid one pair serves every step.  The same convention as
    ``scipy.signal.lsim(..., interp=False)``.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import simulate
    >>> t = np.linspace(0.0, 1.0, 3)
    >>> y, x = simulate(np.array([-2.0]), np.array([1.0]), np.array([3.0]), 0.0,
    ...                 np.ones(3), t)
    >>> y   # the step response 1.5 (1 - exp(-2 t)), exactly
    array([0.        , 0.94818084, 1.29699707])
    """
    A2, B2, C2, D2, dtype = _check_system(A, B, C, D)
    t = _check_times(t, increasing=True)
    L, N = t.shape[0], A2.shape[0]
    u_arr = as_array(u, "u")
    want_u = (L,) + B2.shape[1:]
    if u_arr.shape != want_u:
        raise ValueError(f"Parameter u has shape {u_arr.shape} but should be {want_u} "
                         f"(L = len(t) = {L}, inputs from B of shape {B2.shape})")
    check_finite(u_arr, "u")
    if x0 is not None:
        x0_arr = as_array(x0, "x0")
        if x0_arr.shape != (N,):
            raise ValueError(f"Parameter x0 has shape {x0_arr.shape} but should be ({N},)")
        check_finite(x0_arr, "x0")
    dtype = np.result_type(dtype, _output_dtype(u, x0))
    work = np.complex128 if dtype.kind == "c" else np.float64
    u64 = u_arr.astype(work)  # (L,) or (L, P)
    x = np.zeros(N, dtype=work) if x0 is None else x0_arr.astype(work)  # (N,)

    steps = np.diff(t)  # (L-1,)
    uniform = L > 1 and np.allclose(steps, steps[0], rtol=1e-12, atol=0.0)
    if uniform:
        Abar, Bbar = discretize(A2, B2, steps[0], method="zoh")  # (N, N), B's shape

    xs = np.empty((L, N), dtype=work)  # (L, N)
    for k in range(L):
        xs[k] = x
        if k == L - 1:
            break
        if not uniform:
            Abar, Bbar = discretize(A2, B2, steps[k], method="zoh")
        x = Abar @ x + Bbar @ u64[k] if B2.ndim == 2 else Abar @ x + Bbar * u64[k]  # (N,)

    ys = xs @ C2.T  # (L,) or (L, Q)
    if B2.ndim == 2:
        ys = ys + u64 @ D2.T  # D (Q, P) or (P,):  (L, Q) or (L,)
    else:
        ys = ys + u64[:, None] * D2 if D2.ndim == 1 else ys + u64 * D2  # (L, Q) or (L,)
    return ys.astype(dtype, copy=False), xs.astype(dtype, copy=False)


# --------------------------------------------------------------------------
# frequency domain
# --------------------------------------------------------------------------

def transfer_function(A, B, C, D, s):
    """Evaluate H(s) = C (sI - A)^-1 B + D at complex points ``s``.

    Parameters
    ----------
    A, B, C, D : array_like
        The system, shapes as in :func:`impulse_response`.
    s : complex or array_like of complex, any shape S
        Points of the complex plane; s = iω gives the frequency response.

    Returns
    -------
    ndarray, complex, shape S + shape of ``C @ B``
        complex64 for float32/complex64 systems, complex128 otherwise.

    Raises
    ------
    ValueError
        Shapes that do not fit together, NaN/inf, or ``s`` at a pole
        (sI - A singular).

    Notes
    -----
    The Laplace transform of the impulse response, ``eq-transfer`` in the
    book.  Each point is one linear solve (sI - A) X = B, never an explicit
    inverse.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import transfer_function
    >>> transfer_function(np.array([-2.0]), np.array([1.0]), np.array([3.0]), 0.0,
    ...                   np.array([0.0, 2.0j]))   # 3 / (s + 2)
    array([1.5 +0.j , 0.75-0.75j])
    """
    A2, B2, C2, D2, dtype = _check_system(A, B, C, D)
    s_arr = np.asarray(s)
    if s_arr.dtype.kind not in "biufc":
        raise TypeError(f"Parameter s has dtype {s_arr.dtype} but should be numeric (complex)")
    check_finite(s_arr, "s")
    s_flat = s_arr.astype(np.complex128).ravel()  # (F,)
    eye = np.eye(A2.shape[0])
    out = []
    # [book:transfer-function]
    for sk in s_flat:
        try:
            X = np.linalg.solve(sk * eye - A2, B2)  # (N,) or (N, P)
        except np.linalg.LinAlgError:
            raise ValueError(f"Parameter s = {sk!r} is a pole of the system "
                             "(sI - A is singular)") from None
        out.append(C2 @ X + D2)  # C@B shape
    # [/book:transfer-function]
    H = np.stack(out) if out else np.zeros((0,) + D2.shape, np.complex128)  # (F,) + C@B shape
    H = H.reshape(s_arr.shape + D2.shape)  # S + C@B shape
    return H.astype(np.result_type(dtype, np.complex64), copy=False)


# --------------------------------------------------------------------------
# a physical example and a small container
# --------------------------------------------------------------------------

def mass_spring_damper(m=1.0, k=1.0, c=0.5):
    """State-space matrices of a mass on a spring with a damper.

    m p''(t) + c p'(t) + k p(t) = u(t): a force u pushes a mass m held by a
    spring of stiffness k and a damper of coefficient c; the output is the
    position p.

    Parameters
    ----------
    m : float
        Mass, > 0.
    k : float
        Spring stiffness, > 0.
    c : float
        Damping coefficient, >= 0 (0: an undamped oscillator).

    Returns
    -------
    A : ndarray, shape (2, 2)
        [[0, 1], [-k/m, -c/m]] for the state x = (p, p').
    B : ndarray, shape (2,)
        [0, 1/m].
    C : ndarray, shape (2,)
        [1, 0] (observe the position).
    D : float
        0.0 (a force does not move the mass instantly).

    Raises
    ------
    ValueError
        ``m`` or ``k`` not > 0, ``c`` negative, or any of them not finite.

    Notes
    -----
    Natural frequency ω0 = sqrt(k/m) and damping ratio ζ = c / (2 sqrt(k m)):
    the poles are -ζω0 ± ω0 sqrt(ζ² - 1); ζ < 1 oscillates (underdamped).

    Examples
    --------
    >>> from ssm_ref import mass_spring_damper
    >>> A, B, C, D = mass_spring_damper(m=2.0, k=8.0, c=1.0)
    >>> A
    array([[ 0. ,  1. ],
           [-4. , -0.5]])
    """
    m = check_positive_scalar(m, "m")
    k = check_positive_scalar(k, "k")
    if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Real):
        raise TypeError(f"Parameter c = {c!r} must be a real number")
    c = float(c)
    if not np.isfinite(c) or c < 0:
        raise ValueError(f"Parameter c = {c!r} must be finite and >= 0")
    # [book:mass-spring-damper]
    A = np.array([[0.0, 1.0], [-k / m, -c / m]])  # state h = (position, velocity)
    B = np.array([0.0, 1.0 / m])                   # the force accelerates the mass
    C = np.array([1.0, 0.0])                       # we observe the position
    # [/book:mass-spring-damper]
    return A, B, C, 0.0


@dataclass(frozen=True, eq=False)  # arrays: no elementwise ==
class ContinuousSSM:
    """A continuous-time SSM x' = A x + B u, y = C x + D u (validated).

    A thin container: each method calls the module function of the same
    name with (A, B, C, D), so ``sys.step_response(t)`` is
    ``step_response(sys.A, sys.B, sys.C, sys.D, t)``.

    Parameters
    ----------
    A : array_like, shape (N, N) or (N,)
    B : array_like, shape (N, P) or (N,)
    C : array_like, shape (Q, N) or (N,)
    D : array_like or 0, shape of ``C @ B``, default 0

    Raises
    ------
    ValueError, TypeError
        As :func:`simulate` for shapes that do not fit or NaN/inf.

    Notes
    -----
    Implements ``eq-ssm-state`` and ``eq-ssm-output``.  The arrays are kept
    as given (after validation); nothing is upcast.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import ContinuousSSM, mass_spring_damper
    >>> sys = ContinuousSSM(*mass_spring_damper(m=1.0, k=4.0, c=0.0))
    >>> sys.N, sys.is_stable()
    (2, False)
    >>> Abar, Bbar = sys.discretize(0.1)
    >>> Bbar.shape
    (2,)
    """

    A: Any
    B: Any
    C: Any
    D: Any = 0.0

    def __post_init__(self):
        _check_system(self.A, self.B, self.C, self.D)  # raises on bad input
        for name in ("A", "B", "C"):
            object.__setattr__(self, name, np.asarray(getattr(self, name)))

    @property
    def N(self):
        """State size."""
        return int(self.A.shape[0])

    def poles(self):
        """Eigenvalues of A, see :func:`poles`."""
        return poles(self.A)

    def is_stable(self):
        """See :func:`is_stable`."""
        return is_stable(self.A)

    def impulse_response(self, t):
        """See :func:`impulse_response`."""
        return impulse_response(self.A, self.B, self.C, self.D, t)

    def step_response(self, t):
        """See :func:`step_response`."""
        return step_response(self.A, self.B, self.C, self.D, t)

    def simulate(self, u, t, x0=None):
        """See :func:`simulate`."""
        return simulate(self.A, self.B, self.C, self.D, u, t, x0=x0)

    def transfer_function(self, s):
        """See :func:`transfer_function`."""
        return transfer_function(self.A, self.B, self.C, self.D, s)

    def discretize(self, dt, method="zoh"):
        """(Abar, Bbar) for step ``dt``, see :func:`ssm_ref.discretize`."""
        return discretize(self.A, self.B, dt, method=method)
