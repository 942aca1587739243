"""The arguments of the selective scan, checked once: :class:`ScanArgs`.

Glossary
--------
======  ================================================================
B       batch size (the *matrix* B is the argument ``B``; sizes say ``batch``)
L       sequence length (``length``)
D       channels (``dim``); the skip vector is the argument ``D``
N       state size per channel (``dstate``)
G       number of groups sharing one input-dependent B (or C)
======  ================================================================

Every function that takes the scan's arguments (the reference scan and its
backward in :mod:`ssm_ref.selective`, :func:`ssm_ref.hidden_attention`, the
Numba and CUDA backends in :mod:`fast`) checks them with one call,
:func:`check_scan_args` (or its cheap half :func:`check_scan_structure`),
and reads them as attributes of the frozen :class:`ScanArgs` it returns, so
that every entry point accepts and refuses exactly the same inputs with the
same messages.  The decoding step has its own, smaller :class:`StepArgs`.

The forms of B and C
--------------------
B and C each come in one of three forms (:class:`BCForm`), the table below
and nowhere else:

==========  ================  ==============================  ==================
form        shape             meaning                         4-D view
==========  ================  ==============================  ==================
constant    (D, N)            one B per channel, the same     (1, D, N, 1)
                              at every step (an LTI SSM)
variable    (B, N, L)         input-dependent, shared by      (B, 1, N, L)
                              every channel (Mamba)
grouped     (B, G, N, L)      input-dependent in G groups;    (B, G, N, L)
                              channel d reads group
                              d // (D // G); G divides D
==========  ================  ==============================  ==================

With complex A, a variable or grouped B/C may come in the official
interleaved real layout ``(B, [G,] N, 2L)`` (real and imaginary parts
alternating along the last axis): :func:`check_scan_structure` reads it as the
complex ``(B, [G,] N, L)`` array (:func:`deinterleave`), records the name in
``ScanArgs.interleaved``, and :meth:`ScanArgs.grad_as_given` interleaves its
gradient back.

The 4-D view ``(B|1, G', N, L|1)`` (``G'`` = D, 1 or G) is the one layout
the kernels read: channel d of batch b at step t reads
``view[b or 0, d // (D // G'), :, t or 0]``.  The decoding step's B and C are
one time step of the variable (B, N) or grouped (B, G, N) form.
"""
from __future__ import annotations

import dataclasses
import enum
from types import MappingProxyType, ModuleType
from typing import Any, Mapping, Optional

import numpy as np

from ._validation import as_array, check_bool, check_finite, check_shape
from ._xp import array_module
from .nn import softplus

__all__: list[str] = []  # used inside the two packages; nothing is re-exported

#: the scan's array arguments, in signature order
ARRAY_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")


# ---------------------------------------------------------------------------
# the forms of B and C
# ---------------------------------------------------------------------------

def check_groups(shape, name, dim):
    """Raise unless the group count ``shape[1]`` divides the channels ``dim``."""
    groups = shape[1]
    if groups < 1 or dim % groups != 0:
        raise ValueError(
            f"Parameter {name} has shape {tuple(shape)}: its group count G = {groups} "
            f"must divide the number of channels D = {dim}"
        )


class BCForm(enum.Enum):
    """The form of B or C: constant (D, N), variable (B, N, L) or grouped (B, G, N, L)."""

    CONSTANT = "constant"
    VARIABLE = "variable"
    GROUPED = "grouped"

    @classmethod
    def of(cls, X, dtype, name, batch, dim, length, dstate):
        """The form of ``X`` (anything with ``.shape``), or raise naming ``name``.

        ``dtype`` is ``X``'s NumPy dtype (a real (B, N, 2L) array is refused
        with a hint: it is the official interleaved layout of complex B/C).
        """
        shape = tuple(X.shape)
        if len(shape) == 2:
            check_shape(X, name, (dim, dstate))
            return cls.CONSTANT
        if len(shape) == 3:
            if shape == (batch, dstate, 2 * length) and np.dtype(dtype).kind != "c":
                raise ValueError(
                    f"Parameter {name} has shape {shape} but should be "
                    f"({batch}, {dstate}, {length}); it looks like the official "
                    "real/imaginary interleaved layout of mamba_ssm, which is read "
                    "only with a complex A (here A is real)"
                )
            check_shape(X, name, (batch, dstate, length))
            return cls.VARIABLE
        if len(shape) == 4:
            check_groups(shape, name, dim)
            check_shape(X, name, (batch, shape[1], dstate, length))
            return cls.GROUPED
        raise ValueError(
            f"Parameter {name} has shape {shape} ({len(shape)}-D) but should be "
            f"({dim}, {dstate}) constant, ({batch}, {dstate}, {length}) variable, "
            f"or ({batch}, G, {dstate}, {length}) grouped"
        )

    def view_shape(self, shape):
        """The 4-D view (B|1, G', N, L|1) of an argument of this form and ``shape``."""
        if self is BCForm.CONSTANT:
            dim, dstate = shape
            return (1, dim, dstate, 1)
        if self is BCForm.VARIABLE:
            batch, dstate, length = shape
            return (batch, 1, dstate, length)
        return tuple(shape)

    def per_channel(self, X, dim):
        """``X`` as (B|1, D|1, N, L|1): the B (or C) that every channel reads."""
        if self is BCForm.GROUPED:
            return X.repeat(dim // X.shape[1], axis=1)  # (B, G, N, L) -> (B, D, N, L)
        return X.reshape(self.view_shape(X.shape))  # (1, D, N, 1) or (B, 1, N, L)

    def at(self, X, t, dim):
        """The B_t (or C_t) every channel reads at step ``t``: (B|1, D|1, N)."""
        if self is BCForm.CONSTANT:
            return X[None]  # (D, N) -> (1, D, N)
        if self is BCForm.VARIABLE:
            return X[:, None, :, t]  # (B, N, L) -> (B, 1, N)
        return X[..., t].repeat(dim // X.shape[1], axis=1)  # (B, G, N, L) -> (B, D, N)

    def reduce(self, g, groups):
        """Sum a per-channel gradient (B, D, N, L) back to this form's shape."""
        if self is BCForm.CONSTANT:
            return g.sum(axis=(0, 3))  # (D, N)
        if self is BCForm.VARIABLE:
            return g.sum(axis=1)  # (B, N, L)
        batch, dim, dstate, length = g.shape
        g = g.reshape(batch, groups, dim // groups, dstate, length)  # (B, G, D/G, N, L)
        return g.sum(axis=2)  # (B, G, N, L)


def step_view_shape(shape):
    """The 3-D view (B, G', N) of the decoding step's B or C: (B, N) -> (B, 1, N); (B, G, N) stays.

    One time step of the variable or grouped form; channel d reads group
    ``d // (D // G')``, as in the scan.
    """
    if len(shape) == 2:
        batch, dstate = shape
        return (batch, 1, dstate)
    return tuple(shape)


# ---------------------------------------------------------------------------
# one array module for all arguments
# ---------------------------------------------------------------------------

def one_module(arrays):
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


def _is_bfloat16(dtype):
    """True for ``ml_dtypes.bfloat16`` (NumPy's dtype kind "V", so told by name)."""
    return np.dtype(dtype).name == "bfloat16"


def _with_complex(real_dtype, is_complex):
    """``real_dtype``, or its complex partner (complex64 for float32) when ``is_complex``."""
    return np.result_type(real_dtype, np.complex64) if is_complex else np.dtype(real_dtype)


def _check_complex_bc(X, name, A):
    if X.dtype.kind == "c" and A.dtype.kind != "c":
        raise TypeError(
            f"Parameter {name} is complex ({X.dtype}) but A is real ({A.dtype}); "
            "complex B/C need a complex A"
        )


# ---------------------------------------------------------------------------
# the scan's arguments
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class ScanArgs:
    """The checked arguments of one selective scan, and what was learnt checking them.

    Built by :func:`check_scan_structure` (arrays as given) or
    :func:`check_scan_args` (arrays in the working precision, plus ``step``);
    the CUDA backend builds one for device arrays of libraries without an
    array module here (Numba, PyTorch), after checking their shapes and dtypes
    with :meth:`BCForm.of` and ``check_shape`` (``xp`` is then None).
    Shapes: ``u, delta, z`` (B, D, L); ``A`` (D, N); ``B, C`` in their
    :class:`BCForm`; ``D, delta_bias`` (D,); ``h0`` (B, D, N).
    """

    u: Any  # None only for hidden attention
    delta: Any
    A: Any
    B: Any
    C: Any
    D: Any  # the optional arrays are None when not given
    z: Any
    delta_bias: Any
    delta_softplus: bool
    h0: Any
    form_B: BCForm
    form_C: BCForm
    batch: int
    dim: int
    length: int
    dstate: int
    is_complex: bool
    xp: Optional[ModuleType]
    #: the dtype each array argument was given in (results are cast back to it)
    dtypes: Mapping[str, np.dtype]
    #: softplus(delta + delta_bias), (B, D, L), float64; None from check_scan_structure
    step: Optional[Any] = None
    #: the names ("B", "C") given in the official interleaved real layout (B, [G,] N, 2L)
    #: for complex A; their attributes hold the complex (B, [G,] N, L) arrays
    interleaved: frozenset = frozenset()

    @property
    def out_dtype(self):
        """The dtype of the output: ``u``'s (``delta``'s when there is no ``u``)."""
        return self.dtypes.get("u", self.dtypes["delta"])

    @property
    def work_dtype(self):
        """The working precision: complex128 for complex A, else float64."""
        return np.dtype(np.complex128 if self.is_complex else np.float64)

    @property
    def state_dtype(self):
        """The dtype of the returned last state: ``A``'s (complex for complex A).

        As the official ``selective_scan_ref``, whose state is ``A.new_zeros(...)``.
        """
        return self.dtypes["A"]

    def grad_as_given(self, name, grad):
        """The gradient ``grad`` of argument ``name`` in the dtype and layout it was given in.

        A real argument gets the real part; a B or C given in the interleaved
        real layout gets its complex gradient interleaved the same way
        (``dL/dRe`` at even, ``dL/dIm`` at odd positions of the last axis).
        """
        target = self.dtypes[name]
        if name in self.interleaved:
            return interleave(grad, target)
        return (grad if target.kind == "c" else grad.real).astype(target, copy=False)

    def groups(self, name):
        """G of the argument ``name`` ("B" or "C"): its group count, or 1."""
        form = self.form_B if name == "B" else self.form_C
        return getattr(self, name).shape[1] if form is BCForm.GROUPED else 1

    def initial_state(self):
        """h_{-1}, (B, D, N) in the working dtype: a copy of ``h0``, or zeros."""
        if self.h0 is None:
            return self.xp.zeros((self.batch, self.dim, self.dstate), self.work_dtype)
        return self.h0.astype(self.work_dtype)  # a copy: the caller's h0 is never written


def _interleaved_layout(X, batch, dstate, length):
    """True for a real B/C in the official interleaved layout (B, N, 2L) or (B, G, N, 2L)."""
    shape = tuple(X.shape)
    if X.dtype.kind == "c" or len(shape) not in (3, 4) or shape[-1] != 2 * length:
        return False
    return shape[0] == batch and shape[-2] == dstate


def deinterleave(X):
    """The official interleaved real layout, read as complex: ``X[..., 2t] + 1j X[..., 2t+1]``.

    As the official ``selective_scan_ref`` reads it (``rearrange(B, "... (L two) ->
    ... L two", two=2)`` then ``torch.view_as_complex``): (..., 2L) real ->
    (..., L) complex, complex64 for float32 (and narrower), else complex128.

    Examples
    --------
    >>> import numpy as np
    >>> deinterleave(np.array([[[1.0, 2.0, 3.0, 4.0]]]))
    array([[[1.+2.j, 3.+4.j]]])
    """
    cdt = np.complex64 if np.dtype(X.dtype).itemsize <= 4 else np.complex128
    return X[..., 0::2].astype(cdt) + 1j * X[..., 1::2].astype(cdt)


def interleave(G, dtype):
    """The inverse of :func:`deinterleave`: complex (..., L) -> real (..., 2L) of ``dtype``."""
    xp = array_module(G)
    out = xp.empty(tuple(G.shape[:-1]) + (2 * G.shape[-1],), dtype)
    out[..., 0::2] = G.real.astype(dtype)
    out[..., 1::2] = G.imag.astype(dtype)
    return out


def check_scan_structure(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False, h0=None, *, u_optional=False):
    """The cheap half of the checks: dtypes, shapes, B/C forms, the small arrays.

    Checks every argument's dtype and shape, the forms of B and C, that all
    arrays live on one array module, and (for NumPy arrays) that the arrays
    without a length axis (and B, C) are finite and Re(A) <= 0.  It neither
    converts nor reads the values of the (B, D, L) arrays ``u``, ``delta``,
    ``z``: the Numba backend calls it and screens those inside its kernels.
    ``u`` may be None only with ``u_optional`` (hidden attention has no
    input); then the sizes come from ``delta``.  Returns a :class:`ScanArgs`
    of the arrays as given, except a B or C in the official interleaved real
    layout (complex A), which is read as its complex array
    (``ScanArgs.interleaved`` names it).
    """
    if u is None and not u_optional:
        raise TypeError("Parameter u is None but an array of shape (B, D, L) was expected")
    delta = as_array(delta, "delta", allow_complex=False, ndim=3, bfloat16=True)
    if u is not None:
        u = as_array(u, "u", allow_complex=False, ndim=3, bfloat16=True)
        batch, dim, length = u.shape
        if delta.shape != u.shape:
            raise ValueError(f"Parameter delta has shape {delta.shape} but should be "
                             f"{u.shape}, the shape (B, D, L) of u")
    else:
        batch, dim, length = delta.shape
    first = "u" if u is not None else "delta"
    if min(batch, dim, length) < 1:
        raise ValueError(
            f"Parameter {first} has shape {(batch, dim, length)} (B, D, L) with an empty "
            f"axis; every size must be >= 1"
        )
    A = as_array(A, "A", ndim=2, bfloat16=True)
    check_shape(A, "A", (dim, None))
    dstate = A.shape[1]
    if dstate < 1:
        raise ValueError(
            f"Parameter A has shape {A.shape} (D, N): N = 0 states; N must be >= 1"
        )
    is_complex = A.dtype.kind == "c"
    B = as_array(B, "B", bfloat16=True)
    C = as_array(C, "C", bfloat16=True)
    given_dtypes = {"B": B.dtype, "C": C.dtype}
    interleaved = frozenset(name for name, X in (("B", B), ("C", C))
                            if is_complex and _interleaved_layout(X, batch, dstate, length))
    if "B" in interleaved:
        B = deinterleave(B)  # (B, [G,] N, 2L) real -> (B, [G,] N, L) complex
    if "C" in interleaved:
        C = deinterleave(C)
    for X, name in ((B, "B"), (C, "C")):
        _check_complex_bc(X, name, A)
    form_B = BCForm.of(B, B.dtype, "B", batch, dim, length, dstate)
    form_C = BCForm.of(C, C.dtype, "C", batch, dim, length, dstate)
    if D is not None:
        D = check_shape(as_array(D, "D", allow_complex=False, ndim=1, bfloat16=True), "D",
                        (dim,))
    if z is not None:
        z = check_shape(as_array(z, "z", allow_complex=False, ndim=3, bfloat16=True), "z",
                        (batch, dim, length))
    if delta_bias is not None:
        delta_bias = check_shape(
            as_array(delta_bias, "delta_bias", allow_complex=False, ndim=1, bfloat16=True),
            "delta_bias", (dim,))
    if h0 is not None:
        h0 = check_shape(as_array(h0, "h0", allow_complex=is_complex, ndim=3, bfloat16=True),
                         "h0", (batch, dim, dstate))
    check_bool(delta_softplus, "delta_softplus")
    arrays = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, h0=h0)
    xp = one_module(arrays)
    for name in ("A", "B", "C", "D", "delta_bias", "h0"):
        if arrays[name] is not None:
            check_finite(arrays[name], name)
    if xp is np and np.any(A.real > 0):  # a value check: host arrays only
        raise ValueError(
            f"Parameter A has {int(np.sum(A.real > 0))} entries with positive real "
            f"part (max {A.real.max():.3g}); the recurrence would grow like "
            "exp(delta * Re(A) * L). A must have Re(A) <= 0 (Mamba uses A = -exp(A_log))"
        )
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    dtypes.update(given_dtypes)  # an interleaved B/C: the real dtype it was given in
    return ScanArgs(**arrays, delta_softplus=bool(delta_softplus), form_B=form_B,
                    form_C=form_C, batch=batch, dim=dim, length=length, dstate=dstate,
                    is_complex=is_complex, xp=xp, dtypes=MappingProxyType(dtypes),
                    interleaved=interleaved)


def check_scan_args(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                    delta_softplus=False, h0=None, *, u_optional=False):
    """Check every argument of the scan; return them in the working precision.

    :func:`check_scan_structure`, then the checks over the (B, D, L) arrays
    (finite), the conversion to float64 (complex128 for A, B, C, h0 when A is
    complex), the step ``softplus(delta + delta_bias)`` (eq-selective-delta)
    and the check that no step is negative.  Value checks run on NumPy arrays
    only (on a device they would make the GPU wait).

    Examples
    --------
    >>> import numpy as np
    >>> s = check_scan_args(np.ones((2, 3, 5)), np.ones((2, 3, 5)), -np.ones((3, 4)),
    ...                     np.ones((2, 4, 5)), np.ones((3, 4)))
    >>> s.batch, s.dim, s.length, s.dstate, s.form_B.value, s.form_C.value
    (2, 3, 5, 4, 'variable', 'constant')
    """
    s = check_scan_structure(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0,
                             u_optional=u_optional)
    for name in ("u", "delta", "z"):
        if getattr(s, name) is not None:
            check_finite(getattr(s, name), name)
    work = s.work_dtype  # float64, or complex128 for complex A
    promoted = {name: (None if getattr(s, name) is None
                       else getattr(s, name).astype(work if name in ("A", "B", "C", "h0")
                                                    else np.float64))
                for name in ARRAY_NAMES}
    step = promoted["delta"]  # (B, D, L)
    if s.delta_bias is not None:
        step = step + promoted["delta_bias"][None, :, None]
    if s.delta_softplus:
        step = softplus(step)
    if s.xp is np and np.any(step < 0):  # a value check: host arrays only
        raise ValueError(
            f"Parameter delta has {int(np.sum(step < 0))} negative step(s) after "
            f"delta_bias{' and softplus' if s.delta_softplus else ''} "
            f"(min {step.min():.3g}); a negative step makes |exp(delta * A)| > 1 and the "
            "recurrence grows. Pass delta >= 0 or use delta_softplus=True"
        )
    return dataclasses.replace(s, **promoted, step=step)


# ---------------------------------------------------------------------------
# the decoding step's arguments
# ---------------------------------------------------------------------------

#: the decoding step's array arguments, in signature order
STEP_NAMES = ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias")


@dataclasses.dataclass(frozen=True, eq=False)
class StepArgs:
    """The checked arguments of one decoding step (:func:`check_step_args`).

    Arrays as given, in one of the official package's two layouts:

    ==========  ===================  ==========================
    argument    single-head          multi-head (``heads``)
    ==========  ===================  ==========================
    state       (S, D, N)            (S, H, P, N)
    x, dt, z    (B, D)               (B, H, P)
    A           (D, N)               (H, P, N)
    B, C        (B, N) or (B, G, N)  (B, G, N), G divides H
    D, dt_bias  (D,)                 (H, P)
    ==========  ===================  ==========================

    ``S`` is the number of state rows: ``B`` without ``state_batch_indices``,
    the cache size with them.  Both layouts are one flat layout of
    ``dim = D`` (or ``H * P``) channels, channel ``h * P + p`` reading group
    ``channel // (dim // G)`` (head h reads group ``h // (H // G)``): the
    kernels read that flat layout (:meth:`flat`).  ``step`` is
    ``softplus(dt + dt_bias)`` in float64, flat (B, dim).  ``indices`` is the
    (B,) int64 array of state rows (negative: a padding entry), or None.
    """

    state: Any
    x: Any
    dt: Any
    A: Any
    B: Any
    C: Any
    D: Any
    z: Any
    dt_bias: Any
    dt_softplus: bool
    indices: Any
    heads: bool
    batch: int
    dim: int
    dstate: int
    is_complex: bool
    xp: ModuleType
    step: Any

    @property
    def new_state_dtype(self):
        """The dtype of a new state: ``state``'s (its complex partner for complex A)."""
        dtype = self.state.dtype
        return _with_complex(dtype, self.is_complex) if dtype.kind == "f" else dtype

    @property
    def rows(self):
        """The number of state rows S (the cache size with ``state_batch_indices``)."""
        return self.state.shape[0]

    def flat(self, name):
        """Argument ``name`` in the flat layout the kernels read (a view where possible).

        state (S, dim, N); x, dt, z (B, dim); A (dim, N); B, C (B, G', N)
        (G' = 1 for a (B, N) B or C); D, dt_bias (dim,).
        """
        X = getattr(self, name)
        if X is None:
            return None
        shapes = {"state": (self.rows, self.dim, self.dstate), "A": (self.dim, self.dstate),
                  "D": (self.dim,), "dt_bias": (self.dim,)}
        if name in ("x", "dt", "z"):
            return X.reshape(self.batch, self.dim)
        if name in ("B", "C"):
            return X.reshape(step_view_shape(X.shape))
        return X.reshape(shapes[name])

    def valid(self):
        """The batch entries that read and update a state row: an index array, or None (all).

        Entries with a negative index are padding (as the official kernel):
        their output is 0 and no state row is read or written.
        """
        if self.indices is None:
            return None
        return self.xp.nonzero(self.indices >= 0)[0]


def _step_array(x, name, *, allow_complex=True, ndim=None):
    """``as_array`` for the decoding step's arguments (bfloat16 kept as given)."""
    return as_array(x, name, allow_complex=allow_complex, ndim=ndim, bfloat16=True)


def check_step_args(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                    state_batch_indices=None, *, in_place=False):
    """Check every argument of the decoding step; return a :class:`StepArgs`.

    Shared by :func:`ssm_ref.selective_state_update`,
    :func:`ssm_ref.selective_state_step` and the fast backends.  The layout
    (single-head or multi-head) is read from ``state`` (3-D or 4-D) and every
    other argument must be in the same layout.  ``in_place``: ``state`` will
    be written, so it must be a writeable floating-point array (not a list,
    which would be converted to a copy and the update lost) and complex for
    complex A.  Value checks (finite, Re(A) <= 0, step >= 0) run on NumPy
    arrays only; ``state_batch_indices`` (range, duplicates) is checked on
    every array module, since a wrong index would write outside the cache.
    """
    if in_place:
        xp_state = array_module(state)
        if not hasattr(state, "shape") or not hasattr(state, "dtype"):
            raise TypeError(
                f"Parameter state is a {type(state).__name__}, but it is updated in place: "
                "pass an array (e.g. np.asarray(state, dtype=float))")
        if not (state.dtype.kind in "fc" or _is_bfloat16(state.dtype)):
            raise TypeError(
                f"Parameter state has dtype {state.dtype}; it is updated in place, so it "
                "must be a floating-point (or complex) array")
        if xp_state is np and isinstance(state, np.ndarray) and not state.flags.writeable:
            raise ValueError("Parameter state is read-only, but it is updated in place; "
                             "pass a writeable array (e.g. state.copy())")
    state = _step_array(state, "state", ndim=(3, 4))
    heads = state.ndim == 4
    x = _step_array(x, "x", allow_complex=False, ndim=3 if heads else 2)
    batch = x.shape[0]
    inner = tuple(x.shape[1:])  # (D,) or (H, P)
    dt = check_shape(_step_array(dt, "dt", allow_complex=False, ndim=x.ndim), "dt", x.shape)
    A = _step_array(A, "A", ndim=len(inner) + 1)
    check_shape(A, "A", inner + (None,))
    dstate = A.shape[-1]
    dim = int(np.prod(inner))
    if batch < 1 or dim < 1 or dstate < 1:
        raise ValueError(
            f"empty sizes: batch={batch}, D={dim}, N={dstate}; all must be >= 1 "
            f"(x has shape {tuple(x.shape)}, A has shape {tuple(A.shape)})")
    is_complex = A.dtype.kind == "c"
    if in_place and is_complex and state.dtype.kind != "c":
        raise TypeError(
            f"Parameter state is real ({state.dtype}) but A is complex ({A.dtype}); the "
            "new state is complex and is written into state: pass a complex state")
    state = _step_array(state, "state", allow_complex=is_complex, ndim=(3, 4))
    check_shape(state, "state", (None,) + inner + (dstate,))
    if state_batch_indices is None:
        check_shape(state, "state", (batch,) + inner + (dstate,))
    elif state.shape[0] < 1:
        raise ValueError(f"Parameter state has shape {tuple(state.shape)}: the cache "
                         "needs at least one row")
    nheads = inner[0] if heads else dim
    bc = {}
    for X, name in ((B, "B"), (C, "C")):  # one step of the variable or grouped form
        X = _step_array(X, name, ndim=3 if heads else (2, 3))
        _check_complex_bc(X, name, A)
        if X.ndim == 3:
            groups = X.shape[1]
            if groups < 1 or nheads % groups != 0:
                what = "heads H" if heads else "channels D"
                raise ValueError(
                    f"Parameter {name} has shape {tuple(X.shape)}: its group count "
                    f"G = {groups} must divide the number of {what} = {nheads}")
        bc[name] = check_shape(X, name, (batch, dstate) if X.ndim == 2
                               else (batch, None, dstate))
    optional = {}
    for arr, name, shape in ((D, "D", inner), (z, "z", x.shape), (dt_bias, "dt_bias", inner)):
        optional[name] = None if arr is None else check_shape(
            _step_array(arr, name, allow_complex=False, ndim=len(shape)), name, shape)
    check_bool(dt_softplus, "dt_softplus")
    arrays = dict(state=state, x=x, dt=dt, A=A, **bc, **optional)
    xp = one_module(arrays)
    indices = _check_indices(state_batch_indices, batch, state.shape[0], xp)
    for name, arr in arrays.items():
        if arr is not None:
            check_finite(arr, name)
    if xp is np and np.any(A.real > 0):  # value checks: host arrays only
        raise ValueError(
            f"Parameter A has {int(np.sum(A.real > 0))} entries with positive real part; "
            "A must have Re(A) <= 0")
    step = dt.astype(np.float64).reshape(batch, dim)  # (B, dim)
    if dt_bias is not None:
        step = step + optional["dt_bias"].astype(np.float64).reshape(1, dim)
    if dt_softplus:
        step = softplus(step)
    if xp is np and np.any(step < 0):
        raise ValueError(
            f"Parameter dt has {int(np.sum(step < 0))} negative step(s) after dt_bias"
            f"{' and softplus' if dt_softplus else ''}; pass dt >= 0 or dt_softplus=True")
    return StepArgs(**arrays, dt_softplus=bool(dt_softplus), indices=indices, heads=heads,
                    batch=batch, dim=dim, dstate=dstate, is_complex=is_complex, xp=xp,
                    step=step)


def _check_indices(indices, batch, rows, xp):
    """``state_batch_indices`` as an int64 (B,) array of ``xp``, or raise naming it.

    Non-negative entries must be distinct rows of the state cache (below
    ``rows``); a negative entry marks padding, as in the official kernel.
    """
    if indices is None:
        return None
    name = "state_batch_indices"
    if array_module(indices) is not xp:
        raise TypeError(f"Parameter {name} lives on {array_module(indices).__name__} but the "
                        f"other arrays on {xp.__name__}; pass all arrays on one array module")
    idx = xp.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"Parameter {name} has dtype {idx.dtype} but an integer array "
                        "was expected")
    check_shape(idx, name, (batch,))
    idx = idx.astype(np.int64)
    host = np.asarray(idx if xp is np else xp.asnumpy(idx))  # (B,) ints: one small copy
    if host.size and host.max() >= rows:
        raise ValueError(
            f"Parameter {name} has entries up to {int(host.max())} but state has only "
            f"{rows} rows (indices 0..{rows - 1}; a negative index marks padding)")
    used = host[host >= 0]
    if np.unique(used).size != used.size:
        values, counts = np.unique(used, return_counts=True)
        raise ValueError(
            f"Parameter {name} repeats row(s) {values[counts > 1].tolist()}; each state "
            "row can be updated by one batch entry only")
    return idx
