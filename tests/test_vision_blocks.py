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
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import correlate2d
from scipy.special import expit

from conftest import assert_close, numerical_gradient

import ssm_ref as sr
from ssm_ref import MambaBlock, selective_scan
from ssm_ref.vision import (
    ES2D,
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
    cls_token_index,
    insert_cls_token,
    insert_cls_token_backward,
    scan_order,
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
