"""Arrays laid out for the kernels: slices of a contiguous array handed over as that array and
a first index (:func:`in_parent`), and arrays seen as rows (:func:`as_rows`).

A model's arrays are often slices: SS2D's ``xc = xz[..., :D]`` (the first half
of the input projection's channels), direction k's sequences ``u[:, k·D:(k+1)·D]``
of the grouped scan's input.  Numba types such a view as layout ``"A"`` (any
strides), and a loop over its last axis then takes a scalar load per element
instead of vectors; copied first, it costs a pass over memory.  A kernel that
takes the C-contiguous array the slice was cut from and the slice's first index
along the cut axis reads the same elements in place, with contiguous loops.
"""
from __future__ import annotations

import math

import numpy as np

__all__: list[str] = []  # used by fast's modules; nothing is re-exported


def in_parent(x, axis):
    """``(parent, start)``: ``x`` as ``parent``'s indices ``start .. start + n`` along ``axis``.

    ``parent`` is C-contiguous and ``x`` is ``parent[:, ..., start:start + n, ...]``
    (``axis`` >= 1: the axes before it whole, those after it whole), without a
    copy when ``x`` is such a slice of the array that owns its memory; otherwise
    ``x`` as a C-contiguous array (a copy unless it is one) and ``start = 0``.

    Examples
    --------
    >>> import numpy as np
    >>> xz = np.arange(24.0).reshape(2, 3, 4)
    >>> parent, start = in_parent(xz[:, :, 2:], 2)
    >>> parent is xz.base or parent.base is xz.base, start
    (True, 2)
    >>> in_parent(xz[:, :, ::2], 2)[0].flags.owndata  # strided: copied
    True
    """
    base = x.base
    if (isinstance(base, np.ndarray) and base.flags.c_contiguous and base.dtype == x.dtype
            and 1 <= axis < x.ndim):
        inner = x.itemsize * math.prod(x.shape[axis + 1:])  # bytes of one index along axis
        if inner and x.strides[axis - 1] % inner == 0:
            shape = x.shape[:axis] + (x.strides[axis - 1] // inner,) + x.shape[axis + 1:]
            offset = x.__array_interface__["data"][0] - base.__array_interface__["data"][0]
            if base.size == math.prod(shape) and offset >= 0 and offset % inner == 0:
                parent = base.reshape(shape)
                start = offset // inner
                view = parent[(slice(None),) * axis + (slice(start, start + x.shape[axis]),)]
                if view.shape == x.shape and view.strides == x.strides:
                    return parent, start
    return np.ascontiguousarray(x), 0


def writable_in_parent(out, name, shape, dtype, axis, slice_of="a channel slice"):
    """``(parent, start)`` of an array a kernel is to write into: ``out`` itself if it is
    C-contiguous, else :func:`in_parent` along ``axis`` (None: C-contiguous only).

    ``ValueError`` naming ``out`` (``name``: its shape, dtype and strides) unless it has
    ``shape`` and ``dtype`` and is one of those: :func:`in_parent` would hand over a copy,
    whose writes the caller would never see.
    """
    if out.shape == tuple(shape) and out.dtype == dtype:
        if out.flags.c_contiguous:
            return out, 0
        if axis is not None:
            parent, start = in_parent(out, axis)
            if np.may_share_memory(parent, out):  # not a copy
                return parent, start
    raise ValueError(f"Parameter {name} has shape {out.shape}, dtype {out.dtype} and strides "
                     f"{out.strides} but should be {tuple(shape)} in {np.dtype(dtype)}, "
                     f"C-contiguous or {slice_of} of a C-contiguous array")


def as_rows(a, dtype):
    """``a`` (..., C) as a C-contiguous (rows, C) array of ``dtype``: a view where it can be
    (a copy of a strided view or of another dtype); an empty ``a`` gives (0, C) or (rows, 0).

    Examples
    --------
    >>> import numpy as np
    >>> as_rows(np.zeros((2, 3, 4)), np.float32).shape
    (6, 4)
    """
    return np.ascontiguousarray(a, dtype=dtype).reshape(math.prod(a.shape[:-1]), a.shape[-1])
