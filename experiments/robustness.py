"""Experiment 4: the survey's limitations made concrete -- adversarial robustness and hidden states.

Glossary
--------
x, y      test images (B, 8, 8, 1) in [0, 1] and their labels
eps       the L-infinity budget of an attack: every pixel moves by at most eps
FGSM      fast gradient sign method: ``x' = clip(x + eps sign(grad_x loss), 0, 1)``
          (Goodfellow et al. 2015, arXiv:1412.6572)
PGD       projected gradient descent: ``steps`` FGSM steps of size
          ``alpha = 2.5 eps / steps``, each followed by projection onto the eps-ball
          around x and onto [0, 1]; no random start, so it is deterministic
          (Madry et al. 2018, arXiv:1706.06083)
u, delta, B, C, z   the inputs of the first selective scan of a model (``u`` the
          scanned activations, ``delta`` the step before ``delta_bias`` and
          softplus, ``B``/``C`` the input-dependent projections, ``z`` the gate;
          VMamba has no gate in the scan)
Delta     the step the recurrence uses, ``softplus(delta + delta_bias)``
h_L       the scan's state after L tokens, (B, D, N)

Three parts, each on models trained on digits with 3 seeds (model widths
chosen for about 15 000 parameters and trained exactly as in ``architectures.py``, 20 epochs):

1. **Accuracy against eps** for FGSM and PGD-10 on 200 test images, for Vim,
   VMamba, the attention baseline and the CNN.
2. **Where the attack goes through the selective scan** (Vim and VMamba).  For
   the FGSM perturbation at ``eps_probe`` we record, in the *first* block's
   scan(s), the clean and attacked values of u, Delta, B, C (and z) and the
   gradient of the loss with respect to them.  Three numbers per quantity X:

   * ``first_order_share[X] = <dL/dX, X(x') - X(x)> / (sum over delta, B, C)``:
     the linearised increase of the loss that travels through X.  By the
     chain rule the first block's scan inputs split the attack's first-order
     effect exactly into such terms, so the shares say which of delta, B, C
     the attack's gradient flows through most (for delta the inner product
     uses the pre-softplus delta, whose gradient the scan's backward returns).
     ``first_order_share_all`` adds u and z to the denominator: u also
     carries the skip ``D u``, which at this size dominates everything.
   * ``saliency_share[X] = sum |dL/dX * X| / (sum over Delta, B, C)``: gradient
     times input, an attack-free sensitivity (for Delta the gradient with
     respect to the step after softplus).
   * ``relative_change[X] = ||X(x') - X(x)|| / ||X(x)||`` (Frobenius norms over
     the batch), next to the same for a random ±eps sign perturbation; the
     ratio ``adv / random`` says how much more the attack moves X than noise
     of the same size does.

3. **Hidden-state accumulation and distribution shift.**  (a) The first
   block's forward scan (Vim, trained and freshly initialised) is run on long
   token streams made by concatenating the block's own input sequences of
   test digits ("in distribution") or of a constant bright image ("constant"),
   and we record ``||h_L||`` (Frobenius norm over D x N, mean over B) for L up to
   4096.  (b) The accuracy of every model on brightness-shifted digits
   ``clip(x + b, 0, 1)`` and contrast-reduced digits ``0.5 x``.

Full mode takes about 3.5 minutes on 2 shared CPU cores.

Usage::

    python experiments/robustness.py            # writes results/robustness.{json,png}
    python experiments/robustness.py --quick

References: Rahman et al. 2024, "Mamba in Vision" (arXiv:2410.03105), Section 6
(6.1 generalisation and hidden-state accumulation, 6.5 adversarial
robustness); Du et al. 2024, "Understanding Robustness of Visual State Space
Models for Image Classification" (arXiv:2403.10935), who report that VMamba's
B and C are the vulnerable parameters while Delta gives some defence.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

NAME = "robustness"
MODELS = ("vim", "vmamba", "attention", "cnn")
LABELS = {"vim": "Vim", "vmamba": "VMamba", "attention": "attention (ViT)", "cnn": "CNN"}
COLORS = {"vim": "tab:blue", "vmamba": "tab:orange", "attention": "tab:green", "cnn": "tab:red"}
SCAN_MODELS = ("vim", "vmamba")
QUANTITIES = ("u", "delta", "B", "C", "z")
SELECTIVE = ("delta", "B", "C")  # the input-dependent SSM parameters

FULL = {"params": 15000, "depth": 2, "d_state": 8, "epochs": 20, "batch_size": 64, "lr": 3e-3,
        "weight_decay": 0.05, "n_attack": 200, "eps": [0.0, 0.01, 0.02, 0.05, 0.1, 0.2],
        "pgd_steps": 10, "eps_probe": 0.05, "n_probe": 100,
        "lengths": [17, 68, 272, 1088, 4352], "n_stream": 4,
        "shifts": {"clean": ("offset", 0.0), "bright +0.2": ("offset", 0.2),
                   "bright +0.4": ("offset", 0.4), "contrast x0.5": ("scale", 0.5)}}
QUICK = {"params": 3000, "depth": 1, "d_state": 4, "epochs": 4, "batch_size": 16, "lr": 1e-2,
         "weight_decay": 0.05, "n_train": 384, "n_attack": 48, "eps": [0.0, 0.1, 0.3],
         "pgd_steps": 3, "eps_probe": 0.1, "n_probe": 16,
         "lengths": [17, 68], "n_stream": 2,
         "shifts": {"clean": ("offset", 0.0), "bright +0.4": ("offset", 0.4)}}


# --------------------------------------------------------------------------- attacks
def loss_and_input_grad(model, x, y):
    """(loss, dL/dx, logits) of the mean softmax cross-entropy."""
    from ssm_ref.optim import softmax_cross_entropy
    logits, cache = model.forward(x, return_cache=True)
    loss, dlogits = softmax_cross_entropy(logits, y)
    dx, _ = model.backward(dlogits, cache, return_input_grad=True)
    return float(loss), np.asarray(dx, dtype=np.float64), logits


def fgsm(model, x, y, eps):
    """One signed-gradient step of size eps, clipped to the image range [0, 1]."""
    if eps == 0:
        return x.copy()
    _, g, _ = loss_and_input_grad(model, x, y)
    return np.clip(x + eps * np.sign(g), 0.0, 1.0)


def pgd(model, x, y, eps, steps):
    """L-infinity PGD without random start: ``steps`` steps of 2.5 eps / steps."""
    if eps == 0:
        return x.copy()
    alpha = 2.5 * eps / steps
    xa = x.copy()
    for _ in range(steps):
        _, g, _ = loss_and_input_grad(model, xa, y)
        xa = np.clip(xa + alpha * np.sign(g), x - eps, x + eps)  # project onto the eps-ball
        xa = np.clip(xa, 0.0, 1.0)  # and onto the image range
    return xa


def accuracy(model, x, y, batch=100):
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((model.forward(x[i:i + batch]).argmax(axis=1) == y[i:i + batch]).sum())
    return correct / len(y)


def attack_accuracy(model, x, y, attack, eps, batch=100, **kw):
    correct = 0
    for i in range(0, len(y), batch):
        xa = attack(model, x[i:i + batch], y[i:i + batch], eps, **kw)
        correct += int((model.forward(xa).argmax(axis=1) == y[i:i + batch]).sum())
    return correct / len(y)


# --------------------------------------------------------------------------- scan recorder
class ScanRecorder:
    """Wraps a selective scan and its backward to keep their inputs and gradients.

    Installed with ``model.set_backend(rec.scan, rec.scan_backward)``; the model
    runs unchanged.  ``calls`` holds, per forward scan call, the arrays u, delta,
    B, C, z (and delta_bias); ``grads`` the backward's dict for each call, matched
    to its forward call by equal delta.
    """

    def __init__(self, scan_fn, scan_backward_fn):
        self.scan_fn, self.scan_backward_fn = scan_fn, scan_backward_fn
        self.reset()

    def reset(self):
        self.calls, self.grads = [], {}

    def scan(self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
             return_last_state=False, **kw):
        f64 = lambda a: np.array(a, dtype=np.float64)  # noqa: E731 - a copy in float64
        self.calls.append({"u": f64(u), "delta": f64(delta), "B": f64(B), "C": f64(C),
                           "z": None if z is None else f64(z),
                           "delta_bias": None if delta_bias is None else np.asarray(delta_bias)})
        return self.scan_fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                            delta_softplus=delta_softplus, return_last_state=return_last_state,
                            **kw)

    def scan_backward(self, dout, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                      delta_softplus=False, **kw):
        g = self.scan_backward_fn(dout, u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                  delta_softplus=delta_softplus, **kw)
        d = np.asarray(delta, dtype=np.float64)
        for k, call in enumerate(self.calls):
            if call["delta"].shape == d.shape and np.array_equal(call["delta"], d):
                self.grads[k] = {key: (None if v is None else np.asarray(v, dtype=np.float64))
                                 for key, v in g.items()}
                break
        return g


def _softplus(x):
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def scan_quantities(call):
    """The recorded u, Delta = softplus(delta + bias), B, C, z of one scan call."""
    bias = 0.0 if call["delta_bias"] is None else np.asarray(call["delta_bias"],
                                                             dtype=np.float64)[None, :, None]
    out = {"u": call["u"], "delta": _softplus(call["delta"] + bias), "B": call["B"],
           "C": call["C"]}
    if call["z"] is not None:
        out["z"] = call["z"]
    return out


def first_block_probe(model, rec, x, y, eps, seed):
    """Relative changes and first-order loss shares of u, delta, B, C, z in block 0's scans."""
    from ssm_ref.optim import softmax_cross_entropy
    n_first = None

    def record(xin, with_grad):
        rec.reset()
        logits, cache = model.forward(xin, return_cache=True)
        calls = list(rec.calls)
        grads = None
        if with_grad:
            _, dlogits = softmax_cross_entropy(logits, y)
            model.backward(dlogits, cache)
            grads = dict(rec.grads)
        return calls, grads

    calls_clean, grads_clean = record(x, True)
    n_first = len(calls_clean) // model.config.depth  # scan calls per block
    x_adv = fgsm(model, x, y, eps)
    rng = np.random.default_rng(seed)
    x_rand = np.clip(x + eps * rng.choice([-1.0, 1.0], size=x.shape), 0.0, 1.0)
    calls_adv, _ = record(x_adv, False)
    calls_rand, _ = record(x_rand, False)
    rel_adv, rel_rand, first_order, saliency = {}, {}, {}, {}
    for q in QUANTITIES:
        num_a = num_r = den = fo = sal = 0.0
        present = False
        for k in range(n_first):
            qc, qa, qr = (scan_quantities(c[k]) for c in (calls_clean, calls_adv, calls_rand))
            if q not in qc:
                continue
            present = True
            num_a += float(np.sum((qa[q] - qc[q]) ** 2))
            num_r += float(np.sum((qr[q] - qc[q]) ** 2))
            den += float(np.sum(qc[q] ** 2))
            g = grads_clean[k][q]
            # <dL/dX, X(x') - X(x)>; for delta the scan's gradient is w.r.t. the raw delta
            fo += float(np.sum(g * (calls_adv[k][q] - calls_clean[k][q])))
            if q == "delta":  # dL/dDelta = dL/ddelta / softplus'(delta + bias)
                bias = calls_clean[k]["delta_bias"]
                bias = 0.0 if bias is None else np.asarray(bias, dtype=np.float64)[None, :, None]
                g = g * (1.0 + np.exp(-(calls_clean[k]["delta"] + bias)))
            sal += float(np.sum(np.abs(g * qc[q])))  # gradient x input, Delta after softplus
        if present:
            rel_adv[q] = np.sqrt(num_a / den)
            rel_rand[q] = np.sqrt(num_r / den)
            first_order[q], saliency[q] = fo, sal
    fo_sel = sum(first_order[q] for q in SELECTIVE)
    sal_sel = sum(saliency[q] for q in SELECTIVE)
    fo_all = sum(first_order.values())
    return {"relative_change_adv": rel_adv, "relative_change_random": rel_rand,
            "adv_over_random": {q: rel_adv[q] / rel_rand[q] for q in rel_adv if rel_rand[q] > 0},
            "first_order_share": {q: first_order[q] / fo_sel for q in SELECTIVE},
            "saliency_share": {q: saliency[q] / sal_sel for q in SELECTIVE},
            "first_order_share_all": {q: v / fo_all for q, v in first_order.items()},
            "scan_calls_per_block": n_first}


# --------------------------------------------------------------------------- hidden states
def first_mixer_tokens(model, x):
    """The (B, L+1, E) tokens Vim's first mixer sees (after patches, class token, pos, RMSNorm)."""
    _, cache = model.forward(x, return_cache=True)
    return np.asarray(cache["layers"][0]["mixer"]["u"], dtype=np.float64)


def state_norms(model, stream, lengths, scan_fn):
    """``||h_L||`` of the first Vim block's forward scan after L tokens of ``stream`` (B, T, E)."""
    from ssm_ref.mamba import mamba_inner_forward
    from ssm_ref.nn import linear
    mixer = model.layers[0].mixer
    p = mixer.params
    out = []
    for L in lengths:
        xz = linear(stream[:, :L], p["in_proj.weight"], p.get("in_proj.bias"))  # (B, L, 2D)
        _, _, h = mamba_inner_forward(xz.transpose(0, 2, 1), p, scan_fn=scan_fn,
                                      return_last_state=True)  # h (B, D, N)
        out.append(float(np.mean(np.sqrt(np.sum(np.asarray(h) ** 2, axis=(1, 2))))))
    return out


def long_streams(model, ds, n_stream, T, seed):
    """Token streams of length >= T: concatenated test digits, and a constant bright image."""
    rng = np.random.default_rng(seed)
    per = first_mixer_tokens(model, ds.x_test[:1]).shape[1]  # tokens per image (L + 1)
    n_img = -(-T // per)
    idx = rng.integers(len(ds.x_test), size=n_stream * n_img)
    tok = first_mixer_tokens(model, ds.x_test[idx])  # (n_stream·n_img, L + 1, E)
    in_dist = tok.reshape(n_stream, n_img * per, -1)  # (n_stream, T', E)
    bright = first_mixer_tokens(model, np.ones((1,) + ds.x_test.shape[1:]))  # (1, L + 1, E)
    constant = np.tile(bright, (n_stream, n_img, 1))  # (n_stream, T', E)
    return {"in distribution (digits)": in_dist, "constant bright image": constant}


def shift(x, kind, value):
    return np.clip(x + value, 0.0, 1.0) if kind == "offset" else np.clip(x * value, 0.0, 1.0)


# --------------------------------------------------------------------------- the experiment
def run(args):
    from ssm_ref.data import load_dataset
    from ssm_ref.vision.models import build_model

    cfg = QUICK if args.quick else FULL
    seeds = C.seeds_from(args)
    scan_fn, scan_bwd, backend = C.resolve_backend(args.backend)
    widths = {n: C.matched_width(n, cfg["params"], cfg["depth"], cfg["d_state"]) for n in MODELS}
    per_model = {n: {"fgsm": [], "pgd": [], "probe": [], "shift": [], "clean": [],
                     "state_trained": [], "state_init": []} for n in MODELS}
    runs = []
    for seed in seeds:
        ds = C.as_dtype(load_dataset("digits", seed=seed))
        if "n_train" in cfg:
            ds.x_train, ds.y_train = ds.x_train[:cfg["n_train"]], ds.y_train[:cfg["n_train"]]
        xa, ya = ds.x_test[:cfg["n_attack"]], ds.y_test[:cfg["n_attack"]]
        for name in MODELS:
            E, n_params = widths[name]
            kw = {"embed_dim": E, "depth": cfg["depth"]}
            if name in SCAN_MODELS:
                kw["d_state"] = cfg["d_state"]
            model = build_model(name, seed=seed, scan_fn=scan_fn, scan_backward_fn=scan_bwd, **kw)
            init_state = None
            if name == "vim":  # the untrained twin, for the state-norm comparison
                init_state = build_model(name, seed=seed, scan_fn=scan_fn,
                                         scan_backward_fn=scan_bwd, **kw).state_dict()
            m = C.train_quiet(model, ds, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                              lr=cfg["lr"], weight_decay=cfg["weight_decay"], seed=seed)
            r = per_model[name]
            r["clean"].append(m["test_accuracy"])
            r["fgsm"].append([attack_accuracy(model, xa, ya, fgsm, e) for e in cfg["eps"]])
            r["pgd"].append([attack_accuracy(model, xa, ya, pgd, e, steps=cfg["pgd_steps"])
                             for e in cfg["eps"]])
            r["shift"].append({s: accuracy(model, shift(ds.x_test, *how), ds.y_test)
                               for s, how in cfg["shifts"].items()})
            if name in SCAN_MODELS:
                rec = ScanRecorder(scan_fn, scan_bwd)
                model.set_backend(rec.scan, rec.scan_backward)
                n = cfg["n_probe"]
                r["probe"].append(first_block_probe(model, rec, ds.x_test[:n], ds.y_test[:n],
                                                    cfg["eps_probe"], seed))
                model.set_backend(scan_fn, scan_bwd)
            if name == "vim":
                T = max(cfg["lengths"])
                for key, params in (("state_trained", None), ("state_init", init_state)):
                    if params is not None:
                        model.load_state_dict(params)  # the same architecture, untrained
                    streams = long_streams(model, ds, cfg["n_stream"], T, seed)
                    r[key].append({k: state_norms(model, s, cfg["lengths"], scan_fn)
                                   for k, s in streams.items()})
            runs.append({"model": name, "seed": seed, "test_accuracy": m["test_accuracy"],
                         "fgsm": r["fgsm"][-1], "pgd": r["pgd"][-1], "shift": r["shift"][-1]})
            print(f"  {name:9s} seed {seed}: clean {m['test_accuracy']:.3f}, FGSM "
                  f"{[round(a, 2) for a in r['fgsm'][-1]]}, "
                  f"PGD {[round(a, 2) for a in r['pgd'][-1]]}",
                  flush=True)

    results = {"eps": cfg["eps"], "models": {}}
    n_eps = range(len(cfg["eps"]))
    for name in MODELS:
        r = per_model[name]
        out = {"embed_dim": widths[name][0], "n_params": widths[name][1],
               "clean_accuracy": C.mean_std(r["clean"]),
               "fgsm_accuracy": [C.mean_std([v[i] for v in r["fgsm"]]) for i in n_eps],
               "pgd_accuracy": [C.mean_std([v[i] for v in r["pgd"]]) for i in n_eps],
               "shift_accuracy": {s: C.mean_std([v[s] for v in r["shift"]]) for s in cfg["shifts"]}}
        if r["probe"]:
            out["probe"] = {
                key: {q: C.mean_std([p[key][q] for p in r["probe"]]) for q in r["probe"][0][key]}
                for key in ("relative_change_adv", "relative_change_random", "adv_over_random",
                            "first_order_share", "saliency_share", "first_order_share_all")}
        for key in ("state_trained", "state_init"):
            if r[key]:
                out[key] = {k: [C.mean_std([v[k][i] for v in r[key]])
                                for i in range(len(cfg["lengths"]))] for k in r[key][0]}
        results["models"][name] = out
    results["lengths"] = cfg["lengths"]

    # tables
    eps = cfg["eps"]
    rows = [[LABELS[n], results["models"][n]["n_params"]]
            + [C.fmt(results["models"][n]["fgsm_accuracy"][i], 2) for i in range(len(eps))]
            for n in MODELS]
    t1 = C.table(rows, ["model", "params"] + [f"FGSM eps={e}" for e in eps])
    rows = [[LABELS[n], results["models"][n]["n_params"]]
            + [C.fmt(results["models"][n]["pgd_accuracy"][i], 2) for i in range(len(eps))]
            for n in MODELS]
    t2 = C.table(rows, ["model", "params"] + [f"PGD-{cfg['pgd_steps']} eps={e}" for e in eps])
    rows = []
    for n in SCAN_MODELS:
        p = results["models"][n]["probe"]
        for q in p["relative_change_adv"]:
            sel = q in SELECTIVE
            rows.append([LABELS[n], "Delta" if q == "delta" else q,
                         C.fmt(p["first_order_share"][q], 2) if sel else "-",
                         C.fmt(p["saliency_share"][q], 2) if sel else "-",
                         C.fmt(p["first_order_share_all"][q], 3),
                         C.fmt(p["relative_change_adv"][q], 3),
                         C.fmt(p["relative_change_random"][q], 3),
                         C.fmt(p["adv_over_random"][q], 2)])
    t3 = C.table(rows, ["model", "X", "first-order share", "saliency share",
                        "share incl. u, z", "rel. change FGSM", "rel. change random",
                        "FGSM / random"])
    rows = [[LABELS[n]] + [C.fmt(results["models"][n]["shift_accuracy"][s], 2)
                           for s in cfg["shifts"]] for n in MODELS]
    t4 = C.table(rows, ["model"] + list(cfg["shifts"]))
    rows = []
    for key, lab in (("state_init", "initialised"), ("state_trained", "trained")):
        for k, vals in results["models"]["vim"][key].items():
            rows.append([lab, k] + [f"{v['mean']:.2f}" for v in vals])
    t5 = C.table(rows, ["Vim block 0", "stream"] + [f"L={L}" for L in cfg["lengths"]])
    settings = dict(cfg, seeds=seeds, models=list(MODELS),
                    shifts={k: list(v) for k, v in cfg["shifts"].items()},
                    widths={n: list(widths[n]) for n in MODELS})
    tables = {"fgsm": t1, "pgd": t2, "probe": t3, "shift": t4, "state": t5}
    return results, runs, tables, settings, backend


def plot(results):
    fig, axes = C.new_figure(1, 4, figsize=(17, 3.8))
    eps = results["eps"]
    for ax, key, title in ((axes[0], "fgsm_accuracy", "FGSM"), (axes[1], "pgd_accuracy", "PGD")):
        for n in MODELS:
            st = results["models"][n][key]
            ax.errorbar(eps, [s["mean"] for s in st], yerr=[s["std"] for s in st], marker="o",
                        capsize=3, label=LABELS[n], color=COLORS[n])
        ax.axhline(0.1, color="grey", ls=":", lw=1)
        ax.set(xlabel="eps (L-inf, pixels in [0, 1])", ylabel="test accuracy", ylim=(0, 1.02),
               title=f"{title}: accuracy vs eps")
        ax.legend(fontsize=8)
    ax = axes[2]
    qs = list(SELECTIVE)
    width = 0.2
    bars = [(n, key) for n in SCAN_MODELS for key in ("first_order_share", "saliency_share")]
    for k, (n, key) in enumerate(bars):
        share = results["models"][n]["probe"][key]
        xs = np.arange(len(qs)) + (k - 1.5) * width
        ax.bar(xs, [share[q]["mean"] for q in qs], width, yerr=[share[q]["std"] for q in qs],
               capsize=2,
               label=f"{LABELS[n]}: {'FGSM first-order' if key[0] == 'f' else 'grad x input'}",
               color=COLORS[n], alpha=1.0 if key[0] == "f" else 0.45,
               hatch="" if key[0] == "f" else "//", edgecolor="k", linewidth=0.5)
    ax.set_xticks(range(len(qs)), ["Δ (delta)", "B", "C"])
    ax.axhline(0, color="k", lw=0.5)
    ax.set(ylabel="share among Δ, B, C", title="attack through block 0's scan")
    ax.legend(fontsize=7)
    ax = axes[3]
    L = results["lengths"]
    for key, ls in (("state_trained", "-"), ("state_init", "--")):
        for k, vals in results["models"]["vim"][key].items():
            ax.errorbar(L, [v["mean"] for v in vals], yerr=[v["std"] for v in vals], ls=ls,
                        marker="o", capsize=2,
                        label=f"{'trained' if key == 'state_trained' else 'init'}: {k}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="tokens L", ylabel="||h_L|| (mean over streams)",
           title="Vim block 0: state norm vs length")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = C.base_parser(NAME, "Adversarial robustness (FGSM, PGD) of tiny Vim, VMamba, "
                                 "attention and CNN models on digits, which of delta, B, C the "
                                 "attack flows through, and hidden-state accumulation.")
    args = parser.parse_args(argv)
    return C.run_experiment(NAME, args, run, plot)


if __name__ == "__main__":
    main()
