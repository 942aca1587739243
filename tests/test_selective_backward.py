"""Hand-derived backward of the selective scan against central finite differences.

Loss: sum(dout * y) + Re sum(conj(dlast) * last_state), in float64.  For a
complex argument w the expected gradient is dL/dRe(w) + i dL/dIm(w).
"""
from __future__ import annotations

import numpy as np
import pytest
from cases import cotangents, scan_case
from conftest import assert_close, numerical_gradient

from ssm_ref import selective_scan, selective_scan_backward

EPS = 1e-6
SIZES = dict(batch=2, dim=4, length=7, dstate=3)


def make_case(rng, form_B, form_C, complex_=False, dlast=True, **optional):
    """A scan of size SIZES (``optional``: D, z, delta_bias, h0, softplus on or off),
    dout and dlast_state; A's spread is narrow, so finite differences stay accurate."""
    kw = scan_case(rng, form_B, form_C, complex_, **SIZES, **optional, A_spread=0.5, A_imag=1.0)
    dout, dl = cotangents(rng, kw, dlast)
    return kw, dout, dl


def loss(kw, dout, dlast):
    y, last = selective_scan(**kw, return_last_state=True)
    value = np.sum(dout * y)
    if dlast is not None:
        value += np.sum(np.conj(dlast) * last).real
    return value


def fd_grad(kw, name, dout, dlast):
    """Central differences of the loss with respect to the argument ``name``."""
    x = np.array(kw[name])  # a copy, perturbed entry by entry (real and imaginary parts)
    return numerical_gradient(lambda v: loss(dict(kw, **{name: v}), dout, dlast), x, eps=EPS)


CASES = {
    # name: (form_B, form_C, complex, options)
    "const-const-all": ("constant", "constant", False, {}),
    "var-var-all": ("variable", "variable", False, {}),
    "group-group-all": ("grouped", "grouped", False, {}),
    "const-group-all": ("constant", "grouped", False, {}),
    "group-var-all": ("grouped", "variable", False, {}),
    "var-var-bare": ("variable", "variable", False,
                     dict(D=False, z=False, delta_bias=False, softplus=False, h0=False, dlast=False)),
    "var-const-bias-no-softplus": ("variable", "constant", False,
                                   dict(softplus=False, z=False, h0=False)),
    "complex-var-var-all": ("variable", "variable", True, {}),
    "complex-const-group-all": ("constant", "grouped", True, {}),
    "complex-bare": ("grouped", "constant", True,
                     dict(D=False, z=False, delta_bias=False, softplus=False, h0=False, dlast=False)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_gradient_matches_finite_differences(rng, case):
    form_B, form_C, complex_, opts = CASES[case]
    kw, dout, dlast = make_case(rng, form_B, form_C, complex_, **opts)
    grads = selective_scan_backward(dout, **kw, dlast_state=dlast)
    assert set(grads) == {"u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"}
    for name, grad in grads.items():
        if name not in kw:
            assert grad is None, f"gradient for {name} should be None (argument not given)"
            continue
        arg = np.asarray(kw[name])
        assert grad.shape == arg.shape and grad.dtype == arg.dtype, name
        assert_close(grad, fd_grad(kw, name, dout, dlast), kind="fd",
                     err_msg=f"{case}: d{name}")


def test_softplus_linear_region_gradient(rng):
    """Above 20 softplus is the identity: d delta_raw = d delta_eff (no sigmoid)."""
    kw, dout, _ = make_case(rng, "variable", "variable", D=False, z=False, delta_bias=False,
                            h0=False, dlast=False)
    kw["delta"] = 20.5 + rng.random(kw["delta"].shape)
    kw["A"] = -0.01 * np.ones_like(kw["A"])
    g_sp = selective_scan_backward(dout, **kw)
    g_lin = selective_scan_backward(dout, **dict(kw, delta_softplus=False))
    np.testing.assert_array_equal(g_sp["delta"], g_lin["delta"])
    assert_close(g_sp["delta"], fd_grad(kw, "delta", dout, None), kind="fd")


def test_real_b_with_complex_a_gets_real_gradient(rng):
    kw, dout, dlast = make_case(rng, "constant", "variable", complex_=True, h0=False)
    kw["B"] = kw["B"].real.copy()
    grads = selective_scan_backward(dout, **kw, dlast_state=dlast)
    assert grads["B"].dtype == np.float64
    assert_close(grads["B"], fd_grad(kw, "B", dout, dlast), kind="fd")


def test_float32_arguments_get_float32_gradients(rng):
    kw, dout, dlast = make_case(rng, "variable", "grouped")
    kw32 = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v)
            for k, v in kw.items()}
    g32 = selective_scan_backward(dout, **kw32, dlast_state=dlast)
    g64 = selective_scan_backward(dout, **kw, dlast_state=dlast)
    for name in kw32:
        if name == "delta_softplus":
            continue
        assert g32[name].dtype == np.float32, name
        assert_close(g32[name], g64[name], kind="backend", dtype=np.float32, err_msg=name)


@pytest.mark.parametrize("arg,value,exc,match", [
    ("dout", np.ones((2, 4, 6)), ValueError, "Parameter dout has shape"),
    ("dout", np.ones((2, 4, 7)) * 1j, TypeError, "Parameter dout is complex"),
    ("dout", np.full((2, 4, 7), np.nan), ValueError, "Parameter dout has 56 non-finite"),
    ("dlast_state", np.ones((2, 4, 2)), ValueError, "Parameter dlast_state has shape"),
    ("dlast_state", np.ones((2, 4, 3)) * 1j, TypeError, "Parameter dlast_state is complex"),
    ("B", np.ones((2, 3, 3, 7)), ValueError, "G = 3 must divide"),
])
def test_backward_bad_input(rng, arg, value, exc, match):
    kw, dout, dlast = make_case(rng, "variable", "variable")
    call = dict(kw, dout=dout, dlast_state=dlast)
    call[arg] = value
    with pytest.raises(exc, match=match):
        selective_scan_backward(**call)
