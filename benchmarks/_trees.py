"""Copies of the library for benchmarks that time several versions of it side by side
(``backward_knockouts.py``, ``compare_revisions.py``, ``same_kernels.py``; not part of the
library).

Each version is a folder holding ``fast/`` and ``ssm_ref/``, run in its own process with
the folder first on ``PYTHONPATH`` and its own Numba cache, so that no version reuses
another's compiled kernels.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fast", "ssm_ref")

__all__ = ["ROOT", "commit_of", "copy_packages", "run_text", "run_in", "check_not_checkout"]


def commit_of(rev):
    """The abbreviated hash of the commit that ``rev`` names (``HEAD``, a branch, a hash): what
    a result file records, since ``HEAD`` names another commit after the next one.  A
    revision git does not know stops the script."""
    run = subprocess.run(["git", "rev-parse", "--short", f"{rev}^{{commit}}"], cwd=ROOT,
                         capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"no revision {rev!r} to copy the library from: {run.stderr.strip()}")
    return run.stdout.strip()


def copy_packages(dest, rev=None):
    """``fast/`` and ``ssm_ref/`` into the folder ``dest``: from the working tree, or as
    committed at the git revision ``rev``.  A revision git does not know stops the script."""
    dest = Path(dest)
    if rev is None:
        for package in PACKAGES:
            shutil.copytree(ROOT / package, dest / package,
                            ignore=shutil.ignore_patterns("__pycache__"))
        return dest
    run = subprocess.run(["git", "archive", "--format=tar", rev, *PACKAGES], cwd=ROOT,
                         capture_output=True)
    if run.returncode:
        raise SystemExit(f"no revision {rev!r} to copy the library from: "
                         f"{run.stderr.decode().strip()}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(run.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run_text(tree, script, *args):
    """Run ``python script args`` with the version in ``tree``; what it prints.  A failing
    run stops the script with the run's error output."""
    env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_CACHE_DIR=str(Path(tree) / ".numba_cache"))
    run = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=tree, env=env,
                         capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"{Path(script).name} {' '.join(map(str, args))} in {tree} failed:\n"
                         f"{run.stderr}")
    return run.stdout


def run_in(tree, script, *args):
    """:func:`run_text`, and the last word it printed as a float (a time)."""
    return float(run_text(tree, script, *args).split()[-1])


def check_not_checkout(module):
    """Stop a worker that imported the checkout's ``fast`` instead of its copy."""
    if Path(module.__file__).resolve().parents[1] == ROOT:
        raise SystemExit(f"the worker imported the checkout ({module.__file__}), not its copy")
