"""Whole models and the training loop on device arrays, without a GPU (the strict fake CuPy).

What ``--backend cuda`` promises is that a training step runs on the GPU with
no host round-trip.  A real GPU is rarely at hand, so these tests run every
tiny model, and whole training runs, on ``tests/fake_device.py``: a CuPy
stand-in that refuses implicit host conversion, host/device mixing and any
name CuPy lacks, and counts every host read.  The oracle is the same model on
NumPy: logits, every gradient and the training history must agree.

The scan is the reference (``ssm_ref.selective_scan``, itself written against
the array module); the CUDA kernel's own device path is covered on the CUDA
simulator (``test_cuda_sim_training.py``) and on a real GPU (``test_cupy_gpu.py``).
"""
from __future__ import annotations

import copy

import fake_device
import numpy as np
import pytest
from fake_device import DeviceArray, peek

from conftest import assert_close

from ssm_ref.train import evaluate, train
from ssm_ref.vision.models import MODELS, build_model

#: Tiny but complete: two blocks, a 4x4 token grid (8x8 images, patch 2).
TINY = dict(img_size=(8, 8), in_chans=1, embed_dim=8, depth=2, n_classes=3, seed=1)


def _tiny(name, **kw):
    return build_model(name, **{**TINY, **kw})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_and_backward_on_device_equal_numpy_without_host_reads(name, rng, fake_xp):
    host = _tiny(name)
    dev = copy.deepcopy(host).to(fake_xp)
    assert all(isinstance(v, DeviceArray) for v in dev.params.values())
    x = rng.standard_normal((3, 8, 8, 1))
    dlogits = rng.standard_normal((3, 3))

    logits, cache = host.forward(x, return_cache=True)
    dx, grads = host.backward(dlogits, cache, return_input_grad=True)

    xd, dld = fake_xp.asarray(x), fake_xp.asarray(dlogits)
    dev.backward(dld, dev.forward(xd, return_cache=True)[1])  # warm: index arrays copied once
    fake_device.reset_counts()
    logits_d, cache_d = dev.forward(xd, return_cache=True)
    dx_d, grads_d = dev.backward(dld, cache_d, return_input_grad=True)
    assert fake_device.COUNTS == fake_device.NO_HOST_TRAFFIC

    assert isinstance(logits_d, DeviceArray) and isinstance(dx_d, DeviceArray)
    assert_close(logits_d, logits, kind="exact")
    assert_close(dx_d, dx, kind="exact")
    assert set(grads_d) == set(grads)
    for k in grads:
        assert isinstance(grads_d[k], DeviceArray), k
        assert grads_d[k].dtype == grads[k].dtype
        assert_close(grads_d[k], grads[k], kind="exact", err_msg=k)


def test_features_path_on_device(rng, fake_xp):
    host = _tiny("vmamba")
    dev = copy.deepcopy(host).to(fake_xp)
    x = rng.standard_normal((2, 8, 8, 1))
    feat, cache = host.forward_features(x, return_cache=True)
    dfeat = rng.standard_normal(feat.shape)
    feat_d, cache_d = dev.forward_features(fake_xp.asarray(x), return_cache=True)
    dx_d, _ = dev.backward_features(fake_xp.asarray(dfeat), cache_d)
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
def test_training_on_device_follows_numpy_and_reads_the_host_only_per_epoch(name, rng, fake_xp):
    """Same history as on NumPy; host reads per epoch do not grow with the steps per epoch."""
    counts = {}
    for n_train in (16, 32):  # 2 and 4 steps per epoch at batch size 8
        data = _dataset(rng, n_train)
        host, dev = _tiny(name), _tiny(name).to(fake_xp)
        kw = dict(epochs=2, batch_size=8, lr=1e-2, seed=3, progress=False, plot=False)
        want = train(host, data, **kw)
        fake_device.reset_counts()
        got = train(dev, data, **kw)
        counts[n_train] = dict(fake_device.COUNTS)
        for key in ("train_loss", "test_loss_per_epoch", "test_accuracy_per_epoch"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-12, err_msg=key)
        assert all(isinstance(v, DeviceArray) for v in dev.params.values())
        for k, v in host.params.items():
            assert_close(dev.params[k], v, kind="backend", err_msg=k)
    assert want["train_loss"][-1] < want["train_loss"][0]  # it learned something
    # Host reads: the epoch's loss and accuracy and the evaluation's, whatever the step count.
    assert counts[16]["sync"] == counts[32]["sync"] > 0
    assert counts[16]["to_host"] == counts[32]["to_host"]
    # Transfers to the device: each batch's images and labels, nothing else per step.
    per_step = (counts[32]["to_device"] - counts[16]["to_device"]) / (2 * (4 - 2))
    assert per_step == 2


def test_evaluate_on_device_matches_numpy(rng, fake_xp):
    x, y = _dataset(rng, 12)[2:]
    host = _tiny("plainmamba")
    dev = copy.deepcopy(host).to(fake_xp)
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
