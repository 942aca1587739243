"""Tests of the vision blocks (ssm_ref.vision.patch_embed, .vim, .vmamba, .plainmamba): patch embedding, class token, Vim, SS2D and its relatives.

Oracles are independent of the code under test: a direct convolution loop for
the patch embedding; the Mamba block of ssm_ref.mamba run forward and on the
flipped sequence for Vim's bidirectional mixer; for SS2D, VMamba's
forward_corev0 re-written here with explicit NumPy flips and transposes and
four separate selective scans (one per direction, each with its slice of the
parameters); central finite differences for every gradient.

Facts hard-coded from the originals: Vim's middle class token sits at
M // 2 (vim/models_mamba.py), Vim's bimamba-v2 state-dict names
(mamba_simple.py), VMamba's SS2D v0 names and shapes (vmamba.py), the VSS
block's LayerNorm eps 1e-6, SS2D's defaults d_conv 3, expand 2.

The scan orders' token functions, the multi-direction scans and merges and every block
also run on the ``xp`` fixture (NumPy and the strict fake device): see "every array
module" below.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy.signal import correlate2d
from scipy.special import expit

from conftest import (assert_close, assert_no_host_traffic, numerical_gradient, on_fake_device,
                      to_xp)
from fake_device import COUNTS, DeviceArray, fake, reset_counts

import ssm_ref as sr
from ssm_ref import MambaBlock, _xp, selective_scan
from ssm_ref.vision import (
    ES2D,
    SCHEMES,
    SS2D,
    LocalSS2D,
    PatchEmbed,
    PlainMambaBlock,
    PlainMambaMixer,
    VimBlock,
    VimMixer,
    VSSBlock,
    add_position_embedding,
    add_position_embedding_backward,
    atrous_subgrids,
    cls_token_index,
    cross_merge,
    cross_scan,
    from_sequence,
    insert_cls_token,
    insert_cls_token_backward,
    multi_merge,
    multi_scan,
    scan_order,
    scan_scheme,
    to_sequence,
)

TINY = dict(d_state=2)  # with d_model 4: d_inner 8, dt_rank 1


# --------------------------------------------------------------------------- helpers
def silu(x):
    return x * expit(x)


def perturb(params, rng, scale=0.3):
    """Move every parameter off its initialization so that each path carries signal."""
    for k, v in params.items():
        params[k] = v + scale * rng.standard_normal(v.shape)
    return params


def fd_check(module, x, rng, n_entries=3, eps=1e-6, x_entries=4):
    """Compare module.backward with central differences of L = sum(R * module(x))."""
    out, cache = module.forward(x, return_cache=True)
    R = rng.standard_normal(out.shape)
    dx, grads = module.backward(R, cache)

    def loss(v):  # the parameters are read from the module as numerical_gradient moves them
        return float(np.sum(R * module.forward(v)))

    sd_owner = _param_owners(module)
    for name, (owner, key) in sd_owner.items():
        arr = owner.params[key]
        assert grads[name].shape == arr.shape, name
        idx = rng.choice(arr.size, size=min(n_entries, arr.size), replace=False)
        num = numerical_gradient(lambda _: loss(x), arr, eps=eps, indices=idx)
        assert_close(grads[name].flat[idx], num, kind="fd", err_msg=f"d{name}")
    idx = rng.choice(x.size, size=min(x_entries, x.size), replace=False)
    num = numerical_gradient(loss, x.copy(), eps=eps, indices=idx)
    assert_close(dx.flat[idx], num, kind="fd", err_msg="dx")
    return grads


def _param_owners(module):
    """Map each state-dict name of a (possibly nested) block to (object holding it, key)."""
    owners = {k: (module, k) for k in module.params}
    for attr, prefix in (("mixer", "mixer."), ("self_attention", "self_attention."),
                         ("mamba", "mamba.")):
        sub = getattr(module, attr, None)
        if sub is not None:
            owners.update({prefix + k: (sub, k) for k in sub.params})
    return owners


# --------------------------------------------------------------------------- patch embedding
def conv_oracle(x, w, b, p):
    """Direct strided convolution (PyTorch Conv2d, stride = kernel = p), loops over outputs."""
    Bsz, H, W, C = x.shape
    E = w.shape[0]
    y = np.zeros((Bsz, H // p, W // p, E))
    for n in range(Bsz):
        for i in range(H // p):
            for j in range(W // p):
                patch = x[n, i * p:(i + 1) * p, j * p:(j + 1) * p, :]  # (p, p, C)
                for e in range(E):
                    y[n, i, j, e] = b[e] + sum(
                        w[e, c, a, q] * patch[a, q, c]
                        for c in range(C) for a in range(p) for q in range(p))
    return y


@pytest.mark.parametrize("C,E,p,H,W", [(1, 3, 2, 4, 6), (3, 4, 3, 6, 3), (2, 5, 1, 2, 3)])
def test_patch_embed_matches_direct_convolution(rng, C, E, p, H, W):
    pe = PatchEmbed(C, E, p, seed=1)
    x = rng.standard_normal((2, H, W, C))
    y = pe(x)
    assert y.shape == (2, H // p, W // p, E)
    assert_close(y, conv_oracle(x, pe.params["proj.weight"], pe.params["proj.bias"], p))


def test_patch_embed_scipy_oracle(rng):
    """Each output channel of a stride-p conv = correlate2d 'valid' sampled every p pixels."""
    pe = PatchEmbed(2, 3, 2, seed=0)
    x = rng.standard_normal((1, 4, 6, 2))
    w, b = pe.params["proj.weight"], pe.params["proj.bias"]
    for e in range(3):
        full = sum(correlate2d(x[0, :, :, c], w[e, c], mode="valid") for c in range(2)) + b[e]
        assert_close(pe(x)[0, :, :, e], full[::2, ::2])


def test_patch_embed_gradients(rng):
    pe = PatchEmbed(2, 3, 2, seed=0)
    fd_check(pe, rng.standard_normal((2, 4, 6, 2)), rng, n_entries=5)


def test_patch_embed_dtype_and_state_dict(rng):
    pe = PatchEmbed(3, 4, 2, seed=0)
    x = rng.standard_normal((1, 4, 4, 3))
    y32 = pe(x.astype(np.float32))
    assert y32.dtype == np.float32
    assert_close(y32, pe(x.astype(np.float32).astype(np.float64)).astype(np.float32))
    pe2 = PatchEmbed.from_state_dict(pe.state_dict())
    assert_close(pe2(x), pe(x))
    assert pe.state_dict()["proj.weight"].shape == (4, 3, 2, 2)  # PyTorch Conv2d layout


def test_patch_embed_bad_input(rng):
    pe = PatchEmbed(3, 4, 2)
    with pytest.raises(ValueError, match="multiples of patch_size = 2"):
        pe(np.zeros((1, 5, 4, 3)))
    with pytest.raises(ValueError, match="should be"):
        pe(np.zeros((1, 4, 4, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        pe(np.full((1, 4, 4, 3), np.nan))
    with pytest.raises(KeyError, match="missing keys"):
        PatchEmbed.from_state_dict({"proj.bias": np.zeros(4)})
    with pytest.raises(ValueError, match="square patches"):
        PatchEmbed.from_state_dict({"proj.weight": np.zeros((4, 3, 2, 3))})


# --------------------------------------------------------------------------- class token, position
def test_cls_token_positions():
    assert [cls_token_index(196, p) for p in ("head", "middle", "tail")] == [0, 98, 196]
    assert cls_token_index(7, "middle") == 3  # Vim: token_position = M // 2
    with pytest.raises(ValueError, match="position"):
        cls_token_index(4, "centre")
    with pytest.raises(ValueError, match="0..4"):
        cls_token_index(4, 5)


@pytest.mark.parametrize("position", ["head", "middle", "tail", 1])
def test_insert_cls_token_and_backward(rng, position):
    x = rng.standard_normal((2, 5, 3))
    cls = rng.standard_normal((1, 1, 3))
    y, idx = insert_cls_token(x, cls, position)
    assert y.shape == (2, 6, 3)
    assert_close(y[:, idx], np.broadcast_to(cls[0], (2, 3)))
    assert_close(np.delete(y, idx, axis=1), x)
    # backward: the map is linear, so <dy, y(x, cls)> = <dx, x> + <dcls, cls>
    dy = rng.standard_normal(y.shape)
    dx, dcls = insert_cls_token_backward(dy, idx)
    assert_close(np.sum(dy * y), np.sum(dx * x) + np.sum(dcls * cls))


def test_position_embedding(rng):
    x = rng.standard_normal((2, 4, 3))
    pos = rng.standard_normal((1, 4, 3))
    y = add_position_embedding(x, pos)
    assert_close(y, x + pos)
    dy = rng.standard_normal(y.shape)
    dx, dpos = add_position_embedding_backward(dy)
    assert_close(np.sum(dy * y), np.sum(dx * x) + np.sum(dpos * pos))
    with pytest.raises(ValueError, match=r"pos_embed has shape \(1, 5, 3\)"):
        add_position_embedding(x, np.zeros((1, 5, 3)))
    with pytest.raises(ValueError, match="cls_token"):
        insert_cls_token(x, np.zeros((1, 1, 2)))


# --------------------------------------------------------------------------- Vim
VIM_NAMES = {"in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
             "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight",
             "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight", "dt_proj_b.weight",
             "dt_proj_b.bias", "A_b_log", "D_b"}


def vim_mixer(rng, bias=False, **kw):
    m = VimMixer(d_model=4, **{**TINY, **kw}, bias=bias, seed=int(rng.integers(1 << 30)))
    perturb(m.params, rng)
    return m


def vim_oracle(sd, u):
    """Vim v2 from two Mamba blocks: (M_f(u) + flip(M_b(flip(u)))) / 2 (out_proj is linear)."""
    fwd = {k: v for k, v in sd.items() if "_b" not in k}
    bwd = dict(fwd)
    for k, v in sd.items():
        if "_b" in k:
            bwd[k.replace("_b_log", "_log").replace("_b.", ".").replace("D_b", "D")] = v
    m_f, m_b = MambaBlock.from_state_dict(fwd), MambaBlock.from_state_dict(bwd)
    return 0.5 * (m_f(u) + m_b(u[:, ::-1])[:, ::-1])


@pytest.mark.parametrize("bias", [False, True])
def test_vim_mixer_equals_two_mamba_blocks(rng, bias):
    m = vim_mixer(rng, bias=bias)
    u = rng.standard_normal((2, 7, 4))
    assert_close(m(u), vim_oracle(m.state_dict(), u))


def test_vim_mixer_state_dict_names_and_round_trip(rng):
    m = vim_mixer(rng)
    sd = m.state_dict()
    assert set(sd) == VIM_NAMES
    assert sd["conv1d_b.weight"].shape == (8, 1, 4) and sd["A_b_log"].shape == (8, 2)
    m2 = VimMixer.from_state_dict(sd)
    u = rng.standard_normal((1, 5, 4))
    assert_close(m2(u), m(u))
    with pytest.raises(KeyError, match=r"missing keys \['A_b_log'\]"):
        VimMixer.from_state_dict({k: v for k, v in sd.items() if k != "A_b_log"})
    with pytest.raises(KeyError, match="unknown keys"):
        VimMixer.from_state_dict({**sd, "bogus": np.zeros(1)})
    with pytest.raises(ValueError, match=r"x_proj_b.weight'\] has shape \(5, 7\)"):
        VimMixer.from_state_dict({**sd, "x_proj_b.weight": np.zeros((5, 7))})


def test_vim_mixer_init_each_direction_like_mamba():
    m = VimMixer(d_model=4, d_state=3, seed=0)
    p = m.params
    for k in ("A_log", "A_b_log"):
        assert_close(p[k], np.tile(np.log(np.arange(1.0, 4.0)), (8, 1)))
    for k in ("D", "D_b"):
        assert_close(p[k], np.ones(8))
    for k in ("dt_proj.bias", "dt_proj_b.bias"):  # softplus(bias) in [1e-3, 1e-1]
        dt = np.log1p(np.exp(p[k]))
        assert np.all(dt >= 1e-3 - 1e-12) and np.all(dt <= 1e-1 + 1e-12)
    assert not np.allclose(p["x_proj.weight"], p["x_proj_b.weight"])  # separate draws


@pytest.mark.parametrize("bias", [False, True])
def test_vim_mixer_gradients(rng, bias):
    fd_check(vim_mixer(rng, bias=bias), rng.standard_normal((2, 5, 4)), rng)


def test_vim_block(rng):
    blk = VimBlock(d_model=4, **TINY, seed=3)
    perturb(blk.mixer.params, rng)
    blk.params["norm.weight"] = 1.0 + 0.3 * rng.standard_normal(4)
    x = rng.standard_normal((2, 5, 4))
    xn = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-5) * blk.params["norm.weight"]
    assert_close(blk(x), x + blk.mixer(xn))
    fd_check(blk, x, rng, n_entries=2)
    blk2 = VimBlock.from_state_dict(blk.state_dict())
    assert_close(blk2(x), blk(x))
    assert "mixer.A_b_log" in blk.state_dict()


def test_vim_scan_fn_pluggable(rng):
    calls = []

    def scan(*a, **k):
        calls.append(a[0].shape)
        return selective_scan(*a, **k)

    m = vim_mixer(rng)
    m2 = VimMixer.from_state_dict(m.state_dict(), scan_fn=scan)
    u = rng.standard_normal((2, 5, 4))
    assert_close(m2(u), m(u))
    assert calls == [(2, 8, 5), (2, 8, 5)]  # one scan per direction


# --------------------------------------------------------------------------- SS2D
SS2D_NAMES = {"in_proj.weight", "conv2d.weight", "conv2d.bias", "x_proj_weight",
              "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds", "out_norm.weight",
              "out_norm.bias", "out_proj.weight"}


def ss2d_block(rng, cls=SS2D, **kw):
    m = cls(d_model=4, **{**TINY, **kw}, seed=int(rng.integers(1 << 30)))
    perturb(m.params, rng)
    return m


def _pre_scan(sd, u):
    """in_proj, depthwise 3x3 conv (scipy correlate2d per channel), SiLU; returns x, z."""
    W_in = sd["in_proj.weight"]
    D = W_in.shape[0] // 2
    xz = u @ W_in.T
    if "in_proj.bias" in sd:
        xz = xz + sd["in_proj.bias"]
    x, z = xz[..., :D], xz[..., D:]
    xc = np.zeros_like(x)
    for n in range(u.shape[0]):
        for d in range(D):
            xc[n, :, :, d] = correlate2d(x[n, :, :, d], sd["conv2d.weight"][d, 0], mode="same")
    xc = xc + sd["conv2d.bias"]
    return silu(xc), z


def _post_scan(sd, y, z):
    """out_norm (LayerNorm, eps 1e-5), the SiLU gate, out_proj."""
    mu = y.mean(-1, keepdims=True)
    var = ((y - mu) ** 2).mean(-1, keepdims=True)
    y = (y - mu) / np.sqrt(var + 1e-5) * sd["out_norm.weight"] + sd["out_norm.bias"]
    out = (y * silu(z)) @ sd["out_proj.weight"].T
    if "out_proj.bias" in sd:
        out = out + sd["out_proj.bias"]
    return out


def _one_direction(sd, k, xs):
    """Direction k's own selective scan on xs (B, D, L) with its slice of the parameters."""
    D = xs.shape[1]
    R = sd["dt_projs_weight"].shape[2]
    N = sd["A_logs"].shape[1]
    x_dbl = np.einsum("bdl,cd->bcl", xs, sd["x_proj_weight"][k])
    dts, Bk, Ck = x_dbl[:, :R], x_dbl[:, R:R + N], x_dbl[:, R + N:]
    delta = np.einsum("brl,dr->bdl", dts, sd["dt_projs_weight"][k])
    sl = slice(k * D, (k + 1) * D)
    return selective_scan(xs, delta, -np.exp(sd["A_logs"][sl]), Bk, Ck, D=sd["Ds"][sl],
                          delta_bias=sd["dt_projs_bias"][k], delta_softplus=True)


def ss2d_oracle(sd, u):
    """VMamba's forward_corev0 with explicit flips and transposes, four separate scans."""
    Bsz, H, W, _ = u.shape
    L = H * W
    x, z = _pre_scan(sd, u)
    D = x.shape[-1]
    x_chw = x.transpose(0, 3, 1, 2)  # (B, D, H, W)
    x_hw = x_chw.reshape(Bsz, D, L)  # row-major
    x_wh = x_chw.transpose(0, 1, 3, 2).reshape(Bsz, D, L)  # the W x H transpose, flattened
    xs = [x_hw, x_wh, x_hw[:, :, ::-1], x_wh[:, :, ::-1]]
    ys = [_one_direction(sd, k, np.ascontiguousarray(xs[k])) for k in range(4)]
    inv2 = ys[2][:, :, ::-1]
    wh = ys[1].reshape(Bsz, D, W, H).transpose(0, 1, 3, 2).reshape(Bsz, D, L)
    invwh = ys[3][:, :, ::-1].reshape(Bsz, D, W, H).transpose(0, 1, 3, 2).reshape(Bsz, D, L)
    y = ys[0] + inv2 + wh + invwh  # (B, D, L)
    y = y.transpose(0, 2, 1).reshape(Bsz, H, W, D)
    return _post_scan(sd, y, z)


def perm_oracle(sd, u, perms, reduce="sum"):
    """Any set of index arrays: gather u[:, perm], own scan per direction, scatter, merge."""
    Bsz, H, W, _ = u.shape
    x, z = _pre_scan(sd, u)
    D = x.shape[-1]
    flat = x.reshape(Bsz, H * W, D)
    y = np.zeros((Bsz, H * W, D))
    count = np.zeros(H * W)
    for k, perm in enumerate(perms):
        yk = _one_direction(sd, k, np.ascontiguousarray(flat[:, perm].transpose(0, 2, 1)))
        y[:, perm] += yk.transpose(0, 2, 1)
        count[perm] += 1
    if reduce == "mean":
        y = y / count[None, :, None]
    return _post_scan(sd, y.reshape(Bsz, H, W, D), z)


@pytest.mark.parametrize("H,W", [(3, 4), (4, 3), (3, 3), (1, 5), (2, 2)])
def test_ss2d_equals_four_separate_scans(rng, H, W):
    m = ss2d_block(rng)
    u = rng.standard_normal((2, H, W, 4))
    assert_close(m(u), ss2d_oracle(m.state_dict(), u))


def test_ss2d_state_dict_names_shapes_defaults(rng):
    m = SS2D(d_model=4, **TINY)
    sd = m.state_dict()
    assert set(sd) == SS2D_NAMES
    K, D, N, R = 4, 8, 2, 1
    shapes = {"in_proj.weight": (2 * D, 4), "conv2d.weight": (D, 1, 3, 3), "conv2d.bias": (D,),
              "x_proj_weight": (K, R + 2 * N, D), "dt_projs_weight": (K, D, R),
              "dt_projs_bias": (K, D), "A_logs": (K * D, N), "Ds": (K * D,),
              "out_norm.weight": (D,), "out_norm.bias": (D,), "out_proj.weight": (4, D)}
    assert {k: v.shape for k, v in sd.items()} == shapes
    assert_close(sd["A_logs"], np.tile(np.log([1.0, 2.0]), (K * D, 1)))
    assert_close(sd["Ds"], np.ones(K * D))
    assert_close(sd["out_norm.weight"], np.ones(D))
    assert_close(sd["out_norm.bias"], np.zeros(D))
    assert np.all(np.abs(sd["conv2d.weight"]) <= 1 / 3)  # PyTorch default, fan_in 9


def test_ss2d_round_trip_and_errors(rng):
    m = ss2d_block(rng)
    sd = m.state_dict()
    u = rng.standard_normal((1, 3, 4, 4))
    assert_close(SS2D.from_state_dict(sd)(u), m(u))
    assert_close(SS2D.from_state_dict({"pre." + k: v for k, v in sd.items()}, prefix="pre.")(u),
                 m(u))
    with pytest.raises(KeyError, match=r"missing keys \['Ds'\]"):
        SS2D.from_state_dict({k: v for k, v in sd.items() if k != "Ds"})
    with pytest.raises(KeyError, match=r"unknown keys \['x_proj.weight'\]"):
        SS2D.from_state_dict({**sd, "x_proj.weight": np.zeros((5, 8))})
    with pytest.raises(ValueError, match=r"'A_logs'\] has shape \(8, 2\) but should be \(32, 2\)"):
        SS2D.from_state_dict({**sd, "A_logs": np.zeros((8, 2))})
    with pytest.raises(ValueError, match=r"dt_projs_bias'\] has shape \(4, 7\)"):
        SS2D.from_state_dict({**sd, "dt_projs_bias": np.zeros((4, 7))})
    with pytest.raises(ValueError, match="K = 4 directions but directions="):
        SS2D.from_state_dict(sd, directions="omnidirectional")
    with pytest.raises(ValueError, match="non-finite"):
        SS2D.from_state_dict({**sd, "Ds": np.full(32, np.inf)})
    with pytest.raises(ValueError, match="should be"):
        m(np.zeros((1, 3, 4, 5)))
    with pytest.raises(ValueError, match="directions"):
        SS2D(d_model=4, directions="not_a_scheme")
    with pytest.raises(ValueError):
        SS2D(d_model=4, directions=["raster", "no_such_order"])


@pytest.mark.parametrize("H,W", [(3, 4), (2, 3)])
def test_ss2d_gradients(rng, H, W):
    fd_check(ss2d_block(rng), rng.standard_normal((2, H, W, 4)), rng)


def test_ss2d_one_grouped_scan(rng):
    calls = []

    def scan(u, delta, A, B, C, **kw):
        calls.append((u.shape, B.shape))
        return selective_scan(u, delta, A, B, C, **kw)

    m = ss2d_block(rng)
    m2 = SS2D.from_state_dict(m.state_dict(), scan_fn=scan)
    u = rng.standard_normal((2, 3, 4, 4))
    assert_close(m2(u), m(u))
    assert calls == [((2, 32, 12), (2, 4, 2, 12))]  # K·D channels, B grouped (B, K, N, L)


def test_ss2d_directions_pluggable(rng):
    m = ss2d_block(rng)
    u = rng.standard_normal((1, 3, 4, 4))
    names = SS2D.from_state_dict(m.state_dict(),
                                 directions=["raster", "column", "raster_reversed",
                                             "column_reversed"])
    assert_close(names(u), m(u))
    # a different direction set reads the same image differently
    snakes = SS2D.from_state_dict(m.state_dict(), directions="plainmamba")
    assert not np.allclose(snakes(u), m(u))
    assert_close(snakes(u), perm_oracle(m.state_dict(), u, sr.vision.scan_scheme(
        "plainmamba", 3, 4)))


@pytest.mark.parametrize("scheme,H,W", [("omnidirectional", 3, 4), ("zigma", 2, 3)])
def test_ss2d_schemes_match_oracle_and_gradients(rng, scheme, H, W):
    m = ss2d_block(rng, directions=scheme)
    assert m.n_directions == 8
    u = rng.standard_normal((2, H, W, 4))
    perms = sr.vision.scan_scheme(scheme, H, W)
    reduce = sr.vision.SCHEMES[scheme].reduce
    assert_close(m(u), perm_oracle(m.state_dict(), u, perms, reduce))
    fd_check(m, u, rng, n_entries=2)


def test_ss2d_float32(rng):
    m = ss2d_block(rng)
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    y = m(x)
    assert y.dtype == np.float32
    assert_close(y, m(x.astype(np.float64)).astype(np.float32))
    out, cache = m.forward(x, return_cache=True)
    dx, _ = m.backward(np.ones_like(out), cache)
    assert dx.dtype == np.float32


# --------------------------------------------------------------------------- relatives of SS2D
@pytest.mark.parametrize("H,W", [(4, 4), (3, 5)])
def test_es2d_subgrids(rng, H, W):
    m = ss2d_block(rng, cls=ES2D)
    u = rng.standard_normal((2, H, W, 4))
    perms = sr.vision.atrous_subgrids(H, W, 2)
    assert_close(m(u), perm_oracle(m.state_dict(), u, perms))
    fd_check(m, u, rng, n_entries=2)  # (3, 5): unequal lengths, one scan per sub-grid


def test_es2d_too_small_grid_raises(rng):
    with pytest.raises(ValueError, match="K = 4"):
        ES2D(d_model=4, **TINY)(np.zeros((1, 1, 3, 4)))


def test_local_ss2d(rng):
    m = ss2d_block(rng, cls=LocalSS2D, window=2)
    u = rng.standard_normal((1, 4, 4, 4))
    perms = [scan_order("local", 4, 4, window=2), scan_order("local_column", 4, 4, window=2),
             scan_order("local", 4, 4, window=2, reverse=True),
             scan_order("local_column", 4, 4, window=2, reverse=True)]
    assert_close(m(u), perm_oracle(m.state_dict(), u, perms))
    fd_check(m, rng.standard_normal((1, 3, 4, 4)), rng, n_entries=2)


def test_vss_block(rng):
    blk = VSSBlock(d_model=4, **TINY, seed=5)
    perturb(blk.self_attention.params, rng)
    blk.params["ln_1.weight"] = 1 + 0.3 * rng.standard_normal(4)
    blk.params["ln_1.bias"] = 0.3 * rng.standard_normal(4)
    x = rng.standard_normal((2, 3, 4, 4))
    mu = x.mean(-1, keepdims=True)
    xn = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-6)
    xn = xn * blk.params["ln_1.weight"] + blk.params["ln_1.bias"]
    assert_close(blk(x), x + ss2d_oracle(blk.self_attention.state_dict(), xn))
    fd_check(blk, x, rng, n_entries=2)
    sd = blk.state_dict()
    assert "self_attention.x_proj_weight" in sd and "ln_1.bias" in sd
    assert_close(VSSBlock.from_state_dict(sd)(x), blk(x))


# --------------------------------------------------------------------------- PlainMamba
# PlainMamba's get_permute_order on a 2x3 grid (plain_mamba_layer.py), worked by hand:
# the orders o1..o4 and the step codes [start, right, left, up, down] = [0, 1, 2, 3, 4].
PLAIN_2x3 = [
    ([0, 1, 2, 5, 4, 3], [0, 1, 1, 4, 2, 2]),  # row snake from the top-left
    ([3, 4, 5, 2, 1, 0], [0, 1, 1, 3, 2, 2]),  # its reverse (H even: starts bottom-left)
    ([0, 3, 4, 1, 2, 5], [0, 4, 1, 3, 1, 4]),  # column snake from the top-left
    ([5, 2, 1, 4, 3, 0], [0, 3, 2, 4, 2, 3]),  # its reverse (W odd: starts bottom-right)
]


def plain_oracle(sd, u, orders):
    """Four separate scans with shared parameters, each token's x, delta, B, C moved together."""
    Bsz, H, W, _ = u.shape
    x, z = _pre_scan(sd, u)  # same in_proj / depthwise conv / SiLU as SS2D
    D = x.shape[-1]
    R, N = sd["dt_proj.weight"].shape[1], sd["A_log"].shape[1]
    flat = x.reshape(Bsz, H * W, D)
    x_dbl = flat @ sd["x_proj.weight"].T  # (B, L, R + 2N) in raster order
    delta = x_dbl[..., :R] @ sd["dt_proj.weight"].T  # (B, L, D)
    y = np.zeros((Bsz, H * W, D))
    for perm, codes in orders:
        Bseq = x_dbl[:, perm, R:R + N] + sd["direction_Bs"][codes]  # (B, L, N)
        yk = selective_scan(flat[:, perm].transpose(0, 2, 1), delta[:, perm].transpose(0, 2, 1),
                            -np.exp(sd["A_log"]), Bseq.transpose(0, 2, 1),
                            x_dbl[:, perm, R + N:].transpose(0, 2, 1), D=sd["D"],
                            delta_bias=sd["dt_proj.bias"], delta_softplus=True)
        y[:, perm] += yk.transpose(0, 2, 1)
    out = (y.reshape(Bsz, H, W, D) * silu(z)) @ sd["out_proj.weight"].T
    return out


def plain_mixer(rng, **kw):
    m = PlainMambaMixer(d_model=4, **{**TINY, "d_conv": 3, **kw}, seed=int(rng.integers(1 << 30)))
    perturb(m.params, rng)
    return m


def test_plainmamba_matches_original_orders_and_codes(rng):
    m = plain_mixer(rng)
    u = rng.standard_normal((2, 2, 3, 4))
    assert_close(m(u), plain_oracle(m.state_dict(), u, PLAIN_2x3))
    assert m.params["direction_Bs"].shape == (5, 2)


def test_plainmamba_keeps_each_grids_orders(rng):
    """One mixer on 2x3, 3x2 and 2x3 again: the hand-worked 2x3 oracle each time on 2x3, a
    fresh mixer's output on 3x2 (the orders kept per grid size, never mixed up), and the
    kept orders and codes read-only."""
    m = plain_mixer(rng)
    for H, W in [(2, 3), (3, 2), (2, 3)]:
        u = rng.standard_normal((2, H, W, 4))
        out, cache = m.forward(u, return_cache=True)
        if (H, W) == (2, 3):
            assert_close(out, plain_oracle(m.state_dict(), u, PLAIN_2x3))
        else:
            assert_close(out, PlainMambaMixer.from_state_dict(m.state_dict())(u), kind="exact")
        assert not any(a.flags.writeable for a in cache["perms"] + cache["codes"])


def test_plainmamba_direction_embedding_matters(rng):
    m = plain_mixer(rng)
    u = rng.standard_normal((1, 3, 3, 4))
    y = m(u)
    m.params["direction_Bs"] = m.params["direction_Bs"] + 1.0
    assert not np.allclose(m(u), y)


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_plainmamba_block_gradients(rng, norm):
    blk = PlainMambaBlock(d_model=4, norm=norm, **TINY, d_conv=3, seed=2)
    perturb(blk.mamba.params, rng)
    perturb(blk.params, rng)
    fd_check(blk, rng.standard_normal((2, 3, 2, 4)), rng, n_entries=2)
    assert "mamba.direction_Bs" in blk.state_dict()


def test_plainmamba_state_dict_and_errors(rng):
    m = plain_mixer(rng)
    sd = m.state_dict()
    assert set(sd) == {"in_proj.weight", "conv2d.weight", "conv2d.bias", "x_proj.weight",
                       "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight",
                       "direction_Bs"}
    u = rng.standard_normal((1, 2, 3, 4))
    assert_close(PlainMambaMixer.from_state_dict(sd)(u), m(u))
    with pytest.raises(ValueError, match=r"direction_Bs'\] has shape \(4, 2\)"):
        PlainMambaMixer.from_state_dict({**sd, "direction_Bs": np.zeros((4, 2))})
    raster = PlainMambaMixer.from_state_dict(sd, directions=["raster"])
    with pytest.raises(ValueError, match="continuous scan order"):
        raster(u)


# --------------------------------------------------------------------------- every array module
# Every function of ssm_ref.vision.scan_orders that touches tokens, every multi-direction
# scan and merge of ssm_ref.vision.multi, and every block (forward and backward) runs on the
# xp fixture: on NumPy, and on the strict fake device (tests/fake_device.py) with the inputs
# and every entry of block.params moved there.  On the device it returns device arrays only
# (outputs, gradients, the arrays of the cache), equal to the NumPy run, and a repeated call
# neither reads a value on the host nor moves one between host and device: the scan orders
# stay NumPy index arrays, copied to the device once and cached.  The only host arrays a
# cache may hold are those index arrays ("perms", "codes").
HOST_INDEX_KEYS = ("perms", "codes")  # cache entries that are NumPy index arrays by design


def assert_same_tree(xp, got, expected, where="result"):
    """``got`` mirrors ``expected`` with every array an array of ``xp`` (a DeviceArray on
    the fake device) equal to the NumPy one, dtype kept.

    Entries named in :data:`HOST_INDEX_KEYS` stay NumPy index arrays.
    """
    if isinstance(expected, (np.ndarray, np.generic)):
        kind = DeviceArray if on_fake_device(xp) else (np.ndarray, np.generic)
        assert isinstance(got, kind), f"{where} is {type(got).__name__}, not an array of {xp!r}"
        assert got.dtype == expected.dtype, f"{where}: dtype {got.dtype} vs {expected.dtype}"
        assert_close(got, expected, kind="exact", err_msg=where)
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for k in expected:
            if k in HOST_INDEX_KEYS:
                assert len(got[k]) == len(expected[k]), f"{where}[{k!r}]"
                for a, b in zip(got[k], expected[k]):
                    assert isinstance(a, np.ndarray), f"{where}[{k!r}] should stay on the host"
                    np.testing.assert_array_equal(a, b)
            else:
                assert_same_tree(xp, got[k], expected[k], f"{where}[{k!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(got) is type(expected) and len(got) == len(expected), where
        for k, (a, b) in enumerate(zip(got, expected)):
            assert_same_tree(xp, a, b, f"{where}[{k}]")
    else:
        assert got == expected, f"{where}: {got!r} vs {expected!r}"


def assert_no_host_reads(xp, what):
    """On the fake device: nothing read back to the host (copies to the device allowed)."""
    if on_fake_device(xp):
        assert COUNTS["sync"] == 0 and COUNTS["to_host"] == 0, f"{what}: {COUNTS}"


def check_function(xp, fn, args, kwargs=None, warm=True, host=()):
    """``fn`` on NumPy and on ``xp``: same results, no host traffic (after one warm call).

    The arguments at the positions in ``host`` (scan orders) stay NumPy.
    """
    kwargs = kwargs or {}
    expected = fn(*args, **kwargs)
    moved = to_xp(xp, [a for i, a in enumerate(args) if i not in host])[::-1]
    dev_args = [a if i in host else moved.pop() for i, a in enumerate(args)]
    if warm:  # the first call may copy index arrays to the device (then cached) ...
        reset_counts()
        fn(*dev_args, **kwargs)
        assert_no_host_reads(xp, fn.__name__)
    reset_counts()  # ... a repeated call moves nothing
    got = fn(*dev_args, **kwargs)
    assert_no_host_traffic(xp)
    assert_same_tree(xp, got, expected, fn.__name__)
    return got


def perturb_block(block, rng, scale=0.3):
    """Move every parameter off its initialization so that each path carries signal."""
    for k, v in block.params.items():
        block.params[k] = (v + scale * rng.standard_normal(v.shape)).astype(v.dtype)
    return block


def check_block(xp, block, x, rng):
    """Forward (with cache) and backward of ``block`` on NumPy and on ``xp`` (a copy of the
    block with every parameter, the sub-blocks' too, moved there)."""
    out, cache = block.forward(x, return_cache=True)
    dout = rng.standard_normal(out.shape).astype(out.dtype)
    dx, grads = block.backward(dout, cache)
    dev = copy.deepcopy(block).to(xp)
    x_d, dout_d = to_xp(xp, (x, dout))
    warm_out, warm_cache = dev.forward(x_d, return_cache=True)  # warm the index-array cache
    dev.backward(dout_d, warm_cache)
    assert_no_host_reads(xp, "first call")
    reset_counts()
    out_d, cache_d = dev.forward(x_d, return_cache=True)
    dx_d, grads_d = dev.backward(dout_d, cache_d)
    assert_no_host_traffic(xp)
    name = type(block).__name__
    assert_same_tree(xp, out_d, out, f"{name} out")
    assert_same_tree(xp, cache_d, cache, f"{name} cache")
    assert_same_tree(xp, dx_d, dx, f"{name} dx")
    assert_same_tree(xp, grads_d, grads, f"{name} grads")
    assert_same_tree(xp, dev.forward(x_d), out, f"{name}.forward without cache")
    return grads


# --------------------------------------------------------------------------- scan orders
ORDERS = [("raster", {}), ("column", {}), ("spiral", {}), ("hilbert", {}),
          ("local", {"window": 2}), ("diagonal", {})]


@pytest.mark.parametrize("name, options", ORDERS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_to_and_from_sequence_on_every_array_module(xp, rng, name, options, dtype):
    H, W = 3, 4
    perm = scan_order(name, H, W, **options)
    x = rng.standard_normal((2, H, W, 3)).astype(dtype)
    check_function(xp, to_sequence, [x, perm], host=(1,))
    check_function(xp, to_sequence, [x.reshape(2, H * W, 3), perm], host=(1,))  # (B, L, C) tokens
    y = rng.standard_normal((2, H * W, 3)).astype(dtype)
    check_function(xp, from_sequence, [y, perm, H, W], host=(1,))


def test_partial_orders_on_every_array_module(xp, rng):
    H, W = 3, 5  # odd sizes: sub-grids of different lengths, cells outside stay zero
    for sub in atrous_subgrids(H, W, 2):
        x = rng.standard_normal((2, H, W, 3))
        check_function(xp, to_sequence, [x, sub], host=(1,))
        check_function(xp, from_sequence, [rng.standard_normal((2, sub.size, 3)), sub, H, W],
                       host=(1,))


def test_index_arrays_are_copied_to_the_device_once(fake_xp, rng):
    _xp._DEVICE_COPIES.clear()
    perm = scan_order("snake", 3, 4)
    x = fake.asarray(rng.standard_normal((2, 3, 4, 3)))
    reset_counts()
    seq = to_sequence(x, perm)
    assert COUNTS == {"sync": 0, "to_host": 0, "to_device": 1}  # the perm, once
    from_sequence(seq, perm.copy(), 3, 4)  # an equal perm (another object) hits the cache
    to_sequence(x, perm)
    assert COUNTS == {"sync": 0, "to_host": 0, "to_device": 1}
    assert len(_xp._DEVICE_COPIES) == 1
    to_sequence(x, perm[::-1].copy())  # a different order is a new entry
    assert COUNTS["to_device"] == 2 and len(_xp._DEVICE_COPIES) == 2


def test_numpy_inputs_never_touch_the_device_cache(rng):
    _xp._DEVICE_COPIES.clear()
    perm = scan_order("spiral", 3, 3)
    y = to_sequence(rng.standard_normal((1, 3, 3, 2)), perm)
    assert isinstance(from_sequence(y, perm, 3, 3), np.ndarray)
    assert not _xp._DEVICE_COPIES


# --------------------------------------------------------------------------- multi-direction
def test_cross_scan_and_merge_on_every_array_module(xp, rng):
    x = rng.standard_normal((2, 3, 4, 2))
    check_function(xp, cross_scan, [x])
    check_function(xp, cross_merge, [rng.standard_normal((2, 4, 12, 2)), 3, 4])


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_schemes_scan_and_merge_on_every_array_module(xp, rng, scheme):
    H, W = 4, 4  # sides multiples of the es2d step: every scheme stacks
    perms = scan_scheme(scheme, H, W)
    x = rng.standard_normal((2, H, W, 3)).astype(np.float32)
    check_function(xp, multi_scan, [x, perms], host=(1,))
    ys = rng.standard_normal((2, len(perms), perms[0].size, 3)).astype(np.float32)
    for reduce in ("sum", "mean"):
        check_function(xp, multi_merge, [ys, perms, H, W], {"reduce": reduce}, host=(1,))


def test_unstacked_scan_and_unequal_merge_on_every_array_module(xp, rng):
    H, W = 3, 5
    perms = scan_scheme("es2d", H, W)  # sub-grids of lengths 6, 3, 4, 2
    x = rng.standard_normal((2, H, W, 3))
    check_function(xp, multi_scan, [x, perms], {"stack": False}, host=(1,))
    ys = [rng.standard_normal((2, q.size, 3)) for q in perms]
    check_function(xp, multi_merge, [ys, perms, H, W], {"reduce": "sum"}, host=(1,))
    # cells visited unequally often: "mean" divides by a per-cell count (a cached constant)
    orders = [scan_order("raster", H, W), perms[0], perms[2]]
    ys = [rng.standard_normal((2, q.size, 3)) for q in orders]
    check_function(xp, multi_merge, [ys, orders, H, W], {"reduce": "mean"}, host=(1,))


# --------------------------------------------------------------------------- patch embedding
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_patch_embed_on_every_array_module(xp, rng, bias, dtype):
    pe = PatchEmbed(3, 5, 2, seed=rng, dtype=dtype)
    if not bias:
        pe = PatchEmbed.from_state_dict({"proj.weight": pe.params["proj.weight"]})
    check_block(xp, pe, rng.standard_normal((2, 4, 6, 3)).astype(dtype), rng)


# --------------------------------------------------------------------------- class token, position
@pytest.mark.parametrize("position", ["head", "middle", "tail", 1])
def test_cls_token_on_every_array_module(xp, rng, position):
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    cls = rng.standard_normal((1, 1, 3)).astype(np.float32)
    y, idx = check_function(xp, insert_cls_token, [x, cls, position], warm=False)
    check_function(xp, insert_cls_token_backward, [rng.standard_normal((2, 6, 3)), idx], warm=False)


def test_position_embedding_on_every_array_module(xp, rng):
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    pos = rng.standard_normal((1, 5, 3))
    check_function(xp, add_position_embedding, [x, pos], warm=False)
    check_function(xp, add_position_embedding_backward, [rng.standard_normal((2, 5, 3))], warm=False)


# --------------------------------------------------------------------------- Vim
@pytest.mark.parametrize("bias, conv_bias", [(False, True), (True, False)])
def test_vim_mixer_on_every_array_module(xp, rng, bias, conv_bias):
    mixer = perturb_block(VimMixer(d_model=4, bias=bias, conv_bias=conv_bias, seed=1, **TINY), rng)
    check_block(xp, mixer, rng.standard_normal((2, 5, 4)), rng)


def test_vim_block_on_every_array_module(xp, rng):
    blk = perturb_block(VimBlock(d_model=4, seed=2, dtype=np.float32, **TINY), rng)
    check_block(xp, blk, rng.standard_normal((2, 5, 4)).astype(np.float32), rng)


# --------------------------------------------------------------------------- SS2D and relatives
@pytest.mark.parametrize("directions, H, W", [
    (("raster", "column", "raster_reversed", "column_reversed"), 3, 4),  # VMamba's cross-scan
    ("zigma", 3, 4),                                   # 8 directions merged by "mean"
    ("es2d", 3, 5),                                    # unequal lengths: one scan per direction
    (["hilbert", ("spiral", {"reverse": True})], 3, 4),  # a list of names and (name, options)
])
def test_ss2d_on_every_array_module(xp, rng, directions, H, W):
    ss2d = perturb_block(SS2D(d_model=4, directions=directions, seed=3, **TINY), rng)
    check_block(xp, ss2d, rng.standard_normal((2, H, W, 4)), rng)


@pytest.mark.parametrize("bias", [True, False])
def test_ss2d_biases_and_float32_on_every_array_module(xp, rng, bias):
    ss2d = perturb_block(SS2D(d_model=4, bias=bias, conv_bias=not bias, seed=4, dtype=np.float32, **TINY), rng)
    check_block(xp, ss2d, rng.standard_normal((1, 3, 3, 4)).astype(np.float32), rng)


def test_local_ss2d_and_es2d_on_every_array_module(xp, rng):
    check_block(xp, perturb_block(LocalSS2D(d_model=4, window=2, seed=5, **TINY), rng),
                rng.standard_normal((1, 4, 3, 4)), rng)
    check_block(xp, perturb_block(ES2D(d_model=4, step=2, seed=6, **TINY), rng),
                rng.standard_normal((1, 4, 4, 4)), rng)


@pytest.mark.parametrize("mixer_cls", [SS2D, ES2D])
def test_vss_block_on_every_array_module(xp, rng, mixer_cls):
    blk = perturb_block(VSSBlock(d_model=4, mixer_cls=mixer_cls, seed=7, **TINY), rng)
    check_block(xp, blk, rng.standard_normal((2, 4, 4, 4)), rng)


# --------------------------------------------------------------------------- PlainMamba
@pytest.mark.parametrize("bias, conv_bias", [(False, True), (True, False)])
def test_plainmamba_mixer_on_every_array_module(xp, rng, bias, conv_bias):
    mixer = perturb_block(PlainMambaMixer(d_model=4, d_conv=3, bias=bias, conv_bias=conv_bias, seed=8,
                                    **TINY), rng)
    grads = check_block(xp, mixer, rng.standard_normal((2, 3, 4, 4)), rng)
    assert np.all(grads["direction_Bs"] != 0)  # every move code (start, 4 moves) was used


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_plainmamba_block_on_every_array_module(xp, rng, norm):
    blk = perturb_block(PlainMambaBlock(d_model=4, norm=norm, d_conv=3, seed=9, dtype=np.float32, **TINY), rng)
    check_block(xp, blk, rng.standard_normal((1, 3, 3, 4)).astype(np.float32), rng)
