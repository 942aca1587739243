"""The full Vim and VMamba models against the official code: tests/data/official_vision holds
checkpoints and the outputs (logits and per-layer intermediates) that the official model classes
computed from them (see its README.md, made by tests/data/make_official_vision_oracle.py)."""
import collections
import io
import json
import math
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from ssm_ref.vision import (
    VSSM,
    PatchMerging2D,
    VisionMamba,
    load_checkpoint,
    vim_small,
    vim_tiny,
    vmamba_release_names,
    vmamba_small,
    vmamba_tiny,
)

safetensors_numpy = pytest.importorskip("safetensors.numpy")

DATA = Path(__file__).resolve().parent / "data" / "official_vision"
VIM_CASES = ["vim_tiny", "vim_stride"]


def _case(name):
    d = DATA / name
    cfg = json.loads((d / "config.json").read_text())
    return cfg, safetensors_numpy.load_file(str(d / "model.safetensors")), np.load(d / "oracle.npz")


def _maxrel(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(np.asarray(got, dtype=np.float64) - ref).max() / np.abs(ref).max())


def _vim(name):
    cfg, sd, oracle = _case(name)
    model = VisionMamba(**cfg["kwargs"])
    model.load_state_dict(sd)
    return model, sd, oracle


# =========================================================================== Vim: the oracle
@pytest.mark.parametrize("name", VIM_CASES)
def test_vim_logits_match_the_official_model(name):
    model, _, oracle = _vim(name)
    logits = model(oracle["images_nhwc"])
    assert logits.shape == oracle["logits"].shape
    assert _maxrel(logits, oracle["logits"]) < 1e-4
    assert np.abs(oracle["logits"]).max() > 0.1  # not a trivially small output


@pytest.mark.parametrize("name", VIM_CASES)
def test_vim_every_intermediate_matches(name):
    model, _, oracle = _vim(name)
    trace = model.trace(oracle["images_nhwc"])
    assert model.cls_position == int(oracle["cls_position"])
    keys = [k for k in oracle.files if k not in ("images_nchw", "images_nhwc", "cls_position")]
    assert len(keys) == 5 + 5 * model.depth  # every recorded intermediate is compared
    for k in keys:
        assert trace[k].shape == oracle[k].shape, k
        assert _maxrel(trace[k], oracle[k]) < 1e-5, k


def test_vim_selection_is_what_the_scans_use():
    import ssm_ref as sr
    model, _, oracle = _vim("vim_tiny")
    sel = model.selection(oracle["images_nhwc"])
    assert len(sel) == model.depth
    for i in (0, model.depth - 1):
        for path, key in (("forward", "y_fwd"), ("backward", "y_bwd")):
            s = sel[i][path]
            assert s["delta"].shape == (2, 64, 17) and s["B"].shape == (2, 8, 17)
            assert (s["delta"] > 0).all()
            D = model.params[f"layers.{i}.mixer." + ("D" if path == "forward" else "D_b")]
            y = sr.selective_scan(s["u"], s["delta"], s["A"], s["B"], s["C"], D=D, z=s["z"])
            assert _maxrel(y, oracle[f"layer{i}_{key}"]) < 1e-5


def test_vim_images_in_both_layouts_agree():
    _, _, oracle = _case("vim_tiny")
    np.testing.assert_array_equal(oracle["images_nhwc"],
                                  oracle["images_nchw"].transpose(0, 2, 3, 1))


# =========================================================================== Vim: the state dict
@pytest.mark.parametrize("name", VIM_CASES)
def test_vim_state_dict_has_the_official_names_and_shapes(name):
    cfg, sd, _ = _case(name)
    model = VisionMamba(**cfg["kwargs"])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v) for k, v in cfg["state_dict"].items()}
    assert model.n_params() == sum(v.size for v in sd.values())


def test_vim_state_dict_round_trip():
    model, sd, oracle = _vim("vim_tiny")
    again = VisionMamba(**_case("vim_tiny")[0]["kwargs"], seed=5)
    assert not np.allclose(again(oracle["images_nhwc"]), model(oracle["images_nhwc"]))
    again.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(again(oracle["images_nhwc"]), model(oracle["images_nhwc"]))
    for k, v in again.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])


def test_vim_refuses_missing_extra_and_misshaped_keys_by_name():
    cfg, sd, _ = _case("vim_tiny")
    model = VisionMamba(**cfg["kwargs"])
    missing = {k: v for k, v in sd.items() if k != "layers.2.mixer.A_b_log"}
    with pytest.raises(KeyError, match="layers.2.mixer.A_b_log"):
        model.load_state_dict(missing)
    with pytest.raises(KeyError, match="layers.0.mixer.in_proj.bias"):
        model.load_state_dict({**sd, "layers.0.mixer.in_proj.bias": np.zeros(128, np.float32)})
    with pytest.raises(ValueError, match=r"pos_embed.*\(1, 16, 32\)"):
        model.load_state_dict({**sd, "pos_embed": sd["pos_embed"][:, :16]})


# =========================================================================== Vim: the constructor
@pytest.mark.parametrize("flag, value", [
    ("if_rope", True), ("if_rope_residual", True), ("bimamba_type", "v1"),
    ("bimamba_type", "none"), ("use_double_cls_token", True), ("rms_norm", False),
    ("final_pool_type", "max"), ("embed_dim", 0), ("norm_epsilon", -1.0), ("drop_rate", 1.5),
])
def test_vim_unsupported_options_raise_naming_the_argument(flag, value):
    kw = {**dict(img_size=16, patch_size=8, stride=8, embed_dim=8, depth=1, d_state=2),
          flag: value}
    with pytest.raises(ValueError, match=flag):
        VisionMamba(**kw)


def test_vim_checks_the_image_shape():
    model = VisionMamba(img_size=16, patch_size=8, stride=8, embed_dim=8, depth=1, d_state=2)
    with pytest.raises(ValueError, match=r"images.*\(B, 16, 16, 3\)"):
        model(np.zeros((1, 3, 16, 16)))  # channels first
    with pytest.raises(ValueError, match="images"):
        model(np.full((1, 16, 16, 3), np.nan))


def test_vim_without_class_token_pools_and_has_no_cls_token():
    kw = dict(img_size=16, patch_size=8, stride=8, embed_dim=8, depth=1, d_state=2, seed=1)
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3))
    mean = VisionMamba(if_cls_token=False, final_pool_type="mean", **kw)
    last = VisionMamba(if_cls_token=False, final_pool_type="none", **kw)
    assert "cls_token" not in mean.state_dict() and mean.params["pos_embed"].shape == (1, 4, 8)
    t = mean.trace(x)
    np.testing.assert_allclose(t["features"], t["norm_f_out"].mean(axis=1))
    np.testing.assert_allclose(last.trace(x)["features"], last.trace(x)["norm_f_out"][:, -1])


def test_vim_class_token_first_without_the_middle_flag():
    kw = dict(img_size=16, patch_size=8, stride=8, embed_dim=8, depth=1, d_state=2, seed=1)
    model = VisionMamba(use_middle_cls_token=False, **kw)
    assert model.cls_position == 0
    t = model.trace(np.random.default_rng(0).standard_normal((2, 16, 16, 3)))
    want = model.params["cls_token"][0, 0] + model.params["pos_embed"][0, 0]
    np.testing.assert_allclose(t["tokens_in"][:, 0], np.broadcast_to(want, (2, 8)), rtol=1e-6)
    np.testing.assert_allclose(t["features"], t["norm_f_out"][:, 0])


def test_vim_divide_out_false_sums_the_directions():
    kw = dict(img_size=16, patch_size=8, stride=8, embed_dim=8, depth=1, d_state=2, seed=1)
    x = np.random.default_rng(0).standard_normal((1, 16, 16, 3))
    avg, tot = VisionMamba(**kw), VisionMamba(if_divide_out=False, **kw)
    ta, tt = avg.trace(x), tot.trace(x)
    np.testing.assert_allclose(tt["layer0_hidden"], 2 * ta["layer0_hidden"])


def _vim_count(D, depth, N=16, patch=16, img=224, classes=1000, channels=3):
    """Parameters of the official Vim from its architecture (README's key list), not our code."""
    E, R = 2 * D, math.ceil(D / 16)
    path = E * 4 + E + (R + 2 * N) * E + E * R + E + E * N + E  # conv, x_proj, dt_proj, A, D
    layer = 2 * E * D + D * E + 2 * path + D  # in_proj, out_proj, two paths, norm
    M = (img // patch) ** 2
    return (depth * layer + D * channels * patch * patch + D + D + (M + 1) * D + D
            + classes * D + classes)


def test_vim_presets_have_the_official_sizes():
    assert _vim_count(192, 24) == 7_148_008  # "Vim-Ti 7M" (Zhu et al. 2024, Table 1)
    assert vim_tiny().n_params() == _vim_count(192, 24)
    assert vim_small().n_params() == _vim_count(384, 24)  # "Vim-S 26M"
    assert round(_vim_count(384, 24) / 1e6) == 26
    t = vim_tiny()
    assert (t.img_size, t.patch_size, t.stride, t.d_state, t.cls_position) == (224, 16, 16, 16, 98)


def test_patch_embed_with_a_stride_is_the_strided_conv_and_its_adjoint():
    from ssm_ref.vision import PatchEmbed
    rng = np.random.default_rng(3)
    pe = PatchEmbed(2, 3, 4, stride=2, seed=1)
    x = rng.standard_normal((2, 8, 10, 2))
    y, cache = pe.forward(x, return_cache=True)
    assert y.shape == (2, 3, 4, 3) and pe.grid(8, 10) == (3, 4)
    w, b = pe.params["proj.weight"], pe.params["proj.bias"]
    ref = np.zeros_like(y)
    for i in range(3):
        for j in range(4):
            patch = x[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4, :]  # (B, a, b', C)
            ref[:, i, j] = np.einsum("xabc,ecab->xe", patch, w) + b
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, g = pe.backward(dy, cache)
    # adjoint: <dy, f(x) - b> = <dx, x>
    assert np.isclose(np.sum(dy * (y - b)), np.sum(dx * x))
    with pytest.raises(ValueError, match="stride = 2"):
        pe(np.zeros((1, 9, 10, 2)))


# =========================================================================== VMamba (VSSM v0)
def _vssm():
    cfg, sd, oracle = _case("vmamba_v0_tiny")
    model = VSSM(**cfg["kwargs"])
    model.load_state_dict(sd)
    return model, cfg, sd, oracle


def test_vssm_logits_match_both_official_code_versions():
    model, _, _, oracle = _vssm()
    logits = model(oracle["images_nhwc"])
    assert logits.shape == oracle["logits"].shape == (2, 10)
    assert _maxrel(logits, oracle["logits"]) < 1e-4
    assert _maxrel(logits, oracle["logits_archive"]) < 1e-4
    assert np.abs(oracle["logits"]).max() > 0.1


def test_vssm_every_intermediate_matches():
    model, _, _, oracle = _vssm()
    trace = model.trace(oracle["images_nhwc"])
    keys = [k for k in oracle.files if k not in ("images_nchw", "images_nhwc", "logits_archive")]
    n_blocks = sum(model.depths)
    assert len(keys) == 4 + 5 * n_blocks + (len(model.depths) - 1) + 8
    for k in keys:
        assert trace[k].shape == oracle[k].shape, k
        assert _maxrel(trace[k], oracle[k]) < 1e-5, k


def test_vssm_state_dict_has_the_release_names_and_round_trips():
    model, cfg, sd, oracle = _vssm()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v) for k, v in cfg["state_dict"].items()}
    again = VSSM(**cfg["kwargs"], seed=4)
    assert not np.allclose(again(oracle["images_nhwc"]), model(oracle["images_nhwc"]))
    again.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(again(oracle["images_nhwc"]), model(oracle["images_nhwc"]))


def test_vssm_loads_the_current_code_names_too():
    model, cfg, sd, oracle = _vssm()
    main = {}
    for k, v in sd.items():  # the release -> main map of the oracle's config
        for old, new in cfg["release_to_main_key_prefixes"].items():
            pattern = old.replace(".", r"\.").replace("{i}", r"(\d+)").replace("{j}", r"(\d+)")
            m = __import__("re").match(pattern, k)
            if m:
                repl = new
                for g, name in zip(m.groups(), ("{i}", "{j}")):
                    repl = repl.replace(name, g)
                k = repl + k[m.end():]
                break
        main[k] = v
    assert "classifier.head.weight" in main and "layers.1.blocks.0.op.Ds" in main
    assert "patch_embed.0.weight" in main and "layers.0.blocks.1.norm.bias" in main
    other = VSSM(**cfg["kwargs"], seed=9)
    other.load_state_dict(main)
    np.testing.assert_array_equal(other(oracle["images_nhwc"]), model(oracle["images_nhwc"]))
    assert vmamba_release_names(main).keys() == sd.keys()


def test_vssm_refuses_missing_extra_and_misshaped_keys_by_name():
    model, _, sd, _ = _vssm()
    with pytest.raises(KeyError, match="layers.0.downsample.reduction.weight"):
        model.load_state_dict({k: v for k, v in sd.items()
                               if k != "layers.0.downsample.reduction.weight"})
    with pytest.raises(KeyError, match="layers.1.downsample.norm.weight"):
        model.load_state_dict({**sd, "layers.1.downsample.norm.weight": np.ones(192)})
    bad = {**sd, "layers.1.blocks.0.self_attention.A_logs": np.zeros((96, 8), np.float32)}
    with pytest.raises(ValueError, match=r"layers.1.blocks.0.self_attention.A_logs.*\(96, 8\)"):
        model.load_state_dict(bad)


@pytest.mark.parametrize("flag, value", [
    ("forward_type", "v2"), ("mlp_ratio", 4.0), ("downsample_version", "v3"),
    ("patchembed_version", "v2"), ("posembed", True), ("ssm_conv", 5), ("norm_layer", "bn"),
    ("ssm_act_layer", "gelu"), ("patch_norm", False), ("gmlp", True), ("ssm_init", "v2"),
    ("dims", [8, 8]), ("depths", []), ("drop_path_rate", 2.0),
])
def test_vssm_unsupported_options_raise_naming_the_argument(flag, value):
    kw = {**dict(depths=(1, 1), dims=8, ssm_d_state=2), flag: value}
    with pytest.raises(ValueError, match=flag):
        VSSM(**kw)


def test_vssm_checks_the_image_shape_and_patch_merging_checks_odd_sizes():
    model = VSSM(depths=(1, 1), dims=8, ssm_d_state=2)
    with pytest.raises(ValueError, match=r"images.*multiples of 8"):
        model(np.zeros((1, 12, 16, 3)))
    with pytest.raises(ValueError, match="images"):
        model(np.zeros((1, 3, 16, 16)))
    with pytest.raises(ValueError, match="even"):
        PatchMerging2D(4)(np.zeros((1, 3, 4, 4)))


def _vmamba_count(depths, C0=96, N=16, ratio=2, patch=4, classes=1000, channels=3):
    """Parameters of the official VMamba v0 from its architecture (README's key list)."""
    total = C0 * channels * patch * patch + C0 + 2 * C0  # patch_embed conv + LayerNorm
    for s, depth in enumerate(depths):
        C = C0 * 2 ** s
        E, R, K = ratio * C, math.ceil(C / 16), 4
        ss2d = (2 * E * C + E * 9 + E + K * (R + 2 * N) * E + K * E * R + K * E + K * E * N
                + K * E + 2 * E + C * E)
        total += depth * (2 * C + ss2d)
        if s < len(depths) - 1:
            total += 4 * C * 2 * C + 2 * 4 * C  # reduction + norm
    C = C0 * 2 ** (len(depths) - 1)
    return total + 2 * C + classes * C + classes


def test_vmamba_presets_have_the_official_sizes():
    # "VMamba-T 22M", "VMamba-S 44M" (v0 release table, truncated): 22.89M and 44.42M
    assert int(_vmamba_count((2, 2, 9, 2)) / 1e6) == 22
    assert vmamba_tiny().n_params() == _vmamba_count((2, 2, 9, 2))
    assert vmamba_small().n_params() == _vmamba_count((2, 2, 27, 2))
    assert int(_vmamba_count((2, 2, 27, 2)) / 1e6) == 44
    t = vmamba_tiny()
    assert (t.dims, t.depths, t.d_state, t.patch_size) == ([96, 192, 384, 768], [2, 2, 9, 2], 16,
                                                           4)


# =========================================================================== load_checkpoint
def test_load_checkpoint_reads_safetensors():
    sd = load_checkpoint(DATA / "vim_tiny" / "model.safetensors")
    ref = safetensors_numpy.load_file(str(DATA / "vim_tiny" / "model.safetensors"))
    assert sd.keys() == ref.keys() and all(isinstance(v, np.ndarray) for v in sd.values())
    model = VisionMamba(**_case("vim_tiny")[0]["kwargs"])
    model.load_state_dict(sd)
    oracle = _case("vim_tiny")[2]
    assert _maxrel(model(oracle["images_nhwc"]), oracle["logits"]) < 1e-4


def test_load_checkpoint_reads_the_official_pth_without_torch():
    """The committed model.pth was written by torch.save({"model": sd}) itself: read without
    PyTorch, unwrapped, it equals the safetensors copy of the same weights bit for bit."""
    sd = load_checkpoint(DATA / "vim_tiny" / "model.pth")
    ref = safetensors_numpy.load_file(str(DATA / "vim_tiny" / "model.safetensors"))
    assert sd.keys() == ref.keys()
    for k in ref:
        assert sd[k].dtype == ref[k].dtype
        np.testing.assert_array_equal(sd[k], ref[k])


@pytest.fixture
def torch_names(monkeypatch):
    """Stand-in modules ``torch`` and ``torch._utils`` holding the names a torch.save pickle
    refers to, so that pickle can write those references; the reader never imports them."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("the stand-in is only written, never called")
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "BFloat16Storage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch, utils


def write_torch_archive(path, obj, torch, utils):
    """Write ``obj`` in torch.save's layout (archive/data.pkl + archive/data/<key>), without
    PyTorch: each array becomes a ``_rebuild_tensor_v2`` call on a persistent storage id;
    a ``("bf16", array)`` pair is stored as bfloat16 (the upper 16 bits of each float32)."""
    import zipfile
    storages = {}

    class StorageRef:
        def __init__(self, pid):
            self.pid = pid

    class Tensor:
        def __init__(self, arr, bf16):
            key = str(len(storages))
            if bf16:
                raw, stype = (arr.astype(np.float32).view(np.uint32) >> 16).astype("<u2"), \
                    torch.BFloat16Storage
            else:
                raw, stype = arr.astype("<f4"), torch.FloatStorage
            storages[key] = raw.tobytes()
            self.ref = StorageRef(("storage", stype, key, "cpu", arr.size))
            self.shape = arr.shape
            self.stride = tuple(int(np.prod(arr.shape[i + 1:])) for i in range(arr.ndim))

        def __reduce__(self):
            return (utils._rebuild_tensor_v2,
                    (self.ref, 0, self.shape, self.stride, False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, x):
            return x.pid if isinstance(x, StorageRef) else None

    def wrap(o):
        if isinstance(o, dict):
            return {k: wrap(v) for k, v in o.items()}
        if isinstance(o, tuple) and len(o) == 2 and o[0] == "bf16":
            return Tensor(np.asarray(o[1]), True)
        return Tensor(o, False) if isinstance(o, np.ndarray) else o

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(wrap(obj))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)


def test_load_checkpoint_unwraps_and_widens_bfloat16(torch_names, monkeypatch, tmp_path):
    path = tmp_path / "ckpt.pth"
    bias = np.array([1.0, -2.5], dtype=np.float32)
    pos = np.array([[1.0, 3.140625, -0.5]], dtype=np.float32)  # exact in bfloat16
    write_torch_archive(path, {"model": {"head.bias": bias, "pos_embed": ("bf16", pos)},
                               "optimizer": {"state": {}}, "epoch": 299}, *torch_names)
    monkeypatch.undo()  # the reader needs no torch module, not even a stand-in
    assert "torch" not in sys.modules or sys.modules["torch"] is not torch_names[0]
    sd = load_checkpoint(path)
    assert sorted(sd) == ["head.bias", "pos_embed"]  # the training checkpoint is unwrapped
    np.testing.assert_array_equal(sd["head.bias"], bias)
    assert sd["pos_embed"].dtype == np.float32  # bfloat16 comes back as float32
    np.testing.assert_array_equal(sd["pos_embed"], pos)


def test_load_checkpoint_errors(tmp_path):
    import zipfile
    path = tmp_path / "ckpt.pth"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a zip archive written by torch.save"):
        load_checkpoint(path)
    with zipfile.ZipFile(path, "w") as z:  # a pickle that names a global it must not build
        z.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\nq\x00.")
    with pytest.raises(ValueError, match="global os.system"):
        load_checkpoint(path)
    with zipfile.ZipFile(path, "w") as z:  # a state dict with a number among the tensors
        z.writestr("archive/data.pkl", pickle.dumps({"model": {"step": 3}}, protocol=2))
    with pytest.raises(ValueError, match="'step'"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="suffix"):
        load_checkpoint(tmp_path / "weights.npz")
    with pytest.raises(ValueError, match="not a file"):
        load_checkpoint(tmp_path / "absent.safetensors")


# =========================================================================== ssm-ref predict
def _png(tmp_path, shape=(40, 52)):
    from PIL import Image
    rng = np.random.default_rng(7)
    img = (rng.uniform(0, 255, shape + (3,))).astype(np.uint8)
    path = tmp_path / "picture.png"
    Image.fromarray(img).save(path)
    return path, img


def _predict(argv, capsys):
    from ssm_ref import cli
    code = cli.main(["predict"] + argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_prints_the_top_classes_of_the_tiny_checkpoint(tmp_path, capsys):
    pytest.importorskip("PIL", reason="ssm-ref predict reads images with Pillow")
    from ssm_ref.vision import imagenet_eval_transform, top_k
    image, pixels = _png(tmp_path)
    d = DATA / "vim_tiny"
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class-{i}\n" for i in range(10)))
    code, out, err = _predict(["--model", "vim_tiny", "--checkpoint", str(d / "model.safetensors"),
                               "--config", str(d / "config.json"), "--names", str(names),
                               str(image)], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 5
    model, _, _ = _vim("vim_tiny")
    x = imagenet_eval_transform(pixels, img_size=32)  # resize to 36 (32 / 0.875), crop 32
    assert x.shape == (1, 32, 32, 3)
    want = top_k(model(x)[0], 5)
    for rank, (line, (idx, prob)) in enumerate(zip(lines, want), 1):
        assert line.split() == [str(rank), str(idx), f"{prob:.4f}", f"class-{idx}"]
    code, out, _ = _predict(["--model", "vim_tiny", "--checkpoint", str(d / "model.safetensors"),
                             "--config", str(d / "config.json"), "--top", "3", str(image)],
                            capsys)
    assert code == 0 and [ln.split() for ln in out.splitlines()] == [
        [str(r), str(i), f"{p:.4f}"] for r, (i, p) in enumerate(want[:3], 1)]


def test_eval_transform_resizes_the_shorter_side_and_crops_the_centre():
    pytest.importorskip("PIL")
    from ssm_ref.vision import IMAGENET_MEAN, IMAGENET_STD, imagenet_eval_transform
    img = np.zeros((64, 128, 3), dtype=np.uint8)  # resized to 64 x 128 (short side already 64)
    img[:, 32:96] = 255  # the centre 56 columns of the 64 x 128 image are white
    x = imagenet_eval_transform(img, img_size=56)
    np.testing.assert_allclose(x[0, :, 4:52], np.broadcast_to(
        (1 - IMAGENET_MEAN) / IMAGENET_STD, (56, 48, 3)), rtol=1e-6)
    with pytest.raises(ValueError, match="image"):
        imagenet_eval_transform(np.zeros((4, 4)), img_size=2)


@pytest.mark.parametrize("case", ["no-image", "not-an-image", "no-checkpoint", "wrong-checkpoint",
                                  "bad-names", "bad-config", "bad-model", "bad-top"])
def test_predict_bad_input_is_one_line_and_status_2(case, tmp_path, capsys):
    pytest.importorskip("PIL")
    image, _ = _png(tmp_path)
    d = DATA / "vim_tiny"
    ckpt, cfg = str(d / "model.safetensors"), str(d / "config.json")
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    bad_cfg = tmp_path / "cfg.json"
    bad_cfg.write_text('{"kwargs": {"img_size": 32, "if_rope": true}}')
    argv, word = {
        "no-image": (["--checkpoint", ckpt, "--config", cfg, str(tmp_path / "absent.png")],
                     "no such file"),
        "not-an-image": (["--checkpoint", ckpt, "--config", cfg, str(text)], "not an image"),
        "no-checkpoint": (["--checkpoint", str(tmp_path / "absent.pth"), "--config", cfg,
                           str(image)], "not a file"),
        "wrong-checkpoint": (["--checkpoint", str(DATA / "vim_stride" / "model.safetensors"),
                              "--config", cfg, str(image)], "does not fit"),
        "bad-names": (["--checkpoint", ckpt, "--config", cfg, "--names", str(names), str(image)],
                      "2 names"),
        "bad-config": (["--checkpoint", ckpt, "--config", str(bad_cfg), str(image)], "if_rope"),
        "bad-model": (["--model", "vit", "--checkpoint", ckpt, str(image)], "invalid choice"),
        "bad-top": (["--checkpoint", ckpt, "--config", cfg, "--top", "0", str(image)], "--top"),
    }[case]
    if "--model" not in argv:
        argv = ["--model", "vim_tiny"] + argv
    code, out, err = _predict(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and word in err, err


def test_predict_help_explains_every_option(capsys):
    from ssm_ref import cli
    assert cli.main(["predict", "--help"]) == 0
    out = capsys.readouterr().out
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["predict"]
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in out, flag
        assert action.help
