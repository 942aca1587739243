"""The Mamba block's fused pieces on the CPU with Numba: causal conv1d + SiLU, the inner function.

Glossary
--------
======  ================================================================
B       batch size (the *matrix* B is ``Bmat``)
L       sequence length
D       channels of the inner path (``d_inner``); ``xz`` has 2D
K       convolution width (``d_conv``)
N, R    state size, rank of the delta projection (``dt_rank``)
row     one (batch, channel) pair: the unit of parallel work
======  ================================================================

Same signatures and semantics as the reference twins, whose docstrings are
the specification: :func:`ssm_ref.nn.causal_conv1d` (with ``activation``),
:func:`ssm_ref.nn.causal_conv1d_backward`, :func:`ssm_ref.fused.mamba_inner_fn`
and :func:`ssm_ref.fused.mamba_inner_fn_backward` (the official
``causal_conv1d_fn`` of Dao-AILab/causal-conv1d and ``mamba_inner_fn`` of
state-spaces/mamba).  This module says only how they are computed.

How it is computed
------------------
* The convolution and its SiLU are one kernel, parallel over the B·D rows,
  each thread a run of rows taken a block of about 2048 elements at a time
  (``_SILU_BLOCK``): each row writes its output once (bias, then the K taps
  as shifted multiply-adds over the row), then one loop takes the SiLU of
  the block in place, with the vectorized :func:`fast._fastexp.fast_sigmoid`
  (a loop per row cost the 17-step rows of Vim 8x8 a vector loop's set-up
  and a scalar remainder each).  No pre-activation array is made.  The
  input may be any strided view (``xz[:, :D]`` of channels-last tokens, a
  flipped sequence ``xz[:, :, ::-1]``): such a row is copied once into a
  scratch row of its thread, so that the taps read it contiguously; a
  C-contiguous input is read in place.
* Its backward is one kernel too, by the same blocks: the rows'
  pre-activations are recomputed into a scratch block of the thread, turned
  into the gradient g at the pre-activation (through the SiLU) in one loop,
  then each row sums g and g·x for ``dbias`` and ``dweight`` (per row; the
  rows of one channel are summed afterwards) and accumulates
  ``dx[s] = Σ_k weight[k] g[s + K-1-k]`` in the same pass over the taps.
  Nothing but ``dx``, the (B, D, K) partial sums and two blocks per thread
  is allocated.
* Both kernels index with an unsigned offset and mark their arrays
  ``noalias`` (as :mod:`fast.numba_cpu`, whose reasons apply here), so the
  loops over L vectorize.
* The inner function keeps every array channels first, (B, ·, L), as the
  scan wants them: ``x_proj`` is one matrix product per batch element,
  ``x_dbl = W_x @ x`` (B, R + 2N, L), whose slices are delta's low-rank input
  and B, C already in the scan's (B, N, L) layout; ``delta = W_dt @ dt``
  is (B, D, L) directly.  No token-major copy and no transpose is made,
  where the reference goes through (B, L, ·) tokens for its ``linear``
  layers.  The products and their backward are :mod:`fast.numba_projections`'
  (one batch element's products after the other on each core, where that
  pays; NumPy's batched products otherwise).
* VMamba's SS2D has a 3x3 depthwise convolution on channels-last images
  followed by SiLU: :func:`depthwise_conv2d` does both in one kernel, one
  (batch, image row) per job with the loop over channels innermost and
  contiguous; its backward recomputes the pre-activation once into a
  gradient array g and then gathers ``dx`` from g's neighbours (each job
  writes only its own row: no races).  SS2D's input ``xz[..., :D]`` is read
  in place, as ``xz`` and its first channel (:func:`fast._views.in_parent`):
  copying the strided view took about a third of the forward.  Its
  ``out_norm`` and gate are fused in :mod:`fast.numba_norms`, its
  per-direction products in :mod:`fast.numba_projections`.
* Precision: float32 ``xz`` (or ``x``) is computed in float32 (weights cast
  to float32), anything else in float64, as :mod:`fast.numba_cpu`.

The blocks use the inner path of this module when their scan functions come
from :func:`fast.scan_functions` with ``backend="numba"`` (see
:func:`ssm_ref.mamba.inner_path_functions`); its ``inner_forward`` and
``inner_backward`` take and return what :func:`ssm_ref.mamba.inner_forward`
and :func:`ssm_ref.mamba.inner_backward` do, with a cache of their own; the
cache holds the scan's checked arguments and kernel arrays, which its
backward starts from (:func:`fast.numba_cpu.attach_saved_scan`,
:mod:`ssm_ref.kept_scan`).
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange
from numba.extending import overload

from ssm_ref._validation import as_array, check_finite, check_shape
from ssm_ref.fused import INNER_FN_ARGS, check_inner_fn_args
from ssm_ref.kept_scan import scan_backward_kept, scan_keeping
from ssm_ref.nn import _check_activation, _check_conv1d, _check_conv2d
from ssm_ref.selective import _one_module

from . import numba_cpu
from ._fastexp import fast_sigmoid
from ._views import in_parent, writable_in_parent
from .numba_cpu import _FMK, _GAP, _compute_dtype, _launch, _njit_noalias, _threads
from .numba_projections import direction_projections, direction_projections_backward

__all__ = ["causal_conv1d", "causal_conv1d_backward", "mamba_inner_fn",
           "mamba_inner_fn_backward", "inner_forward", "inner_backward", "depthwise_conv2d",
           "depthwise_conv2d_backward", "conv2d_silu_forward", "conv2d_silu_backward"]


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------

#: elements of the block of rows whose SiLU (or its gradient) one loop computes: 16 KB of
#: float64, level-1 resident; rows longer than that are a block of one row
_SILU_BLOCK = 2048


def _block_rows(length):
    """Rows of ``length`` steps per block of :data:`_SILU_BLOCK` elements (at least one)."""
    return max(1, _SILU_BLOCK // length)


def _row_view(x, b, d, scratch):
    """Row (b, d) of the (B, D, L) ``x`` as a contiguous 1-D array, inside Numba code only.

    A C-contiguous ``x`` gives its own row; any other layout (a channel slice
    of ``xz``, channels-last tokens, a flipped sequence) is copied into
    ``scratch`` (L entries or more) and that is given.  Reading the taps from a
    strided row cost every tap a scalar load: copied once, the loops over it
    vectorize (channels-last rows, with the blocks of :func:`_conv_fwd`: the
    forward 1.04-1.96 times as fast, the backward 1.13-3.1 times, the longer
    the rows the more; chapter 11, "Where the rest of a step goes").
    """
    raise NotImplementedError("_row_view runs inside Numba-compiled code only")


@overload(_row_view, jit_options={"fastmath": _FMK, "error_model": "numpy"})
def _row_view_impl(x, b, d, scratch):
    if x.layout == "C":
        return lambda x, b, d, scratch: x[b, d]

    def copy(x, b, d, scratch):
        row = scratch[:x.shape[2]]
        for t in range(x.shape[2]):
            row[t] = x[b, d, t]
        return row
    return copy


def _row_viewed(x, b, d, scratch):
    """The row that :func:`_row_view` gave for the same arguments, without copying it again."""
    raise NotImplementedError("_row_viewed runs inside Numba-compiled code only")


@overload(_row_viewed, jit_options={"fastmath": _FMK, "error_model": "numpy"})
def _row_viewed_impl(x, b, d, scratch):
    if x.layout == "C":
        return lambda x, b, d, scratch: x[b, d]
    return lambda x, b, d, scratch: scratch[:x.shape[2]]


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _conv_fwd(x, weight, bias, silu, out, nchunks, block_rows):
    """``out = act(causal_conv1d(x))``, ``out`` C-contiguous; ``bias`` zeros when there is none.

    Each thread takes a run of rows, ``block_rows`` at a time: row by row, tap
    k adds ``weight[k] x[t - shift]`` (shift = K-1-k) to ``out[t]``; then one
    loop takes the SiLU of the whole block, which ``out`` holds one row after
    the other.  The loop over a row runs over ``x``'s index with an unsigned
    offset, so LLVM sees no negative index to wrap around and vectorizes it
    (as in fast.numba_cpu).  A SiLU loop per row cost Vim 8x8's rows (L = 17)
    a vector loop's set-up and a scalar remainder for every 17 elements: the
    block's loop made the convolution 1.1-1.4 times as fast there.
    """
    nb, nd, nl = x.shape
    K = weight.shape[1]
    nrows = nb * nd
    flat = out.reshape(nrows * nl)
    xs_s = np.empty((nchunks, nl + _GAP), out.dtype)
    for c in prange(nchunks):
        r_end = (c + 1) * nrows // nchunks
        for r0 in range(c * nrows // nchunks, r_end, block_rows):
            r1 = min(r0 + block_rows, r_end)
            for row in range(r0, r1):
                b = row // nd
                d = row - b * nd
                o = flat[row * nl:(row + 1) * nl]
                xs = _row_view(x, b, d, xs_s[c])
                for t in range(nl):
                    o[t] = bias[d]
                for k in range(K):  # tap k sees x[t - (K-1) + k]
                    shift = np.uint64(K - 1 - k)
                    wk = weight[d, k]
                    for t in range(nl - (K - 1 - k)):
                        tt = np.uint64(t)
                        o[tt + shift] += wk * xs[tt]
            if silu:
                block = flat[r0 * nl:r1 * nl]
                for i in range(block.size):
                    v = block[i]
                    block[i] = v * fast_sigmoid(v)


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _conv_bwd(dy, x, weight, bias, silu, dx, c0, dw_rows, db_rows, nchunks, block_rows):
    """Gradients of :func:`_conv_fwd`: ``dx`` whole, ``dweight`` and ``dbias`` per row.

    ``dy`` is C-contiguous (B, D, L).  ``dx`` is a C-contiguous (B, C, L)
    array whose channels ``c0 .. c0 + D`` receive the gradient (the x half of
    ``dxz``): written through a strided view, the loop would not vectorize.
    Each thread takes a run of rows, ``block_rows`` at a time, and a scratch
    block ``g`` of that many rows (allocated here so that the parallel body
    gets it as an argument): first the rows' pre-activations, then the
    gradient at them (through the SiLU) in one loop over the block, then row
    by row the sums for ``dbias`` and ``dweight`` and the taps of ``dx``.
    """
    nb, nd, nl = x.shape
    K = weight.shape[1]
    nrows = nb * nd
    dy_flat = dy.reshape(nrows * nl)
    g_s = np.empty((nchunks, block_rows * nl + _GAP), dx.dtype)
    xs_s = np.empty((nchunks, block_rows * nl + _GAP), dx.dtype)
    for c in prange(nchunks):
        r_end = (c + 1) * nrows // nchunks
        for r0 in range(c * nrows // nchunks, r_end, block_rows):
            r1 = min(r0 + block_rows, r_end)
            g_block = g_s[c, :(r1 - r0) * nl]
            x_block = xs_s[c, :(r1 - r0) * nl]
            dy_block = dy_flat[r0 * nl:r1 * nl]
            if silu:  # recompute the pre-activations, then through the SiLU
                for row in range(r0, r1):
                    b = row // nd
                    d = row - b * nd
                    g = g_block[(row - r0) * nl:(row - r0 + 1) * nl]
                    xr = _row_view(x, b, d, x_block[(row - r0) * nl:])
                    for t in range(nl):
                        g[t] = bias[d]
                    for k in range(K):
                        shift = np.uint64(K - 1 - k)
                        wk = weight[d, k]
                        for t in range(nl - (K - 1 - k)):
                            tt = np.uint64(t)
                            g[tt + shift] += wk * xr[tt]
                for i in range(g_block.size):
                    v = g_block[i]
                    s = fast_sigmoid(v)
                    g_block[i] = dy_block[i] * s * (1 + v * (1 - s))  # silu' = s (1 + v (1 - s))
            else:
                for i in range(g_block.size):
                    g_block[i] = dy_block[i]
            for row in range(r0, r1):
                b = row // nd
                d = row - b * nd
                g = g_block[(row - r0) * nl:(row - r0 + 1) * nl]
                xr = (_row_viewed(x, b, d, x_block[(row - r0) * nl:]) if silu  # seen above
                      else _row_view(x, b, d, x_block[(row - r0) * nl:]))
                acc = g[0] - g[0]  # typed zero
                for t in range(nl):
                    acc += g[t]
                db_rows[b, d] = acc
                dxr = dx[b, c0 + d]
                for t in range(nl):
                    dxr[t] = 0
                for k in range(K):
                    shift = np.uint64(K - 1 - k)
                    wk = weight[d, k]
                    acc = g[0] - g[0]
                    for t in range(nl - (K - 1 - k)):
                        tt = np.uint64(t)
                        gt = g[tt + shift]
                        acc += gt * xr[tt]  # dweight[k] = sum_t g[t] x[t - shift]
                        dxr[tt] += wk * gt  # dx[s] = sum_k weight[k] g[s + shift]
                    dw_rows[b, d, k] = acc


# ---------------------------------------------------------------------------
# the convolution (unchecked and public)
# ---------------------------------------------------------------------------

def _bias_or_zeros(bias, n, real):
    return np.zeros(n, real) if bias is None else np.ascontiguousarray(bias, dtype=real)


def _conv(x, weight, bias, silu):
    """Forward on a ``real`` (float32/64) x of any strides and (D, K) weight, unchecked."""
    real = x.dtype
    out = np.empty(x.shape, real)  # (B, D, L)
    _launch(_conv_fwd, x, np.ascontiguousarray(weight, dtype=real),
            _bias_or_zeros(bias, x.shape[1], real), silu, out, _threads(x.shape[0] * x.shape[1]),
            _block_rows(x.shape[2]))
    return out


def _conv_backward(dy, x, weight, bias, silu, out=None, c0=0):
    """Backward, unchecked: ``(dx, dweight, dbias or None)`` in ``x``'s dtype.

    ``out``: a C-contiguous (B, C, L) array that receives dx in its channels
    ``c0 .. c0 + D`` (``dx`` is then that view).
    """
    real = x.dtype
    nb, nd, nl = x.shape
    if out is None:
        out, c0 = np.empty(x.shape, real), 0  # (B, D, L)
    dw_rows = np.empty((nb, nd, weight.shape[1]), real)  # (B, D, K)
    db_rows = np.empty((nb, nd), real)  # (B, D)
    _launch(_conv_bwd, np.ascontiguousarray(dy, dtype=real), x,
            np.ascontiguousarray(weight, dtype=real), _bias_or_zeros(bias, nd, real), silu, out,
            c0, dw_rows, db_rows, _threads(nb * nd), _block_rows(nl))
    dx = out[:, c0:c0 + nd]  # (B, D, L)
    return dx, dw_rows.sum(axis=0), None if bias is None else db_rows.sum(axis=0)


def _checked_forward(x, weight, bias, activation, check, kernel):
    """A public convolution: ``check`` the arguments, run ``kernel`` in the compute dtype."""
    silu = _check_activation(activation) is not None
    x, weight, bias = check(x, weight, bias)
    real = _compute_dtype(x.dtype)
    return kernel(x.astype(real, copy=False), weight, bias, silu).astype(x.dtype, copy=False)


def _checked_backward(dy, x, weight, bias, activation, check, kernel):
    """A public convolution's backward: checks, ``kernel``, gradients in the arguments' dtypes."""
    silu = _check_activation(activation) is not None
    x, weight, bias = check(x, weight, bias)
    dy = as_array(dy, "dy", allow_complex=False)
    check_shape(dy, "dy", x.shape)
    check_finite(dy, "dy")
    real = _compute_dtype(np.result_type(x.dtype, dy.dtype))
    dx, dw, db = kernel(dy.astype(real, copy=False), x.astype(real, copy=False), weight, bias,
                        silu)
    return (dx.astype(x.dtype, copy=False), dw.astype(weight.dtype, copy=False),
            None if bias is None else db.astype(bias.dtype, copy=False))


def causal_conv1d(x, weight, bias=None, activation=None):
    """Numba version of :func:`ssm_ref.nn.causal_conv1d` (same signature and result).

    One kernel, parallel over the (batch, channel) rows, computes the
    convolution and its SiLU; float32 ``x`` is computed in float32.

    Examples
    --------
    >>> import numpy as np
    >>> from fast.numba_fused import causal_conv1d
    >>> x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    >>> causal_conv1d(x, np.array([[0.0, 1.0, 10.0]]))
    array([[[10., 21., 32., 43.]]])
    """
    return _checked_forward(x, weight, bias, activation, _check_conv1d, _conv)


def causal_conv1d_backward(dy, x, weight, bias=None, activation=None):
    """Numba version of :func:`ssm_ref.nn.causal_conv1d_backward` (same result).

    Returns ``(dx, dweight, dbias)``, each in its argument's dtype (``dbias``
    None without a bias).

    Examples
    --------
    >>> import numpy as np
    >>> from fast.numba_fused import causal_conv1d_backward
    >>> dx, dw, db = causal_conv1d_backward(np.ones((1, 1, 3)), np.array([[[1.0, 2.0, 3.0]]]),
    ...                                     np.array([[1.0, 1.0]]), np.zeros(1))
    >>> dx, dw, db
    (array([[[2., 2., 1.]]]), array([[3., 6.]]), array([3.]))
    """
    return _checked_backward(dy, x, weight, bias, activation, _check_conv1d, _conv_backward)


# ---------------------------------------------------------------------------
# the inner path, channels first
# ---------------------------------------------------------------------------

def _batch_outer(a, b):
    """``sum_b a[b] @ b[b].T`` for a (B, P, L) and b (B, Q, L): (P, Q).

    One BLAS product per batch element into a (B, P, Q) stack, then its sum:
    no copy of the inputs (``tensordot`` transposes both into (P, B·L)
    first; measured 1.6x slower at B, P, Q, L = 64, 192, 40, 256).
    """
    return np.matmul(a, b.transpose(0, 2, 1)).sum(axis=0)


def _path_forward(xz, w, scan_fn, Bgiven=None, Cgiven=None, softplus=True,
                  return_last_state=False):
    """conv + SiLU -> x_proj -> dt_proj -> scan on ``xz`` (B, 2D, L) in its (compute) dtype.

    ``w``: the (D, K) conv weight ``w_conv``, ``b_conv``, ``w_x``, ``w_dt``,
    ``b_dt``, ``A``, ``D`` (those of :func:`ssm_ref.mamba.inner_path_weights`).
    Returns ``(y (B, D, L), cache, last_state or None)``.
    """
    D = xz.shape[1] // 2
    R, N = w["w_dt"].shape[1], w["A"].shape[1]
    x, z = xz[:, :D], xz[:, D:]  # (B, D, L) views
    x_act = _conv(x, w["w_conv"], w["b_conv"], True)  # (B, D, L)
    x_dbl, delta = direction_projections(x_act, w["w_x"], w["w_dt"], R)  # (B, R + 2N, L),
    # (B, D, L): each batch element's x_proj and dt_proj, on all cores
    Bmat = x_dbl[:, R:R + N] if Bgiven is None else Bgiven  # (B, N, L)
    Cmat = x_dbl[:, R + N:] if Cgiven is None else Cgiven  # (B, N, L)
    res, kept = scan_keeping(scan_fn, x_act, delta, w["A"], Bmat, Cmat, D=w["D"], z=z,
                             delta_bias=w["b_dt"], delta_softplus=softplus,
                             return_last_state=return_last_state)
    y, last_state = res if return_last_state else (res, None)  # (B, D, L), (B, D, N)
    cache = {"x": x, "z": z, "x_act": x_act, "x_dbl": x_dbl, "delta": delta,
             "Bmat": Bmat, "Cmat": Cmat, "scan": kept, "fused": True}
    return np.asarray(y), cache, last_state


def _path_backward(dy, c, w, scan_backward_fn, Bgiven=False, Cgiven=False, split=False):
    """Gradients of :func:`_path_forward`: ``(dxz (B, 2D, L), scan grads, weight grads)``;
    with ``split``, ``(dx, dz)`` (B, D, L) each in place of ``dxz``: the scan's ``dz`` as it
    came, not copied into ``dxz``."""
    real = c["x_act"].dtype
    nb, D, nl = c["x_act"].shape
    R = w["w_dt"].shape[1]
    N = w["A"].shape[1]
    s = scan_backward_kept(scan_backward_fn, dy, c["scan"])  # from the forward's kept scan
    g = {}
    zeros = np.zeros((nb, N, nl), real) if Bgiven or Cgiven else None  # (B, N, L)
    dx_act = s["u"]  # (B, D, L): the scan's input, x_proj's input's gradient added below
    g["w_x"], g["w_dt"] = direction_projections_backward(
        s["delta"], zeros if Bgiven else s["B"], zeros if Cgiven else s["C"],  # a given B, C
        c["x_act"], c["x_dbl"][:, :R], w["w_x"], w["w_dt"], dx_act)  # took no part in x_proj
    dxz = None if split else np.empty((nb, 2 * D, nl), real)  # (B, 2D, L)
    dx, g["w_conv"], g["b_conv"] = _conv_backward(dx_act, c["x"], w["w_conv"], w["b_conv"],
                                                  True, out=dxz, c0=0)  # into dxz[:, :D]
    if split:
        return (dx, s["z"]), s, g
    dxz[:, D:] = s["z"]
    return dxz, s, g


#: the Numba scan pair as :func:`mamba_inner_fn_backward` runs it, the backward from the
#: forward's kept scan (:func:`fast.numba_cpu.attach_saved_scan`)
_SAVING_SCAN = numba_cpu.attach_saved_scan(functools.partial(numba_cpu.selective_scan),
                                           functools.partial(numba_cpu.selective_scan_backward))


def inner_forward(xz, w, scan_fn, return_last_state=False):
    """The fused :func:`ssm_ref.mamba.inner_forward` (same arguments and results), unchecked.

    ``xz`` (B, 2D, L) float32 or float64 of any strides; ``w`` from
    :func:`ssm_ref.mamba.inner_path_weights`.  Returns ``(y, cache,
    last_state or None)``, ``y`` in ``xz``'s dtype; the cache is this
    module's (``x``, ``z``, ``x_act``, ``x_dbl``, ``delta``, ``Bmat``,
    ``Cmat``, and ``scan``: the scan as
    :func:`ssm_ref.kept_scan.scan_keeping` kept it) and only
    :func:`inner_backward` reads it.
    """
    return _path_forward(xz, w, scan_fn, return_last_state=return_last_state)


def inner_backward(dy, cache, w, scan_backward_fn, split=False):
    """The fused :func:`ssm_ref.mamba.inner_backward` (same arguments and results), unchecked.

    Returns ``(dxz (B, 2D, L), grads by state-dict name)``, in the cache's dtype;
    with ``split``, ``(dx, dz)`` in place of ``dxz``.
    """
    if not cache.get("fused"):
        raise TypeError("Parameter cache must be the dict from fast.numba_fused.inner_forward "
                        "(the block's forward ran another inner path)")
    real = cache["x_act"].dtype
    dxz, s, g = _path_backward(np.ascontiguousarray(dy, dtype=real), cache, w, scan_backward_fn,
                               split=split)
    grads = {"A_log": s["A"] * w["A"], "D": s["D"], "dt_proj.bias": s["delta_bias"],
             "dt_proj.weight": g["w_dt"], "x_proj.weight": g["w_x"],
             "conv1d.weight": g["w_conv"][:, None, :], "conv1d.bias": g["b_conv"]}
    return dxz, grads


# ---------------------------------------------------------------------------
# the official-signature inner function
# ---------------------------------------------------------------------------

def _inner_fn_setup(args, delta_softplus):
    """Validated arguments, the compute dtype, the path's weights in it, and the sizes."""
    a, sizes = check_inner_fn_args(args, delta_softplus)
    real = _compute_dtype(a["xz"].dtype)

    def cast(v):
        return None if v is None else v.astype(real, copy=False)
    w = {"w_conv": cast(a["conv1d_weight"][:, 0, :]), "b_conv": cast(a["conv1d_bias"]),
         "w_x": cast(a["x_proj_weight"]), "w_dt": cast(a["delta_proj_weight"]),
         "b_dt": cast(a["delta_bias"]), "A": a["A"], "D": cast(a["D"])}
    return a, real, w, sizes


def _out_proj(y, a, real):
    """``out_proj`` on channels-first y (B, D, L): (B, L, d_model)."""
    out = np.matmul(y.transpose(0, 2, 1), a["out_proj_weight"].astype(real, copy=False).T)
    if a["out_proj_bias"] is not None:
        out += a["out_proj_bias"].astype(real, copy=False)
    return out


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                   out_proj_weight, out_proj_bias, A, B=None, C=None, D=None, delta_bias=None,
                   delta_softplus=True):
    """Numba version of :func:`ssm_ref.fused.mamba_inner_fn` (same signature and result).

    The fused causal conv + SiLU kernel, the projections as channels-first
    BLAS products, the Numba selective scan; float32 ``xz`` is computed in
    float32.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import MambaBlock
    >>> from ssm_ref.fused import block_arguments
    >>> from fast.numba_fused import mamba_inner_fn
    >>> block = MambaBlock(d_model=4, d_state=2)
    >>> u = np.random.default_rng(0).standard_normal((2, 5, 4))
    >>> xz = (u @ block.params["in_proj.weight"].T).transpose(0, 2, 1)
    >>> bool(np.allclose(mamba_inner_fn(xz, **block_arguments(block.params)), block(u)))
    True
    """
    a, real, w, _ = _inner_fn_setup(dict(zip(INNER_FN_ARGS, (
        xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
        out_proj_bias, A, B, C, D, delta_bias))), delta_softplus)
    y, _, _ = _path_forward(a["xz"].astype(real, copy=False), w, numba_cpu.selective_scan,
                            a["B"], a["C"], delta_softplus)
    return _out_proj(y, a, real).astype(a["xz"].dtype, copy=False)


def mamba_inner_fn_backward(dout, xz, conv1d_weight, conv1d_bias, x_proj_weight,
                            delta_proj_weight, out_proj_weight, out_proj_bias, A, B=None, C=None,
                            D=None, delta_bias=None, delta_softplus=True):
    """Numba version of :func:`ssm_ref.fused.mamba_inner_fn_backward` (same result).

    Recomputes the forward (fused), then the gradients; returns the dict of
    every argument's gradient by name, each in its argument's dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import MambaBlock
    >>> from ssm_ref.fused import block_arguments
    >>> from fast.numba_fused import mamba_inner_fn_backward
    >>> args = block_arguments(MambaBlock(d_model=4, d_state=2).params)
    >>> g = mamba_inner_fn_backward(np.ones((1, 3, 4)), np.ones((1, 16, 3)), **args)
    >>> g["xz"].shape, g["conv1d_weight"].shape
    ((1, 16, 3), (8, 1, 4))
    """
    a, real, w, sizes = _inner_fn_setup(dict(zip(INNER_FN_ARGS, (
        xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
        out_proj_bias, A, B, C, D, delta_bias))), delta_softplus)
    n_batch, _, length = a["xz"].shape
    dout = as_array(dout, "dout", allow_complex=False, ndim=3)
    check_shape(dout, "dout", (n_batch, length, sizes[4]))
    check_finite(dout, "dout")
    _one_module({"dout": dout, "xz": a["xz"]})
    y, c, _ = _path_forward(a["xz"].astype(real, copy=False), w, _SAVING_SCAN[0],
                            a["B"], a["C"], delta_softplus)
    dout = dout.astype(real, copy=False)  # (B, L, d_model)
    g = {"out_proj_weight": _batch_outer(dout.transpose(0, 2, 1), y),  # (d_model, D)
         "out_proj_bias": None if a["out_proj_bias"] is None else dout.sum(axis=(0, 1))}
    dy = np.matmul(a["out_proj_weight"].astype(real, copy=False).T,
                   dout.transpose(0, 2, 1))  # (B, D, L)
    dxz, s, gw = _path_backward(dy, c, w, _SAVING_SCAN[1], a["B"] is not None,
                                a["C"] is not None)
    g.update({"xz": dxz, "conv1d_weight": gw["w_conv"][:, None, :], "conv1d_bias": gw["b_conv"],
              "x_proj_weight": gw["w_x"], "delta_proj_weight": gw["w_dt"], "A": s["A"],
              "B": s["B"] if a["B"] is not None else None,
              "C": s["C"] if a["C"] is not None else None, "D": s["D"],
              "delta_bias": s["delta_bias"]})
    return {k: None if a[k] is None else np.asarray(g[k]).astype(a[k].dtype, copy=False)
            for k in INNER_FN_ARGS}


# ---------------------------------------------------------------------------
# VMamba's depthwise conv2d + SiLU (channels last)
# ---------------------------------------------------------------------------

@njit(fastmath=_FMK, error_model="numpy", inline="always")
def _conv2d_row_pre(x, c0, weight, bias, b, i, out):
    """The pre-activation of image row ``i`` of batch element ``b``: bias plus the taps.

    ``x`` is C-contiguous (B, H, W, S) and the image is its channels ``c0 ..
    c0 + C`` (SS2D's ``xz[..., :D]`` read in place: a strided view's loop over
    C would not vectorize).  ``weight`` is (kh, kw, C): the loop over C is
    innermost and contiguous in both the image and the weight, so it
    vectorizes; zero padding is the taps skipped at the border.
    """
    H, W = x.shape[1], x.shape[2]
    kh, kw, C = weight.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    for j in range(W):
        for c in range(C):
            out[b, i, j, c] = bias[c]
        for p in range(kh):
            ii = i + p - top
            if ii < 0 or ii >= H:
                continue
            for q in range(kw):
                jj = j + q - left
                if jj < 0 or jj >= W:
                    continue
                xr = x[b, ii, jj, c0:c0 + C]
                for c in range(C):
                    out[b, i, j, c] += weight[p, q, c] * xr[c]


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _conv2d_fwd(x, c0, weight, bias, silu, out):
    """``out = act(depthwise_conv2d(x[..., c0:c0 + C]))``, one (batch, image row) per job."""
    nb, H, W, C = out.shape
    for job in prange(nb * H):
        b = job // H
        i = job - b * H
        _conv2d_row_pre(x, c0, weight, bias, b, i, out)
        if silu:
            for j in range(W):
                for c in range(C):
                    v = out[b, i, j, c]
                    out[b, i, j, c] = v * fast_sigmoid(v)


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _conv2d_grad_pre(dy, dy_cf, x, c0, weight, bias, g):
    """g = dy * silu'(pre) with the pre-activation recomputed, per (batch, image row).

    ``dy`` is C-contiguous, (B, H, W, C), or with ``dy_cf`` channels first, (B, C,
    H, W): SS2D's gradient comes back from the cross-merge that way.  Read in place
    (C numbers H·W apart for each pixel, which LLVM gathers) the kernel took as long
    as on a channels-last ``dy``, 1.2-1.3 ms at VMamba 32x32's size (float64, two
    threads, Xeon), and the transposing copy it replaces 0.5-0.7 ms more.
    """
    nb, H, W, C = g.shape
    for job in prange(nb * H):
        b = job // H
        i = job - b * H
        _conv2d_row_pre(x, c0, weight, bias, b, i, g)
        for j in range(W):
            for c in range(C):
                v = g[b, i, j, c]
                s = fast_sigmoid(v)
                d = dy[b, c, i, j] if dy_cf else dy[b, i, j, c]
                g[b, i, j, c] = d * s * (1 + v * (1 - s))


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _conv2d_bwd(g, x, c0, weight, dx, dx0, dw_rows, db_rows):
    """dx, and dweight / dbias per (batch, image row), from g at the pre-activation.

    ``x`` and ``c0`` as in :func:`_conv2d_row_pre`, and so ``dx`` and ``dx0``: the
    gradient goes to channels ``dx0 .. dx0 + C`` of the C-contiguous ``dx``.
    ``dx[b, i, j] = sum_{p,q} weight[p, q] g[b, i - p + top, j - q + left]`` (a
    gather, so each job writes only its own row of dx).
    """
    nb, H, W, C = g.shape
    kh, kw = weight.shape[0], weight.shape[1]
    top, left = (kh - 1) // 2, (kw - 1) // 2
    for job in prange(nb * H):
        b = job // H
        i = job - b * H
        for c in range(C):
            db_rows[job, c] = 0
        for p in range(kh):
            for q in range(kw):
                for c in range(C):
                    dw_rows[job, p, q, c] = 0
        for j in range(W):
            dxr = dx[b, i, j, dx0:dx0 + C]
            for c in range(C):
                db_rows[job, c] += g[b, i, j, c]
                dxr[c] = 0
            for p in range(kh):
                ii = i + p - top  # the input row tap p reads for output row i ...
                io = i - p + top  # ... and the output row that reads input row i with tap p
                for q in range(kw):
                    jj = j + q - left
                    if 0 <= ii < H and 0 <= jj < W:
                        xr = x[b, ii, jj, c0:c0 + C]
                        for c in range(C):
                            dw_rows[job, p, q, c] += g[b, i, j, c] * xr[c]
                    jo = j - q + left
                    if 0 <= io < H and 0 <= jo < W:
                        for c in range(C):
                            dxr[c] += weight[p, q, c] * g[b, io, jo, c]


def _conv2d(x, weight, bias, silu):
    """Forward on a ``real`` (float32/64) x (B, H, W, C) and (C, kh, kw) weight, unchecked."""
    real = x.dtype
    out = np.empty(x.shape, real)  # (B, H, W, C)
    _launch(_conv2d_fwd, *in_parent(x, 3), np.ascontiguousarray(weight.transpose(1, 2, 0),
            dtype=real), _bias_or_zeros(bias, x.shape[3], real), silu, out)
    return out


def _conv2d_backward(dy, x, weight, bias, silu, dx=None):
    """Backward, unchecked: ``(dx, dweight (C, kh, kw), dbias or None)`` in ``x``'s dtype,
    ``dx`` written into the given array (checked: see :func:`conv2d_silu_backward`)."""
    real = x.dtype
    nb, H, _, C = x.shape
    x_c0 = in_parent(x, 3)
    dx = np.empty(x.shape, real) if dx is None else dx
    dx_c0 = writable_in_parent(dx, "dx", x.shape, real, 3)
    w_t = np.ascontiguousarray(weight.transpose(1, 2, 0), dtype=real)  # (kh, kw, C)
    if silu:
        g = np.empty(x.shape, real)  # (B, H, W, C): the gradient at the pre-activation
        dy_cf = dy.dtype == real and dy.transpose(0, 3, 1, 2).flags.c_contiguous
        _launch(_conv2d_grad_pre, dy.transpose(0, 3, 1, 2) if dy_cf
                else np.ascontiguousarray(dy, dtype=real), dy_cf, *x_c0, w_t,
                _bias_or_zeros(bias, C, real), g)
    else:
        g = np.ascontiguousarray(dy, dtype=real)
    dw_rows = np.empty((nb * H,) + w_t.shape, real)  # (B·H, kh, kw, C)
    db_rows = np.empty((nb * H, C), real)
    _launch(_conv2d_bwd, g, *x_c0, w_t, *dx_c0, dw_rows, db_rows)
    dw = dw_rows.sum(axis=0).transpose(2, 0, 1)  # (C, kh, kw)
    return dx, dw, None if bias is None else db_rows.sum(axis=0)


def depthwise_conv2d(x, weight, bias=None, activation=None):
    """Numba version of :func:`ssm_ref.nn.depthwise_conv2d` with an optional SiLU (one kernel).

    ``activation`` None or ``"silu"`` (VMamba's SS2D applies SiLU right after
    its 3x3 depthwise convolution); float32 ``x`` is computed in float32.

    Examples
    --------
    >>> import numpy as np
    >>> from fast.numba_fused import depthwise_conv2d
    >>> x = np.zeros((1, 3, 3, 1)); x[0, 1, 1, 0] = 1.0
    >>> depthwise_conv2d(x, np.arange(9.0).reshape(1, 3, 3))[0, :, :, 0]
    array([[8., 7., 6.],
           [5., 4., 3.],
           [2., 1., 0.]])
    """
    return _checked_forward(x, weight, bias, activation, _check_conv2d, _conv2d)


def depthwise_conv2d_backward(dy, x, weight, bias=None, activation=None):
    """Numba version of :func:`ssm_ref.nn.depthwise_conv2d_backward`, SiLU optional.

    Returns ``(dx, dweight, dbias)``, each in its argument's dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from fast.numba_fused import depthwise_conv2d_backward
    >>> dx, dw, db = depthwise_conv2d_backward(np.ones((1, 2, 2, 1)), np.ones((1, 2, 2, 1)),
    ...                                        np.ones((1, 3, 3)), np.zeros(1))
    >>> dw[0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    return _checked_backward(dy, x, weight, bias, activation, _check_conv2d,
                             _conv2d_backward)


def conv2d_silu_forward(x, weight, bias):
    """SS2D's conv + SiLU on the fused path, unchecked: ``silu(depthwise_conv2d(x))``."""
    return _conv2d(x, weight.astype(x.dtype, copy=False), bias, True)


def conv2d_silu_backward(dy, x, weight, bias, dx=None):
    """Gradients of :func:`conv2d_silu_forward`, unchecked: ``(dx, dweight, dbias or None)``.

    ``dy`` is read in place when it is channels first (the transpose of a
    C-contiguous (B, C, H, W) array in ``x``'s dtype), else copied channels last.
    ``dx``, when given, is where the gradient of ``x`` is written: an array of
    ``x``'s shape and dtype, C-contiguous or a channel slice of a C-contiguous
    array (the x half of the input projection's gradient); ``ValueError`` for
    any other.
    """
    return _conv2d_backward(dy, x, weight.astype(x.dtype, copy=False), bias, True, dx)
