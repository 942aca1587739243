"""Vim's merge of its two paths, and the merge's backward, on the CPU with Numba.

Glossary
--------
======  ================================================================
rows    every index but the last: (B, D) for the mixer's (B, D, L) arrays
L       the sequence, the axis the backward path reads flipped
scale   1/2 where Vim averages its two paths (``if_divide_out``), 1 where it sums
======  ================================================================

Same signatures and results as the reference twins,
:func:`ssm_ref.vision.vim.merge_directions` and
:func:`~ssm_ref.vision.vim.merge_directions_backward`.

How it is computed
------------------
* NumPy reads a flipped view (stride -8 bytes) through its generic strided
  loop, one element at a time, and the mixer's merge ``scale * (y_f +
  flip(y_b))`` is two passes.  Here one parallel loop over the rows does each
  of the passes of Vim's mixer (the merge forward; backward, ``0.5 * dy`` with
  its flip, and the merges of the two paths' ``dx`` and ``dz``, each written
  into its half of one ``dxz``, a channel slice the kernel writes in place).
  Alone at Vim 32x32's size (64 x 48 channels x 257 tokens, float64; ms,
  NumPy / Numba on the Xeon of chapter 11, in a slow stretch of the machine;
  ``benchmarks/bench_layers.py``, case "vim merge"):

  ==============================  ===========  ===========
  pass                            one thread   two threads
  ==============================  ===========  ===========
  the merge, scale 1/2            1.53 / 0.81  1.37 / 0.39
  the backward's merges           4.36 / 2.56  4.38 / 1.28
  ==============================  ===========  ===========

* Float32 and float64; arrays of other strides are copied C-contiguous first.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ssm_ref._validation import check_shape

from ._views import as_rows, writable_in_parent
from .numba_cpu import _launch, _njit_noalias

__all__ = ["merge_directions", "merge_directions_backward"]


@_njit_noalias(parallel=True, error_model="numpy", cache=True)
def _merge(y_f, y_b, scale, out, per, out_per, first):
    """``out[o, t] = scale * (y_f[r, t] + y_b[r, L - 1 - t])``; (rows, L), C-contiguous;
    ``out`` may be ``y_f``, not ``y_b``.  Row r of the inputs is row ``o = (r // per) *
    out_per + first + r % per`` of ``out``: in each block of ``out_per`` rows of ``out``
    (a batch element's channels), the ``per`` from ``first`` on (``o = r`` where ``per =
    out_per``, ``first = 0``)."""
    nrows, nl = y_f.shape
    for r in prange(nrows):
        f, b, o = y_f[r], y_b[r], out[(r // per) * out_per + first + r % per]
        for t in range(nl):
            o[t] = scale * (f[t] + b[nl - 1 - t])


@_njit_noalias(parallel=True, error_model="numpy", cache=True)
def _merge_backward(dy, scale, dy_f, dy_b):
    """``dy_f[r, t] = scale * dy[r, t]`` and ``dy_b[r, L - 1 - t]`` the same; (rows, L)."""
    nrows, nl = dy.shape
    for r in prange(nrows):
        g, f, b = dy[r], dy_f[r], dy_b[r]
        for t in range(nl):
            v = scale * g[t]
            f[t] = v
            b[nl - 1 - t] = v


def _real(**arrays):
    """The arrays' common dtype; ``TypeError`` for one that is not float32 or float64,
    ``ValueError`` for one without the L axis."""
    for name, a in arrays.items():
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"Parameter {name} has dtype {a.dtype} but float32 or float64 "
                            "was expected")
        if a.ndim < 1:
            raise ValueError(f"Parameter {name} is a scalar but should be an array (..., L)")
    return np.result_type(*arrays.values())


def merge_directions(y_f, y_b, scale=1.0, out=None):
    """Numba version of :func:`ssm_ref.vision.vim.merge_directions` (same result).

    ``out``, if given, must be an array of ``y_f``'s shape and the result's
    dtype, C-contiguous or, for (B, C, L) arrays, a channel slice of a
    C-contiguous array (Vim's ``dxz[:, :D]``: written in place); ``y_f``
    itself may be it; an ``out`` sharing memory with ``y_b`` gets ``y_b``
    copied first.

    Examples
    --------
    >>> import numpy as np
    >>> from fast.numba_bidirectional import merge_directions
    >>> merge_directions(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0]), 0.5)
    array([15.5, 11. ,  6.5])
    """
    check_shape(y_b, "y_b", y_f.shape)  # no broadcast
    real = _real(y_f=y_f, y_b=y_b)
    if out is None:
        out = np.empty(y_f.shape, real)
    parent, first = writable_in_parent(out, "out", y_f.shape, real,
                                       1 if y_f.ndim == 3 else None, "a channel slice (B, C, L)")
    if np.may_share_memory(out, y_b):
        y_b = y_b.copy()  # the merge reads y_b backwards while it writes out forwards
    per = y_f.shape[1] if y_f.ndim == 3 else 1  # (B, C, L): the channels, out's in parent's
    _launch(_merge, as_rows(y_f, real), as_rows(y_b, real), real.type(scale),
            as_rows(parent, real), per, parent.shape[1] if y_f.ndim == 3 else 1, first)
    return out


def merge_directions_backward(dy, scale=1.0):
    """Numba version of :func:`ssm_ref.vision.vim.merge_directions_backward` (same result):
    ``(scale * dy, its flip)`` written in one pass, both C-contiguous.

    Examples
    --------
    >>> import numpy as np
    >>> from fast.numba_bidirectional import merge_directions_backward
    >>> merge_directions_backward(np.array([1.0, 2.0, 4.0]), 0.5)
    (array([0.5, 1. , 2. ]), array([2. , 1. , 0.5]))
    """
    real = _real(dy=dy)
    dy_f, dy_b = np.empty(dy.shape, real), np.empty(dy.shape, real)
    _launch(_merge_backward, as_rows(dy, real), real.type(scale), as_rows(dy_f, real),
            as_rows(dy_b, real))
    return dy_f, dy_b
