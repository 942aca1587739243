"""The Mamba block's inner function with the official signature (``mamba_inner_fn``).

The official package runs the part of the Mamba block between ``in_proj`` and
the end of ``out_proj`` as one function, ``mamba_inner_fn``
(``state-spaces/mamba``, ``mamba_ssm/ops/selective_scan_interface.py``):
the causal depthwise convolution with SiLU (``causal_conv1d_fn`` of
Dao-AILab/causal-conv1d, here :func:`ssm_ref.nn.causal_conv1d` with
``activation="silu"``), ``x_proj``, ``dt_proj``, the selective scan with D,
the gate z and the softplus, and ``out_proj``.  Its arguments are plain
arrays, not a module, so one call can be swapped for the other.  This module
holds its readable reference twin and the hand-derived backward; the fused,
compiled version is ``fast.mamba_inner_fn(..., backend="numba")``.

Glossary
--------
B         batch size (the matrix B is ``Bmat`` where both meet).
L         sequence length.
d_model   width of the tokens ``out_proj`` returns.
D         ``d_inner``, the channels of the inner path (``xz`` has 2D).
N         ``d_state``.
R         ``dt_rank`` (``delta_rank`` in the official code).
K         ``d_conv``, the convolution width.

The data path (book equation ``eq-mamba-block`` without ``in_proj``)::

    x, z     = split(xz)                                  (B, D, L) each
    x        = causal_conv1d(x, conv1d_weight, conv1d_bias, activation="silu")
    x_dbl    = x_proj_weight @ x                          (B, R + 2N, L)
    delta    = delta_proj_weight @ x_dbl[:, :R]           (B, D, L)
    Bmat     = x_dbl[:, R:R + N]   (unless B is given)    (B, N, L)
    Cmat     = x_dbl[:, R + N:]    (unless C is given)    (B, N, L)
    y        = selective_scan(x, delta, A, Bmat, Cmat, D, z, delta_bias, delta_softplus)
    out      = out_proj_weight @ y + out_proj_bias        (B, L, d_model)

The same numbers as :class:`ssm_ref.MambaBlock` after its ``in_proj``: the
block's parameters map onto these arguments by name (``A = -exp(A_log)``,
``delta_bias = dt_proj.bias``), see :func:`block_arguments`.
"""
from __future__ import annotations

import numpy as np

from ._validation import as_array, check_bool, check_finite, check_shape
from ._xp import array_module
from .nn import causal_conv1d, causal_conv1d_backward, linear, linear_backward
from .selective import _one_module, selective_scan, selective_scan_backward

__all__ = ["mamba_inner_fn", "mamba_inner_fn_backward"]

#: The names of :func:`mamba_inner_fn`'s array arguments, in order (the keys of the
#: gradients :func:`mamba_inner_fn_backward` returns).
INNER_FN_ARGS = ("xz", "conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight",
                 "out_proj_weight", "out_proj_bias", "A", "B", "C", "D", "delta_bias")
_OPTIONAL = ("conv1d_bias", "out_proj_bias", "B", "C", "D", "delta_bias")


def check_inner_fn_args(args, delta_softplus):
    """Validate :func:`mamba_inner_fn`'s arguments (a dict by :data:`INNER_FN_ARGS`).

    Returns the dict with each argument as an array (None kept for an absent
    optional one) and the sizes ``(D, N, R, K, d_model)``.  ``B`` and ``C``,
    when given, are left to the selective scan's own checks.  Shared with
    ``fast.numba_fused`` so that both raise the same errors.
    """
    check_bool(delta_softplus, "delta_softplus")
    a = {}
    for name in INNER_FN_ARGS:
        value = args[name]
        if value is None:
            if name not in _OPTIONAL:
                raise TypeError(f"Parameter {name} is None but an array was expected")
            a[name] = None
            continue
        a[name] = as_array(value, name, allow_complex=name in ("B", "C"))
        if name not in ("B", "C"):
            check_finite(a[name], name)
    _one_module({k: v for k, v in a.items()})
    xz = a["xz"]
    if xz.ndim != 3 or xz.shape[1] % 2:
        raise ValueError(f"Parameter xz has shape {xz.shape} but should be (B, 2 * d_inner, L)")
    D = xz.shape[1] // 2
    check_shape(as_array(a["A"], "A", allow_complex=False, ndim=2), "A", (D, None))
    check_shape(as_array(a["conv1d_weight"], "conv1d_weight", ndim=3), "conv1d_weight",
                (D, 1, None))
    check_shape(as_array(a["delta_proj_weight"], "delta_proj_weight", ndim=2),
                "delta_proj_weight", (D, None))
    check_shape(as_array(a["out_proj_weight"], "out_proj_weight", ndim=2), "out_proj_weight",
                (None, D))
    N, R = a["A"].shape[1], a["delta_proj_weight"].shape[1]
    K, d_model = a["conv1d_weight"].shape[2], a["out_proj_weight"].shape[0]
    check_shape(a["x_proj_weight"], "x_proj_weight", (R + 2 * N, D))
    for name, shape in (("conv1d_bias", (D,)), ("D", (D,)), ("delta_bias", (D,)),
                        ("out_proj_bias", (d_model,))):
        if a[name] is not None:
            check_shape(a[name], name, shape)
    return a, (D, N, R, K, d_model)


def _forward(a, sizes, delta_softplus):
    """The data path on validated arguments, in float64; returns ``(out, intermediates)``."""
    D, N, R, _, _ = sizes
    f64 = {k: (None if v is None else v.astype(np.float64, copy=False)) for k, v in a.items()}
    xz = f64["xz"]
    # [book:mamba-inner-fn]
    x, z = xz[:, :D], xz[:, D:]  # (B, D, L) each
    x_act = causal_conv1d(x, f64["conv1d_weight"][:, 0, :], f64["conv1d_bias"],
                          activation="silu", check=False)  # (B, D, L)
    x_dbl = linear(x_act.transpose(0, 2, 1), f64["x_proj_weight"], check=False)  # (B, L, R + 2N)
    dt_low = x_dbl[..., :R]  # (B, L, R)
    delta = linear(dt_low, f64["delta_proj_weight"], check=False).transpose(0, 2, 1)  # (B, D, L)
    Bmat = x_dbl[..., R:R + N].transpose(0, 2, 1) if a["B"] is None else a["B"]  # (B, N, L)
    Cmat = x_dbl[..., R + N:].transpose(0, 2, 1) if a["C"] is None else a["C"]  # (B, N, L)
    y = selective_scan(x_act, delta, f64["A"], Bmat, Cmat, D=f64["D"], z=z,
                       delta_bias=f64["delta_bias"], delta_softplus=delta_softplus)  # (B, D, L)
    out = linear(y.transpose(0, 2, 1), f64["out_proj_weight"], f64["out_proj_bias"],
                 check=False)  # (B, L, d_model)
    # [/book:mamba-inner-fn]
    return out, {"f64": f64, "x": x, "z": z, "x_act": x_act, "dt_low": dt_low, "delta": delta,
                 "Bmat": Bmat, "Cmat": Cmat, "y": y}


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                   out_proj_weight, out_proj_bias, A, B=None, C=None, D=None, delta_bias=None,
                   delta_softplus=True):
    """The official ``mamba_inner_fn``: conv1d + SiLU -> x_proj -> dt_proj -> scan -> out_proj.

    Parameters
    ----------
    xz : array_like, shape (B, 2D, L)
        ``in_proj``'s output, channels first: x in the first D channels, the
        gate z in the last D.
    conv1d_weight : array_like, shape (D, 1, K)
        The official ``conv1d.weight``.
    conv1d_bias : array_like, shape (D,), or None
    x_proj_weight : array_like, shape (R + 2N, D)
        Makes (dt, B, C) from the convolved x (no bias, as in Mamba).
    delta_proj_weight : array_like, shape (D, R)
        ``dt_proj.weight`` (its bias is ``delta_bias``, added inside the scan).
    out_proj_weight : array_like, shape (d_model, D)
    out_proj_bias : array_like, shape (d_model,), or None
    A : array_like, shape (D, N)
        Real; ``-exp(A_log)`` for a Mamba block.
    B, C : array_like, optional
        None (the default, as Mamba calls it): made from the input by
        ``x_proj`` (rows R..R+N for B, the last N rows for C).  Given: any
        form :func:`ssm_ref.selective_scan` accepts, used instead (the
        corresponding rows of ``x_proj_weight`` then get no gradient).
    D : array_like, shape (D,), optional
        The skip connection.
    delta_bias : array_like, shape (D,), optional
        ``dt_proj.bias``.
    delta_softplus : bool, default True

    Returns
    -------
    out : ndarray, shape (B, L, d_model)
        In ``xz``'s dtype (computed in float64).

    Raises
    ------
    ValueError
        A shape that does not fit d_inner = ``xz.shape[1] // 2`` (named, with
        the expected shape), or a value that is not finite.
    TypeError
        A required argument is None, or A is complex.

    Notes
    -----
    Implements ``eq-mamba-block`` from ``in_proj``'s output on.  Where it
    differs from the official function: A must be real (the official one also
    takes complex A with B, C made from pairs of x_proj's rows); the
    official ``B_proj_bias``, ``C_proj_bias``, ``checkpoint_lvl``,
    ``cu_seqlens`` and ``seq_idx`` are not offered (Mamba's block uses none
    of them); the official reference ``mamba_inner_ref`` ignores
    ``delta_softplus`` (always True), here it is honoured as in the fused
    official function.  :func:`ssm_ref.mamba_inner_forward` is the same path
    without ``out_proj``, keyed by the block's parameter names.

    References
    ----------
    ``state-spaces/mamba``, ``mamba_ssm/ops/selective_scan_interface.py``
    (``mamba_inner_fn``, ``mamba_inner_ref``); ``Dao-AILab/causal-conv1d``
    (``causal_conv1d_fn``).

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import MambaBlock
    >>> block = MambaBlock(d_model=4, d_state=2, seed=0)
    >>> u = np.random.default_rng(0).standard_normal((2, 5, 4))  # (B, L, d_model)
    >>> xz = (u @ block.params["in_proj.weight"].T).transpose(0, 2, 1)  # (B, 2D, L)
    >>> out = mamba_inner_fn(xz, **block_arguments(block.params))
    >>> out.shape, bool(np.allclose(out, block(u)))
    ((2, 5, 4), True)
    """
    a, sizes = check_inner_fn_args(dict(zip(INNER_FN_ARGS, (
        xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
        out_proj_bias, A, B, C, D, delta_bias))), delta_softplus)
    out, _ = _forward(a, sizes, delta_softplus)
    return out.astype(a["xz"].dtype)


def mamba_inner_fn_backward(dout, xz, conv1d_weight, conv1d_bias, x_proj_weight,
                            delta_proj_weight, out_proj_weight, out_proj_bias, A, B=None, C=None,
                            D=None, delta_bias=None, delta_softplus=True):
    """Gradients of :func:`mamba_inner_fn`, recomputing its forward (as the official backward).

    Parameters
    ----------
    dout : array_like, shape (B, L, d_model)
        Gradient of the loss with respect to ``out``.
    xz, conv1d_weight, ..., delta_softplus
        As in :func:`mamba_inner_fn`.

    Returns
    -------
    dict of str -> ndarray or None
        The gradient of every array argument, keyed by its name
        (:data:`INNER_FN_ARGS`: ``"xz"``, ``"conv1d_weight"``, ...,
        ``"delta_bias"``), in that argument's shape and dtype; None for an
        optional argument that was None.

    Raises
    ------
    ValueError
        ``dout`` not (B, L, d_model) for these arguments or not finite, and
        every error of :func:`mamba_inner_fn`.

    Notes
    -----
    Reverse of ``eq-mamba-block`` after ``in_proj``: ``out_proj``, then the
    selective scan's backward (a reverse scan, ``eq-selective-backward``),
    ``dt_proj``, ``x_proj`` (whose input also feeds the scan: the two
    gradients add), then the convolution with its SiLU
    (:func:`ssm_ref.nn.causal_conv1d_backward` with ``activation="silu"``).

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import MambaBlock
    >>> args = block_arguments(MambaBlock(d_model=4, d_state=2).params)
    >>> g = mamba_inner_fn_backward(np.ones((1, 3, 4)), np.ones((1, 16, 3)), **args)
    >>> g["xz"].shape, g["A"].shape, g["conv1d_weight"].shape, g["B"]
    ((1, 16, 3), (8, 2), (8, 1, 4), None)
    """
    a, sizes = check_inner_fn_args(dict(zip(INNER_FN_ARGS, (
        xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
        out_proj_bias, A, B, C, D, delta_bias))), delta_softplus)
    Dch, N, R, _, d_model = sizes
    n_batch, _, length = a["xz"].shape
    dout = as_array(dout, "dout", allow_complex=False, ndim=3)
    check_shape(dout, "dout", (n_batch, length, d_model))
    check_finite(dout, "dout")
    _one_module({"dout": dout, "xz": a["xz"]})
    xp = array_module(dout)
    _, c = _forward(a, sizes, delta_softplus)
    w = c["f64"]
    g = {}
    # [book:mamba-inner-fn-backward]
    # out = out_proj(y)
    dy_tok, g["out_proj_weight"], g["out_proj_bias"] = linear_backward(
        dout.astype(np.float64, copy=False), c["y"].transpose(0, 2, 1), w["out_proj_weight"],
        w["out_proj_bias"], check=False)  # (B, L, D)
    # y = selective_scan(x_act, delta, A, Bmat, Cmat, D, z, delta_bias, delta_softplus)
    s = selective_scan_backward(dy_tok.transpose(0, 2, 1), c["x_act"], c["delta"], w["A"],
                                c["Bmat"], c["Cmat"], D=w["D"], z=c["z"],
                                delta_bias=w["delta_bias"], delta_softplus=delta_softplus)
    for k in ("A", "D", "delta_bias"):
        g[k] = s[k]
    g["B"] = None if a["B"] is None else s["B"]
    g["C"] = None if a["C"] is None else s["C"]
    # delta = delta_proj_weight @ dt_low
    d_dt_low, g["delta_proj_weight"], _ = linear_backward(
        s["delta"].transpose(0, 2, 1), c["dt_low"], w["delta_proj_weight"],
        check=False)  # (B, L, R)
    # (dt_low, Bmat, Cmat) = split(x_proj(x_act)); a given B or C took no part
    zeros = xp.zeros((n_batch, length, N))
    d_xdbl = xp.concatenate([d_dt_low,
                             zeros if a["B"] is not None else s["B"].transpose(0, 2, 1),
                             zeros if a["C"] is not None else s["C"].transpose(0, 2, 1)],
                            axis=-1)  # (B, L, R + 2N)
    dx_act_tok, g["x_proj_weight"], _ = linear_backward(
        d_xdbl, c["x_act"].transpose(0, 2, 1), w["x_proj_weight"], check=False)  # (B, L, D)
    dx_act = s["u"] + dx_act_tok.transpose(0, 2, 1)  # (B, D, L): scan input + x_proj input
    # x_act = silu(causal_conv1d(x))
    dx, dw_conv, g["conv1d_bias"] = causal_conv1d_backward(
        dx_act, c["x"], w["conv1d_weight"][:, 0, :], w["conv1d_bias"], activation="silu",
        check=False)  # (B, D, L), (D, K), (D,)
    g["conv1d_weight"] = dw_conv[:, None, :]  # (D, 1, K)
    # x, z = split(xz)
    g["xz"] = xp.concatenate([dx, s["z"]], axis=1)  # (B, 2D, L)
    # [/book:mamba-inner-fn-backward]
    return {k: (None if a[k] is None else xp.asarray(g[k]).astype(a[k].dtype, copy=False))
            for k in INNER_FN_ARGS}


def block_arguments(params, names=None):
    """A Mamba block's parameters as :func:`mamba_inner_fn`'s keyword arguments (all but ``xz``).

    ``params`` is keyed by the official state-dict names (``block.params``);
    ``A = -exp(A_log)``, ``delta_bias = dt_proj.bias``, B and C made by
    ``x_proj`` (None).  ``names`` maps those names to others (Vim's backward
    path keeps its copy under ``A_b_log``, ...).

    Examples
    --------
    >>> from ssm_ref import MambaBlock
    >>> sorted(block_arguments(MambaBlock(d_model=4, d_state=2).params))[:3]
    ['A', 'D', 'conv1d_bias']
    """
    def get(k):
        return params.get(k if names is None else names.get(k, k))
    A_log = as_array(get("A_log"), "params['A_log']", allow_complex=False)
    return {"conv1d_weight": get("conv1d.weight"), "conv1d_bias": get("conv1d.bias"),
            "x_proj_weight": get("x_proj.weight"), "delta_proj_weight": get("dt_proj.weight"),
            "out_proj_weight": get("out_proj.weight"), "out_proj_bias": get("out_proj.bias"),
            "A": -array_module(A_log).exp(A_log.astype(np.float64, copy=False)),
            "D": get("D"), "delta_bias": get("dt_proj.bias")}
