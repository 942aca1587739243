"""Where a training step's time goes, part by part: the scan's kernels, the Python around
them (checks, layouts), the fused layers' kernels, and the rest of the step.

Usage (from the repository's root; about half a minute on 2 cores)::

    python benchmarks/step_breakdown.py --case tiny-f64
    python benchmarks/step_breakdown.py --case vmamba --threads 1 --out benchmarks/results

The step is ``compare_revisions.py``'s (``--passes step``): one training step of the model
whose scan the case is (tiny Vim 8x8 for ``tiny`` and ``tiny-f64``, Vim 32x32 for
``vim-f64``, VMamba 32x32 for ``vmamba``), the numba backend with the fused inner path,
BLAS on one thread, glibc's malloc keeping freed memory (``ssm_ref._malloc``, as ``ssm-ref
train`` and the other benchmarks run; without it a step whose footprint moves by a few MB
can fault in a thousand pages, chapter 11).  While ``--steps`` steps run (after
``--warmup``), the clock is read around the scan functions of ``fast.numba_cpu``, around
the two parts of their Python that take time ("checks", ``_check_structure``: the
reference's checks of shapes, dtypes and the small arrays; "layouts",
``_fitting_kernel_args``: the kernels' layouts of B and C, copies of strided inputs; in a
backward that starts from its kept forward, ``_backward_kernel_args``: the forward's
arrays, laid out again only where the backward's kernel takes another layout), and around
every launch of a compiled kernel of ``fast.numba_cpu``, ``fast.numba_fused``,
``fast.numba_norms``, ``fast.numba_cross``, ``fast.numba_projections``,
``fast.numba_linear`` and ``fast.numba_bidirectional`` (by the kernel's name).  Each
time is charged to the part it ran in, so the parts nest: a scan call holds its checks,
its layouts (which may launch a copy kernel), its kernel and its own Python (the rest of
its time: allocating the results, summing the threads' copies of the shared gradients,
the screens, the casts).  The table
gives, per part, its calls per step, the median over the steps of the time it took in each
(ms) and that as a share of the step's median; "the rest" is the step less its top-level
parts (NumPy's layers, AdamW, the Python of the models).  Medians over steps do not add up
exactly.

What is not timed here: the scan's kernels cannot be cheaper than the machine allows
(``bench_scan``'s limit), and a part's time on a shared machine moves with the machine's
phases (chapter 11, the method), so this table says where to look, and
``compare_revisions.py --passes step`` whether a change helped.

With ``--out`` it writes ``step_breakdown_<case>_cpu.json`` there.  This script is a
tool for the chapter's measurements, not part of the library.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_revisions import CASES, STEP_MODELS, training_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: the Python functions of fast.numba_cpu that are timed, by their label (``_scan`` and
#: ``_scan_backward``: the public scan functions' bodies, with and without a kept forward)
FUNCTIONS = {"_scan": "scan forward", "_scan_backward": "scan backward",
             "_check_structure": "checks", "_fitting_kernel_args": "layouts",
             "_backward_kernel_args": "layouts"}


class Clock:
    """Times charged to the path of labels they ran in, per step (see the module docstring)."""

    def __init__(self):
        self.stack = []
        self.steps = []  # per step: {path: [seconds, calls]}

    def new_step(self):
        self.steps.append(defaultdict(lambda: [0.0, 0]))

    def timed(self, label, fn):
        """``fn`` with its time charged to ``label`` under the labels running now."""
        def run(*args, **kwargs):
            self.stack.append(label)
            path = tuple(self.stack)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                self.stack.pop()
                if self.steps:
                    entry = self.steps[-1][path]
                    entry[0] += spent
                    entry[1] += 1
        return run

    def launcher(self, launch):
        """A module's ``_launch`` whose launches are charged to ``kernel <name>``."""
        def run(kernel, *args):
            name = getattr(kernel, "__name__", None) or type(kernel).__name__
            return self.timed(f"kernel {name}", launch)(kernel, *args)
        return run


@contextlib.contextmanager
def clocked(clock):
    """fast.numba_cpu's timed functions and the launches of its kernel modules replaced by
    timing ones while the block runs (restored afterwards, also on an error)."""
    from fast import (numba_bidirectional, numba_cpu, numba_cross, numba_fused, numba_linear,
                      numba_norms, numba_projections)
    saved = [(numba_cpu, name, getattr(numba_cpu, name)) for name in FUNCTIONS]
    saved += [(module, "_launch", module._launch)
              for module in (numba_cpu, numba_fused, numba_norms, numba_cross, numba_projections,
                             numba_linear, numba_bidirectional)]
    try:
        for module, name, fn in saved:
            setattr(module, name, clock.launcher(fn) if name == "_launch"
                    else clock.timed(FUNCTIONS[name], fn))
        yield clock
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


def breakdown(case, steps, warmup):
    """``(step medians in s, rows)``: each row a part's path, calls per step, median seconds
    per step and share of the step's median; the last row is the rest of the step."""
    import numpy as np
    step = training_step(case)
    for _ in range(warmup):  # compiles or loads the kernels, allocates AdamW's state
        step()
    clock = Clock()
    totals = []
    with clocked(clock):
        for _ in range(steps):
            clock.new_step()
            t0 = time.perf_counter()
            step()
            totals.append(time.perf_counter() - t0)
    step_s = float(np.median(totals))
    paths = {p for s in clock.steps for p in s}
    first = list(dict.fromkeys(p[0] for s in clock.steps for p in s))  # as the step met them
    rows = []

    def row(path, per_step, calls):
        rows.append({"path": list(path), "calls_per_step": calls,
                     "ms_per_step": 1e3 * float(np.median(per_step)),
                     "share": float(np.median(per_step)) / step_s})

    own = {}  # a part with timed parts: its own code, its time less theirs, after them
    for path in paths:
        children = [p for p in paths if len(p) == len(path) + 1 and p[:-1] == path]
        if children:
            own[path + ("its own Python",)] = [
                (s[path][0] if path in s else 0.0) - sum(s[c][0] for c in children if c in s)
                for s in clock.steps]
    order = sorted(paths | set(own), key=lambda p: (
        first.index(p[0]), tuple("\uffff" if q == "its own Python" else q for q in p)))
    for path in order:
        if path in own:
            row(path, own[path], 0.0)
        else:
            row(path, [s[path][0] if path in s else 0.0 for s in clock.steps],
                sum(s[path][1] for s in clock.steps if path in s) / steps)
    top = [sum(s[p][0] for p in s if len(p) == 1) for s in clock.steps]
    row(("the rest of the step",), [t - c for t, c in zip(totals, top)], 1.0)
    return step_s, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=list(STEP_MODELS), default="tiny-f64",
                        help="the model whose step is timed, by its scan's case in "
                             "compare_revisions.py (tiny-f64: tiny Vim 8x8, float64)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps (40)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (3)")
    parser.add_argument("--threads", type=int, default=0,
                        help="Numba threads (default: as Numba starts, all cores)")
    parser.add_argument("--out", type=Path, help="a folder for the JSON")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.threads < 0:
        parser.error(f"--steps takes a positive number, --warmup and --threads one >= 0 "
                     f"(got {args.steps}, {args.warmup}, {args.threads})")
    sys.path.insert(0, str(ROOT))
    import numba

    from fast.bench.scan import finish, machine_info, machine_line, start
    from ssm_ref._malloc import keep_freed_memory
    t_start, machine = (start(parser, args.out) if args.out
                        else (time.perf_counter(), machine_info()))
    if args.threads:
        numba.set_num_threads(args.threads)
    malloc = keep_freed_memory()  # as ssm-ref train, fast.bench.train and compare_revisions
    print(machine_line(machine), flush=True)
    print(f"malloc: {malloc}")
    step_s, rows = breakdown(args.case, args.steps, args.warmup)
    name, img, dtype = STEP_MODELS[args.case]
    print(f"{args.case}: one training step of {name} {img}x{img}, batch {CASES[args.case][0]}, "
          f"{dtype}, {numba.get_num_threads()} Numba thread(s): median {1e3 * step_s:.2f} ms "
          f"over {args.steps} steps")
    print(f"\n{'part':54s} {'calls/step':>10s} {'ms/step':>8s} {'share':>6s}")
    for r in rows:
        label = "  " * (len(r["path"]) - 1) + r["path"][-1]
        calls = f"{r['calls_per_step']:10.1f}" if r["calls_per_step"] else f"{'':10s}"
        print(f"{label:54s} {calls} {r['ms_per_step']:8.2f} "
              f"{r['share']:6.1%}")
    if args.out:
        finish({"machine": machine, "case": args.case, "model": name, "img": img,
                "dtype": dtype, "batch": CASES[args.case][0],
                "threads": numba.get_num_threads(), "steps": args.steps, "malloc": malloc,
                "step_ms": 1e3 * step_s, "rows": rows},
               args.out / f"step_breakdown_{args.case}_cpu.json", t_start)
    return rows


if __name__ == "__main__":
    main()
