"""The Numba backend called from several Python threads at once.

Numba's ``workqueue`` threading layer (Numba's fallback when neither TBB
nor OpenMP is installed) aborts the whole process on two concurrent
parallel launches, so every parallel kernel of ``fast`` (the scan kernels,
``fast._fastexp.exp_array``, the benchmark kernels of ``fast.bench.scan``) is
launched through one lock under that layer (``fast._launch.launch``).  Each
test runs in a subprocess, because the threading layer is chosen once per
process, before the first parallel launch, from ``NUMBA_THREADING_LAYER``.  Oracle: the same call
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
from fast import _launch
from fast._fastexp import exp_array
from fast.bench import scan as bench_scan

rng = np.random.default_rng(0)
nb, nd, nl, ns = 2, 32, 64, 5  # nb * nd * nl = 4096: u as a strided view takes the tiled copy
u = np.ascontiguousarray(rng.standard_normal((nb, nl, nd))).transpose(0, 2, 1)  # (B, D, L) view
kw = dict(u=u, delta=rng.random((nb, nd, nl)), A=-rng.random((nd, ns)),
          B=rng.standard_normal((nb, ns, nl)), C=rng.standard_normal((nb, ns, nl)),
          D=rng.standard_normal(nd), z=rng.standard_normal((nb, nd, nl)),
          delta_bias=rng.random(nd), delta_softplus=True)
dout = rng.standard_normal((nb, nd, nl))
x_exp = rng.uniform(-50.0, 50.0, 4096)
step = dict(state=rng.standard_normal((nb, nd, ns)), x=rng.standard_normal((nb, nd)),
            dt=rng.random((nb, nd)), A=kw["A"], B=rng.standard_normal((nb, ns)),
            C=rng.standard_normal((nb, ns)), D=kw["D"])


def run_all():
    y, last = fast.selective_scan(**kw, return_last_state=True, backend="numba")
    grads = fast.selective_scan_backward(dout, **kw, backend="numba")
    y_step, state = fast.selective_state_step(**step, backend="numba")
    out = {"y": y, "last": last, "y_step": y_step, "state": state,
           "exp": exp_array(x_exp), "exp_clamped": exp_array(x_exp, clamped=True)}
    bench_scan.machine_limit(4096, 1)  # its kernel's launch (a timing: nothing to compare)
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
print(json.dumps({"layer": numba.threading_layer(), "threadsafe": _launch.layer_threadsafe,
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
            "ddelta", "ddelta_bias", "exp", "exp_clamped"} <= set(report["arrays"])
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



def _parallel_kernels_and_direct_calls():
    """The ``parallel=True`` functions of fast/ and fast/bench/, and every call of one that
    does not go through ``launch`` (``(file, line, name)``)."""
    import ast
    kernels, direct = set(), []
    files = sorted((ROOT / "fast").glob("*.py")) + sorted((ROOT / "fast" / "bench").glob("*.py"))
    trees = {f: ast.parse(f.read_text()) for f in files}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                for dec in node.decorator_list:
                    if isinstance(dec, ast.Call) and any(
                            k.arg == "parallel" and getattr(k.value, "value", None) is True
                            for k in dec.keywords):
                        kernels.add(node.name)
    for f, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):  # a kernel named anywhere in what is called
                called = {n.id if isinstance(n, ast.Name) else n.attr
                          for n in ast.walk(node.func) if isinstance(n, (ast.Name, ast.Attribute))}
                direct += [(f.name, node.lineno, name) for name in sorted(called & kernels)]
    return kernels, direct


def test_every_parallel_kernel_is_launched_through_the_lock():
    """No ``parallel=True`` kernel of the package is called directly: each goes through
    ``fast._launch.launch`` (passed as its first argument), so none escapes the lock."""
    kernels, direct = _parallel_kernels_and_direct_calls()
    assert {"_exp_into", "_exp_clamped_into", "plain_numba_forward",
            "machine_limit_kernel", "_tiled_copy"} <= kernels
    assert direct == []
