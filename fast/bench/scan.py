"""Benchmark the selective scan: reference vs Numba CPU (vs CUDA when a GPU is present).

Usage::

    python -m fast.bench.scan            # full run (a few minutes on 2 cores)
    python -m fast.bench.scan --quick    # smaller sweep (under a minute)
    ssm-ref bench --suite scan --quick   # the same through the command line

Prints tables and writes ``scan_<device>.json`` and PNG plots into ``--out``
(default ``benchmarks/results`` under the current directory: the committed
results when run from the repository's root).

What is measured (medians over ``--repeats`` runs after one warm-up call):

* the headline case of the fast-path issue: B=1, D=1536, L=1024, N=16,
  float32, variable B and C, with D, z, delta_bias and softplus; forward and
  backward, timed in blocks that take turns (so that their ratio survives a
  change of the machine's load), in G state updates per second
  (B·D·L·N / time);
* a plain Numba loop (``math.exp``, no vector exp) on the same case: the
  exp-bound baseline;
* the machine's limit on the same threads: a kernel doing only what cannot
  be avoided per state update, one vectorized exp and one FMA
  (``y = exp(s x) y + x``, in L1 cache), over the same element count;
* a sweep over L (256 ... 65536) and N (16, 64) at B=1, D=256, with the
  minor page faults of a backward call (see "freed memory" below), and the
  backward as a training step runs it: from a forward kept for it
  (``selective_scan_for_backward``, which beyond one backward time block
  keeps the state entering each block, then ``selective_scan_backward_saved``);
* small states (N = 8, VMamba's scan in a 32x32 training step: B=64, D=192
  in 4 groups of B and C, L=256), float64 and float32: the kernels of
  :mod:`fast.numba_pairs` (two rows per 16-lane block) against the same call
  with them switched off (16 lanes per row, 8 of them padding), in turn, and
  which of the two the library runs by default (``PAIRED_DTYPES``);
* channel tiles: the float32 forward at the headline size and at VMamba's
  size, and the backward at VMamba's, with the kernels of
  :mod:`fast.numba_tiles` (16 channels per vector) switched on and off (16
  states per vector, or the pairs of N = 8 where those apply), in turn;
* the reference (NumPy, float64 inside) is slow: it is timed at the sizes
  stated in the output (fewer channels, shorter L) and compared per state
  update, which is fair because its cost is linear in B·D·L·N;
* peers (``fast.bench.peers``), when installed (``pip install -e ".[peers]"``):
  the official ``selective_scan_ref`` (PyTorch CPU; from a clone of
  state-spaces/mamba given by ``--mamba-src DIR`` or ``MAMBA_SRC``), mambapy's
  ``pscan`` and ``jax.lax.associative_scan`` under ``jit``, forward at the
  headline size, each checked against ``fast.selective_scan`` before it is
  timed; a missing peer is a row that says why;
* linear scaling: the scan's forward time against NumPy softmax attention
  of the same width (single head, d = D) as L grows, up to the largest L
  whose L x L float32 score matrix fits in ``--attention-gb``;
* freed memory: like ``ssm-ref train`` and ``fast.bench.train``, the run
  first keeps freed memory in the process (:mod:`ssm_ref._malloc`), and
  records that it did.  With glibc's defaults (``--default-malloc``) the
  backward pass's 16 MB outputs at L = 16384 come back from the kernel as
  fresh pages at every call and fault in again inside the kernel: about
  1500 faults per call, which halved the rate at that one length
  (chapter 11);
* on a real GPU (CuPy + the ``cuda`` backend available, not the simulator):
  the CUDA scan, a naive CuPy loop over time, and the GPU limit (bytes that
  must move / measured device-to-device copy bandwidth).
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from numba import njit, prange

import fast
import ssm_ref
from fast import numba_cpu, numba_pairs, numba_tiles
from fast._fastexp import exp2_terms, fast_exp2_normal
from fast._launch import launch  # the one lock of parallel launches
from fast.bench import peers as bench_peers
from fast.numba_cpu import _njit_noalias  # the kernels' decorator
from ssm_ref._malloc import keep_freed_memory
from ssm_ref.cli import OneLineParser, output_dir

#: where results go by default: relative to the current directory, so that a run from the
#: repository's root updates the committed files and a run elsewhere writes next to it
RESULTS = Path("benchmarks") / "results"
HEADLINE = dict(batch=1, dim=1536, length=1024, dstate=16)
#: the small-state case of ``fast.numba_pairs``: VMamba's scan in a 32x32 training step
#: (64 images, K = 4 directions x 48 channels, one group of B and C per direction)
PAIRS = dict(batch=64, dim=192, groups=4, length=256, dstate=8)


# ---------------------------------------------------------------------------
# inputs and timing
# ---------------------------------------------------------------------------

def make_inputs(batch, dim, length, dstate, dtype=np.float32, seed=0):
    """The headline form: variable B and C, with D, z, delta_bias, softplus (Mamba's use)."""
    rng = np.random.default_rng(seed)
    return dict(
        u=rng.standard_normal((batch, dim, length)).astype(dtype),
        delta=(rng.standard_normal((batch, dim, length)) - 1.0).astype(dtype),
        A=(-np.tile(np.arange(1, dstate + 1), (dim, 1))).astype(dtype),  # Mamba's A = -(1..N)
        B=rng.standard_normal((batch, dstate, length)).astype(dtype),
        C=rng.standard_normal((batch, dstate, length)).astype(dtype),
        D=np.ones(dim, dtype),
        z=rng.standard_normal((batch, dim, length)).astype(dtype),
        delta_bias=rng.uniform(-4.0, -2.0, dim).astype(dtype),  # softplus^-1 of dt in [1e-3, 1e-1]
        delta_softplus=True,
    )


def _times(fn, repeats, sync=None):
    """Wall times of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return times


def median_time(fn, repeats, sync=None):
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    return float(np.median(_times(fn, repeats, sync)))


def best_time(fn, repeats, sync=None):
    """Shortest wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    return float(np.min(_times(fn, repeats, sync)))


def counting_faults(fn):
    """``(counted, per_call)``: ``counted()`` calls ``fn()`` and counts its minor page faults.

    ``per_call()`` is their mean over the calls after the first (the warm-up
    call of :func:`median_time`, which may fault legitimately), or None where
    the ``resource`` module is missing (Windows).  A minor fault is a page the
    kernel maps in at first touch (zeroing it): memory the allocator had
    handed back to the operating system.  Counting the timed calls themselves
    costs two ``getrusage`` calls each (about a microsecond) and no extra run.
    """
    try:
        import resource  # noqa: PLC0415 - Unix only
    except ImportError:
        return fn, lambda: None
    counts = []

    def counted():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    def per_call():
        return float(np.mean(counts[1:])) if len(counts) > 1 else None

    return counted, per_call


def updates(batch, dim, length, dstate):
    return batch * dim * length * dstate


# ---------------------------------------------------------------------------
# the two comparison kernels: plain loop (libm exp) and the machine's limit
# ---------------------------------------------------------------------------

@njit(parallel=True, fastmath=True, error_model="numpy", cache=True)
def plain_numba_forward(u, delta, A, Bm, Cm, Dv, z, bias):
    """The obvious Numba scan (math.exp, loops in the reference's order): the baseline."""
    nb, nd, L = u.shape
    N = A.shape[1]
    out = np.empty_like(u)
    for row in prange(nb * nd):
        b, d = row // nd, row % nd
        h = np.zeros(N, u.dtype)
        for t in range(L):
            dt = delta[b, d, t] + bias[d]
            dt = dt if dt > 20 else math.log1p(math.exp(dt))
            y = u.dtype.type(0)
            for n in range(N):
                h[n] = math.exp(dt * A[d, n]) * h[n] + dt * Bm[b, n, t] * u[b, d, t]
                y += h[n] * Cm[b, n, t]
            zz = z[b, d, t]
            out[b, d, t] = (y + Dv[d] * u[b, d, t]) * zz / (1 + math.exp(-zz))
    return out


_LIMIT_BLOCK = 4096  # elements per pass: 16 KiB of float32, stays in L1


@_njit_noalias(parallel=True, fastmath=numba_cpu._FMK, error_model="numpy", cache=True)
def machine_limit_kernel(x, passes, out, nchunks, terms):
    """Only what every state update needs: one vectorized exp and one FMA per element.

    Each thread runs ``passes`` times over its own block of ``x``,
    ``y = exp(s x) * y + x`` with a scale ``s`` that changes every pass (so
    nothing can be hoisted), all in L1 cache: no loads of B or C, no dot
    product, no recurrence.  An upper bound for the scan's inner loop.  The
    exp is the one the scan kernels run where every argument of a row or tile is
    at least -125 (:func:`fast._fastexp.fast_exp2_normal`: no clamp, 2^k by an
    integer add; the arguments here lie in [-10, 0]), with
    ``x`` read as the argument in base 2, as the kernels pass it, and its
    constants handed in as ``terms``, as the kernels hand them).
    """
    n = x.shape[1]
    y_s = np.zeros((nchunks, n), x.dtype)
    for c in prange(nchunks):
        y = y_s[c]
        xc = x[c]
        for p in range(passes):
            scale = x.dtype.type(1.0 - 1e-7 * p)
            for i in range(n):
                y[i] = fast_exp2_normal(scale * xc[i], terms) * y[i] + xc[i]
        out[c] = y[0]


def machine_limit(total_updates, repeats, dtype=np.float32):
    """G elements/s of :func:`machine_limit_kernel` over ``total_updates`` elements.

    A limit is what the machine does when nothing interferes, so this is the
    best of at least 7 timed calls, not their median: on a shared machine one
    slow call of a parallel kernel (it waits for its slowest thread) would
    otherwise pull the "limit" below what the scan itself reaches.
    """
    nchunks = numba.get_num_threads()
    passes = max(1, total_updates // (_LIMIT_BLOCK * nchunks))
    x = -np.random.default_rng(3).uniform(0.0, 10.0, (nchunks, _LIMIT_BLOCK)).astype(dtype)
    out = np.empty(nchunks, dtype)
    terms = exp2_terms(dtype)
    t = best_time(lambda: launch(machine_limit_kernel, x, passes, out, nchunks, terms),
                  max(7, repeats))
    return nchunks * passes * _LIMIT_BLOCK / t / 1e9


# ---------------------------------------------------------------------------
# softmax attention of the same width (NumPy, float32)
# ---------------------------------------------------------------------------

def attention(x, Wq, Wk, Wv):
    """Single-head causal softmax attention, y = softmax(Q K^T / sqrt(d)) V: O(L^2 d)."""
    q, k, v = x @ Wq, x @ Wk, x @ Wv  # (L, d)
    s = (q @ k.T) * np.float32(1.0 / math.sqrt(x.shape[1]))  # (L, L)
    s[np.triu_indices_from(s, 1)] = -np.inf  # causal
    s -= s.max(axis=1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=1, keepdims=True)
    return s @ v  # (L, d)


# ---------------------------------------------------------------------------
# machine description
# ---------------------------------------------------------------------------

def machine_info():
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = line.split(":", 1)[1].split()
                    flags = " ".join(x for x in ("avx2", "fma", "avx512f") if x in have)
                    break
    except OSError:
        pass
    level2 = numba_cpu._level2_cache_bytes()
    return {"cpu": cpu, "simd": flags, "cores": os.cpu_count(),
            # the CPU that the kernels were compiled for, by LLVM's name (which chooses their
            # vector width and backward blocks: "AMD EPYC" is Zen 3 or Zen 4), and one core's
            # level-2 cache (None where the OS does not say)
            "llvm_cpu": numba.core.config.CPU_NAME or llvm_binding.get_host_cpu_name(),
            "level2_cache_kib": level2 // 1024 if level2 else None,
            "numba_threads": numba.get_num_threads(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__,
            "load_average_start": list(os.getloadavg()),
            "niceness": os.nice(0)}  # < 0: run with priority over other processes


def start(parser, out):
    """Check ``--out`` (a file or an unwritable place: one line now, before the
    measurements), then start the clock and read the machine: ``(t_start, machine)``."""
    try:
        output_dir(out)
    except ValueError as exc:
        parser.error(str(exc))
    return time.perf_counter(), machine_info()


def cpu_line(machine):
    """LLVM's name of the CPU and its level-2 cache, as :func:`machine_info` records them
    ("LLVM CPU not recorded" for a JSON written before they were)."""
    if "llvm_cpu" not in machine:
        return "LLVM CPU not recorded"
    level2 = machine.get("level2_cache_kib")
    return f"LLVM {machine['llvm_cpu']}, " + (f"L2 {level2} KiB per core" if level2
                                               else "L2 size unknown")


def machine_line(machine):
    """The line that opens a run's output: CPU, cores, Numba threads, load."""
    return (f"machine: {machine['cpu']} ({machine['simd']}; {cpu_line(machine)}), "
            f"{machine['cores']} cores, "
            f"numba {machine['numba']} with {machine['numba_threads']} threads, "
            f"numpy {machine['numpy']}; load average {machine['load_average_start']}")


def finish(result, path, t_start):
    """Write ``result`` (with the run's wall time) to ``path`` as JSON and say so.

    ``result["machine"]`` gets the load average at the end now, unless the run recorded it
    already (right after its measurements, before plotting).
    """
    result["machine"].setdefault("load_average_end", list(os.getloadavg()))
    result["wall_time_s"] = time.perf_counter() - t_start
    path.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {shown(path)}"
          f"{' and ' + ', '.join(result['plots']) if 'plots' in result else ''} "
          f"in {result['wall_time_s']:.0f} s; load average at the end "
          f"{result['machine']['load_average_end']}")


# ---------------------------------------------------------------------------
# the parts of the run
# ---------------------------------------------------------------------------

def run_headline(repeats, ref_dim_backward, limit):
    s = HEADLINE
    n_up = updates(s["batch"], s["dim"], s["length"], s["dstate"])
    kw = make_inputs(**s)
    dout = np.random.default_rng(1).standard_normal(kw["u"].shape).astype(np.float32)
    # forward and backward in blocks that take turns, so that a slow stretch of a shared
    # machine hits both alike and their ratio holds (timed as one block each, one run measured
    # 3.1 and the next 4.3); call by call in turn, the backward evicted the forward's inputs
    # from the cache and slowed it by about 6% in one run
    passes = [lambda: numba_cpu.selective_scan(**kw),
              lambda: numba_cpu.selective_scan_backward(dout, **kw)]
    t_fwd, t_bwd = alternating_blocks(passes, repeats)
    threads = numba.get_num_threads()  # the same kernels on one thread: the per-core rate,
    numba.set_num_threads(1)  # and the limit kernel's on one thread beside it
    try:
        t_fwd_1, t_bwd_1 = alternating_blocks(passes, repeats)
        limit_1 = machine_limit(n_up, repeats)
    finally:
        numba.set_num_threads(threads)
    t_plain = median_time(lambda: launch(
        plain_numba_forward, kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw["D"], kw["z"],
        kw["delta_bias"]), repeats)
    # the reference: forward at the full size, backward (O(B D L N) memory) on fewer channels
    t_ref_fwd = median_time(lambda: ssm_ref.selective_scan(**kw), max(1, repeats // 3))
    kw_small = make_inputs(s["batch"], ref_dim_backward, s["length"], s["dstate"])
    dout_small = dout[:, :ref_dim_backward]
    t_ref_bwd_small = median_time(
        lambda: ssm_ref.selective_scan_backward(dout_small, **kw_small), max(1, repeats // 3))
    n_small = updates(s["batch"], ref_dim_backward, s["length"], s["dstate"])
    rate_ref_bwd = n_small / t_ref_bwd_small / 1e9
    g = lambda t: n_up / t / 1e9  # noqa: E731
    return {
        "sizes": dict(s, dtype="float32", B_C="variable", options="D, z, delta_bias, softplus"),
        "state_updates": n_up,
        "numba_forward_s": t_fwd, "numba_forward_G_per_s": g(t_fwd),
        "numba_backward_s": t_bwd, "numba_backward_G_per_s": g(t_bwd),
        "backward_over_forward": t_bwd / t_fwd,
        "numba_forward_1_thread_G_per_s": g(t_fwd_1),
        "numba_backward_1_thread_G_per_s": g(t_bwd_1),
        "backward_over_forward_1_thread": t_bwd_1 / t_fwd_1,
        "plain_numba_forward_s": t_plain, "plain_numba_forward_G_per_s": g(t_plain),
        "ref_forward_s": t_ref_fwd, "ref_forward_G_per_s": g(t_ref_fwd),
        "ref_backward_measured_at_D": ref_dim_backward,
        "ref_backward_G_per_s": rate_ref_bwd,
        "ref_backward_s_extrapolated": n_up / (rate_ref_bwd * 1e9),
        "speedup_forward_vs_ref": t_ref_fwd / t_fwd,
        "speedup_backward_vs_ref": g(t_bwd) / rate_ref_bwd,
        "speedup_forward_vs_plain_numba": t_plain / t_fwd,
        "machine_limit_G_per_s": limit,
        "forward_fraction_of_limit": g(t_fwd) / limit,
        "backward_fraction_of_limit": g(t_bwd) / limit,
        "machine_limit_1_thread_G_per_s": limit_1,
        "forward_1_thread_fraction_of_limit": g(t_fwd_1) / limit_1,
    }


def run_peers(repeats, headline, mamba_src):
    """The side-by-side table at the headline size: peers, the reference, the fast path.

    Each peer is checked against ``fast.selective_scan`` before it is timed
    (:func:`fast.bench.peers.run_peers`); ours come from ``headline``.
    """
    kw = make_inputs(**HEADLINE)
    want = numba_cpu.selective_scan(**kw).astype(np.float64)
    rows = bench_peers.run_peers(kw, want, median_time, max(1, repeats // 2), mamba_src)
    rows += [{"name": "ssm_ref.selective_scan", "time_s": headline["ref_forward_s"]},
             {"name": 'fast.selective_scan(backend="numba")',
              "time_s": headline["numba_forward_s"]}]
    n_up = headline["state_updates"]
    for row in rows:
        if "time_s" in row:
            row["G_per_s"] = n_up / row["time_s"] / 1e9
    return rows


def print_peers(rows):
    s = HEADLINE
    print(f"\nforward side by side, B={s['batch']} D={s['dim']} L={s['length']} "
          f"N={s['dstate']} float32, variable B/C, D, z, delta_bias, softplus:")
    print(f"{'implementation':46s}{'time (ms)':>11s}{'G upd/s':>10s}")
    for row in rows:
        if "time_s" in row:
            print(f"{row['name']:46s}{row['time_s'] * 1e3:11.1f}{row['G_per_s']:10.3f}")
        else:
            print(f"{row['name']:46s}  skipped: {row['skipped']}")


def run_sweep(lengths, dstates, dim, repeats, ref_dim, ref_max_length):
    rows = []
    for dstate in dstates:
        ref_rate = None
        for length in lengths:
            kw = make_inputs(1, dim, length, dstate)
            dout = np.ones_like(kw["u"])
            n_up = updates(1, dim, length, dstate)
            t_fwd = median_time(lambda: numba_cpu.selective_scan(**kw), repeats)
            bwd, faults_per_call = counting_faults(
                lambda: numba_cpu.selective_scan_backward(dout, **kw))
            t_bwd = median_time(bwd, repeats)
            faults = faults_per_call()
            # as a training step runs them: the forward keeping what its backward starts
            # from (beyond one backward block, the state entering each block), then the
            # backward from it
            t_keep = median_time(lambda: numba_cpu.selective_scan_for_backward(**kw), repeats)
            saved = numba_cpu.selective_scan_for_backward(**kw)[2]
            t_kept = median_time(lambda: numba_cpu.selective_scan_backward_saved(dout, saved),
                                 repeats)
            row = {"N": dstate, "L": length, "D": dim, "B": 1, "state_updates": n_up,
                   "numba_forward_s": t_fwd, "numba_forward_G_per_s": n_up / t_fwd / 1e9,
                   "numba_backward_s": t_bwd, "numba_backward_G_per_s": n_up / t_bwd / 1e9,
                   "backward_page_faults_per_call": faults,
                   "numba_forward_keeping_s": t_keep,
                   "chunk_states_kept": saved.starts is not None,
                   "numba_backward_kept_s": t_kept,
                   "numba_backward_kept_G_per_s": n_up / t_kept / 1e9, "ref_measured": False}
            if length <= ref_max_length:
                kw_ref = make_inputs(1, ref_dim, length, dstate)
                t_ref = median_time(lambda: ssm_ref.selective_scan(**kw_ref), 1)
                ref_rate = updates(1, ref_dim, length, dstate) / t_ref / 1e9
                row.update(ref_measured=True, ref_D=ref_dim, ref_forward_s=t_ref)
            row["ref_forward_G_per_s"] = ref_rate  # measured, or the last measured rate
            row["speedup_forward_vs_ref"] = row["numba_forward_G_per_s"] / ref_rate
            rows.append(row)
            print(f"  N={dstate:3d} L={length:6d}: fwd {row['numba_forward_G_per_s']:.2f} G/s, "
                  f"bwd {row['numba_backward_G_per_s']:.2f} G/s "
                  f"({'?' if faults is None else f'{faults:.0f}'} page faults per call), "
                  f"from a kept forward {row['numba_backward_kept_G_per_s']:.2f} G/s"
                  f"{' (chunk states kept)' if row['chunk_states_kept'] else ''}, "
                  f"x{row['speedup_forward_vs_ref']:.0f} "
                  f"vs ref{'' if row['ref_measured'] else ' (ref rate from a shorter L)'}",
                  flush=True)
    return rows


def alternating_medians(fns, repeats):
    """Median wall times of the functions ``fns``, called in turn ``repeats`` times after one
    warm-up call each (a change of load hits them alike)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [float(np.median(ts)) for ts in times]


def alternating_blocks(fns, repeats, rounds=3):
    """Median wall times of the functions ``fns``, timed in blocks that take turns.

    Each of ``rounds`` rounds gives every function one untimed call (which
    brings its data into cache, as a function timed on its own has it) and
    then ``repeats`` timed calls.  Blocks keep each function's own cache
    state, as :func:`median_time` does; their turns make a slow stretch of
    the machine hit all of them alike, as :func:`alternating_medians` does.
    """
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, ts in zip(fns, times):
            ts.extend(_times(fn, repeats))
    return [float(np.median(ts)) for ts in times]


def run_pairs(repeats, quick):
    """N = 8: two rows per 16-lane block (``fast.numba_pairs``) against 16 lanes per row.

    :data:`PAIRS` (half the batch with ``quick``), float64 and float32, grouped B and C,
    D, delta_bias and softplus (VMamba's scan has no z); forward and backward in turn,
    the channel tiles off in both (``library_runs`` says what runs by default: in float32
    the tiles of ``run_tiles``).
    """
    s = dict(PAIRS, batch=PAIRS["batch"] // 2 if quick else PAIRS["batch"])
    n_up = updates(s["batch"], s["dim"], s["length"], s["dstate"])
    rows = []
    for dtype in (np.float64, np.float32):
        kw = make_inputs(s["batch"], s["dim"], s["length"], s["dstate"], dtype)
        del kw["z"]
        rng = np.random.default_rng(2)
        for key in ("B", "C"):  # (batch, groups, N, L): one B and C per direction
            kw[key] = rng.standard_normal((s["batch"], s["groups"], s["dstate"],
                                           s["length"])).astype(dtype)
        dout = rng.standard_normal(kw["u"].shape).astype(dtype)

        def with_pairs(fn, on):
            def run():  # 16 lanes per row is the row kernel: channel tiles off
                with numba_pairs.forced(on), numba_tiles.forced(on):
                    fn()
            return run

        passes = {"forward": lambda: numba_cpu.selective_scan(**kw),
                  "backward": lambda: numba_cpu.selective_scan_backward(dout, **kw)}
        for name, fn in passes.items():
            t_pairs, t_16 = alternating_medians([with_pairs(fn, True), with_pairs(fn, False)],
                                                repeats)
            default = np.dtype(dtype) in numba_pairs.PAIRED_DTYPES[name]
            runs = ("channel tiles" if np.dtype(dtype) in numba_tiles.TILED_DTYPES and (
                name == "forward" or numba_tiles.backward_fits(s["length"], s["dstate"], dtype))
                else "pairs" if default else "16 lanes")
            rows.append({"dtype": np.dtype(dtype).name, "pass": name, **s,
                         "state_updates": n_up, "pairs_s": t_pairs, "sixteen_lanes_s": t_16,
                         "pairs_G_per_s": n_up / t_pairs / 1e9,
                         "speedup": t_16 / t_pairs, "pairs_by_default": default,
                         "library_runs": runs})
            print(f"  {np.dtype(dtype).name} {name:8s}: pairs {t_pairs * 1e3:7.2f} ms "
                  f"({n_up / t_pairs / 1e9:.2f} G/s), 16 lanes per row {t_16 * 1e3:7.2f} ms: "
                  f"{t_16 / t_pairs:.2f}x (the library runs {runs})", flush=True)
    return rows


def run_tiles(repeats, quick):
    """float32: 16 channels per vector (``fast.numba_tiles``) against 16 states per vector.

    Two sizes: :data:`HEADLINE` (Mamba's scan: variable B and C, z) and :data:`PAIRS`
    (VMamba's: grouped B and C, no z, N = 8; half the batch with ``quick``), the tile
    kernels switched on and off (``numba_tiles.forced``), timed in turn: the forward, and
    the backward where its records fit the tiles' budget (``BWD_TILE_BYTES``; VMamba's
    size, not the headline's).
    """
    rows = []
    for name, s in (("headline", HEADLINE),
                    ("VMamba 32x32", dict(PAIRS, batch=PAIRS["batch"] // 2 if quick
                                          else PAIRS["batch"]))):
        kw = make_inputs(s["batch"], s["dim"], s["length"], s["dstate"])
        if "groups" in s:
            del kw["z"]
            kw["B"], kw["C"] = (np.random.default_rng(2 + i).standard_normal(
                (s["batch"], s["groups"], s["dstate"], s["length"])).astype(np.float32)
                for i in range(2))
        dout = np.random.default_rng(1).standard_normal(kw["u"].shape).astype(np.float32)
        n_up = updates(s["batch"], s["dim"], s["length"], s["dstate"])
        passes = {"forward": lambda: numba_cpu.selective_scan(**kw)}
        if numba_tiles.backward_fits(s["length"], s["dstate"], np.float32):
            passes["backward"] = lambda: numba_cpu.selective_scan_backward(dout, **kw)
        for pass_name, fn in passes.items():
            def with_tiles(on, fn=fn):
                def run():
                    with numba_tiles.forced(on):
                        fn()
                return run

            t_tiles, t_rows = alternating_medians([with_tiles(True), with_tiles(False)],
                                                  repeats)
            rows.append({"case": name, **s, "dtype": "float32", "pass": pass_name,
                         "state_updates": n_up, "tiles_s": t_tiles, "rows_s": t_rows,
                         "tiles_G_per_s": n_up / t_tiles / 1e9,
                         "rows_G_per_s": n_up / t_rows / 1e9, "speedup": t_rows / t_tiles})
            print(f"  {name:13s} {pass_name:8s}: tiles {t_tiles * 1e3:7.2f} ms "
                  f"({n_up / t_tiles / 1e9:.2f} G/s), without {t_rows * 1e3:7.2f} ms "
                  f"({n_up / t_rows / 1e9:.2f} G/s): {t_rows / t_tiles:.2f}x", flush=True)
    return rows


def run_attention(lengths, dim, dstate, repeats, max_gb):
    """Forward time of the scan and of softmax attention of the same width, against L.

    All scan timings come first: OpenBLAS threads keep spinning for a while after
    a large matrix product and would steal the scan's cores if the two alternated.
    """
    rng = np.random.default_rng(2)
    W = [rng.standard_normal((dim, dim)).astype(np.float32) / math.sqrt(dim) for _ in range(3)]
    rows = []
    for length in lengths:
        kw = make_inputs(1, dim, length, dstate)
        rows.append({"L": length, "D": dim, "N": dstate,
                     "scan_forward_s": median_time(lambda: numba_cpu.selective_scan(**kw),
                                                   repeats),
                     "attention_forward_s": None})
    for row in rows:
        length = row["L"]
        score_gb = length * length * 4 / 1e9
        if score_gb <= max_gb:
            x = rng.standard_normal((length, dim)).astype(np.float32)
            row["attention_forward_s"] = median_time(lambda: attention(x, *W),
                                                     1 if length >= 8192 else repeats)
        att = row["attention_forward_s"]
        print(f"  L={length:6d}: scan {row['scan_forward_s'] * 1e3:9.2f} ms   attention "
              + (f"{att * 1e3:9.2f} ms" if att else f"(L x L scores = {score_gb:.1f} GB > "
                 f"{max_gb} GB: not run)"), flush=True)
    return rows


def run_gpu(repeats):
    """CUDA scan, a naive CuPy loop and the copy-bandwidth limit; None without a real GPU."""
    from numba.core import config
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or config.ENABLE_CUDASIM:
        return {"skipped": "the CUDA simulator is on; it measures nothing about a GPU"}
    available, reason = fast.backends()["cuda"]
    if not available:
        return {"skipped": f"no CUDA backend here: {reason}"}
    try:
        import cupy as cp
        cp.zeros(1)
    except Exception as exc:  # CuPy missing or no device
        return {"skipped": f"CuPy unusable: {type(exc).__name__}: {exc}"}
    sync = cp.cuda.Device().synchronize
    s = HEADLINE
    kw = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else v)
          for k, v in make_inputs(**s).items()}
    dout = cp.ones_like(kw["u"])
    n_up = updates(s["batch"], s["dim"], s["length"], s["dstate"])
    t_fwd = median_time(lambda: fast.selective_scan(**kw, backend="cuda"), repeats, sync)
    t_bwd = median_time(lambda: fast.selective_scan_backward(dout, **kw, backend="cuda"),
                        repeats, sync)

    def naive():  # one CuPy kernel launch per operation per time step
        dt = kw["delta"] + kw["delta_bias"][None, :, None]
        dt = cp.where(dt > 20, dt, cp.log1p(cp.exp(dt)))
        h = cp.zeros((s["batch"], s["dim"], s["dstate"]), cp.float32)
        ys = []
        for t in range(s["length"]):
            h = cp.exp(dt[:, :, t, None] * kw["A"][None]) * h \
                + (dt[:, :, t] * kw["u"][:, :, t])[:, :, None] * kw["B"][:, None, :, t]
            ys.append((h * kw["C"][:, None, :, t]).sum(-1))
        y = cp.stack(ys, -1) + kw["D"][None, :, None] * kw["u"]
        return y * kw["z"] / (1 + cp.exp(-kw["z"]))

    t_naive = median_time(naive, max(1, repeats // 3), sync)
    big = cp.empty(256 * 2**20 // 4, cp.float32)
    dst = cp.empty_like(big)
    t_copy = median_time(lambda: cp.copyto(dst, big), repeats, sync)
    bandwidth = 2 * big.nbytes / t_copy  # read + write bytes per second
    BDL, BNL = s["batch"] * s["dim"] * s["length"], s["batch"] * s["dstate"] * s["length"]
    fwd_bytes = 4 * (4 * BDL + 2 * BNL)  # read u, delta, z, B, C; write y
    bwd_bytes = 4 * (5 * BDL + 2 * BNL + 3 * BDL + 2 * BNL)  # + dout; write du, ddelta, dz, dB, dC
    return {
        "device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
        "cuda_forward_s": t_fwd, "cuda_forward_G_per_s": n_up / t_fwd / 1e9,
        "cuda_backward_s": t_bwd, "cuda_backward_G_per_s": n_up / t_bwd / 1e9,
        "naive_cupy_forward_s": t_naive, "speedup_vs_naive_cupy": t_naive / t_fwd,
        "copy_bandwidth_GB_per_s": bandwidth / 1e9,
        "forward_limit_s": fwd_bytes / bandwidth, "backward_limit_s": bwd_bytes / bandwidth,
        "forward_fraction_of_limit": fwd_bytes / bandwidth / t_fwd,
        "backward_fraction_of_limit": bwd_bytes / bandwidth / t_bwd,
    }


# ---------------------------------------------------------------------------
# plots and tables
# ---------------------------------------------------------------------------

def plot(result, out_dir, tag):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for dstate, marker in ((16, "o"), (64, "s")):
        rows = [r for r in result["sweep"] if r["N"] == dstate]
        if not rows:
            continue
        L = [r["L"] for r in rows]
        ax.plot(L, [r["numba_forward_G_per_s"] for r in rows], marker + "-",
                label=f"numba forward, N={dstate}")
        ax.plot(L, [r["numba_backward_G_per_s"] for r in rows], marker + "--",
                label=f"numba backward, N={dstate}")
        ax.plot(L, [r["ref_forward_G_per_s"] for r in rows], marker + ":", color="gray",
                label=f"reference forward, N={dstate}")
    limit = result["headline"]["machine_limit_G_per_s"]
    ax.axhline(limit, color="k", lw=0.8, label="machine limit (exp + FMA)")
    ax.set(xscale="log", yscale="log", xlabel="sequence length L",
           ylabel="G state updates / s", title=f"Selective scan throughput ({tag}, B=1, D=256)")
    ax.set_ylim(top=2.5 * limit)  # keep the limit line clear of the frame
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    fig.tight_layout()
    paths.append(out_dir / f"throughput_{tag}.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = result["attention"]
    L = np.array([r["L"] for r in rows], float)
    ax.plot(L, [r["scan_forward_s"] for r in rows], "o-", label="selective scan (numba)")
    La = [r["L"] for r in rows if r["attention_forward_s"]]
    ax.plot(La, [r["attention_forward_s"] for r in rows if r["attention_forward_s"]], "s-",
            label="softmax attention (NumPy)")
    # guide lines through the largest measured point of each curve
    ax.plot(L, rows[-1]["scan_forward_s"] * L / L[-1], "k:", lw=0.8, label="slope 1 (linear)")
    if La:
        t_last = [r["attention_forward_s"] for r in rows if r["attention_forward_s"]][-1]
        ax.plot(L, t_last * (L / La[-1]) ** 2, "k--", lw=0.8, label="slope 2 (quadratic)")
    ax.set(xscale="log", yscale="log", xlabel="sequence length L", ylabel="forward time (s)",
           title=f"Linear scan vs quadratic attention (width {rows[0]['D']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / f"scaling_{tag}.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return [shown(p) for p in paths]


def shown(path):
    """``path`` relative to the current directory when it is inside it, else absolute."""
    path, here = Path(path).resolve(), Path.cwd().resolve()
    return str(path.relative_to(here)) if path.is_relative_to(here) else str(path)


def print_headline(h, machine):
    s = h["sizes"]
    print(f"\nheadline: B={s['batch']} D={s['dim']} L={s['length']} N={s['dstate']} float32, "
          f"variable B/C, {s['options']}")
    print(f"{'':28s}{'time (ms)':>12s}{'G upd/s':>10s}{'vs ref':>9s}{'of limit':>10s}")
    lim = h["machine_limit_G_per_s"]
    for name, t, g, sp in (
            ("numba forward", h["numba_forward_s"], h["numba_forward_G_per_s"],
             h["speedup_forward_vs_ref"]),
            ("numba backward", h["numba_backward_s"], h["numba_backward_G_per_s"],
             h["speedup_backward_vs_ref"]),
            ("plain numba forward (libm)", h["plain_numba_forward_s"],
             h["plain_numba_forward_G_per_s"], h["ref_forward_s"] / h["plain_numba_forward_s"]),
            ("reference forward", h["ref_forward_s"], h["ref_forward_G_per_s"], 1.0),
            (f"reference backward (D={h['ref_backward_measured_at_D']})",
             h["ref_backward_s_extrapolated"], h["ref_backward_G_per_s"], 1.0)):
        print(f"{name:28s}{t * 1e3:12.1f}{g:10.3f}{sp:9.0f}x{g / lim:9.0%}")
    print(f"machine limit (vector exp + FMA, {machine['numba_threads']} threads): {lim:.2f} G/s; "
          f"backward / forward = {h['backward_over_forward']:.2f}")
    print(f"on 1 thread: forward {h['numba_forward_1_thread_G_per_s']:.2f} G/s, backward "
          f"{h['numba_backward_1_thread_G_per_s']:.2f} G/s "
          f"(backward / forward = {h['backward_over_forward_1_thread']:.2f}); machine limit "
          f"{h['machine_limit_1_thread_G_per_s']:.2f} G/s, forward "
          f"{h['forward_1_thread_fraction_of_limit']:.0%} of it")


def main(argv=None, prog=None):
    """Run the benchmark with command-line arguments ``argv`` (``sys.argv[1:]`` when None);
    ``prog`` names the command in its help and errors.  Returns the result written."""
    parser = OneLineParser(prog=prog or "python -m fast.bench.scan",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sweep and fewer repeats (under a minute)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per measurement (default 7, 3 with --quick)")
    parser.add_argument("--attention-gb", type=float, default=1.1,
                        help="largest L x L float32 score matrix for attention, in GB")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="directory for JSON and PNG (default: benchmarks/results under "
                             "the current directory)")
    parser.add_argument("--no-plot", action="store_true", help="write JSON only")
    parser.add_argument("--mamba-src", type=Path, default=None, metavar="DIR",
                        help="a clone of state-spaces/mamba: time its selective_scan_ref too "
                             "(default: the environment variable MAMBA_SRC; needs the peers "
                             "extra)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc at its defaults, which hand large freed "
                             "blocks back to the OS at every call (by default the run keeps "
                             "them, as 'ssm-ref train' does: see ssm_ref/_malloc.py)")
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)
    if repeats < 1:  # (``args.repeats or 7`` once ran a full benchmark for --repeats 0)
        parser.error(f"--repeats must be >= 1, got {repeats}")
    if not args.attention_gb > 0:
        parser.error(f"--attention-gb must be > 0, got {args.attention_gb}")
    malloc = "default (--default-malloc)" if args.default_malloc else keep_freed_memory()
    t_start, machine = start(parser, args.out)
    print(f"{machine_line(machine)}, niceness {machine['niceness']}; freed memory {malloc}")
    s = HEADLINE
    limit = machine_limit(updates(s["batch"], s["dim"], s["length"], s["dstate"]), repeats)
    headline = run_headline(repeats, ref_dim_backward=96, limit=limit)
    print_headline(headline, machine)

    lengths = [256, 1024, 4096] if args.quick else [256, 1024, 4096, 16384, 65536]
    print("\nsweep (B=1, D=256, float32):")
    sweep = run_sweep(lengths, (16, 64), dim=256, repeats=repeats, ref_dim=16,
                      ref_max_length=1024 if args.quick else 4096)
    p = PAIRS
    print(f"\nN={p['dstate']}, two rows per block (fast.numba_pairs) vs 16 lanes per row: "
          f"B={p['batch'] // (2 if args.quick else 1)} D={p['dim']} in {p['groups']} groups "
          f"L={p['length']} (VMamba's scan in a 32x32 training step):")
    pair_rows = run_pairs(repeats, args.quick)
    print("\nfloat32, 16 channels per vector (fast.numba_tiles) vs without:")
    tile_rows = run_tiles(repeats, args.quick)
    print("\nforward time, scan vs softmax attention (width 256, N=16):")
    att_lengths = [256, 512, 1024, 2048, 4096] + ([] if args.quick else [8192, 16384])
    attention_rows = run_attention(att_lengths, dim=256, dstate=16, repeats=repeats,
                                   max_gb=args.attention_gb)
    # the peers last: PyTorch's and XLA's thread pools stay busy for a while after them,
    # and a sweep run right after the peers once measured its first row 25x too slow
    peer_rows = run_peers(repeats, headline, args.mamba_src)
    print_peers(peer_rows)
    gpu = run_gpu(repeats)
    print("\nGPU:", gpu.get("skipped") or json.dumps(gpu, indent=1))

    machine["load_average_end"] = list(os.getloadavg())
    result = {"machine": machine, "quick": args.quick, "repeats": repeats, "malloc": malloc,
              "timing": "median wall time after one warm-up call",
              "reference_note": ("reference forward measured at the headline size; reference "
                                 "backward measured at D=96 and reported per state update; in "
                                 "the sweep the reference ran with D=16, at L <= "
                                 f"{1024 if args.quick else 4096} only, and longer L reuse the "
                                 "rate of the longest measured L (its cost is linear in L)"),
              "headline": headline, "peers": peer_rows, "sweep": sweep, "pairs": pair_rows,
              "tiles": tile_rows,
              "attention": attention_rows, "gpu": gpu}
    tag = ("cpu_quick" if args.quick else "cpu") + ("_default_malloc" if args.default_malloc else "")
    if not args.no_plot:
        result["plots"] = plot(result, args.out, tag)
    finish(result, args.out / f"scan_{tag}.json", t_start)
    return result


if __name__ == "__main__":
    main()
