"""LayerNorm and RMSNorm on the CPU with Numba, VMamba's ``out_norm`` fused with its gate, and
PlainMamba's gate alone.

Glossary
--------
======  ================================================================
C       features normalised over (the last axis of ``x``)
row     one token: the C features of one position, normalised together
mu, r   a row's mean (0 for RMSNorm) and ``1 / sqrt(var + eps)``
xhat    ``(x - mu) r``, the normalised row before ``weight`` and ``bias``
B, D, T batch, channels and tokens of SS2D's channels-first output (B, D, T)
======  ================================================================

Same signatures and results as the reference twins, whose docstrings are the
specification: :func:`ssm_ref.nn.layer_norm`, :func:`ssm_ref.nn.layer_norm_backward`,
:func:`ssm_ref.nn.rms_norm` and :func:`ssm_ref.nn.rms_norm_backward`.  The fused
:func:`norm_gate_forward` is ``layer_norm(y) * silu(z)`` (VMamba's ``out_norm``
and the gate after it) and :func:`norm_gate_backward` its gradients;
:func:`gate_forward` and :func:`gate_backward` are PlainMamba's ``y * silu(z)``
without the norm, twins of :func:`ssm_ref.vision.plainmamba.gate_forward` and
:func:`ssm_ref.vision.plainmamba.gate_backward`.

How it is computed
------------------
* One row at a time, parallel over the rows: the mean, then the variance of
  the centred row (two passes over C numbers in the level-1 cache, the
  stable form), then the output.  The backward recomputes ``mu`` and ``r``
  (nothing is kept from the forward, as in the reference) and needs two more
  passes: the sums ``sum g`` and ``sum g xhat`` (``g = dy weight``), then
  ``dx = r (g - mean g - xhat mean(g xhat))``.  ``dweight`` and ``dbias`` are
  summed in one partial row per thread and added up afterwards.
* NumPy's version makes a temporary of the whole input for each operation
  (about ten in the backward) and, on SS2D's ``y`` (a transposed view of the
  channels-first scan output), reads every feature of a token with a stride
  of T numbers: in VMamba 32x32's float64 training step on the Zen 3 an
  out_norm backward took 24 ms (chapter 11, "The norms").
* SS2D's ``y`` comes out of the scan channels first, (B, D, T).  The fused
  kernels take that array as it is: each job copies a tile of ``_TILE``
  tokens into a (tokens, D) scratch block of its thread (one transpose in
  the level-1 cache), normalises those rows and gates them with ``z`` as the
  row kernels do, and writes ``y * silu(z)`` channels last, the layout the
  output projection reads.  The backward writes ``dy`` back channels first,
  the layout the scan's backward takes, and ``dz`` into a view the caller
  gives (the z half of the input projection's gradient), so neither
  ``y_norm`` nor the gate is ever stored.  PlainMamba's gate runs the same
  kernels with the norm switched off: in its 32x32 float64 training step NumPy's
  ``silu(z)`` and ``silu_backward`` (a stable sigmoid, then several
  temporaries) took 5 and 10 ms a layer (Xeon, two threads).
* Precision: float32 input is computed in float32 (the statistics too, by
  the stable two-pass form), anything else in float64, as
  :mod:`fast.numba_cpu`; results in ``x``'s dtype, weight gradients in the
  weight's.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ssm_ref._validation import check_shape
from ssm_ref.nn import _check_norm, _grad_like
from ssm_ref.vision.plainmamba import _check_gate

from ._fastexp import fast_sigmoid
from ._views import as_rows
from .numba_cpu import _FMK, _GAP, _compute_dtype, _launch, _njit_noalias, _threads
from .numba_fused import _bias_or_zeros

__all__ = ["layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward",
           "norm_gate_forward", "norm_gate_backward", "gate_forward", "gate_backward"]

#: tokens per job of the fused kernels: a (tokens, D) tile of 32 x 48 float64 is 12 KB
_TILE = 32


# ---------------------------------------------------------------------------
# one row
# ---------------------------------------------------------------------------

@njit(fastmath=_FMK, error_model="numpy", inline="always")
def _row_stats(xr, centre, inv_n, eps, one):
    """``(mu, r)`` of one row: its mean (0 unless ``centre``) and ``1 / sqrt(var + eps)``,
    the variance taken of the centred row.  ``inv_n``, ``eps`` and ``one`` are in the
    row's dtype, so that float32 rows stay float32."""
    mu = xr[0] - xr[0]
    if centre:
        for c in range(xr.shape[0]):
            mu += xr[c]
        mu = mu * inv_n
    v = mu - mu
    for c in range(xr.shape[0]):
        d = xr[c] - mu
        v += d * d
    return mu, one / np.sqrt(v * inv_n + eps)


@njit(fastmath=_FMK, error_model="numpy", inline="always")
def _row_backward(xr, g, weight, centre, inv_n, eps, one, dxr, dw, db):
    """dx of one row into ``dxr`` from its upstream gradient ``g``; adds the row's
    ``dy xhat`` to ``dw`` and ``dy`` to ``db``."""
    mu, r = _row_stats(xr, centre, inv_n, eps, one)
    sg = mu - mu
    sgx = mu - mu
    for c in range(xr.shape[0]):
        xh = (xr[c] - mu) * r
        gw = g[c] * weight[c]
        sg += gw
        sgx += gw * xh
        dw[c] += g[c] * xh
        db[c] += g[c]
    mg = mu - mu  # RMSNorm: no mean subtracted, so no mean of g either
    if centre:
        mg = sg * inv_n
    mgx = sgx * inv_n
    for c in range(xr.shape[0]):
        xh = (xr[c] - mu) * r
        dxr[c] = r * (g[c] * weight[c] - mg - xh * mgx)


# ---------------------------------------------------------------------------
# kernels on (rows, C)
# ---------------------------------------------------------------------------

@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _norm_fwd(x, weight, bias, centre, inv_n, eps, one, out):
    """``out = (x - mu) r weight + bias`` row by row; x and out C-contiguous (rows, C)."""
    for i in prange(x.shape[0]):
        xr = x[i]
        o = out[i]
        mu, r = _row_stats(xr, centre, inv_n, eps, one)
        for c in range(xr.shape[0]):
            o[c] = (xr[c] - mu) * r * weight[c] + bias[c]


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _norm_bwd(dy, x, weight, centre, inv_n, eps, one, dx, dw_part, db_part):
    """dx row by row; ``dweight`` and ``dbias`` summed per thread into the zeroed
    ``dw_part`` and ``db_part`` (threads, C).  All arrays C-contiguous."""
    nchunks, nrows = dw_part.shape[0], x.shape[0]
    for ch in prange(nchunks):
        for i in range(ch * nrows // nchunks, (ch + 1) * nrows // nchunks):
            _row_backward(x[i], dy[i], weight, centre, inv_n, eps, one, dx[i], dw_part[ch],
                          db_part[ch])


# ---------------------------------------------------------------------------
# SS2D's out_norm and gate, fused: y channels first (B, D, T), z and the output channels last
# ---------------------------------------------------------------------------

@njit(fastmath=_FMK, error_model="numpy", inline="always")
def _tile_rows(y, job, tile):
    """``(b, t0, t1)`` of job ``job`` (batch b, tokens t0 .. t1, ``_TILE`` of them or the
    last few), with those tokens of the (B, D, T) ``y`` copied into ``tile[:t1 - t0]``
    as rows (tokens, D): the transpose of one tile, read along T, in the level-1 cache."""
    nt = y.shape[2]
    ntiles = (nt + _TILE - 1) // _TILE
    b = job // ntiles
    t0 = (job - b * ntiles) * _TILE
    t1 = min(t0 + _TILE, nt)
    for d in range(y.shape[1]):
        yd = y[b, d]
        for t in range(t0, t1):
            tile[t - t0, d] = yd[t]
    return b, t0, t1


@njit(fastmath=_FMK, error_model="numpy", inline="always")
def _copy_row(src, dst):
    """``dst[:] = src``: a row of ``z`` (or of ``dz``) between the caller's array, whose rows
    may have any stride (a channel slice of the tokens), and a contiguous scratch row.  On
    rows of unknown stride the gate's loop (a sigmoid per element) ran scalar: the kernels
    took 1.6-2.8 times as long as with the row copied first (VMamba 32x32's size, Zen 3)."""
    for d in range(dst.shape[0]):
        dst[d] = src[d]


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _norm_gate_fwd(y, z, normalise, weight, bias, inv_n, eps, one, out, nchunks):
    """``out[b, t] = layer_norm(y[b, :, t]) * silu(z[b, t])``, or without ``normalise``
    ``y[b, :, t] * silu(z[b, t])`` (PlainMamba's gate; ``weight`` and ``bias`` unread); y
    (B, D, T) C-contiguous, z (B, T, D) of any row stride, out (B, T, D) C-contiguous."""
    nb, nd, nt = y.shape
    ntiles = (nt + _TILE - 1) // _TILE
    jobs = nb * ntiles
    tiles = np.empty((nchunks, _TILE + 1, nd + _GAP), y.dtype)  # y's rows, then z's row
    for ch in prange(nchunks):
        tile, zr = tiles[ch, :_TILE], tiles[ch, _TILE, :nd]
        for job in range(ch * jobs // nchunks, (ch + 1) * jobs // nchunks):
            b, t0, t1 = _tile_rows(y, job, tile)
            for t in range(t0, t1):
                xr = tile[t - t0, :nd]
                _copy_row(z[b, t], zr)
                o = out[b, t]
                if normalise:
                    mu, r = _row_stats(xr, True, inv_n, eps, one)
                    for d in range(nd):
                        zz = zr[d]
                        o[d] = ((xr[d] - mu) * r * weight[d] + bias[d]) * zz * fast_sigmoid(zz)
                else:
                    for d in range(nd):
                        zz = zr[d]
                        o[d] = xr[d] * zz * fast_sigmoid(zz)


@_njit_noalias(parallel=True, fastmath=_FMK, error_model="numpy", cache=True)
def _norm_gate_bwd(dout, y, z, normalise, weight, bias, inv_n, eps, one, dy, dz, dw_part,
                   db_part):
    """Gradients of :func:`_norm_gate_fwd`: ``dy`` (B, D, T) C-contiguous, ``dz`` (B, T, D)
    of any row stride; with ``normalise``, ``dweight`` and ``dbias`` per thread into the
    zeroed (threads, D) partial rows (untouched without).  The normalised row and the
    sigmoid are recomputed, never stored."""
    nb, nd, nt = y.shape
    nchunks = dw_part.shape[0]
    ntiles = (nt + _TILE - 1) // _TILE
    jobs = nb * ntiles
    tiles = np.empty((nchunks, 2, _TILE + 3, nd + _GAP), y.dtype)  # y's rows, dy's rows, 3 rows
    for ch in prange(nchunks):
        tile, dtile = tiles[ch, 0, :_TILE], tiles[ch, 1, :_TILE]
        zr, grow, dzr = tiles[ch, 0, _TILE, :nd], tiles[ch, 0, _TILE + 1, :nd], \
            tiles[ch, 0, _TILE + 2, :nd]
        for job in range(ch * jobs // nchunks, (ch + 1) * jobs // nchunks):
            b, t0, t1 = _tile_rows(y, job, tile)
            for t in range(t0, t1):
                xr, dxr = tile[t - t0, :nd], dtile[t - t0, :nd]
                gr = dout[b, t]
                _copy_row(z[b, t], zr)
                if normalise:
                    mu, r = _row_stats(xr, True, inv_n, eps, one)
                    for d in range(nd):  # through the gate: g = dout silu(z), dz = dout y silu'(z)
                        zz = zr[d]
                        s = fast_sigmoid(zz)
                        yn = (xr[d] - mu) * r * weight[d] + bias[d]
                        grow[d] = gr[d] * zz * s
                        dzr[d] = gr[d] * yn * s * (1 + zz * (1 - s))
                    _row_backward(xr, grow, weight, True, inv_n, eps, one, dxr, dw_part[ch],
                                  db_part[ch])
                else:  # the gate alone: its g is dy
                    for d in range(nd):
                        zz = zr[d]
                        s = fast_sigmoid(zz)
                        dxr[d] = gr[d] * zz * s
                        dzr[d] = gr[d] * xr[d] * s * (1 + zz * (1 - s))
                _copy_row(dzr, dz[b, t])
            for d in range(nd):  # the tile's dx back to channels first
                dyd = dy[b, d]
                for t in range(t0, t1):
                    dyd[t] = dtile[t - t0, d]


# ---------------------------------------------------------------------------
# the public functions
# ---------------------------------------------------------------------------

def _consts(real, n_chan, eps):
    """``(1 / C, eps, 1)`` in the compute dtype, the scalars the kernels take."""
    return real.type(1.0 / n_chan), real.type(eps), real.type(1.0)


def _norm(x, weight, bias, eps, centre, check):
    x, weight, bias = _check_norm(x, weight, bias, centre, check)
    real = _compute_dtype(x.dtype)
    n_chan = x.shape[-1]
    rows = as_rows(x, real)
    out = np.empty(rows.shape, real)  # (rows, C)
    _launch(_norm_fwd, rows, np.ascontiguousarray(weight, dtype=real),
            _bias_or_zeros(bias, n_chan, real), centre,
            *_consts(real, n_chan, eps), out)
    return out.reshape(x.shape).astype(x.dtype, copy=False)


def _norm_backward(dy, x, weight, bias, eps, centre, check):
    x, weight, bias = _check_norm(x, weight, bias, centre, check)
    dy = _grad_like(dy, x.shape, "dy", check)
    real = _compute_dtype(np.result_type(x.dtype, dy.dtype))
    n_chan = x.shape[-1]
    rows = as_rows(x, real)
    dx = np.empty(rows.shape, real)  # (rows, C)
    nchunks = _threads(rows.shape[0])
    dw_part = np.zeros((nchunks, n_chan), real)  # (threads, C)
    db_part = np.zeros((nchunks, n_chan), real)
    _launch(_norm_bwd, as_rows(dy, real), rows, np.ascontiguousarray(weight, dtype=real),
            centre, *_consts(real, n_chan, eps), dx, dw_part, db_part)
    dweight = dw_part.sum(axis=0).astype(weight.dtype, copy=False)
    dbias = None if bias is None else db_part.sum(axis=0).astype(bias.dtype, copy=False)
    return dx.reshape(x.shape).astype(x.dtype, copy=False), dweight, dbias


def layer_norm(x, weight, bias=None, eps=1e-5, *, check=True):
    """Numba version of :func:`ssm_ref.nn.layer_norm` (same signature and result).

    Parallel over the rows (tokens); float32 ``x`` is computed in float32.
    """
    return _norm(x, weight, bias, eps, True, check)


def layer_norm_backward(dy, x, weight, bias=None, eps=1e-5, *, check=True):
    """Numba version of :func:`ssm_ref.nn.layer_norm_backward`: ``(dx, dweight, dbias)``."""
    return _norm_backward(dy, x, weight, bias, eps, True, check)


def rms_norm(x, weight, eps=1e-5, *, check=True):
    """Numba version of :func:`ssm_ref.nn.rms_norm` (same signature and result)."""
    return _norm(x, weight, None, eps, False, check)


def rms_norm_backward(dy, x, weight, eps=1e-5, *, check=True):
    """Numba version of :func:`ssm_ref.nn.rms_norm_backward`: ``(dx, dweight)``."""
    dx, dweight, _ = _norm_backward(dy, x, weight, None, eps, False, check)
    return dx, dweight


def _tile_threads(nb, nt):
    """Threads for the fused kernels: one job per batch element and tile of ``_TILE`` tokens."""
    return _threads(nb * -(-nt // _TILE))


def _check_gate_args(y_cf, z, dout=None, **norm):
    """Shapes of the fused gates (the reference gate's check), with the norm's ``weight`` and
    ``bias`` where given (values are not checked: the blocks call them)."""
    _check_gate(y_cf, z, dout)
    for name, arr in norm.items():
        check_shape(arr, name, (y_cf.shape[1],))


def _dz_out(dz, nb, nt, nd, real):
    """The gates' ``dz``: a new (B, T, D) array, or the caller's, checked (any row stride,
    contiguous rows, the compute dtype: the kernels write into it)."""
    if dz is None:
        return np.empty((nb, nt, nd), real)  # (B, T, D)
    if dz.shape != (nb, nt, nd) or dz.dtype != real or dz.strides[-1] != real.itemsize:
        raise ValueError(f"Parameter dz has shape {dz.shape}, dtype {dz.dtype} and strides "
                         f"{dz.strides} but should be {(nb, nt, nd)} in {real} with "
                         "contiguous rows")
    return dz


def _norm_weights(weight, bias, nd, real):
    """The norm's weight and bias as the kernels take them; for the gate alone, which does
    not read them, ones and zeros of the right size."""
    if weight is None:
        return np.ones(nd, real), np.zeros(nd, real)
    return np.ascontiguousarray(weight, dtype=real), np.ascontiguousarray(bias, dtype=real)


def _gated(y_cf, z, weight, bias, eps):
    """The fused gates' forward after their checks: ``weight`` None for the gate alone."""
    real = _compute_dtype(np.result_type(y_cf.dtype, z.dtype))
    nb, nd, nt = y_cf.shape
    out = np.empty((nb, nt, nd), real)  # (B, T, D)
    _launch(_norm_gate_fwd, np.ascontiguousarray(y_cf, dtype=real), z.astype(real, copy=False),
            weight is not None, *_norm_weights(weight, bias, nd, real), *_consts(real, nd, eps),
            out, _tile_threads(nb, nt))
    return out


def _gated_backward(dout, y_cf, z, weight, bias, eps, dz):
    """The fused gates' backward after their checks: ``(dy_cf, dz, dweight, dbias)``, the
    last two None for the gate alone (``weight`` None)."""
    real = _compute_dtype(np.result_type(y_cf.dtype, z.dtype))
    nb, nd, nt = y_cf.shape
    dz = _dz_out(dz, nb, nt, nd, real)
    dy = np.empty(y_cf.shape, real)  # (B, D, T)
    normalise = weight is not None
    nchunks = _tile_threads(nb, nt)
    dw_part = np.zeros((nchunks, nd), real)  # (threads, D)
    db_part = np.zeros((nchunks, nd), real)
    _launch(_norm_gate_bwd, np.ascontiguousarray(dout, dtype=real),
            np.ascontiguousarray(y_cf, dtype=real), z.astype(real, copy=False), normalise,
            *_norm_weights(weight, bias, nd, real), *_consts(real, nd, eps), dy, dz, dw_part,
            db_part)
    if not normalise:
        return dy, dz, None, None
    return dy, dz, dw_part.sum(axis=0), db_part.sum(axis=0)


def norm_gate_forward(y_cf, z, weight, bias, eps=1e-5):
    """``layer_norm(y) * silu(z)`` for SS2D's channels-first ``y_cf`` (B, D, T).

    ``z`` is (B, T, D) (a channel slice of the tokens is read in place); the
    result is (B, T, D), C-contiguous, computed and returned in float32 when ``y_cf`` and
    ``z`` are both float32, else in float64.
    The reference twin: ``ssm_ref.nn.layer_norm(y_cf.transpose(0, 2, 1), weight,
    bias, eps) * ssm_ref.nn.silu(z)``.
    """
    _check_gate_args(y_cf, z, weight=weight, bias=bias)
    return _gated(y_cf, z, weight, bias, eps)


def norm_gate_backward(dout, y_cf, z, weight, bias, eps=1e-5, dz=None):
    """Gradients of :func:`norm_gate_forward`: ``(dy_cf, dz, dweight, dbias)``.

    ``dy_cf`` is (B, D, T), C-contiguous, as ``y_cf``; ``dz`` (B, T, D) is
    written into the given array (any row stride, e.g. the z half of the input
    projection's gradient) or a new one.  In the forward's dtype; the reference
    twin: ``ssm_ref.nn.silu_backward`` and ``ssm_ref.nn.layer_norm_backward``.
    """
    _check_gate_args(y_cf, z, dout, weight=weight, bias=bias)
    return _gated_backward(dout, y_cf, z, weight, bias, eps, dz)


def gate_forward(y_cf, z):
    """PlainMamba's gate ``y * silu(z)`` for the channels-first ``y_cf`` (B, D, T).

    ``z`` is (B, T, D) (a channel slice of the tokens is read in place); the
    result (B, T, D) is C-contiguous, in float32 when ``y_cf`` and ``z`` are
    both float32, else in float64.  The reference twin:
    :func:`ssm_ref.vision.plainmamba.gate_forward`.
    """
    _check_gate_args(y_cf, z)
    return _gated(y_cf, z, None, None, 0.0)


def gate_backward(dout, y_cf, z, dz=None):
    """Gradients of :func:`gate_forward`: ``(dy_cf, dz)``.

    ``dy_cf`` (B, D, T) is C-contiguous, the layout the cross-scan reads; ``dz``
    (B, T, D) is written into the given array (rows of any stride but
    contiguous, e.g. the z half of the input projection's gradient, in the
    compute dtype) or a new one.  The reference twin:
    :func:`ssm_ref.vision.plainmamba.gate_backward`.
    """
    _check_gate_args(y_cf, z, dout)
    return _gated_backward(dout, y_cf, z, None, None, 0.0, dz)[:2]
