"""VMamba's cross-scan and cross-merge on the CPU with Numba.

Glossary
--------
======  ================================================================
B, D    batch and channels of the channels-first tokens ``x_cf`` (B, D, H·W)
K, L    directions (scan orders) and the length of each order's sequence
perms   (K, L) int64: ``perms[k][l]``, the cell direction k visits at step l
======  ================================================================

Same signatures and results as the reference twins,
:func:`ssm_ref.vision.vmamba.cross_scan` and :func:`~ssm_ref.vision.vmamba.cross_merge`
(the official ``CrossScan`` and ``CrossMerge`` of MzeroMiko/VMamba, whose (B, K, D, L)
tensors are reshapes of these (B, K·D, L) arrays).

How it is computed
------------------
* NumPy's ``take`` along the last axis moves one element at a time through a
  generic copy: at VMamba 32x32's size (64 x 48 channels x 256 cells) a
  direction took about a millisecond in float32, and SS2D takes four
  directions of ``x`` and four of ``dy`` a layer, and scatters four back each
  way with a ``take`` by the inverse order and an addition.  Here each
  (batch, channel) row is one job, parallel over the rows: the scan reads the
  row once (in the level-1 cache) and writes its K sequences, the merge zeroes
  an output row and adds the row's K sequences into it by the orders themselves (a
  scatter inside one row, so no two jobs write the same element, and an order
  that visits only part of the grid, as EfficientVMamba's, needs no case of
  its own).
* Any dtype the arrays have; the output in the input's dtype.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .numba_cpu import _FMK, _launch, _njit_noalias

__all__ = ["cross_scan", "cross_merge"]


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _cross_scan(x, perms, out):
    """``out[b, k D + d, l] = x[b, d, perms[k, l]]``; all C-contiguous."""
    nb, nd, _ = x.shape
    K, L = perms.shape
    for row in prange(nb * nd):
        b = row // nd
        d = row - b * nd
        xr = x[b, d]
        for k in range(K):
            o = out[b, k * nd + d]
            q = perms[k]
            for t in range(L):
                o[t] = xr[q[t]]


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _cross_merge(ys, perms, out):
    """``out[b, d, c] = sum of ys[b, k D + d, l]`` over the k, l with ``perms[k, l] = c`` (0
    for a cell no order visits); all C-contiguous, ``out``'s values never read."""
    nb, nd, n_cells = out.shape
    K, L = perms.shape
    for row in prange(nb * nd):
        b = row // nd
        d = row - b * nd
        o = out[b, d]
        for c in range(n_cells):  # the row zeroed here, in cache, on every thread
            o[c] = 0
        for k in range(K):
            yr = ys[b, k * nd + d]
            q = perms[k]
            for t in range(L):
                o[q[t]] += yr[t]


def _orders(perms, n_cells):
    """The K orders as one C-contiguous (K, L) int64 array; ``ValueError`` unless they have
    one length and every index is a cell (a wrong one would read or write out of bounds)."""
    lengths = {len(q) for q in perms}
    if len(lengths) != 1:
        raise ValueError(f"Parameter perms has orders of lengths {sorted(lengths)} but should "
                         "have one length (the sequences side by side)")
    P = np.ascontiguousarray(np.asarray([np.asarray(q) for q in perms]), dtype=np.int64)
    if P.size and (P.min() < 0 or P.max() >= n_cells):
        raise ValueError(f"Parameter perms holds cells {P.min()} .. {P.max()} but should hold "
                         f"0 .. {n_cells - 1} (the grid's cells)")
    return P  # (K, L)


def cross_scan(x_cf, perms):
    """Numba version of :func:`ssm_ref.vision.vmamba.cross_scan`: (B, D, H·W) -> (B, K·D, L)."""
    if x_cf.ndim != 3:
        raise ValueError(f"Parameter x_cf has shape {x_cf.shape} but should be (B, D, H·W)")
    P = _orders(perms, x_cf.shape[2])
    nb, nd, _ = x_cf.shape
    out = np.empty((nb, P.shape[0] * nd, P.shape[1]), x_cf.dtype)  # (B, K·D, L)
    _launch(_cross_scan, np.ascontiguousarray(x_cf), P, out)
    return out


def cross_merge(ys, perms, n_cells):
    """Numba version of :func:`ssm_ref.vision.vmamba.cross_merge`: (B, K·D, L) ->
    (B, D, n_cells), the directions summed."""
    P = _orders(perms, n_cells)
    K, L = P.shape
    if ys.ndim != 3 or ys.shape[1] % K or ys.shape[2] != L:
        raise ValueError(f"Parameter ys has shape {ys.shape} but should be (B, K·D, L) with "
                         f"K = {K} directions of L = {L} steps")
    out = np.empty((ys.shape[0], ys.shape[1] // K, n_cells), ys.dtype)  # (B, D, HW)
    _launch(_cross_merge, np.ascontiguousarray(ys), P, out)
    return out
