"""The Numba layers around the scan against the reference's, at the models' sizes.

The norms (``fast.numba_norms``), VMamba's cross-scan (``fast.numba_cross``) and its
products (``fast.numba_projections``, ``fast.numba_linear``), Vim's merge of its two
paths (``fast.numba_bidirectional``) and PlainMamba's gate (``fast.numba_norms``).

Usage (from the repository's root; about half a minute on 2 cores)::

    python benchmarks/bench_layers.py
    python benchmarks/bench_layers.py --out benchmarks/results/amd_zen3

Each case is one layer as a training step calls it, forward and backward, with the
reference (``ssm_ref.nn``, NumPy, ``check=False`` as the blocks call it) and with the
Numba kernels, the two timed in alternating turns in this one process (the median of
each side's turns, each turn the median of ``--repeats`` calls), on the threads Numba
starts with:

* ``prenorm``: the LayerNorm of VMamba 32x32's blocks and head, tokens (64, 16, 16, 24)
  channels last;
* ``ss2d out_norm + gate``: SS2D's ``layer_norm(y) * silu(z)``, y channels first
  (64, 48, 256) as the scan leaves it, z a channel slice of the input projection's
  tokens; the reference's backward includes the transpose the scan's backward needs;
* ``vim rms``: the RMSNorm of the tiny Vim 8x8 (64, 17, 24) and of the Vim 32x32
  (64, 257, 24);
* ``ss2d cross-scan``: SS2D's four directions of the channels-first tokens (64, 48, 256)
  gathered side by side (forward: ``cross_scan``) and scattered back and summed
  (backward: ``cross_merge``, its adjoint), in VMamba's orders on the 16x16 grid.
* ``ss2d projections``: one direction's products in SS2D's core, ``x_dbl = w_x @ x`` and
  ``delta = w_dt @ dts`` (written into the grouped scan's (64, 192, 256) input) and their
  backward (the weight gradients, and the gradient added into the scan's ``du`` in place),
  x direction 1's channels of the grouped scan's input: the reference twins
  (``ssm_ref.vision.vmamba.direction_projections``) against ``fast.numba_projections``.
* ``linear in_proj``, ``linear out_proj``: VMamba 32x32's in- and out-projections, tokens
  (64, 16, 16, 24) to 96 features and (64, 16, 16, 48) to 24, ``ssm_ref.nn.linear``
  against ``fast.numba_linear``.
* ``vim merge``: Vim 32x32's merge of its two paths, ``0.5 * (y_f + flip(y_b))`` on
  (64, 48, 257) (forward), and the mixer's backward of it: ``0.5 * dy`` and its flip, then
  the two paths' ``dx`` and ``dz`` merged into the halves of one ``dxz`` (64, 96, 257);
  ``ssm_ref.vision.vim.merge_directions`` and its backward against
  ``fast.numba_bidirectional``.
* ``plainmamba gate``: PlainMamba 32x32's ``y * silu(z)``, y channels first (64, 48, 256)
  as the cross-merge leaves it, z a channel slice of the input projection's tokens, and
  its backward with ``dz`` written into that half of a (64, 256, 96) gradient:
  ``ssm_ref.vision.plainmamba.gate_forward`` and ``gate_backward`` against
  ``fast.numba_norms``.

Float64 (the models' default) and float32, BLAS on one thread as in a training step.  With
``--out`` it writes
``layers_cpu.json`` there.  A tool for chapter 11's measurements, not part of the library.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ssm_ref as sr  # noqa: E402
from fast import (  # noqa: E402
    numba_bidirectional,
    numba_cross,
    numba_linear,
    numba_norms,
    numba_projections,
)
from fast.bench.scan import machine_info, machine_line, median_time  # noqa: E402
from ssm_ref import nn  # noqa: E402
from ssm_ref.vision import plainmamba, vim, vmamba  # noqa: E402


def cases(dtype, rng):
    """``{name: (shape, {side: (forward, backward)})}``: zero-argument calls of each side."""
    out = {}
    x = rng.standard_normal((64, 16, 16, 24)).astype(dtype)  # (B, H, W, C)
    w, b = np.ones(24, dtype), np.zeros(24, dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    out["prenorm"] = (x.shape, {
        "ref": (lambda: nn.layer_norm(x, w, b, check=False),
                lambda: nn.layer_norm_backward(dy, x, w, b, check=False)),
        "numba": (lambda: numba_norms.layer_norm(x, w, b, check=False),
                  lambda: numba_norms.layer_norm_backward(dy, x, w, b, check=False))})

    y_cf = rng.standard_normal((64, 48, 256)).astype(dtype)  # (B, D, T) as the scan leaves it
    y = y_cf.transpose(0, 2, 1)  # (B, T, D) the tokens' view of it
    z = rng.standard_normal((64, 256, 96)).astype(dtype)[..., 48:]  # (B, T, D) a channel slice
    wd, bd = np.ones(48, dtype), np.zeros(48, dtype)
    dout = rng.standard_normal(y.shape).astype(dtype)

    def ref_gate():
        return nn.layer_norm(y, wd, bd, check=False) * nn.silu(z, check=False)

    def ref_gate_backward():
        y_norm = nn.layer_norm(y, wd, bd, check=False)
        dz = nn.silu_backward(dout * y_norm, z, check=False)
        dy_, dw_, db_ = nn.layer_norm_backward(dout * nn.silu(z, check=False), y, wd, bd,
                                               check=False)
        return np.ascontiguousarray(dy_.transpose(0, 2, 1)), dz, dw_, db_  # (B, D, T) for the scan

    out["ss2d out_norm + gate"] = (y.shape, {
        "ref": (ref_gate, ref_gate_backward),
        "numba": (lambda: numba_norms.norm_gate_forward(y_cf, z, wd, bd),
                  lambda: numba_norms.norm_gate_backward(dout, y_cf, z, wd, bd))})

    for length in (17, 257):
        xv = rng.standard_normal((64, length, 24)).astype(dtype)  # (B, L, C)
        dyv = rng.standard_normal(xv.shape).astype(dtype)
        out[f"vim rms L={length}"] = (xv.shape, {
            "ref": (lambda xv=xv: nn.rms_norm(xv, w, check=False),
                    lambda xv=xv, dyv=dyv: nn.rms_norm_backward(dyv, xv, w, check=False)),
            "numba": (lambda xv=xv: numba_norms.rms_norm(xv, w, check=False),
                      lambda xv=xv, dyv=dyv: numba_norms.rms_norm_backward(dyv, xv, w,
                                                                           check=False))})

    perms, _ = sr.vision.SS2D(d_model=24, d_state=8, seed=0)._perms(16, 16)  # VMamba's 4 orders
    ys = rng.standard_normal((64, 4 * 48, 256)).astype(dtype)  # (B, K·D, L)
    out["ss2d cross-scan"] = (y_cf.shape, {
        "ref": (lambda: vmamba.cross_scan(y_cf, perms),
                lambda: vmamba.cross_merge(ys, perms, 256)),
        "numba": (lambda: numba_cross.cross_scan(y_cf, perms),
                  lambda: numba_cross.cross_merge(ys, perms, 256))})

    D, R, N = 48, 3, 8  # VMamba 32x32's SS2D: d_inner, dt_rank, d_state; direction k = 1
    xk = rng.standard_normal((64, 4 * D, 256)).astype(dtype)[:, D:2 * D]  # (B, D, L) a slice
    w_x = rng.standard_normal((R + 2 * N, D)).astype(dtype)
    w_dt = rng.standard_normal((D, R)).astype(dtype)
    x_dbl = rng.standard_normal((64, R + 2 * N, 256)).astype(dtype)
    grads = rng.standard_normal((64, 4 * D, 256)).astype(dtype)  # the scan's ddelta
    dBC = rng.standard_normal((2, 64, 4, N, 256)).astype(dtype)  # its dB and dC (B, K, N, L)
    du_given = rng.standard_normal((64, 4 * D, 256)).astype(dtype)  # the scan's du
    sides = {}
    for side, module in (("ref", vmamba), ("numba", numba_projections)):
        delta, du = np.empty((64, 4 * D, 256), dtype), du_given.copy()  # each side's own

        def forward(module=module, delta=delta):
            return module.direction_projections(xk, w_x, w_dt, R, out=delta[:, D:2 * D])

        def backward(module=module, du=du):
            return module.direction_projections_backward(
                grads[:, D:2 * D], dBC[0, :, 1], dBC[1, :, 1], xk, x_dbl[:, :R], w_x, w_dt,
                du[:, D:2 * D]) + (du[:, D:2 * D],)
        sides[side] = (forward, backward)
    out["ss2d projections"] = (xk.shape, sides)

    for proj, n_in, n_out in (("in_proj", 24, 96), ("out_proj", 48, 24)):  # VMamba 32x32's
        xt = rng.standard_normal((64, 16, 16, n_in)).astype(dtype)  # (B, H, W, in) tokens
        wt, bt = (rng.standard_normal(s).astype(dtype) for s in ((n_out, n_in), (n_out,)))
        dyt = rng.standard_normal((64, 16, 16, n_out)).astype(dtype)
        out[f"linear {proj}"] = (xt.shape, {
            side: (lambda f=f, xt=xt, wt=wt, bt=bt: f.linear(xt, wt, bt, check=False),
                   lambda f=f, xt=xt, wt=wt, bt=bt, dyt=dyt: f.linear_backward(
                       dyt, xt, wt, bt, check=False))
            for side, f in (("ref", nn), ("numba", numba_linear))})

    y_f, y_b, dyv = (rng.standard_normal((64, 48, 257)).astype(dtype) for _ in range(3))
    dx_f, dx_b, dz_f, dz_b = (rng.standard_normal((64, 48, 257)).astype(dtype)
                              for _ in range(4))  # the two paths' dx and dz
    sides = {}
    for side, module in (("ref", vim), ("numba", numba_bidirectional)):
        dxz = np.empty((64, 96, 257), dtype)  # each side's own, written half by half

        def backward(module=module, dxz=dxz):
            return module.merge_directions_backward(dyv, 0.5) + (
                module.merge_directions(dx_f, dx_b, out=dxz[:, :48]),
                module.merge_directions(dz_f, dz_b, out=dxz[:, 48:]))
        sides[side] = (lambda module=module: module.merge_directions(y_f, y_b, 0.5), backward)
    out["vim merge"] = (y_f.shape, sides)

    sides = {}
    for side, module in (("ref", plainmamba), ("numba", numba_norms)):
        dxz_p = np.empty((64, 256, 96), dtype)  # each side's own: dz into its z half

        def backward(module=module, dxz_p=dxz_p):
            return module.gate_backward(dout, y_cf, z, dz=dxz_p[..., 48:])
        sides[side] = (lambda module=module: module.gate_forward(y_cf, z), backward)
    out["plainmamba gate"] = (y_cf.shape, sides)
    return out


def run(turns, repeats):
    rng = np.random.default_rng(0)
    rows = []
    for dtype in ("float64", "float32"):
        for name, (shape, sides) in cases(np.dtype(dtype), rng).items():
            for i, pass_name in enumerate(("forward", "backward")):
                times = {"ref": [], "numba": []}
                for side in times:
                    sides[side][i]()  # compile or warm up
                for turn in range(turns):
                    order = ("ref", "numba") if turn % 2 == 0 else ("numba", "ref")
                    for side in order:
                        times[side].append(median_time(sides[side][i], repeats))
                ref_ms, numba_ms = (1e3 * float(np.median(times[s])) for s in ("ref", "numba"))
                rows.append({"case": name, "dtype": dtype, "pass": pass_name,
                             "shape": list(shape), "ref_ms": ref_ms, "numba_ms": numba_ms,
                             "ratio": ref_ms / numba_ms})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=6, help="alternating turns per side (6)")
    parser.add_argument("--repeats", type=int, default=9, help="calls per turn (9)")
    parser.add_argument("--out", help="a folder for layers_cpu.json")
    args = parser.parse_args(argv)
    machine = machine_info()
    print(machine_line(machine))
    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):  # as a training step runs
        rows = run(args.turns, args.repeats)
    print(f"medians of {args.turns} alternating turns of {args.repeats} calls each\n")
    print(f"{'case':22s} {'dtype':8s} {'pass':9s} {'shape':18s} {'ref ms':>9s} "
          f"{'numba ms':>9s} {'ref / numba':>11s}")
    for r in rows:
        print(f"{r['case']:22s} {r['dtype']:8s} {r['pass']:9s} {str(tuple(r['shape'])):18s} "
              f"{r['ref_ms']:9.2f} {r['numba_ms']:9.2f} {r['ratio']:10.1f}x")
    if args.out:
        path = Path(args.out) / "layers_cpu.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"machine": machine, "turns": args.turns,
                                    "repeats": args.repeats, "rows": rows,
                                    "wall_time_s": time.perf_counter() - start}, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
