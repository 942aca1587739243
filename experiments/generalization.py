"""Experiment 5: the survey's remedies for hidden-state accumulation, tried (survey §6.1).

Glossary
--------
baseline        a tiny Vim trained as in ``robustness.py`` (no regularisation)
state dropout   ``ssm_ref.regularize``: during training every entry of the hidden
                state h_t is dropped with probability p at every scan step, inside the
                recurrence (``h_t = m_t * (Abar_t h_{t-1} + Bbar_t u_t)``, inverted
                scaling); the plain scan at evaluation
weight norm     ``ssm_ref.regularize``: the projections that make the state's
                parameters, ``x_proj`` (Δ's low-rank input, B_t, C_t) and ``dt_proj``
                (Δ), written ``W = g v / ||v||`` row by row and trained through v, g
shift           a test-time change of the input domain, the ones of ``robustness.py``:
                brightness ``clip(x + b, 0, 1)`` and contrast ``0.5 x``
state drift     for the first block's forward scan, the relative change of its last
                state h_L between a clean test image and its shifted version,
                ``||h_L(shift) - h_L(clean)|| / ||h_L(clean)||`` (Frobenius over D x N,
                mean over the test images): how far the shift moves the state that
                the survey blames
gap             clean train accuracy (evaluated without dropout) minus test accuracy
state removed   the clean test accuracy of the trained model evaluated with h_t = 0
                (``no_state_scan``: only the skip D u, the convolution and the gate
                remain): how much the model uses the state the remedies act on

The survey (Rahman et al. 2024, arXiv:2410.03105, §6.1) proposes dropout or weight
normalisation "applied directly to the hidden state" against the domain bias the
state accumulates.  Each configuration (baseline, state dropout p = 0.2, weight
norm) is trained with 3 seeds on two tasks and evaluated on the clean test split
and on the three shifted versions of it:

* digits: scikit-learn's 8x8 digits (the 1438/359 split of the seed), 2x2 patches,
  Vim with one block (embed_dim 16, d_state 8), 8 epochs, batch 64; the class token
  reaches its neighbours through the convolution, the state is hardly needed;
* pair: the long-range task of ``scan_orders.py`` (12x12 images, 3x3 patches, two
  marks at the left and right edge, same shape or not; 1000/500 images, noise 0.1),
  Vim with one block (embed_dim 24, d_state 8), 10 epochs, batch 32; only the state
  can carry one mark to the other.

Both: AdamW lr 3e-3, weight decay 0.05, one warmup epoch then cosine, gradient
clipping at 1.  The dropout runs use the NumPy reference of the masked scan in
training (the compiled scans have no mask), which makes them about five times slower
than the others, and the compiled scan at evaluation.  Full mode took 11 minutes of
wall time on 2 CPU cores shared with other jobs (load about 5; the JSON records both).

Usage::

    python experiments/generalization.py            # writes results/generalization.{json,png}
    python experiments/generalization.py --quick
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402
from robustness import FULL as ROBUSTNESS, shift  # noqa: E402  (the same shifts as chapter 10)

NAME = "generalization"

#: (label, RegularizationConfig fields)
CONFIGS = [
    ("baseline", {}),
    ("state dropout", {"state_dropout": 0.2}),
    ("weight norm", {"weight_norm": "state"}),
]
COLORS = {"baseline": "tab:grey", "state dropout": "tab:blue", "weight norm": "tab:orange"}
SHIFTS = ROBUSTNESS["shifts"]  # clean, bright +0.2, bright +0.4, contrast x0.5
TASKS = ("digits", "pair")

FULL = {
    "digits": {"data": {}, "model": {"embed_dim": 16, "d_state": 8, "depth": 1,
                                     "patch_size": 2}, "epochs": 8, "batch_size": 64},
    "pair": {"data": {"n_train": 1000, "n_test": 500, "size": 12, "n_shapes": 2, "noise": 0.1},
             "model": {"embed_dim": 24, "d_state": 8, "depth": 1, "patch_size": 3,
                       "img_size": 12, "n_classes": 2}, "epochs": 10, "batch_size": 32},
    "lr": 3e-3, "weight_decay": 0.05, "n_drift": 200}
QUICK = {
    "digits": {"data": {}, "model": {"embed_dim": 8, "d_state": 4, "depth": 1, "patch_size": 2},
               "epochs": 1, "batch_size": 32, "n_train": 128, "n_test": 64},
    "pair": {"data": {"n_train": 64, "n_test": 64, "size": 12, "n_shapes": 2, "noise": 0.1},
             "model": {"embed_dim": 8, "d_state": 4, "depth": 1, "patch_size": 3,
                       "img_size": 12, "n_classes": 2}, "epochs": 1, "batch_size": 32},
    "lr": 3e-3, "weight_decay": 0.05, "n_drift": 16}


def shifted_images(x, how):
    """The test images under a shift; "clean" leaves them untouched (no clipping)."""
    return x if tuple(how) == ("offset", 0.0) else shift(x, *how)


def no_state_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                  return_last_state=False, **kw):
    """The selective scan with the state removed (h_t = 0): only the skip D u and the gate."""
    from ssm_ref.regularize import selective_scan_state_dropout
    return selective_scan_state_dropout(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                        delta_softplus=delta_softplus,
                                        return_last_state=return_last_state,
                                        mask=np.zeros((1, 1, 1, 1)), **kw)


class LastStateRecorder:
    """A scan backend that also keeps the last state of every call (the model runs unchanged)."""

    def __init__(self, scan_fn):
        self.scan_fn = scan_fn
        self.states = []

    def scan(self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
             return_last_state=False, **kw):
        y, h = self.scan_fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                            delta_softplus=delta_softplus, return_last_state=True, **kw)
        self.states.append(np.asarray(h, dtype=np.float64))  # (B, D, N)
        return (y, h) if return_last_state else y


def first_scan_state(reg, x, scan_fn, scan_bwd):
    """h_L (B, D, N) of the first block's forward scan of a Regularized Vim on images x."""
    rec = LastStateRecorder(scan_fn)
    reg.set_backend(rec.scan, scan_bwd)
    try:
        reg.forward(x)  # evaluation: no dropout
    finally:
        reg.set_backend(scan_fn, scan_bwd)
    return rec.states[0]


def state_drift(reg, x, scan_fn, scan_bwd):
    """Mean relative change of the first scan's last state under every shift."""
    h0 = first_scan_state(reg, x, scan_fn, scan_bwd)
    n0 = np.sqrt(np.sum(h0 ** 2, axis=(1, 2)))  # (B,)
    out = {}
    for s, how in SHIFTS.items():
        if s == "clean":
            continue
        h = first_scan_state(reg, shifted_images(x, how), scan_fn, scan_bwd)
        out[s] = float(np.mean(np.sqrt(np.sum((h - h0) ** 2, axis=(1, 2))) / n0))
    return out


def run_task(task, cfg, seeds, scan_fn, scan_bwd, runs):
    """Train every configuration on ``task`` with every seed; the task's summary dict."""
    from ssm_ref.data import load_dataset
    from ssm_ref.regularize import Regularized
    from ssm_ref.train import evaluate
    from ssm_ref.vision.models import build_model

    tcfg = cfg[task]
    per = {label: {"acc": [], "drift": [], "gap": [], "time": [], "no_state": []}
           for label, _ in CONFIGS}
    n_params = {}
    for seed in seeds:
        ds = C.as_dtype(load_dataset(task, seed=seed, **tcfg["data"]))
        if "n_train" in tcfg:
            ds.x_train, ds.y_train = ds.x_train[:tcfg["n_train"]], ds.y_train[:tcfg["n_train"]]
            ds.x_test, ds.y_test = ds.x_test[:tcfg["n_test"]], ds.y_test[:tcfg["n_test"]]
        for label, reg_fields in CONFIGS:
            model = build_model("vim", seed=seed, scan_fn=scan_fn, scan_backward_fn=scan_bwd,
                                **tcfg["model"])
            reg = Regularized(model, seed=seed, **reg_fields)
            n_params[label] = reg.n_params()
            with C.Timer() as t:
                C.train_quiet(reg, ds, epochs=tcfg["epochs"], batch_size=tcfg["batch_size"],
                              lr=cfg["lr"], weight_decay=cfg["weight_decay"], seed=seed)
            acc = {s: evaluate(reg, shifted_images(ds.x_test, how), ds.y_test)[1]
                   for s, how in SHIFTS.items()}
            train_acc = evaluate(reg, ds.x_train, ds.y_train)[1]
            drift = state_drift(reg, ds.x_test[:cfg["n_drift"]], scan_fn, scan_bwd)
            reg.set_backend(no_state_scan, scan_bwd)  # the same model without its state
            no_state = evaluate(reg, ds.x_test, ds.y_test)[1]
            reg.set_backend(scan_fn, scan_bwd)
            r = per[label]
            r["acc"].append(acc)
            r["drift"].append(drift)
            r["gap"].append(train_acc - acc["clean"])
            r["time"].append(t.s)
            r["no_state"].append(no_state)
            runs.append({"task": task, "config": label, "seed": seed, "accuracy": acc,
                         "train_accuracy": train_acc, "accuracy_without_state": no_state,
                         "state_drift": drift, "train_time_s": t.s})
            print(f"  {task:6s} {label:14s} seed {seed}: "
                  + ", ".join(f"{s} {a:.3f}" for s, a in acc.items())
                  + f"; no state {no_state:.3f}; drift {[round(d, 2) for d in drift.values()]}"
                  + f" ({t.s:.0f} s)", flush=True)
    shifted = [s for s in SHIFTS if s != "clean"]
    out = {"configs": {}}
    for label, reg_fields in CONFIGS:
        r = per[label]
        out["configs"][label] = {
            "regularization": reg_fields, "n_params": n_params[label],
            "accuracy": {s: C.mean_std([a[s] for a in r["acc"]]) for s in SHIFTS},
            "shifted_mean_accuracy": C.mean_std([np.mean([a[s] for s in shifted])
                                                 for a in r["acc"]]),
            "accuracy_without_state": C.mean_std(r["no_state"]),
            "state_drift": {s: C.mean_std([d[s] for d in r["drift"]]) for s in shifted},
            "gap": C.mean_std(r["gap"]),
            "train_time_s": C.mean_std(r["time"])}
    return out


def run(args):
    cfg = QUICK if args.quick else FULL
    seeds = C.seeds_from(args)
    scan_fn, scan_bwd, backend = C.resolve_backend(args.backend)
    runs = []
    results = {"shifts": list(SHIFTS), "tasks": {}}
    for task in TASKS:
        results["tasks"][task] = run_task(task, cfg, seeds, scan_fn, scan_bwd, runs)
    shifted = [s for s in SHIFTS if s != "clean"]
    tables = {}
    for task in TASKS:
        res = results["tasks"][task]["configs"]
        rows = [[label, res[label]["n_params"]]
                + [C.fmt(res[label]["accuracy"][s]) for s in SHIFTS]
                + [C.fmt(res[label]["shifted_mean_accuracy"]),
                   C.fmt(res[label]["accuracy_without_state"])]
                for label, _ in CONFIGS]
        tables[f"{task}_accuracy"] = C.table(rows, ["config", "params"] + list(SHIFTS)
                                             + ["mean shifted", "clean, state removed"])
        rows = [[label] + [C.fmt(res[label]["state_drift"][s], 2) for s in shifted]
                + [C.fmt(res[label]["gap"]), f"{res[label]['train_time_s']['mean']:.0f}"]
                for label, _ in CONFIGS]
        tables[f"{task}_drift"] = C.table(rows, ["config"] + [f"drift {s}" for s in shifted]
                                          + ["train - test", "train time (s)"])
    settings = dict(cfg, seeds=seeds, configs={k: v for k, v in CONFIGS}, tasks=list(TASKS),
                    shifts={k: list(v) for k, v in SHIFTS.items()}, model_name="vim")
    return results, runs, tables, settings, backend


def plot(results):
    fig, axes = C.new_figure(2, 2, figsize=(11, 6.6))
    shifts = results["shifts"]
    shifted = [s for s in shifts if s != "clean"]
    for row, task in enumerate(TASKS):
        res = results["tasks"][task]["configs"]
        labels = list(res)
        width = 0.8 / len(labels)
        for ax, keys, what in ((axes[row, 0], shifts, "accuracy"),
                               (axes[row, 1], shifted, "state_drift")):
            for k, label in enumerate(labels):
                st = res[label][what]
                xs = np.arange(len(keys)) + (k - (len(labels) - 1) / 2) * width
                ax.bar(xs, [st[s]["mean"] for s in keys], width,
                       yerr=[st[s]["std"] for s in keys], capsize=2, label=label,
                       color=COLORS[label])
            ax.set_xticks(range(len(keys)), keys)
        chance = 0.5 if task == "pair" else 0.1
        axes[row, 0].axhline(chance, color="k", ls=":", lw=1)
        axes[row, 0].set(ylabel="test accuracy", ylim=(0, 1.02),
                         title=f"{task}: clean and shifted test sets")
        axes[row, 1].set(ylabel="relative change of h_L",
                         title=f"{task}: state drift of block 0 under the shift")
    axes[0, 1].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = C.base_parser(NAME, "Hidden-state dropout and weight normalisation (survey §6.1) "
                                 "against a baseline Vim on clean and shifted digits.")
    args = parser.parse_args(argv)
    return C.run_experiment(NAME, args, run, plot)


if __name__ == "__main__":
    main()
