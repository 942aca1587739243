"""The Mamba inner path and block run on device arrays (the strict fake device).

Each computation runs on NumPy, then on the same inputs and parameters moved
to ``tests/fake_device.py``: every returned array (outputs, gradients, cache
entries, decoding caches) must be a device array equal to the NumPy result,
and the call must read nothing back to the host and copy nothing to the device.
"""
from __future__ import annotations

import fake_device
import numpy as np
import pytest
from conftest import assert_close, assert_same_on_device
from fake_device import COUNTS, NO_HOST_TRAFFIC, DeviceArray, on_device

from ssm_ref import MambaBlock, MambaConfig, mamba_inner_backward, mamba_inner_forward
from ssm_ref.mamba import mamba_init

BLOCK_OPTIONS = [dict(), dict(bias=True), dict(conv_bias=False)]


def assert_dicts_same(dev, host, what):
    assert set(dev) == set(host), what
    for k in host:
        assert_same_on_device(dev[k], host[k], f"{what}[{k!r}]")


def small_block(rng, **kw):
    """A tiny block with perturbed parameters (so no gradient is trivially zero)."""
    block = MambaBlock(d_model=4, d_state=3, d_conv=4, seed=1, **kw)
    for k, v in block.params.items():
        block.params[k] = v + 0.1 * rng.standard_normal(v.shape)
    return block


@pytest.mark.parametrize("conv_bias", [True, False])
@pytest.mark.parametrize("return_last_state", [False, True])
def test_inner_path_forward_and_backward_on_device(fake_xp, rng, conv_bias, return_last_state):
    params = mamba_init(MambaConfig(d_model=4, d_state=3, d_conv=3, conv_bias=conv_bias), seed=2)
    xz = rng.standard_normal((2, 16, 5))
    dy = rng.standard_normal((2, 8, 5))
    res = mamba_inner_forward(xz, params, return_last_state=return_last_state)
    dxz, grads = mamba_inner_backward(dy, res[1], params)

    dparams = on_device(params)
    dxz_in, ddy = fake_xp.asarray(xz), fake_xp.asarray(dy)
    fake_device.reset_counts()
    res_d = mamba_inner_forward(dxz_in, dparams, return_last_state=return_last_state)
    dxz_d, grads_d = mamba_inner_backward(ddy, res_d[1], dparams)
    assert COUNTS == NO_HOST_TRAFFIC

    assert_same_on_device(res_d[0], res[0], "y")
    assert_dicts_same(res_d[1], res[1], "cache")
    if return_last_state:
        assert_same_on_device(res_d[2], res[2], "last_state")
    assert_same_on_device(dxz_d, dxz, "dxz")
    assert_dicts_same(grads_d, grads, "grads")


@pytest.mark.parametrize("options", BLOCK_OPTIONS)
def test_block_forward_and_backward_on_device(fake_xp, rng, options):
    block = small_block(rng, **options)
    x = rng.standard_normal((2, 5, 4))
    dout = rng.standard_normal((2, 5, 4))
    out, cache = block.forward(x, return_cache=True)
    dx, grads = block.backward(dout, cache)

    assert block.to(fake_xp) is block
    dx_in, ddout = fake_xp.asarray(x), fake_xp.asarray(dout)
    fake_device.reset_counts()
    out_d, cache_d = block.forward(dx_in, return_cache=True)
    dx_d, grads_d = block.backward(ddout, cache_d)
    assert COUNTS == NO_HOST_TRAFFIC

    assert_same_on_device(out_d, out, "out")
    assert_dicts_same(cache_d, cache, "cache")
    assert_same_on_device(dx_d, dx, "dx")
    assert_dicts_same(grads_d, grads, "grads")


@pytest.mark.parametrize("options", BLOCK_OPTIONS)
def test_block_prefill_step_and_caches_on_device(fake_xp, rng, options):
    block = small_block(rng, **options)
    x = rng.standard_normal((2, 5, 4))
    out, conv, ssm = block.prefill(x[:, :3])
    y1, conv1, ssm1 = block.step(x[:, 3], conv, ssm)
    zero_conv, zero_ssm = block.allocate_cache(2)
    y0, conv0, ssm0 = block.step(x[:, :1], zero_conv, zero_ssm)  # official (B, 1, d_model)

    block.to(fake_xp)
    dx = fake_xp.asarray(x)
    prompt, token, first = dx[:, :3], dx[:, 3], dx[:, :1]
    fake_device.reset_counts()
    out_d, conv_d, ssm_d = block.prefill(prompt)
    y1_d, conv1_d, ssm1_d = block.step(token, conv_d, ssm_d)
    zero_conv_d, zero_ssm_d = block.allocate_cache(2)
    y0_d, conv0_d, ssm0_d = block.step(first, zero_conv_d, zero_ssm_d)
    assert COUNTS == NO_HOST_TRAFFIC

    for dev, host, what in ((out_d, out, "prefill out"), (conv_d, conv, "conv_state"),
                            (ssm_d, ssm, "ssm_state"), (y1_d, y1, "step y"),
                            (conv1_d, conv1, "step conv_state"), (ssm1_d, ssm1, "step ssm_state"),
                            (zero_conv_d, zero_conv, "allocated conv_state"),
                            (zero_ssm_d, zero_ssm, "allocated ssm_state"),
                            (y0_d, y0, "first y"), (conv0_d, conv0, "first conv_state"),
                            (ssm0_d, ssm0, "first ssm_state")):
        assert_same_on_device(dev, host, what)


def test_to_moves_parameters_there_and_back(fake_xp, rng):
    block = MambaBlock(d_model=4, d_state=2, dtype=np.float32)
    host = block.state_dict()
    block.to(fake_xp)
    assert all(isinstance(v, DeviceArray) for v in block.params.values())
    assert block.n_params() == sum(v.size for v in host.values())
    sd = block.state_dict()
    assert all(isinstance(v, DeviceArray) for v in sd.values())
    block.to(np)
    assert all(type(v) is np.ndarray for v in block.params.values())
    for k, v in host.items():
        assert block.params[k].dtype == np.float32
        np.testing.assert_array_equal(block.params[k], v)


def test_data_and_parameters_on_different_modules_are_refused(fake_xp, rng):
    block = MambaBlock(d_model=4, d_state=2)
    x = rng.standard_normal((1, 3, 4))
    with pytest.raises(TypeError, match=r"block\.to\(fake\)"):
        block(fake_xp.asarray(x))
    conv, ssm = block.allocate_cache(1)
    with pytest.raises(TypeError, match=r"block\.to\(fake\)"):
        block.step(fake_xp.asarray(x[:, 0]), conv, ssm)
    with pytest.raises(TypeError, match="are host"):
        mamba_inner_forward(fake_xp.asarray(np.ones((1, 16, 3))), block.params)
    block.to(fake_xp)
    with pytest.raises(TypeError, match=r"block\.to\(numpy\)"):
        block(x)
    conv, ssm = block.allocate_cache(1)
    with pytest.raises(TypeError, match="conv_state, ssm_state are host"):
        block.step(fake_xp.asarray(x[:, 0]), np.zeros((1, 8, 4)), np.zeros((1, 8, 2)))
