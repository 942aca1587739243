"""Training a tiny Vim with the CUDA scan, on Numba's CUDA simulator (micro size).

The simulator runs every GPU thread as a Python thread, so a training step of
even the smallest model costs seconds: one block, embed_dim 2 (two channels),
4 training images in one batch, 3 epochs.  The oracle is the same training run
with the reference scan: the CUDA kernels' forward and backward, used inside
whole training steps (patch embedding, bidirectional Vim blocks, AdamW), must
give the same losses and the same weights.  The CLI's ``--backend cuda`` path
is run end to end as well.  Under the simulator the arrays are NumPy (there is
no GPU memory); the device-array path itself is checked on the fake device
(the ``xp`` tests of ``test_vision_models.py``) and on a real GPU (``test_cupy_gpu.py``).
"""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from conftest import assert_close, on_cuda_simulator

import ssm_ref as sr
from ssm_ref import cli
from ssm_ref.train import train
from ssm_ref.vision.models import build_model

pytestmark = [
    pytest.mark.cudasim,
    pytest.mark.skipif(not on_cuda_simulator(),
                       reason="needs NUMBA_ENABLE_CUDASIM=1 set before numba.cuda is imported "
                              "(make test runs the cudasim tests in a process of its own)"),
]

MICRO = dict(img_size=(4, 4), in_chans=1, embed_dim=2, expand=1, depth=1, d_state=2,
             n_classes=2, seed=2)


def _data():
    """Six 4x4 images, the class is which half is bright (4 to train on, 2 to test)."""
    rng = np.random.default_rng(5)
    y = np.array([0, 1, 0, 1, 1, 0])
    x = 0.2 * rng.standard_normal((6, 4, 4, 1))
    x[y == 0, :2] += 1.0
    x[y == 1, 2:] += 1.0
    return x[:4], y[:4], x[4:], y[4:]


def test_micro_training_with_the_cuda_scan_follows_the_reference():
    from fast import cuda_scan as cs
    launch = dict(threads=2, chunk_size=4)  # L = 5 tokens: two chunks, the carry is used
    runs = {}
    for name, fwd, bwd in [
            ("ref", sr.selective_scan, sr.selective_scan_backward),
            ("cuda", functools.partial(cs.selective_scan, **launch),
             functools.partial(cs.selective_scan_backward, **launch))]:
        model = build_model("vim", **MICRO, scan_fn=fwd, scan_backward_fn=bwd)
        metrics = train(model, _data(), epochs=3, batch_size=4, lr=0.01, weight_decay=0.0,
                        seed=0, progress=False, plot=False)
        runs[name] = (metrics, model)
    (ref, ref_model), (cuda, cuda_model) = runs["ref"], runs["cuda"]
    np.testing.assert_allclose(cuda["train_loss"], ref["train_loss"], rtol=1e-9)
    assert cuda["train_loss"][-1] < cuda["train_loss"][0]  # the loss falls
    for k, v in ref_model.params.items():
        assert_close(cuda_model.params[k], v, kind="backend", err_msg=k)


def test_cli_trains_with_backend_cuda_on_the_simulator(tmp_path, capsys, monkeypatch):
    import ssm_ref.data as data
    micro = data.ImageDataset("micro", *_data(), 2, 0.5)
    monkeypatch.setattr(data, "load_dataset", lambda name, seed=0, **kw: micro)
    out = tmp_path / "run"
    rc = cli.main(["train", "--model", "vim", "--dataset", "digits", "--backend", "cuda",
                   "--epochs", "1", "--batch-size", "4", "--out", str(out), "--no-progress",
                   "--no-plot", "--model-opt", "embed_dim=2", "--model-opt", "expand=1",
                   "--model-opt", "depth=1", "--model-opt", "d_state=2"])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["backend"] == "cuda"
    assert metrics["settings"]["device"].startswith("CUDA simulator")
    assert np.isfinite(metrics["train_loss"]).all() and 0 <= metrics["test_accuracy"] <= 1
