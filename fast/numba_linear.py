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

Tokens that are a strided view (Vim's out-projection reads the scan's
channels-first output transposed, its in-projection's gradient comes back
that way) go to the reference's NumPy code, whose batched product reads them
in place: copied into blocks first, Vim 32x32's out-projection took 3.4 ms
against NumPy's 1.3 in a training step on one thread.
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from ssm_ref import nn
from ssm_ref.nn import _check_linear, _grad_like, _real, _work_dtype
from ssm_ref._validation import as_array, check_shape

from ._blas import one_blas_thread
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
        if b.size:
            for r in range(r0, r1):
                out[r] += b


@_njit_noalias(parallel=True, error_model="numpy", cache=True)
def _linear_bwd(dy, x, w, dx, dW, db, nblocks):
    """``dx = dy w``; ``dW[t] = sum dy^T x`` and ``db[t] = sum dy`` over thread t's blocks."""
    M = x.shape[0]
    T = dW.shape[0]
    part = np.empty_like(dW)
    for t in prange(T):
        dW[t] = 0
        db[t] = 0
        for k in range(t * nblocks // T, (t + 1) * nblocks // T):
            r0, r1 = k * M // nblocks, (k + 1) * M // nblocks
            np.dot(dy[r0:r1], w, dx[r0:r1])
            np.dot(dy[r0:r1].T, x[r0:r1], part[t])
            dW[t] += part[t]
            for r in range(r0, r1):
                db[t] += dy[r]


def _blocks(rows):
    """Blocks of about :data:`BLOCK_ROWS` rows, at least one per thread where rows allow."""
    return max(1, min(rows, max(_threads(rows), -(-rows // BLOCK_ROWS))))


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
    if not x.flags.c_contiguous:  # a strided view: NumPy's product reads it in place
        return nn.linear(x, W, b, check=check)
    if b is not None and check:
        b = check_shape(_real(b, "b"), "b", (W.shape[0],))
    real = _work_dtype(check, x, W)
    M = math.prod(x.shape[:-1])  # tokens
    x2 = np.ascontiguousarray(x.reshape(M, W.shape[1]), dtype=real)  # (M, in)
    out = np.empty((M, W.shape[0]), real)  # (M, out)
    bias = np.zeros(0, real) if b is None else np.ascontiguousarray(b, dtype=real)
    if M:
        with one_blas_thread():
            _launch(_linear_fwd, x2, np.ascontiguousarray(W.T, dtype=real), bias, out,
                    _blocks(M))
    return out.reshape(x.shape[:-1] + (W.shape[0],)).astype(x.dtype, copy=False)


def linear_backward(dy, x, W, b=None, *, check=True):
    """Numba version of :func:`ssm_ref.nn.linear_backward` (same signature and result).

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
    if not (x.flags.c_contiguous and dy.flags.c_contiguous):  # as in linear
        return nn.linear_backward(dy, x, W, b, check=check)
    if b is not None and check:
        b = as_array(b, "b", allow_complex=False)
    real = _work_dtype(check, x, W, dy)
    M = math.prod(x.shape[:-1])  # tokens
    dy2 = np.ascontiguousarray(dy.reshape(M, W.shape[0]), dtype=real)  # (M, out)
    x2 = np.ascontiguousarray(x.reshape(M, W.shape[1]), dtype=real)  # (M, in)
    threads = _threads(max(M, 1))
    dx = np.empty(x2.shape, real)
    dW = np.zeros((threads,) + W.shape, real)  # one sum per thread
    db = np.zeros((threads, W.shape[0]), real)
    if M:
        with one_blas_thread():
            _launch(_linear_bwd, dy2, x2, np.ascontiguousarray(W, dtype=real), dx, dW, db,
                    _blocks(M))  # at least `threads` blocks: each thread has a run
    return (dx.reshape(x.shape).astype(x.dtype, copy=False),
            dW.sum(axis=0).astype(W.dtype, copy=False),
            None if b is None else db.sum(axis=0).astype(b.dtype, copy=False))
