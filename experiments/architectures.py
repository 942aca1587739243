"""Experiment 2: Vim vs VMamba vs attention vs CNN at about the same parameter count.

Glossary
--------
L        number of tokens, (H / p)·(W / p) for an H x W image and p x p patches
E        embedding width (``embed_dim``), chosen per model to match the parameter budget
step     one training step: forward, softmax cross-entropy, backward (no optimiser update)
peak memory   the largest amount of memory NumPy held during one forward call
         (``tracemalloc``, which sees every NumPy allocation), minus what was held before

Two measurements:

1. **Accuracy and cost on digits.**  Each model gets the ``embed_dim`` (depth 2)
   that brings its parameter count closest to ``--params`` (15 000), is trained
   with 3 seeds for 20 epochs (the same schedule for all: batch 64, AdamW lr
   3e-3, weight decay 0.05, one warmup epoch, cosine), and we report test
   accuracy (mean ± std), the fastest of 7 training steps at batch 64, and the
   parameter count.
2. **Scaling with image size.**  Untrained models of the same widths run a
   forward pass on B=2 random images of side 8 ... 80 pixels (2x2 patches, so
   L = 16 ... 1600 tokens); we record the fastest of 5 forward times (the scan on
   one Numba thread, so that other work on a shared machine disturbs it less) and
   the peak memory, and fit the exponent k of ``cost ~ L^k`` on the four largest
   sizes.  A scan does work and holds memory linear in L (the measured time
   exponent is higher where the activations outgrow the CPU cache); softmax
   attention builds an L x L score matrix per head: quadratic (Section 5 of
   the survey).

Full mode takes about 4 minutes on 2 shared CPU cores; the selective scan
runs on the ``numba`` backend when available (recorded in the JSON).

Usage::

    python experiments/architectures.py            # writes results/architectures.{json,png}
    python experiments/architectures.py --quick
"""
from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

NAME = "architectures"
MODELS = ("vim", "vmamba", "attention", "cnn")
LABELS = {"vim": "Vim", "vmamba": "VMamba", "attention": "attention (ViT)", "cnn": "CNN"}

FULL = {"params": 15000, "depth": 2, "d_state": 8, "epochs": 20, "batch_size": 64, "lr": 3e-3,
        "weight_decay": 0.05, "step_batch": 64, "step_repeats": 7,
        "sizes": [8, 16, 32, 48, 64, 80], "size_batch": 2, "size_repeats": 5, "fit_last": 4}
QUICK = {"params": 3000, "depth": 1, "d_state": 4, "epochs": 4, "batch_size": 16, "lr": 1e-2,
         "weight_decay": 0.05, "step_batch": 16, "step_repeats": 2, "n_train": 384,
         "sizes": [8, 16, 24], "size_batch": 1, "size_repeats": 1, "fit_last": 2}


def model_kwargs(name, E, cfg):
    kw = {"embed_dim": E, "depth": cfg["depth"]}
    if name in ("vim", "vmamba"):
        kw["d_state"] = cfg["d_state"]
    return kw


def step_time(model, x, y, repeats):
    """Fastest seconds of forward + loss + backward on one batch over ``repeats`` (after a warm-up).

    The minimum, not the mean: on a shared machine other work only ever adds time.
    """
    from ssm_ref.optim import softmax_cross_entropy
    times = []
    for k in range(repeats + 1):
        t0 = time.perf_counter()
        logits, cache = model.forward(x, return_cache=True)
        _, dlogits = softmax_cross_entropy(logits, y)
        model.backward(dlogits, cache)
        if k:  # the first call compiles / warms caches
            times.append(time.perf_counter() - t0)
    return float(np.min(times))


def forward_cost(model, x, repeats):
    """(fastest forward seconds over ``repeats``, peak NumPy memory in bytes of one forward)."""
    model.forward(x)  # warm-up (Numba compilation for a new shape)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.forward(x)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    model.forward(x)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return float(np.min(times)), int(peak)


def _set_numba_threads(n):
    """Set Numba's thread count; return the previous one."""
    import numba
    old = numba.get_num_threads()
    numba.set_num_threads(n)
    return old


def fit_exponent(L, values):
    """Least-squares slope of log(values) against log(L)."""
    return float(np.polyfit(np.log(L), np.log(values), 1)[0])


def run(args):
    from ssm_ref.data import load_dataset
    from ssm_ref.vision.models import build_model

    cfg = dict(QUICK if args.quick else FULL)
    if args.params is not None:
        cfg["params"] = args.params
    seeds = C.seeds_from(args)
    scan_fn, scan_bwd, backend = C.resolve_backend(args.backend)
    widths = {n: C.matched_width(n, cfg["params"], cfg["depth"], cfg["d_state"]) for n in MODELS}

    # ---- 1. accuracy and step time on digits
    accuracy, runs = {}, []
    for name in MODELS:
        E, n_params = widths[name]
        accs, wall, steps = [], [], []
        for seed in seeds:
            ds = C.as_dtype(load_dataset("digits", seed=seed))
            if "n_train" in cfg:
                ds.x_train, ds.y_train = ds.x_train[:cfg["n_train"]], ds.y_train[:cfg["n_train"]]
            model = build_model(name, seed=seed, scan_fn=scan_fn, scan_backward_fn=scan_bwd,
                                **model_kwargs(name, E, cfg))
            m = C.train_quiet(model, ds, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                              lr=cfg["lr"], weight_decay=cfg["weight_decay"], seed=seed)
            b = cfg["step_batch"]
            st = step_time(model, ds.x_train[:b], ds.y_train[:b], cfg["step_repeats"])
            accs.append(m["test_accuracy"])
            wall.append(m["wall_time_s"])
            steps.append(st)
            runs.append({"model": name, "seed": seed, "test_accuracy": m["test_accuracy"],
                         "test_accuracy_per_epoch": m["test_accuracy_per_epoch"],
                         "train_time_s": m["wall_time_s"], "step_time_s": st})
            print(f"  {name:9s} seed {seed}: test acc {m['test_accuracy']:.3f}, "
                  f"step {st * 1e3:.1f} ms, train {m['wall_time_s']:.1f} s", flush=True)
        accuracy[name] = {"embed_dim": E, "n_params": n_params,
                          "test_accuracy": C.mean_std(accs), "train_time_s": C.mean_std(wall),
                          "step_time_s": C.mean_std(steps)}

    # ---- 2. forward time and memory against image size (untrained models)
    # One Numba thread here: a parallel kernel waits for its slowest thread, so on a
    # shared machine two threads make the timings jump with the other work.
    numba_threads = _set_numba_threads(1) if backend == "numba" else None
    rng = np.random.default_rng(0)
    scaling = {}
    for name in MODELS:
        E, _ = widths[name]
        rows = []
        for size in cfg["sizes"]:
            model = build_model(name, seed=0, scan_fn=scan_fn, scan_backward_fn=scan_bwd,
                                img_size=size, **model_kwargs(name, E, cfg))
            x = rng.random((cfg["size_batch"], size, size, 1))
            t, mem = forward_cost(model, x, cfg["size_repeats"])
            rows.append({"size": size, "tokens": (size // 2) ** 2, "forward_s": t,
                         "peak_bytes": mem})
        L = [r["tokens"] for r in rows][-cfg["fit_last"]:]
        scaling[name] = {
            "points": rows,
            "time_exponent": fit_exponent(L, [r["forward_s"] for r in rows][-cfg["fit_last"]:]),
            "memory_exponent": fit_exponent(L, [r["peak_bytes"] for r in rows][-cfg["fit_last"]:]),
        }
        print(f"  {name:9s} scaling: time ~ L^{scaling[name]['time_exponent']:.2f}, "
              f"memory ~ L^{scaling[name]['memory_exponent']:.2f}", flush=True)
    if numba_threads is not None:
        _set_numba_threads(numba_threads)

    rows = []
    for name in MODELS:
        a, s = accuracy[name], scaling[name]
        rows.append([LABELS[name], a["embed_dim"], a["n_params"], C.fmt(a["test_accuracy"]),
                     f"{a['step_time_s']['mean'] * 1e3:.1f}",
                     f"{s['time_exponent']:.2f}", f"{s['memory_exponent']:.2f}"])
    text = C.table(rows, ["model", "E", "params", "digits test acc",
                          f"step ms (B={cfg['step_batch']})", "time exp.", "memory exp."])
    settings = dict(cfg, seeds=seeds, models=list(MODELS), patch_size=2,
                    note="times are the minimum over the repeats; step time = forward + loss + "
                         "backward (Numba on its default threads); the size sweep runs the "
                         "scan on one Numba thread; exponents fitted on the last fit_last sizes")
    return {"accuracy": accuracy, "scaling": scaling}, runs, text, settings, backend


def plot(results):
    fig, axes = C.new_figure(1, 3, figsize=(13, 3.8))
    acc, scal = results["accuracy"], results["scaling"]
    names = list(MODELS)
    x = np.arange(len(names))
    ax = axes[0]
    ax.bar(x, [acc[n]["test_accuracy"]["mean"] for n in names],
           yerr=[acc[n]["test_accuracy"]["std"] for n in names], capsize=3, color="tab:green")
    ax.set_xticks(x, [f"{LABELS[n]}\n{acc[n]['n_params']} p." for n in names], fontsize=8)
    ax.set(ylim=(0, 1.02), ylabel="digits test accuracy", title="accuracy (mean ± std)")
    for ax, key, ylab in ((axes[1], "forward_s", "forward time (s)"),
                          (axes[2], "peak_bytes", "peak memory (bytes)")):
        for n in names:
            pts = scal[n]["points"]
            exp = scal[n]["time_exponent" if key == "forward_s" else "memory_exponent"]
            ax.loglog([p["tokens"] for p in pts], [p[key] for p in pts], "o-",
                      label=f"{LABELS[n]} (~L^{exp:.2f})")
        ax.set(xlabel="tokens L", ylabel=ylab, title=ylab.split(" (")[0] + " vs L")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = C.base_parser(NAME, "Vim, VMamba, a ViT and a CNN at about equal parameter count: "
                                 "digits accuracy, step time, and scaling with image size.")
    parser.add_argument("--params", type=int, default=None,
                        help="parameter budget per model (default 15000, 3000 with --quick)")
    args = parser.parse_args(argv)
    return C.run_experiment(NAME, args, run, plot)


if __name__ == "__main__":
    main()
