"""Input checks shared by the public entry points of ``ssm_ref`` and ``fast``.

Every check raises ``ValueError`` or ``TypeError`` whose message names the
argument, what it got (shape, dtype or value) and what was expected, in the
style of ``scipy.signal``: ``"Parameter A has shape (3, 2) but should be (3, 3)"``.
Validation happens at public entry points only; inner helpers trust their input.
"""
from __future__ import annotations

import numbers

import numpy as np

from ._xp import array_module, is_device

__all__: list[str] = []  # private module: nothing is re-exported


def as_array(x, name, *, allow_complex=True, ndim=None, dtype=None, bfloat16=False):
    """Return ``x`` as a float/complex array, or raise naming ``name``.

    Integers and booleans are promoted to float64; object and string arrays
    are refused.  With ``bfloat16``, an ``ml_dtypes.bfloat16`` array is
    accepted as it is (the scan functions compute it in float32 or float64).
    ``ndim`` may be an int or a tuple of allowed ints.  A device array (CuPy)
    stays on its device: the result is of ``x``'s array module.
    """
    if x is None:
        raise TypeError(f"Parameter {name} is None but an array was expected")
    xp = array_module(x)
    arr = xp.asarray(x) if dtype is None else xp.asarray(x, dtype=dtype)
    if arr.dtype.kind in "biu":
        arr = arr.astype(np.float64)
    if arr.dtype.kind not in "fc" and not (bfloat16 and arr.dtype.name == "bfloat16"):
        raise TypeError(
            f"Parameter {name} has dtype {arr.dtype} but a real or complex "
            "floating-point array was expected"
        )
    if arr.dtype.kind == "c" and not allow_complex:
        raise TypeError(f"Parameter {name} is complex ({arr.dtype}) but must be real")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(
                f"Parameter {name} has shape {arr.shape} ({arr.ndim}-D) "
                f"but should be {want}-D"
            )
    return arr


def check_shape(arr, name, expected):
    """Raise unless ``arr.shape == expected``; ``None`` entries match any size.

    ``expected`` is a tuple; symbolic names can be given as strings in a
    second form ``(("B", 2), ("D", 4))`` but the plain tuple is enough here.
    """
    shape = tuple(arr.shape)
    ok = len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected)
    )
    if not ok:
        want = "(" + ", ".join("any" if e is None else str(e) for e in expected)
        want += ",)" if len(expected) == 1 else ")"
        raise ValueError(f"Parameter {name} has shape {shape} but should be {want}")
    return arr


def check_finite(arr, name):
    """Raise ``ValueError`` if ``arr`` holds NaN or infinity (host arrays only).

    On a device array (CuPy) the check is skipped: it would make the GPU wait
    and copy a flag to the host in every layer of every step.  The training
    loop checks the loss once per epoch instead, and a NaN that gets in
    propagates to that loss.
    """
    if is_device(arr):
        return arr
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(
            f"Parameter {name} has {bad} non-finite value(s) (NaN or inf); "
            "all entries must be finite"
        )
    return arr


def a_from_log(A_log, name):
    """Mamba's ``A = -exp(A_log)``, refusing an ``A_log`` whose exponential overflows.

    ``name`` is the parameter's name (``A_log``, ``A_b_log``, ``A_logs``): an
    overflow is a problem of that parameter, not of A.  The check runs on host
    arrays only (see :func:`check_finite`).

    Examples
    --------
    >>> a_from_log(np.zeros((1, 2)), "A_log")
    array([[-1., -1.]])
    """
    xp = array_module(A_log)
    with np.errstate(over="ignore", invalid="ignore"):
        A = -xp.exp(A_log)
    if not is_device(A) and not np.all(np.isfinite(A)):
        bad = int(np.size(A) - np.count_nonzero(np.isfinite(A)))
        limit = float(np.log(np.finfo(A.dtype).max))
        raise ValueError(
            f"Parameter {name} has {bad} value(s) (max {float(np.nanmax(A_log)):.6g}) whose "
            f"A = -exp({name}) is not finite in {A.dtype}; expected finite {name} < {limit:.6g}"
        )
    return A


def check_nonempty(arr, name):
    """Raise ``ValueError`` if any axis of ``arr`` has length 0 (naming ``name`` and its shape)."""
    if 0 in tuple(arr.shape):
        raise ValueError(f"Parameter {name} has shape {tuple(arr.shape)} with an empty axis; "
                         "every size must be >= 1")
    return arr


def check_bool(x, name):
    """Raise ``TypeError`` unless ``x`` is a bool (Python's or NumPy's)."""
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"Parameter {name} = {x!r} must be a bool")
    return bool(x)


def check_positive_scalar(x, name):
    """Return ``x`` as a float after checking it is a finite number > 0."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"Parameter {name} = {x!r} must be a real number")
    x = float(x)
    if not np.isfinite(x) or x <= 0:
        raise ValueError(f"Parameter {name} = {x!r} must be finite and > 0")
    return x


def check_positive_int(x, name, minimum=1):
    """Return ``x`` as an int after checking it is an integer >= ``minimum``."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        raise TypeError(f"Parameter {name} = {x!r} must be an integer")
    x = int(x)
    if x < minimum:
        raise ValueError(f"Parameter {name} = {x} must be >= {minimum}")
    return x


def check_choice(value, name, choices):
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(
            f"Parameter {name} = {value!r} is not one of {sorted(choices)}"
        )
    return value
