"""The scan's arguments checked once: ScanArgs, its B/C form table, one validator for all.

The form table (BCForm) is tested against its definition (channel d reads
group d // (D // G)) and its reduction against its adjoint; the validator is
tested to be the one every entry point uses (same error, same message).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cases import FORMS, make_bc, scan_case

import fast
from ssm_ref import hidden_attention, selective_scan, selective_scan_backward
from ssm_ref.scan_args import BCForm, ScanArgs, check_scan_args, check_scan_structure

BATCH, DIM, LENGTH, DSTATE, GROUPS = 2, 4, 5, 3, 2


def _defined_read(X, form, b, d, t):
    """What channel d of batch b reads at step t, from the table's definition."""
    if form == "constant":
        return X[d]
    if form == "variable":
        return X[b, :, t]
    return X[b, d // (DIM // GROUPS), :, t]


@pytest.mark.parametrize("form", FORMS)
def test_form_reads_what_the_table_defines(rng, form):
    X = make_bc(rng, form, BATCH, DIM, DSTATE, LENGTH, groups=GROUPS)
    kind = BCForm.of(X, X.dtype, "B", BATCH, DIM, LENGTH, DSTATE)
    assert kind is BCForm(form)
    assert len(kind.view_shape(X.shape)) == 4
    full = kind.per_channel(X, DIM)  # (B|1, D|1, N, L|1)
    for t in range(LENGTH):
        step = kind.at(X, t, DIM)  # (B|1, D|1, N)
        for b in range(BATCH):
            for d in range(DIM):
                want = _defined_read(X, form, b, d, t)
                got_step = step[min(b, step.shape[0] - 1), min(d, step.shape[1] - 1)]
                got_full = full[min(b, full.shape[0] - 1), min(d, full.shape[1] - 1), :,
                                min(t, full.shape[3] - 1)]
                np.testing.assert_array_equal(got_step, want)
                np.testing.assert_array_equal(got_full, want)


@pytest.mark.parametrize("form", FORMS)
def test_reduce_is_the_adjoint_of_per_channel(rng, form):
    """<per_channel(X), G> = <X, reduce(G)>: the gradient of a shared B sums its readers."""
    X = make_bc(rng, form, BATCH, DIM, DSTATE, LENGTH, groups=GROUPS)
    kind = BCForm(form)
    G = rng.standard_normal((BATCH, DIM, DSTATE, LENGTH))
    spread = np.broadcast_to(kind.per_channel(X, DIM), G.shape)
    reduced = kind.reduce(G, X.shape[1] if form == "grouped" else 1)
    assert reduced.shape == X.shape
    np.testing.assert_allclose(np.sum(spread * G), np.sum(X * reduced), rtol=1e-12)


def test_scan_args_are_frozen_and_complete(rng):
    kw = scan_case(rng, "grouped", "constant")
    s = check_scan_args(**kw)
    assert isinstance(s, ScanArgs)
    assert (s.batch, s.dim, s.length, s.dstate) == kw["h0"].shape[:2] + kw["u"].shape[2:] \
        + kw["A"].shape[1:]
    assert (s.form_B, s.form_C, s.groups("B"), s.groups("C")) == \
        (BCForm.GROUPED, BCForm.CONSTANT, 2, 1)
    assert s.u.dtype == np.float64 and s.step.shape == kw["u"].shape
    assert s.step.min() >= 0  # softplus(delta + delta_bias)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.u = None
    cheap = check_scan_structure(**kw)
    assert cheap.step is None and cheap.u is not None and cheap.dtypes == s.dtypes


def test_float32_arguments_are_promoted_and_their_dtypes_kept(rng):
    kw = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v)
          for k, v in scan_case(rng).items()}
    s = check_scan_args(**kw)
    assert s.out_dtype == np.float32 and s.u.dtype == np.float64
    assert all(s.dtypes[name] == np.float32 for name in s.dtypes)


BAD = {
    "B has a group count that does not divide D": dict(B=np.ones((BATCH, 3, DSTATE, LENGTH))),
    "C has the official interleaved layout": dict(C=np.ones((BATCH, DSTATE, 2 * LENGTH))),
    "B is 5-D": dict(B=np.ones((1, BATCH, 1, DSTATE, LENGTH))),
    "A has a positive entry": dict(A=np.ones((DIM, DSTATE))),
    "a negative step": dict(delta=-np.ones((BATCH, DIM, LENGTH)), delta_softplus=False),
    "u holds a NaN": dict(u=np.full((BATCH, DIM, LENGTH), np.nan)),
}


@pytest.mark.parametrize("case", list(BAD))
def test_every_entry_point_refuses_with_the_validators_message(rng, case):
    kw = scan_case(rng, "variable", "variable", batch=BATCH, dim=DIM, length=LENGTH,
                     dstate=DSTATE)
    kw.update(BAD[case])
    with pytest.raises((ValueError, TypeError)) as expected:
        check_scan_args(**kw)
    calls = {
        "selective_scan": lambda: selective_scan(**kw),
        "selective_scan_backward": lambda: selective_scan_backward(np.ones(kw["u"].shape), **kw),
        "numba": lambda: fast.selective_scan(**kw, backend="numba"),
        "numba backward": lambda: fast.selective_scan_backward(np.ones(kw["u"].shape), **kw,
                                                               backend="numba"),
    }
    if "u" not in BAD[case]:
        attention = {k: kw[k] for k in ("delta", "A", "B", "C", "delta_bias", "delta_softplus")}
        calls["hidden_attention"] = lambda: hidden_attention(**attention)
    for name, call in calls.items():
        with pytest.raises(type(expected.value)) as got:
            call()
        assert str(got.value) == str(expected.value), name
