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
``mamba_ssm.ops.triton.selective_state_update.selective_state_update`` (the
state updated in place, single- and multi-head layouts, state cache indices),
:func:`selective_state_step` is the same step in functional form
(``y, new_state``; not in the official package), and
:func:`selective_scan_backward` is the hand-derived gradient of the scan.

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
cast back to the dtype of ``u`` and the last state to the dtype of ``A``, as
the official reference returns them.  ``ml_dtypes.bfloat16`` arrays are
accepted (NumPy has no bfloat16 of its own): computed in float64 here and in
float32 by the compiled backends of :mod:`fast`, returned in bfloat16.

Where this differs from the official package, and why (complex A in the
decoding step, checked ``state_batch_indices``, channel groups in the
single-head step, value checks, ``h0`` and the gradient of the last state,
the dtypes each backend computes in): the table "Where ssm-ref differs from
the official package" in the README.

The arguments are checked once, by :func:`ssm_ref.scan_args.check_scan_args`
(the same call in every backend), and read as the attributes of the
:class:`~ssm_ref.scan_args.ScanArgs` it returns.

Every function runs on the array module of its inputs (NumPy, or CuPy on a
GPU, see :mod:`ssm_ref._xp`): ``xp = array_module(u, ...)`` and all arrays are
made with ``xp``.  All array arguments must then live on that one module, and
the value checks (finite, ``Re(A) <= 0``, ``delta >= 0``) run only on NumPy
inputs: on a device they would make the GPU wait and copy a flag to the host.
Complex A works on both (CuPy has complex128).
"""
from __future__ import annotations

import numpy as np

from ._validation import as_array, check_bool, check_finite, check_shape
from ._xp import array_module
from .nn import silu, silu_backward, softplus_backward
from .scan_args import check_scan_args, check_step_args
from .scan_args import one_module as _one_module  # imported from here by ssm_ref.mamba

__all__ = ["selective_scan", "selective_state_update", "selective_state_step",
           "selective_scan_backward"]


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
# the scan
# ---------------------------------------------------------------------------

def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                   delta_softplus=False, return_last_state=False, h0=None):
    """Mamba's selective scan (S6), with the semantics of ``selective_scan_ref``.

    Parameters
    ----------
    u : array_like, shape (B, D, L)
        Input sequence, real (float16, float32, float64 or
        ``ml_dtypes.bfloat16``).  Its dtype is the dtype of the output.
    delta : array_like, shape (B, D, L)
        Step sizes Δ before ``delta_bias`` and softplus, real.
    A : array_like, shape (D, N)
        Diagonal state matrices, real or complex, with ``Re(A) <= 0``.
    B, C : array_like
        Each independently constant ``(D, N)``, variable ``(B, N, L)``, or
        grouped ``(B, G, N, L)`` with G dividing D (channel d reads group
        ``d // (D // G)``).  Complex only when A is complex.  With complex A a
        variable or grouped B/C may also be given in the official interleaved
        real layout ``(B, N, 2L)`` or ``(B, G, N, 2L)``, read as
        ``X[..., 2t] + 1j * X[..., 2t+1]``; other real B/C are read as complex
        numbers with zero imaginary part.
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
        Only with ``return_last_state``: in ``A``'s dtype (complex for complex
        A), as the official function returns it.

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
    interleaved along the last axis, ``(B, N, 2L)``; that layout is accepted
    (it is told from the complex form ``(B, N, L)`` by its length 2L), and
    :func:`selective_scan_backward` returns its gradient in it.

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
    s = check_scan_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0)
    check_bool(return_last_state, "return_last_state")
    # [book:selective-scan]
    xp, u, A = s.xp, s.u, s.A
    delta = s.step  # (B, D, L): softplus(delta + delta_bias), eq-selective-delta
    h = s.initial_state()  # (B, D, N): h0, or zeros
    y = xp.empty((s.batch, s.dim, s.length), dtype=h.dtype)  # (B, D, L)
    for t in range(s.length):
        B_t = s.form_B.at(s.B, t, s.dim)  # (B|1, D|1, N)
        C_t = s.form_C.at(s.C, t, s.dim)  # (B|1, D|1, N)
        Abar = xp.exp(delta[:, :, t, None] * A)  # (B, D, N): zero-order hold for A
        Bbar_u = (delta[:, :, t] * u[:, :, t])[:, :, None] * B_t  # (B, D, N): Euler for B
        h = Abar * h + Bbar_u  # (B, D, N): eq-selective-recurrence
        y[:, :, t] = xp.sum(C_t * h, axis=-1)  # (B, D): y_t = <C_t, h_t>
    y = _skip_and_gate(s, y)[1]  # (B, D, L): eq-selective-output
    # [/book:selective-scan]
    y = y.astype(s.out_dtype)
    if not return_last_state:
        return y
    return y, h.astype(s.state_dtype)  # (B, D, N)


def _skip_and_gate(s, y):
    """2 Re for complex A, then the D skip and the SiLU gate (eq-selective-output).

    Returns ``(v, out)``: ``v = y + D u`` before the gate (the backward needs
    it) and ``out = v * silu(z)``.
    """
    # [book:selective-output]
    if s.is_complex:
        y = 2.0 * y.real  # conjugate pairs: only one of each pair is stored
    v = y if s.D is None else y + s.D[None, :, None] * s.u  # (B, D, L)
    return v, (v if s.z is None else v * silu(s.z))
    # [/book:selective-output]


# ---------------------------------------------------------------------------
# one decoding step
# ---------------------------------------------------------------------------

def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False, state_batch_indices=None):
    """One recurrent step of the selective SSM, written into ``state``: returns ``out``.

    The official ``selective_state_update`` of state-spaces/mamba, with its
    signature and semantics: the new state h_t is written *in place* into
    ``state`` and only the output is returned.  Two layouts, told by
    ``state``'s number of axes (every argument in the same layout):

    ==========  =========================  =============================
    argument    single-head                multi-head (Mamba-2)
    ==========  =========================  =============================
    state       (batch, dim, dstate)       (batch, nheads, dim, dstate)
    x, dt, z    (batch, dim)               (batch, nheads, dim)
    A           (dim, dstate)              (nheads, dim, dstate)
    B, C        (batch, dstate) or         (batch, ngroups, dstate),
                (batch, ngroups, dstate)   ngroups divides nheads
    D, dt_bias  (dim,)                     (nheads, dim)
    ==========  =========================  =============================

    Parameters
    ----------
    state : ndarray
        State h_{t-1}, updated in place to h_t (in its own dtype).  A real or
        complex floating-point array (complex for complex A); with
        ``state_batch_indices`` its first axis is the cache size, not batch.
    x : array_like
        Input u_t of this step.  Its dtype is the dtype of the output.
    dt : array_like
        Step Δ_t before ``dt_bias`` and softplus.
    A : array_like
        Diagonal state matrices, real or complex, ``Re(A) <= 0``.
    B, C : array_like
        Input and output projections of this step.  Head h reads group
        ``h // (nheads // ngroups)``; in the single-head layout a (batch,
        ngroups, dstate) B groups the channels, channel d reading group
        ``d // (dim // ngroups)`` as in :func:`selective_scan` (the official
        function takes only ngroups = 1 there).
    D : array_like, optional
        Skip connection, ``out += D * x``.
    z : array_like, optional
        Gate, ``out *= silu(z)``.
    dt_bias : array_like, optional
        Added to ``dt`` before the softplus.
    dt_softplus : bool, default False
        Apply softplus (linear above 20) to ``dt + dt_bias``.
    state_batch_indices : array_like of int, shape (batch,), optional
        Batch entry b reads and updates the state row
        ``state[state_batch_indices[b]]`` (a cache of decoding slots); the
        other rows are untouched.  A negative index marks a padding entry:
        its output is 0 and no row is read or written (as the official
        kernel).  Indices past the cache and repeated indices raise.

    Returns
    -------
    out : ndarray
        Output of this step, shape and dtype of ``x``.

    Raises
    ------
    ValueError
        Shapes that do not fit the layout of ``state``, a group count that
        does not divide the heads (or channels), empty sizes (batch, dim or
        dstate of 0), non-finite values, ``Re(A) > 0``, a negative step, a
        read-only ``state``, indices past the cache or repeated.
    TypeError
        ``state`` not a floating-point array (a list would be copied and the
        update lost), a real ``state`` with complex A, complex B/C with real
        A, complex x/dt/z/D/dt_bias, non-integer indices.

    Notes
    -----
    Implements ``eq-selective-disc``, ``eq-selective-recurrence`` and
    ``eq-selective-output`` for a single time step::

        dt  = softplus(dt + dt_bias)
        h_t = exp(dt A) * h_{t-1} + dt * B * x          written into state
        out = (<C, h_t> + D x) * silu(z)      (2 Re<C, h_t> for complex A)

    Computed in float64 (complex128 for complex A); the new state is cast to
    ``state``'s dtype when it is written and the output to ``x``'s (the
    output is read from the float64 state, before that cast, as the official
    kernel reads it from its float32 registers).  The official function is
    real only; complex A follows :func:`selective_scan`.  For the functional
    form that leaves ``state`` alone and returns the new state, see
    :func:`selective_state_step`.

    References
    ----------
    state-spaces/mamba, ``mamba_ssm/ops/triton/selective_state_update.py``,
    ``selective_state_update`` and ``selective_state_update_ref``.

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import selective_state_update
    >>> h = np.zeros((1, 1, 1))
    >>> for u_t in [1.0, 1.0, 1.0]:
    ...     y = selective_state_update(h, [[u_t]], [[0.5]], [[-1.0]], [[1.0]], [[1.0]])
    >>> y, h
    (array([[0.98720505]]), array([[[0.98720505]]]))

    A cache of three state rows, two of them decoded:

    >>> cache = np.zeros((3, 1, 1))
    >>> y = selective_state_update(cache, [[1.0], [2.0]], [[0.5], [0.5]], [[-1.0]],
    ...                            [[1.0], [1.0]], [[1.0], [1.0]],
    ...                            state_batch_indices=np.array([2, 0]))
    >>> cache[:, 0, 0]
    array([1. , 0. , 0.5])
    """
    s = check_step_args(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                        state_batch_indices, in_place=True)
    y, h, valid = _state_step(s)
    write_state(s, h, valid)
    return y.reshape(s.x.shape).astype(s.x.dtype)


def write_state(s, h, valid):
    """Write the new state rows ``h`` (n, dim, N) into ``s.state`` in place.

    ``valid`` is None (every row, in batch order) or the batch entries that
    own a row (``s.indices[valid]`` are the rows).  Shared with the fast
    backends, which compute ``h`` on their own.
    """
    state = s.state
    if valid is None:
        state[...] = h.reshape(state.shape).astype(state.dtype)
    else:
        rows = s.indices[valid]
        state[rows] = h.reshape((rows.shape[0],) + tuple(state.shape[1:])).astype(state.dtype)


def selective_state_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                         dt_softplus=False):
    """One recurrent step of the selective SSM, functional: returns ``(y, new_state)``.

    The same step as :func:`selective_state_update`, but ``state`` is left
    untouched and the new state is returned: ``y, h = selective_state_step(h, ...)``
    reads like the recurrence, so the book and the blocks use this form.

    Parameters
    ----------
    state : array_like, shape (B, D, N) or (B, H, P, N)
        State h_{t-1}; real for real A, real or complex for complex A.
        Not modified.
    x, dt, A, B, C, D, z, dt_bias, dt_softplus
        As in :func:`selective_state_update` (either layout).

    Returns
    -------
    y : ndarray
        Output of this step, shape and dtype of ``x``.
    new_state : ndarray
        h_t, shape of ``state``, in ``state``'s dtype (its complex partner if
        A is complex and ``state`` real).

    Raises
    ------
    ValueError, TypeError
        As :func:`selective_state_update` (``state`` may be any array_like).

    Notes
    -----
    Implements ``eq-selective-disc``, ``eq-selective-recurrence`` and
    ``eq-selective-output`` for a single time step::

        dt  = softplus(dt + dt_bias)
        h_t = exp(dt A) * h_{t-1} + dt * B * x
        y   = (<C, h_t> + D x) * silu(z)      (2 Re<C, h_t> for complex A)

    Applied to the tokens of a sequence one after the other it reproduces
    :func:`selective_scan` exactly.  Not in the official package (whose
    function writes into ``state``).  Computed in float64 (complex128 for
    complex A).

    Examples
    --------
    >>> import numpy as np
    >>> from ssm_ref import selective_state_step
    >>> h = np.zeros((1, 1, 1))
    >>> for u_t in [1.0, 1.0, 1.0]:
    ...     y, h = selective_state_step(h, [[u_t]], [[0.5]], [[-1.0]], [[1.0]], [[1.0]])
    >>> y
    array([[0.98720505]])
    """
    s = check_step_args(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    y, h, _ = _state_step(s)
    new_state = h.reshape(s.state.shape).astype(s.new_state_dtype)
    return y.reshape(s.x.shape).astype(s.x.dtype), new_state


def _state_step(s):
    """The step on checked arguments: ``(y (B, dim) float64, h (n, dim, N), valid)``.

    ``h`` holds the new state of the ``n`` batch entries that own a state row
    (all of them without ``state_batch_indices``; ``valid`` says which
    otherwise, see :meth:`StepArgs.valid`); padding entries get ``y = 0``.
    """
    # [book:state-step]
    xp, dim = s.xp, s.dim
    work = np.complex128 if s.is_complex else np.float64
    valid = s.valid()
    take = (lambda X: X) if valid is None else (lambda X: X[valid])
    state = s.flat("state")  # (S, D, N)
    h_prev = state if valid is None else state[s.indices[valid]]  # (n, D, N)

    def per_channel(X):  # (B, G', N) -> (n, D or 1, N): channel d reads group d // (D // G')
        X = take(s.flat(X).astype(work))
        return X if X.shape[1] == 1 else X.repeat(dim // X.shape[1], axis=1)

    Bc, Cc = per_channel("B"), per_channel("C")  # (n, D|1, N)
    step = take(s.step)  # (n, D): softplus(dt + dt_bias)
    xs = take(s.flat("x").astype(np.float64))  # (n, D)
    Abar = xp.exp(step[:, :, None] * s.flat("A").astype(work)[None])  # (n, D, N)
    h = Abar * h_prev.astype(work) + (step * xs)[:, :, None] * Bc  # (n, D, N)
    y = xp.sum(Cc * h, axis=-1)  # (n, D): <C, h_t>
    if s.is_complex:
        y = 2.0 * y.real
    if s.D is not None:
        y = y + s.flat("D").astype(np.float64)[None, :] * xs
    if s.z is not None:
        y = y * silu(take(s.flat("z").astype(np.float64)))
    # [/book:state-step]
    if valid is not None:  # padding entries: output 0, no state row
        y_all = xp.zeros((s.batch, dim), np.float64)
        y_all[valid] = y
        y = y_all
    return y, h, valid


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
    s = check_scan_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0)
    batch, dim, length, dstate = s.batch, s.dim, s.length, s.dstate
    xp, work = s.xp, s.work_dtype
    dout = check_shape(as_array(dout, "dout", allow_complex=False, ndim=3, bfloat16=True),
                       "dout", (batch, dim, length))
    if dlast_state is not None:
        dlast_state = as_array(dlast_state, "dlast_state", allow_complex=s.is_complex, ndim=3,
                               bfloat16=True)
        check_shape(dlast_state, "dlast_state", (batch, dim, dstate))
    _one_module({"delta": s.delta, "dout": dout, "dlast_state": dlast_state})
    check_finite(dout, "dout")
    dout = dout.astype(np.float64)  # (B, D, L)
    if dlast_state is not None:
        check_finite(dlast_state, "dlast_state")
        dlast_state = dlast_state.astype(work)  # (B, D, N)

    u, delta, Am = s.u, s.step, s.A
    scale = 2.0 if s.is_complex else 1.0  # y = 2 Re<C, h> for complex A
    Bt = xp.moveaxis(s.form_B.per_channel(s.B, dim), 3, 2)  # (B|1, D|1, L|1, N)
    Ct = xp.moveaxis(s.form_C.per_channel(s.C, dim), 3, 2)  # (B|1, D|1, L|1, N)

    # forward again, keeping every state: the backward needs h_{t-1} at every step
    Abar = xp.exp(delta[:, :, :, None] * Am[None, :, None, :])  # (B, D, L, N)
    Bbar_u = (delta * u)[:, :, :, None] * Bt  # (B, D, L, N)
    h_init = s.initial_state()  # (B, D, N)
    hs = xp.empty((batch, dim, length, dstate), dtype=work)  # (B, D, L, N)
    h = h_init
    for t in range(length):
        h = Abar[:, :, t] * h + Bbar_u[:, :, t]  # (B, D, N)
        hs[:, :, t] = h
    h_prev = xp.concatenate([h_init[:, :, None, :], hs[:, :, :-1]], axis=2)  # (B, D, L, N)
    v, _ = _skip_and_gate(s, xp.sum(Ct * hs, axis=-1))  # (B, D, L), y + D u before the gate

    grads = dict.fromkeys(["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"])

    # output: gate, then skip
    if s.z is not None:
        grads["z"] = dout * v * _silu_grad(s.z)  # (B, D, L)
        dy = dout * silu(s.z)  # (B, D, L)
    else:
        dy = dout
    du = xp.zeros_like(u)  # (B, D, L)
    if s.D is not None:
        grads["D"] = xp.sum(dy * u, axis=(0, 2))  # (D,)
        du += dy * s.D[None, :, None]

    # readout y_t = s Re<C_t, h_t>
    dC = scale * dy[..., None] * xp.conj(hs)  # (B, D, L, N)
    dh_out = scale * dy[..., None] * xp.conj(Ct)  # (B, D, L, N)

    # reverse scan for g_t = dLoss/dh_t  (eq-selective-backward)
    gs = xp.empty((batch, dim, length, dstate), dtype=work)  # (B, D, L, N)
    g = xp.zeros((batch, dim, dstate), work) if dlast_state is None else dlast_state.copy()
    for t in range(length - 1, -1, -1):
        g = g + dh_out[:, :, t]  # (B, D, N)
        gs[:, :, t] = g
        g = xp.conj(Abar[:, :, t]) * g  # carried to h_{t-1}
    if s.h0 is not None:
        grads["h0"] = g  # (B, D, N)

    # h_t = Abar_t h_{t-1} + delta_t u_t B_t
    g_dA = xp.conj(Abar * h_prev) * gs  # (B, D, L, N): gradient w.r.t. delta_t * A
    grads["A"] = xp.sum(delta[..., None] * g_dA, axis=(0, 2))  # (D, N)
    g_BB = xp.sum(xp.conj(Bt) * gs, axis=-1).real  # (B, D, L): Re sum_n conj(B_t) g_t
    ddelta = xp.sum(xp.conj(Am)[None, :, None, :] * g_dA, axis=-1).real + u * g_BB
    du += delta * g_BB
    dB = (delta * u)[..., None] * gs  # (B, D, L, N)

    # delta = softplus(delta + delta_bias)
    if s.delta_softplus:
        raw = s.delta if s.delta_bias is None else s.delta + s.delta_bias[None, :, None]
        ddelta = ddelta * _softplus_grad(raw)  # (B, D, L)
    grads["u"], grads["delta"] = du, ddelta
    if s.delta_bias is not None:
        grads["delta_bias"] = xp.sum(ddelta, axis=(0, 2))  # (D,)

    grads["B"] = s.form_B.reduce(xp.moveaxis(dB, 2, 3), s.groups("B"))
    grads["C"] = s.form_C.reduce(xp.moveaxis(dC, 2, 3), s.groups("C"))

    # back to each argument's own dtype; real arguments get the real part
    for name, grad in grads.items():
        if grad is not None:
            grads[name] = s.grad_as_given(name, grad)  # an interleaved B/C: interleaved again
    return grads
