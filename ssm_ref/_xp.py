"""Which array module owns an array: NumPy on the host, CuPy on a GPU.

The layers, blocks, models, optimisers and the training loop of ``ssm_ref``
are written once against an *array module* ``xp`` (``numpy`` or ``cupy``,
which share one API) and look it up from their inputs::

    xp = array_module(x, W)     # cupy if any argument is a CuPy array
    y = xp.exp(x) @ W.T         # runs where x lives

so the same readable code trains on a laptop CPU and, unchanged, on CuPy
arrays on one GPU without copying activations to the host.  Three rules keep
a GPU step free of host round-trips:

1. create arrays with ``xp`` (``xp.zeros``, ``xp.asarray``), never ``np``;
2. never turn a device value into a Python number inside a step
   (``float(x)``, ``bool(x)``, ``if x.any():``): each such call waits for the
   GPU and copies to the host;
3. move index arrays (scan orders) to the device once, with :func:`on_module_cached`.

CuPy is imported only when a CuPy array is met.  Other array libraries with
NumPy's API can be registered with :func:`register_array_module` (the tests
register a strict fake device library to check rules 1-3 without a GPU).
"""
from __future__ import annotations

import numpy as np

__all__: list[str] = []  # private module: nothing is re-exported

#: Array types (other than CuPy's, found by module name) and their modules.
_REGISTERED: dict[type, object] = {}


def register_array_module(array_type, module):
    """Make :func:`array_module` answer ``module`` for instances of ``array_type``.

    ``module`` must offer NumPy's creation and math functions (``asarray``,
    ``zeros``, ``exp``, ``einsum``, ...) and ``asnumpy`` (copy to the host).
    Returns a function that undoes the registration.
    """
    _REGISTERED[array_type] = module

    def unregister():
        _REGISTERED.pop(array_type, None)

    return unregister


def is_cupy(x):
    """True for a CuPy array, told by its type's module (CuPy is not imported)."""
    return type(x).__module__.split(".")[0] == "cupy"


def _module_of(x):
    if type(x) is np.ndarray:  # the common case, on every layer call: answered first
        return None
    if is_cupy(x):
        import cupy  # noqa: PLC0415 - only reached with a CuPy array in hand
        return cupy
    for cls, module in _REGISTERED.items():
        if isinstance(x, cls):
            return module
    return None


def array_module(*arrays):
    """``numpy``, or the device module (CuPy) of the first device array among ``arrays``.

    ``None`` entries, Python scalars and NumPy arrays all mean NumPy.

    Examples
    --------
    >>> import numpy as np
    >>> array_module(np.ones(2), None, 3.0) is np
    True
    """
    for x in arrays:
        if x is None:
            continue
        module = _module_of(x)
        if module is not None:
            return module
    return np


#: Device copies of small host arrays, keyed by (array module, GPU, dtype, shape, bytes).
#: A training step gathers with the same few scan orders every time, so each is copied
#: to the device once.
_DEVICE_COPIES: dict = {}
_DEVICE_COPIES_SIZE = 512


def on_module_cached(arr, xp):
    """``arr`` (a small NumPy array: scan order, cell counts) as an array of module ``xp``.

    NumPy gets ``arr`` itself.  For a device module the copy is made once and
    reused, so gathering with the same order every step makes no host-to-device
    copy; looking it up hashes the host bytes (host work only).  The copy is
    shared by every caller (never write into it); each GPU gets its own.
    """
    if xp is np:
        return arr
    key = (xp, current_device(xp), arr.dtype.str, arr.shape, arr.tobytes())
    dev = _DEVICE_COPIES.get(key)
    if dev is None:
        if len(_DEVICE_COPIES) >= _DEVICE_COPIES_SIZE:
            _DEVICE_COPIES.pop(next(iter(_DEVICE_COPIES)))  # drop the oldest
        dev = _DEVICE_COPIES[key] = on_module(arr, xp)
    return dev


def special(xp):
    """The ``scipy.special`` of array module ``xp`` (for ``erf`` and friends).

    ``scipy.special`` for NumPy, ``cupyx.scipy.special`` for CuPy, and the
    ``special`` attribute of a registered module.
    """
    if xp is np:
        import scipy.special  # noqa: PLC0415
        return scipy.special
    if getattr(xp, "__name__", "") == "cupy":
        import cupyx.scipy.special  # noqa: PLC0415
        return cupyx.scipy.special
    return xp.special


def current_device(xp):
    """The GPU that new arrays of ``xp`` go to (CuPy's current device), or None.

    Caches of device copies key on it, so that a second GPU gets its own copy.
    """
    runtime = getattr(getattr(xp, "cuda", None), "runtime", None)
    return None if runtime is None else runtime.getDevice()


def is_device(x):
    """True when ``x`` is a device (non-NumPy) array of a known array module."""
    return _module_of(x) is not None


def to_host(x):
    """A NumPy array of ``x`` (an explicit device-to-host copy for device arrays).

    Examples
    --------
    >>> to_host([1.0, 2.0])
    array([1., 2.])
    """
    module = _module_of(x)
    if module is None:
        return np.asarray(x)
    return module.asnumpy(x)


def on_module(x, xp):
    """``x`` (a NumPy array, e.g. an index array) as an array of module ``xp``.

    Returns ``x`` itself for NumPy; otherwise one host-to-device copy.  Callers
    that reuse the result every step cache it (see ``ssm_ref.vision.multi``).
    """
    if xp is np:
        return to_host(x)
    if _module_of(x) is xp:
        return x
    return xp.asarray(to_host(x))
