"""Hidden attention: alpha @ u reproduces the selective scan; causality; a closed form."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import assert_close

from ssm_ref import hidden_attention, selective_scan
from cases import FORMS, scan_case


def _scan_kwargs(kw):
    return dict(delta=kw["delta"], A=kw["A"], B=kw["B"], C=kw["C"],
                delta_bias=kw.get("delta_bias"), delta_softplus=kw.get("delta_softplus", False))


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("form_B,form_C", list(itertools.product(FORMS, FORMS)))
def test_alpha_times_u_equals_scan(rng, form_B, form_C, complex_):
    kw = scan_case(rng, form_B, form_C, complex_=complex_, length=11)
    alpha = hidden_attention(**_scan_kwargs(kw))
    assert alpha.shape == (2, 4, 11, 11) and alpha.dtype == np.float64
    y = selective_scan(kw["u"], **_scan_kwargs(kw))  # no D, no z, no h0
    assert_close(np.einsum("bdij,bdj->bdi", alpha, kw["u"]), y, kind="exact")


def test_causal_lower_triangular(rng):
    kw = scan_case(rng, "variable", "grouped", length=9)
    alpha = hidden_attention(**_scan_kwargs(kw))
    upper = np.triu(np.ones((9, 9), dtype=bool), k=1)
    assert np.all(alpha[..., upper] == 0.0)
    assert np.all(alpha[..., ~upper] != 0.0)  # random inputs: no accidental zeros below
    # changing a future input never changes a past output
    u2 = kw["u"].copy()
    u2[..., 6:] += 1.0
    y1 = selective_scan(kw["u"], **_scan_kwargs(kw))
    y2 = selective_scan(u2, **_scan_kwargs(kw))
    np.testing.assert_array_equal(y1[..., :6], y2[..., :6])


def test_closed_form_with_cumulative_steps(rng):
    """prod_{k=j+1..i} exp(delta_k A) = exp(A (S_i - S_j)), S the cumulative step sum."""
    batch, dim, length, dstate = 1, 2, 8, 3
    delta = 0.1 + rng.random((batch, dim, length))
    A = -rng.random((dim, dstate))
    Bm, Cm = rng.standard_normal((batch, dstate, length)), rng.standard_normal((dim, dstate))
    alpha = hidden_attention(delta, A, Bm, Cm)
    S = np.cumsum(delta, axis=-1)
    expected = np.zeros_like(alpha)
    for d in range(dim):
        for i in range(length):
            for j in range(i + 1):
                decay = np.exp(A[d] * (S[0, d, i] - S[0, d, j]))
                expected[0, d, i, j] = np.sum(Cm[d] * decay * delta[0, d, j] * Bm[0, :, j])
    assert_close(alpha, expected, kind="exact")


def test_float32_in_float32_out(rng):
    kw = scan_case(rng, extras=False)
    alpha32 = hidden_attention(kw["delta"].astype(np.float32), kw["A"], kw["B"], kw["C"])
    assert alpha32.dtype == np.float32
    assert_close(alpha32, hidden_attention(kw["delta"], kw["A"], kw["B"], kw["C"]),
                 kind="backend", dtype=np.float32)


@pytest.mark.parametrize("arg,value,exc,match", [
    ("delta", np.ones((2, 4)), ValueError, "Parameter delta has shape"),
    ("A", -np.ones((3, 3)), ValueError, r"Parameter A has shape \(3, 3\)"),
    ("B", np.ones((2, 3, 3, 9)), ValueError, "G = 3 must divide"),
    ("C", np.ones((2, 3, 8)), ValueError, "Parameter C has shape"),
    ("B", np.ones((2, 3, 9)) * 1j, TypeError, "Parameter B is complex"),
    ("A", np.ones((4, 3)), ValueError, "positive real part"),
    ("delta", -np.ones((2, 4, 9)), ValueError, "negative step"),
    ("delta_bias", np.ones(5), ValueError, "Parameter delta_bias has shape"),
])
def test_bad_input(rng, arg, value, exc, match):
    kw = _scan_kwargs(scan_case(rng, extras=False))
    kw[arg] = value
    with pytest.raises(exc, match=match):
        hidden_attention(**kw)
