"""Two ways to make the CPU forward scan faster that were tried and not kept, measured.

Usage (from the repository's root; a few minutes on 2 cores)::

    python benchmarks/tried_layouts.py            # writes results/tried_layouts_cpu.json
    python benchmarks/tried_layouts.py --repeats 5 --out /tmp

Chapter 11 ("Two layouts that did not pay") reads the JSON.  At the headline
size (B=1, D=1536, L=1024, N=16, float32, variable B and C with D, z,
delta_bias and softplus) it times, on one thread and on all of Numba's threads,
alternating in one process (medians):

* ``library``: ``fast.selective_scan(backend="numba")``, the kernel kept;
* ``rows``: a stand-alone copy of its loop (a row per channel, the 16 states
  of a block in one vector, the sum ``<C_t, h_t>`` across the vector's lanes
  at every step), to show the copy is as fast as the library;
* ``rows, no lane sum``: the same loop storing the 16 products instead of
  summing them: a WRONG result, timed only to bound what the sum costs;
* ``rows, tile sums``: the products of 16 steps kept in a 16 x 16 tile and
  summed by a transpose-and-add tree (LLVM ``shufflevector``), 16 sums for
  about 45 vector instructions instead of 16 x 8;
* ``channel lanes``: 16 channels in the 16 lanes instead (they share B_t and
  C_t, so ``y_t`` needs no sum across lanes), with the steps turned into
  (L, 16) tiles first and the outputs turned back;
* ``channel lanes, N = 1``: the same with one state, i.e. everything but the
  recurrence: what the layout costs before it saves anything;

and the machine's limit (``fast.bench.scan.machine_limit``: one vector exp and
one FMA per element) on each thread count.

Every variant but "no lane sum" is checked against ``ssm_ref.selective_scan``
first.  This script is the evidence for the chapter, not part of the library.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir as llvm_ir  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

import fast  # noqa: E402
import ssm_ref  # noqa: E402
from fast._fastexp import exp2_terms, fast_exp2_normal, fast_sigmoid, fast_softplus  # noqa: E402
from fast.bench.scan import machine_info, machine_limit, make_inputs, median_time  # noqa: E402
from fast.numba_cpu import _FMK, _njit_noalias  # noqa: E402

LANES = 16
LOG2E = 1.4426950408889634


# ---------------------------------------------------------------------------
# the 16 x 16 tile's row sums as a shuffle tree (cf. the library's horizontal sum)
# ---------------------------------------------------------------------------

def _tree():
    """Masks of a transpose-and-add tree over 16 vectors, and the final lane -> row order."""
    levels, rows, s = [], [[r] * LANES for r in range(LANES)], LANES
    while s > 1:
        h = s // 2
        lo = [i for s0 in range(0, LANES, s) for i in
              list(range(s0, s0 + h)) + list(range(LANES + s0, LANES + s0 + h))]
        hi = [i + h for i in lo]
        levels.append((lo, hi))
        rows = [[v for s0 in range(0, LANES, s) for v in [x[s0]] * h + [y[s0]] * h]
                for x, y in zip(rows[0::2], rows[1::2])]
        s = h
    return levels, [rows[0].index(i) for i in range(LANES)]


_LEVELS, _FINAL = _tree()


@intrinsic
def tile_row_sums(typingctx, tile, out, start):
    """out[start + i] += sum(tile[i, :16]), i < 16 (tile: C-contiguous (16, 16))."""
    sig = types.void(tile, out, start)

    def codegen(context, builder, signature, args):
        tarr = context.make_array(signature.args[0])(context, builder, args[0])
        oarr = context.make_array(signature.args[1])(context, builder, args[1])
        vec = llvm_ir.VectorType(context.get_data_type(signature.args[0].dtype), LANES)
        i64 = llvm_ir.IntType(64)

        def mask(lanes):
            return llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), len(lanes)), lanes)

        def at(ptr, index):
            return builder.bitcast(builder.gep(ptr, [index]), vec.as_pointer())

        rows = [builder.load(at(tarr.data, llvm_ir.Constant(i64, i * LANES)), align=4)
                for i in range(LANES)]
        for lo, hi in _LEVELS:
            rows = [builder.fadd(builder.shuffle_vector(x, y, mask(lo)),
                                 builder.shuffle_vector(x, y, mask(hi)))
                    for x, y in zip(rows[0::2], rows[1::2])]
        sums = builder.shuffle_vector(rows[0], llvm_ir.Constant(vec, None), mask(_FINAL))
        dst = at(oarr.data, context.cast(builder, args[2], signature.args[2], types.int64))
        builder.store(builder.fadd(builder.load(dst, align=4), sums), dst, align=4)
        return context.get_dummy_value()
    return sig, codegen


# ---------------------------------------------------------------------------
# stand-alone kernels: the headline form only (B, C of shape (1, N, L) given as (L, N))
# ---------------------------------------------------------------------------

@njit(inline="always")
def _row_prep(delta_row, u_row, bias_d, dt, bu):
    for t in range(delta_row.size):
        x = fast_softplus(delta_row[t] + bias_d)
        dt[t] = x
        bu[t] = x * u_row[t]


@njit(inline="always")
def _row_gate(y, u_row, Dd, z_row, out_row):
    for t in range(out_row.size):
        zz = z_row[t]
        out_row[t] = (y[t] + Dd * u_row[t]) * zz * fast_sigmoid(zz)


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy")
def rows_kernel(u, delta, A, Bt, Ct, Dv, z, bias, out, nchunks, mode, terms):
    """A row per channel, 16 states per vector; mode 0: lane sum, 1: none (wrong), 2: tiles."""
    nd, L = u.shape[1], u.shape[2]
    N = A.shape[1]
    zero = u.dtype.type(0)
    dt_s = np.empty((nchunks, L + 64), u.dtype)
    bu_s = np.empty((nchunks, L + 64), u.dtype)
    y_s = np.zeros((nchunks, L + 64), u.dtype)
    h_s = np.empty((nchunks, N + 64), u.dtype)
    a_s = np.empty((nchunks, N + 64), u.dtype)
    P_s = np.zeros((nchunks, LANES, LANES), u.dtype)
    for c in prange(nchunks):
        dt, bu, y, h, a, P = dt_s[c], bu_s[c], y_s[c], h_s[c], a_s[c], P_s[c]
        for d in range(c * nd // nchunks, (c + 1) * nd // nchunks):
            _row_prep(delta[0, d], u[0, d], bias[d], dt, bu)
            for n in range(N):
                a[n] = A[d, n] * LOG2E
                h[n] = zero
            for t in range(L + LANES):
                y[t] = zero
            for t in range(L):
                dtt = dt[t]
                but = bu[t]
                Bv = Bt[np.uint64(t)]
                Cv = Ct[np.uint64(t)]
                if mode == 0:
                    acc = zero
                    for j in range(LANES):
                        n = np.uint64(j)
                        hn = fast_exp2_normal(dtt * a[n], terms) * h[n] + but * Bv[n]
                        h[n] = hn
                        acc += hn * Cv[n]
                    y[t] = acc
                else:
                    Pt = P[np.uint64(t & (LANES - 1))]
                    for j in range(LANES):
                        n = np.uint64(j)
                        hn = fast_exp2_normal(dtt * a[n], terms) * h[n] + but * Bv[n]
                        h[n] = hn
                        Pt[n] = hn * Cv[n]
                    if mode == 2 and t & (LANES - 1) == LANES - 1:
                        tile_row_sums(P, y, t - (LANES - 1))
            if mode == 2 and L & (LANES - 1):
                tile_row_sums(P, y, L - (L & (LANES - 1)))
            _row_gate(y, u[0, d], Dv[d], z[0, d], out[0, d])


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy")
def lanes_kernel(u, delta, A, Bt, Ct, Dv, z, bias, out, nchunks, terms):
    """16 channels per vector (D a multiple of 16): steps to (L, 16) tiles, scan, back."""
    nd, L = u.shape[1], u.shape[2]
    N = A.shape[1]
    zero = u.dtype.type(0)
    nblk = nd // LANES
    rows_s = np.empty((nchunks, 2, LANES, L + 64), u.dtype)
    tiles_s = np.empty((nchunks, 3, L, LANES), u.dtype)
    # padded: the threads' a and h never share a cache line (an allocation need not start
    # on one; sharing one made two threads slower than one, measured)
    ah_s = np.empty((nchunks, 2, LANES + 64), u.dtype)
    for c in prange(nchunks):
        dtr, bur = rows_s[c, 0], rows_s[c, 1]
        dtT, buT, yT = tiles_s[c, 0], tiles_s[c, 1], tiles_s[c, 2]
        a, h = ah_s[c, 0], ah_s[c, 1]
        for blk in range(c * nblk // nchunks, (c + 1) * nblk // nchunks):
            d0 = blk * LANES
            for j in range(LANES):
                _row_prep(delta[0, d0 + j], u[0, d0 + j], bias[d0 + j], dtr[j], bur[j])
            for t in range(L):  # rows -> tiles
                for j in range(LANES):
                    jj = np.uint64(j)
                    dtT[t, jj] = dtr[j, t]
                    buT[t, jj] = bur[j, t]
                    yT[t, jj] = zero
            for n in range(N):
                for j in range(LANES):
                    a[np.uint64(j)] = A[d0 + j, n] * LOG2E
                    h[np.uint64(j)] = zero
                for t in range(L):
                    bn = Bt[t, n]
                    cn = Ct[t, n]
                    dtv = dtT[t]
                    buv = buT[t]
                    yv = yT[t]
                    for j in range(LANES):
                        jj = np.uint64(j)
                        hn = fast_exp2_normal(dtv[jj] * a[jj], terms) * h[jj] + buv[jj] * bn
                        h[jj] = hn
                        yv[jj] += hn * cn
            for t in range(L):  # tile -> rows
                for j in range(LANES):
                    dtr[j, t] = yT[t, np.uint64(j)]
            for j in range(LANES):
                _row_gate(dtr[j], u[0, d0 + j], Dv[d0 + j], z[0, d0 + j], out[0, d0 + j])


# ---------------------------------------------------------------------------
# the measurement
# ---------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=21, help="timed calls (default 21)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="directory of tried_layouts_cpu.json")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    dim, length, dstate = 1536, 1024, 16
    kw = make_inputs(1, dim, length, dstate)
    kw1 = make_inputs(1, dim, length, 1)
    want = ssm_ref.selective_scan(**kw)
    out = np.empty_like(kw["u"])

    def plain(k):
        return (k["u"], k["delta"], k["A"], np.ascontiguousarray(k["B"][0].T),
                np.ascontiguousarray(k["C"][0].T), k["D"], k["z"], k["delta_bias"], out)

    a16, a1 = plain(kw), plain(kw1)
    terms = exp2_terms(np.float32)  # the exponential's constants as an argument, as the library
    variants = {
        "library": lambda th: fast.selective_scan(**kw, backend="numba"),
        "rows": lambda th: rows_kernel(*a16, th, 0, terms),
        "rows, no lane sum (wrong result)": lambda th: rows_kernel(*a16, th, 1, terms),
        "rows, tile sums": lambda th: rows_kernel(*a16, th, 2, terms),
        "channel lanes": lambda th: lanes_kernel(*a16, th, terms),
        "channel lanes, N = 1": lambda th: lanes_kernel(*a1, th, terms),
    }
    errors = {}
    for name, fn in variants.items():
        if "wrong" in name or "N = 1" in name:
            continue
        got = fn(numba.get_num_threads())
        got = out if got is None else got
        errors[name] = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
        if errors[name] > 1e-4:
            raise AssertionError(f"{name} disagrees with ssm_ref: relative error {errors[name]}")
    all_threads = numba.get_num_threads()
    thread_counts = sorted({1, all_threads})
    times = {name: {} for name in variants}
    limits = {}
    for threads in thread_counts:
        numba.set_num_threads(threads)
        limits[str(threads)] = machine_limit(dim * length * dstate, 7)
        for rnd in range(3):  # rounds alternate the variants; the median of the rounds is kept
            for name, fn in variants.items():
                times[name].setdefault(threads, []).append(
                    1e3 * median_time(lambda: fn(threads), args.repeats))
    numba.set_num_threads(all_threads)
    rows = []
    print(f"B=1 D={dim} L={length} N={dstate} float32; medians of {args.repeats} calls, "
          f"median of 3 alternating rounds")
    print(f"{'variant':36s} " + " ".join(f"{f'{th} thread(s) ms':>16s}" for th in thread_counts))
    for name in variants:
        ms = {th: float(np.median(times[name][th])) for th in thread_counts}
        rows.append({"variant": name, "ms": {str(th): v for th, v in ms.items()},
                     "G_per_s": {str(th): dim * length * dstate / v / 1e6
                                 for th, v in ms.items()},
                     "relative_error": errors.get(name)})
        print(f"{name:36s} " + " ".join(f"{ms[th]:16.2f}" for th in thread_counts))
    print(f"{'machine limit, G updates/s':36s} "
          + " ".join(f"{limits[str(th)]:16.2f}" for th in thread_counts))
    result = {"machine": machine_info(), "size": {"B": 1, "D": dim, "L": length, "N": dstate,
                                                  "dtype": "float32"},
              "repeats": args.repeats, "rows": rows, "machine_limit_G_per_s": limits}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "tried_layouts_cpu.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
