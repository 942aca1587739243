"""The selective state-space model (S6) of Mamba: scan, decoding step, backward.

Glossary
--------
======  ================================================================
B       batch size (the *matrix* B is written ``Bmat`` where both meet)
L       sequence length
D       channels (the *skip vector* D is written ``Dvec`` where both meet)
N       state size per channel
G       number of groups sharing one input-dependent B (or C)
delta   step size Δ, one per (batch, channel, time): shape (B, D, L)
A       (D, N) diagonal state matrices, one diagonal per channel
B, C    input / output projections: constant (D, N), variable (B, N, L),
        or grouped (B, G, N, L); channel d reads group d // (D // G)
D       (D,) skip connection, ``y += D * u``
z       (B, D, L) gate, ``y *= silu(z)``
h       (B, D, N) hidden state
======  ================================================================

The functions mirror the official Mamba package (state-spaces/mamba):
:func:`selective_scan` has the signature and semantics of
``mamba_ssm.ops.selective_scan_interface.selective_scan_ref`` (plus an initial
state ``h0``), :func:`selective_state_update` those of
``mamba_ssm.ops.triton.selective_state_update.selective_state_update_ref``,
and :func:`selective_scan_backward` is the hand-derived gradient of the scan.

Semantics, in this order (book equations ``eq-selective-delta``,
``eq-selective-disc``, ``eq-selective-recurrence``, ``eq-selective-output``)::

    delta <- delta + delta_bias                      (if delta_bias is given)
    delta <- softplus(delta)                         (if delta_softplus; linear above 20)
    Abar_t = exp(delta_t * A)                        zero-order hold for A
    Bbar_t = delta_t * B_t                           Euler for B (Mamba's choice)
    h_t    = Abar_t * h_{t-1} + Bbar_t * u_t         h_{-1} = h0 (zeros by default)
    y_t    = <C_t, h_t>                              2 Re<C_t, h_t> for complex A
    y      = (y + D * u) * silu(z)

Mamba discretizes A with the exact zero-order hold but B with the simpler
Euler rule ``Bbar = delta * B``; the exact ZOH would be
``(exp(delta A) - 1) / A * B``.  The two agree to first order in delta.

All arithmetic is done in float64 (complex128 for complex A); the output is
cast back to the dtype of ``u``.

Every function runs on the array module of its inputs (NumPy, or CuPy on a
GPU, see :mod:`ssm_ref._xp`): ``xp = array_module(u, ...)`` and all arrays are
made with ``xp``.  All array arguments must then live on that one module, and
the value checks (finite, ``Re(A) <= 0``, ``delta >= 0``) run only on NumPy
inputs: on a device they would make the GPU wait and copy a flag to the host.
Complex A works on both (CuPy has complex128).
"""
from __future__ import annotations

import numpy as np

from ._validation import as_array, check_finite, check_shape
from ._xp import array_module
from .nn import silu, silu_backward, softplus, softplus_backward

__all__ = ["selective_scan", "selective_state_update", "selective_scan_backward"]


# ---------------------------------------------------------------------------
# elementwise functions: one source of truth in ssm_ref.nn (threshold 20 for
# softplus, as torch.nn.functional.softplus), each next to its derivative there
# ---------------------------------------------------------------------------

def _softplus_grad(x):
    """d softplus / dx = sigmoid(x), and exactly 1 in the linear region x > 20."""
    return softplus_backward(array_module(x).ones_like(x), x)


def _silu_grad(x):
    """d silu / dx = sigmoid(x) * (1 + x * (1 - sigmoid(x)))."""
    return silu_backward(array_module(x).ones_like(x), x)


# ---------------------------------------------------------------------------
# validation shared by the scan, its backward and hidden attention
# ---------------------------------------------------------------------------

def _bc_form(X, name, batch, dim, length, dstate):
    """Return the form of B or C: ``"constant"``, ``"variable"`` or ``"grouped"``."""
    if X.ndim == 2:
        check_shape(X, name, (dim, dstate))
        return "constant"
    if X.ndim == 3:
        if X.shape == (batch, dstate, 2 * length) and X.dtype.kind == "f":
            raise ValueError(
                f"Parameter {name} has shape {X.shape} but should be "
                f"({batch}, {dstate}, {length}); it looks like the official "
                "real/imaginary interleaved layout of mamba_ssm for complex A: "
                "pass a genuinely complex array instead "
                "(X[..., 0::2] + 1j * X[..., 1::2])"
            )
        check_shape(X, name, (batch, dstate, length))
        return "variable"
    if X.ndim == 4:
        groups = X.shape[1]
        if groups < 1 or dim % groups != 0:
            raise ValueError(
                f"Parameter {name} has shape {X.shape}: its group count G = {groups} "
                f"must divide the number of channels D = {dim}"
            )
        check_shape(X, name, (batch, groups, dstate, length))
        return "grouped"
    raise ValueError(
        f"Parameter {name} has shape {X.shape} ({X.ndim}-D) but should be "
        f"({dim}, {dstate}) constant, ({batch}, {dstate}, {length}) variable, "
        f"or ({batch}, G, {dstate}, {length}) grouped"
    )


def _per_channel(X, form, dim):
    """View B or C as (B or 1, D, N, L or 1), the form read inside the scan loop."""
    if form == "constant":
        return X[None, :, :, None]  # (1, D, N, 1)
    if form == "variable":
        return X[:, None, :, :]  # (B, 1, N, L)
    groups = X.shape[1]
    return X.repeat(dim // groups, axis=1)  # (B, G, N, L) -> (B, D, N, L)


def _reduce_to_form(g, form, groups):
    """Sum a per-channel gradient (B, D, N, L) back to the shape of B or C."""
    if form == "constant":
        return g.sum(axis=(0, 3))  # (D, N)
    if form == "variable":
        return g.sum(axis=1)  # (B, N, L)
    batch, dim, dstate, length = g.shape
    g = g.reshape(batch, groups, dim // groups, dstate, length)  # (B, G, D/G, N, L)
    return g.sum(axis=2)  # (B, G, N, L)


def _one_module(arrays):
    """The array module (NumPy or CuPy) shared by ``arrays``, a dict name -> array or None.

    Raises ``TypeError`` naming the arguments that are NumPy arrays (or lists)
    when others are device arrays: mixing them would copy to the device on
    every call (CuPy refuses it).  Move them once, e.g. ``cupy.asarray(A)``.
    """
    given = {name: a for name, a in arrays.items() if a is not None}
    xp = array_module(*given.values())
    strays = [name for name, a in given.items() if array_module(a) is not xp]
    if strays:
        device = next(name for name, a in given.items() if array_module(a) is xp)
        raise TypeError(
            f"Parameter(s) {', '.join(strays)} are host (NumPy) arrays but {device} is a "
            f"{xp.__name__} device array; pass all arrays on one array module "
            "(move them once with xp.asarray)"
        )
    return xp


def _effective_delta(delta, delta_bias, delta_softplus):
    """Apply eq-selective-delta: bias, then optional softplus. Returns (raw, delta)."""
    raw = delta if delta_bias is None else delta + delta_bias[None, :, None]  # (B, D, L)
    return raw, (softplus(raw) if delta_softplus else raw)


def _check_scan_structure(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, h0=None):
    """The cheap half of the validation: dtypes, shapes, B/C forms, small arrays.

    Checks every argument's dtype and shape, the forms of B and C, that all
    arrays live on one array module, and (for NumPy arrays) that the arrays
    without a length axis (and B, C) are finite and Re(A) <= 0.  It neither
    converts nor scans the (B, D, L) arrays ``u``, ``delta``, ``z``: the fast
    backends call it and screen those inside their kernels.  Returns a dict of
    the arrays as given plus the sizes, the forms and ``xp``, their module.
    """
    delta = as_array(delta, "delta", allow_complex=False, ndim=3)
    if u is not None:
        u = as_array(u, "u", allow_complex=False, ndim=3)
        batch, dim, length = u.shape
        check_shape(delta, "delta", (batch, dim, length))
    else:
        batch, dim, length = delta.shape
    A = as_array(A, "A", ndim=2)
    check_shape(A, "A", (dim, None))
    dstate = A.shape[1]
    if dstate < 1 or length < 1 or batch < 1 or dim < 1:
        raise ValueError(
            f"empty sizes: batch={batch}, D={dim}, L={length}, N={dstate}; all must be >= 1"
        )
    is_complex = A.dtype.kind == "c"
    B = as_array(B, "B")
    C = as_array(C, "C")
    for X, name in ((B, "B"), (C, "C")):
        if X.dtype.kind == "c" and not is_complex:
            raise TypeError(
                f"Parameter {name} is complex ({X.dtype}) but A is real ({A.dtype}); "
                "complex B/C need a complex A"
            )
    form_B = _bc_form(B, "B", batch, dim, length, dstate)
    form_C = _bc_form(C, "C", batch, dim, length, dstate)
    out = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": None, "z": None,
           "delta_bias": None, "h0": None}
    if D is not None:
        out["D"] = check_shape(as_array(D, "D", allow_complex=False, ndim=1), "D", (dim,))
    if z is not None:
        out["z"] = check_shape(as_array(z, "z", allow_complex=False, ndim=3), "z",
                               (batch, dim, length))
    if delta_bias is not None:
        out["delta_bias"] = check_shape(
            as_array(delta_bias, "delta_bias", allow_complex=False, ndim=1),
            "delta_bias", (dim,))
    if h0 is not None:
        h0 = as_array(h0, "h0", allow_complex=is_complex, ndim=3)
        out["h0"] = check_shape(h0, "h0", (batch, dim, dstate))
    if not isinstance(delta_softplus, (bool, np.bool_)):
        raise TypeError(f"Parameter delta_softplus = {delta_softplus!r} must be a bool")
    xp = _one_module({name: out[name] for name in
                      ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")})
    for name in ("A", "B", "C", "D", "delta_bias", "h0"):
        if out[name] is not None:
            check_finite(out[name], name)
    if xp is np and np.any(A.real > 0):  # a value check: host arrays only
        raise ValueError(
            f"Parameter A has {int(np.sum(A.real > 0))} entries with positive real "
            f"part (max {A.real.max():.3g}); the recurrence would grow like "
            "exp(delta * Re(A) * L). A must have Re(A) <= 0 (Mamba uses A = -exp(A_log))"
        )
    out.update(batch=batch, dim=dim, length=length, dstate=dstate, is_complex=is_complex,
               form_B=form_B, form_C=form_C, delta_softplus=bool(delta_softplus), xp=xp)
    return out


def _validate_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, h0=None):
    """Check every argument of the scan; return a dict of float64/complex128 arrays.

    Shared by :func:`selective_scan`, :func:`selective_scan_backward`,
    ``hidden_attention`` and the fast backends, so that every entry point
    accepts and refuses exactly the same inputs.  ``u`` may be None
    (hidden attention has no input); then the sizes come from ``delta``.
    :func:`_check_scan_structure` does the cheap half; this adds the checks
    over the (B, D, L) arrays and the conversion to the working precision.
    """
    out = _check_scan_structure(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0)
    for name in ("u", "delta", "z"):
        if out[name] is not None:
            check_finite(out[name], name)
    arrays = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")
    out["given_dtype"] = {name: out[name].dtype for name in arrays if out[name] is not None}
    # promote to the working precision: float64, or complex128 for complex A
    work = np.complex128 if out["is_complex"] else np.float64
    for name in ("u", "delta", "D", "z", "delta_bias"):
        if out[name] is not None:
            out[name] = out[name].astype(np.float64)
    for name in ("A", "B", "C", "h0"):
        if out[name] is not None:
            out[name] = out[name].astype(work)
    raw, eff = _effective_delta(out["delta"], out["delta_bias"], out["delta_softplus"])
    if out["xp"] is np and np.any(eff < 0):  # a value check: host arrays only
        raise ValueError(
            f"Parameter delta has {int(np.sum(eff < 0))} negative step(s) after "
            f"delta_bias{' and softplus' if out['delta_softplus'] else ''} "
            f"(min {eff.min():.3g}); a negative step makes |exp(delta * A)| > 1 and the "
            "recurrence grows. Pass delta >= 0 or use delta_softplus=True"
        )
    u_given = out["given_dtype"].get("u", out["given_dtype"]["delta"])
    out.update(delta_raw=raw, delta_eff=eff, u_dtype=u_given)
    return out


def _state_dtype(real_dtype, is_complex):
    """dtype of returned states: the input's float dtype, or its complex partner."""
    return np.result_type(real_dtype, np.complex64) if is_complex else np.dtype(real_dtype)


# ---------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------

def _forward_states(p):
    """Run eq-selective-disc and eq-selective-recurrence; return every state.

    Returns ``hs`` of shape (B, D, L, N): ``hs[:, :, t]`` is h_t.  Used by the
    backward pass, which needs h_{t-1} at every step.
    """
    batch, dim, length, dstate = p["batch"], p["dim"], p["length"], p["dstate"]
    delta, A, u, xp = p["delta_eff"], p["A"], p["u"], p["xp"]
    Bc = _per_channel(p["B"], p["form_B"], dim)  # (B|1, D|1, N, L|1)
    dA = delta[:, :, :, None] * A[None, :, None, :]  # (B, D, L, N)
    Abar = xp.exp(dA)  # (B, D, L, N)   zero-order hold for A
    Bbar_u = (delta * u)[:, :, :, None] * xp.moveaxis(Bc, 3, 2)  # (B, D, L, N)  Euler for B
    h = xp.zeros((batch, dim, dstate), dtype=Abar.dtype) if p["h0"] is None else p["h0"].copy()
    work = np.result_type(Abar.dtype, Bbar_u.dtype)
    hs = xp.empty((batch, dim, length, dstate), dtype=work)  # (B, D, L, N)
    for t in range(length):
        h = Abar[:, :, t] * h + Bbar_u[:, :, t]  # (B, D, N)
        hs[:, :, t] = h
    return hs, Abar


def _readout(p, hs):
    """y_t = <C_t, h_t> for all t at once from the stored states (backward pass)."""
    xp = p["xp"]
    Cc = _per_channel(p["C"], p["form_C"], p["dim"])  # (B|1, D|1, N, L|1)
    y = xp.sum(xp.moveaxis(Cc, 3, 2) * hs, axis=-1)  # (B, D, L)
    return _skip_and_gate(p, y)


def _skip_and_gate(p, y):
    """2 Re for complex A, then the D skip and the SiLU gate (eq-selective-output).

    Returns ``(v, out)``: ``v = y + D u`` before the gate (the backward needs
    it) and ``out = v * silu(z)``.
    """
    if p["is_complex"]:
        y = 2.0 * y.real  # conjugate pairs: only half of them are stored
    v = y if p["D"] is None else y + p["D"][None, :, None] * p["u"]  # (B, D, L)
    return v, (v if p["z"] is None else v * silu(p["z"]))


def _forward_output(p):
    """The forward scan one time step at a time, keeping only the current state.

    Same recurrence as :func:`_forward_states`, but memory O(B D (L + N))
    instead of O(B D L N): Abar_t and Bbar_t u_t are formed inside the loop and
    y_t = <C_t, h_t> is read out at once, as the hardware-aware kernel does.
    Returns the output (B, D, L) and the last state h_{L-1} (B, D, N).
    """
    batch, dim, length, dstate = p["batch"], p["dim"], p["length"], p["dstate"]
    delta, A, u, xp = p["delta_eff"], p["A"], p["u"], p["xp"]
    Bc = _per_channel(p["B"], p["form_B"], dim)  # (B|1, D|1, N, L|1)
    Cc = _per_channel(p["C"], p["form_C"], dim)  # (B|1, D|1, N, L|1)
    work = np.result_type(delta.dtype, A.dtype, Bc.dtype, Cc.dtype)
    h = xp.zeros((batch, dim, dstate), dtype=work) if p["h0"] is None else p["h0"].astype(work)
    y = xp.empty((batch, dim, length), dtype=work)  # (B, D, L)
    for t in range(length):
        Abar_t = xp.exp(delta[:, :, t, None] * A[None, :, :])  # (B, D, N)  ZOH for A
        B_t = Bc[..., t if Bc.shape[3] > 1 else 0]  # (B|1, D|1, N)
        C_t = Cc[..., t if Cc.shape[3] > 1 else 0]  # (B|1, D|1, N)
        h = Abar_t * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B_t  # (B, D, N)  Euler for B
        y[:, :, t] = xp.sum(C_t * h, axis=-1)  # (B, D)
    return _skip_and_gate(p, y)[1], h


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                   delta_softplus=False, return_last_state=False, h0=None):
    """Mamba's selective scan (S6), with the semantics of ``selective_scan_ref``.

    Parameters
    ----------
    u : array_like, shape (B, D, L)
        Input sequence, real.  Its dtype is the dtype of the output.
    delta : array_like, shape (B, D, L)
        Step sizes Δ before ``delta_bias`` and softplus, real.
    A : array_like, shape (D, N)
        Diagonal state matrices, real or complex, with ``Re(A) <= 0``.
    B, C : array_like
        Each independently constant ``(D, N)``, variable ``(B, N, L)``, or
        grouped ``(B, G, N, L)`` with G dividing D (channel d reads group
        ``d // (D // G)``).  Complex only when A is complex; with complex A,
        real B/C are read as complex numbers with zero imaginary part.
    D : array_like, shape (D,), optional
        Skip connection: ``y += D * u``.
    z : array_like, shape (B, D, L), optional
        Gate: ``y *= silu(z)``.
    delta_bias : array_like, shape (D,), optional
        Added to ``delta`` before the softplus.
    delta_softplus : bool, default False
        Apply ``softplus`` (linear above 20, as PyTorch) to ``delta + delta_bias``.
    return_last_state : bool, default False
        Also return the final state h_{L-1}.
    h0 : array_like, shape (B, D, N), optional
        Initial state h_{-1} (zeros when omitted).  Not in the official
        function; ``h0`` = the last state of a previous call continues it.

    Returns
    -------
    y : ndarray, shape (B, D, L)
        Output, in ``u``'s dtype.
    last_state : ndarray, shape (B, D, N)
        Only with ``return_last_state``: in ``u``'s dtype for real A, in its
        complex partner (complex64 for float32) for complex A.  The official
        function returns it in A's dtype.

    Raises
    ------
    ValueError
        A shape that does not fit (B, D, L) from ``u`` and N from ``A``; a B/C
        of the wrong form or with a group count G that does not divide D;
        non-finite values; ``Re(A) > 0`` (the recurrence would blow up); a
        negative step after ``delta_bias`` and softplus (|exp(delta A)| > 1:
        the recurrence would blow up; the official code accepts both and lets
        the values grow).
    TypeError
        Complex B, C or h0 with a real A; complex u, delta, z, D or
        delta_bias; non-numeric input.

    Notes
    -----
    Implements ``eq-selective-delta``, ``eq-selective-disc``,
    ``eq-selective-recurrence`` and ``eq-selective-output`` of the book
    (chapter "Selective state spaces")::

        delta = softplus(delta + delta_bias)          (each part optional)
        h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t
        y_t = <C_t, h_t> + D u_t,  then y_t *= silu(z_t)

    A is discretized with the zero-order hold, B with the Euler rule
    ``Bbar = delta * B`` (Mamba's choice).  For complex A the model stands for
    a real system whose state holds conjugate pairs; only one of each pair is
    stored, so the output is ``2 Re <C_t, h_t>``.  The official code stores a
    *variable* complex B or C as a real array with real and imaginary parts
    interleaved along the last axis, ``(B, N, 2L)``; here pass a complex array
    ``(B, N, L)`` (``X[..., 0::2] + 1j * X[..., 1::2]`` converts).

    Computed in float64 (complex128 for complex A) with an explicit loop over
    time; cost O(B D L N), memory O(B D (L + N)): only the current state is kept.

    References
    ----------
    A. Gu and T. Dao, "Mamba: Linear-Time Sequence Modeling with Selective
    State Spaces", 2023, arXiv:2312.00752, Algorithm 2.
    state-spaces/mamba, ``mamba_ssm/ops/selective_scan_interface.py``,
    ``selective_scan_ref``.

    Examples
    --------
    One channel, one state, constant B = C = 1, A = -1, delta = 0.5:
    h_t = e^{-0.5} h_{t-1} + 0.5 u_t.

    >>> import numpy as np
    >>> from ssm_ref import selective_scan
    >>> u = np.ones((1, 1, 3))
    >>> y, h = selective_scan(u, 0.5 * np.ones((1, 1, 3)), [[-1.0]], [[1.0]], [[1.0]],
    ...                       return_last_state=True)
    >>> y
    array([[[0.5       , 0.80326533, 0.98720505]]])
    >>> h
    array([[[0.98720505]]])
    """
    p = _validate_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0)
    if not isinstance(return_last_state, (bool, np.bool_)):
        raise TypeError(f"Parameter return_last_state = {return_last_state!r} must be a bool")
    y, last = _forward_output(p)  # (B, D, L), (B, D, N)
    y = y.astype(p["u_dtype"])
    if not return_last_state:
        return y
    last = last.astype(_state_dtype(p["u_dtype"], p["is_complex"]))  # (B, D, N)
    return y, last


# ---------------------------------------------------------------------------
# one decoding step
# ---------------------------------------------------------------------------

def _check_state_update_inputs(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False):
    """Check every argument of :func:`selective_state_update`; return them with the step.

    Shared with the fast backends so that they refuse the same inputs with the
    same messages.  The arrays come back as given (after ``as_array``), plus
    ``is_complex``, ``xp`` (their array module) and ``step`` =
    softplus(dt + dt_bias) (B, D) in float64.  Value checks (finite,
    Re(A) <= 0, step >= 0) run on NumPy arrays only.
    """
    x = as_array(x, "x", allow_complex=False, ndim=2)
    batch, dim = x.shape
    dt = check_shape(as_array(dt, "dt", allow_complex=False, ndim=2), "dt", (batch, dim))
    A = as_array(A, "A", ndim=2)
    check_shape(A, "A", (dim, None))
    dstate = A.shape[1]
    is_complex = A.dtype.kind == "c"
    state = as_array(state, "state", allow_complex=is_complex, ndim=3)
    check_shape(state, "state", (batch, dim, dstate))
    args = {"x": x, "dt": dt, "A": A, "state": state, "is_complex": is_complex,
            "D": None, "z": None, "dt_bias": None}
    for X, name in ((B, "B"), (C, "C")):
        X = as_array(X, name, ndim=(2, 3))
        if X.dtype.kind == "c" and not is_complex:
            raise TypeError(
                f"Parameter {name} is complex ({X.dtype}) but A is real ({A.dtype}); "
                "complex B/C need a complex A"
            )
        if X.ndim == 3 and (X.shape[1] < 1 or dim % X.shape[1] != 0):
            raise ValueError(
                f"Parameter {name} has shape {X.shape}: its group count G = {X.shape[1]} "
                f"must divide the number of channels D = {dim}"
            )
        check_shape(X, name, (batch, dstate) if X.ndim == 2 else (batch, None, dstate))
        args[name] = X
    for arr, name, shape in ((D, "D", (dim,)), (z, "z", (batch, dim)),
                             (dt_bias, "dt_bias", (dim,))):
        if arr is not None:
            arr = as_array(arr, name, allow_complex=False, ndim=len(shape))
            args[name] = check_shape(arr, name, shape)
    if not isinstance(dt_softplus, (bool, np.bool_)):
        raise TypeError(f"Parameter dt_softplus = {dt_softplus!r} must be a bool")
    names = ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias")
    xp = args["xp"] = _one_module({name: args[name] for name in names})
    for name in names:
        if args[name] is not None:
            check_finite(args[name], name)
    if xp is np and np.any(A.real > 0):  # value checks: host arrays only
        raise ValueError(
            f"Parameter A has {int(np.sum(A.real > 0))} entries with positive real part; "
            "A must have Re(A) <= 0"
        )
    step = dt.astype(np.float64)  # (B, D)
    if dt_bias is not None:
        step = step + args["dt_bias"][None, :]
    if dt_softplus:
        step = softplus(step)
    if xp is np and np.any(step < 0):
        raise ValueError(
            f"Parameter dt has {int(np.sum(step < 0))} negative step(s) after dt_bias"
            f"{' and softplus' if dt_softplus else ''}; pass dt >= 0 or dt_softplus=True"
        )
    args["step"] = step
    return args


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False):
    """One recurrent step of the selective SSM: returns ``(y, new_state)``.

    Unlike the official ``selective_state_update``, which writes the new state
    into ``state`` in place and returns only ``y``, this returns a tuple and
    leaves the caller's ``state`` unchanged.  Used for token-by-token decoding.

    Parameters
    ----------
    state : array_like, shape (B, D, N)
        State h_{t-1}; real for real A, real or complex for complex A.
        Not modified (see Notes).
    x : array_like, shape (B, D)
        Input u_t of this step.  Its dtype is the dtype of ``y``.
    dt : array_like, shape (B, D)
        Step Δ_t before ``dt_bias`` and softplus.
    A : array_like, shape (D, N)
        Diagonal state matrices, real or complex, ``Re(A) <= 0``.
    B, C : array_like, shape (B, N) or (B, G, N)
        Input and output projections of this step; with G groups channel d
        reads group ``d // (D // G)``, as in :func:`selective_scan`.
    D : array_like, shape (D,), optional
        Skip connection.
    z : array_like, shape (B, D), optional
        Gate, ``y *= silu(z)``.
    dt_bias : array_like, shape (D,), optional
        Added to ``dt`` before the softplus.
    dt_softplus : bool, default False
        Apply softplus (linear above 20) to ``dt + dt_bias``.

    Returns
    -------
    y : ndarray, shape (B, D)
        Output of this step in ``x``'s dtype.
    new_state : ndarray, shape (B, D, N)
        h_t, in ``state``'s dtype (its complex partner if A is complex and
        ``state`` real).

    Raises
    ------
    ValueError
        Shapes that do not fit (B, D) from ``x`` and N from ``A``, G not
        dividing D, non-finite values, ``Re(A) > 0``, a negative step.
    TypeError
        Complex B/C/state with real A, complex x/dt/z/D/dt_bias.

    Notes
    -----
    Implements ``eq-selective-disc``, ``eq-selective-recurrence`` and
    ``eq-selective-output`` for a single time step::

        dt  = softplus(dt + dt_bias)
        h_t = exp(dt A) * h_{t-1} + dt * B * x
        y   = (<C, h_t> + D x) * silu(z)      (2 Re<C, h_t> for complex A)

    Applied to the tokens of a sequence one after the other it reproduces
    :func:`selective_scan` exactly.  The official
    ``selective_state_update`` (``mamba_ssm/ops/triton/selective_state_update.py``)
    writes the new state *into* ``state`` and returns only ``y``; this
    reference leaves the caller's array untouched and returns the new state,
    so no update happens by surprise.  The official grouped form (B, G, N)
    groups heads of its multi-head (Mamba-2) layout; with the (B, D, N) state
    used here, groups are over channels exactly as in :func:`selective_scan`.
    The official function is real only; complex A follows :func:`selective_scan`.
    Computed in float64 (complex128 for complex A).

    References
    ----------
    state-spaces/mamba, ``mamba_ssm/ops/triton/selective_state_update.py``,
    ``selective_state_update_ref``.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import selective_state_update
    >>> h = np.zeros((1, 1, 1))
    >>> for u_t in [1.0, 1.0, 1.0]:
    ...     y, h = selective_state_update(h, [[u_t]], [[0.5]], [[-1.0]], [[1.0]], [[1.0]])
    >>> y
    array([[0.98720505]])
    """
    args = _check_state_update_inputs(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    x, A, state, step, xp = args["x"], args["A"], args["state"], args["step"], args["xp"]
    batch, dim = x.shape
    is_complex = args["is_complex"]
    work = np.complex128 if is_complex else np.float64

    def per_channel(X):  # (B, N) or (B, G, N) -> (B, 1 or D, N)
        X = X.astype(work)
        return X[:, None, :] if X.ndim == 2 else X.repeat(dim // X.shape[1], axis=1)

    Bc, Cc = per_channel(args["B"]), per_channel(args["C"])  # (B, D|1, N)
    xs = x.astype(np.float64)  # (B, D)
    Abar = xp.exp(step[:, :, None] * A.astype(work)[None])  # (B, D, N)
    h = Abar * state.astype(work) + (step * xs)[:, :, None] * Bc  # (B, D, N)
    y = xp.sum(Cc * h, axis=-1)  # (B, D)
    if is_complex:
        y = 2.0 * y.real
    if D is not None:
        y = y + args["D"][None, :] * xs
    if z is not None:
        y = y * silu(args["z"].astype(np.float64))
    new_state = h.astype(_state_dtype(state.dtype, is_complex) if state.dtype.kind == "f"
                         else state.dtype)
    return y.astype(x.dtype), new_state


# ---------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------

def selective_scan_backward(dout, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                            delta_softplus=False, h0=None, dlast_state=None):
    """Gradients of the selective scan, derived by hand (a reverse scan).

    For the scalar loss ``sum(dout * y) + Re sum(conj(dlast_state) * h_{L-1})``
    with ``y, h_{L-1} = selective_scan(..., return_last_state=True)``, return
    its gradient with respect to every argument.

    Parameters
    ----------
    dout : array_like, shape (B, D, L)
        Gradient of the loss with respect to the output ``y``, real.
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0
        As in :func:`selective_scan`.
    dlast_state : array_like, shape (B, D, N), optional
        Gradient with respect to the last state (complex for complex A).

    Returns
    -------
    grads : dict
        Keys ``"u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"``,
        always all nine.  Each value has the shape and dtype of its argument
        (a constant, variable or grouped B/C gets a gradient of the same
        form, summed over whatever the argument is shared across); the value
        is ``None`` for an optional argument that was not given.

    Raises
    ------
    ValueError, TypeError
        As :func:`selective_scan`, and for ``dout`` or ``dlast_state`` of the
        wrong shape, non-finite, or complex ``dlast_state`` with real A.

    Notes
    -----
    The forward pass is recomputed (states h_t are not stored by the caller).
    With ``g_t`` the gradient of the loss with respect to ``h_t`` and
    ``s = 2`` for complex A (``1`` otherwise), the state gradient runs
    backwards in time (book equation ``eq-selective-backward``)::

        g_{L-1} = dlast_state + s dy_{L-1} conj(C_{L-1})
        g_{t-1} = conj(Abar_t) g_t + s dy_{t-1} conj(C_{t-1}),    dh0 = conj(Abar_0) g_0

    and the parameter gradients are read off it step by step::

        dC_t     = s dy_t conj(h_t)
        dB_t     = delta_t u_t g_t
        dA       = sum_{b,t} delta_t conj(Abar_t h_{t-1}) g_t
        ddelta_t = Re sum_n [conj(A Abar_t h_{t-1}) + u_t conj(B_t)] g_t
        du_t     = delta_t Re sum_n conj(B_t) g_t + D dy_t

    then ``ddelta`` goes through the softplus (its derivative is the
    sigmoid, and 1 above 20) and ``d delta_bias`` sums it over batch and time.
    With the gate, ``dy = dout * silu(z)`` and ``dz = dout * (y + D u) * silu'(z)``.

    Complex convention: for a complex argument w the returned gradient is
    ``dL/dRe(w) + i dL/dIm(w)`` (the convention of PyTorch, so a gradient
    step is ``w - lr * grad``).  A real argument gets a real gradient (the
    real part of that expression) even when A is complex.

    Computed in float64 (complex128); memory O(B D L N) for the states.

    References
    ----------
    A. Gu and T. Dao, 2023, arXiv:2312.00752 (the backward recomputes the
    states; section 3.3).

    Examples
    --------
    d y_0 / d u_0 for the one-state example of :func:`selective_scan` is
    ``delta B C = 0.5``:

    >>> import numpy as np
    >>> from ssm_ref import selective_scan_backward
    >>> dout = np.array([[[1.0, 0.0, 0.0]]])
    >>> g = selective_scan_backward(dout, np.ones((1, 1, 3)), 0.5 * np.ones((1, 1, 3)),
    ...                             [[-1.0]], [[1.0]], [[1.0]])
    >>> g["u"]
    array([[[0.5, 0. , 0. ]]])
    >>> g["D"] is None
    True
    """
    p = _validate_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0)
    batch, dim, length, dstate = p["batch"], p["dim"], p["length"], p["dstate"]
    is_complex, xp = p["is_complex"], p["xp"]
    dout = as_array(dout, "dout", allow_complex=False, ndim=3)
    check_shape(dout, "dout", (batch, dim, length))
    if dlast_state is not None:
        dlast_state = as_array(dlast_state, "dlast_state", allow_complex=is_complex, ndim=3)
        check_shape(dlast_state, "dlast_state", (batch, dim, dstate))
    _one_module({"delta": p["delta"], "dout": dout, "dlast_state": dlast_state})
    check_finite(dout, "dout")
    dout = dout.astype(np.float64)  # (B, D, L)
    work = np.complex128 if is_complex else np.float64
    if dlast_state is not None:
        check_finite(dlast_state, "dlast_state")
        dlast_state = dlast_state.astype(work)  # (B, D, N)

    u, delta_eff, Am = p["u"], p["delta_eff"], p["A"]
    scale = 2.0 if is_complex else 1.0  # y = 2 Re<C, h> for complex A

    # forward again: every state, and h_{t-1} next to h_t
    hs, Abar = _forward_states(p)  # (B, D, L, N) each
    h_init = xp.zeros((batch, dim, 1, dstate), work) if p["h0"] is None \
        else p["h0"][:, :, None, :]  # (B, D, 1, N)
    h_prev = xp.concatenate([h_init, hs[:, :, :-1]], axis=2)  # (B, D, L, N)
    v, _ = _readout(p, hs)  # (B, D, L), y + D u before the gate

    grads = dict.fromkeys(["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"])

    # output: gate, then skip
    if p["z"] is not None:
        grads["z"] = dout * v * _silu_grad(p["z"])  # (B, D, L)
        dy = dout * silu(p["z"])  # (B, D, L)
    else:
        dy = dout
    du = xp.zeros_like(u)  # (B, D, L)
    if p["D"] is not None:
        grads["D"] = xp.sum(dy * u, axis=(0, 2))  # (D,)
        du += dy * p["D"][None, :, None]

    # readout y_t = s Re<C_t, h_t>
    Ct = xp.moveaxis(_per_channel(p["C"], p["form_C"], dim), 3, 2)  # (B|1, D|1, L|1, N)
    Bt = xp.moveaxis(_per_channel(p["B"], p["form_B"], dim), 3, 2)  # (B|1, D|1, L|1, N)
    dC = scale * dy[..., None] * xp.conj(hs)  # (B, D, L, N)
    dh_out = scale * dy[..., None] * xp.conj(Ct)  # (B, D, L, N)

    # reverse scan for g_t = dLoss/dh_t  (eq-selective-backward)
    gs = xp.empty((batch, dim, length, dstate), dtype=work)  # (B, D, L, N)
    g = xp.zeros((batch, dim, dstate), work) if dlast_state is None else dlast_state.copy()
    for t in range(length - 1, -1, -1):
        g = g + dh_out[:, :, t]  # (B, D, N)
        gs[:, :, t] = g
        g = xp.conj(Abar[:, :, t]) * g  # carried to h_{t-1}
    if p["h0"] is not None:
        grads["h0"] = g  # (B, D, N)

    # h_t = Abar_t h_{t-1} + delta_t u_t B_t
    g_dA = xp.conj(Abar * h_prev) * gs  # (B, D, L, N): gradient w.r.t. delta_t * A
    grads["A"] = xp.sum(delta_eff[..., None] * g_dA, axis=(0, 2))  # (D, N)
    g_BB = xp.sum(xp.conj(Bt) * gs, axis=-1).real  # (B, D, L): Re sum_n conj(B_t) g_t
    ddelta = xp.sum(xp.conj(Am)[None, :, None, :] * g_dA, axis=-1).real + u * g_BB
    du += delta_eff * g_BB
    dB = (delta_eff * u)[..., None] * gs  # (B, D, L, N)

    # delta_eff = softplus(delta + delta_bias)
    if p["delta_softplus"]:
        ddelta = ddelta * _softplus_grad(p["delta_raw"])  # (B, D, L)
    grads["u"], grads["delta"] = du, ddelta
    if p["delta_bias"] is not None:
        grads["delta_bias"] = xp.sum(ddelta, axis=(0, 2))  # (D,)

    groups_B = p["B"].shape[1] if p["form_B"] == "grouped" else 1
    groups_C = p["C"].shape[1] if p["form_C"] == "grouped" else 1
    grads["B"] = _reduce_to_form(xp.moveaxis(dB, 2, 3), p["form_B"], groups_B)
    grads["C"] = _reduce_to_form(xp.moveaxis(dC, 2, 3), p["form_C"], groups_C)

    # back to each argument's own dtype; real arguments get the real part
    for name, grad in grads.items():
        if grad is not None:
            target = p["given_dtype"][name]
            grads[name] = (grad if target.kind == "c" else grad.real).astype(target)
    return grads
