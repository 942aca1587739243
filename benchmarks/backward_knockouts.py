"""Where the tile backward's time goes: parts of it left out, timed against the whole.

Usage (from the repository's root; about seven minutes on 2 cores)::

    python benchmarks/backward_knockouts.py            # writes results/backward_knockouts_cpu.json
    python benchmarks/backward_knockouts.py --rounds 5 --out /tmp

Chapter 11 ("Not the cache: the same work with everything in level 2") quotes
the JSON.  The headline's work, D L = 1536 x 1024 with N = 16 in float32
(variable B and C, with D, z, delta_bias and softplus), is run as two shapes:
L = 1024 (D = 1536) and L = 64 (D = 24576), where a tile's records and lanes
(four (L, N, 16) float32 arrays, 256 KB) stay in the level-2 cache.  On one
thread, for each shape it times

* ``rows``: ``fast.selective_scan_backward`` with the channel tiles off (what the
  library runs at the headline size);
* ``tiles``: the same with the tile kernel ``fast.numba_tiles.bwd_tiles`` forced on
  at both shapes (the library runs it only while its records fit
  ``BWD_TILE_BYTES``);
* variants of the tile kernel with a part left out or moved, each a WRONG result,
  timed only: ``no lanes`` (the per-update sums into the lanes of dB and dC),
  ``no reverse sweep``, ``records in one row`` and ``lanes in one row`` (the same
  stores, all into one row of the array, which stays in the level-1 cache);
* ``no sweeps``: both sweeps left out: what the backward spends around them (the
  per-row passes, softplus, sigmoid(z), the transposes, the lanes' sums);
* ``reverse sweep in LLVM IR`` and ``both sweeps in LLVM IR``: the tile kernel with
  its sweeps replaced by ``benchmarks/_sweeps_ir.py``, which keeps h, dLoss/dh and the
  dA sum of four (or, in the forward sweep, eight) states in registers through the loop
  over time: the one direction left that removes memory operations rather than moving
  them;
* ``forward``: ``fast.selective_scan`` with the tiles on, for the ratio, and the same
  with its sweep left out.

``tiles`` and the LLVM IR variants are first checked against the row kernels on a
small case (in their first round).  ``--only WORD ...`` runs the variants whose names
contain one of the words (a quick look).

Each variant is a copy of ``fast/`` and ``ssm_ref/`` in a temporary folder with
``fast/numba_tiles.py`` edited (every edit must match the source before its
kernels for short rows, which neither shape runs, exactly once, or the script
stops), run in its own process with its own Numba cache, in
rounds that take turns.  The JSON keeps every round's median.  This script is
the evidence for the chapter, not part of the library.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _trees import ROOT, check_not_checkout, copy_packages, run_in  # noqa: E402

if "--worker" not in sys.argv:  # a worker imports the variant's copy (its PYTHONPATH)
    sys.path.insert(0, str(ROOT))

SHAPES = {"L=1024": (1536, 1024), "L=64": (24576, 64)}

#: the variants: (pass, tiles on, edits of fast/numba_tiles.py as (old, new) pairs)
_RECORDS_ONE_ROW = [
    ("    abar[tt, nn, jj] = e\n    ah[tt, nn, jj] = ahv",
     "    abar[0, nn, jj] = e\n    ah[0, nn, jj] = ahv"),
    ("    ga = gn * ah[tt, nn, jj]", "    ga = gn * ah[0, nn, jj]"),
    ("    g[nn, jj] = gn * abar[tt, nn, jj]", "    g[nn, jj] = gn * abar[0, nn, jj]"),
]
_REVERSE_CALL = ("            _tile_bwd_reverse(L, N, dt, bu, dy, a, g, sdA, abar, ah, dBl, pA, "
                 "pB, B_row, C_row)\n")  # the kernel's call of the reverse sweep
_FORWARD_CALL = ("                _tile_bwd_forward(L, N, dt, bu, dy, a2, h, y, abar, ah, dCl, "
                 "B_row, C_row, True,\n                                  terms)\n")  # normal rows
_REVERSE_IR = ("            for n0 in range(0, N, 4):  # N = 16 here\n"
               "                reverse_block4(dt, bu, dy, a, g, sdA, abar, ah, dBl, pA, pB, "
               "B_row,\n                               C_row, L, n0, n0 > 0)\n")
_IMPORT_IR = ("from ._override import Override\n",
              "from ._override import Override\n"
              "from ._sweeps_ir import forward_block4, forward_block8, reverse_block4\n")


def _forward_ir(k):
    """The edit that runs the forward sweep of normal rows by ``_sweeps_ir``, k states at once."""
    name = f"forward_block{k}"
    return (f"                terms_a = np.empty(len(terms), u.dtype)  # as float32\n"
            f"                for i in range(len(terms)):\n"
            f"                    terms_a[i] = terms[i]\n"
            f"                for n0 in range(0, N, {k}):  # N = 16 here\n"
            f"                    {name}(dt, bu, dy, a2, h, y, abar, ah, dCl, B_row, C_row,\n"
            f"                                  terms_a, L, n0, n0 > 0)\n")

VARIANTS = {
    "rows": ("backward", False, []),
    "tiles": ("backward", True, []),
    "tiles, no lanes": ("backward", True, [
        ("    dCl[tt, nn, jj] += dy[tt, jj] * hv\n", ""),
        ("    dBl[tt, nn, jj] += gn * bu[tt, jj]\n", "")]),
    "tiles, no reverse sweep": ("backward", True, [
        (_REVERSE_CALL,
         "            pA[:, :] = 0\n            pB[:, :] = 0\n")]),
    "tiles, no sweeps": ("backward", True, [
        (_REVERSE_CALL,
         "            pA[:, :] = 0\n            pB[:, :] = 0\n"),
        (_FORWARD_CALL, "                y[:, :] = 0\n")]),
    "tiles, records in one row": ("backward", True, _RECORDS_ONE_ROW),
    "tiles, lanes in one row": ("backward", True, [
        ("    dCl[tt, nn, jj] += dy[tt, jj] * hv", "    dCl[0, nn, jj] += dy[tt, jj] * hv"),
        ("    dBl[tt, nn, jj] += gn * bu[tt, jj]", "    dBl[0, nn, jj] += gn * bu[tt, jj]")]),
    "tiles, reverse sweep in LLVM IR (4 states in registers)": ("backward", True, [
        (_REVERSE_CALL, _REVERSE_IR), _IMPORT_IR]),
    "tiles, both sweeps in LLVM IR (4 states in registers)": ("backward", True, [
        (_REVERSE_CALL, _REVERSE_IR), (_FORWARD_CALL, _forward_ir(4)), _IMPORT_IR]),
    "tiles, both sweeps in LLVM IR (forward: 8 states)": ("backward", True, [
        (_REVERSE_CALL, _REVERSE_IR), (_FORWARD_CALL, _forward_ir(8)), _IMPORT_IR]),
    "forward (tiles)": ("forward", True, []),
    "forward (tiles), no sweep": ("forward", True, [
        ("                _tile_scan(L, N, dt, bu, a2, h, y, B_row, C_row, True, terms)\n",
         "                y[:, :] = 0\n")]),
}

#: files a variant adds to its copy of fast/: (name in fast/, file in benchmarks/)
EXTRA_FILES = {name: ("_sweeps_ir.py", "_sweeps_ir.py") for name in VARIANTS if "LLVM" in name}

#: the variants that compute the right result: checked against the row kernels first
CORRECT = ("tiles",) + tuple(name for name in VARIANTS if "LLVM" in name)


#: where fast/numba_tiles.py's kernels for rows shorter than 64 steps begin: both shapes here
#: run fwd_tiles and bwd_tiles, so the edits apply to the source before it
SHORT_ROWS = "# short rows: the per-row passes over spans of tiles\n"


def edited(source, edits):
    """``source`` with each ``(old, new)`` replaced; ``old`` must occur exactly once before
    :data:`SHORT_ROWS` (if the source has it), and is left alone after it."""
    head, mark, tail = source.partition(SHORT_ROWS)
    for old, new in edits:
        count = head.count(old)
        if count != 1:
            raise SystemExit(f"backward_knockouts: an edit matches {count} times, not once "
                             f"(fast/numba_tiles.py changed?):\n{old}")
        head = head.replace(old, new)
    return head + mark + tail


def worker(pass_name, tiles, shape, repeats, check):
    """In the variant's process: the median time (ms) of ``repeats`` calls on one thread;
    with ``check``, first the tile backward against the row kernels on a small case."""
    import numba
    import numpy as np

    import fast
    from fast import numba_cpu, numba_tiles
    check_not_checkout(fast)
    from fast.bench.scan import make_inputs, median_time
    from ssm_ref._malloc import keep_freed_memory
    keep_freed_memory()
    numba.set_num_threads(1)
    if check:
        kw = make_inputs(2, 40, 37, 16)  # tiles of 16, 16, 8 channels; L not a multiple of 16
        dout = np.random.default_rng(2).standard_normal(kw["u"].shape).astype(np.float32)
        got = numba_cpu.selective_scan_backward(dout, **kw)
        with numba_tiles.forced(False):
            want = numba_cpu.selective_scan_backward(dout, **kw)
        for name, g in want.items():
            if g is not None and not np.allclose(got[name], g, rtol=1e-4,
                                                 atol=1e-4 * float(np.max(np.abs(g)))):
                raise SystemExit(f"backward_knockouts: d{name} differs from the row kernels")
    dim, length = SHAPES[shape]
    kw = make_inputs(1, dim, length, 16)
    dout = np.random.default_rng(1).standard_normal(kw["u"].shape).astype(np.float32)
    numba_tiles.backward_fits = lambda *a: True  # the tiles at both shapes when on
    with numba_tiles.forced(tiles):
        if pass_name == "forward":
            def fn():
                return numba_cpu.selective_scan(**kw)
        else:
            def fn():
                return numba_cpu.selective_scan_backward(dout, **kw)
        return 1e3 * median_time(fn, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all variants (3)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per run (15)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--only", nargs="+", metavar="WORD",
                        help="only the variants whose names contain one of these words "
                             "(a quick look; the JSON then holds only them)")
    parser.add_argument("--worker", nargs=5,
                        metavar=("PASS", "TILES", "SHAPE", "REPEATS", "CHECK"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        pass_name, tiles, shape, repeats, check = args.worker
        print(f"{worker(pass_name, tiles == '1', shape, int(repeats), check == '1'):.3f}")
        return None
    variants = {name: v for name, v in VARIANTS.items()
                if not args.only or any(word in name for word in args.only)}
    if not variants:
        raise SystemExit(f"backward_knockouts: no variant's name contains {args.only}")

    import time

    from fast.bench.scan import finish, machine_info
    t_start = time.perf_counter()
    machine = machine_info()
    source = (ROOT / "fast" / "numba_tiles.py").read_text()
    times = {name: {shape: [] for shape in SHAPES} for name in variants}
    with tempfile.TemporaryDirectory() as scratch:
        trees = {}
        for i, (name, (_, _, edits)) in enumerate(variants.items()):
            tree = copy_packages(Path(scratch) / f"variant{i}")
            (tree / "fast" / "numba_tiles.py").write_text(edited(source, edits))
            if name in EXTRA_FILES:
                target, file = EXTRA_FILES[name]
                shutil.copy(ROOT / "benchmarks" / file, tree / "fast" / target)
            trees[name] = tree
        for rnd in range(args.rounds):
            for shape in SHAPES:
                for name, (pass_name, tiles, _) in variants.items():
                    ms = run_in(trees[name], Path(__file__).resolve(), "--worker", pass_name,
                                "1" if tiles else "0", shape, args.repeats,
                                "1" if rnd == 0 and name in CORRECT else "0")
                    times[name][shape].append(ms)
                    print(f"round {rnd + 1} {shape:7s} {name:56s} {ms:8.2f} ms", flush=True)
    print(f"\none thread, medians of {args.repeats} calls per run, {args.rounds} rounds")
    print(f"{'':56s} " + " ".join(f"{shape:>20s}" for shape in SHAPES))
    for name in variants:
        print(f"{name:56s} " + " ".join(
            f"{min(times[name][s]):8.2f}-{max(times[name][s]):8.2f} ms" for s in SHAPES))
    result = {"machine": machine, "threads": 1, "repeats": args.repeats,
              "rounds": args.rounds,
              "shapes": {s: {"B": 1, "D": d, "L": length, "N": 16, "dtype": "float32"}
                         for s, (d, length) in SHAPES.items()},
              "ms_per_round": times}
    args.out.mkdir(parents=True, exist_ok=True)
    finish(result, args.out / "backward_knockouts_cpu.json", t_start)
    return result


if __name__ == "__main__":
    main()
