"""Tests of ssm_ref.train: the loss falls, runs are bitwise deterministic, a resumed run equals
the uninterrupted one bit for bit, metrics.json / curves.png / checkpoint.npz hold what they say.

The loop is exercised with ``TinyMLP``, a one-hidden-layer network defined here that implements
the model interface of ``ssm_ref.train`` (its gradient is checked against finite differences
first, so the training tests rest on a verified model).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from conftest import assert_close, numerical_gradient

from ssm_ref.data import load_dataset
from ssm_ref.optim import SGD, AdamW, softmax_cross_entropy
from ssm_ref.train import evaluate, load_checkpoint, save_checkpoint, train


@dataclass
class TinyConfig:
    image_shape: tuple = (8, 8, 1)
    hidden: int = 16
    n_classes: int = 10


class TinyMLP:
    """logits = (tanh(x W1 + b1) * gain) W2 + b2 on flattened (B, H, W, C) images.

    ``gain`` plays the part of A_log / D: it is excluded from weight decay.
    """

    def __init__(self, config=None, seed=0, dtype=np.float64):
        self.config = config or TinyConfig()
        rng = np.random.default_rng(seed)
        P = int(np.prod(self.config.image_shape))
        Hd, K = self.config.hidden, self.config.n_classes
        self.params = {
            "fc1.weight": (rng.standard_normal((P, Hd)) / np.sqrt(P)).astype(dtype),
            "fc1.bias": np.zeros(Hd, dtype),
            "gain": np.ones(Hd, dtype),
            "head.weight": (rng.standard_normal((Hd, K)) / np.sqrt(Hd)).astype(dtype),
            "head.bias": np.zeros(K, dtype),
        }

    def forward(self, x, return_cache=False):
        p = self.params
        xf = x.reshape(len(x), -1)  # (B, P)
        a = np.tanh(xf @ p["fc1.weight"] + p["fc1.bias"])  # (B, Hd)
        h = a * p["gain"]  # (B, Hd)
        logits = h @ p["head.weight"] + p["head.bias"]  # (B, K)
        return (logits, (xf, a, h)) if return_cache else logits

    def backward(self, dlogits, cache):
        p = self.params
        xf, a, h = cache
        dh = dlogits @ p["head.weight"].T  # (B, Hd)
        da = dh * p["gain"]
        dz = da * (1 - a * a)
        return {"head.weight": h.T @ dlogits, "head.bias": dlogits.sum(0),
                "gain": (dh * a).sum(0), "fc1.weight": xf.T @ dz, "fc1.bias": dz.sum(0)}

    def state_dict(self):
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, sd):
        for k, v in sd.items():
            self.params[k][...] = v

    def n_params(self):
        return int(sum(v.size for v in self.params.values()))

    def no_weight_decay(self):
        return {"gain"}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _small(ds, n_train=300, n_test=100):
    """A slice of a data set, to keep the loops short."""
    return (ds.x_train[:n_train], ds.y_train[:n_train], ds.x_test[:n_test], ds.y_test[:n_test])


def test_tiny_model_gradient_matches_finite_differences(rng):
    model = TinyMLP(TinyConfig(image_shape=(2, 2, 1), hidden=3, n_classes=4), seed=1)
    x = rng.standard_normal((5, 2, 2, 1))
    y = rng.integers(0, 4, 5)
    logits, cache = model.forward(x, return_cache=True)
    grads = model.backward(softmax_cross_entropy(logits, y)[1], cache)
    for name, p in model.params.items():
        # p is perturbed in place: the model reads it from model.params
        fd = numerical_gradient(lambda _: softmax_cross_entropy(model.forward(x), y)[0], p)
        assert_close(grads[name], fd, kind="fd", err_msg=name)


def test_loss_falls_and_accuracy_rises(digits):
    model = TinyMLP(seed=0)
    m = train(model, digits, epochs=4, batch_size=32, lr=1e-2, seed=0, progress=False)
    losses = m["train_loss"]
    assert len(losses) == 4
    assert losses[-1] < 0.5 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert m["test_accuracy"] >= 0.85  # chance is 10%
    assert m["test_accuracy"] == m["test_accuracy_per_epoch"][-1]
    loss, acc = evaluate(model, digits.x_test, digits.y_test)
    assert acc == m["test_accuracy"] and loss == pytest.approx(m["test_loss"])


def _strip_times(m):
    return {k: v for k, v in m.items()
            if k not in ("epoch_time_s", "train_time_s", "wall_time_s", "images_per_s")}


def test_training_is_deterministic_with_the_seed(digits):
    runs = []
    for seed in (7, 7, 8):
        model = TinyMLP(seed=0)
        m = train(model, _small(digits), epochs=2, batch_size=16, seed=seed, progress=False)
        runs.append((model.state_dict(), _strip_times(m)))
    for k in runs[0][0]:
        np.testing.assert_array_equal(runs[0][0][k], runs[1][0][k], err_msg=k)
    assert runs[0][1] == runs[1][1]
    assert not np.array_equal(runs[0][0]["fc1.weight"], runs[2][0]["fc1.weight"])


def test_resumed_run_equals_uninterrupted_run_bitwise(digits, tmp_path):
    data = _small(digits)
    kw = dict(epochs=3, batch_size=32, lr=5e-3, weight_decay=0.1, seed=3, progress=False,
              plot=False, warmup_epochs=1, augment="shift")
    full = TinyMLP(seed=2)
    m_full = train(full, data, out_dir=tmp_path / "full", **kw)
    # the same run, interrupted after epoch 1 ...
    first = TinyMLP(seed=2)
    train(first, data, out_dir=tmp_path / "cut", on_epoch_end=lambda e, m: e == 1, **kw)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.npz", TinyMLP(seed=9))["epoch"] == 1
    # ... and resumed in a fresh process-like state: a new model with other initial weights
    resumed = TinyMLP(seed=99)
    m_res = train(resumed, data, out_dir=tmp_path / "res",
                  resume=tmp_path / "cut" / "checkpoint.npz", **kw)
    for k, v in full.params.items():
        np.testing.assert_array_equal(resumed.params[k], v, err_msg=k)
    assert _strip_times(m_res) == _strip_times(m_full)
    assert len(m_res["epoch_time_s"]) == len(m_res["train_time_s"]) == 3


def test_metrics_json_curves_and_checkpoint(digits, tmp_path):
    model = TinyMLP(seed=0)
    m = train(model, _small(digits), epochs=2, batch_size=50, seed=0, out_dir=tmp_path,
              progress=False, settings={"model": "tiny-mlp", "backend": "ref"})
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    for key in ("test_accuracy", "train_loss", "train_accuracy", "test_accuracy_per_epoch",
                "wall_time_s", "n_params", "settings"):
        assert key in on_disk, key
    assert on_disk["n_params"] == model.n_params() == 64 * 16 + 16 + 16 + 16 * 10 + 10
    assert len(on_disk["train_loss"]) == len(on_disk["train_accuracy"]) == 2
    assert on_disk["settings"]["model"] == "tiny-mlp" and on_disk["settings"]["lr"] == 3e-3
    assert on_disk["model"]["config"] == {"image_shape": [8, 8, 1], "hidden": 16, "n_classes": 10}
    assert on_disk["wall_time_s"] > 0 and on_disk["steps"] == 2 * 6
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(tmp_path / "checkpoint.npz", allow_pickle=False) as f:
        assert int(f["epoch"]) == 2
        np.testing.assert_array_equal(f["model/fc1.weight"], model.params["fc1.weight"])
        assert "optim/exp_avg.fc1.weight" in f.files


def test_checkpoint_round_trip_restores_model_and_optimizer(tmp_path, rng):
    model = TinyMLP(seed=0)
    opt = AdamW(model.params, lr=0.01, no_weight_decay=model.no_weight_decay())
    opt.step({k: rng.standard_normal(v.shape) for k, v in model.params.items()})
    path = save_checkpoint(tmp_path / "c.npz", model, opt, epoch=5, history={"train_loss": [1.0]})
    other = TinyMLP(seed=1)
    other_opt = AdamW(other.params, lr=0.5)
    info = load_checkpoint(path, other, other_opt)
    assert info["epoch"] == 5 and info["history"] == {"train_loss": [1.0]}
    for k in model.params:
        np.testing.assert_array_equal(other.params[k], model.params[k])
    assert other_opt.t == 1 and other_opt.lr == 0.01
    for k, v in opt.state_dict().items():
        np.testing.assert_array_equal(other_opt.state_dict()[k], v, err_msg=k)
    with pytest.raises(ValueError, match="AdamW optimizer state but a SGD"):
        load_checkpoint(path, other, SGD(other.params))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz", other)


def test_weight_decay_skips_no_weight_decay_names(digits):
    class Frozen(TinyMLP):  # two parameters that never get a gradient
        def __init__(self):
            super().__init__(seed=0)
            self.params["decayed"] = np.ones(3)
            self.params["kept"] = np.ones(3)

        def backward(self, dlogits, cache):
            g = super().backward(dlogits, cache)
            return g | {"decayed": np.zeros(3), "kept": np.zeros(3)}

        def no_weight_decay(self):
            return {"gain", "kept"}

    model = Frozen()
    train(model, _small(digits, 64, 10), epochs=1, batch_size=32, lr=0.1, weight_decay=0.5,
          schedule="constant", warmup_epochs=0, progress=False)
    np.testing.assert_array_equal(model.params["kept"], np.ones(3))
    assert_close(model.params["decayed"], np.full(3, (1 - 0.1 * 0.5) ** 2), kind="exact")


def test_progress_bar_and_epoch_lines(digits, capsys):
    pytest.importorskip("tqdm")
    train(TinyMLP(), _small(digits, 64, 10), epochs=1, batch_size=32, progress=True)
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.out + captured.err


def test_dataset_given_by_name_and_float32():
    model = TinyMLP(TinyConfig(image_shape=(16, 16, 1), hidden=4, n_classes=2), dtype=np.float32)
    m = train(model, "pair", epochs=1, batch_size=250, progress=False)
    assert m["dataset"]["name"] == "pair" and m["dataset"]["chance"] == 0.5
    assert model.params["fc1.weight"].dtype == np.float32


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(epochs=0), ValueError, "epochs"),
    (dict(lr=0.0), ValueError, "lr"),
    (dict(batch_size=-2), ValueError, "batch_size"),
    (dict(optimizer="adam"), ValueError, "optimizer"),
    (dict(schedule="step"), ValueError, "schedule"),
    (dict(augment="flip"), ValueError, "augment"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay"),
    (dict(dataset=42), TypeError, "dataset"),
    (dict(model=object()), TypeError, "attribute 'params'"),
    (dict(keep_freed_memory="yes"), TypeError, "keep_freed_memory"),
])
def test_bad_arguments(digits, kwargs, exc, match):
    args = dict(model=TinyMLP(), dataset=_small(digits, 8, 4), progress=False) | kwargs
    with pytest.raises(exc, match=match):
        train(**args)


@pytest.mark.parametrize("keep", [True, False])
def test_train_keeps_freed_memory_unless_told_not_to(digits, monkeypatch, keep):
    """train() switches glibc's malloc to keeping freed memory (as ssm-ref train did on its
    own before) and records the answer; keep_freed_memory=False leaves malloc alone."""
    import ssm_ref._malloc as malloc
    calls = []
    monkeypatch.setattr(malloc, "keep_freed_memory",
                        lambda: calls.append(1) or "kept (a stand-in)")
    m = train(TinyMLP(), _small(digits, 8, 4), epochs=1, progress=False, keep_freed_memory=keep)
    assert calls == ([1] if keep else [])
    assert m["settings"].get("malloc") == ("kept (a stand-in)" if keep else None)


# --------------------------------------------------------------------------- the real tiny models
from ssm_ref.vision import models  # noqa: E402  (in-repo: an import error must fail, not skip)


@pytest.mark.parametrize("name, epochs, factor", [("vim", 4, 0.8), ("vmamba", 3, 1.0)])
def test_micro_vision_model_loss_falls_and_resumes_bitwise(name, epochs, factor, digits, tmp_path):
    def build():
        return models.build_model(name, embed_dim=16, depth=1, d_state=4, seed=0)

    data = _small(digits, 192, 64)
    kw = dict(epochs=epochs, batch_size=32, lr=3e-2, warmup_epochs=0, seed=0, progress=False,
              plot=False)
    full = build()
    m = train(full, data, out_dir=tmp_path / "full", **kw)
    losses = m["train_loss"]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < factor * losses[0], losses
    assert m["n_params"] == full.n_params()
    train(build(), data, out_dir=tmp_path / "cut", on_epoch_end=lambda e, _: e == epochs - 1, **kw)
    resumed = build()
    train(resumed, data, resume=tmp_path / "cut" / "checkpoint.npz", **kw)
    for k, v in full.params.items():
        np.testing.assert_array_equal(resumed.params[k], v, err_msg=k)
    with np.load(tmp_path / "full" / "checkpoint.npz") as f:  # the model's own state-dict names
        assert {k[len("model/"):] for k in f.files if k.startswith("model/")} == set(full.params)


def test_labels_beyond_the_models_classes_are_refused_before_training(rng):
    """Checked once on the host: on a GPU an out-of-range label would silently wrap."""
    model = TinyMLP(TinyConfig(image_shape=(2, 2, 1), hidden=3, n_classes=4), seed=1)
    x = rng.standard_normal((6, 2, 2, 1))
    y = np.array([0, 1, 2, 3, 4, 0])  # 4 is not a class of a 4-class model
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(ValueError, match=r"y_train has labels in \[0, 4\] but the model has 4"):
        train(model, (x, y, x[:2], y[:2]), epochs=1, progress=False, plot=False)
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())  # untouched


# --------------------------------------------------------------------------- checkpoint checks
# Every bad checkpoint is a ValueError naming the entry (or the file) and what was expected,
# before anything is restored: never a broadcast moment, a late unrelated error or a BadZipFile.

def _good_checkpoint(tmp_path, rng, optimizer="adamw"):
    model = TinyMLP(seed=0)
    opt = (AdamW(model.params, lr=0.01) if optimizer == "adamw"
           else SGD(model.params, lr=0.01, momentum=0.9))
    opt.step({k: rng.standard_normal(v.shape) for k, v in model.params.items()})
    path = save_checkpoint(tmp_path / "good.npz", model, opt, epoch=1,
                           settings={"batch_size": 32, "lr": 0.01})
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _write(tmp_path, arrays, **changes):
    arrays = {**arrays, **changes}
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


BAD_ENTRIES = [  # (entry, value, words the message must hold)
    ("optim/exp_avg.fc1.weight", np.float64(0.5), ["exp_avg.fc1.weight", "shape ()", "(64, 16)"]),
    ("optim/exp_avg.fc1.weight", np.zeros((1, 4)), ["exp_avg.fc1.weight", "(1, 4)", "(64, 16)"]),
    ("optim/exp_avg.fc1.bias", np.zeros(4), ["exp_avg.fc1.bias", "(4,)", "(16,)"]),
    ("optim/exp_avg_sq.gain", np.full(16, np.nan), ["exp_avg_sq.gain", "non-finite"]),
    ("optim/exp_avg.head.bias", np.full(10, np.inf), ["exp_avg.head.bias", "non-finite"]),
    ("optim/t", np.array(-1), ["'t'", "-1", ">= 0"]),
    ("optim/t", np.array(1.5), ["'t'", "1.5", "integer"]),
    ("optim/t", np.array(np.nan), ["'t'", "nan"]),
    ("optim/betas", np.array([1.0, 1.0]), ["'betas'", "[1.0, 1.0]", "[0, 1)"]),
    ("optim/betas", np.array([0.9, -0.1]), ["'betas'", "[0, 1)"]),
    ("optim/betas", np.array([0.9]), ["'betas'", "two numbers"]),
    ("optim/eps", np.array(0.0), ["'eps'", "> 0"]),
    ("optim/lr", np.array(np.nan), ["'lr'", "finite"]),
    ("optim/weight_decay", np.array(-1.0), ["'weight_decay'", ">= 0"]),
    ("model/gain", np.ones((1, 16)), ["'model/gain'", "(1, 16)", "(16,)"]),
    ("model/head.bias", np.ones(()), ["'model/head.bias'", "shape ()", "(10,)"]),
    ("model/fc1.bias", np.full(16, np.nan), ["'model/fc1.bias'", "non-finite"]),
    ("epoch", np.array(-1), ["'epoch'", "-1", "integer >= 0"]),
    ("epoch", np.array(1.5), ["'epoch'", "1.5", "integer >= 0"]),
    ("version", np.array(2), ["'version'", "2", "expected 1"]),
    ("version", np.array("1"), ["'version'", "expected 1"]),
    ("settings_json", np.array("[1, 2]"), ["'settings_json'", "JSON object"]),
    ("history_json", np.array("{oops"), ["'history_json'", "not valid JSON"]),
]


@pytest.mark.parametrize("entry, value, words", BAD_ENTRIES,
                         ids=[f"{e}={np.asarray(v).tolist()!r}"[:40] for e, v, _ in BAD_ENTRIES])
def test_bad_checkpoint_entry_is_refused_by_name(tmp_path, rng, entry, value, words):
    path = _write(tmp_path, _good_checkpoint(tmp_path, rng), **{entry: value})
    model = TinyMLP(seed=1)
    before = model.state_dict()
    opt = AdamW(model.params, lr=0.5)
    with pytest.raises(ValueError) as err:
        load_checkpoint(path, model, opt)
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert str(path) in str(err.value)
    assert opt.t == 0 and opt.lr == 0.5 and opt.state == {"exp_avg": {}, "exp_avg_sq": {}}
    for k, v in before.items():  # refused before the weights change
        np.testing.assert_array_equal(model.params[k], v, err_msg=k)
    # train(resume=...) refuses it the same way, before anything is restored
    with pytest.raises(ValueError) as err:
        train(model, (np.zeros((4, 8, 8, 1)), np.arange(4), np.zeros((2, 8, 8, 1)), np.arange(2)),
              epochs=2, batch_size=32, lr=0.01, progress=False, plot=False, resume=path)
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    for k, v in before.items():
        np.testing.assert_array_equal(model.params[k], v, err_msg=k)


def test_bad_sgd_momentum_is_refused_by_name(tmp_path, rng):
    arrays = _good_checkpoint(tmp_path, rng, optimizer="sgd")
    for entry, value, word in (("optim/momentum", np.array(1.0), "'momentum'"),
                               ("optim/momentum_buffer.gain", np.zeros(()), "momentum_buffer.gain")):
        path = _write(tmp_path, arrays, **{entry: value})
        model = TinyMLP(seed=1)
        with pytest.raises(ValueError, match=word):
            load_checkpoint(path, model, SGD(model.params, momentum=0.5))


def test_good_checkpoint_still_loads_after_the_checks(tmp_path, rng):
    path = _write(tmp_path, _good_checkpoint(tmp_path, rng))
    model = TinyMLP(seed=1)
    opt = AdamW(model.params, lr=0.5)
    assert load_checkpoint(path, model, opt)["epoch"] == 1
    assert opt.t == 1 and opt.state["exp_avg"]["fc1.weight"].shape == (64, 16)


@pytest.mark.parametrize("keep", [0, 40, 0.5, 0.9])
def test_truncated_checkpoint_is_a_value_error_naming_the_file(tmp_path, rng, keep):
    _good_checkpoint(tmp_path, rng)
    raw = (tmp_path / "good.npz").read_bytes()
    path = tmp_path / "cut.npz"
    path.write_bytes(raw[:int(keep * len(raw)) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError, match="cut.npz") as err:
        load_checkpoint(path, TinyMLP())
    assert "truncated or corrupt" in str(err.value) or "not an ssm_ref" in str(err.value)


def test_corrupt_member_is_a_value_error_naming_the_file(tmp_path, rng):
    _good_checkpoint(tmp_path, rng)
    raw = bytearray((tmp_path / "good.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside a member: the CRC check fails
    path = tmp_path / "flip.npz"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="flip.npz"):
        load_checkpoint(path, TinyMLP())


def test_member_larger_than_its_header_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array(header, np.zeros(4))  # says shape (4,), float64: 32 bytes of data
    blob = header.getvalue() + bytes(8 << 20)  # ... followed by 8 MiB that compress to ~8 KiB
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("version.npy", _npy(np.array(1)))
        zf.writestr("epoch.npy", _npy(np.array(1)))
        zf.writestr("model/fc1.bias.npy", blob)
    assert path.stat().st_size < 100_000
    reads = []
    real = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array",
                        lambda fh, **kw: reads.append(fh.name) or real(fh, **kw))
    with pytest.raises(ValueError) as err:
        load_checkpoint(path, TinyMLP())
    msg = str(err.value)
    need = len(header.getvalue())
    assert f"entry 'model/fc1.bias' declares {len(blob)} bytes" in msg, msg
    assert f"expected {need} for shape (4,) and dtype float64" in msg and "bomb.npz" in msg, msg
    assert "model/fc1.bias.npy" not in reads  # the big member was never decompressed whole


def _npy(a):
    import io
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("change", [dict(batch_size=16), dict(lr=1e-3), dict(seed=4),
                                    dict(augment="none"), dict(optimizer="sgd"),
                                    dict(clip_norm=None), dict(warmup_epochs=0)])
def test_resume_with_other_settings_names_the_setting(digits, tmp_path, change):
    data = _small(digits, 64, 32)
    kw = dict(epochs=2, batch_size=32, lr=5e-3, seed=3, progress=False, plot=False,
              augment="shift")
    train(TinyMLP(seed=2), data, out_dir=tmp_path / "a", on_epoch_end=lambda e, m: True, **kw)
    (key, value), = change.items()
    with pytest.raises(ValueError) as err:
        train(TinyMLP(seed=2), data, resume=tmp_path / "a" / "checkpoint.npz", **{**kw, **change})
    msg = str(err.value)
    assert f"{key} = {kw.get(key, {'optimizer': 'adamw', 'clip_norm': 1.0, 'warmup_epochs': 1}.get(key))!r}" in msg, msg
    assert f"{key} = {value!r}" in msg and "checkpoint.npz" in msg, msg
    # more epochs is a continuation, not a different run
    m = train(TinyMLP(seed=2), data, resume=tmp_path / "a" / "checkpoint.npz", **{**kw, "epochs": 3})
    assert m["epochs"] == 3


def test_resume_in_another_precision_names_dtype(digits, tmp_path):
    data = _small(digits, 64, 32)
    kw = dict(epochs=2, batch_size=32, lr=5e-3, seed=3, progress=False, plot=False)

    def build():
        return models.build_model("vim", embed_dim=8, depth=1, d_state=2, seed=0)

    train(build(), data, out_dir=tmp_path / "a", dtype="float32",
          on_epoch_end=lambda e, m: True, **kw)
    with pytest.raises(ValueError) as err:
        train(build(), data, resume=tmp_path / "a" / "checkpoint.npz", dtype="float64", **kw)
    msg = str(err.value)
    assert "dtype = 'float32'" in msg and "dtype = 'float64'" in msg, msg
    m = train(build(), data, resume=tmp_path / "a" / "checkpoint.npz", dtype="float32",
              **{**kw, "epochs": 3})
    assert m["epochs"] == 3


def test_stale_temporary_is_removed_at_load_and_save(tmp_path, rng):
    _good_checkpoint(tmp_path, rng)
    path = tmp_path / "good.npz"
    tmp = tmp_path / "good.npz.tmp"
    tmp.write_bytes(b"half a checkpoint from a killed process")
    load_checkpoint(path, TinyMLP())
    assert not tmp.exists()
    tmp.write_bytes(b"again")
    model = TinyMLP()
    save_checkpoint(path, model, None, epoch=2)
    assert not tmp.exists() and load_checkpoint(path, model)["epoch"] == 2


def test_interrupted_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    model = TinyMLP()
    path = save_checkpoint(tmp_path / "c.npz", model, None, epoch=1)
    old = path.read_bytes()

    def half_then_ctrl_c(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", half_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, None, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]
    assert load_checkpoint(path, model)["epoch"] == 1


def test_every_file_of_a_run_is_written_atomically_and_synced(digits, tmp_path, monkeypatch):
    import os

    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd")
                      else fd)
        real_fsync(fd)

    def replace(src, dst):
        replaced.append((os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    train(TinyMLP(), _small(digits, 64, 32), epochs=1, batch_size=32, progress=False,
          out_dir=tmp_path)
    for name in ("checkpoint.npz", "metrics.json", "curves.png"):
        assert (name + ".tmp", name) in replaced, (name, replaced)
        if os.path.exists("/proc/self/fd"):  # the temporary and the directory were synced
            assert str(tmp_path / (name + ".tmp")) in synced, (name, synced)
    if os.path.exists("/proc/self/fd"):
        assert str(tmp_path) in synced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "curves.png",
                                                          "metrics.json"]


# --------------------------------------------------------------------------- the float32 option
def _dtypes(tree):
    return {np.dtype(v.dtype) for v in tree.values() if v is not None}


@pytest.mark.parametrize("backend", ["ref", "numba"])
def test_float32_training_stays_float32_and_tracks_float64(digits, backend):
    """train(dtype="float32"): parameters, activations, gradients and optimiser state in float32
    end to end, and its loss history within 1e-3 relative of the float64 run's."""
    from ssm_ref.cli import resolve_backend
    from ssm_ref.optim import AdamW
    fwd, bwd = resolve_backend(backend)

    def build():
        return models.build_model("vim", embed_dim=16, depth=1, d_state=4, seed=0,
                                  scan_fn=fwd, scan_backward_fn=bwd)

    data = _small(digits, 128, 64)
    kw = dict(epochs=2, batch_size=32, lr=3e-2, warmup_epochs=0, seed=0, progress=False)
    m64 = train(build(), data, **kw)
    seen = {}
    model = build()
    real_step = AdamW.step

    def spy(opt, grads, lr=None):  # what the training loop hands the optimiser, and its state
        seen.setdefault("grads", _dtypes(grads))
        real_step(opt, grads, lr)
        seen["state"] = _dtypes(opt.state["exp_avg"]) | _dtypes(opt.state["exp_avg_sq"])
    real_forward = type(model).forward

    def forward(self, x, return_cache=False):
        out = real_forward(self, x, return_cache)
        seen.setdefault("logits", out[0].dtype if return_cache else out.dtype)
        if return_cache:
            seen.setdefault("cache", {np.dtype(a.dtype) for a in _arrays(out[1])})
        return out

    import unittest.mock as mock
    with mock.patch.object(AdamW, "step", spy), mock.patch.object(type(model), "forward", forward):
        m32 = train(model, data, dtype="float32", **kw)
    f32 = {np.dtype(np.float32)}
    assert _dtypes(model.params) == f32 and model.compute_dtype == np.float32
    assert seen["grads"] == f32 and seen["state"] == f32
    assert seen["logits"] == np.float32 and seen["cache"] <= f32 | {np.dtype(np.int64)}
    assert m32["settings"]["dtype"] == "float32"
    np.testing.assert_allclose(m32["train_loss"], m64["train_loss"], rtol=1e-3)
    assert m32["train_loss"] != m64["train_loss"]  # it did run in another precision


def _arrays(obj):
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _arrays(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _arrays(v)


def test_float32_option_needs_a_module_and_a_known_dtype(digits):
    with pytest.raises(TypeError, match="set_dtype"):
        train(TinyMLP(), _small(digits, 8, 4), dtype="float32", progress=False)
    with pytest.raises(ValueError, match="dtype"):
        train(models.build_model("vim", embed_dim=8, depth=1, d_state=2), _small(digits, 8, 4),
              dtype="float16", progress=False)


@pytest.mark.parametrize("bad", ["float16", None, "f8x", np.int32])
def test_set_dtype_and_state_dtype_refuse_other_dtypes(bad):
    from ssm_ref.optim import AdamW
    model = models.build_model("vim", embed_dim=8, depth=1, d_state=2)
    with pytest.raises(ValueError, match="dtype"):
        model.set_dtype(bad)
    assert model.compute_dtype == np.float64  # unchanged
    with pytest.raises(ValueError, match="state_dtype"):
        AdamW(model.params, state_dtype=bad)


def test_set_dtype_round_trip_keeps_the_function():
    """float64 -> float32 -> float64: the same outputs to float32 precision, dtypes followed."""
    model = models.build_model("vmamba", embed_dim=8, depth=1, d_state=2, seed=1)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 1))
    out64 = model(x)
    out32 = model.set_dtype("float32")(x.astype(np.float32))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, out64, rtol=2e-4, atol=2e-5)
    assert model.set_dtype(np.float64)(x).dtype == np.float64
    assert {v.dtype for v in model.params.values()} == {np.dtype(np.float64)}
