"""A strict stand-in for CuPy, to test the GPU code paths on a machine without a GPU.

``fake`` is an array module like ``cupy``: its arrays (:class:`DeviceArray`)
hold a NumPy array "on the device" and compute with NumPy, but they behave like
CuPy arrays where it matters for correctness on a real GPU, only stricter:

* ``np.asarray(device_array)`` raises ``TypeError`` (CuPy refuses implicit
  conversion to the host);
* mixing a device array with a NumPy array (``dev + host``, ``dev[host_index]``,
  ``np.stack([dev, host])``) raises ``TypeError``: on a GPU that is a silent
  host-to-device copy at every step, or an error;
* only names CuPy really has may be called (functions, ndarray methods and
  ufunc methods, read from ``tests/data/cupy_api.json``, dumped from CuPy);
  a NumPy function CuPy lacks raises ``TypeError`` naming it;
* only NumPy's own ufuncs dispatch (``scipy.special.expit(dev)`` raises);
* every read of a device value on the host is counted in :data:`COUNTS`:
  ``"sync"`` for ``float(x)``, ``int(x)``, ``bool(x)``, ``x.item()``,
  ``"to_host"`` for ``x.get()``, ``fake.asnumpy(x)``, ``x.tolist()``, and
  ``"to_device"`` for host data given to ``fake.asarray``/``fake.array``.

A test registers the module with ``ssm_ref._xp`` (fixture ``fake_xp`` in
``conftest.py``), runs code on ``fake.asarray(x)``, checks the results are
``DeviceArray`` equal to the NumPy run, and that ``COUNTS`` did not move
inside a training step.
"""
from __future__ import annotations

import functools
import json
import types
from pathlib import Path

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

_API = json.loads((Path(__file__).parent / "data" / "cupy_api.json").read_text())
CUPY_VERSION = _API["cupy_version"]
_FUNCTIONS = {mod: set(names) for mod, names in _API["functions"].items()}
_METHODS = set(_API["ndarray_methods"])
_UFUNC_METHODS = {k: set(v) for k, v in _API["ufunc_methods"].items()}

#: Host reads and transfers since the last :func:`reset_counts`.
COUNTS = {"sync": 0, "to_host": 0, "to_device": 0}
#: What ``COUNTS`` must read after a call that stayed on the device.
NO_HOST_TRAFFIC = {"sync": 0, "to_host": 0, "to_device": 0}

#: Functions that take host data and make a device array (a counted transfer).
_FROM_HOST = {"asarray", "array", "ascontiguousarray", "asanyarray"}


def on_device(tree):
    """Every NumPy array in a (nested) list/tuple/dict moved with ``fake.asarray``.

    Anything else (None, flags, numbers) is kept as it is.
    """
    if isinstance(tree, np.ndarray):
        return fake.asarray(tree)
    if isinstance(tree, (list, tuple)):
        return type(tree)(on_device(v) for v in tree)
    if isinstance(tree, dict):
        return {k: on_device(v) for k, v in tree.items()}
    return tree


def peek(x):
    """The host copy of a device array for a test's own checks (not counted)."""
    return x._a.copy() if isinstance(x, DeviceArray) else np.asarray(x)


def reset_counts():
    for k in COUNTS:
        COUNTS[k] = 0


class DeviceArray(NDArrayOperatorsMixin):
    """An array "on the fake device"; see the module docstring for what it refuses."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, a):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"internal: DeviceArray wraps an ndarray, got {type(a).__name__}")
        self._a = a

    # ---------------------------------------------------------------- metadata (free)
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: DeviceArray(self._a.T))
    real = property(lambda self: DeviceArray(np.asarray(self._a.real)))
    imag = property(lambda self: DeviceArray(np.asarray(self._a.imag)))

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"DeviceArray({self._a!r})"

    # ---------------------------------------------------------------- refused / counted
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion of a (fake) device array to a NumPy array is not "
                        "allowed; use xp.asnumpy(x) or x.get() explicitly")

    def get(self):
        COUNTS["to_host"] += 1
        return self._a.copy()

    def tolist(self):
        COUNTS["to_host"] += 1
        return self._a.tolist()

    def item(self):
        COUNTS["sync"] += 1
        return self._a.item()

    def __float__(self):
        COUNTS["sync"] += 1
        return float(self._a)

    def __int__(self):
        COUNTS["sync"] += 1
        return int(self._a)

    def __index__(self):
        COUNTS["sync"] += 1
        return self._a.__index__()

    def __bool__(self):
        COUNTS["sync"] += 1
        return bool(self._a)

    def __iter__(self):
        for i in range(len(self._a)):
            yield DeviceArray(np.asarray(self._a[i]))

    # ---------------------------------------------------------------- indexing
    def __getitem__(self, key):
        return _wrap(self._a[_unwrap_index(key)])

    def __setitem__(self, key, value):
        self._a[_unwrap_index(key)] = _unwrap(value, "the assigned value")

    # ---------------------------------------------------------------- methods
    def __getattr__(self, name):
        if name.startswith("_") or not hasattr(np.ndarray, name):
            raise AttributeError(f"'DeviceArray' object has no attribute {name!r}")
        if name not in _METHODS:
            raise TypeError(f"ndarray.{name} is not a CuPy {CUPY_VERSION} ndarray method")
        method = getattr(self._a, name)
        return functools.wraps(method)(
            lambda *args, **kwargs: _wrap(method(*_unwrap(args, f"ndarray.{name}"),
                                                 **_unwrap(kwargs, f"ndarray.{name}"))))

    # ---------------------------------------------------------------- NumPy protocols
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        name = ufunc.__name__
        if not isinstance(ufunc, np.ufunc) or type(ufunc).__module__ != "numpy" \
                or getattr(np, name, None) is not ufunc:
            return NotImplemented
        if name not in _FUNCTIONS[""]:
            raise TypeError(f"ufunc numpy.{name} is not in CuPy {CUPY_VERSION}")
        if method != "__call__" and method not in _UFUNC_METHODS.get(name, ()):
            raise TypeError(f"numpy.{name}.{method} is not in CuPy {CUPY_VERSION}")
        where = f"numpy.{name}"
        out = getattr(ufunc, method)(*_unwrap(inputs, where), **_unwrap(kwargs, where))
        if method == "at":
            return None
        return _wrap(out)

    def __array_function__(self, func, types_, args, kwargs):
        modname = func.__module__.removeprefix("numpy").lstrip(".")
        modname = {"core.multiarray": "", "core.numeric": "", "core.fromnumeric": "",
                   "lib.function_base": ""}.get(modname, modname)
        if func.__name__ not in _FUNCTIONS.get(modname, ()) \
                and func.__name__ not in _FUNCTIONS[""]:
            raise TypeError(f"numpy.{func.__name__} is not in CuPy {CUPY_VERSION}")
        where = f"numpy.{func.__name__}"
        return _wrap(func(*_unwrap(args, where), **_unwrap(kwargs, where)))


# ---------------------------------------------------------------------- wrap / unwrap
def _wrap(x):
    if isinstance(x, np.ndarray):
        return DeviceArray(x)
    if isinstance(x, np.generic):  # CuPy reductions give 0-d device arrays, not host scalars
        return DeviceArray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _unwrap(x, where):
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(f"{where} got a NumPy array {x.shape} {x.dtype} mixed with device "
                        "arrays; move it to the device explicitly (xp.asarray) first")
    if isinstance(x, tuple):
        return tuple(_unwrap(v, where) for v in x)
    if isinstance(x, list):
        return [_unwrap(v, where) for v in x]
    if isinstance(x, dict):
        return {k: _unwrap(v, where) for k, v in x.items()}
    return x


def _unwrap_index(key):
    return _unwrap(key, "indexing")


# ---------------------------------------------------------------------- the module
def _module_function(path, name):
    target = np
    for part in filter(None, path.split(".")):
        target = getattr(target, part)
    func = getattr(target, name)
    where = f"fake.{path + '.' if path else ''}{name}"

    if name in _FROM_HOST:
        def from_host(obj, *args, **kwargs):
            if isinstance(obj, DeviceArray):
                out = func(obj._a, *args, **kwargs)
                return DeviceArray(out) if out is not obj._a else obj
            if isinstance(obj, (list, tuple)) and any(isinstance(v, DeviceArray) for v in obj):
                return DeviceArray(func(_unwrap(obj, where), *args, **kwargs))
            COUNTS["to_device"] += 1
            return DeviceArray(np.array(func(obj, *args, **kwargs)))
        return from_host

    if isinstance(func, np.ufunc):
        return func  # dispatches through DeviceArray.__array_ufunc__; refuses pure host input

    @functools.wraps(func)
    def call(*args, **kwargs):
        return _wrap(func(*_unwrap(args, where), **_unwrap(kwargs, where)))
    return call


class _FakeModule(types.ModuleType):
    def __init__(self, name, path):
        super().__init__(name)
        self._path = path

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        allowed = _FUNCTIONS.get(self._path, set())
        sub = f"{self._path}.{name}" if self._path else name
        if sub in _FUNCTIONS or any(k.startswith(sub + ".") for k in _FUNCTIONS):
            return _FakeModule(f"fake.{sub}", sub)
        if name not in allowed:
            raise AttributeError(f"{self.__name__} has no attribute {name!r} "
                                 f"(not in CuPy {CUPY_VERSION})")
        if name == "ndarray":
            return DeviceArray
        target = np
        for part in filter(None, self._path.split(".")):
            target = getattr(target, part)
        if not hasattr(target, name):
            raise AttributeError(f"{self.__name__}.{name} has no NumPy counterpart in the fake")
        value = getattr(target, name)
        if callable(value) and not isinstance(value, type):
            return _module_function(self._path, name)
        return value  # dtypes, constants (float64, pi, newaxis, inf)


fake = _FakeModule("fake", "")


def asnumpy(x):
    """Copy to the host (counted), like ``cupy.asnumpy``."""
    if isinstance(x, DeviceArray):
        return x.get()
    return np.asarray(x)


fake.asnumpy = asnumpy


class _FakeSpecial(types.ModuleType):
    """``cupyx.scipy.special`` of the fake: SciPy's functions, only the names CuPy has."""

    def __getattr__(self, name):
        import scipy.special  # noqa: PLC0415
        if name not in _FUNCTIONS["cupyx.scipy.special"]:
            raise AttributeError(f"cupyx.scipy.special has no {name!r} (CuPy {CUPY_VERSION})")
        func = getattr(scipy.special, name)
        where = f"fake.special.{name}"
        return lambda *args, **kwargs: _wrap(func(*_unwrap(args, where), **_unwrap(kwargs, where)))


fake.special = _FakeSpecial("fake.special")
fake.get_array_module = lambda *arrays: (
    fake if any(isinstance(a, DeviceArray) for a in arrays) else np)
