"""The affine layer ``y = x W^T + b`` with Numba: blocks of rows on all cores, BLAS inside.

Same signatures and results as the reference twins, whose docstrings are the
specification: :func:`ssm_ref.nn.linear` and :func:`ssm_ref.nn.linear_backward`
(with ``check=False``, a block's call, float32 data and weights are computed in
float32; anything else in float64).  This module says only how they are computed.

How it is computed
------------------
The reference's ``x @ W.T + b`` is one BLAS product on one thread (the step
keeps BLAS on one thread, chapter 11), then a pass that adds the bias; its
backward is two products and a sum, each a pass over the (M, ·) arrays (M
tokens).  Here the M rows are cut into blocks of about :data:`BLOCK_ROWS`, and a
parallel loop over the blocks gives each block's product to BLAS (``np.dot``
with an output array, one BLAS thread per call: :func:`fast._blas.one_blas_thread`)
and adds the bias to the block while it is in cache.  The backward takes a
thread's run of blocks and, per block, ``dx = dy W`` and ``dy^T x`` into the
thread's own sum of ``dW``, and the block's column sums into its sum of
``db``; the threads' sums are added at the end.

Tokens given channels first, as the transpose (B, L, in) of a C-contiguous
(B, in, L) array (the out-projections of Vim and the Mamba block read the
scan's channels-first output that way, and their in-projections' gradients
come back that way), are read in
place: a parallel loop over the batch gives each element's product to BLAS
with the channels-first matrix as the transposed operand (BLAS reads either
order), and the backward's ``dx`` for such an ``x`` is written channels first
too (the same values; its transpose is then C-contiguous, the layout the scan
wants).  Copied into token blocks first, Vim 32x32's out-projection took 3.4 ms
against NumPy's 1.3 on one thread.  Any other strided view (or ``x`` and
``dy`` both channels first) goes to the reference's NumPy code.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ssm_ref import nn
from ssm_ref.nn import _check_linear, _grad_like, _real, _work_dtype
from ssm_ref._validation import as_array, check_shape

from ._blas import add_into, one_blas_thread
from .numba_cpu import _launch, _njit_noalias, _threads

__all__ = ["linear", "linear_backward"]

#: rows per block: a block of 512 tokens of 96 float64 features is 384 KB, within the
#: level-2 cache of the CPUs measured (512 KB to 2 MB)
BLOCK_ROWS = 512


@_njit_noalias(parallel=True, error_model="numpy", cache=True)
def _linear_fwd(x, wT, b, out, nblocks):
    """``out[r] = x[r] @ wT + b`` for the (M, in) rows ``x``, block by block (``b`` may be
    empty: no bias)."""
    M = x.shape[0]
    for k in prange(nblocks):
        r0, r1 = k * M // nblocks, (k + 1) * M // nblocks
        np.dot(x[r0:r1], wT, out[r0:r1])
        _add_bias(out[r0:r1], b)


@njit(error_model="numpy", inline="always")
def _add_bias(out, b):
    """``out[r] += b`` for every row of the 2-D ``out`` (nothing when ``b`` is empty)."""
    if b.size:
        for r in range(out.shape[0]):
            for c in range(out.shape[1]):
                out[r, c] += b[c]


@njit(error_model="numpy", inline="always")
def _add_row_sums(out, a):
    """``out[c] += sum_r a[r, c]`` for the 2-D ``a``."""
    for r in range(a.shape[0]):
        for c in range(a.shape[1]):
            out[c] += a[r, c]


@njit(error_model="numpy", inline="always")
def _add_column_sums(out, a):
    """``out[r] += sum_c a[r, c]`` for the 2-D ``a``."""
    for r in range(a.shape[0]):
        acc = a[r, 0] - a[r, 0]  # typed zero
        for c in range(a.shape[1]):
            acc += a[r, c]
        out[r] += acc


@_njit_noalias(parallel=True, error_model="numpy", cache=True)
def _linear_fwd_cf(x_cf, wT, b, out):
    """``out[i] = x_cf[i].T @ wT + b`` for channels-first (B, in, L) ``x_cf``, by batch element."""
    for i in prange(x_cf.shape[0]):
        np.dot(x_cf[i].T, wT, out[i])
        _add_bias(out[i], b)


@_njit_noalias(parallel=True, error_model="numpy", cache=True)
def _linear_bwd(dy, x, w, dx, dW, db, nblocks):
    """``dx = dy w``; ``dW[t] += sum dy^T x`` and ``db[t] += sum dy`` over thread t's blocks
    (``dW`` and ``db`` come zeroed)."""
    M = x.shape[0]
    T = dW.shape[0]
    part = np.empty_like(dW)
    for t in prange(T):
        for k in range(t * nblocks // T, (t + 1) * nblocks // T):
            r0, r1 = k * M // nblocks, (k + 1) * M // nblocks
            np.dot(dy[r0:r1], w, dx[r0:r1])
            np.dot(dy[r0:r1].T, x[r0:r1], part[t])
            add_into(dW[t], part[t])
            _add_row_sums(db[t], dy[r0:r1])


@_njit_noalias(parallel=True, error_model="numpy", cache=True)
def _linear_bwd_x_cf(dy, x_cf, wT, dx_cf, dW, db):
    """As :func:`_linear_bwd` by batch element, ``x`` and ``dx`` channels first (B, in, L):
    ``dx_cf[i] = wT @ dy[i].T``, ``dW[t] += dy[i].T @ x_cf[i].T``."""
    n = dy.shape[0]
    T = dW.shape[0]
    part = np.empty_like(dW)
    for t in prange(T):
        for i in range(t * n // T, (t + 1) * n // T):
            np.dot(wT, dy[i].T, dx_cf[i])
            np.dot(dy[i].T, x_cf[i].T, part[t])
            add_into(dW[t], part[t])
            _add_row_sums(db[t], dy[i])


@_njit_noalias(parallel=True, error_model="numpy", cache=True)
def _linear_bwd_dy_cf(dy_cf, x, w, dx, dW, db):
    """As :func:`_linear_bwd` by batch element, ``dy`` channels first (B, out, L):
    ``dx[i] = dy_cf[i].T @ w``, ``dW[t] += dy_cf[i] @ x[i]``."""
    n = x.shape[0]
    T = dW.shape[0]
    part = np.empty_like(dW)
    for t in prange(T):
        for i in range(t * n // T, (t + 1) * n // T):
            np.dot(dy_cf[i].T, w, dx[i])
            np.dot(dy_cf[i], x[i], part[t])
            add_into(dW[t], part[t])
            _add_column_sums(db[t], dy_cf[i])


def _blocks(rows):
    """Blocks of about :data:`BLOCK_ROWS` rows, at least one per thread where rows allow."""
    return max(1, min(rows, max(_threads(rows), -(-rows // BLOCK_ROWS))))


def _channels_first(a):
    """The C-contiguous (B, C, L) array whose transpose is the strided (B, L, C) ``a``, or None
    (``a`` C-contiguous, or strided another way)."""
    if a.ndim == 3 and not a.flags.c_contiguous and a.transpose(0, 2, 1).flags.c_contiguous:
        return a.transpose(0, 2, 1)
    return None


def linear(x, W, b=None, *, check=True):
    """Numba version of :func:`ssm_ref.nn.linear` (same signature and result).

    Examples
    --------
    >>> import numpy as np
    >>> from fast.numba_linear import linear
    >>> linear(np.array([[1.0, 2.0]]), np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([0.0, 0.5]))
    array([[1. , 3.5]])
    """
    x, W = _check_linear(x, W, check)
    x_cf = _channels_first(x)
    if not x.flags.c_contiguous and x_cf is None:  # strided another way: NumPy reads it
        return nn.linear(x, W, b, check=check)
    if b is not None and check:
        b = check_shape(_real(b, "b"), "b", (W.shape[0],))
    real = _work_dtype(check, x, W)
    M = math.prod(x.shape[:-1])  # tokens
    out = np.empty(x.shape[:-1] + (W.shape[0],), real)  # (..., out)
    bias = np.zeros(0, real) if b is None else np.ascontiguousarray(b, dtype=real)
    wT = np.ascontiguousarray(W.T, dtype=real)  # (in, out)
    if M:
        with one_blas_thread():
            if x_cf is None:
                _launch(_linear_fwd, np.ascontiguousarray(x.reshape(M, W.shape[1]), dtype=real),
                        wT, bias, out.reshape(M, W.shape[0]), _blocks(M))
            else:
                _launch(_linear_fwd_cf, x_cf.astype(real, copy=False), wT, bias, out)
    return out.astype(x.dtype, copy=False)


def linear_backward(dy, x, W, b=None, *, check=True):
    """Numba version of :func:`ssm_ref.nn.linear_backward` (same signature and result).

    A channels-first ``x`` (see the module's docstring) gets its ``dx`` in
    the same layout.

    Examples
    --------
    >>> import numpy as np
    >>> from fast.numba_linear import linear_backward
    >>> dx, dW, db = linear_backward(np.ones((2, 4)), np.ones((2, 3)), np.ones((4, 3)), np.zeros(4))
    >>> dx[0], dW[0], db
    (array([4., 4., 4.]), array([2., 2., 2.]), array([2., 2., 2., 2.]))
    """
    x, W = _check_linear(x, W, check)
    dy = _grad_like(dy, x.shape[:-1] + (W.shape[0],), "dy", check)
    x_cf, dy_cf = _channels_first(x), _channels_first(dy)
    by_blocks = x.flags.c_contiguous and dy.flags.c_contiguous
    if not (by_blocks or (x_cf is not None and dy.flags.c_contiguous)
            or (dy_cf is not None and x.flags.c_contiguous)):  # NumPy reads other views
        return nn.linear_backward(dy, x, W, b, check=check)
    if b is not None and check:
        b = as_array(b, "b", allow_complex=False)
    real = _work_dtype(check, x, W, dy)
    M = math.prod(x.shape[:-1])  # tokens
    threads = _threads(max(M if by_blocks else x.shape[0], 1))
    dW = np.zeros((threads,) + W.shape, real)  # one sum per thread
    db = np.zeros((threads, W.shape[0]), real)
    w = np.ascontiguousarray(W, dtype=real)  # (out, in)
    dx_cf = None if x_cf is None else np.empty(x_cf.shape, real)  # (B, in, L): dx laid out
    dx = np.empty(x.shape, real) if dx_cf is None else dx_cf.transpose(0, 2, 1)  # as x, (..., in)
    if M:
        with one_blas_thread():
            if by_blocks:  # at least `threads` blocks: each thread has a run
                _launch(_linear_bwd, np.ascontiguousarray(dy.reshape(M, W.shape[0]), dtype=real),
                        np.ascontiguousarray(x.reshape(M, W.shape[1]), dtype=real), w,
                        dx.reshape(M, W.shape[1]), dW, db, _blocks(M))
            elif x_cf is not None:
                _launch(_linear_bwd_x_cf, dy.astype(real, copy=False),
                        x_cf.astype(real, copy=False), np.ascontiguousarray(w.T), dx_cf, dW,
                        db)
            else:
                _launch(_linear_bwd_dy_cf, dy_cf.astype(real, copy=False),
                        x.astype(real, copy=False), w, dx, dW, db)
    return (dx.astype(x.dtype, copy=False),
            dW.sum(axis=0).astype(W.dtype, copy=False),
            None if b is None else db.sum(axis=0).astype(b.dtype, copy=False))
