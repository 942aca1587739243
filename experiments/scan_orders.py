"""Experiment 1: does the scan order matter?  Vim per scan order on a long-range task and on digits.

Glossary
--------
order    a scan order of ``ssm_ref.vision`` (a permutation of the h·w patch tokens)
pair     the synthetic long-range task of ``ssm_ref.data``: are the two 3x3 marks,
         one at the left edge and one at the right edge on the same rows, the
         same shape?  (chance 50%)
digits   scikit-learn's 8x8 handwritten digits (chance 10%)
mark distance   how many sequence positions separate the two marks' tokens in
         the scan order (the smaller of the two directions; averaged over the
         possible rows of the marks) -- what an SSM has to bridge

Each configuration is a tiny Vim (one bidirectional Vim block: a forward and a
backward selective scan with their own parameters, middle class token) whose
patch tokens are flattened in one scan order; "cross-scan" is a tiny VMamba
(one VSS block, four directions: row, column and both reversed, summed).
Every configuration is trained with 3 seeds (seed = model init, data
generation / split and batch order) and we report the test accuracy
mean ± std.

Settings (full mode, 2.5 to 5 minutes on 2 shared CPU cores, depending on their load):

* pair: 12x12 images, 3x3 patches -> a 4x4 token grid (the marks fill patch
  columns 0 and 3), 2 shapes (plus, x), noise 0.1, 1000 training and 500 test
  images, 10 epochs.  ``n_shapes=2`` and the 12x12 size (the data set's
  defaults are 4 shapes, 16x16) keep the task learnable in seconds.
* digits: 8x8 images, 2x2 patches -> 4x4 tokens, the 1438/359 split, 6 epochs.
* both: embed_dim 24, d_state 8, depth 1, batch 32, AdamW lr 3e-3,
  weight decay 0.05, one warmup epoch then cosine.

Usage::

    python experiments/scan_orders.py            # full, writes results/scan_orders.{json,png}
    python experiments/scan_orders.py --quick    # seconds
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

NAME = "scan_orders"

#: (label, model, model keyword arguments).  ZigMa's zigzag with index 1 is the
#: column snake from the top-left corner (index 0 is the row snake = "snake").
CONFIGS = [
    ("raster", "vim", {"scan": "raster"}),
    ("column", "vim", {"scan": "column"}),
    ("snake", "vim", {"scan": "snake"}),
    ("zigzag (index 1)", "vim", {"scan": "zigzag", "scan_options": {"index": 1}}),
    ("hilbert", "vim", {"scan": "hilbert"}),
    ("local (window 2)", "vim", {"scan": "local", "scan_options": {"window": 2}}),
    ("atrous (step 2)", "vim", {"scan": "atrous", "scan_options": {"step": 2}}),
    ("cross-scan (VMamba)", "vmamba", {"directions": "vmamba_cross"}),
]

FULL = {
    "pair": {"data": {"n_train": 1000, "n_test": 500, "size": 12, "n_shapes": 2, "noise": 0.1},
             "patch_size": 3, "epochs": 10},
    "digits": {"data": {}, "patch_size": 2, "epochs": 6},
    "model": {"embed_dim": 24, "d_state": 8, "depth": 1},
    "train": {"batch_size": 32, "lr": 3e-3, "weight_decay": 0.05},
}
QUICK = {
    "pair": {"data": {"n_train": 64, "n_test": 64, "size": 12, "n_shapes": 2, "noise": 0.1},
             "patch_size": 3, "epochs": 1},
    "digits": {"data": {}, "patch_size": 2, "epochs": 1, "n_train": 256},
    "model": {"embed_dim": 8, "d_state": 4, "depth": 1},
    "train": {"batch_size": 32, "lr": 3e-3, "weight_decay": 0.05},
}


def order_perms(model_name, kwargs, h, w):
    """The index arrays a configuration scans (both directions for Vim)."""
    from ssm_ref.vision import scan_order, scan_scheme
    if model_name == "vim":
        perm = scan_order(kwargs["scan"], h, w, **kwargs.get("scan_options", {}))
        return [perm, perm[::-1].copy()]
    return scan_scheme(kwargs["directions"], h, w)


def mark_distance(perms, size, patch):
    """Mean sequence distance between the two marks of the pair task, for these scans.

    The marks sit at pixel columns 0-2 and size-3..size-1 on rows r..r+2, r uniform
    in 0..size-3.  Their tokens are patch column 0 and the last patch column, on the
    patch rows that rows r..r+2 touch.  For one r, the distance is the smallest
    ``|t(left token) - t(right token)|`` over those tokens and over the scans; the
    result is its mean over r.
    """
    from ssm_ref.vision import inverse
    g = size // patch  # token grid side
    dists = []
    for r in range(size - 2):
        rows = sorted({r // patch, (r + 2) // patch})
        best = np.inf
        for perm in perms:
            pos = inverse(perm)  # sequence position of each cell
            for i in rows:
                for j in rows:
                    best = min(best, abs(int(pos[i * g]) - int(pos[j * g + g - 1])))
        dists.append(best)
    return float(np.mean(dists))


def run(args):
    from ssm_ref.data import load_dataset
    from ssm_ref.vision.models import build_model

    cfg = QUICK if args.quick else FULL
    seeds = C.seeds_from(args)
    scan_fn, scan_bwd, backend = C.resolve_backend(args.backend)
    rows, runs = [], []
    results = {}
    for task in ("pair", "digits"):
        tcfg = cfg[task]
        results[task] = {}
        for label, model_name, kw in CONFIGS:
            accs, times, n_params = [], [], None
            for seed in seeds:
                ds = load_dataset(task, seed=seed, **tcfg["data"])
                if "n_train" in tcfg and task == "digits":  # quick mode: a subset
                    n = tcfg["n_train"]
                    ds.x_train, ds.y_train = ds.x_train[:n], ds.y_train[:n]
                C.as_dtype(ds)
                H = ds.image_shape[0]
                model = build_model(model_name, seed=seed, scan_fn=scan_fn,
                                    scan_backward_fn=scan_bwd, img_size=H,
                                    patch_size=tcfg["patch_size"], n_classes=ds.n_classes,
                                    **cfg["model"], **kw)
                n_params = model.n_params()
                m = C.train_quiet(model, ds, epochs=tcfg["epochs"], seed=seed, **cfg["train"])
                accs.append(m["test_accuracy"])
                times.append(m["wall_time_s"])
                runs.append({"task": task, "order": label, "seed": seed,
                             "test_accuracy": m["test_accuracy"],
                             "test_accuracy_per_epoch": m["test_accuracy_per_epoch"],
                             "train_accuracy_final": m["train_accuracy"][-1],
                             "wall_time_s": m["wall_time_s"]})
                print(f"  {task:6s} {label:22s} seed {seed}: test acc {m['test_accuracy']:.3f} "
                      f"({m['wall_time_s']:.1f} s)", flush=True)
            h = H // tcfg["patch_size"]
            perms = order_perms(model_name, kw, h, h)
            entry = {"model": model_name, "model_options": kw, "n_params": n_params,
                     "test_accuracy": C.mean_std(accs), "train_time_s": C.mean_std(times)}
            if task == "pair":
                entry["mark_distance_tokens"] = mark_distance(perms, H, tcfg["patch_size"])
            else:
                from ssm_ref.vision import locality_stats
                stats = [locality_stats(p, h, h) for p in perms]
                entry["mean_neighbour_seq_distance"] = float(
                    np.mean([s["mean_neighbour_seq_distance"] for s in stats]))
            results[task][label] = entry
    for label, _, _ in CONFIGS:
        p, d = results["pair"][label], results["digits"][label]
        rows.append([label, p["n_params"], f"{p['mark_distance_tokens']:.1f}",
                     C.fmt(p["test_accuracy"]), C.fmt(d["test_accuracy"])])
    text = C.table(rows, ["scan order", "params (pair)", "mark distance", "pair acc",
                          "digits acc"])
    settings = {"seeds": seeds, "configs": [{"label": lab, "model": m, "options": kw}
                                            for lab, m, kw in CONFIGS],
                **{k: v for k, v in cfg.items()}}
    return results, runs, text, settings, backend


def plot(results):
    fig, axes = C.new_figure(1, 2, figsize=(11, 3.8))
    labels = [lab for lab, _, _ in CONFIGS]
    x = np.arange(len(labels))
    for ax, task, chance in ((axes[0], "pair", 0.5), (axes[1], "digits", 0.1)):
        mean = [results[task][lab]["test_accuracy"]["mean"] for lab in labels]
        std = [results[task][lab]["test_accuracy"]["std"] for lab in labels]
        ax.bar(x, mean, yerr=std, capsize=3, color="tab:blue" if task == "pair" else "tab:green")
        for lab_i, lab in enumerate(labels):  # the individual seeds
            vals = results[task][lab]["test_accuracy"]["values"]
            ax.plot([lab_i] * len(vals), vals, "k.", ms=4)
        ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
        ax.set_xticks(x, labels, rotation=40, ha="right", fontsize=8)
        ax.set(ylim=(0, 1.02), ylabel="test accuracy",
               title=f"{task}: mean ± std over seeds (dots: seeds)")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = C.base_parser(NAME, "Scan-order comparison of tiny Vim models (and VMamba's "
                                 "cross-scan) on the long-range pair task and on digits.")
    args = parser.parse_args(argv)
    return C.run_experiment(NAME, args, run, plot)


if __name__ == "__main__":
    main()
