"""Tests of ssm_ref.continuous against scipy.signal (impulse, step, lsim,
freqresp, ss2tf, StateSpace.poles) and scipy.integrate.solve_ivp, plus
hypothesis properties on random stable systems, dtypes and bad input.
"""
import warnings

import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

from conftest import assert_close
from ssm_ref import (ContinuousSSM, impulse_response, is_stable, mass_spring_damper,
                     poles, simulate, step_response, transfer_function)


def random_stable(rng, n, margin=0.3):
    """A random (n, n) matrix shifted so every eigenvalue has Re <= -margin."""
    M = rng.normal(size=(n, n))
    return M - (np.max(np.linalg.eigvals(M).real) + margin) * np.eye(n)


def siso_systems(rng):
    return {
        "underdamped": mass_spring_damper(m=1.0, k=4.0, c=0.5),
        "overdamped": mass_spring_damper(m=2.0, k=1.0, c=5.0),
        "random4": (random_stable(rng, 4), rng.normal(size=4), rng.normal(size=4), 0.7),
    }


def scipy_ss(A, B, C, D):
    """The same system as a scipy StateSpace with 2-D matrices."""
    A = np.diag(A) if np.ndim(A) == 1 else A
    B2, C2 = np.reshape(B, (A.shape[0], -1)), np.reshape(C, (-1, A.shape[0]))
    D2 = np.broadcast_to(np.reshape(D, (C2.shape[0], B2.shape[1])) if np.ndim(D) else D,
                         (C2.shape[0], B2.shape[1]))
    return scipy.signal.StateSpace(A, B2, C2, np.array(D2, dtype=float))


# --------------------------------------------------------- SISO vs SciPy ----

@pytest.mark.parametrize("name", ["underdamped", "overdamped", "random4"])
def test_siso_responses_match_scipy(rng, name):
    A, B, C, D = siso_systems(rng)[name]
    t = np.linspace(0.0, 12.0, 241)
    sys = scipy_ss(A, B, C, D)
    _, h = scipy.signal.impulse(sys, T=t)
    _, s = scipy.signal.step(sys, T=t)
    assert_close(impulse_response(A, B, C, D, t), h, err_msg="impulse")
    assert_close(step_response(A, B, C, D, t), s, err_msg="step")


@pytest.mark.parametrize("name", ["underdamped", "overdamped", "random4"])
@pytest.mark.parametrize("with_x0", [False, True])
def test_simulate_matches_lsim_zoh(rng, name, with_x0):
    A, B, C, D = siso_systems(rng)[name]
    t = np.linspace(0.0, 10.0, 301)
    u = np.sin(1.7 * t) + rng.normal(scale=0.3, size=t.shape)
    x0 = rng.normal(size=len(B)) if with_x0 else None
    _, y_ref, x_ref = scipy.signal.lsim(scipy_ss(A, B, C, D), u, t, X0=x0, interp=False)
    y, x = simulate(A, B, C, D, u, t, x0=x0)
    assert y.shape == t.shape and x.shape == (len(t), len(B))
    assert_close(y, y_ref, err_msg="y")
    assert_close(x, x_ref, err_msg="x")


@pytest.mark.parametrize("name", ["underdamped", "overdamped", "random4"])
def test_transfer_function_matches_freqresp(rng, name):
    A, B, C, D = siso_systems(rng)[name]
    w = np.logspace(-2, 2, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.signal.BadCoefficients)
        _, H_ref = scipy.signal.freqresp(scipy_ss(A, B, C, D), w)
    assert_close(transfer_function(A, B, C, D, 1j * w), H_ref)


# --------------------------------------------------------- MIMO vs SciPy ----

def mimo(rng, n=4, p=2, q=3):
    return random_stable(rng, n), rng.normal(size=(n, p)), rng.normal(size=(q, n)), \
        rng.normal(size=(q, p))


def test_mimo_simulate_matches_lsim(rng):
    A, B, C, D = mimo(rng)
    t = np.linspace(0.0, 5.0, 101)
    u = rng.normal(size=(101, 2))
    _, y_ref, x_ref = scipy.signal.lsim(scipy_ss(A, B, C, D), u, t, interp=False)
    y, x = simulate(A, B, C, D, u, t)
    assert y.shape == (101, 3)
    assert_close(y, y_ref)
    assert_close(x, x_ref)


def test_mimo_responses_entrywise_match_scipy(rng):
    """Entry (i, j) of the MIMO response is the SISO response from input j to output i."""
    A, B, C, D = mimo(rng)
    t = np.linspace(0.0, 6.0, 61)
    h = impulse_response(A, B, C, D, t)
    s = step_response(A, B, C, D, t)
    assert h.shape == (61, 3, 2) and s.shape == (61, 3, 2)
    for i in range(3):
        for j in range(2):
            sub = scipy_ss(A, B[:, j], C[i], D[i, j])
            assert_close(h[:, i, j], scipy.signal.impulse(sub, T=t)[1])
            assert_close(s[:, i, j], scipy.signal.step(sub, T=t)[1])


def test_mimo_transfer_function_matches_ss2tf(rng):
    A, B, C, D = mimo(rng)
    s = np.array([0.3, 1j, -0.1 + 2j, 5.0 - 1j])
    H = transfer_function(A, B, C, D, s)
    assert H.shape == (4, 3, 2)
    for j in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.signal.BadCoefficients)
            num, den = scipy.signal.ss2tf(A, B, C, D, input=j)
        ref = np.stack([np.polyval(num[i], s) / np.polyval(den, s) for i in range(3)], -1)
        assert_close(H[:, :, j], ref)


@pytest.mark.parametrize("b_shape,c_shape,d_shape,y_tail", [
    ((4,), (3, 4), (3,), (3,)),     # one input, three outputs
    ((4, 2), (4,), (2,), ()),        # two inputs, one output
])
def test_mixed_vector_matrix_shapes(rng, b_shape, c_shape, d_shape, y_tail):
    A = random_stable(rng, 4)
    B, C, D = rng.normal(size=b_shape), rng.normal(size=c_shape), rng.normal(size=d_shape)
    t = np.linspace(0, 3, 31)
    u = rng.normal(size=(31,) + b_shape[1:])
    y, _ = simulate(A, B, C, D, u, t)
    assert y.shape == (31,) + y_tail
    _, y_ref, _ = scipy.signal.lsim(scipy_ss(A, B, C, D), u, t, interp=False)
    assert_close(y, y_ref.reshape(y.shape))
    assert impulse_response(A, B, C, D, t).shape == (31,) + np.shape(C @ B)


# ------------------------------------------------ non-uniform grid, ODE ----

def test_simulate_nonuniform_grid_matches_solve_ivp(rng):
    """Exact under zero-order hold on a non-uniform grid: integrate each
    interval with solve_ivp (tight tolerances) holding u[k] constant."""
    A, B, C, D = siso_systems(rng)["random4"]
    t = np.cumsum(np.r_[0.0, rng.uniform(0.01, 0.5, size=25)])  # (26,) uneven steps
    u = rng.normal(size=26)
    x0 = rng.normal(size=4)
    y, x = simulate(A, B, C, D, u, t, x0=x0)
    xs, xk = [x0], x0
    for k in range(25):
        sol = solve_ivp(lambda _, z, uk=u[k]: A @ z + B * uk, (t[k], t[k + 1]), xk,
                        method="DOP853", rtol=1e-13, atol=1e-15)
        xk = sol.y[:, -1]
        xs.append(xk)
    xs = np.array(xs)
    assert_close(x, xs, err_msg="state vs solve_ivp")
    assert_close(y, xs @ C + D * u, err_msg="output vs solve_ivp")


def test_diagonal_A_equals_full_matrix(rng):
    a = -rng.uniform(0.1, 2.0, size=3)
    B, C = rng.normal(size=3), rng.normal(size=3)
    t = np.linspace(0, 4, 21)
    u = rng.normal(size=21)
    assert_close(simulate(a, B, C, 0.2, u, t)[0], simulate(np.diag(a), B, C, 0.2, u, t)[0])
    assert_close(step_response(a, B, C, 0.0, t), step_response(np.diag(a), B, C, 0.0, t))
    # closed form of a diagonal system: h(t) = sum_n C_n B_n exp(a_n t)
    assert_close(impulse_response(a, B, C, 0.0, t), np.exp(np.outer(t, a)) @ (C * B))


# ------------------------------------------------------ poles, stability ----

def test_poles_match_scipy(rng):
    A, B, C, D = mimo(rng, n=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.signal.BadCoefficients)
        # scipy goes through the characteristic polynomial (ss2tf) and its roots
        ref = np.sort_complex(scipy_ss(A, B[:, 0], C[0], D[0, 0]).poles.astype(complex))
    assert_close(poles(A), ref)


@pytest.mark.parametrize("m,k,c", [(1.0, 4.0, 0.5), (2.0, 1.0, 5.0), (1.0, 1.0, 2.0)])
def test_mass_spring_damper_physics(m, k, c):
    A, B, C, D = mass_spring_damper(m, k, c)
    w0, zeta = np.sqrt(k / m), c / (2 * np.sqrt(k * m))
    root = np.sqrt(complex(zeta ** 2 - 1))
    expected = np.sort_complex(np.array([-zeta * w0 + w0 * root, -zeta * w0 - w0 * root]))
    assert_close(poles(A), expected)
    # static gain: a constant force F stretches the spring by F / k
    assert_close(transfer_function(A, B, C, D, 0.0), np.array(1.0 / k + 0j))
    assert is_stable(A)


@pytest.mark.parametrize("A,stable", [
    (np.array([[0.0, 1.0], [-1.0, -0.1]]), True),
    (np.array([[0.0, 1.0], [-1.0, 0.0]]), False),   # undamped: poles on the axis
    (np.zeros((2, 2)), False),                        # integrators
    (np.array([[0.1, 0.0], [0.0, -1.0]]), False),
    (np.array([-1.0 + 5j, -0.01]), True),             # a complex diagonal
])
def test_is_stable(A, stable):
    assert is_stable(A) is stable


# ----------------------------------------------- hypothesis properties ------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5), p=st.integers(1, 3),
       q=st.integers(1, 3))
def test_property_random_stable_systems(seed, n, p, q):
    """Three algorithms for the same quantities agree on random stable systems:
    the ZOH recurrence with u = 1 is the step response; the free response
    from x0 = B[:, j] is the impulse response; s(t) -> H(0) for large t."""
    rng = np.random.default_rng(seed)
    A, B, C, D = mimo(rng, n, p, q)
    assert is_stable(A)
    t = np.linspace(0.0, 3.0, 31)
    s = step_response(A, B, C, D, t)  # (31, q, p)
    h = impulse_response(A, B, C, D, t)
    for j in range(p):
        u = np.zeros((31, p))
        u[:, j] = 1.0
        y, _ = simulate(A, B, C, D, u, t)
        assert_close(y, s[:, :, j], err_msg=f"step via recurrence, input {j}")
        y0, _ = simulate(A, B, C, D, np.zeros((31, p)), t, x0=B[:, j])
        assert_close(y0, h[:, :, j], err_msg=f"impulse via free response, input {j}")
    # final value theorem: s(inf) = H(0) = D - C A^-1 B
    decay = -np.max(poles(A).real)
    s_inf = step_response(A, B, C, D, np.array([60.0 / decay]))[0]
    assert_close(s_inf, transfer_function(A, B, C, D, 0.0).real, kind="backend")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5))
def test_property_transfer_function_is_laplace_of_impulse(seed, n):
    """H(s) at real s > 0 equals ∫ h(t) e^{-st} dt (composite Simpson on a fine grid)."""
    rng = np.random.default_rng(seed)
    A, B, C = random_stable(rng, n, margin=0.5), rng.normal(size=n), rng.normal(size=n)
    sigma = 1.0
    T = 40.0 / (sigma + 0.5)
    t = np.linspace(0.0, T, 4001)
    f = impulse_response(A, B, C, 0.0, t) * np.exp(-sigma * t)
    dt = t[1] - t[0]
    integral = dt / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    H = transfer_function(A, B, C, 0.0, sigma)
    assert abs(integral - H.real) <= 1e-6 * (1 + abs(H))


# ----------------------------------------------------------------- dtypes ---

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_contract(rng, dtype):
    A, B, C, D = (np.asarray(m, dtype=dtype) for m in mass_spring_damper(1.0, 4.0, 0.5))
    t = np.linspace(0, 2, 11).astype(dtype)
    u = np.ones(11, dtype=dtype)
    y, x = simulate(A, B, C, D, u, t)
    assert y.dtype == dtype and x.dtype == dtype
    assert impulse_response(A, B, C, D, t).dtype == dtype
    assert step_response(A, B, C, D, t).dtype == dtype
    cdtype = np.complex64 if dtype == np.float32 else np.complex128
    assert transfer_function(A, B, C, D, 1j * t).dtype == cdtype
    assert poles(A).dtype == cdtype
    ref = simulate(*(m.astype(np.float64) for m in (A, B, C, D)), u.astype(np.float64),
                   t.astype(np.float64))[0]
    assert_close(y, ref.astype(dtype))


def test_python_scalar_D_does_not_upcast():
    A, B, C, _ = (np.asarray(m, dtype=np.float32) for m in mass_spring_damper())
    assert step_response(A, B, C, 0.5, np.array([0.0, 1.0], np.float32)).dtype == np.float32


def test_complex_system(rng):
    a = np.array([-0.5 + 3j, -0.5 - 3j])
    B, C = np.array([1.0, 1.0]), np.array([0.5, 0.5])
    t = np.linspace(0, 4, 41)
    h = impulse_response(a, B, C, 0.0, t)
    assert h.dtype == np.complex128
    assert_close(h, np.exp(-0.5 * t) * np.cos(3 * t) + 0j)  # conjugate pair -> real signal


# ------------------------------------------------------- ContinuousSSM -----

def test_container_delegates(rng):
    A, B, C, D = mass_spring_damper(1.0, 4.0, 0.5)
    sys = ContinuousSSM(A, B, C, D)
    t = np.linspace(0, 3, 16)
    assert sys.N == 2 and sys.is_stable()
    assert_close(sys.step_response(t), step_response(A, B, C, D, t))
    assert_close(sys.impulse_response(t), impulse_response(A, B, C, D, t))
    assert_close(sys.simulate(np.ones(16), t)[0], simulate(A, B, C, D, np.ones(16), t)[0])
    assert_close(sys.transfer_function(1j), transfer_function(A, B, C, D, 1j))
    assert_close(sys.poles(), poles(A))
    with pytest.raises(ValueError, match="C has shape"):
        ContinuousSSM(A, B, np.ones(3))


# ------------------------------------------------------------- bad input ----

def _good():
    return list(mass_spring_damper(1.0, 4.0, 0.5))


@pytest.mark.parametrize("index,value,match", [
    (0, np.ones((2, 3)), r"A has shape \(2, 3\)"),
    (0, np.array([[np.nan, 1], [0, -1]]), "A has 1 non-finite"),
    (1, np.ones(3), r"B has shape \(3,\)"),
    (2, np.ones((1, 3)), r"C has shape \(1, 3\)"),
    (3, np.ones((1, 1)), r"D has shape \(1, 1\) but should be \(\)"),
    (3, np.inf, "D has 1 non-finite"),
])
def test_bad_system(index, value, match):
    sys = _good()
    sys[index] = value
    t = np.linspace(0, 1, 5)
    for fn in (lambda: step_response(*sys, t), lambda: simulate(*sys, np.ones(5), t),
               lambda: impulse_response(*sys, t), lambda: transfer_function(*sys, 1j)):
        with pytest.raises(ValueError, match=match):
            fn()


def test_scalar_D_refused_for_mimo(rng):
    A, B, C, _ = mimo(rng)
    with pytest.raises(ValueError, match=r"D has shape \(\) but should be \(3, 2\)"):
        simulate(A, B, C, 1.0, np.ones((4, 2)), np.arange(4.0))
    simulate(A, B, C, 0, np.ones((4, 2)), np.arange(4.0))  # the scalar 0 means "no D"


@pytest.mark.parametrize("u,t,x0,match", [
    (np.ones(4), np.arange(5.0), None, r"u has shape \(4,\) but should be \(5,\)"),
    (np.ones((5, 1)), np.arange(5.0), None, r"u has shape \(5, 1\)"),
    (np.ones(5), np.array([0, 1, 1, 2, 3.0]), None, "strictly increasing"),
    (np.ones(5), np.arange(5.0), np.ones(3), r"x0 has shape \(3,\)"),
    (np.r_[np.ones(4), np.nan], np.arange(5.0), None, "u has 1 non-finite"),
    (np.ones(0), np.zeros(0), None, "at least one sample"),
])
def test_bad_simulate_input(u, t, x0, match):
    with pytest.raises(ValueError, match=match):
        simulate(*_good(), u, t, x0=x0)


def test_bad_times_and_points():
    with pytest.raises(ValueError, match="negative times"):
        impulse_response(*_good(), np.array([-1.0, 0.0]))
    with pytest.raises(ValueError, match="t has shape"):
        step_response(*_good(), np.ones((2, 2)))
    with pytest.raises(ValueError, match="pole"):
        transfer_function(np.array([[-1.0]]), np.ones(1), np.ones(1), 0.0, -1.0)
    with pytest.raises(TypeError, match="s has dtype"):
        transfer_function(*_good(), "1j")


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(m=0.0), ValueError, "m"), (dict(k=-1.0), ValueError, "k"),
    (dict(c=-0.1), ValueError, "c"), (dict(c="x"), TypeError, "c"),
])
def test_bad_mass_spring_damper(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mass_spring_damper(**kwargs)
