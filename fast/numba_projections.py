"""The projections into the scan's steps, B and C, with Numba: each batch element's products
on all cores.

They are SS2D's per-direction projections and the Mamba inner path's ``x_proj``
and ``dt_proj`` (:mod:`fast.numba_fused` calls them for Mamba and Vim): the
same two products on a channels-first (B, D, L) input.

Glossary
--------
======  ================================================================
B       batch size (the *matrix* B of the scan is ``dB``'s)
D       channels of one direction's sequences (``d_inner``)
L       sequence length
N, R    state size, rank of the step projection (``dt_rank``)
M       R + 2N: the rows of ``x_dbl`` (the steps' low-rank input, B, C)
======  ================================================================

Same signatures and results as the reference twins, whose docstrings are
the specification: :func:`ssm_ref.vision.vmamba.direction_projections` and
:func:`ssm_ref.vision.vmamba.direction_projections_backward`.  This module says
only how they are computed.

How it is computed
------------------
NumPy computes each of the twins' products, ``w_x @ x`` on (B, D, L), as B
small matrix products (19 x 48 by 48 x 256 at VMamba 32x32's size) on one
thread, one product after the other over the whole batch, so that each is a
pass over (B, ·, L) arrays in memory; the backward's five make five passes
and a concatenation.  Here a parallel loop over the batch gives each thread
its own batch elements, and an element's products follow one another while
its (D, L) slices are in cache: the forward's two, the backward's four (the
weight gradients summed per thread, the threads' sums added at the end).
Each product is a BLAS call (``np.dot`` with an output array, which Numba
hands to SciPy's BLAS, on one thread per call: :func:`fast._blas.one_blas_thread`,
so that the two pools of threads do not compete).  Slices of a larger array
(direction k's channels of the grouped scan's ``u``, ``delta`` and ``du``) are
read and written in place as the array and the slice's first channel
(:func:`fast._views.in_parent`).
Inputs in float32 are computed in float32, anything else in float64.

When it pays
------------
Each thread's products are the same BLAS calls NumPy makes, one batch element
at a time, so what this buys is the second core, and only where an element's
products are large enough to carry the calls around them.  Measured on the
2-core Intel Xeon (batch 64, D = 48, R + 2N = 18, medians in µs,
NumPy / Numba):

=======  ==============  ================  ================  =================
L        forward, 1 th.  forward, 2 th.    backward, 1 th.   backward, 2 th.
=======  ==============  ================  ================  =================
17       35 / 55         35 / 37           148 / 190         162 / 173
33       76 / 109        76 / 51           252 / 288         257 / 173
65       206 / 248       204 / 105         536 / 477         515 / 295
257      824 / 887       823 / 465         2035 / 1574       2031 / 852
=======  ==============  ================  ================  =================

(float64; float32 alike.)  So the kernels run when there are two threads or
more and at least :data:`MIN_LENGTH` steps; otherwise the reference twins'
NumPy products do.  (Run everywhere, in a version whose weight gradients were
summed with Numba's ``+=``, the kernels made Vim 8x8's training step, 17 tokens,
1.04-1.10 times as slow.)  On two threads a short sequence's kernels do not
run at twice the speed of one: what surrounds the products stays (the
wrapper's Python with the BLAS setting, 13 µs forward and 21 µs backward at
L = 17, timed with the launch left out; and BLAS's own calls).
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ssm_ref.vision import vmamba

from ._blas import add_into, one_blas_thread
from ._views import in_parent
from .numba_cpu import _compute_dtype, _launch, _njit_noalias, _threads

__all__ = ["direction_projections", "direction_projections_backward"]

#: the shortest sequence whose products go to the kernels (see "When it pays")
MIN_LENGTH = 32


def _kernels_pay(x):
    """Whether the kernels beat NumPy's products on ``x`` (B, D, L): two threads or more, and
    at least :data:`MIN_LENGTH` steps."""
    return _threads(x.shape[0]) > 1 and x.shape[2] >= MIN_LENGTH


@_njit_noalias(parallel=True, error_model="numpy", cache=True)
def _projections_fwd(x, x0, w_x, w_dt, x_dbl, delta, d0):
    """``x_dbl[i] = w_x @ x[i, x0:x0 + D]``, ``delta[i, d0:d0 + D] = w_dt @ x_dbl[i, :R]``."""
    D, R = w_dt.shape
    for i in prange(x.shape[0]):
        np.dot(w_x, x[i, x0:x0 + D], x_dbl[i])
        np.dot(w_dt, x_dbl[i, :R], delta[i, d0:d0 + D])


@_njit_noalias(parallel=True, error_model="numpy", cache=True)
def _projections_bwd(ddelta, e0, dB, b0, dC, c0, x, x0, dts, t0, w_xT, w_dtT, dx, f0,
                     dw_x, dw_dt):
    """One batch element at a time: ``d_xdbl = [w_dt.T @ ddelta; dB; dC]``,
    ``dw_x += d_xdbl @ x.T``, ``dw_dt += ddelta @ dts.T``, ``dx += w_x.T @ d_xdbl``.

    Each array comes with the first channel of its slice (``e0``, ``b0``, ...).
    ``dw_x`` (T, M, D) and ``dw_dt`` (T, D, R), zeroed: one sum per thread's run of
    batch elements, T runs.
    """
    n, L = x.shape[0], x.shape[2]
    D, M = w_xT.shape
    R = w_dtT.shape[0]
    N = (M - R) // 2
    T = dw_x.shape[0]
    d_xdbl_s = np.empty((T, M, L), x.dtype)
    dw_x_s = np.empty((T, M, D), x.dtype)
    dw_dt_s = np.empty((T, D, R), x.dtype)
    dx_s = np.empty((T, D, L), x.dtype)
    for t in prange(T):
        d_xdbl = d_xdbl_s[t]
        for i in range(t * n // T, (t + 1) * n // T):
            dd = ddelta[i, e0:e0 + D]
            np.dot(w_dtT, dd, d_xdbl[:R])
            d_xdbl[R:R + N] = dB[i, b0:b0 + N]
            d_xdbl[R + N:] = dC[i, c0:c0 + N]
            np.dot(d_xdbl, x[i, x0:x0 + D].T, dw_x_s[t])
            add_into(dw_x[t], dw_x_s[t])
            np.dot(dd, dts[i, t0:t0 + R].T, dw_dt_s[t])
            add_into(dw_dt[t], dw_dt_s[t])
            np.dot(w_xT, d_xdbl, dx_s[t])
            add_into(dx[i, f0:f0 + D], dx_s[t])


def direction_projections(x, w_x, w_dt, dt_rank, out=None):
    """Numba version of :func:`ssm_ref.vision.vmamba.direction_projections`, unchecked.

    Examples
    --------
    >>> import numpy as np
    >>> from fast.numba_projections import direction_projections
    >>> x = np.ones((1, 2, 3))  # (B, D, L)
    >>> x_dbl, delta = direction_projections(x, np.ones((3, 2)), 2 * np.ones((2, 1)), 1)
    >>> x_dbl[0, 0], delta[0, 0]  # x_dbl: D = 2 channels summed; delta: 2 x_dbl[:, :1]
    (array([2., 2., 2.]), array([4., 4., 4.]))
    """
    real = _compute_dtype(x.dtype)
    if not _kernels_pay(x):
        return vmamba.direction_projections(*(a.astype(real, copy=False) for a in (x, w_x, w_dt)),
                                            dt_rank, out)
    n, D, L = x.shape
    w_x = np.ascontiguousarray(w_x, dtype=real)  # (M, D)
    w_dt = np.ascontiguousarray(w_dt, dtype=real)  # (D, R)
    x_dbl = np.empty((n, w_x.shape[0], L), real)  # (B, M, L)
    if out is None or out.dtype != real:
        delta, d0 = np.empty((n, D, L), real), 0
    else:
        delta, d0 = in_parent(out, 1)
    with one_blas_thread():
        _launch(_projections_fwd, *in_parent(x.astype(real, copy=False), 1), w_x, w_dt, x_dbl,
                delta, d0)  # w_dt has dt_rank columns
    if out is None:
        return x_dbl, delta
    if not np.may_share_memory(delta, out):  # out was not a slice the kernel could write
        out[...] = delta[:, d0:d0 + D]
    return x_dbl, out


def direction_projections_backward(ddelta, dB, dC, x, dts, w_x, w_dt, dx):
    """Numba version of :func:`ssm_ref.vision.vmamba.direction_projections_backward`,
    unchecked: ``(dw_x, dw_dt)``, and the gradient through the projections added into ``dx``.
    """
    real = _compute_dtype(x.dtype)
    if not _kernels_pay(x):
        return vmamba.direction_projections_backward(
            *(a.astype(real, copy=False) for a in (ddelta, dB, dC, x, dts, w_x, w_dt)), dx)
    n, D, _ = x.shape
    threads = _threads(n)
    M, R = w_x.shape[0], w_dt.shape[1]
    dw_x = np.zeros((threads, M, D), real)  # one sum per thread's run of the batch
    dw_dt = np.zeros((threads, D, R), real)
    parts = [in_parent(a.astype(real, copy=False), 1) for a in (ddelta, dB, dC, x, dts)]
    grad, f0 = in_parent(dx, 1) if dx.dtype == real else (dx.astype(real), 0)
    with one_blas_thread():
        _launch(_projections_bwd, *(v for part in parts for v in part),
                np.ascontiguousarray(w_x.T, dtype=real),
                np.ascontiguousarray(w_dt.T, dtype=real), grad, f0, dw_x, dw_dt)
    if not np.may_share_memory(grad, dx):  # dx was not a slice the kernel could add into
        dx[...] = grad[:, f0:f0 + D]
    return dw_x.sum(axis=0), dw_dt.sum(axis=0)
