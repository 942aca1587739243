"""Experiment 3: effective receptive fields and hidden attention of trained models, per scan order.

Glossary
--------
ERF      effective receptive field: ``|d sum_k relu(feat[i0, j0, k]) / d x|`` summed over
         input channels and averaged over test images, for the centre token
         (i0, j0) of the backbone's output (``ssm_ref.vision.effective_receptive_field``)
non-local share   the share of the ERF's total mass that lies outside the
         centre token's own p x p patch: how much the centre output depends on
         the rest of the image (0 = purely local; the residual stream alone
         gives 0).  RepLKNet's 50%-area ratio is not used: at this size the
         centre patch always holds half of the mass, so it does not discriminate
alpha    the hidden-attention matrix of the first block's selective scan(s):
         ``alpha[t, s] = C_t . (prod_{k=s+1..t} Abar_k) Bbar_s`` (Ali et al. 2024)
map      the row of alpha for the centre token, put back on the token grid
         through the scan order, |alpha| averaged over channels, both
         directions merged as the block merges them
attention distance   the mean grid distance (in tokens) from the query to the
         other tokens, weighted by the map: how far the first block looks

Models: tiny Vim (depth 2, E 24, d_state 8) with the patch tokens flattened in
each scan order, and tiny VMamba (cross-scan).  Each is trained on digits (5
epochs, 3 seeds) and measured before training (same seed) and after.  The
figure shows seed 0: the ERF before and after training, and the trained
first block's hidden-attention map of the centre token.

For Vim the map is computed from the model's own cache (the sequence with its
middle class token and position embedding): ``alpha`` of the forward path
over the L + 1 positions, and of the backward path over the flipped sequence;
the class token's column is dropped and the two rows are averaged (Vim
averages its two outputs).  For VMamba, ``ss2d_attention_maps`` of the first
VSS block on its input.

Full mode takes about 5 minutes on 2 shared CPU cores.

Usage::

    python experiments/receptive_fields.py            # writes results/receptive_fields.{json,png}
    python experiments/receptive_fields.py --quick
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

NAME = "receptive_fields"

CONFIGS = [
    ("raster", "vim", {"scan": "raster"}),
    ("column", "vim", {"scan": "column"}),
    ("snake", "vim", {"scan": "snake"}),
    ("hilbert", "vim", {"scan": "hilbert"}),
    ("local (window 2)", "vim", {"scan": "local", "scan_options": {"window": 2}}),
    ("atrous (step 2)", "vim", {"scan": "atrous", "scan_options": {"step": 2}}),
    ("cross-scan (VMamba)", "vmamba", {"directions": "vmamba_cross"}),
]

FULL = {"model": {"embed_dim": 24, "d_state": 8, "depth": 2}, "epochs": 5, "batch_size": 32,
        "lr": 3e-3, "weight_decay": 0.05, "n_erf": 50}
QUICK = {"model": {"embed_dim": 8, "d_state": 4, "depth": 1}, "epochs": 1, "batch_size": 32,
         "lr": 3e-3, "weight_decay": 0.05, "n_erf": 8, "n_train": 128,
         "configs": ["raster", "column", "cross-scan (VMamba)"]}


def vim_attention_map(model, x, query):
    """(h, w) map of |alpha| for the query token in Vim's first block (see the module docstring)."""
    from ssm_ref.attention import hidden_attention
    h, w = model.config.grid
    L = h * w
    _, cache = model.forward(x, return_cache=True)
    mc = cache["layers"][0]["mixer"]
    p = model.layers[0].mixer.params
    perm = np.asarray(model.perm)
    cls = model.cls_index
    # grid cell of each of the L + 1 sequence positions (-1: the class token)
    cell = np.concatenate([perm[:cls], [-1], perm[cls:]])  # (L + 1,)
    t_q = int(np.flatnonzero(cell == query[0] * w + query[1])[0])
    grid = np.zeros(L)
    for path, a_log, bias in (("f", "A_log", "dt_proj.bias"), ("b", "A_b_log", "dt_proj_b.bias")):
        c = mc[path]
        alpha = hidden_attention(c["delta"], -np.exp(np.asarray(p[a_log], dtype=np.float64)),
                                 c["Bmat"], c["Cmat"], delta_bias=p[bias],
                                 delta_softplus=True)  # (B, D, L + 1, L + 1)
        a = np.abs(alpha).mean(axis=(0, 1))  # (L + 1, L + 1): |alpha| over images and channels
        order = cell if path == "f" else cell[::-1]  # the backward path reads the flipped sequence
        tq = t_q if path == "f" else L - t_q  # the query's position in that sequence
        for s in range(L + 1):
            if order[s] >= 0:
                grid[order[s]] += 0.5 * a[tq, s]  # mean of the two directions
    return grid.reshape(h, w)


def vmamba_attention_map(model, x, query):
    from ssm_ref.vision import ss2d_attention_maps
    _, cache = model.forward(x, return_cache=True)
    tokens = cache["layers"][0]["u"]  # (B, h, w, E): the first VSS block's input
    _, merged = ss2d_attention_maps(model.layers[0], tokens, query, absolute=True)
    return np.asarray(merged, dtype=np.float64).mean(axis=0)  # (h, w)


def attention_distance(amap, query):
    """Mean token distance from ``query``, weighted by the map."""
    h, w = amap.shape
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    d = np.hypot(ii - query[0], jj - query[1])
    return float((amap * d).sum() / amap.sum())


def nonlocal_share(erf, query, patch):
    """Share of the ERF's mass outside the query token's own patch."""
    i, j = query[0] * patch, query[1] * patch
    return float(1.0 - erf[i:i + patch, j:j + patch].sum() / erf.sum())


def measure(model, model_name, x):
    from ssm_ref.vision import effective_receptive_field
    h, w = model.config.grid
    query = (h // 2, w // 2)
    erf = effective_receptive_field(model, x, normalize="max")  # (H, W), centre output token
    amap = (vim_attention_map if model_name == "vim" else vmamba_attention_map)(model, x, query)
    return {"erf": erf, "erf_nonlocal": nonlocal_share(erf, query, model.config.patch_size),
            "map": amap, "attention_distance": attention_distance(amap, query)}


def run(args):
    from ssm_ref.data import load_dataset
    from ssm_ref.vision.models import build_model

    cfg = QUICK if args.quick else FULL
    seeds = C.seeds_from(args)
    scan_fn, scan_bwd, backend = C.resolve_backend(args.backend)
    configs = [c for c in CONFIGS if c[0] in cfg.get("configs", [c[0] for c in CONFIGS])]
    results, runs, maps = {}, [], {}
    for label, model_name, kw in configs:
        acc, nonlocal0, nonlocal1, dist0, dist1 = [], [], [], [], []
        for seed in seeds:
            ds = C.as_dtype(load_dataset("digits", seed=seed))
            if "n_train" in cfg:
                ds.x_train, ds.y_train = ds.x_train[:cfg["n_train"]], ds.y_train[:cfg["n_train"]]
            model = build_model(model_name, seed=seed, scan_fn=scan_fn, scan_backward_fn=scan_bwd,
                                **cfg["model"], **kw)
            x = ds.x_test[:cfg["n_erf"]]
            before = measure(model, model_name, x)
            m = C.train_quiet(model, ds, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                              lr=cfg["lr"], weight_decay=cfg["weight_decay"], seed=seed)
            after = measure(model, model_name, x)
            acc.append(m["test_accuracy"])
            nonlocal0.append(before["erf_nonlocal"])
            nonlocal1.append(after["erf_nonlocal"])
            dist0.append(before["attention_distance"])
            dist1.append(after["attention_distance"])
            if seed == seeds[0]:
                maps[label] = {"erf_init": before["erf"], "erf_trained": after["erf"],
                               "map_init": before["map"], "map_trained": after["map"]}
            runs.append({"order": label, "seed": seed, "test_accuracy": m["test_accuracy"],
                         "erf_nonlocal_init": before["erf_nonlocal"],
                         "erf_nonlocal_trained": after["erf_nonlocal"],
                         "attention_distance_init": before["attention_distance"],
                         "attention_distance_trained": after["attention_distance"]})
            print(f"  {label:22s} seed {seed}: acc {m['test_accuracy']:.3f}, ERF non-local "
                  f"{before['erf_nonlocal']:.3f} -> {after['erf_nonlocal']:.3f}, "
                  f"attention distance "
                  f"{before['attention_distance']:.2f} -> {after['attention_distance']:.2f}",
                  flush=True)
        results[label] = {"model": model_name, "options": kw, "n_params": model.n_params(),
                          "test_accuracy": C.mean_std(acc),
                          "erf_nonlocal_init": C.mean_std(nonlocal0),
                          "erf_nonlocal_trained": C.mean_std(nonlocal1),
                          "attention_distance_init": C.mean_std(dist0),
                          "attention_distance_trained": C.mean_std(dist1),
                          "maps_seed0": {k: v.tolist() for k, v in maps[label].items()}}
    rows = [[lab, C.fmt(r["test_accuracy"]), C.fmt(r["erf_nonlocal_init"]),
             C.fmt(r["erf_nonlocal_trained"]), C.fmt(r["attention_distance_init"], 2),
             C.fmt(r["attention_distance_trained"], 2)] for lab, r in results.items()]
    text = C.table(rows, ["scan order", "digits acc", "ERF non-local (init)",
                          "ERF non-local (trained)",
                          "attn. distance (init)", "attn. distance (trained)"])
    settings = dict(cfg, seeds=seeds, configs=[{"label": a, "model": b, "options": c}
                                               for a, b, c in configs],
                    query="centre token (h // 2, w // 2)")
    return results, runs, text, settings, backend


def plot(results):
    from matplotlib.colors import LogNorm
    labels = list(results)
    fig, axes = C.new_figure(3, len(labels), figsize=(1.9 * len(labels), 6.2), squeeze=False)
    rows = (("erf_init", "ERF, init"), ("erf_trained", "ERF, trained"),
            ("map_trained", "hidden attn., trained"))
    for j, lab in enumerate(labels):
        maps = results[lab]["maps_seed0"]
        for i, (key, name) in enumerate(rows):
            ax = axes[i, j]
            m = np.asarray(maps[key])
            ax.imshow(m / m.max(), cmap="magma", norm=LogNorm(vmin=1e-3, vmax=1.0))
            if key.startswith("map"):
                h, w = m.shape
                ax.plot(w // 2, h // 2, "x", color="cyan", ms=7, mew=2)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(lab, fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle("seed 0, log colour scale (1e-3 .. 1 of the maximum): effective receptive "
                 "field of\n"
                 "the centre token (8x8 pixels); first block's hidden attention of the centre "
                 "token (4x4 tokens, cyan x)", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = C.base_parser(NAME, "Effective receptive fields and hidden-attention maps of tiny "
                                 "Vim (per scan order) and VMamba, before and after training on "
                                 "digits.")
    args = parser.parse_args(argv)
    return C.run_experiment(NAME, args, run, plot)


if __name__ == "__main__":
    main()
