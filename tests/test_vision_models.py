"""Tests of ssm_ref.vision.models: the tiny classifiers and their interface.

Oracles: central finite differences in float64 for every gradient (parameters,
images, features); invariances that do not use the code under test (a scan
order is the same as rearranging the patches and scanning in raster order;
attention without position embedding ignores the order of the patches; a conv
stack sees a square of known radius).
"""
from __future__ import annotations

import copy

import fake_device
import numpy as np
import pytest

from conftest import (assert_close, assert_no_host_traffic, numerical_gradient, on_fake_device,
                      to_xp)
from fake_device import DeviceArray, peek

import ssm_ref as sr
from ssm_ref.vision import (
    MODELS,
    AttentionConfig,
    TinyAttention,
    TinyCNN,
    TinyVim,
    TinyVMamba,
    VimConfig,
    build_model,
    effective_receptive_field,
    scan_order,
)
from ssm_ref.nn import gelu, gelu_backward
from ssm_ref.train import evaluate, train

NAMES = sorted(MODELS)
MAMBA = {"vim", "vmamba", "localmamba", "efficientvmamba", "plainmamba"}
EXPECTED_KEYS = {  # official-style names that must be present
    "vim": ["patch_embed.proj.weight", "cls_token", "pos_embed", "layers.0.norm.weight",
            "layers.0.mixer.in_proj.weight", "layers.1.mixer.A_b_log", "layers.1.mixer.x_proj_b.weight",
            "norm_f.weight", "head.weight", "head.bias"],
    "vmamba": ["layers.0.ln_1.weight", "layers.0.self_attention.x_proj_weight",
               "layers.1.self_attention.A_logs", "layers.1.self_attention.conv2d.weight",
               "norm.weight", "head.weight"],
    "plainmamba": ["layers.0.mamba.direction_Bs", "layers.1.norm.weight", "head.bias"],
    "attention": ["pos_embed", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.bias",
                  "blocks.0.norm1.weight", "norm.bias", "head.weight"],
    "cnn": ["layers.0.dwconv.weight", "layers.1.pwconv.weight", "norm.weight"],
}


def tiny(name, seed=1, **kw):
    """The gradient-check size: 4x4 images, 2x2 patches -> 2x2 tokens, width 4."""
    cfg = dict(img_size=4, patch_size=2, embed_dim=4, depth=2, n_classes=3, seed=seed)
    if name in MAMBA:
        cfg["d_state"] = 2
    cfg.update(kw)
    return build_model(name, **cfg)


def perturb(model, rng, scale=0.1):
    """Move every parameter off its init so no gradient path is trivially zero."""
    for k in model.params:
        model.params[k] = model.params[k] + scale * rng.standard_normal(model.params[k].shape)


def fd_at(f, arr, idxs):
    """Central differences of the scalar ``f()`` in the entries ``idxs`` (index tuples) of ``arr``.

    ``arr`` is perturbed in place (a model parameter or the input ``f`` reads).
    """
    flat = [int(np.ravel_multi_index(i, arr.shape)) for i in idxs]
    return numerical_gradient(lambda _: f(), arr, indices=flat)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", NAMES)
def test_parameter_gradients_match_finite_differences(rng, name):
    model = tiny(name)
    perturb(model, rng)
    x = rng.standard_normal((2, 4, 4, 1))
    R = rng.standard_normal((2, 3))  # loss = sum(R * logits)
    logits, cache = model.forward(x, return_cache=True)
    grads = model.backward(R, cache)
    assert set(grads) == set(model.params)
    got, want = [], []
    for k, v in model.params.items():
        assert grads[k].shape == v.shape, k
        # two random entries per parameter keep it fast
        idxs = [tuple(int(rng.integers(s)) for s in v.shape) for _ in range(2)]
        want.extend(fd_at(lambda: float(np.sum(R * model.forward(x))), v, idxs))
        got.extend(grads[k][i] for i in idxs)
    assert_close(np.array(got), np.array(want), kind="fd", err_msg=name)


@pytest.mark.parametrize("name", NAMES)
def test_input_and_feature_gradients_match_finite_differences(rng, name):
    model = tiny(name)
    perturb(model, rng)
    x = rng.standard_normal((2, 4, 4, 1))
    R = rng.standard_normal((2, 3))
    logits, cache = model.forward(x, return_cache=True)
    dx, grads = model.backward(R, cache, return_input_grad=True)
    feat, fcache = model.forward_features(x, return_cache=True)
    assert feat.shape == (2, 2, 2, 4)
    S = rng.standard_normal(feat.shape)
    dxf, gf = model.backward_features(S, fcache)
    assert set(gf) == set(model.params)
    idxs = [tuple(int(rng.integers(s)) for s in x.shape) for _ in range(6)]
    want = fd_at(lambda: float(np.sum(R * model.forward(x))), x, idxs)
    want_f = fd_at(lambda: float(np.sum(S * model.forward_features(x))), x, idxs)
    assert_close(np.array([dx[i] for i in idxs]), want, kind="fd")
    assert_close(np.array([dxf[i] for i in idxs]), want_f, kind="fd")
    k = "patch_embed.proj.weight"  # a feature-path parameter gradient too
    idx = (1, 0, 1, 0)
    assert_close(np.array([gf[k][idx]]), fd_at(
        lambda: float(np.sum(S * model.forward_features(x))), model.params[k], [idx]), kind="fd")


def test_gelu_backward_matches_finite_differences(rng):
    x = rng.standard_normal(20) * 2
    eps = 1e-6
    fd = (gelu(x + eps) - gelu(x - eps)) / (2 * eps)
    assert_close(gelu_backward(np.ones(20), x), fd, kind="fd")
    assert gelu(x.astype(np.float32)).dtype == np.float32


# --------------------------------------------------------------------------- interface
@pytest.mark.parametrize("name", NAMES)
def test_default_sizes_shapes_and_names(rng, name):
    model = build_model(name, seed=0)
    assert model.config.img_size == (8, 8) and model.config.grid == (4, 4)
    assert 1000 < model.n_params() < 50000  # "tens of thousands of parameters at most"
    assert model.n_params() == sum(v.size for v in model.params.values())
    for k in EXPECTED_KEYS.get(name, EXPECTED_KEYS["vmamba"] if name in MAMBA else []):
        assert k in model.params, k
    assert model.params["patch_embed.proj.weight"].shape == (24, 1, 2, 2)  # (E, C, p, p)
    x = rng.random((3, 8, 8, 1))
    logits = model(x)
    assert logits.shape == (3, 10) and np.all(np.isfinite(logits))
    assert model.forward_features(x).shape == (3, 4, 4, 24)


@pytest.mark.parametrize("name", NAMES)
def test_no_weight_decay(name):
    model = build_model(name, seed=0)
    nwd = model.no_weight_decay()
    assert nwd <= set(model.params)
    assert "head.weight" not in nwd and "patch_embed.proj.weight" not in nwd
    assert "head.bias" in nwd
    for k, v in model.params.items():
        last = k.split(".")[-1]
        if last in ("A_log", "A_b_log", "A_logs", "D", "D_b", "Ds", "pos_embed", "cls_token"):
            assert k in nwd, k
        if v.ndim <= 1:
            assert k in nwd, k
    if name == "vim":
        assert {"pos_embed", "cls_token", "layers.0.mixer.A_log", "layers.1.mixer.D_b"} <= nwd
        assert "layers.0.mixer.in_proj.weight" not in nwd
    if name == "vmamba":
        assert {"layers.0.self_attention.A_logs", "layers.0.self_attention.Ds"} <= nwd


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_through_npz(rng, tmp_path, name):
    a = tiny(name, seed=1)
    perturb(a, rng)
    b = tiny(name, seed=2)
    x = rng.standard_normal((2, 4, 4, 1))
    assert not np.allclose(a(x), b(x))
    np.savez(tmp_path / "ckpt.npz", **a.state_dict())
    with np.load(tmp_path / "ckpt.npz") as sd:
        b.load_state_dict(sd)
    np.testing.assert_array_equal(b(x), a(x))
    sd = a.state_dict()
    sd["head.weight"][:] = 0  # a copy: the model is untouched
    assert np.any(a.params["head.weight"] != 0)


@pytest.mark.parametrize("name", NAMES)
def test_seed_determinism(rng, name):
    x = rng.standard_normal((2, 4, 4, 1))
    a, b, c = tiny(name, seed=5), tiny(name, seed=5), tiny(name, seed=6)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    np.testing.assert_array_equal(a(x), b(x))
    assert not np.array_equal(a(x), c(x))


@pytest.mark.parametrize("name", NAMES)
def test_float32_dtype_preserved(rng, name):
    m64 = tiny(name, seed=3)
    m32 = tiny(name, seed=3, dtype=np.float32)
    assert all(v.dtype == np.float32 for v in m32.params.values())
    x = rng.standard_normal((2, 4, 4, 1))
    logits, cache = m32.forward(x.astype(np.float32), return_cache=True)
    assert logits.dtype == np.float32
    assert_close(logits, m64(x), dtype=np.float32)
    dx, grads = m32.backward(np.ones_like(logits), cache, return_input_grad=True)
    assert dx.dtype == np.float32
    assert all(grads[k].dtype == np.float32 for k in grads)
    _, cache64 = m64.forward(x, return_cache=True)
    g64 = m64.backward(np.ones((2, 3)), cache64)
    for k in ("head.weight", "patch_embed.proj.weight"):
        assert_close(grads[k], g64[k], kind="backend", dtype=np.float32)


def test_params_are_the_source_of_truth(rng):
    """An optimiser may replace the arrays in params; the blocks must see the new ones."""
    model = tiny("vim")
    x = rng.standard_normal((2, 4, 4, 1))
    before = model(x)
    model.params["layers.0.mixer.out_proj.weight"] = 2.0 * model.params["layers.0.mixer.out_proj.weight"]
    assert not np.allclose(model(x), before)
    model.params["layers.0.mixer.out_proj.weight"] *= 0.5  # in place works as well
    assert_close(model(x), before)


def test_pluggable_scan_fn(rng):
    calls = {"fwd": 0, "bwd": 0}

    def scan(*a, **k):
        calls["fwd"] += 1
        return sr.selective_scan(*a, **k)

    def scan_bwd(*a, **k):
        calls["bwd"] += 1
        return sr.selective_scan_backward(*a, **k)

    x = rng.standard_normal((2, 4, 4, 1))
    for name in ("vim", "vmamba"):
        ref = tiny(name)
        model = tiny(name, scan_fn=scan, scan_backward_fn=scan_bwd)
        calls.update(fwd=0, bwd=0)
        logits, cache = model.forward(x, return_cache=True)
        model.backward(np.ones_like(logits), cache)
        assert calls["fwd"] > 0 and calls["bwd"] > 0
        assert_close(logits, ref(x))
        model.set_backend()  # back to the reference
        calls.update(fwd=0)
        model(x)
        assert calls["fwd"] == 0


@pytest.mark.parametrize("name", sorted(MAMBA))
def test_backend_matches_the_reference_model(rng, name, backend):
    """A backend's scan swapped into a whole model: logits and every gradient agree."""
    from functools import partial

    import fast
    x = rng.standard_normal((2, 4, 4, 1))
    ref = tiny(name)
    fast_model = tiny(name, scan_fn=partial(fast.selective_scan, backend=backend),
                      scan_backward_fn=partial(fast.selective_scan_backward, backend=backend))
    logits_ref, cache_ref = ref.forward(x, return_cache=True)
    logits, cache = fast_model.forward(x, return_cache=True)
    assert_close(logits, logits_ref, kind="backend")
    dlogits = rng.standard_normal(logits.shape)
    grads_ref = ref.backward(dlogits, cache_ref)
    grads = fast_model.backward(dlogits, cache)
    assert set(grads) == set(grads_ref)
    for key in grads_ref:
        assert_close(grads[key], grads_ref[key], kind="backend", err_msg=key)


# --------------------------------------------------------------------------- invariances
def rearrange_patches(x, perm, p):
    """Image whose raster patch t is patch perm[t] of x."""
    Bsz, H, W, C = x.shape
    h, w = H // p, W // p
    patches = x.reshape(Bsz, h, p, w, p, C).transpose(0, 1, 3, 2, 4, 5).reshape(Bsz, h * w, p, p, C)
    patches = patches[:, perm]
    return patches.reshape(Bsz, h, w, p, p, C).transpose(0, 1, 3, 2, 4, 5).reshape(Bsz, H, W, C)


@pytest.mark.parametrize("order", ["snake", "column", "hilbert", "spiral", "local"])
def test_vim_scan_order_equals_rearranged_patches(rng, order):
    """Vim scanning `order` = Vim scanning raster on the image with its patches rearranged."""
    model = TinyVim(embed_dim=8, d_state=4, scan=order, seed=2)
    raster = TinyVim(embed_dim=8, d_state=4, scan="raster", seed=9)
    raster.load_state_dict(model.state_dict())
    x = rng.standard_normal((2, 8, 8, 1))
    perm = scan_order(order, 4, 4)
    assert_close(model(x), raster(rearrange_patches(x, perm, 2)))
    assert model.cls_index == 8  # middle of 16 patch tokens
    assert not np.allclose(model(x), raster(x))  # the order matters


def test_vim_class_token_positions(rng):
    x = rng.standard_normal((1, 8, 8, 1))
    for pos, idx in (("head", 0), ("middle", 8), ("tail", 16)):
        assert TinyVim(embed_dim=8, d_state=4, cls_position=pos).cls_index == idx
    m = TinyVim(embed_dim=8, d_state=4, cls_position="head")
    assert m(x).shape == (1, 10)


def test_attention_without_position_embedding_ignores_patch_order(rng):
    model = TinyAttention(embed_dim=8, n_heads=2, seed=4)
    model.params["pos_embed"][:] = 0.0
    x = rng.standard_normal((2, 8, 8, 1))
    perm = rng.permutation(16)
    assert_close(model(x), model(rearrange_patches(x, perm, 2)))
    model.params["pos_embed"] += 0.5 * rng.standard_normal(model.params["pos_embed"].shape)
    assert not np.allclose(model(x), model(rearrange_patches(x, perm, 2)))


@pytest.mark.parametrize("depth", [1, 2])
def test_cnn_receptive_field_grows_with_depth(rng, depth):
    model = TinyCNN(embed_dim=4, depth=depth, img_size=16, patch_size=1, seed=0)
    perturb(model, rng)
    erf = effective_receptive_field(model, rng.standard_normal((2, 16, 16, 1)))
    support = np.argwhere(erf > 0)
    assert support.min(axis=0).tolist() == [8 - depth, 8 - depth]
    assert support.max(axis=0).tolist() == [8 + depth, 8 + depth]


def test_vmamba_receptive_field_covers_the_image(rng):
    model = TinyVMamba(embed_dim=8, d_state=4, depth=1, img_size=8, patch_size=1, seed=0)
    erf = effective_receptive_field(model, rng.standard_normal((1, 8, 8, 1)))
    assert np.all(erf > 0)  # four directions reach every pixel
    single = TinyVMamba(embed_dim=8, d_state=4, depth=1, img_size=8, patch_size=1, seed=0,
                        directions="raster")
    erf1 = effective_receptive_field(single, rng.standard_normal((1, 8, 8, 1)))
    # one raster direction + the 3x3 conv: nothing below row 4 + 1 reaches the centre (4, 4)
    assert np.all(erf1[6:] == 0) and np.all(erf1[:4] > 0)


def test_grid_models_take_other_image_sizes(rng):
    model = TinyVMamba(embed_dim=8, d_state=4)
    assert model(rng.random((1, 12, 6, 1))).shape == (1, 10)
    assert model.forward_features(rng.random((1, 12, 6, 1))).shape == (1, 6, 3, 8)
    with pytest.raises(ValueError, match="multiples of patch_size"):
        model(rng.random((1, 7, 8, 1)))


# --------------------------------------------------------------------------- bad input
def test_bad_input():
    vim = TinyVim(embed_dim=8, d_state=4)
    with pytest.raises(ValueError, match="x has shape"):
        vim(np.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="x has shape"):
        vim(np.zeros((1, 12, 12, 1)))
    with pytest.raises(ValueError, match="x has shape"):
        vim(np.zeros((8, 8, 1)))
    with pytest.raises(ValueError, match="non-finite"):
        vim(np.full((1, 8, 8, 1), np.nan))
    logits, cache = vim.forward(np.zeros((2, 8, 8, 1)), return_cache=True)
    with pytest.raises(ValueError, match="dlogits"):
        vim.backward(np.zeros((2, 9)), cache)
    with pytest.raises(TypeError, match="cache"):
        vim.backward(np.zeros((2, 10)), {})
    with pytest.raises(ValueError, match="name"):
        build_model("resnet")
    with pytest.raises(TypeError, match="unexpected keyword"):
        build_model("vim", n_heads=2)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VimConfig(img_size=9, patch_size=2)
    with pytest.raises(ValueError, match="n_heads"):
        AttentionConfig(embed_dim=10, n_heads=4)
    with pytest.raises(ValueError, match="name"):
        TinyVim(scan="sideways")
    with pytest.raises(ValueError, match="directions"):
        TinyVMamba(directions="sideways")
    with pytest.raises(TypeError, match="config"):
        TinyVim(config=AttentionConfig())
    sd = vim.state_dict()
    del sd["head.bias"]
    with pytest.raises(KeyError, match="head.bias"):
        vim.load_state_dict(sd)
    sd = vim.state_dict()
    sd["head.weight"] = np.zeros((3, 8))
    with pytest.raises(ValueError, match="head.weight"):
        vim.load_state_dict(sd)
    with pytest.raises(TypeError, match="not callable"):
        vim.set_backend(scan_fn=42)


@pytest.mark.parametrize("name", NAMES)
def test_a_training_step_validates_the_images_once_not_every_layer(monkeypatch, rng, name):
    """Inside a model's forward/backward no layer, block or gather re-validates its input.

    The selective scan is a pluggable backend with its own public signature and
    checks; only what runs outside it is watched.
    """
    import ssm_ref.module
    import ssm_ref.nn
    import ssm_ref.vision.scan_orders

    inside_scan = [0]

    def counted(fn):
        def run(*args, **kwargs):
            inside_scan[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                inside_scan[0] -= 1
        return run

    model = build_model(name, embed_dim=8, depth=1, **({"d_state": 4} if name in MAMBA else {}))
    model.set_backend(counted(sr.selective_scan), counted(sr.selective_scan_backward))
    x = rng.standard_normal((2, 8, 8, 1))
    expected_logits, cache = model.forward(x, return_cache=True)
    expected = model.backward(np.ones_like(expected_logits), cache)

    def refusing(original):
        def check(*args, **kwargs):
            if not inside_scan[0]:
                raise AssertionError(f"{original.__name__} ran inside a model step")
            return original(*args, **kwargs)
        return check

    monkeypatch.setattr(ssm_ref.nn, "_real", refusing(ssm_ref.nn._real))
    monkeypatch.setattr(ssm_ref.vision.scan_orders, "_as_index",
                        refusing(ssm_ref.vision.scan_orders._as_index))
    for method in ("_check_input", "_check_backward_args"):
        monkeypatch.setattr(ssm_ref.module.Module, method,
                            refusing(getattr(ssm_ref.module.Module, method)))
    logits, cache = model.forward(x, return_cache=True)
    grads = model.backward(np.ones_like(logits), cache)
    assert_close(logits, expected_logits)
    for k in expected:
        assert_close(grads[k], expected[k], err_msg=k)


# --------------------------------------------------------------------------- every array module
# What ``--backend cuda`` promises is that a training step runs on the GPU with no host
# round-trip.  A real GPU is rarely at hand, so every tiny model, and whole training runs,
# also run on the xp fixture: NumPy and tests/fake_device.py, a CuPy stand-in that refuses
# implicit host conversion, host/device mixing and any name CuPy lacks, and counts every
# host read.  The oracle is the same model on NumPy: logits, every gradient and the
# training history must agree.  The scan is the reference (written against the array
# module); the CUDA kernel's own device path is covered on the CUDA simulator
# (test_cuda_sim_training.py) and on a real GPU (test_cupy_gpu.py).
#: Tiny but complete: two blocks, a 4x4 token grid (8x8 images, patch 2).
DEVICE_TINY = dict(img_size=(8, 8), in_chans=1, embed_dim=8, depth=2, n_classes=3, seed=1)


def _tiny(name, **kw):
    return build_model(name, **{**DEVICE_TINY, **kw})


def _on(xp):
    """The array type of ``xp``'s arrays: DeviceArray on the fake device."""
    return DeviceArray if on_fake_device(xp) else np.ndarray


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_and_backward_on_every_array_module_without_host_reads(name, rng, xp):
    host = _tiny(name)
    dev = copy.deepcopy(host).to(xp)
    assert all(isinstance(v, _on(xp)) for v in dev.params.values())
    x = rng.standard_normal((3, 8, 8, 1))
    dlogits = rng.standard_normal((3, 3))

    logits, cache = host.forward(x, return_cache=True)
    dx, grads = host.backward(dlogits, cache, return_input_grad=True)

    xd, dld = to_xp(xp, (x, dlogits))
    dev.backward(dld, dev.forward(xd, return_cache=True)[1])  # warm: index arrays copied once
    fake_device.reset_counts()
    logits_d, cache_d = dev.forward(xd, return_cache=True)
    dx_d, grads_d = dev.backward(dld, cache_d, return_input_grad=True)
    assert_no_host_traffic(xp)

    assert isinstance(logits_d, _on(xp)) and isinstance(dx_d, _on(xp))
    assert_close(logits_d, logits, kind="exact")
    assert_close(dx_d, dx, kind="exact")
    assert set(grads_d) == set(grads)
    for k in grads:
        assert isinstance(grads_d[k], _on(xp)), k
        assert grads_d[k].dtype == grads[k].dtype
        assert_close(grads_d[k], grads[k], kind="exact", err_msg=k)


def test_features_path_on_every_array_module(rng, xp):
    host = _tiny("vmamba")
    dev = copy.deepcopy(host).to(xp)
    x = rng.standard_normal((2, 8, 8, 1))
    feat, cache = host.forward_features(x, return_cache=True)
    dfeat = rng.standard_normal(feat.shape)
    xd, dfeat_d = to_xp(xp, (x, dfeat))
    feat_d, cache_d = dev.forward_features(xd, return_cache=True)
    dx_d, _ = dev.backward_features(dfeat_d, cache_d)
    assert isinstance(feat_d, _on(xp)) and isinstance(dx_d, _on(xp))
    assert_close(feat_d, feat, kind="exact")
    assert_close(dx_d, host.backward_features(dfeat, cache)[0], kind="exact")


def test_to_moves_back_and_load_state_dict_lands_on_the_parameters_module(rng, fake_xp):
    host = _tiny("vim")
    dev = copy.deepcopy(host).to(fake_xp)
    dev.load_state_dict(host.state_dict())  # NumPy values into a model on the device
    assert all(isinstance(v, DeviceArray) for v in dev.params.values())
    back = dev.to(np)
    assert all(type(v) is np.ndarray for v in back.params.values())
    for k, v in host.params.items():
        np.testing.assert_array_equal(back.params[k], v)
    with pytest.raises(TypeError, match="array module"):
        host.to("cupy")


def test_a_host_batch_into_a_device_model_is_refused(rng, fake_xp):
    dev = _tiny("vmamba").to(fake_xp)
    with pytest.raises(TypeError, match="NumPy array"):
        dev.forward(rng.standard_normal((2, 8, 8, 1)))


def _dataset(rng, n_train):
    """Three classes told apart by which third of the image is bright: learnable in a few steps."""
    n = n_train + 12
    y = np.arange(n) % 3
    x = 0.3 * rng.standard_normal((n, 8, 8, 1))
    for i, c in enumerate(y):
        x[i, :, 3 * c:3 * c + 2] += 1.0
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


@pytest.mark.parametrize("name", ["vim", "vmamba"])
def test_training_follows_numpy_and_reads_the_host_only_per_epoch(name, rng, xp):
    """Same history as on NumPy; on the device, host reads per epoch do not grow with the
    steps per epoch."""
    counts = {}
    # The device copies of the scan orders' index arrays are made once per process and cached;
    # make them here, so that the counts below hold only what the training runs move.
    _tiny(name).to(xp)(to_xp(xp, _dataset(rng, 8)[0][:1]))
    for n_train in (16, 32):  # 2 and 4 steps per epoch at batch size 8
        data = _dataset(rng, n_train)
        host, dev = _tiny(name), _tiny(name).to(xp)
        kw = dict(epochs=2, batch_size=8, lr=1e-2, seed=3, progress=False, plot=False)
        want = train(host, data, **kw)
        fake_device.reset_counts()
        got = train(dev, data, **kw)
        counts[n_train] = dict(fake_device.COUNTS)
        for key in ("train_loss", "test_loss_per_epoch", "test_accuracy_per_epoch"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-12, err_msg=key)
        assert all(isinstance(v, _on(xp)) for v in dev.params.values())
        for k, v in host.params.items():
            assert_close(dev.params[k], v, kind="backend", err_msg=k)
    assert want["train_loss"][-1] < want["train_loss"][0]  # it learned something
    if not on_fake_device(xp):
        return
    # Host reads: the epoch's loss and accuracy and the evaluation's, whatever the step count.
    assert counts[16]["sync"] == counts[32]["sync"] > 0
    assert counts[16]["to_host"] == counts[32]["to_host"]
    # Transfers to the device: each batch's images and labels, nothing else per step.
    per_step = (counts[32]["to_device"] - counts[16]["to_device"]) / (2 * (4 - 2))
    assert per_step == 2


def test_evaluate_on_every_array_module_matches_numpy(rng, xp):
    x, y = _dataset(rng, 12)[2:]
    host = _tiny("plainmamba")
    dev = copy.deepcopy(host).to(xp)
    assert evaluate(dev, x, y, batch_size=5) == pytest.approx(evaluate(host, x, y, batch_size=5),
                                                              rel=1e-12)


def test_checkpoint_round_trip_from_a_device_model(tmp_path, rng, fake_xp):
    from ssm_ref.train import load_checkpoint, save_checkpoint
    dev = _tiny("vim").to(fake_xp)
    save_checkpoint(tmp_path / "c.npz", dev, None, epoch=1)
    fresh = _tiny("vim", seed=9).to(fake_xp)
    load_checkpoint(tmp_path / "c.npz", fresh)
    for k, v in dev.params.items():
        assert isinstance(fresh.params[k], DeviceArray)
        np.testing.assert_array_equal(peek(fresh.params[k]), peek(v))
