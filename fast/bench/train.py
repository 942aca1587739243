"""Benchmark one training step of the tiny vision models, per scan backend.

Usage::

    python -m fast.bench.train            # full run (about 2 minutes on 2 cores)
    python -m fast.bench.train --quick    # smaller (about 20 s)
    python -m fast.bench.train --help     # every option
    ssm-ref bench --suite train --quick   # the same through the command line

Prints a table and writes ``train_cpu.json`` (with a ``gpu`` section: its
rows, or why it was skipped) and the bar chart ``train_cpu.png``
(``train_gpu.png`` too when a GPU ran) into ``--out`` (default
``benchmarks/results`` under the current directory: the committed results
when run from the repository's root).

One training step is what ``ssm_ref.train.train`` does per batch with the
defaults of ``ssm-ref train``: forward with cache, softmax cross-entropy,
backward, global gradient-norm clipping to 1, one AdamW step (lr 1e-2, weight
decay 0.05, none on the no-weight-decay parameters).  Float64, as the models
compute, or float32 with ``--dtype float32`` (the step of ``ssm-ref train
--dtype float32``; written to ``train_cpu_float32.json``); random images and
labels (seeded): a step costs the same whatever the values.  With the
``numba`` backend the Mamba and Vim blocks run the fused inner path of
``fast.numba_fused`` (as ``ssm-ref train --backend numba`` does).

What is measured, per model and image size:

* ``ref`` and ``numba`` on the CPU, with NumPy's BLAS limited to one thread
  (as ``ssm-ref train`` does: BLAS threads fight the Numba scan's threads),
  and ``numba-1t``, the same kernels on one Numba thread (on a shared machine
  a parallel kernel waits for its slowest thread: one core taken by another
  process can cost a 2-thread kernel a scheduler time slice per call);
* ``cuda`` on a real GPU only (CuPy importable, not the CUDA simulator,
  ``cupy.cuda.is_available()``): the model moved with ``model.to(cupy)``, the
  batch as CuPy arrays, the device synchronised before the clock is read;
* the **floor** on each device: the same step with a "null scan" that returns
  zero arrays of the right shapes and dtypes (on the CPU with the fused inner
  path of ``fast.numba_fused``, as the ``numba`` row runs its layers).  It is
  everything but the scan,
  so ``scan share = 1 - floor / step`` and no scan, however fast, can make
  the step faster than ``step / floor`` (Amdahl): the machine limit of this
  benchmark, measured in the same run.

Timing: ``--warmup`` steps (they compile), then ``--repeats`` timed steps.
The backends of one case take turns step by step (ref, numba, floor, ref,
...), so a change of load on the shared machine hits them alike; each
row reports the median, min and max.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import resource
import time
from pathlib import Path

import numba
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from ssm_ref._malloc import keep_freed_memory
from ssm_ref._xp import array_module
from ssm_ref.cli import (CLIError, TRAIN_DEFAULTS, OneLineParser,
                         resolve_backend)
from ssm_ref.optim import AdamW, clip_grad_norm, softmax_cross_entropy
from ssm_ref.vision import MODELS, build_model

from .._registry import attach_inner_path
from .scan import RESULTS, finish, machine_line, shown, start

DIGITS = 8  # the digits images: 8 x 8 x 1, 10 classes
CLIP_NORM = TRAIN_DEFAULTS["clip_norm"]


# ---------------------------------------------------------------------------
# the null scan: everything of a step except the scan
# ---------------------------------------------------------------------------

class NullScan:
    """A ``(scan_fn, scan_backward_fn)`` pair that only allocates zero results.

    Same signatures and return conventions as :func:`ssm_ref.selective_scan`
    and :func:`ssm_ref.selective_scan_backward`: ``y`` in ``u``'s dtype, the
    last state (B, D, N) in ``u``'s dtype (its complex partner for complex A)
    only with ``return_last_state``, and a dict of all nine gradients, each
    with its argument's shape and dtype, None for an optional argument not
    given.  Arrays are made on the inputs' array module (NumPy or CuPy).

    While ``shapes`` is a list, each forward call appends ``(B, D, L, N)``:
    what the model asks of the scan in one step.
    """

    def __init__(self):
        self.shapes = None

    def forward(self, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                delta_softplus=False, return_last_state=False, h0=None):
        xp = array_module(u)
        batch, dim, length = u.shape
        dstate = A.shape[1]
        if self.shapes is not None:
            self.shapes.append((batch, dim, length, dstate))
        y = xp.zeros(u.shape, u.dtype)  # (B, D, L)
        if not return_last_state:
            return y
        complex_a = np.issubdtype(A.dtype, np.complexfloating)
        state_dtype = np.result_type(u.dtype, np.complex64) if complex_a else u.dtype
        return y, xp.zeros((batch, dim, dstate), state_dtype)  # (B, D, N)

    def backward(self, dout, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                 delta_softplus=False, h0=None, dlast_state=None):
        xp = array_module(u)
        args = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
                "delta_bias": delta_bias, "h0": h0}
        return {k: (None if v is None else xp.zeros_like(v)) for k, v in args.items()}


# ---------------------------------------------------------------------------
# one training step, timed
# ---------------------------------------------------------------------------

def make_step(model, x, y, dtype="float64"):
    """One step of ``ssm_ref.train.train`` with the ``ssm-ref train`` defaults.

    ``dtype="float32"``: the step of ``train(..., dtype="float32")`` (the model
    already set to float32 and ``x`` float32; AdamW's state in float32).
    """
    d = TRAIN_DEFAULTS
    opt = AdamW(model.params, lr=d["lr"], weight_decay=d["weight_decay"],
                no_weight_decay=set(model.no_weight_decay()), state_dtype=dtype)

    def step():
        logits, cache = model.forward(x, return_cache=True)  # (B, K)
        loss, dlogits = softmax_cross_entropy(logits, y)  # (), (B, K)
        grads = model.backward(dlogits, cache)  # dict like params
        clip_grad_norm(grads, CLIP_NORM)
        opt.step(grads)
        return loss

    return step


def run_case(name, img, batch, backends, repeats, warmup, xp=np, sync=None, seed=0,
             fewer=None, threads=None, dtype="float64"):
    """Time one step of model ``name`` on ``img`` x ``img`` images for each backend and the floor.

    ``backends`` maps a label to ``(scan_fn, scan_backward_fn)``; the floor
    (a :class:`NullScan`) is added as ``"floor"``.  Every backend gets its own
    model (same seed) and optimiser; after ``warmup`` steps each, the
    backends take turns for ``repeats`` timed steps (``fewer``, a dict label
    -> count, stops a slow backend earlier; ``threads``, a dict label -> count,
    runs a backend's steps on that many Numba threads).  Returns one dict per
    backend.
    """
    fewer, threads = fewer or {}, threads or {}
    rng = np.random.default_rng(seed)
    x = xp.asarray(rng.standard_normal((batch, img, img, 1)).astype(dtype))  # (B, H, W, C)
    y = xp.asarray(rng.integers(0, 10, batch))  # (B,)
    null = NullScan()
    steps, info = {}, {}
    floor = (functools.partial(null.forward), functools.partial(null.backward))
    if xp is np:  # on the CPU the floor runs the layers as the numba row does: fused
        attach_inner_path(*floor)
    for label, (fwd, bwd) in {**backends, "floor": floor}.items():
        model = build_model(name, img_size=(img, img), in_chans=1, n_classes=10, seed=seed,
                            scan_fn=fwd, scan_backward_fn=bwd)
        if xp is not np:
            model.to(xp)
        if dtype != "float64":  # as train(..., dtype=): parameters and layers in dtype
            model.set_dtype(dtype)
        steps[label] = make_step(model, x, y, dtype)
        if label in threads:
            steps[label] = _on_threads(steps[label], threads[label])
        info = {"patches": math.prod(model.config.grid), "config": model.config.to_dict(),
                "n_params": int(model.n_params())}
    load = list(os.getloadavg())
    shapes = []
    for label, step in steps.items():  # compile, allocate the optimiser state
        for i in range(warmup):
            if label == "floor" and i == 0:  # record what one forward asks of the scan
                null.shapes = shapes
            step()
            null.shapes = None
        if sync:
            sync()
    times = {label: [] for label in steps}
    others = OtherLoad()
    for i in range(repeats):
        for label, step in steps.items():
            if i >= fewer.get(label, repeats):
                continue
            t0 = time.perf_counter()
            step()
            if sync:
                sync()
            times[label].append(time.perf_counter() - t0)
    case = {"model": name, "img": img, "batch": batch,
            "scan_calls_per_forward": [list(s) for s in shapes],  # (B, D, L, N) of each call
            "state_updates_per_forward": int(sum(math.prod(s) for s in shapes)),
            "load_average_at_case_start": load,
            "other_processes_cores": others.cores(),  # during the timed steps
            **info}
    rows = []
    for label, t in times.items():
        ms = np.array(t) * 1e3
        rows.append({**case, "backend": label, "warmup": warmup, "repeats": len(t),
                     "ms": float(np.median(ms)), "ms_min": float(ms.min()),
                     "ms_max": float(ms.max()), "ms_all": [float(v) for v in ms],
                     "images_per_s": batch / float(np.median(ms)) * 1e3})
    return rows


class OtherLoad:
    """How many cores other processes kept busy, on average, since this object was made.

    The machine's busy time (``/proc/stat``: user, nice, system, irq, softirq,
    steal) minus this process's CPU time (all its threads, Numba's included),
    over the wall time: 0 on an otherwise idle machine, up to the core count.
    More telling than the load average (a 1-minute mean that counts this
    process too).  None where ``/proc/stat`` is not readable.
    """

    def __init__(self):
        self.start = (self._machine_busy_s(), self._own_s(), time.perf_counter())

    @staticmethod
    def _machine_busy_s():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_s():
        t = os.times()
        return t.user + t.system

    def cores(self):
        busy0, own0, t0 = self.start
        busy1 = self._machine_busy_s()
        if busy0 is None or busy1 is None:
            return None
        wall = time.perf_counter() - t0
        return max(0.0, ((busy1 - busy0) - (self._own_s() - own0)) / wall)


def _on_threads(step, n):
    """``step`` run on ``n`` Numba threads (the setting is restored afterwards)."""
    def run():
        saved = numba.get_num_threads()
        numba.set_num_threads(n)
        try:
            return step()
        finally:
            numba.set_num_threads(saved)
    return run


def _with_floor_ratios(rows, ref_ms=None):
    """Add the floor, the scan share, the Amdahl bound and the ratio to ref to each row."""
    floor = next(r["ms"] for r in rows if r["backend"] == "floor")
    ref = ref_ms if ref_ms is not None else next(
        (r["ms"] for r in rows if r["backend"] == "ref"), None)
    for r in rows:
        r["floor_ms"] = floor
        r["step_over_floor"] = r["ms"] / floor  # the most a faster scan could still give
        r["scan_share"] = 1.0 - floor / r["ms"]
        r["speedup_vs_ref"] = ref / r["ms"] if ref is not None else None
    return rows


# ---------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------

def run_cpu(models, sizes, batch, repeats, warmup, ref_repeats, dtype="float64"):
    """All CPU rows, with BLAS on one thread."""
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        blas = [{k: lib.get(k) for k in ("internal_api", "version", "num_threads")}
                for lib in threadpool_info() if lib["user_api"] == "blas"]
        for img in sizes:
            for name in models:
                backends = {"ref": resolve_backend("ref"), "numba": resolve_backend("numba")}
                if numba.get_num_threads() > 1:  # the same kernels on one core
                    backends["numba-1t"] = backends["numba"]
                case = run_case(name, img, batch, backends, repeats, warmup,
                                fewer={"ref": ref_repeats(img)}, threads={"numba-1t": 1},
                                dtype=dtype)
                rows += _with_floor_ratios(case)
                _print_rows(case, "cpu")
    return {"blas_threads": 1, "blas": blas, "numba_threads": numba.get_num_threads(),
            "rows": rows}


def gpu_skip_reason():
    """None when a real GPU can run the ``cuda`` backend here, else why not (the
    test of ``real_gpu_available()`` in tests/conftest.py, plus the backend)."""
    from numba.core import config
    if config.ENABLE_CUDASIM or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "the CUDA simulator is on; it measures nothing about a GPU"
    try:
        import cupy
    except ImportError as exc:
        return f"CuPy is not importable: {exc}"
    try:
        if not cupy.cuda.is_available():
            return "cupy.cuda.is_available() is False: no CUDA device here"
    except Exception as exc:  # CUDARuntimeError without a driver
        return f"cupy.cuda.is_available() failed: {type(exc).__name__}: {exc}"
    try:
        resolve_backend("cuda")
    except CLIError as exc:
        return str(exc)
    return None


def run_gpu(models, sizes, batch, repeats, warmup, cpu_rows, dtype="float64"):
    """The ``cuda`` backend and the GPU floor; ``{"skipped": why}`` without a real GPU."""
    reason = gpu_skip_reason()
    if reason is not None:
        return {"skipped": reason}
    import cupy
    sync = cupy.cuda.Device().synchronize
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    rows = []
    for img in sizes:
        for name in models:
            backends = {"cuda": resolve_backend("cuda")}
            case = run_case(name, img, batch, backends, repeats, warmup, xp=cupy, sync=sync,
                            dtype=dtype)
            cpu = {r["backend"]: r["ms"] for r in cpu_rows
                   if r["model"] == name and r["img"] == img}
            case = _with_floor_ratios(case, ref_ms=cpu.get("ref"))  # vs the CPU reference
            for r in case:
                r["speedup_vs_cpu_numba"] = cpu["numba"] / r["ms"] if "numba" in cpu else None
            rows += case
            _print_rows(case, "gpu")
    return {"device": device, "cupy": cupy.__version__,
            "vs_ref": "the CPU reference of the same model and size", "rows": rows}


# ---------------------------------------------------------------------------
# table and plot
# ---------------------------------------------------------------------------

#: the model column's width: the longest name in the registry (efficientvmamba)
_MODEL_W = max(map(len, MODELS))
HEADER = (f"{'device':6s} {'model':{_MODEL_W}s} {'image':>7s} {'backend':8s} {'ms/step':>9s} "
          f"{'[min - max]':>19s} {'img/s':>8s} {'vs ref':>7s} {'/ floor':>8s} {'scan share':>10s}"
          f" {'others':>6s}")


def _print_rows(rows, device):
    for r in rows:
        vs = f"{r['speedup_vs_ref']:6.1f}x" if r["speedup_vs_ref"] else f"{'-':>7s}"
        print(f"{device:6s} {r['model']:{_MODEL_W}s} {r['img']:3d}x{r['img']:<3d} "
              f"{r['backend']:8s} {r['ms']:9.1f} [{r['ms_min']:8.1f} -{r['ms_max']:8.1f}] "
              f"{r['images_per_s']:8.0f} {vs} {r['step_over_floor']:7.2f}x "
              f"{r['scan_share']:10.0%} {_cores(r['other_processes_cores'])}", flush=True)


def _cores(x):
    return f"{'?':>6s}" if x is None else f"{x:6.2f}"


def plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r["model"], r["img"]) for r in rows))
    patches = {(r["model"], r["img"]): r["patches"] for r in rows}
    labels = [b for b in dict.fromkeys(r["backend"] for r in rows) if b != "floor"]
    colors = {"ref": "tab:gray", "numba": "tab:blue", "numba-1t": "lightskyblue",
              "cuda": "tab:green"}
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(cases), 4.2))
    for i, case in enumerate(cases):
        by = {r["backend"]: r for r in rows if (r["model"], r["img"]) == case}
        for j, label in enumerate(labels):
            r = by[label]
            xpos = i - 0.4 + width * (j + 0.5)
            ax.bar(xpos, r["ms"], width, color=colors.get(label, "tab:orange"),
                   label=label if i == 0 else None)
            ax.errorbar(xpos, r["ms"], yerr=[[r["ms"] - r["ms_min"]], [r["ms_max"] - r["ms"]]],
                        color="k", lw=0.8, capsize=2)
            ax.text(xpos, r["ms_max"] * 1.1, f"{r['ms']:.0f}" if r["ms"] >= 10 else
                    f"{r['ms']:.2g}", ha="center", fontsize=7)
        ax.hlines(by["floor"]["ms"], i - 0.45, i + 0.45, color="k", lw=2,
                  label="floor: null scan (the limit)" if i == 0 else None)
    ax.set_xticks(range(len(cases)),
                  [f"{m}\n{s}x{s}, {patches[m, s]} patches" for m, s in cases], fontsize=8)
    ax.set(yscale="log", ylabel="ms per training step (median; bars: min to max)", title=title)
    floor = min(r["ms"] for r in rows if r["backend"] == "floor")
    ax.set_ylim(bottom=floor / 2, top=ax.get_ylim()[1] * 1.5)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(labels) + 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return shown(path)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def _models(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: choose a comma-separated list of {', '.join(MODELS)}")
    return names


def _nonnegative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def main(argv=None, prog=None):
    """Run the benchmark with command-line arguments ``argv`` (``sys.argv[1:]`` when None);
    ``prog`` names the command in its help and errors.  Returns the result written."""
    parser = OneLineParser(
        prog=prog or "python -m fast.bench.train",
        description=__doc__.split("\n\n")[0],
        epilog="Rows: ref, numba (all Numba threads), numba-1t (one Numba thread), cuda "
               "(real GPU only), floor (a null scan that returns zeros: the step without the "
               "scan; no scan can make the step faster than it).  Outputs: OUT/train_cpu.json (GPU section "
               "inside) and OUT/train_cpu.png (+ train_gpu.png after a GPU run); --quick "
               "writes train_cpu_quick.* instead.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats (3) and warm-up steps (1), larger image 16x16 "
                             "instead of 32x32 (under a minute); writes *_quick.* files")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per backend (default 7, 3 with --quick)")
    parser.add_argument("--ref-repeats", type=int, default=None,
                        help="timed steps of the slow ref backend at the larger image "
                             "(default: --repeats); the digits size always uses --repeats")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps per backend first, which compile the kernels "
                             "(default 2, 1 with --quick)")
    parser.add_argument("--batch", type=int, default=TRAIN_DEFAULTS["batch_size"],
                        help="images per step (default %(default)s, as 'ssm-ref train')")
    parser.add_argument("--img", type=_nonnegative_int, default=None,
                        help="side of the larger square images, besides the 8x8 digits "
                             "(patch 2: (img/2)^2 patches; default 32, 16 with --quick; "
                             "0 runs the digits size only)")
    parser.add_argument("--models", type=_models, default=["vim", "vmamba"],
                        help="comma-separated models of ssm_ref.vision.MODELS "
                             "(default vim,vmamba)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="directory for the JSON and PNG (default: benchmarks/results under "
                             "the current directory)")
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"),
                        help="precision of the step (float32: 'ssm-ref train --dtype float32'; "
                             "results go to train_cpu_float32.json)")
    parser.add_argument("--no-plot", action="store_true", help="write the JSON only")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc at its defaults, which hand large freed "
                             "blocks back to the OS at every step (by default the run keeps "
                             "them, as 'ssm-ref train' does: see ssm_ref/_malloc.py)")
    args = parser.parse_args(argv)
    malloc = ("default (--default-malloc)" if args.default_malloc
              else keep_freed_memory())
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    img = args.img if args.img is not None else (16 if args.quick else 32)
    ref_repeats = args.ref_repeats if args.ref_repeats is not None else repeats
    if repeats < 1 or warmup < 1 or args.batch < 1 or not 1 <= ref_repeats <= repeats:
        parser.error("--repeats, --warmup and --batch must be >= 1, "
                     "1 <= --ref-repeats <= --repeats")
    if img % 2:
        parser.error(f"--img {img} must be even (patch size 2)")
    sizes = [DIGITS] + ([img] if img and img != DIGITS else [])
    t_start, machine = start(parser, args.out)
    print(machine_line(machine))
    print(f"one training step, batch {args.batch}, {args.dtype}; median of {repeats} steps after "
          f"{warmup} warm-up steps; BLAS on 1 thread; freed memory {malloc}\n")
    print(HEADER)
    cpu = run_cpu(args.models, sizes, args.batch, repeats, warmup,
                  ref_repeats=lambda s: repeats if s == DIGITS else ref_repeats, dtype=args.dtype)
    gpu = run_gpu(args.models, sizes, args.batch, repeats, warmup, cpu["rows"], args.dtype)
    if "skipped" in gpu:
        print(f"gpu    skipped: {gpu['skipped']}")
    machine["load_average_end"] = list(os.getloadavg())
    usage = resource.getrusage(resource.RUSAGE_SELF)  # system time: page faults, thread waits
    machine["cpu_time_s"] = {"user": usage.ru_utime, "system": usage.ru_stime}

    result = {
        "machine": machine, "quick": args.quick,
        "settings": {"batch": args.batch, "image_sizes": sizes, "models": args.models,
                     "dtype": args.dtype, "repeats": repeats, "ref_repeats_large_image":
                     ref_repeats, "warmup": warmup, "lr": TRAIN_DEFAULTS["lr"],
                     "weight_decay": TRAIN_DEFAULTS["weight_decay"], "clip_norm": CLIP_NORM,
                     "malloc": malloc},
        "step": "forward(return_cache) + softmax_cross_entropy + backward + clip_grad_norm + "
                "AdamW.step, as ssm_ref.train.train",
        "timing": "median (min, max) wall time over the repeats after the warm-up steps; the "
                  "backends of a case take turns step by step",
        "floor": "the same step with a null scan (zero results of the right shapes): "
                 "everything but the scan, the limit of any faster scan (step / floor)",
        "cpu": cpu, "gpu": gpu}
    tag = ("cpu_quick" if args.quick else "cpu") + ("" if args.dtype == "float64" else "_float32")
    if not args.no_plot:
        result["plots"] = [plot(cpu["rows"], args.out / f"train_{tag}.png",
                                f"One training step on the CPU (batch {args.batch}, {args.dtype})")]
        if "rows" in gpu:
            result["plots"].append(plot(
                gpu["rows"], args.out / f"train_{tag.replace('cpu', 'gpu')}.png",
                f"One training step on {gpu['device']} (batch {args.batch})"))
    finish(result, args.out / f"train_{tag}.json", t_start)
    return result


if __name__ == "__main__":
    main()
