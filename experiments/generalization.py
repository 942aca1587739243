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

The survey (Rahman et al. 2024, arXiv:2410.03105, §6.1) proposes dropout or weight
normalisation "applied directly to the hidden state" against the domain bias the
state accumulates.  Each configuration is trained on scikit-learn's digits (the
1438/359 split of the seed) with 3 seeds and evaluated on the clean test split and on
the three shifted versions of it.

Settings (full mode): Vim with one block (embed_dim 16, d_state 8), 8 epochs, batch
64, AdamW lr 3e-3, weight decay 0.05, one warmup epoch then cosine, gradient clipping
at 1; state dropout p = 0.1 and p = 0.3.  The dropout runs use the NumPy reference of the masked
scan in training (the compiled scans have no mask), which makes them about five times
slower than the others, and the compiled scan at evaluation.  Full mode takes about
five minutes of CPU time, most of it in the dropout runs (on 2 cores shared with
other work it took longer: the JSON records the wall time and the load).

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
    ("state dropout p=0.1", {"state_dropout": 0.1}),
    ("state dropout p=0.3", {"state_dropout": 0.3}),
    ("weight norm", {"weight_norm": "state"}),
]
COLORS = {"baseline": "tab:grey", "state dropout p=0.1": "tab:cyan",
          "state dropout p=0.3": "tab:blue", "weight norm": "tab:orange"}
SHIFTS = ROBUSTNESS["shifts"]  # clean, bright +0.2, bright +0.4, contrast x0.5

FULL = {"model": {"embed_dim": 16, "d_state": 8, "depth": 1}, "epochs": 8, "batch_size": 64,
        "lr": 3e-3, "weight_decay": 0.05, "n_drift": 200}
QUICK = {"model": {"embed_dim": 8, "d_state": 4, "depth": 1}, "epochs": 1, "batch_size": 32,
         "lr": 3e-3, "weight_decay": 0.05, "n_drift": 16, "n_train": 128, "n_test": 64}


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
        h = first_scan_state(reg, shift(x, *how), scan_fn, scan_bwd)
        out[s] = float(np.mean(np.sqrt(np.sum((h - h0) ** 2, axis=(1, 2))) / n0))
    return out


def run(args):
    from ssm_ref.data import load_dataset
    from ssm_ref.regularize import Regularized
    from ssm_ref.train import evaluate
    from ssm_ref.vision.models import build_model

    cfg = QUICK if args.quick else FULL
    seeds = C.seeds_from(args)
    scan_fn, scan_bwd, backend = C.resolve_backend(args.backend)
    per = {label: {"acc": [], "drift": [], "gap": [], "time": []} for label, _ in CONFIGS}
    runs = []
    n_params = {}
    for seed in seeds:
        ds = C.as_dtype(load_dataset("digits", seed=seed))
        if "n_train" in cfg:
            ds.x_train, ds.y_train = ds.x_train[:cfg["n_train"]], ds.y_train[:cfg["n_train"]]
            ds.x_test, ds.y_test = ds.x_test[:cfg["n_test"]], ds.y_test[:cfg["n_test"]]
        for label, reg_fields in CONFIGS:
            model = build_model("vim", seed=seed, scan_fn=scan_fn, scan_backward_fn=scan_bwd,
                                **cfg["model"])
            reg = Regularized(model, seed=seed, **reg_fields)
            n_params[label] = reg.n_params()
            with C.Timer() as t:
                C.train_quiet(reg, ds, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                              lr=cfg["lr"], weight_decay=cfg["weight_decay"], seed=seed)
            acc = {s: evaluate(reg, shift(ds.x_test, *how), ds.y_test)[1]
                   for s, how in SHIFTS.items()}
            train_acc = evaluate(reg, ds.x_train, ds.y_train)[1]
            drift = state_drift(reg, ds.x_test[:cfg["n_drift"]], scan_fn, scan_bwd)
            r = per[label]
            r["acc"].append(acc)
            r["drift"].append(drift)
            r["gap"].append(train_acc - acc["clean"])
            r["time"].append(t.s)
            runs.append({"config": label, "seed": seed, "accuracy": acc,
                         "train_accuracy": train_acc,
                         "state_drift": drift, "train_time_s": t.s})
            print(f"  {label:20s} seed {seed}: " + ", ".join(f"{s} {a:.3f}" for s, a in acc.items())
                  + f"; drift {[round(d, 2) for d in drift.values()]} ({t.s:.0f} s)", flush=True)

    results = {"shifts": list(SHIFTS), "configs": {}}
    for label, reg_fields in CONFIGS:
        r = per[label]
        shifted = [s for s in SHIFTS if s != "clean"]
        results["configs"][label] = {
            "regularization": reg_fields, "n_params": n_params[label],
            "accuracy": {s: C.mean_std([a[s] for a in r["acc"]]) for s in SHIFTS},
            "shifted_mean_accuracy": C.mean_std([np.mean([a[s] for s in shifted])
                                                 for a in r["acc"]]),
            "state_drift": {s: C.mean_std([d[s] for d in r["drift"]]) for s in shifted},
            "gap": C.mean_std(r["gap"]),
            "train_time_s": C.mean_std(r["time"])}
    res = results["configs"]
    rows = [[label, res[label]["n_params"]] + [C.fmt(res[label]["accuracy"][s]) for s in SHIFTS]
            + [C.fmt(res[label]["shifted_mean_accuracy"]), C.fmt(res[label]["gap"])]
            for label, _ in CONFIGS]
    t1 = C.table(rows, ["config", "params"] + list(SHIFTS) + ["mean shifted", "train - test"])
    shifted = [s for s in SHIFTS if s != "clean"]
    rows = [[label] + [C.fmt(res[label]["state_drift"][s], 2) for s in shifted]
            + [f"{res[label]['train_time_s']['mean']:.0f}"] for label, _ in CONFIGS]
    t2 = C.table(rows, ["config"] + [f"drift {s}" for s in shifted] + ["train time (s)"])
    settings = dict(cfg, seeds=seeds, configs={k: v for k, v in CONFIGS},
                    shifts={k: list(v) for k, v in SHIFTS.items()}, model_name="vim")
    return results, runs, {"accuracy": t1, "drift": t2}, settings, backend


def plot(results):
    fig, axes = C.new_figure(1, 2, figsize=(11, 3.6))
    shifts = results["shifts"]
    labels = list(results["configs"])
    width = 0.8 / len(labels)
    ax = axes[0]
    for k, label in enumerate(labels):
        acc = results["configs"][label]["accuracy"]
        xs = np.arange(len(shifts)) + (k - (len(labels) - 1) / 2) * width
        ax.bar(xs, [acc[s]["mean"] for s in shifts], width, yerr=[acc[s]["std"] for s in shifts],
               capsize=2, label=label, color=COLORS[label])
    ax.set_xticks(range(len(shifts)), shifts)
    ax.set(ylabel="test accuracy", ylim=(0, 1.02),
           title="Vim on digits: clean and shifted test sets")
    ax.legend(fontsize=8, loc="lower left")
    ax = axes[1]
    shifted = [s for s in shifts if s != "clean"]
    for k, label in enumerate(labels):
        d = results["configs"][label]["state_drift"]
        xs = np.arange(len(shifted)) + (k - (len(labels) - 1) / 2) * width
        ax.bar(xs, [d[s]["mean"] for s in shifted], width, yerr=[d[s]["std"] for s in shifted],
               capsize=2, label=label, color=COLORS[label])
    ax.set_xticks(range(len(shifted)), shifted)
    ax.set(ylabel="relative change of h_L", title="state drift of block 0 under the shift")
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = C.base_parser(NAME, "Hidden-state dropout and weight normalisation (survey §6.1) "
                                 "against a baseline Vim on clean and shifted digits.")
    args = parser.parse_args(argv)
    return C.run_experiment(NAME, args, run, plot)


if __name__ == "__main__":
    main()
