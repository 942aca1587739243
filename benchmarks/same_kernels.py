"""Which compiled scan kernels a change left as they were: the machine code of the working
tree against a git revision's, kernel by kernel.

Usage (from the repository's root; a minute or two on 2 cores, most of it compiling)::

    python benchmarks/same_kernels.py HEAD
    python benchmarks/same_kernels.py 62c596a --cases tiny vmamba

Chapter 11 ("Two passes over a row instead of four") found that in kernels as large as
the scan's, how one helper is written can change the machine code of loops that never call
it (another register assignment, other spills), and that such a change can move a timing by
a few per cent.  So an A/B timing (``compare_revisions.py``) of a kernel that a change
"did not touch" is only a control if its code is the same.  This script runs
``fast.selective_scan`` and ``fast.selective_scan_backward`` (``backend="numba"``,
float32) at the cases of ``compare_revisions.py`` in each version's own process and
Numba cache, takes the assembly of every kernel of ``fast.numba_cpu``,
``fast.numba_tiles`` and ``fast.numba_pairs`` that they compiled
(``Dispatcher.inspect_asm``), normalizes it (:func:`normalized_asm`: no comments,
directives, label or symbol names, addresses or stack offsets) and prints, per kernel,
"same" or how many normalized lines differ.  It exits with status 1 if a kernel differs
or was compiled by one version only.  Not part of the library.
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _trees import ROOT, check_not_checkout, copy_packages, run_text  # noqa: E402

if "--worker" not in sys.argv:  # a worker imports the version's copy (its PYTHONPATH)
    sys.path.insert(0, str(ROOT))

#: the kernel modules whose compiled code is compared
MODULES = ("fast.numba_cpu", "fast.numba_tiles", "fast.numba_pairs")

_DROP = re.compile(r"^\s*($|[.#;]|\S+:\s*(#.*)?$)")  # blank, directive, comment, label
_SUBS = [(re.compile(r"#.*$"), ""),  # a trailing comment
         (re.compile(r"-?\d*\((%[re]sp)\)"), r"S(\1)"),  # a stack slot
         (re.compile(r"\$-?\d+, %rsp"), "$N, %rsp"),  # the frame's size
         (re.compile(r"0x[0-9a-fA-F]+"), "X"),  # an address or constant
         (re.compile(r"\.?L\w+"), "L"),  # a local label or constant pool entry
         (re.compile(r"_Z\w+|\bNRT_\w+|\bnumba_\w+"), "F")]  # a symbol


def normalized_asm(text):
    """The instructions of an assembly listing, one per line, with what moves from one
    compilation to the next replaced by placeholders: labels, addresses, symbol names,
    stack offsets and the frame's size.  Two listings of the same code give the same list;
    another instruction, operand register or spill gives another."""
    lines = []
    for line in text.splitlines():
        if _DROP.match(line):
            continue
        for pattern, repl in _SUBS:
            line = pattern.sub(repl, line)
        lines.append(" ".join(line.split()))
    return lines


def short_signature(sig):
    """A kernel's argument types, arrays written as ``float32[3C]`` (dtype, dimensions and
    layout) instead of ``Array(float32, 3, 'C', False, aligned=True)``."""
    return re.sub(r"Array\((\w+), (\d+), '(\w)', \w+, aligned=True\)", r"\1[\2\3]",
                  str(tuple(sig)))


def compare(rev_kernels, tree_kernels):
    """``(name, verdict)`` per kernel of either version: "same", "N lines differ" (of the
    normalized listings) or "only in ..."; and whether all are the same."""
    rows, all_same = [], True
    for name in sorted(set(rev_kernels) | set(tree_kernels)):
        if name not in tree_kernels or name not in rev_kernels:
            rows.append((name, "only in the " + ("revision" if name in rev_kernels
                                                  else "working tree")))
            all_same = False
            continue
        a, b = rev_kernels[name], tree_kernels[name]
        if a == b:
            rows.append((name, "same"))
            continue
        changed = sum(1 for d in difflib.ndiff(a, b) if d[:1] in "+-")
        rows.append((name, f"{changed} lines differ (of {len(a)} and {len(b)})"))
        all_same = False
    return rows, all_same


def kernel_listings(cases):
    """In a version's process: run the scans of ``cases`` once, then the normalized assembly
    of every kernel they compiled, by ``"module.function (argument types)"``
    (:func:`short_signature`)."""
    import importlib

    from numba.core.dispatcher import Dispatcher

    import fast
    check_not_checkout(fast)
    from compare_revisions import PASSES, case_call
    for case in cases:
        for pass_name in PASSES:
            case_call(case, pass_name)()
    listings = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for attr, obj in sorted(vars(module).items()):
            if not isinstance(obj, Dispatcher) or obj.__module__ != module_name:
                continue  # not a kernel, or one of another module's
            for sig, asm in obj.inspect_asm().items():
                listings[f"{module_name}.{attr} {short_signature(sig)}"] = normalized_asm(asm)
    return listings


def main(argv=None):
    from compare_revisions import CASES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare the working tree with")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--worker", nargs="+", metavar="CASE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(kernel_listings(args.worker)))
        return None
    script = Path(__file__).resolve()
    with tempfile.TemporaryDirectory() as scratch:
        listings = {}
        for version, rev in (("rev", args.rev), ("tree", None)):
            tree = copy_packages(Path(scratch) / version, rev)
            listings[version] = json.loads(run_text(tree, script, args.rev, "--worker",
                                                    *args.cases))
    rows, all_same = compare(listings["rev"], listings["tree"])
    width = max(len(verdict) for _, verdict in rows)
    print(f"kernels compiled by the scans of {', '.join(args.cases)}: {args.rev} against the "
          f"working tree (normalized assembly; the working tree's hash)")
    for name, verdict in rows:
        digest = hashlib.md5("\n".join(listings["tree"].get(name, [])).encode()).hexdigest()
        print(f"{verdict:{width}s}  [{digest[:8]}]  {name}")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
