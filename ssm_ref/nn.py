"""Layers with hand-derived backward passes: the parts the Mamba and vision blocks are built from.

Each layer is a pair of plain functions, the forward and, right below it, its
backward (in the spirit of micrograd: one operation next to its own derivative).
A backward takes the upstream gradient ``dy`` (same shape as the forward
output) and the forward's inputs, recomputes what it needs, and returns the
gradients of every input in the order of the forward's arguments.

Glossary
--------
B      batch size.
L      sequence length.
D      channels (``d_model`` or ``d_inner`` in the Mamba block).
K      kernel width of the causal 1-D convolution (``d_conv``, 4 in Mamba).
H, W   image height and width (channels-last images ``(B, H, W, C)``).
C      image channels (only in :func:`depthwise_conv2d`).
kh, kw kernel height and width of the depthwise 2-D convolution (3 in VMamba).
x, y   input and output of a layer; ``dy`` is dL/dy, ``dx`` is dL/dx.

Layouts follow PyTorch so official weights drop in unchanged: a linear weight
is ``(out, in)``; the depthwise convolution weights are the official
``conv1d.weight`` ``(D, 1, K)`` and ``conv2d.weight`` ``(C, 1, kh, kw)`` with the
singleton axis squeezed away.

Validation: called directly, every function checks its arguments (real,
finite, matching shapes) and names the one that is wrong.  The blocks and
models validate their input once at their own entry point and then call the
layers with ``check=False``, which skips those checks (and takes float64
views of float64 arrays instead of copies); only an internal caller that has
already validated its arrays passes it.

dtype contract: every function computes in float64 and returns each result
in the dtype of the argument it belongs to (the output in ``x``'s dtype, a
weight gradient in the weight's dtype).  One exception, for training in
float32 (``Module.set_dtype``): called with ``check=False`` on arrays that
are all float32, a layer computes in float32 (:func:`_work_dtype`).

Array module: every function runs on the array module of its inputs
(``xp = array_module(x, W)``, NumPy or CuPy, see ``ssm_ref._xp``) and returns
arrays of that module, with no host round-trip; pass all arrays of one call
on the same module.
"""
from __future__ import annotations

import math

import numpy as np

from ._validation import as_array, check_finite, check_shape
from ._xp import array_module, special

__all__ = [
    "linear",
    "linear_backward",
    "sigmoid",
    "silu",
    "silu_backward",
    "softplus",
    "softplus_backward",
    "causal_conv1d",
    "causal_conv1d_backward",
    "rms_norm",
    "rms_norm_backward",
    "layer_norm",
    "layer_norm_backward",
    "depthwise_conv2d",
    "depthwise_conv2d_backward",
    "gelu",
    "gelu_backward",
]

#: Above this input softplus is the identity (PyTorch's ``threshold=20``).
SOFTPLUS_THRESHOLD = 20.0


# --------------------------------------------------------------------------- helpers
def _real(x, name, ndim=None):
    arr = as_array(x, name, allow_complex=False, ndim=ndim)
    check_finite(arr, name)
    return arr


def _work_dtype(check, *arrays):
    """The dtype a layer computes in: float64, or float32 for an unchecked call on float32 only.

    ``check=False`` marks a block's internal call; a block that computes in
    float32 (``Module.set_dtype(np.float32)``) passes float32 data and
    weights, and then gets float32 arithmetic.  Any other call is float64.
    """
    if not check and all(a.dtype == np.float32 for a in arrays if a is not None):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _grad_like(dy, like, name, check=True):
    """Validate an upstream gradient: real, finite, same shape as the forward output.

    With ``check=False`` (a block's internal call) only the float64 view is taken.
    """
    if not check:
        return dy.astype(_work_dtype(False, dy), copy=False)
    dy = _real(dy, name)
    check_shape(dy, name, tuple(like))
    return dy.astype(np.float64, copy=False)


def _out(value, like):
    """Cast a float64 result back to the dtype of ``like`` (the dtype contract)."""
    xp = array_module(value, like)
    return xp.asarray(value).astype(like.dtype, copy=False)


def _elementwise_args(x, dy=None, check=True):
    """An activation's input (and its backward's upstream gradient ``dy``, same shape).

    Returns ``(x, x64, dy)``: ``x`` validated (real, finite) when ``check``,
    its float64 view, and ``dy`` in float64 (None when not given).
    """
    if check:
        x = _real(x, "x")
    if dy is not None:
        dy = _grad_like(dy, x.shape, "dy", check)
    return x, x.astype(_work_dtype(check, x), copy=False), dy


# --------------------------------------------------------------------------- linear
def _check_linear(x, W, check=True):
    if not check:
        return x, W
    x = _real(x, "x")
    W = _real(W, "W", ndim=2)
    if x.ndim < 1 or x.shape[-1] != W.shape[1]:
        raise ValueError(
            f"Parameter x has shape {x.shape} but its last axis should be {W.shape[1]} "
            f"(W has shape {W.shape})"
        )
    return x, W


def linear(x, W, b=None, *, check=True):
    """Affine map on the last axis, ``y = x W^T + b`` (PyTorch's ``nn.Linear``).

    Parameters
    ----------
    x : array_like, shape (..., in)
        Input features on the last axis, any leading axes (e.g. (B, L, in)).
    W : array_like, shape (out, in)
        Weight in PyTorch layout.
    b : array_like, shape (out,), optional
        Bias.

    Returns
    -------
    y : ndarray, shape (..., out)
        In ``x``'s dtype (computed in float64).

    Raises
    ------
    ValueError
        If ``W`` is not 2-D, ``x``'s last axis is not ``in``, ``b`` is not
        ``(out,)``, or an input is not finite.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0, 2.0]])
    >>> W = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    >>> linear(x, W, b=np.array([0.0, 0.5, 1.0]))
    array([[ 1. ,  3.5, -1. ]])
    """
    x, W = _check_linear(x, W, check)
    n_out = W.shape[0]
    wd = _work_dtype(check, x, W)
    y = x.astype(wd, copy=False) @ W.astype(wd, copy=False).T  # (..., out)
    if b is not None:
        if check:
            b = check_shape(_real(b, "b"), "b", (n_out,))
        y = y + b
    return _out(y, x)


def linear_backward(dy, x, W, b=None, *, check=True):
    """Gradients of :func:`linear`: ``dx = dy W``, ``dW = sum dy^T x``, ``db = sum dy``.

    Parameters
    ----------
    dy : array_like, shape (..., out)
        Upstream gradient dL/dy.
    x, W, b
        The forward's inputs (``b`` only decides whether ``db`` is returned).

    Returns
    -------
    dx : ndarray, shape (..., in)
    dW : ndarray, shape (out, in)
        Summed over every leading axis of ``x``.
    db : ndarray, shape (out,), or None when ``b`` is None.

    Examples
    --------
    >>> import numpy as np
    >>> x, W = np.ones((2, 3)), np.ones((4, 3))
    >>> dx, dW, db = linear_backward(np.ones((2, 4)), x, W, np.zeros(4))
    >>> dx[0], dW[0], db
    (array([4., 4., 4.]), array([2., 2., 2.]), array([2., 2., 2., 2.]))
    """
    x, W = _check_linear(x, W, check)
    dy = _grad_like(dy, x.shape[:-1] + (W.shape[0],), "dy", check)
    wd = _work_dtype(check, x, W, dy)
    dy64 = dy.astype(wd, copy=False).reshape(-1, W.shape[0])  # (M, out), M = prod(leading)
    x64 = x.astype(wd, copy=False).reshape(-1, W.shape[1])  # (M, in)
    dx = (dy64 @ W.astype(wd, copy=False)).reshape(x.shape)  # (..., in)
    dW = dy64.T @ x64  # (out, in)
    if b is not None and check:  # b only decides db's presence and dtype
        b = as_array(b, "b", allow_complex=False)
    db = None if b is None else _out(dy64.sum(axis=0), b)  # (out,)
    return _out(dx, x), _out(dW, W), db


# --------------------------------------------------------------------------- activations
def sigmoid(x):
    """Logistic sigmoid ``1 / (1 + e^{-x})``, elementwise, stable for any ``x``.

    The array module's own ``expit``: :func:`scipy.special.expit` for NumPy
    arrays, ``cupyx.scipy.special.expit`` for CuPy arrays (SciPy's ufunc does
    not run on device arrays, see :func:`ssm_ref._xp.special`).  Both evaluate
    it without overflow and keep full relative precision in both tails down to
    the smallest normal float; below ``x ~ -708`` the result flushes to 0.

    Parameters
    ----------
    x : array_like
        Real input, any shape.  Infinities are allowed (``sigmoid(inf) = 1``,
        ``sigmoid(-inf) = 0``) and NaN propagates; this is a building block
        called inside the layers, so it does not check finiteness.

    Returns
    -------
    s : ndarray
        Same shape as ``x``, in ``x``'s dtype (computed in float64), on
        ``x``'s array module.

    Raises
    ------
    TypeError
        If ``x`` is complex or not numeric.

    Examples
    --------
    >>> import numpy as np
    >>> sigmoid(np.array([-800.0, -1.0, 0.0, 1.0, 800.0]))
    array([0.        , 0.26894142, 0.5       , 0.73105858, 1.        ])
    >>> sigmoid(np.array([-50.0]))  # ~ e^-50: no 1 - (1 - tiny) cancellation
    array([1.92874985e-22])
    """
    x = as_array(x, "x", allow_complex=False)
    xp = array_module(x)
    return _out(special(xp).expit(x.astype(np.float64, copy=False)), x)


def silu(x, *, check=True):
    """SiLU (swish), ``silu(x) = x * sigmoid(x)``, elementwise.

    The sigmoid is :func:`sigmoid`, which does not overflow for large ``|x|``.

    Examples
    --------
    >>> import numpy as np
    >>> silu(np.array([-1.0, 0.0, 1.0]))
    array([-0.26894142,  0.        ,  0.73105858])
    """
    x, x64, _ = _elementwise_args(x, check=check)
    return _out(x64 * sigmoid(x64), x)


def silu_backward(dy, x, *, check=True):
    """Gradient of :func:`silu`: ``dx = dy * s * (1 + x (1 - s))`` with ``s = sigmoid(x)``.

    Examples
    --------
    >>> import numpy as np
    >>> silu_backward(np.ones(1), np.zeros(1))  # silu'(0) = 1/2
    array([0.5])
    """
    x, x64, dy = _elementwise_args(x, dy, check)
    s = sigmoid(x64)
    return _out(dy * s * (1.0 + x64 * (1.0 - s)), x)


def softplus(x, *, check=True):
    """Softplus ``log(1 + e^x)``, the identity above 20 (PyTorch's ``threshold=20``).

    This is how Mamba turns ``delta`` into a positive step size; the switch to
    the identity above the threshold is part of the official semantics
    (``torch.nn.functional.softplus``), not only a numerical guard.

    Examples
    --------
    >>> import numpy as np
    >>> softplus(np.array([0.0, 25.0]))
    array([ 0.69314718, 25.        ])
    """
    x, x64, _ = _elementwise_args(x, check=check)
    xp = array_module(x)
    small = xp.minimum(x64, SOFTPLUS_THRESHOLD)  # exp never overflows
    return _out(xp.where(x64 > SOFTPLUS_THRESHOLD, x64, xp.log1p(xp.exp(small))), x)


def softplus_backward(dy, x, *, check=True):
    """Gradient of :func:`softplus`: ``sigmoid(x)`` below the threshold, 1 above.

    Examples
    --------
    >>> import numpy as np
    >>> softplus_backward(np.ones(2), np.array([0.0, 30.0]))
    array([0.5, 1. ])
    """
    x, x64, dy = _elementwise_args(x, dy, check)
    xp = array_module(x, dy)
    slope = xp.where(x64 > SOFTPLUS_THRESHOLD, 1.0, sigmoid(x64))
    return _out(dy * slope, x)


# --------------------------------------------------------------------------- causal conv1d
def _check_conv1d(x, weight, bias, check=True):
    if not check:
        return x, weight, bias
    x = _real(x, "x", ndim=3)
    weight = _real(weight, "weight", ndim=2)
    n_batch, n_chan, length = x.shape
    if weight.shape[0] != n_chan:
        raise ValueError(
            f"Parameter weight has shape {weight.shape} but should be ({n_chan}, K) "
            f"for x of shape {x.shape} (B, D, L); squeeze the official (D, 1, K) weight"
        )
    if bias is not None:
        bias = check_shape(_real(bias, "bias"), "bias", (n_chan,))
    return x, weight, bias


#: The values of ``activation`` that :func:`causal_conv1d` takes ("swish" is SiLU's other name).
CONV_ACTIVATIONS = (None, "silu", "swish")


def _check_activation(activation):
    """``activation`` of the causal convolution: None or "silu" ("swish" is read as "silu")."""
    if not (activation is None or isinstance(activation, str)) \
            or activation not in CONV_ACTIVATIONS:
        raise ValueError(f"Parameter activation = {activation!r} is not one of "
                         f"{list(CONV_ACTIVATIONS)}")
    return None if activation is None else "silu"


def causal_conv1d(x, weight, bias=None, activation=None, *, check=True):
    """Causal depthwise 1-D convolution, Mamba's ``conv1d`` (left zero padding K-1), SiLU optional.

    ``y[b, d, t] = bias[d] + sum_k weight[d, k] * x[b, d, t - (K-1) + k]`` with
    ``x`` taken as zero before ``t = 0``.  This is PyTorch's
    ``nn.Conv1d(D, D, K, groups=D, padding=K-1)`` (a cross-correlation) with
    the output cut to the first L steps, as ``Mamba.forward`` does; the last
    tap ``weight[:, K-1]`` multiplies the current token.

    Parameters
    ----------
    x : array_like, shape (B, D, L)
    weight : array_like, shape (D, K)
        The official ``conv1d.weight`` (D, 1, K) with the middle axis squeezed.
    bias : array_like, shape (D,), optional
    activation : {None, "silu", "swish"}, default None
        Applied to the convolution's output: None for none, ``"silu"`` (or its
        other name ``"swish"``) for :func:`silu`, as Mamba applies it right
        after the convolution.  The argument of the official
        ``causal_conv1d_fn`` (Dao-AILab/causal-conv1d), with the same values.

    Returns
    -------
    y : ndarray, shape (B, D, L)
        In ``x``'s dtype.

    Raises
    ------
    ValueError
        If ``x`` is not 3-D, ``weight`` is not (D, K), ``bias`` is not (D,),
        an input is not finite, or ``activation`` is not one of the above.

    Notes
    -----
    The official ``causal_conv1d_fn`` takes the same ``x`` (B, D, L),
    ``weight`` (D, K), ``bias`` and ``activation``; its sequence indices,
    initial and final states (for packed sequences and chunked prefill) are
    not offered here.  ``fast.causal_conv1d(..., backend="numba")`` is the
    fused compiled version (convolution and SiLU in one pass).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[[1.0, 2.0, 3.0, 4.0]]])  # (B=1, D=1, L=4)
    >>> causal_conv1d(x, np.array([[0.0, 1.0, 10.0]]))  # y_t = x_{t-1} + 10 x_t
    array([[[10., 21., 32., 43.]]])
    >>> causal_conv1d(np.array([[[-2.0, 1.0, 0.0]]]), np.array([[1.0]]), activation="silu")
    array([[[-0.23840584,  0.73105858,  0.        ]]])
    """
    activation = _check_activation(activation)
    x, weight, bias = _check_conv1d(x, weight, bias, check)
    xp = array_module(x, weight, bias)
    n_batch, n_chan, length = x.shape
    K = weight.shape[1]
    wd = _work_dtype(check, x, weight)
    xpad = xp.concatenate([xp.zeros((n_batch, n_chan, K - 1), wd), x.astype(wd, copy=False)],
                          axis=2)  # (B, D, L+K-1)
    y = xp.zeros((n_batch, n_chan, length), wd)  # (B, D, L)
    for k in range(K):
        y += weight[:, k, None] * xpad[:, :, k:k + length]  # tap k sees x[t-(K-1)+k]
    if bias is not None:
        y += bias[:, None]
    if activation is not None:
        y = silu(y, check=False)  # (B, D, L)
    return _out(y, x)


def causal_conv1d_backward(dy, x, weight, bias=None, activation=None, *, check=True):
    """Gradients of :func:`causal_conv1d`.

    With ``activation="silu"`` the convolution's output is recomputed and the
    gradient taken through the SiLU first (:func:`silu_backward`); then, with
    ``g`` that gradient and the padded input ``xp`` (K-1 zeros in front):
    ``dweight[d, k] = sum_{b,t} g[b, d, t] xp[b, d, t + k]``,
    ``dxp[b, d, t + k] += weight[d, k] g[b, d, t]`` (then drop the padding),
    ``dbias = sum_{b,t} g``.  The official package's backward
    (``causal_conv1d_bwd``) returns the same three gradients.

    Returns
    -------
    dx : ndarray, shape (B, D, L)
    dweight : ndarray, shape (D, K)
    dbias : ndarray, shape (D,), or None when ``bias`` is None.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[[1.0, 2.0, 3.0]]])
    >>> dx, dw, db = causal_conv1d_backward(np.ones((1, 1, 3)), x, np.array([[1.0, 1.0]]), np.zeros(1))
    >>> dx, dw, db
    (array([[[2., 2., 1.]]]), array([[3., 6.]]), array([3.]))
    """
    activation = _check_activation(activation)
    x, weight, bias = _check_conv1d(x, weight, bias, check)
    dy = _grad_like(dy, x.shape, "dy", check)
    xp = array_module(dy, x, weight, bias)
    n_batch, n_chan, length = x.shape
    K = weight.shape[1]
    if activation is not None:  # through the SiLU first, at the recomputed convolution output
        x_conv = causal_conv1d(x, weight, bias, check=False).astype(dy.dtype, copy=False)
        dy = silu_backward(dy, x_conv, check=False)  # (B, D, L)
    wd = _work_dtype(check, x, weight, dy)
    xpad = xp.concatenate([xp.zeros((n_batch, n_chan, K - 1), wd), x.astype(wd, copy=False)],
                          axis=2)  # (B, D, L+K-1)
    dxpad = xp.zeros_like(xpad)  # (B, D, L+K-1)
    dweight = xp.zeros((n_chan, K), wd)  # (D, K)
    for k in range(K):
        dweight[:, k] = xp.sum(dy * xpad[:, :, k:k + length], axis=(0, 2))
        dxpad[:, :, k:k + length] += weight[:, k, None] * dy
    dx = dxpad[:, :, K - 1:]  # (B, D, L)
    dbias = None if bias is None else _out(dy.sum(axis=(0, 2)), bias)
    return _out(dx, x), _out(dweight, weight), dbias


# --------------------------------------------------------------------------- norms
def _check_norm(x, weight, bias, with_bias, check=True):
    if not check:
        return x, weight, bias
    x = _real(x, "x")
    if x.ndim < 1:
        raise ValueError(f"Parameter x has shape {x.shape} but should have at least 1 axis")
    n_chan = x.shape[-1]
    if n_chan < 1:
        raise ValueError(f"Parameter x has shape {x.shape}: its last axis (the features "
                         "normalised over) must have length >= 1")
    weight = check_shape(_real(weight, "weight"), "weight", (n_chan,))
    if with_bias and bias is not None:
        bias = check_shape(_real(bias, "bias"), "bias", (n_chan,))
    return x, weight, bias


def rms_norm(x, weight, eps=1e-5, *, check=True):
    """RMSNorm over the last axis: ``y = x / sqrt(mean(x^2) + eps) * weight``.

    The norm of Mamba's residual blocks and of Vim (``mamba_ssm``'s ``RMSNorm``,
    default ``eps=1e-5``); no mean is subtracted and there is no bias.

    Parameters
    ----------
    x : array_like, shape (..., D)
    weight : array_like, shape (D,)
    eps : float
        Added to the mean square before the square root.

    Returns
    -------
    y : ndarray, shape (..., D), in ``x``'s dtype.

    Examples
    --------
    >>> import numpy as np
    >>> rms_norm(np.array([[3.0, 4.0]]), np.ones(2), eps=0.0)  # rms = sqrt(12.5)
    array([[0.84852814, 1.13137085]])
    """
    x, weight, _ = _check_norm(x, weight, None, False, check)
    xp = array_module(x, weight)
    x64 = x.astype(_work_dtype(check, x, weight), copy=False)
    rstd = 1.0 / xp.sqrt(xp.mean(x64 * x64, axis=-1, keepdims=True) + eps)  # (..., 1)
    return _out(x64 * rstd * weight, x)


def rms_norm_backward(dy, x, weight, eps=1e-5, *, check=True):
    """Gradients of :func:`rms_norm`.

    With ``r = (mean(x^2) + eps)^(-1/2)`` and ``g = dy * weight``:
    ``dx = r * (g - x r^2 mean(g x))`` (the second term because r depends on
    every x_i: dr/dx_i = -r^3 x_i / D), ``dweight = sum dy * x * r``.

    Returns
    -------
    dx : ndarray, shape (..., D)
    dweight : ndarray, shape (D,)

    Examples
    --------
    >>> import numpy as np
    >>> dx, dw = rms_norm_backward(np.ones((1, 2)), np.array([[1.0, 1.0]]), np.ones(2), eps=0.0)
    >>> dx, dw  # scaling x does not change y, so dL/dx is orthogonal to x
    (array([[0., 0.]]), array([1., 1.]))
    """
    x, weight, _ = _check_norm(x, weight, None, False, check)
    dy = _grad_like(dy, x.shape, "dy", check)
    xp = array_module(dy, x, weight)
    x64 = x.astype(_work_dtype(check, x, weight), copy=False)
    rstd = 1.0 / xp.sqrt(xp.mean(x64 * x64, axis=-1, keepdims=True) + eps)  # (..., 1)
    g = dy * weight  # (..., D)
    dx = rstd * (g - x64 * rstd**2 * xp.mean(g * x64, axis=-1, keepdims=True))
    dweight = xp.sum((dy * x64 * rstd).reshape(-1, x.shape[-1]), axis=0)  # (D,)
    return _out(dx, x), _out(dweight, weight)


def layer_norm(x, weight, bias=None, eps=1e-5, *, check=True):
    """LayerNorm over the last axis: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    ``var`` is the biased variance (divide by D), as in ``torch.nn.LayerNorm``
    (default ``eps=1e-5``); VMamba's SS2D uses it as ``out_norm``.

    Parameters
    ----------
    x : array_like, shape (..., D)
    weight : array_like, shape (D,)
    bias : array_like, shape (D,), optional
    eps : float

    Returns
    -------
    y : ndarray, shape (..., D), in ``x``'s dtype.

    Examples
    --------
    >>> import numpy as np
    >>> layer_norm(np.array([[1.0, 3.0]]), np.ones(2), np.zeros(2), eps=0.0)
    array([[-1.,  1.]])
    """
    x, weight, bias = _check_norm(x, weight, bias, True, check)
    xp = array_module(x, weight, bias)
    x64 = x.astype(_work_dtype(check, x, weight), copy=False)
    mu = xp.mean(x64, axis=-1, keepdims=True)  # (..., 1)
    xc = x64 - mu  # (..., D)
    rstd = 1.0 / xp.sqrt(xp.mean(xc * xc, axis=-1, keepdims=True) + eps)  # (..., 1)
    y = xc * rstd * weight
    if bias is not None:
        y = y + bias
    return _out(y, x)


def layer_norm_backward(dy, x, weight, bias=None, eps=1e-5, *, check=True):
    """Gradients of :func:`layer_norm`.

    With ``xhat = (x - mean) r`` and ``g = dy * weight``:
    ``dx = r * (g - mean(g) - xhat mean(g xhat))``, ``dweight = sum dy xhat``,
    ``dbias = sum dy``.

    Returns
    -------
    dx : ndarray, shape (..., D)
    dweight : ndarray, shape (D,)
    dbias : ndarray, shape (D,), or None when ``bias`` is None.

    Examples
    --------
    >>> import numpy as np
    >>> dx, dw, db = layer_norm_backward(np.ones((1, 2)), np.array([[1.0, 3.0]]), np.ones(2), np.zeros(2), eps=0.0)
    >>> dx, dw, db  # a constant shift of y's gradient is killed by the centring
    (array([[0., 0.]]), array([-1.,  1.]), array([1., 1.]))
    """
    x, weight, bias = _check_norm(x, weight, bias, True, check)
    dy = _grad_like(dy, x.shape, "dy", check)
    xp = array_module(dy, x, weight, bias)
    x64 = x.astype(_work_dtype(check, x, weight), copy=False)
    mu = xp.mean(x64, axis=-1, keepdims=True)  # (..., 1)
    xc = x64 - mu
    rstd = 1.0 / xp.sqrt(xp.mean(xc * xc, axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = xc * rstd  # (..., D)
    g = dy * weight
    dx = rstd * (g - xp.mean(g, axis=-1, keepdims=True)
                 - xhat * xp.mean(g * xhat, axis=-1, keepdims=True))
    n_chan = x.shape[-1]
    dweight = xp.sum((dy * xhat).reshape(-1, n_chan), axis=0)  # (D,)
    dbias = None if bias is None else _out(xp.sum(dy.reshape(-1, n_chan), axis=0), bias)
    return _out(dx, x), _out(dweight, weight), dbias


# --------------------------------------------------------------------------- depthwise conv2d
def _check_conv2d(x, weight, bias, check=True):
    if not check:
        return x, weight, bias
    x = _real(x, "x", ndim=4)
    weight = _real(weight, "weight", ndim=3)
    n_chan = x.shape[3]
    if weight.shape[0] != n_chan:
        raise ValueError(
            f"Parameter weight has shape {weight.shape} but should be ({n_chan}, kh, kw) "
            f"for x of shape {x.shape} (B, H, W, C); squeeze the official (C, 1, kh, kw) weight"
        )
    if bias is not None:
        bias = check_shape(_real(bias, "bias"), "bias", (n_chan,))
    return x, weight, bias


def _pad2d(x, kh, kw):
    """Zero-pad H and W for a 'same' output: (k-1)//2 before, the rest after (PyTorch)."""
    top, left = (kh - 1) // 2, (kw - 1) // 2
    xp = array_module(x)
    return xp.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))


def depthwise_conv2d(x, weight, bias=None, *, check=True):
    """Depthwise 2-D convolution on channels-last images with 'same' zero padding.

    ``y[b, i, j, c] = bias[c] + sum_{p,q} weight[c, p, q] x[b, i + p - ph, j + q - pw, c]``
    with ``ph = (kh-1)//2``, ``pw = (kw-1)//2`` and zeros outside the image: PyTorch's
    ``nn.Conv2d(C, C, k, groups=C, padding=(k-1)//2)`` (VMamba's 3x3 ``conv2d``) on a
    (B, H, W, C) tensor; for even kernels the extra zero goes after (PyTorch's
    ``padding='same'``).

    Parameters
    ----------
    x : array_like, shape (B, H, W, C)
    weight : array_like, shape (C, kh, kw)
        The official ``conv2d.weight`` (C, 1, kh, kw) with the singleton axis squeezed.
    bias : array_like, shape (C,), optional

    Returns
    -------
    y : ndarray, shape (B, H, W, C), in ``x``'s dtype.

    Raises
    ------
    ValueError
        If ``x`` is not 4-D, ``weight`` is not (C, kh, kw), ``bias`` is not (C,),
        or an input is not finite.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((1, 3, 3, 1)); x[0, 1, 1, 0] = 1.0  # a centred impulse
    >>> w = np.arange(9.0).reshape(1, 3, 3)
    >>> depthwise_conv2d(x, w)[0, :, :, 0]  # the kernel appears flipped (cross-correlation)
    array([[8., 7., 6.],
           [5., 4., 3.],
           [2., 1., 0.]])
    """
    x, weight, bias = _check_conv2d(x, weight, bias, check)
    xp = array_module(x, weight, bias)
    n_batch, height, width, n_chan = x.shape
    _, kh, kw = weight.shape
    wd = _work_dtype(check, x, weight)
    xpad = _pad2d(x.astype(wd, copy=False), kh, kw)  # (B, H+kh-1, W+kw-1, C)
    y = xp.zeros((n_batch, height, width, n_chan), wd)  # (B, H, W, C)
    for p in range(kh):
        for q in range(kw):
            y += weight[:, p, q] * xpad[:, p:p + height, q:q + width, :]
    if bias is not None:
        y += bias
    return _out(y, x)


def depthwise_conv2d_backward(dy, x, weight, bias=None, *, check=True):
    """Gradients of :func:`depthwise_conv2d`.

    ``dweight[c, p, q] = sum_{b,i,j} dy[b, i, j, c] xpad[b, i + p, j + q, c]``;
    ``dxpad[b, i + p, j + q, c] += weight[c, p, q] dy[b, i, j, c]`` then the
    padding is cropped; ``dbias = sum dy``.

    Returns
    -------
    dx : ndarray, shape (B, H, W, C)
    dweight : ndarray, shape (C, kh, kw)
    dbias : ndarray, shape (C,), or None when ``bias`` is None.

    Examples
    --------
    >>> import numpy as np
    >>> dx, dw, db = depthwise_conv2d_backward(np.ones((1, 2, 2, 1)), np.ones((1, 2, 2, 1)),
    ...                                        np.ones((1, 3, 3)), np.zeros(1))
    >>> dw[0]  # how many output pixels each tap saw a real (non-padding) pixel for
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    x, weight, bias = _check_conv2d(x, weight, bias, check)
    dy = _grad_like(dy, x.shape, "dy", check)
    xp = array_module(dy, x, weight, bias)
    n_batch, height, width, n_chan = x.shape
    _, kh, kw = weight.shape
    wd = _work_dtype(check, x, weight, dy)
    xpad = _pad2d(x.astype(wd, copy=False), kh, kw)  # (B, H+kh-1, W+kw-1, C)
    dxpad = xp.zeros_like(xpad)
    dweight = xp.zeros((n_chan, kh, kw), wd)  # (C, kh, kw)
    for p in range(kh):
        for q in range(kw):
            window = xpad[:, p:p + height, q:q + width, :]  # (B, H, W, C)
            dweight[:, p, q] = xp.sum(dy * window, axis=(0, 1, 2))
            dxpad[:, p:p + height, q:q + width, :] += weight[:, p, q] * dy
    top, left = (kh - 1) // 2, (kw - 1) // 2
    dx = dxpad[:, top:top + height, left:left + width, :]  # (B, H, W, C)
    dbias = None if bias is None else _out(dy.sum(axis=(0, 1, 2)), bias)
    return _out(dx, x), _out(dweight, weight), dbias


# --------------------------------------------------------------------------- GELU
def gelu(x, *, check=True):
    """Exact GELU, ``x Φ(x) = x (1 + erf(x / sqrt 2)) / 2`` (PyTorch's default ``nn.GELU``).

    Examples
    --------
    >>> import numpy as np
    >>> gelu(np.array([-1.0, 0.0, 1.0]))
    array([-0.15865525,  0.        ,  0.84134475])
    """
    x, x64, _ = _elementwise_args(x, check=check)
    xp = array_module(x)
    erf = special(xp).erf  # scipy.special.erf, or cupyx.scipy.special.erf on a GPU
    return (0.5 * x64 * (1.0 + erf(x64 / math.sqrt(2.0)))).astype(x.dtype)


def gelu_backward(dy, x, *, check=True):
    """Gradient of :func:`gelu`: ``dy (Φ(x) + x φ(x))`` with φ the standard normal density.

    Examples
    --------
    >>> import numpy as np
    >>> gelu_backward(np.ones(2), np.array([0.0, 10.0]))
    array([0.5, 1. ])
    """
    x, x64, dy = _elementwise_args(x, dy, check)
    xp = array_module(x, dy)
    cdf = 0.5 * (1.0 + special(xp).erf(x64 / math.sqrt(2.0)))
    pdf = xp.exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi)
    return dy * (cdf + x64 * pdf)
