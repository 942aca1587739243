"""The scan's time in the working tree against a committed revision, side by side.

Usage (from the repository's root; a few minutes on 2 cores)::

    python benchmarks/compare_revisions.py HEAD~1
    python benchmarks/compare_revisions.py main --cases tiny vmamba --threads 1 --rounds 9
    python benchmarks/compare_revisions.py main --cases tiny-f64 --passes step

Before a kernel change is kept, its gain has to stand out from the spread of single
runs.  This runs the library as committed at the revision and as it is in the working
tree, each a copy in its own folder with its own Numba cache.  In each round each version
gets a new process (``benchmarks/_trees.py``'s ``Server``); once both have compiled or
loaded the case, they take ``--turns`` turns, each timing ``--repeats`` calls (their
median), the one that goes first alternating.  It prints the median of the rounds'
medians, their range, the ratio of the two medians and the median of the rounds' own
ratios (revision / working tree: above 1, the working tree is faster).

The rounds' own ratios are the figure to read on a shared machine, for two reasons seen
on the virtual machines of chapter 11.  The speed of the whole CPU changes in phases of
a few seconds (the exp + FMA limit of the scan benchmark, which only computes, moved
between 4.6 and 2.3 G/s within a minute): two measurements a second apart, as a round's
turns are, share the phase more often than two processes started one after the other.
And one process can stay faster or slower than another running the same code (identical
versions kept in two processes for all rounds measured a ratio of 1.26, 0.97 to 1.36, for
the headline backward on one thread, whose working set nearly fills the level-2 cache: a
guess is where its memory landed), so each round starts new ones.

The cases are the scans that the library's users run most (``fast.selective_scan`` and
``fast.selective_scan_backward`` with ``backend="numba"``, float32 unless said):

* ``headline``: B = 1, D = 1536, L = 1024, N = 16, variable B and C, D, z, delta_bias and
  softplus (chapter 11's headline size);
* ``vmamba``: VMamba 32x32's scan in a training step, B = 64, D = 192 (4 directions x 48
  channels, B and C per direction), L = 256, N = 8, no z;
* ``tiny``: tiny Vim 8x8's, B = 64, D = 48, L = 17, N = 8 (``ssm-ref train``'s default
  model);
* ``vim-f64``: tiny Vim 32x32's in float64, the models' default dtype, B = 64, D = 48,
  L = 257, N = 8 (the pair kernels of ``fast.numba_pairs``).  Without a float64 case a
  change that made the float64 backward twice as slow went unseen for a session
  (chapter 11, "Two passes over a row instead of four");
* ``tiny-f64``: tiny Vim 8x8's in float64, the scan of the default training step
  (``ssm-ref train``; the pair kernels);
* ``vmamba-f64``: VMamba 32x32's in float64, the dtype of ``fast.bench.train``'s
  VMamba row (the pair kernels); ``plainmamba-f64``: PlainMamba 32x32's, the same shapes
  (its four snakes as four groups of B and C);
* ``headline-f64``: the headline in float64, where the row kernels run (no tiles; N = 16,
  no pairs);
* ``long-16`` and ``long-64``: rows too long for the row-by-row kernels, B = 1, D = 256,
  L = 65536, N = 16 and L = 16384, N = 64, variable B and C with z (the kernels in time
  blocks: chapter 11, "Throughput against L and N").

``--passes kept`` times the scan's backward as a training step runs it: from a forward
kept for it (``fast.numba_cpu.selective_scan_for_backward`` once, then
``selective_scan_backward_saved``; the revision must have them, from ``61bd6a7`` on).

``--passes step`` times one training step instead (``fast.bench.train``'s: forward,
loss, backward, gradient clipping, AdamW; the numba backend with the fused inner path,
BLAS on one thread) of the model each case's scan comes from: tiny Vim 8x8 for ``tiny``
(float32) and ``tiny-f64``, tiny Vim 32x32 for ``vim-f64``, VMamba 32x32 for ``vmamba``
and ``vmamba-f64``, PlainMamba 32x32 for ``plainmamba-f64``; batch 64.  A change outside the scan (the convolution, the checks, the layouts) is judged
there, paired like a kernel change.

With ``--out`` it writes ``compare_revisions_cpu.json`` there (``--name``: another file
name, one per comparison the book quotes), the revision recorded as its commit's hash.
This script is a tool for
the chapter's measurements, not part of the library.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _trees import ROOT, Server, check_not_checkout, commit_of, copy_packages  # noqa: E402

#: (batch, dim, length, dstate, groups of B and C or None for variable B and C with z, dtype)
CASES = {"headline": (1, 1536, 1024, 16, None, "float32"),
         "vmamba": (64, 192, 256, 8, 4, "float32"),
         "tiny": (64, 48, 17, 8, None, "float32"),
         "vim-f64": (64, 48, 257, 8, None, "float64"),
         "tiny-f64": (64, 48, 17, 8, None, "float64"),
         "vmamba-f64": (64, 192, 256, 8, 4, "float64"),
         "plainmamba-f64": (64, 192, 256, 8, 4, "float64"),
         "headline-f64": (1, 1536, 1024, 16, None, "float64"),
         "long-16": (1, 256, 65536, 16, None, "float32"),
         "long-64": (1, 256, 16384, 64, None, "float32")}
#: timed calls per run of each case by default: about half a second's worth
REPEATS = {"headline": 21, "vmamba": 15, "tiny": 201, "vim-f64": 21, "tiny-f64": 201,
           "vmamba-f64": 9, "plainmamba-f64": 9, "headline-f64": 11, "long-16": 5, "long-64": 5}
PASSES = ("forward", "backward")
#: the training step each case's scan is taken from, the third pass ("step"; not in PASSES,
#: which are the scan's): model, side of the square images, dtype (batch: the case's B)
STEP_MODELS = {"tiny": ("vim", 8, "float32"), "tiny-f64": ("vim", 8, "float64"),
               "vim-f64": ("vim", 32, "float64"), "vmamba": ("vmamba", 32, "float32"),
               "vmamba-f64": ("vmamba", 32, "float64"),
               "plainmamba-f64": ("plainmamba", 32, "float64")}
#: timed steps per run: half a second's worth or more on 2 cores
STEP_REPEATS = {"tiny": 35, "tiny-f64": 17, "vim-f64": 3, "vmamba": 3, "vmamba-f64": 1,
                "plainmamba-f64": 1}


def inputs(case):
    """The arguments of the case's scan (in its dtype), and a gradient of its output."""
    import numpy as np

    from fast.bench.scan import make_inputs
    batch, dim, length, dstate, groups, dtype = CASES[case]
    kw = make_inputs(batch, dim, length, dstate, np.dtype(dtype))
    if groups is not None:  # VMamba: B and C per direction, no gate
        del kw["z"]
        kw["B"], kw["C"] = (np.random.default_rng(2 + i).standard_normal(
            (batch, groups, dstate, length)).astype(dtype) for i in range(2))
    dout = np.random.default_rng(1).standard_normal(kw["u"].shape).astype(dtype)
    return kw, dout


def case_call(case, pass_name):
    """The case's pass (``fast.selective_scan`` or ``fast.selective_scan_backward``,
    ``backend="numba"``; ``"kept"``, the backward from a kept forward; or ``"step"``,
    :func:`training_step`) as a function of no arguments, its inputs made once."""
    import fast
    if pass_name == "step":
        return training_step(case)
    kw, dout = inputs(case)
    if pass_name == "forward":
        return lambda: fast.selective_scan(**kw, backend="numba")
    if pass_name == "kept":
        from fast import numba_cpu
        saved = numba_cpu.selective_scan_for_backward(**kw)[2]
        return lambda: numba_cpu.selective_scan_backward_saved(dout, saved)
    return lambda: fast.selective_scan_backward(dout, **kw, backend="numba")


def training_step(case):
    """One training step (``fast.bench.train.make_step``: forward, loss, backward, clipping,
    AdamW) of the model whose scan the case is, with the numba backend (the fused inner
    path) and BLAS on one thread for the rest of the process, as ``ssm-ref train`` and
    ``fast.bench.train`` run it; random images and labels, seeded."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from fast.bench.train import make_step
    from ssm_ref.cli import resolve_backend
    from ssm_ref.vision import build_model
    if case not in STEP_MODELS:
        raise ValueError(f"case {case!r} has no training step; the cases with one: "
                         f"{', '.join(STEP_MODELS)}")
    name, img, dtype = STEP_MODELS[case]
    batch = CASES[case][0]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, img, img, 1)).astype(dtype)  # (B, H, W, C)
    y = rng.integers(0, 10, batch)  # (B,)
    fwd, bwd = resolve_backend("numba")
    model = build_model(name, img_size=(img, img), in_chans=1, n_classes=10, seed=0,
                        scan_fn=fwd, scan_backward_fn=bwd)
    if dtype != "float64":
        model.set_dtype(dtype)
    threadpool_limits(limits=1, user_api="blas")  # called, not entered: for good
    return make_step(model, x, y, dtype)


def serve(case, pass_name, threads, repeats, lines=sys.stdin, out=sys.stdout,
          check=check_not_checkout):
    """A version's process: the case's pass made ready (compiled or loaded, run once) and
    "ready" printed, then for each line of ``lines`` the median time (µs) of ``repeats``
    calls, one line of ``out``.  ``check`` stops a process that imported the checkout's
    ``fast`` instead of its copy."""
    import numba

    import fast
    from fast.bench.scan import median_time
    from ssm_ref._malloc import keep_freed_memory
    check(fast)
    keep_freed_memory()
    numba.set_num_threads(threads)
    call = case_call(case, pass_name)
    call()
    print("ready", file=out, flush=True)
    for _ in lines:
        print(f"{1e6 * median_time(call, repeats):.1f}", file=out, flush=True)


def paired(times):
    """The rounds' own ratios (revision / working tree) of a case's times ``{"rev": [...],
    "tree": [...]}``: their median, smallest and largest."""
    import numpy as np
    ratios = np.asarray(times["rev"]) / np.asarray(times["tree"])
    return float(np.median(ratios)), float(ratios.min()), float(ratios.max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare the working tree with")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--passes", nargs="+", choices=PASSES + ("kept", "step"),
                        default=list(PASSES),
                        help="forward, backward (the scan's; both by default), kept (the "
                             "backward from a kept forward) and step (one training step of "
                             "the case's model: tiny, tiny-f64, vim-f64, vmamba)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2],
                        help="Numba thread counts (1 2)")
    parser.add_argument("--rounds", type=int, default=9,
                        help="rounds: a new process per version and case in each (9)")
    parser.add_argument("--turns", type=int, default=4,
                        help="turns of the two processes of a round (4)")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed calls per run (default: about half a second's worth)")
    parser.add_argument("--out", type=Path, help="a folder for the JSON")
    parser.add_argument("--name", default="compare_revisions_cpu.json",
                        help="the JSON's file name in --out (compare_revisions_cpu.json): one "
                             "per comparison the book quotes")
    parser.add_argument("--serve", nargs=4, metavar=("CASE", "PASS", "THREADS", "REPEATS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        case, pass_name, threads, repeats = args.serve
        serve(case, pass_name, int(threads), int(repeats))
        return None
    if Path(args.name).name != args.name or not args.name.endswith(".json"):
        parser.error(f"--name takes a file name ending in .json, not {args.name!r}")
    if args.rounds < 1 or args.turns < 1 or args.repeats < 0 or min(args.threads) < 1:
        parser.error(f"--rounds, --turns and --threads take positive numbers, --repeats one "
                     f">= 0 (got {args.rounds}, {args.turns}, {args.threads}, {args.repeats})")
    commit = commit_of(args.rev)  # the JSON's "rev": a name like HEAD moves on
    sys.path.insert(0, str(ROOT))  # the main process reads the checkout's fast.bench

    import numpy as np

    from fast.bench.scan import finish, machine_info, machine_line, start, updates
    t_start, machine = (start(parser, args.out) if args.out
                        else (time.perf_counter(), machine_info()))
    print(machine_line(machine), flush=True)
    runs = [(case, p, th) for case in args.cases for p in args.passes for th in args.threads
            if p != "step" or case in STEP_MODELS]
    if not runs:
        parser.error(f"--passes step takes a case with a training step: "
                     f"{', '.join(STEP_MODELS)} (got {', '.join(args.cases)})")
    times = {run: {"rev": [], "tree": []} for run in runs}
    script = Path(__file__).resolve()
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"rev": copy_packages(Path(scratch) / "rev", commit),
                 "tree": copy_packages(Path(scratch) / "tree")}
        for rnd in range(args.rounds):
            for run in runs:
                case, pass_name, threads = run
                repeats = args.repeats or (STEP_REPEATS if pass_name == "step"
                                           else REPEATS)[case]
                turns = {"rev": [], "tree": []}
                with contextlib.ExitStack() as stack:
                    servers = {version: stack.enter_context(Server(
                        tree, script, args.rev, "--serve", case, pass_name, threads, repeats))
                        for version, tree in trees.items()}
                    for server in servers.values():  # both compiled or loaded: nothing else runs
                        server.wait("ready")
                    for turn in range(args.turns):
                        for version in ("rev", "tree") if turn % 2 == 0 else ("tree", "rev"):
                            turns[version].append(servers[version].ask())
                for version, us in turns.items():
                    times[run][version].append(float(np.median(us)))
                print(f"round {rnd + 1}: {case:8s} {pass_name:8s} {threads} thread(s): "
                      f"{args.rev} {times[run]['rev'][-1]:9.0f} µs, working tree "
                      f"{times[run]['tree'][-1]:9.0f} µs", flush=True)
    print(f"\nmedians of the rounds' medians in µs (their range); ratio: {args.rev} / "
          f"working tree, of the two medians and the median of the rounds' own (their range)")
    print(f"{'case':9s} {'pass':9s} {'threads':>7s} {args.rev:>24s} {'working tree':>24s}"
          f" {'ratio':>6s} {'rounds' + chr(39) + ' own':>18s} {'G updates/s':>12s}")
    rows = []
    for (case, pass_name, threads), t in times.items():
        rev_us, tree_us = float(np.median(t["rev"])), float(np.median(t["tree"]))
        own, own_lo, own_hi = paired(t)
        batch, dim, length, dstate, _, _ = CASES[case]
        rate = ("-" if pass_name == "step"  # a step is more than the scan: no rate
                else f"{updates(batch, dim, length, dstate) / (tree_us * 1e-6) / 1e9:.2f}")
        print(f"{case:9s} {pass_name:9s} {threads:7d} "
              f"{rev_us:9.0f} ({min(t['rev']):6.0f}-{max(t['rev']):6.0f}) "
              f"{tree_us:9.0f} ({min(t['tree']):6.0f}-{max(t['tree']):6.0f}) "
              f"{rev_us / tree_us:6.2f} {own:6.2f} ({own_lo:4.2f}-{own_hi:4.2f}) {rate:>12s}")
        rows.append({"case": case, "pass": pass_name, "threads": threads,
                     "shape": dict(zip(("batch", "dim", "length", "dstate", "groups",
                                        "dtype"), CASES[case])),
                     "rev_us": t["rev"], "tree_us": t["tree"], "ratio": rev_us / tree_us,
                     "paired_ratio": own, "paired_range": [own_lo, own_hi]})
    if args.out:
        finish({"machine": machine, "rev": commit, "rounds": args.rounds, "turns": args.turns,
                "rows": rows},
               args.out / args.name, t_start)
    return rows


if __name__ == "__main__":
    main()
