"""The Numba backend called from several Python threads at once.

Numba's ``workqueue`` threading layer (Numba's fallback when neither TBB
nor OpenMP is installed) aborts the whole process on two concurrent
parallel launches, so ``fast.numba_cpu`` serialises its launches under that
layer (``fast.numba_cpu._launch``).  Each test runs in a subprocess,
because the threading layer is chosen once per process, before the first
parallel launch, from ``NUMBA_THREADING_LAYER``.  Oracle: the same call
made once from the main thread before the threads start; every threaded
result must equal it bit for bit (the kernels are deterministic for a fixed
thread count).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]

#: run in the subprocess: 4 threads x 5 rounds of forward, backward and the
#: decoding step, each compared with the single-threaded result; prints a JSON line
SCRIPT = r"""
import json, sys, threading
import numpy as np
import numba
import fast
from fast import numba_cpu

rng = np.random.default_rng(0)
nb, nd, nl, ns = 2, 32, 64, 5  # nb * nd * nl = 4096: u as a strided view takes the tiled copy
u = np.ascontiguousarray(rng.standard_normal((nb, nl, nd))).transpose(0, 2, 1)  # (B, D, L) view
kw = dict(u=u, delta=rng.random((nb, nd, nl)), A=-rng.random((nd, ns)),
          B=rng.standard_normal((nb, ns, nl)), C=rng.standard_normal((nb, ns, nl)),
          D=rng.standard_normal(nd), z=rng.standard_normal((nb, nd, nl)),
          delta_bias=rng.random(nd), delta_softplus=True)
dout = rng.standard_normal((nb, nd, nl))
step = dict(state=rng.standard_normal((nb, nd, ns)), x=rng.standard_normal((nb, nd)),
            dt=rng.random((nb, nd)), A=kw["A"], B=rng.standard_normal((nb, ns)),
            C=rng.standard_normal((nb, ns)), D=kw["D"])


def run_all():
    y, last = fast.selective_scan(**kw, return_last_state=True, backend="numba")
    grads = fast.selective_scan_backward(dout, **kw, backend="numba")
    y_step, state = fast.selective_state_step(**step, backend="numba")
    out = {"y": y, "last": last, "y_step": y_step, "state": state}
    out.update({"d" + name: g for name, g in grads.items() if g is not None})
    return out


expected = run_all()  # single-threaded, before any thread starts
mismatches, errors, calls = [], [], [0]


def worker():
    try:
        for _ in range(5):
            got = run_all()
            calls[0] += 1
            mismatches.extend(k for k in expected if not np.array_equal(got[k], expected[k]))
    except Exception as e:  # reported, and the test fails on it
        errors.append(repr(e))


threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"layer": numba.threading_layer(), "threadsafe": numba_cpu._layer_threadsafe,
                  "calls": calls[0], "arrays": sorted(expected), "mismatches": mismatches,
                  "errors": errors}))
"""


def _run_threads(layer):
    """Run SCRIPT with ``NUMBA_THREADING_LAYER=layer`` (None: Numba's default choice)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_NUM_THREADS="2")
    env.pop("NUMBA_THREADING_LAYER", None)
    if layer is not None:
        env["NUMBA_THREADING_LAYER"] = layer
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=300)
    # a concurrent launch under workqueue ends the process with SIGABRT (returncode -6)
    assert res.returncode == 0, f"exit status {res.returncode}\n{res.stderr[-3000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def _check(report):
    assert report["errors"] == []
    assert report["calls"] == 4 * 5
    assert {"y", "last", "y_step", "state", "du", "dA", "dB", "dC", "dD", "dz",
            "ddelta", "ddelta_bias"} <= set(report["arrays"])
    assert report["mismatches"] == []


def test_threads_under_workqueue():
    """workqueue is not thread-safe: the launches are serialised, nothing aborts."""
    report = _run_threads("workqueue")
    assert report["layer"] == "workqueue"
    assert report["threadsafe"] is False  # the lock stays in use
    _check(report)


def test_threads_under_default_layer():
    """Numba's own choice (tbb, omp, then workqueue): correct results, and no lock
    after the first launch when the layer is thread-safe."""
    report = _run_threads(None)
    assert report["layer"] in {"tbb", "omp", "workqueue"}
    assert report["threadsafe"] is (report["layer"] != "workqueue")
    _check(report)

