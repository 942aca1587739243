"""Forward selective scan and the decoding step, against independent oracles.

Oracles: the official ``selective_scan_ref`` (golden files), a per-(b, d, n)
scalar loop written here with ``cmath``, the LTI convolution (constant delta,
B, C), splitting a sequence, and the closed-form steady state.
"""
from __future__ import annotations

import cmath
import math
from pathlib import Path

import numpy as np
import pytest
from cases import FORM_PAIRS, astype, cotangents, scan_case
from conftest import assert_close, assert_no_host_traffic, assert_same_on, to_xp
from fake_device import on_device

from ssm_ref import (selective_scan, selective_scan_backward, selective_state_step,
                     selective_state_update)

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"


# ---------------------------------------------------------------------------
# an independent scalar oracle (the inputs: tests/cases.py)
# ---------------------------------------------------------------------------

def _read(X, b, d, n, t, dim):
    """B or C for (batch b, channel d, state n, time t), in every form."""
    if X.ndim == 2:
        return X[d, n]
    if X.ndim == 3:
        return X[b, n, t]
    return X[b, d // (dim // X.shape[1]), n, t]


def oracle(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
           h0=None):
    """Scalar float64 loops over batch, channel, state and time (cmath.exp)."""
    batch, dim, length = np.shape(u)
    dstate = np.shape(A)[1]
    is_complex = np.iscomplexobj(A)
    y = np.zeros((batch, dim, length))
    last = np.zeros((batch, dim, dstate), dtype=complex)
    for b in range(batch):
        for d in range(dim):
            steps = []
            for t in range(length):
                s = float(delta[b, d, t]) + (0.0 if delta_bias is None else float(delta_bias[d]))
                if delta_softplus:
                    s = s if s > 20 else math.log(1.0 + math.exp(s))
                steps.append(s)
            acc = [0j] * length
            for n in range(dstate):
                h = 0j if h0 is None else complex(h0[b, d, n])
                for t in range(length):
                    s = steps[t]
                    h = cmath.exp(s * complex(A[d, n])) * h \
                        + s * complex(_read(B, b, d, n, t, dim)) * float(u[b, d, t])
                    acc[t] += complex(_read(C, b, d, n, t, dim)) * h
                last[b, d, n] = h
            for t in range(length):
                val = 2 * acc[t].real if is_complex else acc[t].real
                if D is not None:
                    val += float(D[d]) * float(u[b, d, t])
                if z is not None:
                    zz = float(z[b, d, t])
                    val *= zz / (1.0 + math.exp(-zz))
                y[b, d, t] = val
    return y, (last if is_complex else last.real)


# ---------------------------------------------------------------------------
# golden values from the official implementation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["selective_scan_const_real", "selective_scan_var_real"])
def test_golden_official_reference(name):
    g = np.load(GOLDEN / f"{name}.npz")
    y, last = selective_scan(g["u"], g["delta"], g["A"], g["B"], g["C"], D=g["D"], z=g["z"],
                             delta_bias=g["delta_bias"],
                             delta_softplus=bool(g["delta_softplus"]),
                             return_last_state=True)
    assert y.dtype == np.float32 and last.dtype == np.float32
    assert_close(y, g["out"], kind="golden", err_msg=f"{name} out")
    assert_close(last, g["last_state"], kind="golden", err_msg=f"{name} last_state")


# ---------------------------------------------------------------------------
# independent oracle, every B/C form, real and complex A
# ---------------------------------------------------------------------------

ORACLE_CASES = [(fb, fc, cx, ex) for fb, fc in FORM_PAIRS
                for cx, ex in ((False, True), (True, True), (False, False))]


@pytest.mark.parametrize("form_B, form_C, complex_, extras", ORACLE_CASES)
def test_matches_scalar_oracle_all_forms(xp, rng, form_B, form_C, complex_, extras):
    """On NumPy and on the fake device: y and the last state equal the scalar oracle; on
    the device the scan and its backward stay there, without a host read."""
    kw = scan_case(rng, form_B, form_C, complex_=complex_, extras=extras)
    dout, dlast = cotangents(rng, kw)
    y, last = selective_scan(**kw, return_last_state=True)  # NumPy
    grads = selective_scan_backward(dout, **kw, dlast_state=dlast)

    dkw, ddout, ddlast = to_xp(xp, (kw, dout, dlast))
    y_x, last_x = selective_scan(**dkw, return_last_state=True)
    grads_x = selective_scan_backward(ddout, **dkw, dlast_state=ddlast)
    assert_no_host_traffic(xp)

    y_ref, last_ref = oracle(**kw)
    assert_close(y_x, y_ref, kind="exact", err_msg=f"y {form_B}/{form_C}")
    assert_close(last_x, last_ref, kind="exact", err_msg="last_state")
    assert last_x.dtype == (np.complex128 if complex_ else np.float64)
    assert_same_on(xp, y_x, y, "y")
    assert_same_on(xp, last_x, last, "last_state")
    assert set(grads_x) == set(grads)
    for name, g in grads.items():
        assert_same_on(xp, grads_x[name], g, f"grads[{name!r}]")


def test_host_array_mixed_with_device_arrays_is_refused(fake_xp, rng):
    kw = scan_case(rng, batch=1, dim=2, length=3, dstate=2)
    dkw = on_device(kw)
    dkw["A"] = kw["A"]  # left on the host
    with pytest.raises(TypeError, match="A are host"):
        selective_scan(**dkw)
    dkw = on_device(kw)
    with pytest.raises(TypeError, match="dout are host"):
        selective_scan_backward(np.ones(kw["u"].shape), **dkw)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_matches_oracle_without_optional_arguments(rng, complex_):
    kw = scan_case(rng, "variable", "constant", complex_=complex_, extras=False)
    assert_close(selective_scan(**kw), oracle(**kw)[0], kind="exact")


def test_complex_a_with_real_constant_bc_is_promoted(rng):
    kw = scan_case(rng, "constant", "constant", complex_=True, extras=False)
    real_B, real_C = kw["B"].real.copy(), kw["C"].real.copy()
    y = selective_scan(kw["u"], kw["delta"], kw["A"], real_B, real_C)
    y_c = selective_scan(kw["u"], kw["delta"], kw["A"], real_B + 0j, real_C + 0j)
    assert_close(y, y_c, kind="exact")
    assert_close(y, oracle(kw["u"], kw["delta"], kw["A"], real_B, real_C)[0], kind="exact")


def test_complex_conjugate_pair_equals_real_system(rng):
    """2 Re<C, h> with one of each conjugate pair == the full pair summed."""
    kw = scan_case(rng, "variable", "variable", complex_=True, extras=False)
    y_half = selective_scan(**kw)
    full = dict(kw, A=np.concatenate([kw["A"], kw["A"].conj()], axis=1),
                B=np.concatenate([kw["B"], kw["B"].conj()], axis=1),
                C=np.concatenate([kw["C"], kw["C"].conj()], axis=1))
    # the full system's output is real; the scan doubles Re, so halve it back
    assert_close(y_half, selective_scan(**full) / 2, kind="exact")


# ---------------------------------------------------------------------------
# equivalences
# ---------------------------------------------------------------------------

def test_constant_parameters_equal_lti_convolution(rng):
    """Constant delta, B, C and no D, z: y = K * u with K_k = sum_n C Abar^k Bbar."""
    batch, dim, length, dstate = 2, 3, 40, 4
    A = -np.exp(rng.standard_normal((dim, dstate)))
    Bm, Cm = rng.standard_normal((dim, dstate)), rng.standard_normal((dim, dstate))
    step = 0.05 + rng.random(dim)  # one step per channel, constant in time
    u = rng.standard_normal((batch, dim, length))
    delta = np.broadcast_to(step[None, :, None], u.shape)
    y = selective_scan(u, delta, A, Bm, Cm)
    powers = np.arange(length)
    for d in range(dim):
        Abar = np.exp(step[d] * A[d])
        K = (Cm[d] * step[d] * Bm[d] * Abar[None, :] ** powers[:, None]).sum(axis=1)
        for b in range(batch):
            assert_close(y[b, d], np.convolve(u[b, d], K)[:length], kind="exact")


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_constant_parameters_equal_ssm_ref_lti(rng, complex_):
    """The same equivalence through the foundation's ssm_ref.lti (kernel + FFT conv)."""
    from ssm_ref import lti
    kw = scan_case(rng, "constant", "constant", complex_=complex_, extras=False, length=30)
    step = 0.05 + rng.random(4)
    delta = np.broadcast_to(step[None, :, None], kw["u"].shape)
    y = selective_scan(kw["u"], delta, kw["A"], kw["B"], kw["C"])
    K = np.stack([lti.ssm_kernel(np.exp(step[d] * kw["A"][d]), step[d] * kw["B"][d],
                                 kw["C"][d], 30, method="vandermonde",
                                 conjugate_pairs=complex_) for d in range(4)])  # (D, L)
    assert_close(y, lti.causal_conv(kw["u"], K, method="fft"), kind="exact")


@pytest.mark.parametrize("which", ["B", "C"])
def test_grouped_equals_variable_per_group(rng, which):
    """Grouped (B, G, N, L): channels of group g see exactly variable B_g."""
    kw = scan_case(rng, "grouped" if which == "B" else "variable",
                     "grouped" if which == "C" else "variable", dim=6)
    kw[which] = rng.standard_normal((2, 3, 3, 9))  # G = 3 groups of 2 channels
    y = selective_scan(**kw)
    for g in range(3):
        sl = slice(2 * g, 2 * g + 2)
        part = dict(kw, u=kw["u"][:, sl], delta=kw["delta"][:, sl], A=kw["A"][sl],
                    D=kw["D"][sl], z=kw["z"][:, sl], delta_bias=kw["delta_bias"][sl],
                    h0=kw["h0"][:, sl])
        part[which] = kw[which][:, g]
        other = "C" if which == "B" else "B"
        part[other] = kw[other]
        assert_close(y[:, sl], selective_scan(**part), kind="exact", err_msg=f"group {g}")


def test_single_group_equals_variable(rng):
    kw = scan_case(rng, "variable", "variable")
    grouped = dict(kw, B=kw["B"][:, None], C=kw["C"][:, None])  # (B, 1, N, L)
    assert_close(selective_scan(**grouped), selective_scan(**kw), kind="exact")


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_h0_continues_a_split_sequence(rng, complex_):
    kw = scan_case(rng, "variable", "grouped", complex_=complex_, length=12)
    y, last = selective_scan(**kw, return_last_state=True)
    cut = 5

    def part(sl, h0):
        out = dict(kw, u=kw["u"][..., sl], delta=kw["delta"][..., sl], z=kw["z"][..., sl],
                   h0=h0)
        for k in ("B", "C"):
            out[k] = kw[k][..., sl] if np.ndim(kw[k]) >= 3 else kw[k]
        return selective_scan(**out, return_last_state=True)

    y1, h1 = part(slice(0, cut), kw["h0"])
    y2, h2 = part(slice(cut, None), h1)
    assert_close(np.concatenate([y1, y2], axis=-1), y, kind="exact")
    assert_close(h2, last, kind="exact")


def test_zero_step_ignores_the_token(rng):
    """delta_t = 0 gives Abar = 1 and Bbar = 0: the state skips token t."""
    kw = scan_case(rng, "variable", "variable", extras=False, length=6)
    delta = kw["delta"].copy()
    delta[:, :, 3] = 0.0
    _, last = selective_scan(**dict(kw, delta=delta), return_last_state=True)
    keep = [0, 1, 2, 4, 5]
    _, last_skip = selective_scan(kw["u"][..., keep], delta[..., keep], kw["A"],
                                  kw["B"][..., keep], kw["C"][..., keep],
                                  return_last_state=True)
    assert_close(last, last_skip, kind="exact")


def test_softplus_near_its_threshold_matches_oracle(rng):
    """Raw delta in (10, 20]: softplus(x) = x + log1p(e^-x) differs from x by < 5e-5.

    The scalar oracle computes log1p(exp(x)) with no threshold, so moving the
    switch to the identity below 20 shows up here.
    """
    kw = scan_case(rng, extras=False)
    near = 10.0 + 10.0 * rng.random(kw["u"].shape)  # (10, 20]
    A = -0.01 * np.ones_like(kw["A"])
    args = dict(kw, delta=near, A=A, delta_softplus=True)
    assert_close(selective_scan(**args), oracle(**args)[0], kind="exact")


def test_softplus_is_linear_above_20(rng):
    kw = scan_case(rng, extras=False)
    big = 20.0 + 5.0 * rng.random(kw["u"].shape) + 1e-9
    A = -0.01 * np.ones_like(kw["A"])
    y_sp = selective_scan(**dict(kw, delta=big, A=A), delta_softplus=True)
    y_lin = selective_scan(**dict(kw, delta=big, A=A), delta_softplus=False)
    np.testing.assert_array_equal(y_sp, y_lin)


# ---------------------------------------------------------------------------
# dtype contract and long sequences
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("form_B, form_C, sizes", [
    ("grouped", "constant", {}),
    ("variable", "variable", dict(batch=1, dim=2, length=4, dstate=2)),
])
def test_float32_in_float32_out(xp, rng, form_B, form_C, sizes):
    kw = scan_case(rng, form_B, form_C, **sizes)
    kw32 = astype(kw, np.float32)
    y32_host, last32_host = selective_scan(**kw32, return_last_state=True)  # NumPy
    y32, last32 = selective_scan(**to_xp(xp, kw32), return_last_state=True)
    assert_no_host_traffic(xp)
    assert y32.dtype == np.float32 and last32.dtype == np.float32
    y64, last64 = selective_scan(**kw, return_last_state=True)
    assert_close(y32, y64, kind="backend", dtype=np.float32)
    assert_close(last32, last64, kind="backend", dtype=np.float32)
    assert_same_on(xp, y32, y32_host, "y")
    assert_same_on(xp, last32, last32_host, "last_state")
    # the computation itself is float64: same float32 values, cast up, give the same y
    np.testing.assert_array_equal(y32_host, selective_scan(**astype(kw32, np.float64))
                                  .astype(np.float32))


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("u_dtype, A_dtype", [(np.float32, np.float64), (np.float64, np.float32),
                                              (np.float32, np.float32)])
def test_last_state_dtype_follows_A(rng, complex_, u_dtype, A_dtype):
    """As the official reference (``A.new_zeros``): A's dtype, complex for complex A."""
    kw = scan_case(rng, complex_=complex_, extras=False)
    A = kw["A"].astype(np.result_type(A_dtype, np.complex64) if complex_ else A_dtype)
    y, last = selective_scan(**dict(kw, u=kw["u"].astype(u_dtype), A=A), return_last_state=True)
    assert y.dtype == u_dtype and last.dtype == A.dtype
    # the reference in float64 of the same (rounded) inputs; the result must be in A's dtype
    up = {k: (v.astype(np.result_type(v.dtype, np.float64)) if isinstance(v, np.ndarray) else v)
          for k, v in dict(kw, u=kw["u"].astype(u_dtype), A=A).items()}
    _, last64 = selective_scan(**up, return_last_state=True)
    assert_close(last, last64, kind="backend", dtype=A.dtype)


def test_long_sequence_stays_finite_and_reaches_steady_state(rng):
    """L = 100000 with constant input: h converges to delta B u / (1 - exp(delta A))."""
    batch, dim, length, dstate = 1, 2, 100_000, 4
    A = -np.array([[0.5, 1.0, 2.0, 4.0], [1e-3, 0.1, 1.0, 10.0]])
    Bm, Cm = np.ones((dim, dstate)), np.ones((dim, dstate))
    u = np.ones((batch, dim, length))
    delta = np.full((batch, dim, length), 0.3)
    y, last = selective_scan(u, delta, A, Bm, Cm, return_last_state=True)
    assert np.all(np.isfinite(y))
    steady = 0.3 / (1.0 - np.exp(0.3 * A))  # (D, N), reached after ~1/(delta |A|) steps
    assert_close(last[0], steady, kind="exact")


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

def _base(rng):
    return scan_case(rng, "variable", "variable")


@pytest.mark.parametrize("arg,value,exc,match", [
    ("u", np.zeros((2, 4)), ValueError, "Parameter u has shape"),
    ("delta", np.ones((2, 4, 8)), ValueError, r"Parameter delta has shape \(2, 4, 8\)"),
    ("A", -np.ones((5, 3)), ValueError, r"Parameter A has shape \(5, 3\)"),
    ("B", np.ones((2, 3, 8)), ValueError, r"Parameter B has shape \(2, 3, 8\)"),
    ("C", np.ones((4, 2)), ValueError, r"Parameter C has shape \(4, 2\)"),
    ("B", np.ones((2, 3, 3, 9)), ValueError, "G = 3 must divide"),
    ("C", np.ones((2, 4, 3, 9, 1)), ValueError, r"Parameter C has shape .* \(5-D\)"),
    ("D", np.ones(3), ValueError, r"Parameter D has shape \(3,\)"),
    ("z", np.ones((2, 4, 10)), ValueError, "Parameter z has shape"),
    ("delta_bias", np.ones((4, 1)), ValueError, "Parameter delta_bias has shape"),
    ("h0", np.ones((2, 4, 2)), ValueError, "Parameter h0 has shape"),
    ("B", np.ones((2, 3, 9)) * 1j, TypeError, "Parameter B is complex"),
    ("h0", np.ones((2, 4, 3)) * 1j, TypeError, "Parameter h0 is complex"),
    ("u", np.ones((2, 4, 9)) * 1j, TypeError, "Parameter u is complex"),
    ("A", np.ones((4, 3)), ValueError, "Parameter A has 12 entries with positive real"),
    ("u", np.array([["a"]]), TypeError, "Parameter u has dtype"),
    ("delta_softplus", "yes", TypeError, "delta_softplus"),
])
def test_bad_input_raises(rng, arg, value, exc, match):
    kw = _base(rng)
    kw[arg] = value
    with pytest.raises(exc, match=match):
        selective_scan(**kw)


@pytest.mark.parametrize("arg", ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"])
def test_non_finite_input_raises(rng, arg):
    kw = _base(rng)
    kw[arg] = np.array(kw[arg], dtype=np.result_type(kw[arg], float))
    kw[arg].flat[0] = np.nan
    with pytest.raises(ValueError, match=f"Parameter {arg} has 1 non-finite"):
        selective_scan(**kw)


def test_negative_step_raises(rng):
    kw = scan_case(rng, extras=False)
    kw["delta"][0, 1, 2] = -0.1
    with pytest.raises(ValueError, match="Parameter delta has 1 negative step"):
        selective_scan(**kw)
    # with softplus the same raw value is a valid (positive) step
    selective_scan(**kw, delta_softplus=True)


def test_official_interleaved_complex_layout_is_read_as_complex(rng):
    """The official real (B, N, 2L) layout of a complex B: Re at even, Im at odd positions
    (tests/test_parity.py has every form, the backward and the other backends)."""
    kw = scan_case(rng, complex_=True, extras=False)
    flat = np.ones((2, 3, 18))  # official real (B, N, 2L) layout
    flat[..., 1::2] = -0.5
    expected = selective_scan(**dict(kw, B=np.full((2, 3, 9), 1.0 - 0.5j)))
    assert_close(selective_scan(**dict(kw, B=flat)), expected, kind="exact")
    real = scan_case(rng, extras=False)  # with a real A the layout is a shape error
    with pytest.raises(ValueError, match="interleaved layout .* only with a complex A"):
        selective_scan(**dict(real, B=flat))


# ---------------------------------------------------------------------------
# the decoding step
# ---------------------------------------------------------------------------

def _step_inputs(kw, t):
    """Slice the scan inputs at time t into the (B, D) / (B, [G,] N) step form."""
    def bc(X):
        X = np.asarray(X)
        if X.ndim == 2:  # constant (D, N): the step form has no channel axis,
            return None  # so constant B/C are tested through variable ones
        return X[..., t]
    return dict(x=kw["u"][:, :, t], dt=kw["delta"][:, :, t], A=kw["A"],
                B=bc(kw["B"]), C=bc(kw["C"]), D=kw.get("D"),
                z=None if kw.get("z") is None else kw["z"][:, :, t],
                dt_bias=kw.get("delta_bias"), dt_softplus=kw.get("delta_softplus", False))


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("form_B,form_C", [("variable", "variable"), ("grouped", "variable"),
                                           ("variable", "grouped"), ("grouped", "grouped")])
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "D-z-bias-softplus-h0"])
def test_state_update_token_by_token_reproduces_scan(rng, form_B, form_C, complex_, extras):
    kw = scan_case(rng, form_B, form_C, complex_=complex_, extras=extras)
    y_scan, last = selective_scan(**kw, return_last_state=True)
    h = kw.get("h0")
    if h is None:
        h = np.zeros((2, 4, 3), dtype=complex if complex_ else float)
    h_before = h.copy()
    state = h
    ys = []
    for t in range(kw["u"].shape[-1]):
        y_t, state = selective_state_step(state, **_step_inputs(kw, t))
        ys.append(y_t)
    np.testing.assert_array_equal(h, h_before)  # the caller's state is not mutated
    assert_close(np.stack(ys, axis=-1), y_scan, kind="exact")
    assert_close(state, last, kind="exact")


@pytest.mark.parametrize("groups, complex_, extras",
                         [(None, False, True), (2, False, True), (None, True, True),
                          (None, False, False)])
def test_state_update_is_a_one_step_scan(xp, rng, groups, complex_, extras):
    """On NumPy and on the fake device: one step equals a scan of length 1 from the state;
    on the device it stays there, without a host read."""
    batch, dim, dstate = 2, 4, 3
    bc_shape = (batch, dstate) if groups is None else (batch, groups, dstate)
    A = -np.exp(rng.standard_normal((dim, dstate)))
    state = rng.standard_normal((batch, dim, dstate))
    Bm, Cm = rng.standard_normal(bc_shape), rng.standard_normal(bc_shape)
    if complex_:
        A = A + 1j * rng.standard_normal((dim, dstate))
        state = state + 1j * rng.standard_normal((batch, dim, dstate))
        Bm = Bm + 1j * rng.standard_normal(bc_shape)
    kw = dict(state=state, x=rng.standard_normal((batch, dim)),
              dt=0.5 * rng.random((batch, dim)), A=A, B=Bm, C=Cm)
    if extras:
        kw.update(D=rng.standard_normal(dim), z=rng.standard_normal((batch, dim)),
                  dt_bias=rng.standard_normal(dim), dt_softplus=True)
    y, h = selective_state_step(**kw)  # NumPy

    y_x, h_x = selective_state_step(**to_xp(xp, kw))
    assert_no_host_traffic(xp)
    y_scan, h_scan = selective_scan(
        kw["x"][..., None], kw["dt"][..., None], A, Bm[..., None], Cm[..., None],
        D=kw.get("D"), z=None if "z" not in kw else kw["z"][..., None],
        delta_bias=kw.get("dt_bias"), delta_softplus=kw.get("dt_softplus", False),
        h0=state, return_last_state=True)
    assert_close(y_x, y_scan[..., 0], kind="exact", err_msg="y")
    assert_close(h_x, h_scan, kind="exact", err_msg="new_state")
    assert_same_on(xp, y_x, y, "y")
    assert_same_on(xp, h_x, h, "new_state")


def test_state_update_dtypes(rng):
    kw = scan_case(rng, extras=False)
    step = _step_inputs(kw, 0)
    y, h = selective_state_step(np.zeros((2, 4, 3), np.float32),
                                **dict(step, x=step["x"].astype(np.float32)))
    assert y.dtype == np.float32 and h.dtype == np.float32


@pytest.mark.parametrize("arg,value,exc,match", [
    ("state", np.zeros((2, 4, 2)), ValueError, "Parameter state has shape"),
    ("x", np.zeros((2, 4, 1)), ValueError, "Parameter x has shape"),
    ("dt", np.ones((2, 3)), ValueError, "Parameter dt has shape"),
    ("B", np.ones((2, 3, 3)), ValueError, "G = 3 must divide"),
    ("C", np.ones((2, 2)), ValueError, "Parameter C has shape"),
    ("B", np.ones((2, 3)) * 1j, TypeError, "Parameter B is complex"),
    ("z", np.ones((2, 5)), ValueError, "Parameter z has shape"),
    ("dt", -np.ones((2, 4)), ValueError, "negative step"),
    ("A", np.ones((4, 3)), ValueError, "positive real part"),
    ("x", np.full((2, 4), np.inf), ValueError, "Parameter x has 8 non-finite"),
])
def test_state_update_bad_input(rng, arg, value, exc, match):
    kw = scan_case(rng, extras=False)
    step = dict(_step_inputs(kw, 0), state=np.zeros((2, 4, 3)))
    step[arg] = value
    with pytest.raises(exc, match=match):
        selective_state_update(**step)
