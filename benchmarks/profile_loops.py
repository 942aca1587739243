"""Where a scan's time goes, loop by loop: samples of the running machine code (Linux
``perf``) attributed to the innermost loops of the compiled kernels.

Usage (from the repository's root; Linux with ``perf`` allowed to sample a process of
the same user; about half a minute)::

    python benchmarks/profile_loops.py --case headline --pass backward --threads 1
    python benchmarks/profile_loops.py --case vmamba --pass forward --out benchmarks/results
    python benchmarks/profile_loops.py --show 2   # the instructions of the second loop

A worker process runs one case of ``compare_revisions.py`` (``fast.selective_scan`` or
``fast.selective_scan_backward`` with ``backend="numba"``) over and over;
``perf record -p`` samples it for ``--seconds``.  Numba's code lives in memory that
``perf`` cannot name, so its samples come back as bare addresses: the worker copies the
machine code around the sampled addresses out of its own memory, ``objdump`` disassembles
it, and every backward jump marks a loop.  Each sample is charged to the innermost loop
that holds its address, and each loop is described by what its body holds: instructions,
vector instructions, multiplies and FMAs, exponentials (a shift by 23 puts k into a float's
exponent: one per 2^k of :mod:`fast._fastexp`), operands on the stack (spilled registers
and constants), shuffles and the like, divisions.  A loop is not named after its source:
chapter 11 says which is which for the cases it quotes.  Samples outside every loop, and
outside Numba's code (Python, NumPy, the C library), are counted apart.  The worker
counts its calls while it is sampled, so each share is also given as milliseconds of a
call.

With ``--out`` it writes ``profile_loops_<case>_<pass>_cpu.json`` there.  This script is a
tool for the chapter's measurements, not part of the library.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_revisions import CASES, PASSES, case_call  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: machine code copied around the sampled addresses, on each side (whole loops at the edges)
_MARGIN = 0x1000

#: a sample of Numba's code as ``perf report --sort sym`` prints it: "  4.45%  [.] 0x7f..."
_SAMPLE = re.compile(r"^\s*([\d.]+)%\s+\[\.\]\s+(\S+)")
#: a line of ``objdump -D``: address, bytes, instruction
_LINE = re.compile(r"^\s*([0-9a-f]+):\t[^\t]*\t(.+)$")
#: a jump and its target
_JUMP = re.compile(r"^j\w*\s+0x([0-9a-f]+)")

#: what a loop's body is described by: a name and a test on (mnemonic, operands)
KINDS = {
    "vector": lambda op, args: op.startswith("v"),
    "mul/FMA": lambda op, args: op.startswith(("vmul", "vfmadd", "vfnmadd", "vfmsub",
                                                "vfnmsub")),
    "exp": lambda op, args: op == "vpslld" and args.startswith("$0x17,"),
    "stack": lambda op, args: "(%rsp" in args,
    "shuffle": lambda op, args: op.startswith(("vperm", "vshuf", "vunpck", "vextract",
                                                "vinsert", "vblend", "vhadd", "vmovshdup",
                                                "vmovsldup", "vpshuf", "valign")),
    "div": lambda op, args: op.startswith(("vdiv", "vsqrt", "div", "vrcp")),
}


def sample_shares(report):
    """``({address: percent}, percent elsewhere)`` from ``perf report --stdio --sort sym``:
    the bare addresses are Numba's code; named symbols are everything else."""
    at, elsewhere = {}, 0.0
    for line in report.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        share, symbol = float(m.group(1)), m.group(2)
        if re.fullmatch(r"0x[0-9a-f]+", symbol):
            at[int(symbol, 16)] = at.get(int(symbol, 16), 0.0) + share
        else:
            elsewhere += share
    return at, elsewhere


def code_ranges(at, floor=0.05, gap=0x10000):
    """The spans of memory to copy: the addresses with at least ``floor`` % of the samples,
    in clusters no more than ``gap`` bytes apart, each widened to whole pages plus
    :data:`_MARGIN` on each side."""
    hot = sorted(a for a, share in at.items() if share >= floor)
    if not hot:
        raise SystemExit("no samples in Numba's code: is the case running compiled code?")
    ranges = []
    for a in hot:
        lo, hi = (a & ~0xFFF) - _MARGIN, (a | 0xFFF) + 1 + _MARGIN
        if ranges and lo - ranges[-1][1] <= gap:
            ranges[-1][1] = max(ranges[-1][1], hi)
        else:
            ranges.append([lo, hi])
    return [tuple(r) for r in ranges]


def readable(lo, hi, maps):
    """The parts of ``[lo, hi)`` that a process may read, from its ``/proc/PID/maps``."""
    parts = []
    for line in maps.splitlines():
        span, perms = line.split()[:2]
        start, end = (int(x, 16) for x in span.split("-"))
        if perms.startswith("r") and start < hi and end > lo:
            parts.append((max(lo, start), min(hi, end)))
    return parts


def instructions(objdump):
    """``[(address, mnemonic, operands)]`` from ``objdump -D`` output."""
    out = []
    for line in objdump.splitlines():
        m = _LINE.match(line)
        if m:
            op, _, args = m.group(2).strip().partition(" ")
            out.append((int(m.group(1), 16), op, args.strip()))
    return out


def innermost_loops(code):
    """For each instruction of ``code`` (:func:`instructions`), the innermost loop that holds
    it as ``(first, last)`` indices, or None: a loop runs from a backward jump's target to
    the jump."""
    index = {a: i for i, (a, _, _) in enumerate(code)}
    loops = []
    for i, (a, op, args) in enumerate(code):
        m = _JUMP.match(f"{op} {args}")
        if m and int(m.group(1), 16) <= a and int(m.group(1), 16) in index:
            loops.append((index[int(m.group(1), 16)], i))
    owner = [None] * len(code)
    for first, last in sorted(loops, key=lambda fl: fl[1] - fl[0], reverse=True):
        for i in range(first, last + 1):  # smaller loops come later and take over
            owner[i] = (first, last)
    return owner


def loop_table(code, at):
    """Rows, largest share first: each sampled innermost loop's share of the samples, its
    span, its body's counts (:data:`KINDS`) and the body itself (``"body"``: one
    instruction per line); one row ``"outside loops"`` for the rest.  Loops that no sample
    hit (most of the copied code) get no row."""
    owner = innermost_loops(code)
    shares = Counter()
    for i, (a, _, _) in enumerate(code):
        shares[owner[i]] += at.get(a, 0.0)
    rows = []
    for loop, share in shares.most_common():
        if loop is None:
            rows.append({"loop": "outside loops", "share_pct": round(share, 2)})
            continue
        if not share:
            continue
        first, last = loop
        body = code[first:last + 1]
        row = {"loop": f"{body[0][0]:#x}-{body[-1][0]:#x}", "share_pct": round(share, 2),
               "instructions": len(body)}
        row.update({kind: sum(1 for _, op, args in body if test(op, args))
                    for kind, test in KINDS.items()})
        row["body"] = [f"{op} {args}".strip() for _, op, args in body]
        rows.append(row)
    return rows


def worker(case, pass_name, threads, seconds, folder):
    """In the profiled process: compile, say the PID, run for ``seconds``, then copy the
    readable parts of the spans of machine code that the parent asks for (``ranges``) into
    ``code_<start>.bin`` files, and list their starts in ``pieces``."""
    import numba
    numba.set_num_threads(threads)
    fn = case_call(case, pass_name)
    fn()  # compiled (or loaded from the cache) before the sampling starts
    folder = Path(folder)
    (folder / "pid").write_text(str(os.getpid()))
    t0 = time.perf_counter()
    calls = 0
    while time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
    (folder / "calls").write_text(f"{calls} {time.perf_counter() - t0}")
    asked = folder / "ranges"
    while not asked.exists():
        time.sleep(0.1)
    time.sleep(0.1)
    maps = Path("/proc/self/maps").read_text()
    pieces = []
    for line in asked.read_text().splitlines():
        lo, hi = (int(x, 16) for x in line.split())
        for start, end in readable(lo, hi, maps):  # copying an unmapped page would crash
            (folder / f"code_{start:x}.bin").write_bytes(ctypes.string_at(start, end - start))
            pieces.append(f"{start:x}")
    (folder / "pieces.tmp").write_text("\n".join(pieces))
    (folder / "pieces.tmp").rename(folder / "pieces")


def _wait_for(path, process, timeout):
    t0 = time.perf_counter()
    while not path.exists():
        if process.poll() is not None:
            raise SystemExit(f"the worker stopped (exit status {process.returncode}) before "
                             f"writing {path.name}")
        if time.perf_counter() - t0 > timeout:
            raise SystemExit(f"the worker did not write {path.name} in {timeout} s")
        time.sleep(0.1)


def profile(case, pass_name, threads, seconds):
    """Sample the case for ``seconds``: ``(rows of loop_table, percent outside Numba's
    code, milliseconds per call)``; each row also has its share as milliseconds of a call
    (``ms_per_call``: the process's time is the call's, since the worker does nothing
    else while it is sampled).  Shares are of one run; times move with the machine's load,
    as every timing does."""
    for tool in ("perf", "objdump"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: this tool needs Linux perf and binutils' "
                             f"objdump")
    with tempfile.TemporaryDirectory(prefix="profile_loops_") as tmp:
        folder = Path(tmp)
        worker_cmd = [sys.executable, __file__, "--worker", case, pass_name, str(threads),
                      str(seconds + 2.0), tmp]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        process = subprocess.Popen(worker_cmd, env=env)
        try:
            _wait_for(folder / "pid", process, timeout=600)  # compiling can take minutes
            data = folder / "perf.data"
            record = subprocess.run(
                ["perf", "record", "-q", "-F", "4000", "-o", str(data), "-p",
                 (folder / "pid").read_text(), "--", "sleep", str(seconds)],
                capture_output=True, text=True)
            if record.returncode != 0 or not data.exists():
                raise SystemExit("perf record failed (is perf allowed to sample processes "
                                 "here? see /proc/sys/kernel/perf_event_paranoid): "
                                 + record.stderr.strip()[-400:])
            report = subprocess.run(
                ["perf", "report", "-i", str(data), "--stdio", "--sort", "sym"],
                capture_output=True, text=True, check=True).stdout
            at, elsewhere = sample_shares(report)
            (folder / "ranges").write_text(
                "\n".join(f"{lo:x} {hi:x}" for lo, hi in code_ranges(at)))
            _wait_for(folder / "pieces", process, timeout=60)
            process.wait(timeout=60)
            calls, elapsed = (folder / "calls").read_text().split()
            ms_per_call = 1e3 * float(elapsed) / int(calls)
            code = []
            for start in (folder / "pieces").read_text().split():
                code += instructions(subprocess.run(
                    ["objdump", "-D", "-b", "binary", "-m", "i386:x86-64",
                     f"--adjust-vma=0x{start}", str(folder / f"code_{start}.bin")],
                    capture_output=True, text=True, check=True).stdout)
        finally:
            if process.poll() is None:
                process.kill()
    rows = loop_table(code, at)
    for row in rows:  # the share of the process's time, as milliseconds of a call
        row["ms_per_call"] = round(row["share_pct"] / 100 * ms_per_call, 4)
    return rows, elsewhere, ms_per_call


def print_table(rows, elsewhere, top, show=0):
    """The loops' table; with ``show`` > 0, then the body of the ``show``-th loop."""
    kinds = list(KINDS)
    print(f"{'share':>6} {'ms':>7}  {'loop (addresses)':<31} {'insns':>5} "
          + " ".join(f"{k:>7}" for k in kinds))
    for row in rows[:top]:
        head = f"{row['share_pct']:5.1f}% {row.get('ms_per_call', float('nan')):7.3f}"
        if row["loop"] == "outside loops":
            print(f"{head}  outside loops")
            continue
        print(f"{head}  {row['loop']:<31} {row['instructions']:>5} "
              + " ".join(f"{row[k]:>7}" for k in kinds))
    print(f"{elsewhere:5.1f}%  outside Numba's code (Python, NumPy, the C library)")
    loops = [row for row in rows if "body" in row]
    if show:
        print(f"\nloop {show} ({loops[show - 1]['loop']}):" if show <= len(loops)
              else f"\nno loop {show}: {len(loops)} loops were sampled")
        for line in loops[show - 1]["body"] if show <= len(loops) else []:
            print("    " + line)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=list(CASES), default="headline")
    parser.add_argument("--pass", dest="pass_name", choices=PASSES, default="forward")
    parser.add_argument("--threads", type=int, default=1, help="Numba threads (1)")
    parser.add_argument("--seconds", type=float, default=6.0, help="sampling time (6)")
    parser.add_argument("--top", type=int, default=10, help="loops printed (10)")
    parser.add_argument("--show", type=int, default=0,
                        help="print the instructions of this loop of the table (1: the first)")
    parser.add_argument("--out", type=Path, help="a folder for the JSON (bodies included)")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        case, pass_name, threads, seconds, folder = args.worker
        worker(case, pass_name, int(threads), float(seconds), folder)
        return None
    if args.threads < 1 or not args.seconds > 0 or args.top < 1 or args.show < 0:
        parser.error(f"--threads and --top take positive integers, --show one >= 0 and "
                     f"--seconds a positive number (got {args.threads}, {args.top}, "
                     f"{args.show}, {args.seconds})")
    if args.out is not None and not args.out.is_dir():
        parser.error(f"--out must be an existing folder, not {str(args.out)!r}")
    sys.path.insert(0, str(ROOT))
    from fast.bench.scan import machine_info, machine_line
    machine = machine_info()
    print(machine_line(machine))
    print(f"{args.case}, {args.pass_name}, {args.threads} thread(s), sampled for "
          f"{args.seconds:g} s; shares of all samples")
    rows, elsewhere, ms_per_call = profile(args.case, args.pass_name, args.threads,
                                           args.seconds)
    print(f"{ms_per_call:.3f} ms per call while sampled")
    print_table(rows, elsewhere, args.top, args.show)
    result = {"machine": machine, "case": args.case, "shape": dict(zip(
        ("batch", "dim", "length", "dstate", "groups", "dtype"), CASES[args.case])),
        "pass": args.pass_name, "threads": args.threads, "seconds": args.seconds,
        "ms_per_call": ms_per_call, "outside_numba_pct": round(elsewhere, 2), "loops": rows}
    if args.out is not None:
        path = args.out / f"profile_loops_{args.case}_{args.pass_name}_cpu.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
