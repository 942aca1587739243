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
            if shape == (batch, dstate, 2 * length) and np.dtype(dtype).kind == "f":
                raise ValueError(
                    f"Parameter {name} has shape {shape} but should be "
                    f"({batch}, {dstate}, {length}); it looks like the official "
                    "real/imaginary interleaved layout of mamba_ssm for complex A: "
                    "pass a genuinely complex array instead "
                    "(X[..., 0::2] + 1j * X[..., 1::2])"
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

    def groups(self, name):
        """G of the argument ``name`` ("B" or "C"): its group count, or 1."""
        form = self.form_B if name == "B" else self.form_C
        return getattr(self, name).shape[1] if form is BCForm.GROUPED else 1

    def initial_state(self):
        """h_{-1}, (B, D, N) in the working dtype: a copy of ``h0``, or zeros."""
        if self.h0 is None:
            return self.xp.zeros((self.batch, self.dim, self.dstate), self.work_dtype)
        return self.h0.astype(self.work_dtype)  # a copy: the caller's h0 is never written


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
    of the arrays as given.
    """
    if u is None and not u_optional:
        raise TypeError("Parameter u is None but an array of shape (B, D, L) was expected")
    delta = as_array(delta, "delta", allow_complex=False, ndim=3)
    if u is not None:
        u = as_array(u, "u", allow_complex=False, ndim=3)
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
    A = as_array(A, "A", ndim=2)
    check_shape(A, "A", (dim, None))
    dstate = A.shape[1]
    if dstate < 1:
        raise ValueError(
            f"Parameter A has shape {A.shape} (D, N): N = 0 states; N must be >= 1"
        )
    is_complex = A.dtype.kind == "c"
    B = as_array(B, "B")
    C = as_array(C, "C")
    for X, name in ((B, "B"), (C, "C")):
        _check_complex_bc(X, name, A)
    form_B = BCForm.of(B, B.dtype, "B", batch, dim, length, dstate)
    form_C = BCForm.of(C, C.dtype, "C", batch, dim, length, dstate)
    if D is not None:
        D = check_shape(as_array(D, "D", allow_complex=False, ndim=1), "D", (dim,))
    if z is not None:
        z = check_shape(as_array(z, "z", allow_complex=False, ndim=3), "z",
                        (batch, dim, length))
    if delta_bias is not None:
        delta_bias = check_shape(
            as_array(delta_bias, "delta_bias", allow_complex=False, ndim=1),
            "delta_bias", (dim,))
    if h0 is not None:
        h0 = check_shape(as_array(h0, "h0", allow_complex=is_complex, ndim=3), "h0",
                         (batch, dim, dstate))
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
    return ScanArgs(**arrays, delta_softplus=bool(delta_softplus), form_B=form_B,
                    form_C=form_C, batch=batch, dim=dim, length=length, dstate=dstate,
                    is_complex=is_complex, xp=xp, dtypes=MappingProxyType(dtypes))


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

@dataclasses.dataclass(frozen=True, eq=False)
class StepArgs:
    """The checked arguments of one decoding step (:func:`check_step_args`).

    Arrays as given: ``state`` (B, D, N), ``x, dt, z`` (B, D), ``A`` (D, N),
    ``B, C`` (B, N) or (B, G, N), ``D, dt_bias`` (D,); plus the step
    ``softplus(dt + dt_bias)`` (B, D) in float64.
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
    is_complex: bool
    xp: ModuleType
    step: Any

    @property
    def new_state_dtype(self):
        """The dtype of the returned state: ``state``'s (its complex partner for complex A)."""
        dtype = self.state.dtype
        return _with_complex(dtype, self.is_complex) if dtype.kind == "f" else dtype


def check_step_args(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Check every argument of the decoding step; return a :class:`StepArgs`.

    Shared by :func:`ssm_ref.selective_state_update` and the Numba backend.
    Value checks (finite, Re(A) <= 0, step >= 0) run on NumPy arrays only.
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
    bc = {}
    for X, name in ((B, "B"), (C, "C")):  # one step of the variable or grouped form
        X = as_array(X, name, ndim=(2, 3))
        _check_complex_bc(X, name, A)
        if X.ndim == 3:
            check_groups(X.shape, name, dim)
        bc[name] = check_shape(X, name, (batch, dstate) if X.ndim == 2
                               else (batch, None, dstate))
    optional = {}
    for arr, name, shape in ((D, "D", (dim,)), (z, "z", (batch, dim)),
                             (dt_bias, "dt_bias", (dim,))):
        optional[name] = None if arr is None else check_shape(
            as_array(arr, name, allow_complex=False, ndim=len(shape)), name, shape)
    check_bool(dt_softplus, "dt_softplus")
    arrays = dict(state=state, x=x, dt=dt, A=A, **bc, **optional)
    xp = one_module(arrays)
    for name, arr in arrays.items():
        if arr is not None:
            check_finite(arr, name)
    if xp is np and np.any(A.real > 0):  # value checks: host arrays only
        raise ValueError(
            f"Parameter A has {int(np.sum(A.real > 0))} entries with positive real part; "
            "A must have Re(A) <= 0"
        )
    step = dt.astype(np.float64)  # (B, D)
    if dt_bias is not None:
        step = step + optional["dt_bias"][None, :]
    if dt_softplus:
        step = softplus(step)
    if xp is np and np.any(step < 0):
        raise ValueError(
            f"Parameter dt has {int(np.sum(step < 0))} negative step(s) after dt_bias"
            f"{' and softplus' if dt_softplus else ''}; pass dt >= 0 or dt_softplus=True"
        )
    return StepArgs(**arrays, dt_softplus=bool(dt_softplus), is_complex=is_complex, xp=xp,
                    step=step)
