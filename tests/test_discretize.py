"""Tests of ssm_ref.discretize: outside oracle (scipy.signal.cont2discrete),
diagonal == full matrix, the a -> 0 limit against a Taylor series, convergence
orders as dt -> 0 against the analytic solution, stability regions, dtypes and
bad input.
"""
import numpy as np
import pytest
import scipy.linalg
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

from conftest import assert_close
from ssm_ref import DISCRETIZATION_METHODS, discretize, phi1

SCIPY_NAME = {"zoh": "zoh", "bilinear": "bilinear", "euler": "euler",
              "backward_euler": "backward_diff"}
GBT_ALPHA = {"euler": 0.0, "bilinear": 0.5, "backward_euler": 1.0}


def random_stable(rng, n, complex_=False):
    """A random (n, n) matrix shifted so every eigenvalue has Re <= -0.1."""
    M = rng.normal(size=(n, n))
    if complex_:
        M = M + 1j * rng.normal(size=(n, n))
    shift = np.max(np.linalg.eigvals(M).real) + 0.1
    return M - shift * np.eye(n)


def scipy_discretize(A, B, dt, method):
    """Oracle: cont2discrete on (A, B) with dummy C, D; returns B's shape."""
    B2 = B.reshape(A.shape[0], -1)
    C = np.zeros((1, A.shape[0]))
    D = np.zeros((1, B2.shape[1]))
    if method == "mamba":
        Ad = scipy.signal.cont2discrete((A, B2, C, D), dt, method="zoh")[0]
        return Ad, dt * B  # the official code: deltaB = delta * B
    Ad, Bd = scipy.signal.cont2discrete((A, B2, C, D), dt, method=SCIPY_NAME[method])[:2]
    return Ad, Bd.reshape(B.shape)


# ---------------------------------------------------------------- oracle ----

@pytest.mark.parametrize("method", DISCRETIZATION_METHODS)
@pytest.mark.parametrize("b_shape", [(5,), (5, 1), (5, 3)])
@pytest.mark.parametrize("dt", [1e-3, 0.1, 0.7])
def test_matches_scipy_cont2discrete(rng, method, b_shape, dt):
    A = random_stable(rng, 5)
    B = rng.normal(size=b_shape)
    Abar, Bbar = discretize(A, B, dt, method=method)
    Ad, Bd = scipy_discretize(A, B, dt, method)
    assert Abar.shape == A.shape and Bbar.shape == B.shape
    assert_close(Abar, Ad, err_msg=f"Abar {method}")
    assert_close(Bbar, Bd, err_msg=f"Bbar {method}")


@pytest.mark.parametrize("method", ["euler", "bilinear", "backward_euler"])
def test_gbt_alpha_equivalence(rng, method):
    """The three rules are scipy's generalized bilinear transform at alpha 0, 1/2, 1."""
    A, B = random_stable(rng, 4), rng.normal(size=(4, 2))
    Ad, Bd = scipy.signal.cont2discrete((A, B, np.eye(4), np.zeros((4, 2))), 0.2,
                                        method="gbt", alpha=GBT_ALPHA[method])[:2]
    Abar, Bbar = discretize(A, B, 0.2, method=method)
    assert_close(Abar, Ad)
    assert_close(Bbar, Bd)


def test_zoh_singular_A_is_an_integrator():
    """A = 0 (singular): ZOH must give Abar = I, Bbar = dt B with no inverse of A."""
    B = np.array([[1.0], [2.0]])
    Abar, Bbar = discretize(np.zeros((2, 2)), B, 0.5)
    assert_close(Abar, np.eye(2))
    assert_close(Bbar, 0.5 * B)
    # a double integrator: x1' = x2, x2' = u  ->  Bbar = (dt^2/2, dt)
    Abar, Bbar = discretize(np.array([[0.0, 1.0], [0.0, 0.0]]), np.array([0.0, 1.0]), 0.5)
    assert_close(Abar, np.array([[1.0, 0.5], [0.0, 1.0]]))
    assert_close(Bbar, np.array([0.125, 0.5]))


@pytest.mark.parametrize("method", DISCRETIZATION_METHODS)
def test_complex_matrix_matches_scipy(rng, method):
    A = random_stable(rng, 3, complex_=True)
    B = rng.normal(size=(3, 2)) + 1j * rng.normal(size=(3, 2))
    Abar, Bbar = discretize(A, B, 0.3, method=method)
    Ad, Bd = scipy_discretize(A, B, 0.3, method)
    assert Abar.dtype == np.complex128
    assert_close(Abar, Ad)
    assert_close(Bbar, Bd)


# ------------------------------------------------------ diagonal == full ----

@pytest.mark.parametrize("method", DISCRETIZATION_METHODS)
@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("b_shape", [(6,), (6, 2)])
def test_diagonal_equals_full_matrix(rng, method, complex_, b_shape):
    a = -rng.uniform(0.01, 3.0, size=6)
    if complex_:
        a = a + 1j * rng.uniform(-10, 10, size=6)
    a[0] = 0.0  # the a -> 0 limit sits next to ordinary entries
    B = rng.normal(size=b_shape)
    abar, bbar = discretize(a, B, 0.25, method=method)
    Abar, Bbar = discretize(np.diag(a), B, 0.25, method=method)
    assert abar.shape == (6,) and bbar.shape == B.shape
    assert_close(np.diag(abar), Abar, err_msg="diagonal Abar")
    assert_close(bbar, Bbar, err_msg="diagonal Bbar")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6),
       log_dt=st.floats(-4, 1), method=st.sampled_from(DISCRETIZATION_METHODS))
def test_property_diagonal_equals_full(seed, n, log_dt, method):
    rng = np.random.default_rng(seed)
    a = -np.exp(rng.uniform(-12, 1, size=n)) + 1j * rng.normal(scale=5, size=n)
    B = rng.normal(size=n)
    dt = 10.0 ** log_dt
    abar, bbar = discretize(a, B, dt, method=method)
    Abar, Bbar = discretize(np.diag(a), B, dt, method=method)
    assert_close(np.diag(abar), Abar)
    assert_close(bbar, Bbar)


# -------------------------------------------------------- the a -> 0 limit ---

def taylor_phi1(z, terms=30):
    """Oracle: phi1(z) = sum_k z^k / (k+1)!, summed in float64 (|z| << 1)."""
    total, term = np.zeros_like(z), np.ones_like(z)
    for k in range(terms):
        total = total + term
        term = term * z / (k + 2)
    return total


SMALL = [0.0, 1e-300, 1e-200, 1e-20, 1e-12, 1e-8, 1e-5, 1e-3]


@pytest.mark.parametrize("phase", [1.0, -1.0, 1j, -1 + 1j, np.exp(2.5j)])
def test_zoh_diagonal_small_a_limit(phase):
    """Bbar = dt phi1(dt a) B stays exact for tiny |a|, real and complex."""
    dt = 0.1
    a = np.array(SMALL) * phase  # (8,)
    B = np.ones_like(a, dtype=np.complex128 if np.iscomplexobj(a) else np.float64)
    abar, bbar = discretize(a, B, dt, method="zoh")
    assert_close(bbar, dt * taylor_phi1(dt * a), err_msg="Bbar vs Taylor series")
    assert_close(abar, np.exp(dt * a))
    assert bbar[0] == dt and bbar[1] == dt  # a = 0 and a = 1e-300: the limit, exactly


def test_naive_formula_would_fail_the_limit_test():
    """The oracle is sharp: (exp(dt a) - 1)/a loses digits that expm1 keeps."""
    dt, a = 0.1, 1e-12
    naive = (np.exp(dt * a) - 1) / a
    oracle = dt * taylor_phi1(np.array(dt * a))
    assert abs(naive - oracle) / oracle > 1e-6  # naive: ~4 good digits
    assert abs(discretize(np.array([a]), np.ones(1), dt)[1][0] - oracle) / oracle < 1e-15


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128, np.complex64])
def test_phi1_against_definition(rng, dtype):
    z = rng.normal(scale=3, size=50).astype(dtype)
    if np.iscomplexobj(z):
        z = z + 1j * rng.normal(scale=3, size=50).astype(dtype)
    out = phi1(z)
    assert out.dtype == dtype and out.shape == z.shape
    z64 = z.astype(np.complex128)
    assert_close(out, (np.exp(z64) - 1) / z64, dtype=dtype)  # fine for |z| ~ 1
    assert_close(phi1(np.array([0.0, 1e-9, -1e-4])),
                 taylor_phi1(np.array([0.0, 1e-9, -1e-4])))


# ------------------------------------------------------- convergence rates ---

def oscillator():
    """A damped oscillator (poles -0.25 ± 1.98i) and an input sin(w t)."""
    A = np.array([[0.0, 1.0], [-4.0, -0.5]])
    B = np.array([0.0, 1.0])
    return A, B, 1.3


def exact_sine_response(A, B, w, t):
    """Oracle: x(t) for x(0) = 0, u = sin(w t).  Particular solution
    Im[(iwI - A)^-1 B e^{iwt}] plus the free response that cancels it at 0."""
    g = np.linalg.solve(1j * w * np.eye(len(B)) - A, B)  # (N,) complex gain
    xp = np.imag(np.outer(np.exp(1j * w * t), g))  # (L, N)
    free = np.stack([scipy.linalg.expm(A * tk) @ xp[0] for tk in t])  # (L, N)
    return xp - free


def run_recurrence(Abar, Bbar, u):
    x, xs = np.zeros(Abar.shape[0]), [np.zeros(Abar.shape[0])]
    for k in range(len(u)):
        x = Abar @ x + Bbar * u[k]
        xs.append(x)
    return np.array(xs)  # (L+1, N)


def measured_order(method, ns=(400, 800, 1600, 3200), T=8.0):
    """Log-log slope of max |x_k - x(t_k)| against dt; inputs sampled at the
    middle of each step (the recurrence holds u_k over [t_k, t_k + dt))."""
    A, B, w = oscillator()
    errs, dts = [], []
    t_check = np.linspace(0.0, T, 9)  # compare on a common coarse grid
    x_true = exact_sine_response(A, B, w, t_check)
    for n in ns:
        dt = T / n
        Abar, Bbar = discretize(A, B, dt, method=method)
        u_mid = np.sin(w * (np.arange(n) + 0.5) * dt)
        xs = run_recurrence(Abar, Bbar, u_mid)[:: n // 8]  # (9, N)
        errs.append(np.max(np.abs(xs - x_true)))
        dts.append(dt)
    slope = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    return slope, errs


@pytest.mark.parametrize("method,order", [("euler", 1), ("backward_euler", 1),
                                          ("bilinear", 2), ("zoh", 2), ("mamba", 1)])
def test_convergence_order_on_smooth_input(method, order):
    slope, errs = measured_order(method)
    assert abs(slope - order) < 0.1, f"{method}: slope {slope:.3f}, errors {errs}"
    assert errs[-1] < errs[0]


def test_zoh_is_exact_for_piecewise_constant_input(rng):
    """ZOH has no discretization error at all when u really is held constant:
    compare with solve_ivp (tight tolerances) run interval by interval."""
    A, B, _ = oscillator()
    for n in (5, 20, 80):
        dt = 4.0 / n
        u = rng.normal(size=n)
        Abar, Bbar = discretize(A, B, dt)
        xs = run_recurrence(Abar, Bbar, u)
        x, ref = np.zeros(2), [np.zeros(2)]
        for k in range(n):
            sol = solve_ivp(lambda t, x, uk=u[k]: A @ x + B * uk, (0.0, dt), x,
                            method="DOP853", rtol=1e-13, atol=1e-15)
            x = sol.y[:, -1]
            ref.append(x)
        err = np.max(np.abs(xs - np.array(ref)))
        assert err < 1e-11, f"n={n}: ZOH error {err:.2e} for a piecewise-constant input"


def test_mamba_b_differs_from_zoh_by_dt_squared(rng):
    """|Bbar_zoh - Bbar_mamba| = dt^2 |A B| / 2 + O(dt^3): slope 2."""
    A, B = random_stable(rng, 4), rng.normal(size=4)
    dts = np.array([1e-1, 5e-2, 2.5e-2, 1.25e-2])
    diffs = [np.linalg.norm(discretize(A, B, dt)[1] - discretize(A, B, dt, "mamba")[1])
             for dt in dts]
    slope = np.polyfit(np.log(dts), np.log(diffs), 1)[0]
    assert abs(slope - 2) < 0.05
    lead = dts[-1] ** 2 * np.linalg.norm(A @ B) / 2
    assert abs(diffs[-1] - lead) / lead < 0.05
    # and A is identical between the two
    assert_close(discretize(A, B, 0.1, "mamba")[0], discretize(A, B, 0.1)[0])


# ------------------------------------------------------ stability regions ---

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5), log_dt=st.floats(-3, 2))
def test_property_stability_is_kept(seed, n, log_dt):
    """ZOH, bilinear, backward Euler (and Mamba's A) map the open left half
    plane into the unit disk for every dt; forward Euler only when
    |1 + dt λ| < 1."""
    rng = np.random.default_rng(seed)
    A = random_stable(rng, n)
    B = rng.normal(size=(n, 1))
    dt = 10.0 ** log_dt
    for method in ("zoh", "bilinear", "backward_euler", "mamba"):
        rho = np.max(np.abs(np.linalg.eigvals(discretize(A, B, dt, method)[0])))
        assert rho < 1, f"{method}: spectral radius {rho} at dt={dt}"
    lam = np.linalg.eigvals(A)
    rho_euler = np.max(np.abs(np.linalg.eigvals(discretize(A, B, dt, "euler")[0])))
    assert_close(np.array(rho_euler), np.array(np.max(np.abs(1 + dt * lam))))


def test_backward_euler_damps_some_unstable_systems():
    """Backward Euler maps a = 3 (unstable) to 1/(1 - 3 dt), inside the unit disk for dt > 2/3."""
    abar, _ = discretize(np.array([3.0]), np.ones(1), 1.0, method="backward_euler")
    assert_close(abar, np.array([-0.5]))


# ---------------------------------------------------------------- dtypes ----

@pytest.mark.parametrize("method", DISCRETIZATION_METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
@pytest.mark.parametrize("diagonal", [True, False])
def test_dtype_contract(rng, method, dtype, diagonal):
    a = -rng.uniform(0.1, 2.0, size=4)
    A = (a if diagonal else random_stable(rng, 4)).astype(dtype)
    B = rng.normal(size=(4, 2)).astype(dtype)
    Abar, Bbar = discretize(A, B, 0.1, method=method)
    assert Abar.dtype == dtype and Bbar.dtype == dtype
    work = np.complex128 if np.iscomplexobj(A) else np.float64
    ref_A, ref_B = discretize(A.astype(work), B.astype(work), 0.1, method=method)
    assert_close(Abar, ref_A.astype(dtype))
    assert_close(Bbar, ref_B.astype(dtype))


# ------------------------------------------------------------- bad input ----

@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(method="tustin"), ValueError, "method"),
    (dict(method=None), ValueError, "method"),
    (dict(A=np.ones((3, 2))), ValueError, r"A has shape \(3, 2\)"),
    (dict(A=np.ones((2, 2, 2))), ValueError, "A has shape"),
    (dict(B=np.ones(4)), ValueError, r"B has shape \(4,\)"),
    (dict(B=np.ones((3, 2))), ValueError, r"B has shape \(3, 2\)"),
    (dict(A=-np.ones(2), B=np.ones((3, 1))), ValueError, "B has shape"),
    (dict(dt=0.0), ValueError, "dt"),
    (dict(dt=-0.1), ValueError, "dt"),
    (dict(dt=np.nan), ValueError, "dt"),
    (dict(dt=np.inf), ValueError, "dt"),
    (dict(dt="0.1"), TypeError, "dt"),
    (dict(A=np.array([[np.nan, 0], [0, -1.0]])), ValueError, "A has 1 non-finite"),
    (dict(B=np.array([1.0, np.inf])), ValueError, "B has 1 non-finite"),
    (dict(A=np.array([["a", "b"], ["c", "d"]])), TypeError, "A"),
])
def test_bad_input(kwargs, exc, match):
    args = dict(A=-np.eye(3)[:2, :2], B=np.ones(2), dt=0.1, method="zoh")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        discretize(args["A"], args["B"], args["dt"], method=args["method"])


@pytest.mark.parametrize("diagonal", [True, False])
def test_singular_implicit_rule_raises(diagonal):
    a = np.array([2.0, -1.0])  # 1 - dt * a = 0 at dt = 0.5
    A = a if diagonal else np.diag(a)
    with pytest.raises(ValueError, match="singular|zero"):
        discretize(A, np.ones(2), 0.5, method="backward_euler")


@pytest.mark.parametrize("diagonal", [True, False])
def test_overflow_raises(diagonal):
    A = np.array([800.0]) if diagonal else np.array([[800.0]])
    with pytest.raises(ValueError, match="overflow"):
        discretize(A, np.ones(1), 1.0)
