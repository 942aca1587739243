"""What the experiment scripts share: threads, backend, seeds, statistics, tables, JSON, figures.

Glossary
--------
seed     one independent repetition: it seeds the model initialisation, the data
         split / generation and the batch order (as ``ssm-ref train --seed S`` does)
run      one (configuration, seed) pair: a trained model and its numbers
summary  mean ± std over the seeds of one configuration (std with ddof=1, the
         sample standard deviation; 0 for a single seed)

Every script in this folder imports this module and has the same shape:
``main(argv=None) -> dict`` parses ``--quick`` (seconds, for the tests) or the
full mode and hands over to :func:`run_experiment`, which runs, prints a
table, writes ``<out>/<name>.json`` and ``<out>/<name>.png`` and returns the
JSON payload.  ``<out>`` defaults to ``experiments/results``.

Why BLAS is limited to one thread: on a machine whose cores are shared,
OpenBLAS's worker threads spin while waiting for each other; the small matrix
products of the tiny models then ran 5-15x slower (measured: a Vim training
step went from 0.47 s to 0.09 s at batch 64 with one BLAS thread).  The
selective scan itself runs on Numba's threads.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from ssm_ref.train import to_jsonable

HERE = Path(__file__).resolve().parent
#: Where the committed results live.
RESULTS_DIR = HERE / "results"


# --------------------------------------------------------------------------- environment
def limit_blas_threads(n=1):
    """Limit BLAS (and OpenMP) to ``n`` threads for this process; returns the limiter or None."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl comes with scikit-learn; without it, leave BLAS alone
        return None
    return threadpool_limits(limits=n)


def resolve_backend(name):
    """``(scan_fn, scan_backward_fn, name)`` for ``"ref"``, ``"numba"`` or ``"auto"``.

    ``"auto"`` is ``"numba"`` when the ``fast`` package can run it here and
    ``"ref"`` otherwise (the choice is recorded in every result file, so a
    slower fallback never hides).  An explicit name that cannot run raises.
    """
    from ssm_ref.cli import CLIError
    from ssm_ref.cli import resolve_backend as cli_resolve

    if name == "auto":
        try:
            fwd, bwd = cli_resolve("numba")
            return fwd, bwd, "numba"
        except CLIError:
            fwd, bwd = cli_resolve("ref")
            return fwd, bwd, "ref"
    try:
        fwd, bwd = cli_resolve(name)
    except CLIError as exc:
        raise SystemExit(f"error: {exc}") from exc
    return fwd, bwd, name


def machine_info(backend):
    """Where the numbers were measured (written into every result file)."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "backend": backend,
        "blas_threads": 1,
    }
    try:
        import numba
        info["numba"] = numba.__version__
        info["numba_threads"] = int(numba.get_num_threads())
    except ImportError:
        pass
    try:
        with open("/proc/loadavg") as fh:  # other work on the machine slows the timings
            info["load_average_at_start"] = float(fh.read().split()[0])
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------- command line
def base_parser(name, description):
    """The options every experiment has: --quick, --out, --seeds, --backend."""
    p = argparse.ArgumentParser(prog=f"python experiments/{name}.py", description=description)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes that run in seconds (used by the tests); "
                        "the numbers mean little")
    p.add_argument("--out", default=str(RESULTS_DIR), metavar="DIR",
                   help="where <name>.json and <name>.png are written")
    p.add_argument("--seeds", type=int, default=None, metavar="S",
                   help="number of seeds (0..S-1); default 3, or 1 with --quick")
    p.add_argument("--backend", default="auto", choices=("auto", "ref", "numba"),
                   help="selective scan: numba (compiled) when available, else the NumPy reference")
    return p


def seeds_from(args):
    n = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if n < 1:
        raise SystemExit(f"error: --seeds {n} must be at least 1")
    return list(range(n))


# --------------------------------------------------------------------------- statistics
def mean_std(values):
    """``{"mean", "std", "n", "values"}`` of a list of numbers (std: ddof=1, 0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "n": int(v.size), "values": [float(a) for a in v]}


def fmt(stat, digits=3, scale=1.0):
    """``"0.953 ± 0.012"`` from a :func:`mean_std` dict."""
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def table(rows, headers):
    """A plain-text table (also valid Markdown) as a string."""
    cols = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line([str(c) for c in r]) for r in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------- training
def train_quiet(model, dataset, *, epochs, batch_size, lr, seed, weight_decay=0.05):
    """Train with :func:`ssm_ref.train.train` (no files, no progress bar); metrics dict."""
    from ssm_ref.train import train
    return train(model, dataset, epochs=epochs, batch_size=batch_size, lr=lr,
                 weight_decay=weight_decay, seed=seed, out_dir=None, progress=False, plot=False)


def matched_width(name, target, depth, d_state):
    """``(embed_dim, n_params)``: the even width (4..160) closest to ``target`` parameters."""
    from ssm_ref.vision.models import build_model
    best = None
    for E in range(4, 161, 2):
        kw = {"embed_dim": E, "depth": depth}
        if name not in ("attention", "cnn"):
            kw["d_state"] = d_state
        n = build_model(name, **kw).n_params()
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (E, n)
    return best


def as_dtype(dataset, dtype=np.float64):
    """Cast a data set's images to the models' parameter dtype (float64 by default)."""
    dataset.x_train = dataset.x_train.astype(dtype)
    dataset.x_test = dataset.x_test.astype(dtype)
    return dataset


# --------------------------------------------------------------------------- output
def write_results(name, out_dir, payload, fig=None):
    """Write ``<out_dir>/<name>.json`` (and ``<name>.png`` from ``fig``); returns the payload.

    Adds ``experiment``, ``command`` (how to reproduce), ``created`` and
    ``figure`` to the payload.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    quick = payload.get("quick", False)
    payload.setdefault("experiment", name)
    payload["command"] = f"python experiments/{name}.py" + (" --quick" if quick else "")
    payload["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if fig is not None:
        png = out_dir / f"{name}.png"
        fig.savefig(png, dpi=110, bbox_inches="tight")
        payload["figure"] = png.name
        import matplotlib.pyplot as plt
        plt.close(fig)
    path = out_dir / f"{name}.json"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(to_jsonable(payload, finite=True), fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)
    return payload


def run_experiment(name, args, run, plot):
    """The body of every script's ``main``: run, print the table(s), write the results.

    ``run(args)`` returns ``(results, runs, tables, settings, backend)``, where
    ``tables`` is one table (a string, stored as ``"table"``) or a dict
    name -> table (stored as ``"tables"``, printed one after the other);
    ``plot(results)`` gives the figure.  BLAS is limited to one thread first.
    Returns the payload written to ``<args.out>/<name>.json``.
    """
    limit_blas_threads(1)
    with Timer() as t:
        results, runs, tables, settings, backend = run(args)
    one_table = isinstance(tables, str)
    print(tables if one_table else "\n\n".join(tables.values()))
    print(f"({t.s:.0f} s in total, backend {backend})")
    payload = {"quick": args.quick, "settings": settings, "machine": machine_info(backend),
               "results": results, "runs": runs, ("table" if one_table else "tables"): tables,
               "wall_time_s": t.s}
    return write_results(name, args.out, payload, plot(results))


def new_figure(*args, **kwargs):
    """``plt.subplots`` on the Agg backend (scripts run without a display)."""
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(*args, **kwargs)


class Timer:
    """``with Timer() as t: ...`` then ``t.s``: seconds of wall time."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0
        return False
