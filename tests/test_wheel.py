"""The wheel builds offline, installs into a fresh virtual environment, and works there.

What a user gets from ``pip install .`` (a normal, not an editable, install):
the wheel is built from a copy of the source tree with this environment's
setuptools and no network; it is installed without its dependencies into a new
``python -m venv``, which sees the dependencies already installed here through
a ``.pth`` file holding only this environment's site-packages path (never this
project's editable-install hook, which would find a module the wheel lacks in
the source tree).  Run from a scratch directory with no ``PYTHONPATH``, every
module of ``ssm_ref`` and ``fast`` that is in the source tree must import, and
from the new environment; then its ``ssm-ref`` console script runs, the benchmarks'
help included (they are modules of the package, not files of the checkout).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGES = ("ssm_ref", "fast")

#: what a checkout may hold besides the source: never copied into the build
_NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "_build",
               "_mathjax", ".pytest_cache", ".hypothesis", "runs", ".ipynb_checkpoints")

#: inside the new environment: import every module found in the installed packages
_IMPORT_ALL = """
import importlib, json, pkgutil, sys
found = {}
def fail(name):
    raise ImportError(f"cannot import package {name}")
for top in %r:
    package = importlib.import_module(top)
    found[top] = package.__file__
    for info in pkgutil.walk_packages(package.__path__, top + ".", onerror=fail):
        found[info.name] = importlib.import_module(info.name).__file__
print(json.dumps({"modules": found, "prefix": sys.prefix}))
""" % (PACKAGES,)


def _source_modules():
    """Dotted names of every module and package of ``ssm_ref`` and ``fast`` in the tree."""
    names = set()
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _offline_env(**extra):
    """The environment of a child process: no network for pip, no PYTHONPATH, no user site."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1",
               **extra)
    return env


def _run(cmd, cwd, **kw):
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_offline_env(), capture_output=True,
                         text=True, timeout=600, **kw)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built offline from a copy of the source tree (the tree itself stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", tmp / "dist", src], cwd=tmp)
    (path,) = (tmp / "dist").glob("ssm_ref-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh virtual environment with the wheel installed (no dependencies, no network)."""
    tmp = tmp_path_factory.mktemp("venv")
    env_dir = tmp / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=tmp)
    python = env_dir / "bin" / "python"
    target = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                       cwd=tmp).stdout.strip())
    # the dependencies installed here, as one plain path (a path line runs no .pth hook) ...
    here = sysconfig.get_path("purelib")
    (target / "00_ssm_ref_test_dependencies.pth").write_text(here + "\n")
    # ... plus the hooks that dependencies install (numba-cuda's redirect of numba.cuda),
    # but not this project's own editable-install hook
    for pth in Path(here).glob("*.pth"):
        if "ssm_ref" not in pth.name:
            shutil.copy(pth, target / pth.name)
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          wheel], cwd=tmp)
    return env_dir


def test_the_wheel_holds_every_module_and_the_license(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    in_wheel = {n[:-3].replace("/", ".").removesuffix(".__init__") for n in names
                if n.endswith(".py") and n.split("/")[0] in PACKAGES}
    assert in_wheel == _source_modules()
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE")
               for n in names), sorted(names)
    # the license as an SPDX expression (the TOML table form is deprecated in setuptools and
    # stops building on 2027-02-18)
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(meta).decode().splitlines()
    assert "License-Expression: MIT" in metadata, [m for m in metadata if "icense" in m]


def test_every_module_imports_from_the_new_environment(venv, tmp_path):
    res = _run([venv / "bin" / "python", "-c", _IMPORT_ALL], cwd=tmp_path)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(got["prefix"]).resolve() == venv.resolve()
    assert set(got["modules"]) == _source_modules()
    outside = {name: f for name, f in got["modules"].items()
               if not Path(f).resolve().is_relative_to(venv.resolve())}
    assert not outside, f"imported from outside the new environment: {outside}"


def test_console_script_runs_from_the_new_environment(venv, tmp_path):
    script = venv / "bin" / "ssm-ref"
    res = _run([script, "--help"], cwd=tmp_path)
    assert "train" in res.stdout and "bench" in res.stdout and "backends" in res.stdout
    res = _run([script, "backends"], cwd=tmp_path)
    assert res.stdout.startswith("ref") and "numba" in res.stdout
    for suite in ("scan", "train"):  # the benchmarks are modules of the installed package
        res = _run([script, "bench", "--suite", suite, "--help"], cwd=tmp_path)
        assert res.stdout.startswith(f"usage: ssm-ref bench --suite {suite} ")
