"""Other implementations of the selective scan, timed next to ours by ``fast.bench.scan``.

Glossary
--------
peer    another implementation of the same computation (official reference,
        mambapy, JAX), run on the same inputs
B, D, L, N  batch, channels, sequence length, state size (the scan's layout)

Three peers, each optional (``pip install -e ".[peers]"`` installs the packages;
a row whose package is missing is skipped and says why):

* the official reference ``selective_scan_ref`` of state-spaces/mamba
  (PyTorch, a Python loop over time).  The ``mamba_ssm`` package cannot be
  installed without CUDA, so the function is read from a source checkout:
  ``--mamba-src DIR`` (or the environment variable ``MAMBA_SRC``) names a
  clone of https://github.com/state-spaces/mamba.  Only the function
  ``selective_scan_ref`` is taken from ``DIR/mamba_ssm/ops/
  selective_scan_interface.py`` (by its name, with Python's ``ast``) and run
  with PyTorch and einops; the rest of that file (the CUDA extension,
  Triton) is neither imported nor needed.  Nothing of it is copied here.
* mambapy's ``pscan`` (PyTorch, a Blelloch parallel scan over L), with the
  discretization, the output and the gate around it written here as
  mambapy's ``selective_scan`` does it.
* ``jax.lax.associative_scan`` under ``jax.jit`` (XLA on the CPU), our own short
  function over the operator (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2).

Each peer runs in float32 on the headline inputs and is checked against
``fast.selective_scan`` (allclose) before it is timed; a peer that disagrees
is reported as such, not timed.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np

#: the file of the official package that holds ``selective_scan_ref``, relative to a clone
OFFICIAL_FILE = Path("mamba_ssm") / "ops" / "selective_scan_interface.py"

#: agreement required before a peer is timed (float32 against float32; the peers
#: compute exp(delta A) by other routines and sum in other orders)
RTOL, ATOL = 1e-3, 1e-4


def load_official_ref(src_dir):
    """``selective_scan_ref`` of the official package, from a source checkout.

    Parameters
    ----------
    src_dir : str or Path
        A clone of state-spaces/mamba (the directory that holds ``mamba_ssm``).

    Returns
    -------
    callable
        The official function, defined from its source in that checkout, with
        ``torch``, ``torch.nn.functional as F`` and einops' ``rearrange`` and
        ``repeat`` (the names it uses) in its namespace.

    Raises
    ------
    ValueError
        If the file or the function is not there.
    ImportError
        If PyTorch or einops is not installed.
    """
    path = Path(src_dir) / OFFICIAL_FILE
    if not path.is_file():
        raise ValueError(f"--mamba-src {src_dir}: no file {OFFICIAL_FILE} there; expected a "
                         "clone of https://github.com/state-spaces/mamba")
    source = path.read_text()
    nodes = [n for n in ast.parse(source).body
             if isinstance(n, ast.FunctionDef) and n.name == "selective_scan_ref"]
    if not nodes:
        raise ValueError(f"--mamba-src {src_dir}: {path} defines no selective_scan_ref")
    import torch
    import torch.nn.functional as F
    from einops import rearrange, repeat
    namespace = {"torch": torch, "F": F, "rearrange": rearrange, "repeat": repeat}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["selective_scan_ref"]


def _torch_inputs(kw):
    import torch
    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            for k, v in kw.items()}


def official_peer(src_dir):
    """``(run, None)`` for the official reference, or ``(None, reason)``."""
    if not src_dir:
        return None, ("no source checkout of state-spaces/mamba: pass --mamba-src DIR or set "
                      "MAMBA_SRC (mamba_ssm itself needs CUDA to install)")
    try:
        ref = load_official_ref(src_dir)
    except ImportError as exc:
        return None, f"needs PyTorch and einops (the peers extra): {exc}"
    except ValueError as exc:
        return None, str(exc)

    def run(kw):
        import torch
        with torch.no_grad():
            return ref(**_torch_inputs(kw)).numpy()
    return run, None


def mambapy_peer():
    """``(run, None)`` for mambapy's parallel scan with the Mamba arithmetic around it."""
    try:
        import torch
        import torch.nn.functional as F
        from mambapy.pscan import pscan
    except ImportError as exc:
        return None, f"needs PyTorch and mambapy (the peers extra): {exc}"

    def run(kw):
        t = _torch_inputs(kw)
        with torch.no_grad():
            u = t["u"].transpose(1, 2)  # (B, L, D)
            delta = t["delta"].transpose(1, 2) + t["delta_bias"]  # (B, L, D)
            if t["delta_softplus"]:
                delta = F.softplus(delta)
            deltaA = torch.exp(delta.unsqueeze(-1) * t["A"])  # (B, L, D, N)
            BX = (delta * u).unsqueeze(-1) * t["B"].transpose(1, 2).unsqueeze(2)  # (B, L, D, N)
            hs = pscan(deltaA, BX)  # (B, L, D, N): h_t for every t
            y = (hs @ t["C"].transpose(1, 2).unsqueeze(-1)).squeeze(3)  # (B, L, D)
            y = (y + t["D"] * u) * F.silu(t["z"].transpose(1, 2))
            return y.transpose(1, 2).numpy()  # (B, D, L)
    return run, None


def jax_peer():
    """``(run, None)`` for ``jax.lax.associative_scan`` under ``jax.jit`` on the CPU."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as exc:
        return None, f"needs jax (the peers extra): {exc}"

    def combine(left, right):  # (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)
        a1, b1 = left
        a2, b2 = right
        return a1 * a2, a2 * b1 + b2

    @jax.jit
    def scan(u, delta, A, B, C, D, z, delta_bias):
        delta = jax.nn.softplus(delta + delta_bias[:, None])  # (B, D, L)
        dA = jnp.exp(delta[..., None] * A[:, None, :])  # (B, D, L, N)
        dBu = (delta * u)[..., None] * jnp.swapaxes(B, 1, 2)[:, None]  # (B, D, L, N)
        _, h = jax.lax.associative_scan(combine, (dA, dBu), axis=2)  # (B, D, L, N)
        y = jnp.einsum("bdln,bnl->bdl", h, C)  # (B, D, L)
        return (y + D[:, None] * u) * jax.nn.silu(z)

    def run(kw):
        if not kw["delta_softplus"]:
            raise ValueError("the JAX peer is written for delta_softplus=True")
        args = [jnp.asarray(kw[k]) for k in ("u", "delta", "A", "B", "C", "D", "z",
                                             "delta_bias")]
        return np.asarray(scan(*args).block_until_ready())
    return run, None


def peers(mamba_src=None):
    """The peers in table order: ``[(name, run or None, reason or None)]``.

    ``mamba_src`` defaults to the environment variable ``MAMBA_SRC``.
    """
    mamba_src = mamba_src or os.environ.get("MAMBA_SRC")
    rows = [("official selective_scan_ref (PyTorch CPU)",) + official_peer(mamba_src),
            ("mambapy pscan (PyTorch CPU, parallel scan)",) + mambapy_peer(),
            ("jax.lax.associative_scan, jit (XLA CPU)",) + jax_peer()]
    return rows


def run_peers(kw, want, median_time, repeats, mamba_src=None):
    """Check each peer against ``want`` (our output) on the inputs ``kw``, then time it.

    Returns one dict per peer: ``name``, and either ``time_s`` and ``max_abs_diff``
    or ``skipped`` (the reason: a package missing, or the check failed).
    """
    out = []
    for name, run, reason in peers(mamba_src):
        if run is None:
            out.append({"name": name, "skipped": reason})
            continue
        try:
            got = run(kw)
        except Exception as exc:  # a peer that fails on this machine is reported, not fatal
            out.append({"name": name, "skipped": f"failed: {type(exc).__name__}: {exc}"})
            continue
        diff = float(np.max(np.abs(got.astype(np.float64) - want)))
        if got.shape != want.shape or not np.allclose(got, want, rtol=RTOL, atol=ATOL):
            out.append({"name": name, "skipped": f"disagrees with fast.selective_scan "
                                                 f"(max |diff| {diff:.3g}): not timed"})
            continue
        out.append({"name": name, "time_s": median_time(lambda: run(kw), repeats),
                    "max_abs_diff": diff})
    return out
