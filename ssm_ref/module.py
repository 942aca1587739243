"""One way to build a module: parameters by state-dict name, submodules, backends.

Every block and model of the library (the Mamba block, the vision blocks, the
tiny classifiers) is a :class:`Module`.  A module owns

* its parameters, arrays registered under their state-dict names
  (``"A_log"``, ``"in_proj.weight"``: the names of the original PyTorch
  modules, so weights move between those projects and this one by name);
* its submodules, registered under a name that prefixes their parameters, as
  PyTorch does: a model's ``layers.0`` holding a block whose ``mixer`` holds
  ``A_log`` gives the state-dict name ``layers.0.mixer.A_log``;
* the selective scan it runs (``scan_fn``, ``scan_backward_fn``,
  ``state_update_fn``), chosen for the whole tree at once by :meth:`set_backend`.

A model's state dict is its own parameters and its submodules' state dicts
under their prefixes; nothing is mirrored.  ``module.params`` is a live view
of that tree: reading ``model.params["layers.0.mixer.A_log"]`` returns the
array the block computes with, and assigning to it (or updating the array in
place, as the optimisers do) changes what the block computes.

Glossary
--------
name      a parameter's state-dict name, relative to the module asked.
prefix    a submodule's name; its parameters appear as ``prefix + "." + name``.
xp        an array module (``numpy`` or ``cupy``, see :mod:`ssm_ref._xp`).

The helpers at the bottom (:func:`read_state_dict`, :func:`check_state_shapes`,
...) are the key and shape checks that the ``from_state_dict`` class methods
share: they name every missing, unknown or misshaped key.
"""
from __future__ import annotations

import dataclasses
from collections.abc import ItemsView, Mapping, MutableMapping, ValuesView

import numpy as np

from ._validation import as_array, check_finite, check_nonempty, check_shape
from ._xp import array_module, on_module
from .selective import selective_scan, selective_scan_backward, selective_state_update

__all__ = ["Module"]

#: The pluggable scan functions and their reference defaults.
_BACKEND_DEFAULTS = {"scan_fn": selective_scan, "scan_backward_fn": selective_scan_backward,
                     "state_update_fn": selective_state_update}


class _WalkedItems(ItemsView):
    """``Parameters.items()``: iterated by one walk of the module tree (the inherited view
    looks every name up again through the tree, a walk per name)."""

    def __iter__(self):
        return self._mapping._module.named_parameters()


class _WalkedValues(ValuesView):
    """``Parameters.values()``, iterated by one walk of the module tree."""

    def __iter__(self):
        return (value for _, value in self._mapping._module.named_parameters())


class Parameters(MutableMapping):
    """The live, flat view ``state-dict name -> array`` of a module tree (``module.params``).

    Reading returns the array the owning (sub)module computes with; assigning
    replaces it there (same shape required); deleting or adding names is
    refused.  Iteration follows registration order.
    """

    __slots__ = ("_module",)

    def __init__(self, module):
        self._module = module

    def __getitem__(self, name):
        owner, key = self._module._locate(name)
        return owner._params[key]

    def __setitem__(self, name, value):
        owner, key = self._module._locate(name)
        arr = as_array(value, f"params[{name!r}]", allow_complex=False)
        old = owner._params[key]
        if arr.shape != old.shape:
            raise ValueError(f"Parameter params[{name!r}] has shape {arr.shape} but should be "
                             f"{old.shape}")
        owner._params[key] = arr

    def __delitem__(self, name):
        raise TypeError(f"params[{name!r}]: parameters cannot be removed from a module")

    def __iter__(self):
        return (name for name, _ in self._module.named_parameters())

    def __len__(self):
        return sum(1 for _ in self._module.named_parameters())

    def __contains__(self, name):
        try:
            self._module._locate(name)
        except KeyError:
            return False
        return True

    def items(self):
        return _WalkedItems(self)

    def values(self):
        return _WalkedValues(self)

    def __repr__(self):
        return "Parameters({" + ", ".join(f"{k!r}: {v.shape}" for k, v in self.items()) + "})"


class Module:
    """Base of every block and model: parameters by name, submodules, backends.

    A subclass calls ``super().__init__()`` first, then registers its
    parameters with :meth:`add_param` and its submodules with
    :meth:`add_module`, in the order its state dict should list them.

    A block implements two unchecked methods on arrays of its ``compute_dtype``
    (float64 unless :meth:`set_dtype` chose float32),
    ``_forward(u) -> (out, cache)`` and ``_backward(dout, cache) -> (dx, grads)``
    (``grads`` by state-dict name, see :meth:`_grads`); the public
    :meth:`forward` and :meth:`backward` validate their arguments once and call
    them, and a model calls its blocks' unchecked methods directly, so a
    training step validates the images once, not at every layer.

    Examples
    --------
    >>> import numpy as np
    >>> class Scale(Module):
    ...     def __init__(self, n):
    ...         super().__init__()
    ...         self.add_param("weight", np.ones(n))
    >>> class Two(Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.first = self.add_module("first", Scale(2))
    ...         self.add_param("bias", np.zeros(3))
    >>> m = Two()
    >>> list(m.state_dict()), m.n_params()
    (['first.weight', 'bias'], 5)
    >>> m.params["first.weight"][0] = 4.0     # the view reaches the submodule's array
    >>> m.first.params["weight"]
    array([4., 1.])
    """

    def __init__(self):
        self._params = {}  # own parameters: name -> array
        self._modules = {}  # submodules: prefix -> Module
        self._order = []  # names of both, in registration (state-dict) order
        for attr, default in _BACKEND_DEFAULTS.items():
            setattr(self, attr, default)

    # ------------------------------------------------------------------ registration
    def add_param(self, name, value):
        """Register parameter ``name`` (its state-dict name in this module); return the array."""
        self._claim(name)
        self._params[name] = value
        return value

    def add_module(self, name, module):
        """Register ``module`` under ``name`` (its parameters' prefix); return it."""
        if not isinstance(module, Module):
            raise TypeError(f"Parameter module is a {type(module).__name__}, not a Module")
        self._claim(name)
        self._modules[name] = module
        return module

    def _claim(self, name):
        if not isinstance(name, str) or not name:
            raise TypeError(f"Parameter name = {name!r} must be a non-empty string")
        if name in self._params or name in self._modules:
            raise ValueError(f"name {name!r} is already registered in {type(self).__name__}")
        self._order.append(name)

    def _locate(self, name):
        """The (sub)module that owns parameter ``name`` and the name there."""
        module, key = self, name
        while key not in module._params:
            for prefix, sub in module._modules.items():
                if key.startswith(prefix + "."):
                    module, key = sub, key[len(prefix) + 1:]
                    break
            else:
                raise KeyError(f"{type(self).__name__} has no parameter {name!r}")
        return module, key

    # ------------------------------------------------------------------ traversal
    def named_parameters(self, prefix=""):
        """Yield ``(state-dict name, array)`` of the whole tree, in state-dict order."""
        for name in self._order:
            if name in self._params:
                yield prefix + name, self._params[name]
            else:
                yield from self._modules[name].named_parameters(prefix + name + ".")

    def modules(self):
        """Yield this module and every submodule, depth first."""
        yield self
        for sub in self._modules.values():
            yield from sub.modules()

    @property
    def params(self):
        """The live view ``state-dict name -> array`` of every parameter (see :class:`Parameters`)."""
        return Parameters(self)

    @params.setter
    def params(self, new):
        """Replace every parameter at once (same names and shapes)."""
        if not isinstance(new, Mapping):
            raise TypeError(f"Parameter params is a {type(new).__name__}, not a mapping")
        self._check_keys(new, "params")
        view = self.params
        for k in list(view):
            view[k] = new[k]

    def n_params(self):
        """Number of scalar parameters (the sum of every state-dict entry's size)."""
        return int(sum(v.size for _, v in self.named_parameters()))

    def __call__(self, x):
        """Same as ``forward(x)``."""
        return self.forward(x)

    # ------------------------------------------------------------------ forward / backward
    #: Axes of the input of a block's forward: 3 for tokens (B, L, C), 4 for images.
    x_ndim = 3

    def forward(self, x, return_cache=False):
        """Run the block on ``x`` (tokens (B, L, C) or an image (B, H, W, C), C = d_model).

        The public entry point: ``x`` is validated here (real, finite, the
        block's shape), then the unchecked ``_forward`` runs in ``compute_dtype``
        (float64 unless :meth:`set_dtype` chose float32).

        Returns
        -------
        out : ndarray, same shape as ``x``, in ``x``'s dtype.
        cache : dict, only with ``return_cache=True`` (for :meth:`backward`).

        Raises
        ------
        ValueError
            ``x`` of the wrong shape (named, with the expected shape) or not finite.
        """
        x = self._check_input(x, self.x_ndim, self.config.d_model)
        out, cache = self._forward(x.astype(self.compute_dtype, copy=False))
        out = out.astype(x.dtype)
        return (out, cache) if return_cache else out

    def backward(self, dout, cache):
        """Gradients: ``(dx, grads)``, ``dx`` in ``dout``'s dtype, ``grads`` by state-dict name.

        ``dout`` (the gradient of the output) and ``cache`` (from
        ``forward(x, return_cache=True)``) are validated here; the unchecked
        ``_backward`` runs in ``compute_dtype``.  Each gradient has its parameter's dtype.
        """
        dout = self._check_backward_args(dout, cache)
        dx, grads = self._backward(dout.astype(self.compute_dtype, copy=False), cache)
        return dx.astype(dout.dtype), grads

    # ------------------------------------------------------------------ state dict
    def state_dict(self):
        """Copies of every parameter by state-dict name (on the parameters' array module).

        ``np.savez(path, **module.state_dict())`` works on NumPy parameters.
        """
        return {k: v.copy() for k, v in self.named_parameters()}

    def _check_keys(self, state_dict, what):
        keys = set(state_dict.keys())
        own = [k for k, _ in self.named_parameters()]
        missing, extra = [k for k in own if k not in keys], sorted(keys - set(own))
        if missing or extra:
            raise KeyError(f"{what} does not match {type(self).__name__}: missing {missing}, "
                           f"unexpected {extra}")

    def load_state_dict(self, state_dict):
        """Load every parameter by name (a dict or an ``np.load`` of an ``.npz``); strict.

        Values are copied and cast to each parameter's dtype, onto the array
        module the parameter lives on (a NumPy state dict loads into a model
        on a GPU).

        Raises
        ------
        KeyError
            Missing or unexpected names (all listed).
        ValueError
            A shape that differs from the parameter's (name and both shapes
            given), or a value that is not finite.
        """
        check_state_dict_keys(state_dict)
        self._check_keys(state_dict, "state_dict")
        new = {}
        for k, old in self.named_parameters():
            v = as_array(state_dict[k], f"state_dict[{k!r}]", allow_complex=False)
            if v.shape != old.shape:
                raise ValueError(f"Parameter state_dict[{k!r}] has shape {v.shape} but "
                                 f"{type(self).__name__}'s is {old.shape}")
            check_finite(v, f"state_dict[{k!r}]")
            new[k] = on_module(v, array_module(old)).astype(old.dtype, copy=True)
        view = self.params
        for k, v in new.items():
            view[k] = v

    # ------------------------------------------------------------------ device, dtype, backend
    def to(self, xp):
        """Move every parameter to array module ``xp`` (``numpy`` or ``cupy``); return self.

        One copy per parameter, done once (e.g. before training on a GPU);
        afterwards the module takes and returns arrays of ``xp``.  dtypes are kept.
        """
        if not hasattr(xp, "asarray") or not hasattr(xp, "zeros"):
            raise TypeError(f"Parameter xp = {xp!r} must be an array module such as numpy or cupy")
        for m in self.modules():
            m._params = {k: on_module(v, xp) for k, v in m._params.items()}
        return self

    def _cast(self, dtype):
        """Store every parameter in ``dtype`` (construction only)."""
        for m in self.modules():
            m._params = {k: v.astype(dtype) for k, v in m._params.items()}

    #: The dtype the unchecked ``_forward`` / ``_backward`` compute in (float64: the reference).
    compute_dtype = np.dtype(np.float64)

    def set_dtype(self, dtype):
        """Store every parameter in ``dtype`` and compute in it, in the whole tree; return self.

        ``np.float64`` (the default) is the reference precision.  ``np.float32``
        is the float32 training option (``train(..., dtype="float32")``):
        parameters, activations, gradients and (with an optimiser made for it)
        the optimiser state in float32; the layers of :mod:`ssm_ref.nn` then
        compute in float32 and the Numba scan too.  Parameters are copied once.

        Raises
        ------
        ValueError
            ``dtype`` is not float32 or float64.
        """
        try:
            dt = np.dtype(dtype)
        except TypeError:
            dt = None
        if dtype is None or dt is None or dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"Parameter dtype = {dtype!r} is not one of ['float32', 'float64']")
        for m in self.modules():
            m._params = {k: v.astype(dt, copy=False) for k, v in m._params.items()}
            m.compute_dtype = dt
        return self

    def set_backend(self, scan_fn=None, scan_backward_fn=None, state_update_fn=None):
        """Use these scan functions in this module and every submodule; None means the reference.

        Parameters
        ----------
        scan_fn, scan_backward_fn, state_update_fn : callable, optional
            Signatures of :func:`ssm_ref.selective_scan`,
            :func:`ssm_ref.selective_scan_backward` and
            :func:`ssm_ref.selective_state_update` (the official in-place
            form; e.g. ``fast``'s Numba or CUDA backends).  Returns self.
        """
        chosen = {"scan_fn": scan_fn, "scan_backward_fn": scan_backward_fn,
                  "state_update_fn": state_update_fn}
        for attr, fn in chosen.items():
            fn = _BACKEND_DEFAULTS[attr] if fn is None else fn
            if not callable(fn):
                raise TypeError(f"Parameter {attr} = {fn!r} is not callable")
            chosen[attr] = fn
        for m in self.modules():
            for attr, fn in chosen.items():
                setattr(m, attr, fn)
        return self

    def _check_module(self, arr, name):
        """The array module of ``arr``; raise unless every parameter lives there too."""
        xp = array_module(arr)
        strays = [k for k, v in self.named_parameters() if array_module(v) is not xp]
        if strays:
            raise TypeError(
                f"Parameter {name} is a {xp.__name__} array but the {type(self).__name__}'s "
                f"parameters {strays} are not; move the block once with "
                f"block.to({xp.__name__})"
            )
        return xp

    # ------------------------------------------------------------------ entry-point checks
    def _check_input(self, x, ndim, last, name="x"):
        """A public forward's input: real, finite, ``ndim``-D with last axis ``last``."""
        x = as_array(x, name, allow_complex=False, ndim=ndim)
        check_shape(x, name, (None,) * (ndim - 1) + (last,))
        check_nonempty(x, name)
        check_finite(x, name)
        return x

    def _check_backward_args(self, dout, cache):
        """A public backward's arguments: the cache of ``forward(x, return_cache=True)``
        and a real, finite ``dout`` of the shape of the cached input."""
        dout = check_cached_grad(dout, "dout", cache, "u",
                                 f"{type(self).__name__}.forward(x, return_cache=True)")
        check_finite(dout, "dout")
        return dout

    def _w(self, name):
        """Own parameter ``name`` in the compute dtype (no copy when it has it), None if absent."""
        v = self._params.get(name)
        return None if v is None else v.astype(self.compute_dtype, copy=False)

    # ------------------------------------------------------------------ gradients
    def _grads(self, own, children=None):
        """Gradients by state-dict name: ``own`` for this module's parameters (entries
        for absent optional parameters are dropped), each child's under its prefix;
        each cast to its parameter's dtype."""
        g = {k: own[k].astype(v.dtype, copy=False) for k, v in self._params.items()}
        for prefix, grads in (children or {}).items():
            g.update({f"{prefix}.{k}": v for k, v in grads.items()})
        return g


# =========================================================================== state-dict checks
def check_state_dict_keys(state_dict):
    """``state_dict`` must be a mapping whose keys are all ``str`` (state-dict names)."""
    if not hasattr(state_dict, "keys"):
        raise TypeError(f"Parameter state_dict is a {type(state_dict).__name__}, not a mapping")
    bad = [k for k in state_dict.keys() if not isinstance(k, str)]
    if bad:
        raise TypeError(f"Parameter state_dict has {len(bad)} key(s) that are not strings "
                        f"(first {bad[0]!r} of type {type(bad[0]).__name__}); expected "
                        "str names such as 'in_proj.weight'")


def read_state_dict(state_dict, prefix, required, optional, owner):
    """Copy the arrays of a state dict under ``prefix`` after checking its key set.

    Missing and unknown keys are all named in one ``KeyError``; values must be
    real and finite.  Copies stay on the array's own module (NumPy or CuPy).
    """
    check_state_dict_keys(state_dict)
    if not isinstance(prefix, str):
        raise TypeError(f"Parameter prefix = {prefix!r} must be a str")
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    missing = [k for k in required if k not in sd]
    unknown = sorted(k for k in sd if k not in required and k not in optional)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unknown:
            parts.append(f"unknown keys {unknown}")
        raise KeyError(f"state_dict (prefix {prefix!r}) does not match {owner}'s names: "
                       + "; ".join(parts) + f". Expected {list(required)}"
                       + (f" (optional: {list(optional)})" if optional else ""))
    arrs = {}
    for k, v in sd.items():
        a = as_array(v, f"state_dict[{k!r}]", allow_complex=False)
        check_finite(a, f"state_dict[{k!r}]")
        arrs[k] = a.copy()
    return arrs


def check_cached_grad(dy, name, cache, key, producer, ndim=None):
    """A backward's upstream gradient ``dy`` against the forward's ``cache``.

    ``cache`` must be the dict that ``producer`` returned (it holds ``key``)
    and ``dy`` real, of the shape of ``cache[key]`` (with ``ndim`` axes when
    given).  Returns ``dy`` as an array; finiteness is the caller's next check.
    """
    if not isinstance(cache, dict) or key not in cache:
        raise TypeError(f"Parameter cache must be the dict from {producer}")
    dy = as_array(dy, name, allow_complex=False, ndim=ndim)
    check_shape(dy, name, tuple(cache[key].shape))
    return dy


def check_state_ndim(arrs, key, ndim, what):
    """``arrs[key]`` must have ``ndim`` axes (``what`` names them for the message)."""
    if arrs[key].ndim != ndim:
        raise ValueError(f"Parameter state_dict[{key!r}] has shape {arrs[key].shape} "
                         f"but should be {what}")


def check_state_shapes(arrs, expected, sizes):
    """Every array's shape against ``expected[key]``; ``sizes`` says what was inferred."""
    for k, arr in arrs.items():
        if arr.shape != expected[k]:
            raise ValueError(f"Parameter state_dict[{k!r}] has shape {arr.shape} but should be "
                             f"{expected[k]} (inferred {sizes})")


def check_state_dstate(arrs, a_key, x_key, dt_rank, axis):
    """d_state, read from ``arrs[a_key]`` (…, d_state), must fit ``arrs[x_key]``'s
    ``dt_rank + 2 * d_state`` axis ``axis``; otherwise name both, the A_log entry first.

    Without it a misshaped ``A_log`` would be reported as a wrong ``x_proj`` weight.
    """
    a_shape, x_shape = arrs[a_key].shape, arrs[x_key].shape
    N = a_shape[-1]
    if len(x_shape) <= axis or x_shape[axis] != dt_rank + 2 * N:
        got = x_shape[axis] if len(x_shape) > axis else None
        fits = ("" if got is None or (got - dt_rank) % 2 or got <= dt_rank
                else f"; {x_key} fits d_state = {(got - dt_rank) // 2}")
        raise ValueError(f"Parameter state_dict[{a_key!r}] has shape {a_shape} (d_state = {N}) "
                         f"but state_dict[{x_key!r}] has shape {x_shape}, whose axis {axis} "
                         f"should be dt_rank + 2 * d_state = {dt_rank} + 2 * {N} = "
                         f"{dt_rank + 2 * N}{fits}; expected both to agree on d_state")


def check_state_pair(arrs, a, b):
    """Optional keys that come together: both ``a`` and ``b`` or neither."""
    if (a in arrs) != (b in arrs):
        raise KeyError(f"state_dict has only one of {a!r} and {b!r}; "
                       "the original module has both or neither")


def in_proj_sizes(arrs):
    """``(d_model, d_inner)`` from ``in_proj.weight``, (2 * d_inner, d_model)."""
    w_in = arrs["in_proj.weight"]
    if w_in.ndim != 2 or w_in.shape[0] % 2:
        raise ValueError(f"Parameter state_dict['in_proj.weight'] has shape {w_in.shape} "
                         "but should be (2 * d_inner, d_model)")
    return w_in.shape[1], w_in.shape[0] // 2


def resolve_config(config_cls, config, fields, defaults=None):
    """A configuration dataclass passed whole, or built from keyword fields.

    ``config`` None: ``config_cls(**defaults, **fields)``; an instance of
    ``config_cls``: that instance, updated by ``fields`` (``dataclasses.replace``).
    ``defaults`` are a family's own defaults (SS2D's 3x3 conv: ``{"d_conv": 3}``).
    """
    if config is None:
        return config_cls(**{**(defaults or {}), **fields})
    if not isinstance(config, config_cls):
        raise TypeError(f"Parameter config is a {type(config).__name__} but a "
                        f"{config_cls.__name__} was expected")
    return dataclasses.replace(config, **fields) if fields else config


def rng_from(seed):
    """A NumPy generator: ``seed`` itself when it is one, else ``default_rng(seed)``."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, np.bool_, float, str)):
        raise TypeError(f"Parameter seed = {seed!r} must be an int >= 0 or a numpy Generator")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:  # NumPy's message does not name the argument
        raise type(exc)(f"Parameter seed = {seed!r} must be an int >= 0 or a numpy "
                        f"Generator ({exc})") from exc
