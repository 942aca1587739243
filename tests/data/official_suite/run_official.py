"""Run the official state-spaces/mamba scan tests against ssm-ref's ``fast`` backends.

The official test files

- ``tests/ops/test_selective_scan.py``                 (``selective_scan_fn`` against
                                                        ``selective_scan_ref``, forward and
                                                        backward),
- ``tests/ops/triton/test_selective_state_update.py``  (``selective_state_update`` against
                                                        ``selective_state_update_ref``, in place)

are run with pytest, unmodified except that ``device = "cuda"`` reads ``device = "cpu"``.  They
import a throwaway ``mamba_ssm`` package, built in a temporary directory by this script, in which

- ``selective_scan_fn`` is :func:`selective_scan_fn` below: a ``torch.autograd.Function`` whose
  forward hands the tensors to :func:`fast.selective_scan` as NumPy arrays and whose backward
  calls :func:`fast.selective_scan_backward`;
- ``selective_state_update`` is :func:`selective_state_update` below:
  :func:`fast.selective_state_update` on the NumPy views of the tensors, so the state is
  updated in place;
- ``selective_scan_ref``, ``mamba_inner_ref`` and ``selective_state_update_ref`` are the official
  functions, their source read from the snapshot given (the oracle).

No official code is kept in this repository: ``--mamba-src`` (or ``--mamba-git``) names a
snapshot outside it.  Each test file runs once per backend (``--backends``, default ``ref
numba``), the backend told to the adapters by the environment variable ``SSM_REF_BACKEND``.
The cases run are those whose dtypes are in ``--dtypes`` (default: float32, complex64, float16
and bfloat16, every dtype the official files use; torch bfloat16 tensors reach ``fast`` as
``ml_dtypes.bfloat16`` arrays) and, with ``--keep EXPR``, for which the Python expression is true
of the case's parameters; the others are deselected and counted.  ``test_mamba_inner_fn`` is
deselected: the fused ``mamba_inner_fn`` and its reference need the ``causal-conv1d`` CUDA
package, and the reference itself calls ``selective_scan_fn``, so it would compare the adapter
with itself.

The decoding-step file also runs on a yardstick, the backend ``official-kernel-f32``
(:func:`kernel_state_update`): the official Triton kernel's arithmetic emulated in float32
PyTorch.  A case it fails is one where the official test's tolerance does not hold for the
official kernel's own arithmetic on these (CPU-generated) inputs.

The summary (passed / failed / skipped / deselected per file and backend, each failure's id,
dtypes, failing assert and first lines, the snapshot's commit, the SHA-256 of this file) is
written as JSON to ``--out`` (default ``results.json`` next to this file);
``tests/test_official_suite.py`` checks it.  ``--widen`` runs the wider parametrization the
official files keep as comments (:func:`widen_parametrize`).

Usage (any Python with torch (CPU), einops, numpy, numba, ml_dtypes and pytest; ``--torch-site``
adds the site-packages of another environment that has torch and einops)::

    git --git-dir=/path/to/mamba.git archive HEAD mamba_ssm tests | tar -x -C /tmp/mamba_src
    python tests/data/official_suite/run_official.py --mamba-src /tmp/mamba_src \\
        --commit $(git --git-dir=/path/to/mamba.git rev-parse HEAD)
    # or let the script do the archive:
    python tests/data/official_suite/run_official.py --mamba-git /path/to/mamba.git

This module imports torch only inside its functions (pytest imports it for the doctests of
``tests/data``).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
BACKEND_ENV = "SSM_REF_BACKEND"
DTYPES_ENV = "SSM_REF_DTYPES"
DESELECTED_ENV = "SSM_REF_DESELECTED_FILE"
KEEP_ENV = "SSM_REF_KEEP"
#: the pseudo-backend that runs :func:`kernel_state_update` (the decoding-step tests only)
EMULATION = "official-kernel-f32"

#: official test files, by the short name used in the summary
TEST_FILES = {
    "test_selective_scan": "tests/ops/test_selective_scan.py",
    "test_selective_state_update": "tests/ops/triton/test_selective_state_update.py",
}

#: official module -> (its functions kept as the oracle, the names the adapters provide)
MODULES = {
    "mamba_ssm/ops/selective_scan_interface.py": (
        ("selective_scan_ref", "mamba_inner_ref"),
        ("selective_scan_fn", "mamba_inner_fn", "causal_conv1d_fn")),
    "mamba_ssm/ops/triton/selective_state_update.py": (
        ("selective_state_update_ref",),
        ("selective_state_update",)),
}

#: test functions not run, and why
NOT_RUN = {
    "test_mamba_inner_fn": "mamba_inner_fn and mamba_inner_ref need the causal-conv1d CUDA "
                           "package, and mamba_inner_ref calls selective_scan_fn (the adapter) "
                           "itself",
}

HEADER = '''"""Generated by ssm-ref's tests/data/official_suite/run_official.py: the adapters are
ssm-ref's, the functions below them are the official ones, read from {src}."""
import math
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from run_official import {adapters}
'''

CONFTEST = '''"""Generated by run_official.py: deselects the cases outside the dtypes asked for."""
import json
import os

import torch

NOT_RUN = {not_run!r}


def pytest_collection_modifyitems(config, items):
    allowed = set(os.environ["{dtypes_env}"].split(","))
    keep_expr = os.environ.get("{keep_env}")
    keep, dropped, gone, kept = [], [], {{}}, {{}}
    for item in items:
        name = item.originalname if hasattr(item, "originalname") else item.name
        params = getattr(getattr(item, "callspec", None), "params", {{}})
        dtypes = {{str(v).replace("torch.", "") for v in params.values()
                  if isinstance(v, torch.dtype)}}
        why = None
        if name in NOT_RUN:
            why = NOT_RUN[name]
        elif not dtypes <= allowed:
            why = "dtype " + ", ".join(sorted(dtypes - allowed)) + " not asked for"
        elif keep_expr and not eval(keep_expr, {{"params": params, "name": name,
                                                 "torch": torch}}):
            why = "outside --keep " + keep_expr
        if why is None:
            keep.append(item)
            kept[item.name] = sorted(dtypes)
        else:
            dropped.append(item)
            gone.setdefault(why, []).append(item.name)
    items[:] = keep
    config.hook.pytest_deselected(items=dropped)
    with open(os.environ["{deselected_env}"], "w") as f:
        json.dump({{"deselected": gone, "dtypes": kept}}, f)
'''


# --------------------------------------------------------------------------------------------
# The adapters (imported by the generated mamba_ssm package)
# --------------------------------------------------------------------------------------------

def _backend():
    backend = os.environ.get(BACKEND_ENV)
    if backend is None:
        raise RuntimeError(f"set {BACKEND_ENV} to the fast backend the adapters call")
    return backend


def to_numpy(t):
    """A NumPy view of a CPU tensor (``ml_dtypes.bfloat16`` for bfloat16), ``None`` kept.

    The view shares memory with the tensor, so a write into it (the state of
    :func:`selective_state_update`) is a write into the tensor.
    """
    import torch
    if t is None:
        return None
    if t.device.type != "cpu":
        raise TypeError(f"the adapters take CPU tensors, got one on {t.device}")
    t = t.detach()
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def to_torch(a):
    """A tensor from a NumPy array (``ml_dtypes.bfloat16`` to bfloat16), ``None`` kept."""
    import numpy as np
    import torch
    if a is None:
        return None
    a = np.ascontiguousarray(a)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


_SCAN_FN = []


def _scan_function():
    """The ``torch.autograd.Function`` of :func:`selective_scan_fn` (made on first use)."""
    if _SCAN_FN:
        return _SCAN_FN[0]
    import torch

    import fast

    class SelectiveScan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
            args = [to_numpy(t) for t in (u, delta, A, B, C, D, z, delta_bias)]
            out, last_state = fast.selective_scan(*args, delta_softplus=delta_softplus,
                                                  return_last_state=True, backend=_backend())
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
            ctx.delta_softplus = delta_softplus
            out, last_state = to_torch(out), to_torch(last_state)
            ctx.mark_non_differentiable(last_state)  # as the official: no gradient of it
            return (out, last_state) if return_last_state else out

        @staticmethod
        def backward(ctx, dout, *unused):
            args = [to_numpy(t) for t in ctx.saved_tensors]
            grads = fast.selective_scan_backward(to_numpy(dout), *args,
                                                 delta_softplus=ctx.delta_softplus,
                                                 backend=_backend())
            names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
            return tuple(to_torch(grads[n]) for n in names) + (None, None)

    _SCAN_FN.append(SelectiveScan)
    return SelectiveScan


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """The official ``selective_scan_fn`` signature onto ``fast.selective_scan`` (autograd)."""
    if _backend() == EMULATION:
        raise NotImplementedError(f"{EMULATION} emulates the decoding step only")
    return _scan_function().apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  return_last_state)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False, state_batch_indices=None):
    """The official ``selective_state_update`` onto ``fast.selective_state_update``, in place.

    With the backend :data:`EMULATION`, :func:`kernel_state_update` instead.
    """
    if _backend() == EMULATION:
        return kernel_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                   state_batch_indices)
    import fast
    out = fast.selective_state_update(
        to_numpy(state), *[to_numpy(t) for t in (x, dt, A, B, C, D, z, dt_bias)],
        dt_softplus=dt_softplus, state_batch_indices=to_numpy(state_batch_indices),
        backend=_backend())
    return to_torch(out)


def kernel_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                        dt_softplus=False, state_batch_indices=None):
    """The arithmetic of the official Triton decoding kernel, emulated in PyTorch float32.

    Not a backend of ssm-ref: a yardstick for the official tests' tolerances.  Written from the
    kernel's semantics: every input is loaded into float32 registers, ``dt += dt_bias``,
    softplus where ``dt <= 20``, ``h = h * exp(A dt) + B dt x``; the output is read from the
    float32 ``h`` (``sum_n h C + D x``, times ``z sigmoid(z)``) and ``h`` is stored in the
    state's dtype.  The official reference instead reads the output from the state *after* it
    was stored (rounded to bfloat16 for a bfloat16 state).  A test case that this emulation fails
    is one whose tolerance the official kernel's own arithmetic does not meet on these inputs.
    """
    import torch
    heads = state.dim() == 4
    one = (lambda t: t) if heads else (lambda t: None if t is None else t.unsqueeze(1))
    x, dt, z, A = one(x), one(dt), one(z), A if heads else A.unsqueeze(0)
    D, dt_bias = (D, dt_bias) if heads else (None if D is None else D.unsqueeze(0),
                                             None if dt_bias is None else dt_bias.unsqueeze(0))
    B, C = (B, C) if B.dim() == 3 else (B.unsqueeze(1), C.unsqueeze(1))
    view = state if heads else state.unsqueeze(1)
    rows = None if state_batch_indices is None else state_batch_indices.long()
    if rows is not None and bool((rows < 0).any()):
        raise ValueError("the emulation takes no padding (negative) state_batch_indices")
    h = (view if rows is None else view[rows]).float()
    step = dt.float() + (0.0 if dt_bias is None else dt_bias.float())
    if dt_softplus:
        step = torch.where(step <= 20.0, torch.log1p(torch.exp(step)), step)
    repeat = h.shape[1] // B.shape[1]
    Bh = B.float().repeat_interleave(repeat, dim=1)[:, :, None, :]
    Ch = C.float().repeat_interleave(repeat, dim=1)[:, :, None, :]
    h = h * torch.exp(A.float() * step[..., None]) + Bh * step[..., None] * x.float()[..., None]
    out = (h * Ch).sum(-1)
    if D is not None:
        out = out + x.float() * D.float()
    if z is not None:
        out = out * (z.float() * torch.sigmoid(z.float()))
    if rows is None:
        view.copy_(h.to(state.dtype))
    else:
        view[rows] = h.to(state.dtype)
    out = out.to(x.dtype)
    return out if heads else out.squeeze(1)


def mamba_inner_fn(*args, **kwargs):
    """Not adapted (see ``NOT_RUN``); raises."""
    raise NotImplementedError(NOT_RUN["test_mamba_inner_fn"])


causal_conv1d_fn = None  # as the official module without the causal-conv1d package


# --------------------------------------------------------------------------------------------
# Building the throwaway package and running pytest
# --------------------------------------------------------------------------------------------

def file_sha256(path=__file__):
    """SHA-256 of a file's bytes (by default this script: the summary names its adapter)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def official_functions(source, names):
    r"""The source text of the top-level functions ``names`` of a module's ``source``.

    Examples
    --------
    >>> print(official_functions("import os\n\ndef f(x):\n    return x\n", ["f"]))
    def f(x):
        return x
    """
    tree = ast.parse(source)
    lines = source.splitlines()
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            found[node.name] = "\n".join(lines[start - 1:node.end_lineno])
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"the official module has no function {missing}")
    return "\n\n\n".join(found[n] for n in names)


def build_tree(src, work, widen=False):
    """Write the throwaway ``mamba_ssm`` package and the device-substituted tests into ``work``.

    With ``widen``, the tests' parametrizations are widened (:func:`widen_parametrize`).
    Returns ``{short name: test path}`` and ``{short name: lines widened}``.
    """
    src, work = Path(src), Path(work)
    for module, (refs, adapters) in MODULES.items():
        text = (src / module).read_text()
        out = work / module
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(HEADER.format(src=module, adapters=", ".join(adapters)) + "\n\n"
                       + official_functions(text, refs) + "\n")
        for parent in out.relative_to(work).parents:
            if str(parent) != ".":
                (work / parent / "__init__.py").touch()
    tests, widened = {}, {}
    for short, rel in TEST_FILES.items():
        text = (src / rel).read_text()
        if widen:
            text, widened[short] = widen_parametrize(text)
        new, count = re.subn(r"""device = (['"])cuda\1""", 'device = "cpu"', text)
        if count == 0:
            raise ValueError(f"{rel}: no device = 'cuda' line to substitute")
        dest = work / "tests" / Path(rel).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(new)
        tests[short] = dest
    (work / "tests" / "conftest.py").write_text(CONFTEST.format(
        not_run=NOT_RUN, dtypes_env=DTYPES_ENV, keep_env=KEEP_ENV,
        deselected_env=DESELECTED_ENV))
    (work / "pytest.ini").write_text("[pytest]\n")
    return tests, widened


_PARAMETRIZE = re.compile(
    r"""^(\s*)(# ?)?@pytest\.mark\.parametrize\((['"])(\w+)\3, (\[.*\])\)\s*$""")


def _count(values):
    """The number of values of a list written in Python (``[torch.float32, torch.bfloat16]``)."""
    return len(ast.parse(values, mode="eval").body.elts)


def widen_parametrize(text):
    r"""The official test text with each parametrization widened to its commented-out list.

    The official files keep the full lists of values above the active ones as comments
    (``# @pytest.mark.parametrize('seqlen', [8, 16, ..., 4096])`` over ``[128, ..., 4096]``).
    Each active ``@pytest.mark.parametrize(name, [...])`` takes the longest list among the
    commented-out ones of the same name in the block of decorator lines around it.  Returns the
    new text and the number of lines changed.

    Examples
    --------
    >>> text = ("# @pytest.mark.parametrize('L', [8, 16, 128])\n"
    ...         "@pytest.mark.parametrize('L', [128])\n"
    ...         "def test_x(L):\n")
    >>> new, changed = widen_parametrize(text)
    >>> changed, new.splitlines()[1]
    (1, "@pytest.mark.parametrize('L', [8, 16, 128])")
    """
    lines = text.splitlines()
    changed = 0
    for i, line in enumerate(lines):
        m = _PARAMETRIZE.match(line)
        if not m or m.group(2):
            continue
        name, best = m.group(4), m.group(5)
        j = i
        while j > 0 and lines[j - 1].lstrip().startswith(("@", "#")):
            j -= 1
        k = i
        while k + 1 < len(lines) and lines[k + 1].lstrip().startswith(("@", "#")):
            k += 1
        for other in lines[j:k + 1]:
            o = _PARAMETRIZE.match(other)
            if o and o.group(2) and o.group(4) == name and _count(o.group(5)) > _count(best):
                best = o.group(5)
        if best != m.group(5):
            quote = m.group(3)
            lines[i] = f"{m.group(1)}@pytest.mark.parametrize({quote}{name}{quote}, {best})"
            changed += 1
    return "\n".join(lines) + "\n", changed


def first_lines(text, n=6):
    """The first ``n`` non-empty lines of a failure message."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return "\n".join(lines[:n])


def run_file(test, backend, work, dtypes, keep, extra_path, timeout):
    """Run one official test file with one backend; return its summary dict."""
    junit = work / f"junit-{test.stem}-{backend}.xml"
    deselected = work / f"deselected-{test.stem}-{backend}.json"
    env = dict(os.environ)
    env[BACKEND_ENV] = backend
    env[DTYPES_ENV] = ",".join(dtypes)
    env[DESELECTED_ENV] = str(deselected)
    if keep:
        env[KEEP_ENV] = keep
    env["PYTHONPATH"] = os.pathsep.join([str(work), str(HERE), str(ROOT)] + list(extra_path)
                                        + [env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
           str(work), "-c", str(work / "pytest.ini"), f"--junitxml={junit}", str(test)]
    start = time.time()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                          timeout=timeout)
    seconds = round(time.time() - start, 1)
    if not junit.exists():
        raise RuntimeError(f"pytest wrote no report for {test.name} ({backend}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    summary = {"passed": 0, "failed": 0, "skipped": 0, "deselected": 0, "failures": [],
               "seconds": seconds}
    report = json.loads(deselected.read_text()) if deselected.exists() else {}
    gone, kept = report.get("deselected", {}), report.get("dtypes", {})
    for case in ET.parse(junit).getroot().iter("testcase"):
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            summary["failed"] += 1
            failing = [line[1:].strip() for line in (bad.text or "").splitlines()
                       if line.startswith(">")]
            summary["failures"].append({"id": case.get("name"),
                                        "dtypes": kept.get(case.get("name")),
                                        "line": failing[-1] if failing else None,
                                        "message": first_lines(bad.get("message"))})
        elif case.find("skipped") is not None:
            summary["skipped"] += 1
        else:
            summary["passed"] += 1
    summary["deselected"] = sum(len(v) for v in gone.values())
    summary["deselected_why"] = {why: len(ids) for why, ids in gone.items()}
    return summary


def versions():
    """Versions of the packages the run used."""
    import importlib.metadata as md
    out = {"python": sys.version.split()[0]}
    for name in ("torch", "numpy", "numba", "ml_dtypes", "einops", "pytest"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def main(argv=None):
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--mamba-src", help="an extracted snapshot of state-spaces/mamba")
    g.add_argument("--mamba-git", help="a git directory of state-spaces/mamba (archived here)")
    p.add_argument("--rev", default="HEAD", help="revision of --mamba-git (default HEAD)")
    p.add_argument("--commit", help="the commit of --mamba-src (recorded in the summary)")
    p.add_argument("--backends", nargs="+", default=["ref", "numba"])
    p.add_argument("--dtypes", nargs="+",
                   default=["float32", "complex64", "float16", "bfloat16"])
    p.add_argument("--files", nargs="+", default=list(TEST_FILES), choices=list(TEST_FILES))
    p.add_argument("--no-emulation", dest="emulation", action="store_false",
                   help=f"do not run the decoding-step tests on {EMULATION} as well")
    p.add_argument("--widen", action="store_true",
                   help="widen each parametrization to its commented-out full list (the "
                        "official files keep them as comments); combine with --keep and --out")
    p.add_argument("--keep", help="Python expression over `params` and `name`: run only the "
                                  "cases where it is true (to leave out sizes)")
    p.add_argument("--torch-site", action="append", default=[],
                   help="a site-packages directory with torch and einops, appended to the path")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per pytest run")
    p.add_argument("--out", default=str(HERE / "results.json"))
    args = p.parse_args(argv)
    sys.path.extend(args.torch_site)  # for the versions recorded (torch is not imported here)

    with tempfile.TemporaryDirectory(prefix="ssm_ref_official_") as tmp:
        tmp = Path(tmp)
        if args.mamba_git:
            src = tmp / "src"
            src.mkdir()
            commit = subprocess.run(["git", f"--git-dir={args.mamba_git}", "rev-parse",
                                     args.rev], capture_output=True, text=True,
                                    check=True).stdout.strip()
            archive = subprocess.run(["git", f"--git-dir={args.mamba_git}", "archive", commit,
                                      "mamba_ssm", "tests"], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
        else:
            if not args.commit:
                p.error("--mamba-src needs --commit (the snapshot's commit, for the summary)")
            src, commit = Path(args.mamba_src), args.commit
        work = tmp / "work"
        tests, widened = build_tree(src, work, args.widen)
        results = {}
        for short in args.files:
            results[short] = {}
            extra = [EMULATION] if short == "test_selective_state_update" and args.emulation else []
            for backend in list(args.backends) + extra:
                print(f"{short} [{backend}] ...", flush=True)
                r = run_file(tests[short], backend, work, args.dtypes, args.keep,
                             args.torch_site, args.timeout)
                print(f"  passed {r['passed']}, failed {r['failed']}, skipped {r['skipped']}, "
                      f"deselected {r['deselected']} ({r['seconds']} s)", flush=True)
                results[short][backend] = r
    summary = {
        "snapshot": {"repository": "state-spaces/mamba", "commit": commit,
                     "files": TEST_FILES},
        "adapter": {"file": "tests/data/official_suite/run_official.py",
                    "sha256": file_sha256()},
        "dtypes": args.dtypes,
        "keep": args.keep,
        "widened": widened if args.widen else None,
        "not_run": NOT_RUN,
        "device_substitution": 'device = "cuda" -> device = "cpu"',
        "versions": versions(),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}")
    failed = sum(r["failed"] for f in results.values() for r in f.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
