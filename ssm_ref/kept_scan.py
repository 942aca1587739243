"""A scan and its backward as one pair of calls: the forward keeps what the backward starts from.

The official package's autograd function saves its tensors in the forward
(``ctx.save_for_backward``) and its backward reads them.  The vision blocks do
the same with two calls::

    y, kept = scan_keeping(scan_fn, u, delta, A, B, C, D=D, delta_softplus=True)
    grads = scan_backward_kept(scan_backward_fn, dout, kept)

With any pair of scan functions, ``kept`` holds the scan's arguments, and the
backward calls ``scan_backward_fn(dout, *arguments)``: a block need not keep
(or build again) the arrays it handed the scan.  Scan functions that can do
better carry twins, as attributes: ``for_backward`` on ``scan_fn``, called
with the scan's arguments and returning ``(y, last_state or None, saved)``,
and ``from_saved`` on ``scan_backward_fn``, called as ``from_saved(dout,
saved, dlast_state)``.  The pair of ``fast.scan_functions("numba")`` has them
(``fast.numba_cpu.attach_saved_scan``): its ``saved`` holds the checked
arguments and the kernels' arrays, so that the backward neither checks nor
lays them out again.  The results are the same either way.
"""
from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Kept", "scan_keeping", "scan_backward_kept"]


class Kept(NamedTuple):
    """What :func:`scan_keeping` kept of a scan (a tuple, so that a block's cache stays a
    tree of tuples, dicts and arrays)."""

    #: the scan's positional arguments: u, delta, A, B, C
    args: tuple
    #: its keyword arguments
    kwargs: dict
    #: what the scan function's ``for_backward`` twin returned, or None
    saved: Any


def scan_keeping(scan_fn, u, delta, A, B, C, **kwargs):
    """``scan_fn(u, delta, A, B, C, **kwargs)`` and what its backward starts from.

    Returns ``(result, kept)``: ``result`` as ``scan_fn`` returns it (``y``, or
    ``(y, last_state)`` with ``return_last_state=True``), ``kept`` a :class:`Kept`
    for :func:`scan_backward_kept`.  Uses ``scan_fn.for_backward`` where the
    function has one (see the module's docstring).

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import selective_scan, selective_scan_backward
    >>> u, delta = np.ones((1, 1, 3)), 0.5 * np.ones((1, 1, 3))
    >>> y, kept = scan_keeping(selective_scan, u, delta, [[-1.0]], [[1.0]], [[1.0]])
    >>> scan_backward_kept(selective_scan_backward, np.array([[[1.0, 0, 0]]]), kept)["u"]
    array([[[0.5, 0. , 0. ]]])
    """
    args = (u, delta, A, B, C)
    saving = getattr(scan_fn, "for_backward", None)
    if saving is None:
        return scan_fn(*args, **kwargs), Kept(args, kwargs, None)
    y, last_state, saved = saving(*args, **kwargs)
    return ((y, last_state) if kwargs.get("return_last_state") else y), Kept(args, kwargs, saved)


def scan_backward_kept(scan_backward_fn, dout, kept, dlast_state=None):
    """The gradients of the scan :func:`scan_keeping` ran and ``kept``, as
    ``scan_backward_fn`` returns them (its ``from_saved`` twin where it has one and the
    forward saved something)."""
    if not isinstance(kept, Kept):
        raise TypeError(f"Parameter kept is a {type(kept).__name__}, but the Kept from "
                        "ssm_ref.kept_scan.scan_keeping was expected")
    from_saved = getattr(scan_backward_fn, "from_saved", None)
    if from_saved is not None and kept.saved is not None:
        return from_saved(dout, kept.saved, dlast_state)
    kwargs = {k: v for k, v in kept.kwargs.items() if k != "return_last_state"}
    if dlast_state is not None:
        kwargs["dlast_state"] = dlast_state
    return scan_backward_fn(dout, *kept.args, **kwargs)
