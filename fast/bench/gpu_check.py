"""One command that proves the GPU path on a machine with a CUDA GPU (``make gpu-check``).

In order, each step timed, within about 8 minutes on one GPU:

1. the real-GPU tests (``pytest -m gpu``: the CUDA scan against the reference, whole
   models on CuPy, the CLI on the GPU);
2. the CUDA selective scan at the Mamba-block size against a naive CuPy loop and the
   memory roofline (copy bandwidth measured in the same run) -> ``gpu_scan.json``;
3. one training step of the tiny Vim and VMamba on the GPU against its null-scan floor
   -> ``gpu_train_step.json``;
4. a short training run (``ssm-ref train --backend cuda``) on CIFAR-10-shaped synthetic
   images written in the real CIFAR-10 binary format, whose classes are learnable
   -> ``gpu_train_run.json``;

then one summary table.  Without a GPU it says why in one line and exits 0.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path("benchmarks") / "results"


def write_synthetic_cifar(root, n_train=2000, n_test=500, seed=0):
    """CIFAR-10-shaped images in the binary format under ``root/cifar-10-batches-bin``.

    Each class has a smooth random template; an image is its class's template
    plus noise, so a model that learns reaches well above the 10% chance level.
    """
    from ssm_ref.data_files import write_cifar10_batch
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, size=(10, 4, 4, 3))
    templates = np.kron(coarse, np.ones((1, 8, 8, 1)))  # (10, 32, 32, 3), blocky

    def draw(n):
        y = rng.integers(0, 10, size=n)
        x = 0.6 * templates[y] + 0.4 * rng.uniform(0, 1, size=(n, 32, 32, 3))
        return np.clip(np.rint(255 * x), 0, 255).astype(np.uint8), y

    folder = Path(root) / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    per = n_train // 5
    for i in range(1, 6):
        write_cifar10_batch(folder / f"data_batch_{i}.bin", *draw(per))
    write_cifar10_batch(folder / "test_batch.bin", *draw(n_test))
    return Path(root)


def _timed(label, fn):
    t = time.perf_counter()
    print(f"\n== {label}", flush=True)
    out = fn()
    return out, time.perf_counter() - t


def run_tests():
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    tail = (res.stdout.strip().splitlines() or [""])[-1]
    print(res.stdout[-3000:] + res.stderr[-2000:])
    return {"command": " ".join(cmd[2:]), "exit_code": res.returncode, "summary": tail}


def run_training(out_dir, epochs):
    from ssm_ref import cli
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_cifar(tmp)
        run = Path(tmp) / "run"
        code = cli.main(["train", "--model", "vim", "--dataset", "cifar10", "--data-root",
                         str(root), "--patch-size", "4", "--backend", "cuda", "--epochs",
                         str(epochs), "--no-progress", "--no-plot", "--out", str(run)])
        metrics = json.loads((run / "metrics.json").read_text()) if code == 0 else {}
    return {"exit_code": code, "epochs": epochs,
            "test_accuracy": metrics.get("test_accuracy"),
            "wall_time_s": metrics.get("wall_time_s"), "images_per_s": metrics.get("images_per_s"),
            "device": metrics.get("settings", {}).get("device")}


def main(argv=None, prog=None):
    """Run the GPU check; returns 0 (also when there is no GPU), 1 when a step failed."""
    parser = argparse.ArgumentParser(prog=prog or "python -m fast.bench.gpu_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="directory for gpu_*.json (default: benchmarks/results)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the training run")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    args = parser.parse_args(argv)

    from fast.bench import scan, train
    reason = train.gpu_skip_reason()
    if reason is not None:
        print(f"gpu-check: no usable CUDA GPU here ({reason}); nothing to check.")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    summary = []

    tests, t = _timed("real-GPU tests", run_tests)
    summary.append(("tests -m gpu", tests["summary"], t, tests["exit_code"] == 0))

    gscan, t = _timed("CUDA scan", lambda: scan.run_gpu(args.repeats))
    (args.out / "gpu_scan.json").write_text(json.dumps(gscan, indent=1))
    summary.append(("scan forward", f"{gscan['cuda_forward_G_per_s']:.1f} G/s, "
                    f"{gscan['forward_fraction_of_limit']:.0%} of the memory roofline, "
                    f"{gscan['speedup_vs_naive_cupy']:.0f}x the naive CuPy loop", t, True))
    summary.append(("scan backward", f"{gscan['cuda_backward_G_per_s']:.1f} G/s, "
                    f"{gscan['backward_fraction_of_limit']:.0%} of the roofline", 0.0, True))

    step, t = _timed("training step", lambda: train.run_gpu(
        ["vim", "vmamba"], [8, 32], 64, args.repeats, 2, cpu_rows=[]))
    (args.out / "gpu_train_step.json").write_text(json.dumps(step, indent=1))
    for r in step.get("rows", []):
        if r["backend"] == "cuda":
            summary.append((f"step {r['model']} {r['img']}x{r['img']}",
                            f"{r['ms']:.1f} ms, {r['step_over_floor']:.2f}x the floor", 0.0, True))

    run, t = _timed("training run", lambda: run_training(args.out, args.epochs))
    (args.out / "gpu_train_run.json").write_text(json.dumps(run, indent=1))
    summary.append(("train vim cifar10-shaped", f"test accuracy {run['test_accuracy']}, "
                    f"{run['wall_time_s']} s", t, run["exit_code"] == 0))

    print(f"\n{'check':28s} {'result':70s} {'time':>7s}  ok")
    for name, result, secs, ok in summary:
        print(f"{name:28s} {result:70s} {secs:6.1f}s  {'yes' if ok else 'NO'}")
    return 0 if all(ok for *_, ok in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
