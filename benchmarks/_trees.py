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

__all__ = ["ROOT", "commit_of", "copy_packages", "run_text", "run_in", "Server",
           "check_not_checkout"]


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


def _env(tree):
    """The environment of a run of the version in ``tree``: it first on ``PYTHONPATH``, its own
    Numba cache."""
    return dict(os.environ, PYTHONPATH=str(tree), NUMBA_CACHE_DIR=str(Path(tree) / ".numba_cache"))


def run_text(tree, script, *args):
    """Run ``python script args`` with the version in ``tree``; what it prints.  A failing
    run stops the script with the run's error output."""
    run = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=tree,
                         env=_env(tree), capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"{Path(script).name} {' '.join(map(str, args))} in {tree} failed:\n"
                         f"{run.stderr}")
    return run.stdout


def run_in(tree, script, *args):
    """:func:`run_text`, and the last word it printed as a float (a time)."""
    return float(run_text(tree, script, *args).split()[-1])


class Server:
    """``python script args`` with the version in ``tree``, kept running: :meth:`ask` sends it a
    line and returns the float that it prints back (one line per request), so that two
    versions can take turns measurement by measurement, each in its own process and with
    its kernels compiled or loaded once.  The script answers each line of its standard
    input and ends at its end (:meth:`close`); :meth:`wait` reads a line it prints
    unasked (that it is ready: two servers started together compile at the same time, and
    neither should time its first calls while the other still compiles).  A server that
    stops or prints something else stops the script with its error output."""

    def __init__(self, tree, script, *args):
        self.name = f"{Path(script).name} {' '.join(map(str, args))} in {tree}"
        self.proc = subprocess.Popen([sys.executable, str(script), *map(str, args)], cwd=tree,
                                     env=_env(tree), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def ask(self, line="go"):
        """Send ``line``; the float printed back."""
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it has stopped: the answer below is empty
        answer = self.proc.stdout.readline()
        try:
            return float(answer)
        except ValueError:
            self._fail(answer)

    def wait(self, expected="ready"):
        """Read the line ``expected``, printed without a request."""
        answer = self.proc.stdout.readline()
        if answer.strip() != expected:
            self._fail(answer)

    def _fail(self, answer):
        self.proc.kill()
        raise SystemExit(f"{self.name} failed (answered {answer.strip()!r}):\n"
                         f"{self.proc.stderr.read()}")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            self.proc.kill()
        self.close()


def check_not_checkout(module):
    """Stop a worker that imported the checkout's ``fast`` instead of its copy."""
    if Path(module.__file__).resolve().parents[1] == ROOT:
        raise SystemExit(f"the worker imported the checkout ({module.__file__}), not its copy")
