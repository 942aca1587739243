"""Regularising the hidden state: state dropout in the selective scan, weight normalisation.

The survey *Mamba in Vision* (Rahman et al. 2024, arXiv:2410.03105, §6.1)
proposes, against the domain bias that the hidden state accumulates, "dropout
layers or weight normalisation applied directly to the hidden state".  This
module makes both concrete, as library features with hand-derived backward
passes (book chapter "The survey's open problems, as experiments", label
``open-problems``).

Glossary
--------
======  ================================================================
B       batch size (the *matrix* B is the argument ``B``)
L       sequence length
D       channels; the skip vector is the argument ``D``
N       state size per channel
h       hidden state, (B, D, N); ``h_t`` after step t
m       state-dropout mask, (B, D, L, N) or broadcastable to it: 0 where a
        state entry is dropped, ``1 / (1 - p)`` where it is kept
v, g    weight normalisation: direction ``v`` (out, ...) and length ``g`` (out,)
======  ================================================================

State dropout (equation ``eq-state-dropout``)::

    s_t = Abar_t * h_{t-1} + Bbar_t * u_t        the selective scan's update
    h_t = m_t * s_t                              the mask, *inside* the recurrence
    y_t = <C_t, h_t>,  then  y = (y + D u) * silu(z)

A dropped entry forgets its memory at that step: the noise travels forward
through the recurrence, which is what distinguishes dropout *on the hidden
state* from dropout on the block's input or output.  With independent masks
per step and the inverted scaling ``1 / (1 - p)``, ``E[h_t] = Abar_t E[h_{t-1}]
+ Bbar_t u_t`` given the input: the expected state is the undropped one, so the
evaluation-time scan is the plain selective scan (identity at eval time).  A
mask held constant over time would not have this property: the kept entries
would be scaled by ``(1 / (1 - p))^k`` after k steps.

Weight normalisation (Salimans and Kingma 2016, arXiv:1602.07868), equation
``eq-weight-norm``: a weight ``W`` (out, in) is written ``W_i = g_i v_i / ||v_i||``
(row i, one length per output), so that training moves the length ``g`` and
the direction ``v`` separately.  Applied here to the projections that make the
state's parameters: ``x_proj`` (its output is Δ's low-rank input, B_t and C_t)
and ``dt_proj`` (Δ), under PyTorch's names ``x_proj.weight_g`` / ``x_proj.weight_v``.

:class:`Regularized` switches both on for any tiny classifier of
:mod:`ssm_ref.vision.models` through a :class:`RegularizationConfig`.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import numpy as np

from ._validation import as_array, check_bool, check_finite, check_shape
from ._xp import array_module
from .module import Module, rng_from
from .nn import silu, silu_backward, softplus_backward
from .scan_args import check_scan_args
from .selective import selective_scan, selective_scan_backward

__all__ = [
    "selective_scan_state_dropout",
    "selective_scan_state_dropout_backward",
    "state_dropout_mask",
    "StateDropoutScan",
    "weight_norm",
    "weight_norm_backward",
    "RegularizationConfig",
    "Regularized",
]


# ---------------------------------------------------------------------------
# state dropout: the scan and its backward
# ---------------------------------------------------------------------------

def _check_mask(mask, s):
    """The mask as float64 (B|1, D|1, L|1, N|1), real, finite, >= 0; None stays None."""
    if mask is None:
        return None
    m = as_array(mask, "mask", allow_complex=False, ndim=4)
    full = (s.batch, s.dim, s.length, s.dstate)
    if any(a not in (1, b) for a, b in zip(m.shape, full)):
        raise ValueError(f"Parameter mask has shape {m.shape} but should be {full} "
                         "(B, D, L, N), or broadcastable to it (an axis of size 1)")
    check_finite(m, "mask")
    if array_module(m) is np and np.any(m < 0):
        raise ValueError("Parameter mask has negative entries; a dropout mask holds 0 "
                         "(dropped) and 1 / (1 - p) (kept)")
    return m.astype(np.float64)


def _states(s, m):
    """Forward with the mask, keeping every state: (hs, h_prev, Abar), each (B, D, L, N)."""
    xp = s.xp
    delta, Am = s.step, s.A  # (B, D, L), (D, N)
    Bt = xp.moveaxis(s.form_B.per_channel(s.B, s.dim), 3, 2)  # (B|1, D|1, L|1, N)
    Abar = xp.exp(delta[:, :, :, None] * Am[None, :, None, :])  # (B, D, L, N)
    Bbar_u = (delta * s.u)[:, :, :, None] * Bt  # (B, D, L, N)
    h = s.initial_state()  # (B, D, N)
    hs = xp.empty((s.batch, s.dim, s.length, s.dstate), dtype=s.work_dtype)  # (B, D, L, N)
    h_prev = xp.empty_like(hs)  # (B, D, L, N)
    # [book:state-dropout]
    for t in range(s.length):
        h_prev[:, :, t] = h
        h = Abar[:, :, t] * h + Bbar_u[:, :, t]  # (B, D, N): s_t, the plain update
        if m is not None:
            h = m[:, :, min(t, m.shape[2] - 1)] * h  # (B, D, N): h_t = m_t * s_t
        hs[:, :, t] = h
    # [/book:state-dropout]
    return hs, h_prev, Abar, Bt


def _readout(s, hs):
    """y before the gate (v = y + D u) and after it, from the states (B, D, L, N)."""
    xp = s.xp
    Ct = xp.moveaxis(s.form_C.per_channel(s.C, s.dim), 3, 2)  # (B|1, D|1, L|1, N)
    y = xp.sum(Ct * hs, axis=-1)  # (B, D, L)
    if s.is_complex:
        y = 2.0 * y.real  # conjugate pairs: one of each pair is stored
    v = y if s.D is None else y + s.D[None, :, None] * s.u  # (B, D, L)
    return v, (v if s.z is None else v * silu(s.z)), Ct


def selective_scan_state_dropout(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                 delta_softplus=False, return_last_state=False, h0=None,
                                 mask=None):
    """The selective scan with a dropout mask on the hidden state (``eq-state-dropout``).

    Parameters
    ----------
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, h0
        As :func:`ssm_ref.selective_scan` (same checks, same messages).
    mask : array_like, shape (B, D, L, N) or broadcastable, optional
        ``h_t = mask_t * (Abar_t h_{t-1} + Bbar_t u_t)``; real, finite, >= 0
        (:func:`state_dropout_mask` draws one).  None: no mask, the plain scan.

    Returns
    -------
    y : ndarray, shape (B, D, L), in ``u``'s dtype
    last_state : ndarray, shape (B, D, N), in ``A``'s dtype
        Only with ``return_last_state`` (the masked h_{L-1}).

    Raises
    ------
    ValueError, TypeError
        As :func:`ssm_ref.selective_scan`; a mask of another shape, not finite,
        or with negative entries.

    Examples
    --------
    A mask of ones is the plain scan; dropping the state at step 1 restarts it:

    >>> import numpy as np
    >>> from ssm_ref import selective_scan
    >>> u, dt = np.ones((1, 1, 3)), 0.5 * np.ones((1, 1, 3))
    >>> args = (u, dt, [[-1.0]], [[1.0]], [[1.0]])
    >>> bool(np.allclose(selective_scan_state_dropout(*args, mask=np.ones((1, 1, 3, 1))),
    ...                  selective_scan(*args)))
    True
    >>> selective_scan_state_dropout(*args, mask=np.array([1.0, 0.0, 1.0]).reshape(1, 1, 3, 1))
    array([[[0.5, 0. , 0.5]]])
    """
    s = check_scan_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0)
    check_bool(return_last_state, "return_last_state")
    m = _check_mask(mask, s)
    hs, _, _, _ = _states(s, m)  # (B, D, L, N)
    _, y, _ = _readout(s, hs)  # (B, D, L)
    y = y.astype(s.out_dtype)
    if not return_last_state:
        return y
    return y, hs[:, :, -1].astype(s.state_dtype)  # (B, D, N)


def selective_scan_state_dropout_backward(dout, u, delta, A, B, C, D=None, z=None,
                                          delta_bias=None, delta_softplus=False, h0=None,
                                          dlast_state=None, mask=None):
    """Gradients of :func:`selective_scan_state_dropout` (a reverse scan through the mask).

    Same arguments and return value as :func:`ssm_ref.selective_scan_backward`
    (a dict with the nine keys ``u, delta, A, B, C, D, z, delta_bias, h0``),
    plus the ``mask`` of the forward call (not differentiated: it is noise).

    Notes
    -----
    With ``g_t`` the gradient with respect to the masked state ``h_t`` and
    ``q_t = m_t g_t`` the gradient with respect to the unmasked update ``s_t``
    (``s = 2`` for complex A, 1 otherwise)::

        g_{L-1} = dlast_state + s dy_{L-1} conj(C_{L-1})
        g_{t-1} = conj(Abar_t) q_t + s dy_{t-1} conj(C_{t-1}),     dh0 = conj(Abar_0) q_0

    and every parameter gradient of :func:`ssm_ref.selective_scan_backward`
    with ``q_t`` in place of ``g_t`` (``dC_t`` reads the masked ``h_t``).  A
    mask of ones gives exactly the plain backward (tested).

    Examples
    --------
    >>> import numpy as np
    >>> m = np.array([1.0, 0.0, 1.0]).reshape(1, 1, 3, 1)
    >>> g = selective_scan_state_dropout_backward(np.ones((1, 1, 3)), np.ones((1, 1, 3)),
    ...         0.5 * np.ones((1, 1, 3)), [[-1.0]], [[1.0]], [[1.0]], mask=m)
    >>> g["u"]                     # the dropped step passes nothing on
    array([[[0.5, 0. , 0.5]]])
    """
    s = check_scan_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0)
    xp, work = s.xp, s.work_dtype
    batch, dim, length, dstate = s.batch, s.dim, s.length, s.dstate
    dout = check_shape(as_array(dout, "dout", allow_complex=False, ndim=3), "dout",
                       (batch, dim, length))
    check_finite(dout, "dout")
    dout = dout.astype(np.float64)  # (B, D, L)
    if dlast_state is not None:
        dlast_state = as_array(dlast_state, "dlast_state", allow_complex=s.is_complex, ndim=3)
        check_shape(dlast_state, "dlast_state", (batch, dim, dstate))
        check_finite(dlast_state, "dlast_state")
        dlast_state = dlast_state.astype(work)  # (B, D, N)
    m = _check_mask(mask, s)
    if m is None:
        m = xp.ones((1, 1, 1, 1))
    m = xp.broadcast_to(m, (batch, dim, length, dstate))  # (B, D, L, N)

    u, delta, Am = s.u, s.step, s.A
    scale = 2.0 if s.is_complex else 1.0
    hs, h_prev, Abar, Bt = _states(s, m)  # (B, D, L, N) each
    v, _, Ct = _readout(s, hs)  # (B, D, L)

    grads = dict.fromkeys(["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"])
    if s.z is not None:  # y = v * silu(z)
        grads["z"] = silu_backward(dout * v, s.z)  # (B, D, L)
        dy = dout * silu(s.z)  # (B, D, L)
    else:
        dy = dout
    du = xp.zeros_like(u)  # (B, D, L)
    if s.D is not None:  # v = y + D u
        grads["D"] = xp.sum(dy * u, axis=(0, 2))  # (D,)
        du += dy * s.D[None, :, None]

    dC = scale * dy[..., None] * xp.conj(hs)  # (B, D, L, N): y_t = s Re<C_t, h_t>
    dh_out = scale * dy[..., None] * xp.conj(Ct)  # (B, D, L, N)

    # reverse scan: g_t = dLoss/dh_t, q_t = m_t g_t = dLoss/ds_t
    qs = xp.empty((batch, dim, length, dstate), dtype=work)  # (B, D, L, N)
    g = xp.zeros((batch, dim, dstate), work) if dlast_state is None else dlast_state.copy()
    # [book:state-dropout-backward]
    for t in range(length - 1, -1, -1):
        g = g + dh_out[:, :, t]  # (B, D, N): the readout y_t = <C_t, h_t> adds its share
        q = m[:, :, t] * g  # (B, D, N): through h_t = m_t s_t
        qs[:, :, t] = q
        g = xp.conj(Abar[:, :, t]) * q  # carried to h_{t-1}
    # [/book:state-dropout-backward]
    if s.h0 is not None:
        grads["h0"] = g  # (B, D, N)

    # s_t = Abar_t h_{t-1} + delta_t u_t B_t
    g_dA = xp.conj(Abar * h_prev) * qs  # (B, D, L, N): w.r.t. delta_t * A
    grads["A"] = xp.sum(delta[..., None] * g_dA, axis=(0, 2))  # (D, N)
    g_BB = xp.sum(xp.conj(Bt) * qs, axis=-1).real  # (B, D, L)
    ddelta = xp.sum(xp.conj(Am)[None, :, None, :] * g_dA, axis=-1).real + u * g_BB
    du += delta * g_BB
    dB = (delta * u)[..., None] * qs  # (B, D, L, N)
    if s.delta_softplus:  # delta = softplus(delta + delta_bias)
        raw = s.delta if s.delta_bias is None else s.delta + s.delta_bias[None, :, None]
        ddelta = softplus_backward(ddelta, raw)  # (B, D, L)
    grads["u"], grads["delta"] = du, ddelta
    if s.delta_bias is not None:
        grads["delta_bias"] = xp.sum(ddelta, axis=(0, 2))  # (D,)
    grads["B"] = s.form_B.reduce(xp.moveaxis(dB, 2, 3), s.groups("B"))
    grads["C"] = s.form_C.reduce(xp.moveaxis(dC, 2, 3), s.groups("C"))
    for name, grad in grads.items():  # each argument's own dtype; real ones get the real part
        if grad is not None:
            target = s.dtypes[name]
            grads[name] = (grad if target.kind == "c" else grad.real).astype(target)
    return grads


def state_dropout_mask(shape, p, rng):
    """An inverted-dropout mask: 0 with probability ``p``, else ``1 / (1 - p)``.

    Parameters
    ----------
    shape : tuple of int
        Usually (B, D, L, N): an independent draw for every state entry at
        every step (see the module docstring for why not one mask per sequence).
    p : float in [0, 1)
        Drop probability.
    rng : numpy.random.Generator or int

    Returns
    -------
    mask : ndarray of float64, shape ``shape``

    Examples
    --------
    >>> m = state_dropout_mask((2, 3, 4, 5), 0.5, 0)
    >>> sorted(set(m.ravel().tolist()))
    [0.0, 2.0]
    """
    p = _check_p(p)
    rng = rng_from(rng)
    keep = rng.random(shape) >= p  # (B, D, L, N)
    return keep / (1.0 - p)


def _check_p(p):
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
        raise ValueError(f"Parameter p = {p!r} must be a probability in [0, 1)")
    return float(p)


class StateDropoutScan:
    """A scan backend with state dropout in training and the plain scan at evaluation.

    Pass ``sd.scan`` and ``sd.scan_backward`` to ``model.set_backend`` (or use
    :class:`Regularized`, which does it).  While ``training`` is True every
    forward call draws a fresh mask (:func:`state_dropout_mask`) and keeps it
    for the backward call that receives the same ``delta`` array (the models
    pass their cached arrays back unchanged); while False, or with ``p = 0``,
    the calls go to ``base_scan`` / ``base_backward`` untouched.

    Parameters
    ----------
    p : float in [0, 1)
        Drop probability of each state entry at each step.
    seed : int or numpy.random.Generator, default 0
        The mask stream (runs are reproducible).
    base_scan, base_backward : callable, optional
        The scan used when no mask is drawn (default: the reference; a fast
        backend of :mod:`fast` works).

    Examples
    --------
    >>> import numpy as np
    >>> sd = StateDropoutScan(0.5, seed=0)
    >>> u, dt = np.ones((1, 2, 4)), 0.5 * np.ones((1, 2, 4))
    >>> A, Bm = -np.ones((2, 3)), np.ones((2, 3))
    >>> y_train = sd.scan(u, dt, A, Bm, Bm)
    >>> sd.training = False
    >>> bool(np.allclose(sd.scan(u, dt, A, Bm, Bm), selective_scan(u, dt, A, Bm, Bm)))
    True
    """

    def __init__(self, p, seed=0, base_scan=None, base_backward=None):
        self.p = _check_p(p)
        self.rng = rng_from(seed)
        self.base_scan = selective_scan if base_scan is None else base_scan
        self.base_backward = selective_scan_backward if base_backward is None else base_backward
        for name in ("base_scan", "base_backward"):
            if not callable(getattr(self, name)):
                raise TypeError(f"Parameter {name} = {getattr(self, name)!r} is not callable")
        self.training = True
        self._masks = []  # (delta, mask) of the forward calls whose backward is pending

    def clear(self):
        """Forget the masks of forward calls whose backward never came."""
        self._masks = []

    def _active(self):
        return self.training and self.p > 0.0

    def scan(self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
             return_last_state=False, h0=None):
        """Signature of :func:`ssm_ref.selective_scan`; masked while ``training``."""
        kw = {"D": D, "z": z, "delta_bias": delta_bias, "delta_softplus": delta_softplus,
              "return_last_state": return_last_state}
        if h0 is not None:
            kw["h0"] = h0
        if not self._active():
            return self.base_scan(u, delta, A, B, C, **kw)
        Bsz, Dch, L = np.shape(delta)
        mask = state_dropout_mask((Bsz, Dch, L, np.shape(A)[1]), self.p, self.rng)
        self._masks.append((delta, mask))
        return selective_scan_state_dropout(u, delta, A, B, C, mask=mask, **kw)

    def scan_backward(self, dout, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                      delta_softplus=False, h0=None, dlast_state=None):
        """Signature of :func:`ssm_ref.selective_scan_backward`, through the forward's mask."""
        kw = {"D": D, "z": z, "delta_bias": delta_bias, "delta_softplus": delta_softplus}
        if h0 is not None:
            kw["h0"] = h0
        if dlast_state is not None:
            kw["dlast_state"] = dlast_state
        if not self._active():
            return self.base_backward(dout, u, delta, A, B, C, **kw)
        for i, (d, mask) in enumerate(self._masks):
            if d is delta:
                del self._masks[i]
                return selective_scan_state_dropout_backward(dout, u, delta, A, B, C,
                                                             mask=mask, **kw)
        raise RuntimeError("StateDropoutScan.scan_backward: no mask was drawn for this delta; "
                           "the backward must receive the delta array its forward call got "
                           "(or set training = False)")


# ---------------------------------------------------------------------------
# weight normalisation
# ---------------------------------------------------------------------------

def _row_norms(v):
    return np.sqrt(np.sum(v * v, axis=-1))  # (...,): one norm per row (last axis)


def weight_norm(v, g):
    """``W = g * v / ||v||`` row by row (``eq-weight-norm``), the rows along the last axis.

    For a linear weight (out, in) this is PyTorch's ``weight_norm`` (dim 0):
    one length per output.  A stacked weight (K, out, in), as VMamba keeps
    its four directions' ``x_proj_weight``, gets one length per direction and
    output.

    Parameters
    ----------
    v : array_like, shape (..., in)
        The direction; each row ``v[..., :]`` is normalised.
    g : array_like, shape (...)
        The length of each row of ``W`` (``v.shape[:-1]``).

    Returns
    -------
    W : ndarray of float64, shape of ``v``

    Raises
    ------
    ValueError
        ``g`` not ``v.shape[:-1]``, non-finite values, or a row of ``v`` equal to zero.

    Examples
    --------
    >>> import numpy as np
    >>> weight_norm(np.array([[3.0, 4.0], [0.0, 2.0]]), np.array([10.0, 1.0]))
    array([[6., 8.],
           [0., 1.]])
    """
    v = as_array(v, "v", allow_complex=False)
    if v.ndim < 2:
        raise ValueError(f"Parameter v has shape {v.shape} but should be (..., in), 2-D or more")
    g = as_array(g, "g", allow_complex=False, ndim=v.ndim - 1)
    check_shape(g, "g", v.shape[:-1])
    check_finite(v, "v")
    check_finite(g, "g")
    n = _row_norms(v.astype(np.float64))
    if np.any(n == 0):
        raise ValueError(f"Parameter v has zero rows at {np.argwhere(n == 0).tolist()}; "
                         "weight normalisation divides by each row's norm")
    return (g.astype(np.float64) / n)[..., None] * v  # (..., in)


def weight_norm_backward(dW, v, g):
    """Gradients ``(dv, dg)`` of :func:`weight_norm` from ``dW`` (shape of ``v``).

    With ``n_i = ||v_i||`` and ``vhat_i = v_i / n_i`` for each row i::

        dg_i = <dW_i, vhat_i>,     dv_i = (g_i / n_i) (dW_i - dg_i vhat_i)

    so ``dv_i`` is orthogonal to ``v_i``: a gradient step on ``v`` turns the
    direction and leaves the length to ``g``.

    Examples
    --------
    >>> import numpy as np
    >>> dv, dg = weight_norm_backward(np.array([[1.0, 0.0]]), np.array([[3.0, 4.0]]),
    ...                               np.array([10.0]))
    >>> dg, dv
    (array([0.6]), array([[ 1.28, -0.96]]))
    """
    v = as_array(v, "v", allow_complex=False).astype(np.float64)
    g = as_array(g, "g", allow_complex=False).astype(np.float64)
    dW = as_array(dW, "dW", allow_complex=False)
    check_shape(dW, "dW", v.shape)
    check_shape(g, "g", v.shape[:-1])
    check_finite(dW, "dW")
    # [book:weight-norm-backward]
    n = _row_norms(v)  # (...,)
    vhat = v / n[..., None]  # (..., in)
    dg = np.sum(dW * vhat, axis=-1)  # (...,)
    dv = (g / n)[..., None] * (dW - dg[..., None] * vhat)  # (..., in)
    # [/book:weight-norm-backward]
    return dv, dg


# ---------------------------------------------------------------------------
# a classifier with both switched on by a config
# ---------------------------------------------------------------------------

#: The weight-normalised parameters of the option ``weight_norm="state"``: the
#: projections whose outputs are the state's Δ, B and C (Mamba's and Vim's
#: names, and VMamba's stacked per-direction ones).
STATE_PROJECTIONS = ("x_proj.weight", "dt_proj.weight", "x_proj_weight", "dt_projs_weight")


@dataclass(frozen=True)
class RegularizationConfig:
    """What :class:`Regularized` switches on.

    Attributes
    ----------
    state_dropout : float in [0, 1)
        Drop probability of each hidden-state entry at each scan step in
        training (0: off).
    weight_norm : str or tuple of str
        Parameters to weight-normalise, by the end of their state-dict names:
        ``"state"`` for those of :data:`STATE_PROJECTIONS` the model has
        (``x_proj.weight``, ``dt_proj.weight`` and Vim's backward-path twins;
        VMamba's ``x_proj_weight``, ``dt_projs_weight``), a tuple of name
        endings (each must match), or ``()`` (off).  Rows along the last axis
        (:func:`weight_norm`).
    seed : int
        Seed of the dropout masks.
    """

    state_dropout: float = 0.0
    weight_norm: object = ()
    seed: int = 0

    def __post_init__(self):
        _check_p(self.state_dropout)
        wn = self.weight_norm
        if wn != "state":
            if isinstance(wn, str) or not all(isinstance(k, str) and k for k in wn):
                raise ValueError(f"Parameter weight_norm = {wn!r} must be 'state' or a tuple "
                                 "of parameter-name endings such as ('x_proj.weight',)")
            object.__setattr__(self, "weight_norm", tuple(wn))

    @property
    def weight_norm_endings(self):
        """The name endings to weight-normalise (``"state"`` resolved)."""
        return STATE_PROJECTIONS if self.weight_norm == "state" else self.weight_norm
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise TypeError(f"Parameter seed = {self.seed!r} must be an int")

    def to_dict(self):
        return dataclasses.asdict(self)


def _b_twin(ending):
    """Vim's backward path names ``x_proj.weight`` as ``x_proj_b.weight``."""
    head, _, tail = ending.rpartition(".")
    return f"{head}_b.{tail}" if head else ending


class Regularized(Module):
    """A tiny classifier with state dropout and weight normalisation, set by a config.

    The wrapped ``model`` keeps computing; this module owns the trainable
    parameters: every parameter of ``model`` under its own name, except that
    each weight-normalised ``NAME.weight`` becomes ``NAME.weight_v`` (shape of
    the weight) and ``NAME.weight_g`` (its rows), as PyTorch's ``weight_norm``
    names them.  Before every forward the weights are written into ``model``
    (``W = g v / ||v||``) and after its backward their gradients are turned
    into those of ``v`` and ``g`` (:func:`weight_norm_backward`).

    State dropout is active only in training: in a forward that returns a
    cache (what :func:`ssm_ref.train.train` calls for a step) while
    :attr:`training` is True.  ``forward(x)`` without a cache (evaluation),
    or any forward after :meth:`eval`, is the plain model: identity at eval time.

    Parameters
    ----------
    model : Classifier
        A tiny classifier of :mod:`ssm_ref.vision.models`.
    config : RegularizationConfig, optional
        Built from ``**fields`` when omitted.
    **fields
        ``state_dropout``, ``weight_norm``, ``seed``.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref.vision import build_model
    >>> reg = Regularized(build_model("vim", embed_dim=8, d_state=4, depth=1),
    ...                   state_dropout=0.1, weight_norm="state")
    >>> [k for k in reg.params if "x_proj" in k]
    ['layers.0.mixer.x_proj.weight_v', 'layers.0.mixer.x_proj.weight_g', \
'layers.0.mixer.x_proj_b.weight_v', 'layers.0.mixer.x_proj_b.weight_g']
    >>> x = np.zeros((2, 8, 8, 1))
    >>> bool(np.allclose(reg(x), reg.model(x)))   # evaluation: the plain model
    True
    """

    def __init__(self, model, config=None, **fields):
        super().__init__()
        if not isinstance(model, Module) or not hasattr(model, "no_weight_decay"):
            raise TypeError(f"Parameter model is a {type(model).__name__}, not a tiny classifier")
        if config is None:
            config = RegularizationConfig(**fields)
        elif not isinstance(config, RegularizationConfig):
            raise TypeError(f"Parameter config is a {type(config).__name__}, "
                            "not a RegularizationConfig")
        elif fields:
            config = dataclasses.replace(config, **fields)
        self.model = model
        self.regularization = config
        wanted = config.weight_norm_endings
        endings = wanted + tuple(_b_twin(e) for e in wanted)
        self.normed = []  # inner names of the weight-normalised parameters
        for name, w in model.named_parameters():
            if any(name == e or name.endswith("." + e) for e in endings):
                if not name.endswith("weight"):
                    raise ValueError(f"Parameter weight_norm names {name!r}, which is not a "
                                     "weight")
                self.normed.append(name)
                w64 = w.astype(np.float64)
                n = _row_norms(w64)
                self.add_param(name + "_v", w.copy())
                self.add_param(name + "_g", n.astype(w.dtype))  # (...,): W unchanged at the start
            else:
                self.add_param(name, w)  # the same array: in-place updates reach the model
        missing = [e for e in wanted if not any(k == e or k.endswith("." + e) or
                                                 k.endswith("." + _b_twin(e)) for k in self.normed)]
        if (missing and config.weight_norm != "state") or (wanted and not self.normed):
            raise ValueError(f"Parameter weight_norm = {config.weight_norm!r}: the model has no "
                             f"parameter ending in {missing}")
        self.dropout = StateDropoutScan(config.state_dropout, seed=config.seed,
                                        base_scan=model.scan_fn,
                                        base_backward=model.scan_backward_fn)
        model.set_backend(self.dropout.scan, self.dropout.scan_backward)
        self.training = True

    # -------------------------------------------------------------- the wrapped model's interface
    @property
    def config(self):
        """The wrapped model's configuration (n_classes, sizes...)."""
        return self.model.config

    def __repr__(self):
        return f"Regularized({self.model!r}, {self.regularization})"

    def train(self):
        """State dropout on in forward passes that return a cache (the default)."""
        self.training = True
        return self

    def eval(self):
        """State dropout off everywhere (attacks and analyses that need a cache)."""
        self.training = False
        return self

    def set_backend(self, scan_fn=None, scan_backward_fn=None, state_update_fn=None):
        """The scan used without a mask (evaluation, ``p = 0``); the masked one is the reference."""
        self.model.set_backend(scan_fn, scan_backward_fn, state_update_fn)
        self.dropout.base_scan = self.model.scan_fn
        self.dropout.base_backward = self.model.scan_backward_fn
        self.model.set_backend(self.dropout.scan, self.dropout.scan_backward, state_update_fn)
        return self

    def _sync(self):
        """Write the current parameters into the wrapped model (W from v, g)."""
        inner = self.model.params
        for name in self.model.params:
            if name in self.normed:
                w = weight_norm(self._params[name + "_v"], self._params[name + "_g"])
                inner[name] = w.astype(inner[name].dtype)
            elif inner[name] is not self._params[name]:
                inner[name] = self._params[name]

    def forward(self, x, return_cache=False):
        """As the wrapped model's ``forward``; state dropout on in training with a cache."""
        self._sync()
        self.dropout.clear()
        self.dropout.training = bool(return_cache) and self.training
        return self.model.forward(x, return_cache=return_cache)

    def forward_features(self, x, return_cache=False):
        self._sync()
        self.dropout.clear()
        self.dropout.training = False
        return self.model.forward_features(x, return_cache=return_cache)

    def _own_grads(self, grads):
        out = {}
        for name, d in grads.items():
            if name in self.normed:
                dv, dg = weight_norm_backward(d, self._params[name + "_v"],
                                              self._params[name + "_g"])
                out[name + "_v"] = dv.astype(self._params[name + "_v"].dtype)
                out[name + "_g"] = dg.astype(self._params[name + "_g"].dtype)
            else:
                out[name] = d
        return {k: out[k] for k in self._params}

    def backward(self, dlogits, cache, return_input_grad=False):
        """As the wrapped model's ``backward``, with the gradients of ``v`` and ``g``."""
        res = self.model.backward(dlogits, cache, return_input_grad=return_input_grad)
        if return_input_grad:
            dx, grads = res
            return dx, self._own_grads(grads)
        return self._own_grads(res)

    def backward_features(self, dfeat, cache):
        dx, grads = self.model.backward_features(dfeat, cache)
        return dx, self._own_grads(grads)

    def no_weight_decay(self):
        """The wrapped model's set, and every ``weight_g`` (1-D, as timm's rule)."""
        inner = self.model.no_weight_decay()
        return {k for k in self._params
                if k in inner or k.endswith("weight_g")}

    def to(self, xp):
        """Move the parameters (and the wrapped model) to ``xp``; the masked scan is NumPy only."""
        if xp is not np and self.regularization.state_dropout > 0:
            raise TypeError("Regularized with state_dropout > 0 runs on NumPy only "
                            "(the masked scan is the reference)")
        super().to(xp)
        self.model.to(xp)
        return self
