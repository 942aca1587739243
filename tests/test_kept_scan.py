"""ssm_ref.kept_scan: a scan's forward keeps what its backward starts from.

Oracle: the reference's own selective_scan / selective_scan_backward called on the same
arguments (the kept pair must hand the backward exactly those), and stand-in scan functions
that record how they were called (the twins are used when both are there, never half)."""
from __future__ import annotations

import numpy as np
import pytest
from cases import GRAD_NAMES, cotangents, scan_case

import ssm_ref
from ssm_ref.kept_scan import Kept, scan_backward_kept, scan_keeping


@pytest.mark.parametrize("last", [False, True], ids=["y", "y-and-last-state"])
def test_reference_pair_gets_the_arguments_back(rng, last):
    kw = scan_case(rng, "grouped", "variable")
    args = [kw.pop(name) for name in ("u", "delta", "A", "B", "C")]
    dout, dlast = cotangents(rng, {"u": args[0], "A": args[2]})
    res, kept = scan_keeping(ssm_ref.selective_scan, *args, **kw, return_last_state=last)
    want = ssm_ref.selective_scan(*args, **kw, return_last_state=last)
    for got, exp in zip(res if last else [res], want if last else [want]):
        assert np.array_equal(got, exp)
    assert kept.saved is None and all(a is b for a, b in zip(kept.args, args))
    g = scan_backward_kept(ssm_ref.selective_scan_backward, dout, kept,
                           dlast if last else None)
    g_want = ssm_ref.selective_scan_backward(dout, *args, **kw,
                                             dlast_state=dlast if last else None)
    for name in GRAD_NAMES:
        assert (g[name] is None) == (g_want[name] is None), name
        if g[name] is not None:
            assert np.array_equal(g[name], g_want[name]), name


class Recorder:
    """A scan function pair's stand-in: records calls to itself and to its twins."""

    def __init__(self, twins):
        self.calls = []
        if twins:
            self.for_backward = lambda *a, **k: (self.calls.append(("for_backward", k))
                                                 or ("y", "last", "saved"))
            self.from_saved = lambda dout, saved, dlast: (
                self.calls.append(("from_saved", saved, dlast)) or "grads from saved")

    def __call__(self, *args, **kwargs):
        self.calls.append(("plain", kwargs))
        return "plain result"


def test_twins_are_used_when_both_are_there():
    fwd, bwd = Recorder(twins=True), Recorder(twins=True)
    res, kept = scan_keeping(fwd, 1, 2, 3, 4, 5, D=6, return_last_state=True)
    assert res == ("y", "last") and kept == Kept((1, 2, 3, 4, 5), {"D": 6,
                                                                 "return_last_state": True},
                                                 "saved")
    assert scan_keeping(fwd, 1, 2, 3, 4, 5)[0] == "y"  # without the last state: y alone
    assert scan_backward_kept(bwd, "dout", kept, "dlast") == "grads from saved"
    assert bwd.calls == [("from_saved", "saved", "dlast")]


def test_a_half_pair_runs_the_plain_functions():
    """A forward without the twin keeps the arguments; a backward without its twin (or a
    forward that saved nothing) gets them, without return_last_state, with dlast_state."""
    fwd, bwd = Recorder(twins=False), Recorder(twins=True)
    res, kept = scan_keeping(fwd, 1, 2, 3, 4, 5, D=6, return_last_state=True)
    assert res == "plain result" and kept.saved is None
    assert scan_backward_kept(bwd, "dout", kept, "dlast") == "plain result"
    assert bwd.calls == [("plain", {"D": 6, "dlast_state": "dlast"})]
    plain_bwd = Recorder(twins=False)
    _, kept = scan_keeping(Recorder(twins=True), 1, 2, 3, 4, 5)
    assert scan_backward_kept(plain_bwd, "dout", kept) == "plain result"
    assert plain_bwd.calls == [("plain", {})]


def test_backward_refuses_anything_but_kept():
    with pytest.raises(TypeError, match="Parameter kept is a tuple, but the Kept"):
        scan_backward_kept(ssm_ref.selective_scan_backward, np.ones((1, 1, 3)), (1, 2, 3))
