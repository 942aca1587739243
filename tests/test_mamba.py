"""Tests of ssm_ref.mamba: the Mamba block against an inline oracle, its init, weights, step mode, gradients.

Facts hard-coded from the official code (state-spaces/mamba, mamba_simple.py):
d_state 16, d_conv 4, expand 2, dt_rank ceil(d_model/16), dt log-uniform in
[1e-3, 1e-1] floored at 1e-4 through an inverse softplus, A_log = log(1..N),
D = 1, PyTorch's default uniform(±1/sqrt(fan_in)) for the linear and conv layers.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from conftest import (assert_close, assert_no_host_traffic, assert_same_on, numerical_gradient,
                      to_xp)
from fake_device import DeviceArray

import ssm_ref as sr
from ssm_ref import MambaBlock, MambaConfig, mamba_init, mamba_inner_backward, mamba_inner_forward
from ssm_ref.mamba import INNER_KEYS, STATE_DICT_KEYS

SMALL = dict(d_model=8, d_state=4)  # the gradient-check size of the issue


def perturbed_block(rng, **kw):
    """A small block whose parameters are moved off the init so every path carries signal."""
    block = MambaBlock(**{**SMALL, **kw}, seed=int(rng.integers(1 << 30)))
    p = block.params
    p["D"] = rng.standard_normal(p["D"].shape)
    p["dt_proj.bias"] = p["dt_proj.bias"] + 3.0  # delta ~ 0.5 - 3: A*delta matters
    p["A_log"] = p["A_log"] + 0.3 * rng.standard_normal(p["A_log"].shape)
    for k in ("in_proj.bias", "out_proj.bias"):
        if k in p:
            p[k] = rng.standard_normal(p[k].shape) * 0.3
    return block


# --------------------------------------------------------------------------- the oracle
def oracle_mamba(sd, u):
    """Straightforward re-implementation of Mamba.forward from NumPy primitives, per-time loops."""
    u = np.asarray(u, dtype=np.float64)
    batch, length, d_model = u.shape
    W_in = sd["in_proj.weight"]
    d_inner = W_in.shape[0] // 2
    conv_w = sd["conv1d.weight"][:, 0, :]
    K = conv_w.shape[1]
    R = sd["dt_proj.weight"].shape[1]
    N = sd["A_log"].shape[1]
    A = -np.exp(sd["A_log"])
    out = np.zeros((batch, length, d_model))
    for b in range(batch):
        xz = np.array([W_in @ u[b, t] for t in range(length)])  # (L, 2D)
        if "in_proj.bias" in sd:
            xz += sd["in_proj.bias"]
        x, z = xz[:, :d_inner], xz[:, d_inner:]
        h = np.zeros((d_inner, N))
        for t in range(length):
            # causal conv: taps on x[t-K+1 .. t], the last tap on the current token
            xc = sd["conv1d.bias"].copy() if "conv1d.bias" in sd else np.zeros(d_inner)
            for k in range(K):
                s = t - (K - 1) + k
                if s >= 0:
                    xc += conv_w[:, k] * x[s]
            xa = xc / (1.0 + np.exp(-xc))
            proj = sd["x_proj.weight"] @ xa
            dt_low, Bt, Ct = proj[:R], proj[R:R + N], proj[R + N:]
            dt_raw = sd["dt_proj.weight"] @ dt_low + sd["dt_proj.bias"]
            dt = np.where(dt_raw > 20, dt_raw, np.log(1.0 + np.exp(np.minimum(dt_raw, 20))))
            for d in range(d_inner):
                h[d] = np.exp(dt[d] * A[d]) * h[d] + dt[d] * Bt * xa[d]
            y = h @ Ct + sd["D"] * xa
            y = y * (z[t] / (1.0 + np.exp(-z[t])))
            out[b, t] = sd["out_proj.weight"] @ y
            if "out_proj.bias" in sd:
                out[b, t] += sd["out_proj.bias"]
    return out


@pytest.mark.parametrize("kw", [{}, {"bias": True}, {"conv_bias": False}, {"d_conv": 2, "expand": 1},
                                {"d_model": 20, "dt_rank": 3}])
def test_forward_matches_inline_oracle(rng, kw):
    block = perturbed_block(rng, **kw)
    x = rng.standard_normal((2, 7, block.config.d_model))
    assert_close(block(x), oracle_mamba(block.params, x))


def test_forward_matches_oracle_at_official_init(rng):
    block = MambaBlock(d_model=16, seed=5)  # d_state 16, d_conv 4, expand 2
    x = rng.standard_normal((1, 9, 16))
    assert_close(block(x), oracle_mamba(block.params, x))


# --------------------------------------------------------------------------- initialization
@pytest.mark.parametrize("d_model, rank", [(1, 1), (16, 1), (17, 2), (64, 4), (768, 48)])
def test_config_defaults_and_dt_rank(d_model, rank):
    cfg = MambaConfig(d_model=d_model)
    assert (cfg.d_state, cfg.d_conv, cfg.d_inner, cfg.dt_rank) == (16, 4, 2 * d_model, rank)
    assert cfg.dt_rank == math.ceil(d_model / 16)


def test_official_init_shapes_and_exact_values():
    cfg = MambaConfig(d_model=40)
    D, N, R = 80, 16, 3
    p = mamba_init(cfg, seed=0)
    shapes = {"in_proj.weight": (2 * D, 40), "conv1d.weight": (D, 1, 4), "conv1d.bias": (D,),
              "x_proj.weight": (R + 2 * N, D), "dt_proj.weight": (D, R), "dt_proj.bias": (D,),
              "A_log": (D, N), "D": (D,), "out_proj.weight": (40, D)}
    assert {k: v.shape for k, v in p.items()} == shapes
    np.testing.assert_array_equal(p["A_log"], np.log(np.tile(np.arange(1.0, N + 1), (D, 1))))
    assert_close(-np.exp(p["A_log"][3]), -np.arange(1.0, N + 1))  # A = -(n+1), S4D-Real
    np.testing.assert_array_equal(p["D"], np.ones(D))
    block = MambaBlock(d_model=40)
    assert block.n_params() == sum(math.prod(s) for s in shapes.values())


def test_official_init_dt_is_log_uniform_in_range():
    p = mamba_init(MambaConfig(d_model=1024), seed=1)  # d_inner 2048 samples
    dt = np.logaddexp(0.0, p["dt_proj.bias"])  # softplus, independent of sr.softplus
    assert dt.min() >= 1e-3 * (1 - 1e-12) and dt.max() <= 1e-1 * (1 + 1e-12)
    # log dt is uniform on [log 1e-3, log 1e-1]
    frac = (np.log(dt) - np.log(1e-3)) / (np.log(1e-1) - np.log(1e-3))
    assert scipy.stats.kstest(frac, "uniform").pvalue > 1e-3
    assert_close(sr.softplus(p["dt_proj.bias"]), dt)


def test_dt_floor_applies():
    cfg = MambaConfig(d_model=256, dt_min=1e-6, dt_max=1e-2, dt_init_floor=1e-4)
    dt = np.logaddexp(0.0, mamba_init(cfg, seed=2)["dt_proj.bias"])
    assert dt.min() >= 1e-4 * (1 - 1e-9)
    assert np.sum(np.isclose(dt, 1e-4, rtol=1e-9)) > 50  # log-uniform mass below the floor: half


def test_weight_init_bounds_follow_pytorch_defaults():
    d_model = 64
    cfg = MambaConfig(d_model=d_model, bias=True)
    p = mamba_init(cfg, seed=3)
    D, R = cfg.d_inner, cfg.dt_rank
    bounds = {"in_proj.weight": d_model**-0.5, "in_proj.bias": d_model**-0.5,
              "conv1d.weight": 4**-0.5, "conv1d.bias": 4**-0.5, "x_proj.weight": D**-0.5,
              "dt_proj.weight": R**-0.5, "out_proj.weight": D**-0.5, "out_proj.bias": D**-0.5}
    for k, bound in bounds.items():
        a = p[k]
        assert np.abs(a).max() <= bound, k
        assert np.abs(a).max() > 0.8 * bound or a.size < 100, k  # uniform fills the interval
        if a.size > 1000:
            assert abs(a.std() - bound / math.sqrt(3)) < 0.05 * bound, k
    const = mamba_init(MambaConfig(d_model=64, dt_init="constant", dt_scale=2.0))["dt_proj.weight"]
    np.testing.assert_array_equal(const, np.full((128, 4), 2.0 / math.sqrt(4)))


def test_init_seed_dtype_and_optional_biases():
    a = MambaBlock(d_model=8, seed=7).state_dict()
    b = MambaBlock(d_model=8, seed=7).state_dict()
    c = MambaBlock(d_model=8, seed=np.random.default_rng(7)).state_dict()
    d = MambaBlock(d_model=8, seed=8).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[k], c[k])
    assert not np.array_equal(a["in_proj.weight"], d["in_proj.weight"])
    p32 = MambaBlock(d_model=8, dtype=np.float32).params
    assert all(v.dtype == np.float32 for v in p32.values())
    assert set(MambaBlock(d_model=8, bias=True, conv_bias=False).params) == \
        set(STATE_DICT_KEYS) - {"conv1d.bias"}


# --------------------------------------------------------------------------- weights interchange
@pytest.mark.parametrize("kw", [{}, {"bias": True, "conv_bias": False}, {"d_model": 24, "expand": 1.5}])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_round_trip(rng, kw, dtype):
    block = MambaBlock(**{**SMALL, **kw}, seed=4, dtype=dtype)
    sd = block.state_dict()
    again = MambaBlock.from_state_dict(sd)
    assert again.config == block.config
    sd2 = again.state_dict()
    assert list(sd2) == list(sd)
    for k in sd:
        assert sd2[k].dtype == dtype and sd2[k].shape == sd[k].shape
        np.testing.assert_array_equal(sd2[k], sd[k])
    sd["D"][:] = 5.0  # copies: editing the dict does not touch the block
    assert np.all(again.params["D"] == 1.0)
    x = rng.standard_normal((1, 5, block.config.d_model))
    np.testing.assert_array_equal(again(x), block(x))


def test_from_state_dict_with_prefix(rng):
    block = perturbed_block(rng)
    full = {f"layers.0.mixer.{k}": v for k, v in block.state_dict().items()}
    full["layers.0.norm.weight"] = np.ones(8)  # ignored: outside the prefix
    again = MambaBlock.from_state_dict(full, prefix="layers.0.mixer.")
    x = rng.standard_normal((2, 4, 8))
    np.testing.assert_array_equal(again(x), block(x))


def _sd():
    return MambaBlock(**SMALL, seed=0).state_dict()


@pytest.mark.parametrize("edit, exc, match", [
    (lambda sd: sd.pop("A_log"), KeyError, r"missing keys \['A_log'\]"),
    (lambda sd: (sd.pop("D"), sd.pop("x_proj.weight")), KeyError, r"missing keys \['D', 'x_proj.weight'\]"),
    (lambda sd: sd.update({"conv1d_b.weight": np.ones(3)}), KeyError, r"unknown keys \['conv1d_b.weight'\]"),
    (lambda sd: sd.update({"in_proj.bias": np.ones(32)}), KeyError, "only one of 'in_proj.bias'"),
    (lambda sd: sd.update({"x_proj.weight": np.ones((9, 15))}), ValueError,
     r"state_dict\['x_proj.weight'\] has shape \(9, 15\) but should be \(9, 16\)"),
    (lambda sd: sd.update({"conv1d.weight": np.ones((16, 4))}), ValueError,
     r"state_dict\['conv1d.weight'\] has shape \(16, 4\) but should be \(d_inner, 1, d_conv\)"),
    (lambda sd: sd.update({"in_proj.weight": np.ones((31, 8))}), ValueError,
     r"in_proj.weight'\] has shape \(31, 8\) but should be \(2 \* d_inner, d_model\)"),
    (lambda sd: sd.update({"out_proj.weight": np.ones((8, 15))}), ValueError,
     r"out_proj.weight'\] has shape \(8, 15\) but should be \(8, 16\)"),
    (lambda sd: sd["D"].__setitem__(0, np.nan), ValueError, r"state_dict\['D'\] has 1 non-finite"),
])
def test_from_state_dict_errors(edit, exc, match):
    sd = _sd()
    edit(sd)
    with pytest.raises(exc, match=match):
        MambaBlock.from_state_dict(sd)


# --------------------------------------------------------------------------- step mode
@pytest.mark.parametrize("kw", [{}, {"bias": True, "conv_bias": False}, {"d_conv": 2}])
def test_step_reproduces_forward_token_by_token(rng, kw):
    block = perturbed_block(rng, **kw)
    x = rng.standard_normal((2, 9, 8))
    y = block(x)
    conv, ssm = block.allocate_cache(2)
    for t in range(9):
        conv_before = conv.copy()
        y_t, conv, ssm = block.step(x[:, t], conv, ssm)
        assert_close(y_t, y[:, t], err_msg=f"t={t}")
        # official semantics: roll left, the new x (first d_inner channels of in_proj) at the end
        np.testing.assert_array_equal(conv[:, :, :-1], conv_before[:, :, 1:])
        x_branch = sr.linear(x[:, t], block.params["in_proj.weight"], block.params.get("in_proj.bias"))
        assert_close(conv[:, :, -1], x_branch[:, :16])


def test_step_accepts_official_b1d_layout_and_leaves_caches_alone(rng):
    block = perturbed_block(rng)
    x = rng.standard_normal((3, 1, 8))
    conv, ssm = block.allocate_cache(3)
    conv[:] = rng.standard_normal(conv.shape)
    ssm[:] = rng.standard_normal(ssm.shape)
    conv0, ssm0 = conv.copy(), ssm.copy()
    y3, c3, s3 = block.step(x, conv, ssm)
    y2, c2, s2 = block.step(x[:, 0], conv, ssm)
    assert y3.shape == (3, 1, 8) and y2.shape == (3, 8)
    np.testing.assert_array_equal(y3[:, 0], y2)
    np.testing.assert_array_equal(conv, conv0)
    np.testing.assert_array_equal(ssm, ssm0)


@pytest.mark.parametrize("split", [1, 3, 4, 7])
def test_prefill_then_step_continues_the_forward(rng, split):
    block = perturbed_block(rng)
    x = rng.standard_normal((2, 10, 8))
    y = block(x)
    y_pre, conv, ssm = block.prefill(x[:, :split])
    assert_close(y_pre, y[:, :split])
    for t in range(split, 10):
        y_t, conv, ssm = block.step(x[:, t], conv, ssm)
        assert_close(y_t, y[:, t], err_msg=f"t={t}")


def test_step_float32(rng):
    block = perturbed_block(rng)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    conv, ssm = block.allocate_cache(2, dtype=np.float32)
    y = block(x)
    for t in range(5):
        y_t, conv, ssm = block.step(x[:, t], conv, ssm)
        assert y_t.dtype == conv.dtype == ssm.dtype == np.float32
        assert_close(y_t, y[:, t], kind="backend")  # float32 caches between steps


# --------------------------------------------------------------------------- dtype
def test_float32_in_float32_out(rng):
    block = perturbed_block(rng)
    x = rng.standard_normal((2, 6, 8))
    y32 = block(x.astype(np.float32))
    assert y32.dtype == np.float32
    assert_close(y32, block(x.astype(np.float32).astype(np.float64)), kind="exact", dtype=np.float32)
    b32 = MambaBlock.from_state_dict({k: v.astype(np.float32) for k, v in block.params.items()})
    assert b32(x).dtype == np.float64


# --------------------------------------------------------------------------- gradients
def test_backward_matches_finite_differences(rng):
    block = perturbed_block(rng)  # d_model 8, d_state 4, d_inner 16
    x = rng.standard_normal((2, 6, 8))
    out, cache = block.forward(x, return_cache=True)
    R = rng.standard_normal(out.shape)
    dx, grads = block.backward(R, cache)
    assert set(grads) == set(block.params)

    def loss(_):  # reads x and the parameters as numerical_gradient perturbs them
        return float(np.sum(block(x) * R))

    assert_close(dx, numerical_gradient(loss, x), kind="fd", err_msg="dx")
    for name, param in block.params.items():
        assert grads[name].shape == param.shape, name
        assert_close(grads[name], numerical_gradient(loss, param), kind="fd", err_msg=name)


def test_backward_biases_finite_differences(rng):
    block = perturbed_block(rng, bias=True, conv_bias=False, d_conv=3)
    x = rng.standard_normal((2, 5, 8))
    out, cache = block.forward(x, return_cache=True)
    R = rng.standard_normal(out.shape)
    dx, grads = block.backward(R, cache)
    assert "conv1d.bias" not in grads

    def loss(_):  # reads x and the parameters as numerical_gradient perturbs them
        return float(np.sum(block(x) * R))

    for name in ("in_proj.bias", "out_proj.bias", "conv1d.weight", "dt_proj.bias"):
        assert_close(grads[name], numerical_gradient(loss, block.params[name]), kind="fd",
                     err_msg=name)
    assert_close(dx, numerical_gradient(loss, x), kind="fd", err_msg="dx")


def test_inner_path_gradients_match_finite_differences(rng):
    """mamba_inner_backward on its own: dxz and every inner parameter (conv bias absent too)."""
    for conv_bias in (True, False):
        p = perturbed_block(rng, conv_bias=conv_bias, d_conv=3).params
        xz = rng.standard_normal((2, 32, 5))  # (B, 2D, L), d_inner 16
        y, cache = mamba_inner_forward(xz, p)
        R = rng.standard_normal(y.shape)
        dxz, grads = mamba_inner_backward(R, cache, p)

        def loss(_):  # reads xz and the parameters as numerical_gradient perturbs them
            return float(np.sum(mamba_inner_forward(xz, p)[0] * R))

        assert_close(dxz, numerical_gradient(loss, xz), kind="fd", err_msg="dxz")
        for name in INNER_KEYS:
            if name in p:
                assert_close(grads[name], numerical_gradient(loss, p[name]), kind="fd",
                             err_msg=name)
        assert conv_bias or grads["conv1d.bias"] is None


def test_inner_path_keeps_dtype_and_is_the_block_without_its_projections(rng):
    block = perturbed_block(rng)
    u = rng.standard_normal((2, 6, 8))
    xz = (u @ block.params["in_proj.weight"].T).transpose(0, 2, 1)  # (B, 2D, L)
    y, cache = mamba_inner_forward(xz.astype(np.float32), block.params)
    assert y.dtype == np.float32
    y64, _ = mamba_inner_forward(xz, block.params)
    out = y64.transpose(0, 2, 1) @ block.params["out_proj.weight"].T
    assert_close(out, oracle_mamba(block.params, u), kind="exact")
    dxz, _ = mamba_inner_backward(np.ones(y.shape, dtype=np.float32), cache, block.params)
    assert dxz.dtype == np.float32 and dxz.shape == xz.shape


def test_backward_dtypes(rng):
    block = MambaBlock(**SMALL, dtype=np.float32)
    x = rng.standard_normal((1, 4, 8)).astype(np.float32)
    out, cache = block.forward(x, return_cache=True)
    dx, grads = block.backward(np.ones_like(out), cache)
    assert dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())


# --------------------------------------------------------------------------- pluggable scan
def test_scan_functions_are_pluggable(rng):
    calls = []

    def scan(*args, **kw):
        calls.append("scan")
        return sr.selective_scan(*args, **kw)

    def scan_bwd(*args, **kw):
        calls.append("backward")
        return sr.selective_scan_backward(*args, **kw)

    def update(*args, **kw):
        calls.append("step")
        return sr.selective_state_update(*args, **kw)

    ref = perturbed_block(rng)
    block = MambaBlock.from_state_dict(ref.state_dict(), scan_fn=scan, scan_backward_fn=scan_bwd,
                                       state_update_fn=update)
    x = rng.standard_normal((1, 3, 8))
    out, cache = block.forward(x, return_cache=True)
    block.backward(out, cache)
    block.step(x[:, 0], *block.allocate_cache(1))
    assert calls == ["scan", "backward", "step"]
    np.testing.assert_array_equal(out, ref(x))

    zero = MambaBlock(**SMALL, scan_fn=lambda u, *a, **k: np.zeros_like(u))
    np.testing.assert_array_equal(zero(x), np.zeros_like(x))  # the block really calls it
    with pytest.raises(TypeError, match="scan_fn"):
        MambaBlock(**SMALL, scan_fn="fast")


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, exc, match", [
    (lambda b: b(np.ones((2, 5, 7))), ValueError, r"x has shape \(2, 5, 7\) but should be \(any, any, 8\)"),
    (lambda b: b(np.ones((5, 8))), ValueError, r"x has shape \(5, 8\) \(2-D\) but should be 3-D"),
    (lambda b: b(np.full((1, 2, 8), np.inf)), ValueError, "x has 16 non-finite"),
    (lambda b: b(np.ones((1, 2, 8), dtype=complex)), TypeError, "x is complex"),
    (lambda b: b.step(np.ones((2, 7)), *b.allocate_cache(2)), ValueError, r"x_t has shape \(2, 7\)"),
    (lambda b: b.step(np.ones((2, 8)), *b.allocate_cache(3)), ValueError,
     r"conv_state has shape \(3, 16, 4\) but should be \(2, 16, 4\)"),
    (lambda b: b.step(np.ones((1, 8)), np.zeros((1, 16, 4)), np.zeros((1, 16, 5))), ValueError,
     r"ssm_state has shape \(1, 16, 5\) but should be \(1, 16, 4\)"),
    (lambda b: b.backward(np.ones((1, 3, 8)), b.forward(np.ones((1, 4, 8)), return_cache=True)[1]),
     ValueError, r"dout has shape \(1, 3, 8\) but should be \(1, 4, 8\)"),
    (lambda b: b.backward(np.ones((1, 3, 8)), None), TypeError, "cache"),
    (lambda b: b.allocate_cache(0), ValueError, "batch = 0"),
])
def test_bad_input(call, exc, match):
    block = MambaBlock(**SMALL)
    with pytest.raises(exc, match=match):
        call(block)


@pytest.mark.parametrize("call, exc, match", [
    (lambda p: mamba_inner_forward(np.ones((1, 31, 3)), p), ValueError,
     r"xz has shape \(1, 31, 3\) but should be \(B, 2 \* d_inner, L\)"),
    (lambda p: mamba_inner_forward(np.ones((1, 30, 3)), p), ValueError,
     r"params\['A_log'\] has shape \(16, 4\) but should be \(15, any\)"),
    (lambda p: mamba_inner_forward(np.full((1, 32, 3), np.nan), p), ValueError, "xz has 96 non-finite"),
    (lambda p: mamba_inner_forward(np.ones((1, 32, 3)), {k: v for k, v in p.items() if k != "D"}),
     KeyError, r"params lacks \['D'\]"),
    (lambda p: mamba_inner_forward(np.ones((1, 32, 3)), {**p, "x_proj.weight": p["x_proj.weight"][1:]}),
     ValueError, r"params\['x_proj.weight'\] has shape \(8, 16\) but should be \(9, 16\)"),
    (lambda p: mamba_inner_backward(np.ones((1, 16, 3)), {"u": 0}, p), TypeError, "cache"),
    (lambda p: mamba_inner_backward(np.ones((1, 16, 2)),
                                    mamba_inner_forward(np.ones((1, 32, 3)), p)[1], p),
     ValueError, r"dy has shape \(1, 16, 2\) but should be \(1, 16, 3\)"),
])
def test_inner_path_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(MambaBlock(**SMALL).params)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(d_model=0), ValueError, "d_model = 0"),
    (dict(d_model=8, dt_init="xavier"), ValueError, "dt_init = 'xavier'"),
    (dict(d_model=8, dt_min=0.2, dt_max=0.1), ValueError, "dt_min = 0.2 must be <= dt_max"),
    (dict(d_model=8, dt_rank=0), ValueError, "dt_rank = 0"),
    (dict(d_model=8.5), TypeError, "d_model"),
])
def test_bad_config(kw, exc, match):
    with pytest.raises(exc, match=match):
        MambaConfig(**kw)


# --------------------------------------------------------------------------- every array module
# The inner path and the block on NumPy and on the strict fake device (tests/fake_device.py):
# every returned array (outputs, gradients, cache entries, decoding caches) is a device array
# equal to the NumPy result, and nothing is read back to the host or copied to the device.
BLOCK_OPTIONS = [dict(), dict(bias=True), dict(conv_bias=False)]


def assert_dicts_same(xp, got, host, what):
    assert set(got) == set(host), what
    for k in host:
        assert_same_on(xp, got[k], host[k], f"{what}[{k!r}]")


def small_block(rng, **kw):
    """A tiny block with perturbed parameters (so no gradient is trivially zero)."""
    block = MambaBlock(d_model=4, d_state=3, d_conv=4, seed=1, **kw)
    for k, v in block.params.items():
        block.params[k] = v + 0.1 * rng.standard_normal(v.shape)
    return block


@pytest.mark.parametrize("conv_bias", [True, False])
@pytest.mark.parametrize("return_last_state", [False, True])
def test_inner_path_forward_and_backward_on_every_array_module(xp, rng, conv_bias,
                                                               return_last_state):
    params = mamba_init(MambaConfig(d_model=4, d_state=3, d_conv=3, conv_bias=conv_bias), seed=2)
    xz = rng.standard_normal((2, 16, 5))
    dy = rng.standard_normal((2, 8, 5))
    res = mamba_inner_forward(xz, params, return_last_state=return_last_state)
    dxz, grads = mamba_inner_backward(dy, res[1], params)

    dparams, dxz_in, ddy = to_xp(xp, (params, xz, dy))
    res_d = mamba_inner_forward(dxz_in, dparams, return_last_state=return_last_state)
    dxz_d, grads_d = mamba_inner_backward(ddy, res_d[1], dparams)
    assert_no_host_traffic(xp)

    assert_same_on(xp, res_d[0], res[0], "y")
    assert_dicts_same(xp, res_d[1], res[1], "cache")
    if return_last_state:
        assert_same_on(xp, res_d[2], res[2], "last_state")
    assert_same_on(xp, dxz_d, dxz, "dxz")
    assert_dicts_same(xp, grads_d, grads, "grads")


@pytest.mark.parametrize("options", BLOCK_OPTIONS)
def test_block_forward_and_backward_on_every_array_module(xp, rng, options):
    block = small_block(rng, **options)
    x = rng.standard_normal((2, 5, 4))
    dout = rng.standard_normal((2, 5, 4))
    out, cache = block.forward(x, return_cache=True)
    dx, grads = block.backward(dout, cache)

    assert block.to(xp) is block
    dx_in, ddout = to_xp(xp, (x, dout))
    out_d, cache_d = block.forward(dx_in, return_cache=True)
    dx_d, grads_d = block.backward(ddout, cache_d)
    assert_no_host_traffic(xp)

    assert_same_on(xp, out_d, out, "out")
    assert_dicts_same(xp, cache_d, cache, "cache")
    assert_same_on(xp, dx_d, dx, "dx")
    assert_dicts_same(xp, grads_d, grads, "grads")


@pytest.mark.parametrize("options", BLOCK_OPTIONS)
def test_block_prefill_step_and_caches_on_every_array_module(xp, rng, options):
    block = small_block(rng, **options)
    x = rng.standard_normal((2, 5, 4))
    out, conv, ssm = block.prefill(x[:, :3])
    y1, conv1, ssm1 = block.step(x[:, 3], conv, ssm)
    zero_conv, zero_ssm = block.allocate_cache(2)
    y0, conv0, ssm0 = block.step(x[:, :1], zero_conv, zero_ssm)  # official (B, 1, d_model)

    block.to(xp)
    dx = to_xp(xp, x)
    prompt, token, first = dx[:, :3], dx[:, 3], dx[:, :1]
    out_d, conv_d, ssm_d = block.prefill(prompt)
    y1_d, conv1_d, ssm1_d = block.step(token, conv_d, ssm_d)
    zero_conv_d, zero_ssm_d = block.allocate_cache(2)
    y0_d, conv0_d, ssm0_d = block.step(first, zero_conv_d, zero_ssm_d)
    assert_no_host_traffic(xp)

    for dev, host, what in ((out_d, out, "prefill out"), (conv_d, conv, "conv_state"),
                            (ssm_d, ssm, "ssm_state"), (y1_d, y1, "step y"),
                            (conv1_d, conv1, "step conv_state"), (ssm1_d, ssm1, "step ssm_state"),
                            (zero_conv_d, zero_conv, "allocated conv_state"),
                            (zero_ssm_d, zero_ssm, "allocated ssm_state"),
                            (y0_d, y0, "first y"), (conv0_d, conv0, "first conv_state"),
                            (ssm0_d, ssm0, "first ssm_state")):
        assert_same_on(xp, dev, host, what)


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
