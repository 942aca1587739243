"""Experiment 6: adaptive and sparse scans against fixed orders, accuracy against cost (§6.2).

Glossary
--------
fixed order     one permutation of the patch tokens for every image (raster, column,
                snake: ``ssm_ref.vision.scan_orders``)
adaptive scan   each image's patches sorted by a score (``ssm_ref.vision.adaptive``):
                ``saliency`` = the patch's pixel contrast (standard deviation),
                ``learned`` = a linear score of the patch embedding, trained through
                a sigmoid gate on the scanned tokens
sparse scan     only the k highest-scored patches enter the SSM ("top-k"), listed in
                raster order; the other L - k are skipped
tokens scanned  sequence length through each selective scan, k + 1 (the class
                token); Vim scans it twice (forward and backward)
cost            tokens scanned per image (exact) and the forward time per image on
                the test set (measured on a shared machine: an upper bound)
mark distance   (pair task) sequence distance between the two marks' tokens in each
                image's order, averaged over the test images (for a sparse scan,
                over the images whose two marks were both kept); ``marks kept`` the
                share of test images with both marks among the scanned tokens

Each configuration is a tiny Vim (:class:`ssm_ref.vision.TinyAdaptiveVim`, one
bidirectional block, position embedding per grid cell) trained with 3 seeds on

* the long-range ``pair`` task of ``scan_orders.py`` (12x12 images, 3x3 patches, a 4x4
  token grid, two marks on the same rows at the left and right edge; same shape or
  not, chance 50%), 10 epochs, where a column-major order fails; and
* scikit-learn's 8x8 digits (2x2 patches, 4x4 tokens), 6 epochs;

embed_dim 24, d_state 8, batch 32, AdamW lr 3e-3, weight decay 0.05, one warmup epoch
then cosine.  Full mode took 24 minutes of wall time on 2 CPU cores shared with other
jobs (load about 8; the JSON records both); alone it takes a few minutes.

The survey (Rahman et al. 2024, arXiv:2410.03105) names adaptive scans "that adjust
dynamically to the image content", learned scan patterns (§3.2) and "sparse scanning
techniques that only process the most informative patches" (§6.2) as future work.

Usage::

    python experiments/adaptive_scans.py            # writes results/adaptive_scans.{json,png}
    python experiments/adaptive_scans.py --quick
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

NAME = "adaptive_scans"

#: (label, TinyAdaptiveVim options, kind): kind "fixed", "adaptive" or "sparse"
CONFIGS = [
    ("raster", {"scan": "raster"}, "fixed"),
    ("column", {"scan": "column"}, "fixed"),
    ("snake", {"scan": "snake"}, "fixed"),
    ("saliency", {"order": "score", "score": "contrast"}, "adaptive"),
    ("learned", {"order": "score", "score": "learned"}, "adaptive"),
    ("top-8 saliency", {"score": "contrast", "keep": 8}, "sparse"),
    ("top-4 saliency", {"score": "contrast", "keep": 4}, "sparse"),
    ("top-8 learned", {"score": "learned", "keep": 8}, "sparse"),
]
MARKERS = {"fixed": "s", "adaptive": "o", "sparse": "^"}

FULL = {
    "pair": {"data": {"n_train": 1000, "n_test": 500, "size": 12, "n_shapes": 2, "noise": 0.1},
             "patch_size": 3, "epochs": 10},
    "digits": {"data": {}, "patch_size": 2, "epochs": 6},
    "model": {"embed_dim": 24, "d_state": 8, "depth": 1},
    "train": {"batch_size": 32, "lr": 3e-3, "weight_decay": 0.05},
    "timing_repeats": 3,
}
QUICK = {
    "pair": {"data": {"n_train": 64, "n_test": 64, "size": 12, "n_shapes": 2, "noise": 0.1},
             "patch_size": 3, "epochs": 1},
    "digits": {"data": {}, "patch_size": 2, "epochs": 1, "n_train": 128},
    "model": {"embed_dim": 8, "d_state": 4, "depth": 1},
    "train": {"batch_size": 32, "lr": 3e-3, "weight_decay": 0.05},
    "timing_repeats": 1,
}


def mark_tokens(x, patch):
    """(left, right) flat token index of each pair image's two marks: the brightest
    patch of the first and of the last patch column (the marks sit there)."""
    B, H, W, _ = x.shape
    g = W // patch
    sums = x[..., 0].reshape(B, H // patch, patch, g, patch).sum(axis=(2, 4))  # (B, g, g)
    left = sums[:, :, 0].argmax(axis=1) * g  # (B,)
    right = sums[:, :, g - 1].argmax(axis=1) * g + g - 1  # (B,)
    return left, right


def mark_stats(idx, left, right):
    """Mean sequence distance between the marks (over images with both scanned), share kept."""
    dists, kept = [], 0
    for b in range(len(idx)):
        pos = {int(c): t for t, c in enumerate(idx[b])}
        if left[b] in pos and right[b] in pos:
            kept += 1
            dists.append(abs(pos[left[b]] - pos[right[b]]))
    return (float(np.mean(dists)) if dists else float("nan")), kept / len(idx)


def forward_time(model, x, repeats):
    """Best-of-``repeats`` seconds per image of a forward pass over ``x`` (batches of 256)."""
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(x), 256):
            model.forward(x[i:i + 256])
        best = min(best, time.perf_counter() - t0)
    return best / len(x)


def run(args):
    from ssm_ref.data import load_dataset
    from ssm_ref.vision import TinyAdaptiveVim

    cfg = QUICK if args.quick else FULL
    seeds = C.seeds_from(args)
    scan_fn, scan_bwd, backend = C.resolve_backend(args.backend)
    results, runs = {}, []
    for task in ("pair", "digits"):
        tcfg = cfg[task]
        results[task] = {}
        for label, opts, kind in CONFIGS:
            acc, ftime, dist, kept, n_params = [], [], [], [], None
            for seed in seeds:
                ds = load_dataset(task, seed=seed, **tcfg["data"])
                if "n_train" in tcfg:
                    n = tcfg["n_train"]
                    ds.x_train, ds.y_train = ds.x_train[:n], ds.y_train[:n]
                C.as_dtype(ds)
                H = ds.image_shape[0]
                model = TinyAdaptiveVim(seed=seed, scan_fn=scan_fn, scan_backward_fn=scan_bwd,
                                        img_size=H, patch_size=tcfg["patch_size"],
                                        n_classes=ds.n_classes, **cfg["model"], **opts)
                n_params = model.n_params()
                m = C.train_quiet(model, ds, epochs=tcfg["epochs"], seed=seed, **cfg["train"])
                acc.append(m["test_accuracy"])
                ftime.append(forward_time(model, ds.x_test, cfg["timing_repeats"]))
                run_rec = {"task": task, "config": label, "seed": seed,
                           "test_accuracy": m["test_accuracy"],
                           "forward_s_per_image": ftime[-1], "train_time_s": m["wall_time_s"]}
                if task == "pair":
                    idx = model.scan_indices(ds.x_test)
                    d, k = mark_stats(idx, *mark_tokens(ds.x_test, tcfg["patch_size"]))
                    dist.append(d)
                    kept.append(k)
                    run_rec.update(mark_distance=d, marks_kept=k)
                runs.append(run_rec)
                print(f"  {task:6s} {label:15s} seed {seed}: acc {m['test_accuracy']:.3f}, "
                      f"{ftime[-1] * 1e6:.0f} us/image ({m['wall_time_s']:.0f} s)", flush=True)
            n_tok = model.config.n_scanned + 1
            entry = {"kind": kind, "options": opts, "n_params": n_params,
                     "tokens_scanned": n_tok, "tokens_total": model.perm.size + 1,
                     "scan_token_steps": 2 * n_tok,  # forward and backward scan of Vim
                     "test_accuracy": C.mean_std(acc),
                     "forward_us_per_image": C.mean_std([t * 1e6 for t in ftime])}
            if task == "pair":
                entry["mark_distance"] = C.mean_std(dist)
                entry["marks_kept"] = C.mean_std(kept)
            results[task][label] = entry
    rows = []
    for label, _, kind in CONFIGS:
        p, d = results["pair"][label], results["digits"][label]
        rows.append([label, kind, f"{p['tokens_scanned']}/{p['tokens_total']}",
                     C.fmt(p["test_accuracy"]), f"{p['mark_distance']['mean']:.1f}",
                     f"{p['marks_kept']['mean']:.2f}", C.fmt(d["test_accuracy"]),
                     f"{d['forward_us_per_image']['mean']:.0f}"])
    text = C.table(rows, ["scan", "kind", "tokens scanned", "pair acc", "mark distance",
                          "marks kept", "digits acc", "digits us/image"])
    settings = {"seeds": seeds, "configs": [{"label": lab, "options": o, "kind": k}
                                            for lab, o, k in CONFIGS], **cfg}
    return results, runs, text, settings, backend


def plot(results):
    fig, axes = C.new_figure(1, 2, figsize=(11, 3.8))
    for ax, task, chance in ((axes[0], "pair", 0.5), (axes[1], "digits", 0.1)):
        for k, (label, _, kind) in enumerate(CONFIGS):
            r = results[task][label]
            ax.errorbar(r["tokens_scanned"] + 0.12 * (k % 3 - 1), r["test_accuracy"]["mean"],
                        yerr=r["test_accuracy"]["std"], marker=MARKERS[kind], capsize=3,
                        ls="none", label=label, color=f"C{k}")
        ax.axhline(chance, color="grey", ls=":", lw=1)
        ax.set(xlabel="tokens scanned per direction (k + class token)", ylabel="test accuracy",
               ylim=(0, 1.02), title=f"{task}: accuracy against cost")
    axes[0].legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = C.base_parser(NAME, "Adaptive (saliency, learned) and sparse (top-k) scans against "
                                 "fixed orders: accuracy against cost (survey §6.2).")
    args = parser.parse_args(argv)
    return C.run_experiment(NAME, args, run, plot)


if __name__ == "__main__":
    main()
