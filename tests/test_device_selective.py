"""The selective scan, its backward and the decoding step run on device arrays.

Each function is run on NumPy inputs, then on the same inputs moved to the
strict fake device (``tests/fake_device.py``): every returned array must be a
device array equal to the NumPy result, and the call must read nothing back
to the host and copy nothing to the device.
"""
from __future__ import annotations

import itertools

import fake_device
import numpy as np
import pytest
from conftest import assert_close, assert_same_on_device
from fake_device import COUNTS, NO_HOST_TRAFFIC, DeviceArray, on_device
from cases import FORMS, scan_case

from ssm_ref import selective_scan, selective_scan_backward, selective_state_update



CASES = [(fb, fc, cx, ex) for fb, fc in itertools.product(FORMS, FORMS)
         for cx, ex in ((False, True), (True, True), (False, False))]


@pytest.mark.parametrize("form_B, form_C, complex_, extras", CASES)
def test_scan_and_backward_on_device(fake_xp, rng, form_B, form_C, complex_, extras):
    kw = scan_case(rng, form_B, form_C, complex_=complex_, batch=2, dim=4, length=5,
                     dstate=3, extras=extras)
    dout = rng.standard_normal(kw["u"].shape)
    dlast = rng.standard_normal((2, 4, 3)) + (1j * rng.standard_normal((2, 4, 3))
                                               if complex_ else 0)
    y, last = selective_scan(**kw, return_last_state=True)
    grads = selective_scan_backward(dout, **kw, dlast_state=dlast)

    dkw = on_device(kw)
    ddout, ddlast = fake_xp.asarray(dout), fake_xp.asarray(dlast)
    fake_device.reset_counts()
    y_d, last_d = selective_scan(**dkw, return_last_state=True)
    grads_d = selective_scan_backward(ddout, **dkw, dlast_state=ddlast)
    assert COUNTS == NO_HOST_TRAFFIC

    assert_same_on_device(y_d, y, "y")
    assert_same_on_device(last_d, last, "last_state")
    assert set(grads_d) == set(grads)
    for name, g in grads.items():
        assert_same_on_device(grads_d[name], g, f"grads[{name!r}]")


def test_scan_float32_on_device(fake_xp, rng):
    kw = scan_case(rng, batch=1, dim=2, length=4, dstate=2)
    kw = {k: v.astype(np.float32) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    y = selective_scan(**kw)
    dkw = on_device(kw)
    fake_device.reset_counts()
    y_d = selective_scan(**dkw)
    assert COUNTS == NO_HOST_TRAFFIC
    assert_same_on_device(y_d, y, "y")


@pytest.mark.parametrize("groups, complex_, extras",
                         [(None, False, True), (2, False, True), (None, True, True),
                          (None, False, False)])
def test_state_update_on_device(fake_xp, rng, groups, complex_, extras):
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
    y, h = selective_state_update(**kw)

    dkw = on_device(kw)
    fake_device.reset_counts()
    y_d, h_d = selective_state_update(**dkw)
    assert COUNTS == NO_HOST_TRAFFIC
    assert_same_on_device(y_d, y, "y")
    assert_same_on_device(h_d, h, "new_state")


def test_host_array_mixed_with_device_arrays_is_refused(fake_xp, rng):
    kw = scan_case(rng, batch=1, dim=2, length=3, dstate=2)
    dkw = on_device(kw)
    dkw["A"] = kw["A"]  # left on the host
    with pytest.raises(TypeError, match="A are host"):
        selective_scan(**dkw)
    dkw = on_device(kw)
    with pytest.raises(TypeError, match="dout are host"):
        selective_scan_backward(np.ones(kw["u"].shape), **dkw)
