"""The one registry of backends behind ``fast.selective_scan`` and friends.

Glossary
--------
backend   where a function runs: ``"ref"`` (the NumPy reference in
          :mod:`ssm_ref.selective`), ``"numba"`` (:mod:`fast.numba_cpu`,
          compiled for the CPU) or ``"cuda"`` (:mod:`fast.cuda_scan`,
          Numba-CUDA on CuPy arrays); ``"auto"`` picks one from the inputs
B, D, L, N, G   batch, channels, length, state size, groups (as in ssm_ref)

Rules
-----
* Every backend has the reference's signature and semantics; the fast
  functions add only the keyword-only ``backend``.
* ``"auto"`` chooses ``"cuda"`` when an input lives on a GPU (a CuPy array,
  or any object with ``__cuda_array_interface__``, such as a PyTorch CUDA
  tensor) and ``"numba"`` otherwise.
* Asking for a backend that is not available raises ``RuntimeError`` with
  the reason; an unknown name raises ``ValueError``.  Nothing ever falls
  back silently to another backend.
* Backends are imported on first use.  ``import fast`` imports neither Numba
  nor ``numba.cuda``, and the ``"ref"`` and ``"numba"`` backends never import
  ``numba.cuda``, so ``NUMBA_ENABLE_CUDASIM`` can still be set after
  ``import fast`` and before the first CUDA call.
"""
from __future__ import annotations

import functools
import importlib

from ssm_ref._xp import is_cupy

__all__ = ["BACKENDS", "backends", "selective_scan", "selective_scan_backward",
           "selective_state_update", "selective_state_step", "causal_conv1d",
           "causal_conv1d_backward", "mamba_inner_fn", "mamba_inner_fn_backward", "scan_functions",
           "attach_inner_path"]

#: the backend names, in order of preference for NumPy input
BACKENDS = ("ref", "numba", "cuda")

_MODULES = {"ref": "ssm_ref.selective", "numba": "fast.numba_cpu", "cuda": "fast.cuda_scan"}


def _status(name):
    """``(available, reason)`` for one backend; imports its module."""
    try:
        module = importlib.import_module(_MODULES[name])
    except Exception as exc:  # ImportError, or an error raised while importing
        return False, f"{_MODULES[name]} cannot be imported: {type(exc).__name__}: {exc}"
    if name == "ref":
        return True, "NumPy reference (ssm_ref.selective), float64 inside"
    if name == "numba":
        import numba
        return True, (f"Numba {numba.__version__} on the CPU, "
                      f"{numba.get_num_threads()} thread(s)")
    available, reason = module.status()
    return bool(available), str(reason)


def backends():
    """Which backends can run here, and why not the others.

    Returns
    -------
    dict
        ``{name: (available, reason)}`` for every name in :data:`BACKENDS`;
        ``reason`` says what runs (version, threads, device) or why it cannot.

    Notes
    -----
    Asking about ``"cuda"`` imports ``numba.cuda`` (through
    :mod:`fast.cuda_scan`); set ``NUMBA_ENABLE_CUDASIM`` before calling this
    if the CUDA simulator is wanted.

    Examples
    --------
    >>> import fast
    >>> available, reason = fast.backends()["numba"]
    >>> available
    True
    """
    return {name: _status(name) for name in BACKENDS}


def _on_gpu(x):
    """True for a CuPy array or anything exposing ``__cuda_array_interface__``."""
    if is_cupy(x):
        return True
    try:  # a PyTorch CPU tensor raises AttributeError here, others may raise otherwise
        return hasattr(x, "__cuda_array_interface__")
    except Exception:
        return False


def _module(backend, arrays):
    """Resolve ``backend`` (``"auto"`` from ``arrays``, a dict name -> array) to a module."""
    if not isinstance(backend, str) or backend not in BACKENDS + ("auto",):
        raise ValueError(
            f"Parameter backend = {backend!r} is not one of "
            f"{list(BACKENDS + ('auto',))}"
        )
    if backend == "auto":
        backend = "cuda" if any(_on_gpu(x) for x in arrays.values() if x is not None) else "numba"
    if backend == "ref":  # the reference follows its inputs' array module (NumPy or CuPy)
        return importlib.import_module(_MODULES["ref"])
    if backend == "numba":
        on_gpu = [name for name, x in arrays.items() if x is not None and _on_gpu(x)]
        if on_gpu:
            raise TypeError(f"backend 'numba' computes on the CPU but parameter {on_gpu[0]} is a "
                            f"GPU array ({type(arrays[on_gpu[0]]).__name__}); use backend "
                            "'cuda' (or 'auto'), or copy it to the host first")
    available, reason = _status(backend)
    if not available:
        raise RuntimeError(f"backend {backend!r} is not available here: {reason}")
    return importlib.import_module(_MODULES[backend])


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                   delta_softplus=False, return_last_state=False, h0=None, *,
                   backend="auto"):
    """Mamba's selective scan on the chosen backend.

    Same parameters, results and errors as :func:`ssm_ref.selective_scan`,
    plus ``backend``.

    Parameters
    ----------
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, h0
        As in :func:`ssm_ref.selective_scan`.
    backend : {"auto", "ref", "numba", "cuda"}, default "auto"
        Where to run; ``"auto"`` is ``"cuda"`` for GPU arrays and
        ``"numba"`` otherwise.

    Returns
    -------
    y or (y, last_state)
        As the reference; arrays of the input's kind (CuPy in, CuPy out).

    Raises
    ------
    ValueError
        Unknown ``backend``; and every input error of the reference, with the
        reference's message.
    RuntimeError
        The backend asked for (or chosen by ``"auto"``) is not available.

    Notes
    -----
    Implements ``eq-selective-delta``, ``eq-selective-disc``,
    ``eq-selective-recurrence`` and ``eq-selective-output``.

    Examples
    --------
    >>> import numpy as np
    >>> import fast
    >>> u = np.ones((1, 1, 3))
    >>> fast.selective_scan(u, 0.5 * np.ones((1, 1, 3)), [[-1.0]], [[1.0]], [[1.0]],
    ...                     backend="numba")
    array([[[0.5       , 0.80326533, 0.98720505]]])
    """
    module = _module(backend, dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z,
                                  delta_bias=delta_bias, h0=h0))
    return module.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                 return_last_state, h0)


def selective_scan_backward(dout, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                            delta_softplus=False, h0=None, dlast_state=None, *,
                            backend="auto"):
    """Gradients of the selective scan on the chosen backend.

    Same parameters, results and errors as
    :func:`ssm_ref.selective_scan_backward`, plus ``backend`` (see
    :func:`selective_scan`).  Returns the dict of nine gradients keyed
    ``"u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"``.

    Notes
    -----
    Implements ``eq-selective-backward``.

    Examples
    --------
    >>> import numpy as np
    >>> import fast
    >>> g = fast.selective_scan_backward(np.array([[[1.0, 0.0, 0.0]]]), np.ones((1, 1, 3)),
    ...                                  0.5 * np.ones((1, 1, 3)), [[-1.0]], [[1.0]], [[1.0]],
    ...                                  backend="numba")
    >>> g["u"]
    array([[[0.5, 0. , 0. ]]])
    """
    module = _module(backend, dict(dout=dout, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z,
                                  delta_bias=delta_bias, h0=h0, dlast_state=dlast_state))
    return module.selective_scan_backward(dout, u, delta, A, B, C, D, z, delta_bias,
                                          delta_softplus, h0, dlast_state)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False, state_batch_indices=None, *, backend="auto"):
    """One decoding step of the selective SSM on the chosen backend, ``state`` updated in place.

    Same parameters, results and errors as
    :func:`ssm_ref.selective_state_update` (the official function's
    signature and semantics: single- and multi-head layouts,
    ``state_batch_indices``), plus ``backend`` (see :func:`selective_scan`).
    Returns ``out``; the new state is written into ``state`` (on the device
    for a CuPy ``state``).

    Notes
    -----
    Implements ``eq-selective-disc``, ``eq-selective-recurrence`` and
    ``eq-selective-output`` for one step.

    Examples
    --------
    >>> import numpy as np
    >>> import fast
    >>> h = np.zeros((1, 1, 1))
    >>> fast.selective_state_update(h, [[1.0]], [[0.5]], [[-1.0]], [[1.0]], [[1.0]],
    ...                             backend="numba")
    array([[0.5]])
    >>> h
    array([[[0.5]]])
    """
    module = _module(backend, dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z,
                                  dt_bias=dt_bias, state_batch_indices=state_batch_indices))
    return module.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                         state_batch_indices)


def selective_state_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                         dt_softplus=False, *, backend="auto"):
    """One decoding step in functional form on the chosen backend: ``(y, new_state)``.

    Same parameters, results and errors as :func:`ssm_ref.selective_state_step`
    (``state`` is not modified), plus ``backend`` (see :func:`selective_scan`).

    Examples
    --------
    >>> import numpy as np
    >>> import fast
    >>> y, h = fast.selective_state_step(np.zeros((1, 1, 1)), [[1.0]], [[0.5]], [[-1.0]],
    ...                                  [[1.0]], [[1.0]], backend="numba")
    >>> y, h
    (array([[0.5]]), array([[[0.5]]]))
    """
    module = _module(backend, dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z,
                                  dt_bias=dt_bias))
    return module.selective_state_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


# ---------------------------------------------------------------------------
# the Mamba block's fused pieces (causal conv1d + SiLU, the inner function)
# ---------------------------------------------------------------------------

#: where each backend keeps the fused pieces: the reference twins, or fast.numba_fused
_FUSED_MODULES = {"ref": {"causal_conv1d": "ssm_ref.nn", "mamba_inner_fn": "ssm_ref.fused"},
                  "numba": {"causal_conv1d": "fast.numba_fused",
                            "mamba_inner_fn": "fast.numba_fused"}}


def _fused_module(backend, arrays, piece):
    """The module holding ``piece`` (its ``_backward`` too) for ``backend``; raise if none."""
    module = _module(backend, arrays)  # the name, its availability, the arrays' device
    name = next(b for b, m in _MODULES.items() if m == module.__name__)
    if name not in _FUSED_MODULES:
        raise RuntimeError(f"backend {name!r} has no {piece}: only the selective scan runs "
                           "there; use backend='ref' (the reference runs on the array module "
                           "of its inputs, CuPy included)")
    return importlib.import_module(_FUSED_MODULES[name][piece])


def causal_conv1d(x, weight, bias=None, activation=None, *, backend="auto"):
    """Causal depthwise conv1d with an optional SiLU (official ``causal_conv1d_fn``) on a backend.

    Same parameters, results and errors as :func:`ssm_ref.nn.causal_conv1d`,
    plus ``backend`` (``"ref"`` or ``"numba"``; ``"cuda"`` raises
    ``RuntimeError``, as does ``"auto"`` on GPU arrays).  The Numba version is
    one kernel for the convolution and its SiLU.

    Examples
    --------
    >>> import numpy as np
    >>> import fast
    >>> x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    >>> fast.causal_conv1d(x, np.array([[0.0, 1.0, 10.0]]), backend="numba")
    array([[[10., 21., 32., 43.]]])
    """
    module = _fused_module(backend, dict(x=x, weight=weight, bias=bias), "causal_conv1d")
    return module.causal_conv1d(x, weight, bias, activation)


def causal_conv1d_backward(dy, x, weight, bias=None, activation=None, *, backend="auto"):
    """Gradients ``(dx, dweight, dbias)`` of :func:`causal_conv1d` on a backend.

    Same parameters, results and errors as
    :func:`ssm_ref.nn.causal_conv1d_backward`, plus ``backend``.

    Examples
    --------
    >>> import numpy as np
    >>> import fast
    >>> dx, dw, db = fast.causal_conv1d_backward(np.ones((1, 1, 3)), np.ones((1, 1, 3)),
    ...                                          np.ones((1, 2)), backend="numba")
    >>> dx, dw, db
    (array([[[2., 2., 1.]]]), array([[2., 3.]]), None)
    """
    module = _fused_module(backend, dict(dy=dy, x=x, weight=weight, bias=bias), "causal_conv1d")
    return module.causal_conv1d_backward(dy, x, weight, bias, activation)


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                   out_proj_weight, out_proj_bias, A, B=None, C=None, D=None, delta_bias=None,
                   delta_softplus=True, *, backend="auto"):
    """The Mamba block after ``in_proj`` (official ``mamba_inner_fn``) on a backend.

    Same parameters, results and errors as :func:`ssm_ref.fused.mamba_inner_fn`,
    plus ``backend`` (``"ref"`` or ``"numba"``).

    Examples
    --------
    >>> import numpy as np
    >>> import fast
    >>> from ssm_ref import MambaBlock
    >>> from ssm_ref.fused import block_arguments
    >>> args = block_arguments(MambaBlock(d_model=4, d_state=2).params)
    >>> fast.mamba_inner_fn(np.ones((1, 16, 3)), **args, backend="numba").shape
    (1, 3, 4)
    """
    arrays = dict(xz=xz, conv1d_weight=conv1d_weight, conv1d_bias=conv1d_bias,
                  x_proj_weight=x_proj_weight, delta_proj_weight=delta_proj_weight,
                  out_proj_weight=out_proj_weight, out_proj_bias=out_proj_bias, A=A, B=B, C=C,
                  D=D, delta_bias=delta_bias)
    module = _fused_module(backend, arrays, "mamba_inner_fn")
    return module.mamba_inner_fn(**arrays, delta_softplus=delta_softplus)


def mamba_inner_fn_backward(dout, xz, conv1d_weight, conv1d_bias, x_proj_weight,
                            delta_proj_weight, out_proj_weight, out_proj_bias, A, B=None, C=None,
                            D=None, delta_bias=None, delta_softplus=True, *, backend="auto"):
    """Gradients of :func:`mamba_inner_fn` on a backend: the dict of every argument's gradient.

    Same parameters, results and errors as
    :func:`ssm_ref.fused.mamba_inner_fn_backward`, plus ``backend``.

    Examples
    --------
    >>> import numpy as np
    >>> import fast
    >>> from ssm_ref import MambaBlock
    >>> from ssm_ref.fused import block_arguments
    >>> args = block_arguments(MambaBlock(d_model=4, d_state=2).params)
    >>> g = fast.mamba_inner_fn_backward(np.ones((1, 3, 4)), np.ones((1, 16, 3)), **args,
    ...                                  backend="numba")
    >>> g["xz"].shape, g["B"]
    ((1, 16, 3), None)
    """
    arrays = dict(xz=xz, conv1d_weight=conv1d_weight, conv1d_bias=conv1d_bias,
                  x_proj_weight=x_proj_weight, delta_proj_weight=delta_proj_weight,
                  out_proj_weight=out_proj_weight, out_proj_bias=out_proj_bias, A=A, B=B, C=C,
                  D=D, delta_bias=delta_bias)
    module = _fused_module(backend, dict(dout=dout, **arrays), "mamba_inner_fn")
    return module.mamba_inner_fn_backward(dout, **arrays, delta_softplus=delta_softplus)


def scan_functions(backend="auto"):
    """The ``(scan_fn, scan_backward_fn)`` pair a block takes, for one backend.

    ``functools.partial(selective_scan, backend=backend)`` and the same for
    :func:`selective_scan_backward`.  For ``"numba"`` the two also carry the
    fused inner path of :mod:`fast.numba_fused` (attribute ``inner_path``:
    its ``inner_forward`` on the first, ``inner_backward`` on the second),
    which :class:`ssm_ref.MambaBlock` and Vim's mixer run in place of their
    NumPy conv -> x_proj -> dt_proj -> scan layers
    (:func:`ssm_ref.mamba.inner_path_functions`), the Numba scan's twins
    with which that path keeps its scan's forward for the backward
    (attributes ``for_backward`` and ``from_saved``,
    :func:`fast.numba_cpu.attach_saved_scan`), and the fused depthwise
    conv2d + SiLU (attribute ``conv2d_silu``) and ``out_norm`` + gate
    ``layer_norm(y) * silu(z)`` (attribute ``norm_gate``) that VMamba's SS2D
    runs (:func:`ssm_ref.vision.vmamba.conv2d_silu_functions`,
    :func:`~ssm_ref.vision.vmamba.norm_gate_functions`), its cross-scan and
    cross-merge (attribute ``cross_scan``, :mod:`fast.numba_cross`), its
    per-direction projections (attribute ``projections``,
    :mod:`fast.numba_projections`), the mixers' in- and out-projections
    (attribute ``linear``, :mod:`fast.numba_linear`,
    :func:`ssm_ref.mamba.linear_functions`), Vim's merge of its two paths
    and its backward (attribute ``bidirectional``,
    :mod:`fast.numba_bidirectional`), and the Numba
    LayerNorm and RMSNorm of :mod:`fast.numba_norms` (attributes
    ``layer_norm`` and ``rms_norm``) that the pre-norm blocks and the
    classifiers' heads run (:func:`ssm_ref.vision.prenorm.norm_functions`).
    ``"ref"`` gives the reference functions themselves.

    Raises
    ------
    ValueError
        Unknown ``backend``.
    RuntimeError
        The backend is not available here.

    Examples
    --------
    >>> import fast
    >>> fwd, bwd = fast.scan_functions("numba")
    >>> fwd.keywords, fwd.inner_path.__name__, bwd.inner_path.__name__
    ({'backend': 'numba'}, 'inner_forward', 'inner_backward')
    """
    if not isinstance(backend, str) or backend not in BACKENDS + ("auto",):
        raise ValueError(f"Parameter backend = {backend!r} is not one of "
                         f"{list(BACKENDS + ('auto',))}")
    if backend == "ref":
        ref = importlib.import_module(_MODULES["ref"])
        return ref.selective_scan, ref.selective_scan_backward
    if backend != "auto":
        available, reason = _status(backend)
        if not available:
            raise RuntimeError(f"backend {backend!r} is not available here: {reason}")
    fwd = functools.partial(selective_scan, backend=backend)
    bwd = functools.partial(selective_scan_backward, backend=backend)
    if backend == "numba":
        attach_inner_path(fwd, bwd)
        importlib.import_module(_MODULES["numba"]).attach_saved_scan(fwd, bwd)
    return fwd, bwd


def attach_inner_path(scan_fn, scan_backward_fn):
    """Give a pair of Numba scan functions the fused inner path (see :func:`scan_functions`).

    For callers that build their own ``functools.partial`` pair (the
    benchmarks' null scan); returns the pair.
    """
    fused = importlib.import_module("fast.numba_fused")
    scan_fn.inner_path = fused.inner_forward
    scan_backward_fn.inner_path = fused.inner_backward
    scan_fn.conv2d_silu = fused.conv2d_silu_forward  # VMamba's SS2D: 3x3 conv + SiLU fused
    scan_backward_fn.conv2d_silu = fused.conv2d_silu_backward
    cross = importlib.import_module("fast.numba_cross")
    scan_fn.cross_scan = cross.cross_scan  # its directions' gathers, and their adjoint
    scan_backward_fn.cross_scan = cross.cross_merge
    projections = importlib.import_module("fast.numba_projections")
    scan_fn.projections = projections.direction_projections  # and each direction's products
    scan_backward_fn.projections = projections.direction_projections_backward
    norms = importlib.import_module("fast.numba_norms")
    scan_fn.norm_gate = norms.norm_gate_forward  # and its out_norm and gate, fused
    scan_backward_fn.norm_gate = norms.norm_gate_backward
    scan_fn.gate = norms.gate_forward  # PlainMamba's gate, without the norm
    scan_backward_fn.gate = norms.gate_backward
    scan_fn.layer_norm = norms.layer_norm  # the blocks' and heads' norms
    scan_backward_fn.layer_norm = norms.layer_norm_backward
    scan_fn.rms_norm = norms.rms_norm
    scan_backward_fn.rms_norm = norms.rms_norm_backward
    bidirectional = importlib.import_module("fast.numba_bidirectional")
    scan_fn.bidirectional = bidirectional.merge_directions  # Vim's merge of its two paths
    scan_backward_fn.bidirectional = bidirectional.merge_directions_backward
    linear = importlib.import_module("fast.numba_linear")
    scan_fn.linear = linear.linear  # the mixers' in- and out-projections
    scan_backward_fn.linear = linear.linear_backward
    return scan_fn, scan_backward_fn
