"""The Mamba block: official initialization, weights interchange, step mode, backward pass.

A NumPy mirror of ``mamba_ssm.modules.mamba_simple.Mamba`` (Gu and Dao 2023,
arXiv:2312.00752; the ``state-spaces/mamba`` repository), built from the
layers of :mod:`ssm_ref.nn` and the selective scan of :mod:`ssm_ref.selective`.

Glossary
--------
B         batch size (the matrix B is written ``Bmat`` where both meet).
L         sequence length.
d_model   width of the tokens that enter and leave the block.
D         ``d_inner = expand * d_model``, the channels inside the block.
N         ``d_state``, the state size per channel.
R         ``dt_rank``, the rank of the low-rank projection that makes delta.
K         ``d_conv``, the width of the causal depthwise convolution.
delta     the step size Δ (``dt`` in the official code), per token and channel.
A, B, C, D  the SSM matrices: A (D, N) = -exp(A_log), B and C (B, N, L) made from
          the input by ``x_proj``, D (D,) the skip connection.
x, z      the two halves of ``in_proj``'s output: the SSM branch and the gate.

The data path (book equation ``eq-mamba-block``), tokens (B, L, d_model)::

    xz      = in_proj(u)                          (B, L, 2D)   -> x, z (B, D, L)
    x       = silu(causal_conv1d(x))              (B, D, L)
    dt,B,C  = split(x_proj(x))                    (B, L, R), (B, N, L), (B, N, L)
    delta   = dt_proj.weight @ dt                 (B, D, L)    (bias added inside the scan)
    y       = selective_scan(x, delta, A, B, C, D, z,
                             delta_bias=dt_proj.bias, delta_softplus=True)   (B, D, L)
    out     = out_proj(y)                         (B, L, d_model)

Parameters live in ``block.params``, a dict keyed by the official state-dict
names (``in_proj.weight``, ``conv1d.weight``, ...), so weights move between
PyTorch and this project by name.  Everything is computed in float64 (or in
float32 after ``block.set_dtype(np.float32)``, the float32 training option); the
output has the input's dtype.

The functions and the block run on the array module of their inputs (NumPy,
or CuPy on a GPU, see :mod:`ssm_ref._xp`); the parameters must live on the
same module as the data (``block.to(cupy)`` moves a block once).
:func:`mamba_init` draws its parameters with NumPy on the host.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._validation import (
    a_from_log,
    as_array,
    check_choice,
    check_finite,
    check_nonempty,
    check_positive_int,
    check_positive_scalar,
    check_shape,
)
from ._xp import array_module
from .initializers import mamba_a_log
from .module import (
    Module,
    check_cached_grad,
    check_state_dstate,
    check_state_ndim,
    check_state_pair,
    check_state_shapes,
    in_proj_sizes,
    read_state_dict,
    resolve_config,
    rng_from,
)
from .nn import (
    causal_conv1d,
    causal_conv1d_backward,
    linear,
    linear_backward,
    silu,
    silu_backward,
)
from .selective import _one_module, selective_scan, selective_scan_backward

__all__ = ["MambaConfig", "MambaBlock", "mamba_init", "mamba_inner_forward",
           "mamba_inner_backward"]

#: The official state-dict names, in the order ``Mamba.state_dict()`` lists them.
#: ``in_proj.bias`` / ``out_proj.bias`` exist only with ``bias=True``,
#: ``conv1d.bias`` only with ``conv_bias=True`` (the default).
STATE_DICT_KEYS = (
    "A_log", "D", "in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias",
    "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "out_proj.weight", "out_proj.bias",
)
_OPTIONAL_KEYS = ("in_proj.bias", "conv1d.bias", "out_proj.bias")


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class MambaConfig:
    """Sizes and initialization settings of a Mamba block (the official constructor's).

    Attributes
    ----------
    d_model : int
        Token width.
    d_state : int
        N, the state size per channel (16 in Mamba).
    d_conv : int
        K, the causal convolution width (4).
    expand : float
        ``d_inner = int(expand * d_model)`` (2).
    dt_rank : int or "auto"
        R; ``"auto"`` means ``ceil(d_model / 16)`` and is resolved on construction.
    dt_min, dt_max : float
        The initial delta is log-uniform in ``[dt_min, dt_max]`` (1e-3, 1e-1).
    dt_init : {"random", "constant"}
        ``dt_proj.weight`` uniform in ``±dt_scale / sqrt(R)``, or that constant.
    dt_scale : float
        Scale of the ``dt_proj.weight`` initialization (1).
    dt_init_floor : float
        The initial delta is clamped below at this value (1e-4).
    conv_bias : bool
        Whether ``conv1d`` has a bias (True).
    bias : bool
        Whether ``in_proj`` and ``out_proj`` have biases (False).

    Examples
    --------
    >>> cfg = MambaConfig(d_model=40)
    >>> cfg.d_inner, cfg.dt_rank, cfg.d_state
    (80, 3, 16)
    """

    d_model: int
    d_state: int = 16
    d_conv: int = 4
    expand: float = 2
    dt_rank: int | str = "auto"
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False

    def __post_init__(self):
        check_positive_int(self.d_model, "d_model")
        check_positive_int(self.d_state, "d_state")
        check_positive_int(self.d_conv, "d_conv")
        check_positive_scalar(self.expand, "expand")
        if self.dt_rank == "auto":
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))
        else:
            check_positive_int(self.dt_rank, "dt_rank")
        check_positive_scalar(self.dt_min, "dt_min")
        check_positive_scalar(self.dt_max, "dt_max")
        if self.dt_min > self.dt_max:
            raise ValueError(f"Parameter dt_min = {self.dt_min} must be <= dt_max = {self.dt_max}")
        check_choice(self.dt_init, "dt_init", {"random", "constant"})
        check_positive_scalar(self.dt_scale, "dt_scale")
        check_positive_scalar(self.dt_init_floor, "dt_init_floor")
        if self.d_inner < 1:
            raise ValueError(f"expand * d_model = {self.expand * self.d_model} must be >= 1")

    @property
    def d_inner(self) -> int:
        """``int(expand * d_model)``, exactly as the official code computes it."""
        return int(self.expand * self.d_model)


def config_from_sizes(d_model, d_inner, **fields):
    """The :class:`MambaConfig` of a block whose weights have these sizes (``from_state_dict``).

    ``expand = d_inner / d_model``, which must give ``d_inner`` back through
    ``int(expand * d_model)``.
    """
    config = MambaConfig(d_model=d_model, expand=d_inner / d_model, **fields)
    if config.d_inner != d_inner:
        raise ValueError(f"cannot represent d_inner={d_inner} as int(expand * d_model) with "
                         f"d_model={d_model}")
    return config


# --------------------------------------------------------------------------- initialization
def mamba_init(config, seed=0, dtype=np.float64):
    """Parameters of a Mamba block with the official initialization, by state-dict name.

    What ``Mamba.__init__`` does, drawn with NumPy (same distributions, not
    the same random numbers as PyTorch), in this order:

    * ``in_proj``, ``x_proj``, ``out_proj`` (and biases when ``bias=True``):
      PyTorch's default ``nn.Linear`` init, uniform in ``±1/sqrt(fan_in)``
      (kaiming-uniform with ``a = sqrt(5)`` works out to this bound).
    * ``conv1d.weight`` (D, 1, K) and ``conv1d.bias``: PyTorch's default
      ``nn.Conv1d`` init; fan_in of a depthwise filter is K, so ``±1/sqrt(K)``.
    * ``dt_proj.weight`` (D, R): uniform in ``±dt_scale/sqrt(R)`` (``"random"``)
      or the constant ``dt_scale/sqrt(R)``.
    * ``dt_proj.bias`` (D,): ``dt = exp(U(0,1)(log dt_max - log dt_min) + log dt_min)``
      clamped at ``dt_init_floor``, stored through the inverse softplus
      ``dt + log(-expm1(-dt))`` so that ``softplus(bias) = dt`` (``eq-mamba-dt-init``).
    * ``A_log`` (D, N): ``log(1), ..., log(N)`` in every channel (S4D-Real, A = -(n+1);
      :func:`ssm_ref.mamba_a_log`, ``eq-mamba-alog``).
    * ``D`` (D,): ones.

    This is the bare module's initialization.  The language model around it
    (``MambaLMHeadModel``'s ``_init_weights``) afterwards zeroes the linear
    biases and rescales ``out_proj.weight`` by ``1/sqrt(n_layer)``; a stack of
    blocks that wants that must do it itself.

    Parameters
    ----------
    config : MambaConfig
    seed : int, numpy.random.Generator or None
        Seed of ``np.random.default_rng`` (or a generator to draw from).
    dtype : numpy dtype
        dtype of the returned arrays (float64 by default).

    Returns
    -------
    params : dict of str -> ndarray
        The official names and shapes (see :data:`STATE_DICT_KEYS`).

    References
    ----------
    Gu and Dao (2023), "Mamba: Linear-Time Sequence Modeling with Selective
    State Spaces", arXiv:2312.00752, section 3.6 and appendix; the
    ``state-spaces/mamba`` repository, ``mamba_ssm/modules/mamba_simple.py``.

    Examples
    --------
    >>> import numpy as np
    >>> p = mamba_init(MambaConfig(d_model=4, d_state=3), seed=0)
    >>> p["A_log"][0]
    array([0.        , 0.69314718, 1.09861229])
    >>> p["in_proj.weight"].shape, p["conv1d.weight"].shape, p["x_proj.weight"].shape
    ((16, 4), (8, 1, 4), (7, 8))
    """
    if not isinstance(config, MambaConfig):
        raise TypeError(f"Parameter config is a {type(config).__name__} but a MambaConfig was expected")
    rng = rng_from(seed)
    d_model, D, N, K, R = config.d_model, config.d_inner, config.d_state, config.d_conv, config.dt_rank

    # [book:mamba-init]
    def uniform(bound, shape):
        return rng.uniform(-bound, bound, size=shape)

    p = {}
    p["in_proj.weight"] = uniform(d_model**-0.5, (2 * D, d_model))  # (2D, d_model)
    if config.bias:
        p["in_proj.bias"] = uniform(d_model**-0.5, (2 * D,))
    p["conv1d.weight"] = uniform(K**-0.5, (D, 1, K))  # (D, 1, K)
    if config.conv_bias:
        p["conv1d.bias"] = uniform(K**-0.5, (D,))
    p["x_proj.weight"] = uniform(D**-0.5, (R + 2 * N, D))  # (R + 2N, D)
    dt_init_std = R**-0.5 * config.dt_scale
    if config.dt_init == "random":
        p["dt_proj.weight"] = uniform(dt_init_std, (D, R))  # (D, R)
    else:
        p["dt_proj.weight"] = np.full((D, R), dt_init_std)
    log_min, log_max = math.log(config.dt_min), math.log(config.dt_max)
    dt = np.exp(rng.random(D) * (log_max - log_min) + log_min)  # (D,), log-uniform
    dt = np.maximum(dt, config.dt_init_floor)
    p["dt_proj.bias"] = dt + np.log(-np.expm1(-dt))  # inverse softplus: softplus(bias) = dt
    p["A_log"] = mamba_a_log(D, N)  # (D, N): log(1), ..., log(N) in every channel
    p["D"] = np.ones(D)
    p["out_proj.weight"] = uniform(D**-0.5, (d_model, D))  # (d_model, D)
    if config.bias:
        p["out_proj.bias"] = uniform(D**-0.5, (d_model,))
    # [/book:mamba-init]
    return {k: p[k].astype(dtype) for k in STATE_DICT_KEYS if k in p}


# --------------------------------------------------------------------------- the inner path
#: The state-dict names :func:`mamba_inner_forward` reads (``conv1d.bias`` may be absent).
INNER_KEYS = ("A_log", "D", "conv1d.weight", "conv1d.bias", "x_proj.weight",
              "dt_proj.weight", "dt_proj.bias")


def _f64(arr):
    """``arr`` as float64, without a copy when it already is (parameters are read every call)."""
    return None if arr is None else arr.astype(np.float64, copy=False)


def inner_path_weights(params, names=None, dtype=np.float64):
    """One inner path's parameters in float64 (or ``dtype``) under short names, unchecked.

    ``w_conv`` (D, K), ``b_conv`` (D,) or None, ``w_x`` (R + 2N, D), ``w_dt``
    (D, R), ``b_dt`` (D,), ``A`` (D, N) = -exp(A_log), ``D`` (D,).  ``names``
    maps the Mamba names of :data:`INNER_KEYS` to the keys of ``params``
    (Vim's backward path keeps its copy under other names).
    """
    def get(k):
        v = params.get(k if names is None else names[k])
        return None if v is None else v.astype(dtype, copy=False)
    A_log = get("A_log")
    A = a_from_log(A_log, "A_log" if names is None else names["A_log"])  # (D, N)
    return {"w_conv": get("conv1d.weight")[:, 0, :], "b_conv": get("conv1d.bias"),  # (D, K)
            "w_x": get("x_proj.weight"), "w_dt": get("dt_proj.weight"),
            "b_dt": get("dt_proj.bias"), "A": A,  # (D, N)
            "D": get("D")}


def _inner_weights(params, D, data_name, data):
    """Check one inner path's parameters against d_inner = D; return :func:`inner_path_weights`.

    The parameters must live on the array module of ``data`` (named ``data_name``).
    """
    if not hasattr(params, "keys"):
        raise TypeError(f"Parameter params is a {type(params).__name__}, not a mapping")
    missing = [k for k in INNER_KEYS if k != "conv1d.bias" and k not in params]
    if missing:
        raise KeyError(f"params lacks {missing}; the Mamba inner path needs {list(INNER_KEYS)} "
                       "(conv1d.bias optional)")
    p = {}
    for k in INNER_KEYS:
        if params.get(k) is None:
            p[k] = None
            continue
        p[k] = as_array(params[k], f"params[{k!r}]", allow_complex=False)
        check_finite(p[k], f"params[{k!r}]")
    _one_module({data_name: data, **{f"params[{k!r}]": v for k, v in p.items()}})
    check_shape(p["A_log"], "params['A_log']", (D, None))
    check_shape(p["conv1d.weight"], "params['conv1d.weight']", (D, 1, None))
    check_shape(p["dt_proj.weight"], "params['dt_proj.weight']", (D, None))
    N, R = p["A_log"].shape[1], p["dt_proj.weight"].shape[1]
    for k, shape in (("D", (D,)), ("conv1d.bias", (D,)), ("dt_proj.bias", (D,)),
                     ("x_proj.weight", (R + 2 * N, D))):
        if p[k] is not None:
            check_shape(p[k], f"params[{k!r}]", shape)
    return inner_path_weights(p)


def mamba_inner_forward(xz, params, *, scan_fn=None, return_last_state=False):
    """The Mamba block between ``in_proj`` and ``out_proj``, on channels-first ``xz``.

    conv1d -> SiLU -> x_proj -> (dt, B, C) -> dt_proj -> selective scan with
    D, the gate z, ``delta_bias = dt_proj.bias`` and softplus::

        x, z    = split(xz)                           (B, D, L) each
        x       = silu(causal_conv1d(x))              (B, D, L)
        dt,B,C  = split(x_proj(x))                    (B, L, R), (B, N, L), (B, N, L)
        delta   = dt_proj.weight @ dt                 (B, D, L)
        y       = selective_scan(x, delta, -exp(A_log), B, C, D, z,
                                 delta_bias=dt_proj.bias, delta_softplus=True)

    :class:`MambaBlock` wraps it in ``in_proj`` / ``out_proj``; Vim's
    bidirectional mixer (:class:`ssm_ref.vision.VimMixer`) runs it twice, on
    the sequence and on its flip, with separate parameters.

    Parameters
    ----------
    xz : array_like, shape (B, 2D, L)
        ``in_proj``'s output, channels first: x in the first D channels, z in
        the last D.
    params : mapping of str -> array_like
        The path's parameters under the official state-dict names
        (:data:`INNER_KEYS`): ``A_log`` (D, N), ``D`` (D,), ``conv1d.weight``
        (D, 1, K), ``conv1d.bias`` (D,) (optional), ``x_proj.weight``
        (R + 2N, D), ``dt_proj.weight`` (D, R), ``dt_proj.bias`` (D,).  Other
        keys are ignored, so a whole block's ``params`` can be passed.
    scan_fn : callable, optional
        The selective scan, signature of :func:`ssm_ref.selective_scan` (default).
    return_last_state : bool, default False
        Also return the scan's last state (B, D, N).

    Returns
    -------
    y : ndarray, shape (B, D, L)
        Gated scan output, in ``xz``'s dtype (computed in float64).
    cache : dict
        The float64 intermediates :func:`mamba_inner_backward` needs: ``x``,
        ``z``, ``x_conv``, ``x_act``, ``dt_low``, ``delta``, ``Bmat``, ``Cmat``.
    last_state : ndarray, shape (B, D, N)
        Only with ``return_last_state=True``.

    Raises
    ------
    ValueError
        ``xz`` not 3-D with an even channel count, or not finite; a parameter
        whose shape does not fit d_inner = ``xz.shape[1] // 2``.
    KeyError
        A required parameter is missing.
    TypeError
        Parameters and ``xz`` on different array modules (NumPy and CuPy).

    Notes
    -----
    The part of ``eq-mamba-block`` between the two linear layers.  The same
    computation as the official ``mamba_inner_fn_no_out_proj``
    (``mamba_ssm/ops/selective_scan_interface.py``) with ``B``, ``C`` made
    from the input; it takes ``A_log`` rather than A (A = -exp(A_log),
    ``eq-mamba-alog``) so that its gradient comes back under the state-dict name.

    References
    ----------
    Gu and Dao (2023), arXiv:2312.00752; ``state-spaces/mamba``,
    ``mamba_ssm/ops/selective_scan_interface.py`` (``mamba_inner_fn_no_out_proj``).

    Examples
    --------
    >>> import numpy as np
    >>> block = MambaBlock(d_model=4, d_state=2, seed=0)
    >>> u = np.random.default_rng(0).standard_normal((1, 5, 4))
    >>> xz = (u @ block.params["in_proj.weight"].T).transpose(0, 2, 1)  # (B, 2D, L)
    >>> y, cache = mamba_inner_forward(xz, block.params)
    >>> y.shape
    (1, 8, 5)
    >>> bool(np.allclose(y.transpose(0, 2, 1) @ block.params["out_proj.weight"].T, block(u)))
    True
    """
    xz_in = as_array(xz, "xz", allow_complex=False, ndim=3)
    check_finite(xz_in, "xz")
    if xz_in.shape[1] % 2:
        raise ValueError(f"Parameter xz has shape {xz_in.shape} but should be (B, 2 * d_inner, L)")
    w = _inner_weights(params, xz_in.shape[1] // 2, "xz", xz_in)
    y, cache, last_state = inner_forward(_f64(xz_in), w, selective_scan if scan_fn is None
                                         else scan_fn, return_last_state)
    y = y.astype(xz_in.dtype)
    return (y, cache, last_state) if return_last_state else (y, cache)


def inner_forward(xz, w, scan_fn, return_last_state=False):
    """:func:`mamba_inner_forward` on float64 ``xz`` and :func:`inner_path_weights`, unchecked.

    Returns ``(y (B, D, L) float64, cache, last_state or None)``.
    """
    R, N, D = w["w_dt"].shape[1], w["A"].shape[1], xz.shape[1] // 2
    xp = array_module(xz)
    # [book:mamba-inner-forward]
    x, z = xz[:, :D], xz[:, D:]  # (B, D, L) each
    x_conv = causal_conv1d(x, w["w_conv"], w["b_conv"], check=False)  # (B, D, L)
    x_act = silu(x_conv, check=False)  # (B, D, L)
    x_dbl = linear(x_act.transpose(0, 2, 1), w["w_x"], check=False)  # (B, L, R + 2N)
    dt_low = x_dbl[..., :R]  # (B, L, R)
    Bmat = x_dbl[..., R:R + N].transpose(0, 2, 1)  # (B, N, L)
    Cmat = x_dbl[..., R + N:].transpose(0, 2, 1)  # (B, N, L)
    delta = linear(dt_low, w["w_dt"], check=False).transpose(0, 2, 1)  # (B, D, L); bias in scan
    res = scan_fn(x_act, delta, w["A"], Bmat, Cmat, D=w["D"], z=z, delta_bias=w["b_dt"],
                  delta_softplus=True, return_last_state=return_last_state)
    # [/book:mamba-inner-forward]
    y, last_state = res if return_last_state else (res, None)  # (B, D, L), (B, D, N)
    y = xp.asarray(y, dtype=xz.dtype)  # (B, D, L)
    cache = {"x": x, "z": z, "x_conv": x_conv, "x_act": x_act, "dt_low": dt_low,
             "delta": delta, "Bmat": Bmat, "Cmat": Cmat}
    return y, cache, last_state


def inner_path_functions(scan_fn, scan_backward_fn):
    """The inner path a block runs with these scan functions: ``(forward, backward)``.

    Scan functions from ``fast.scan_functions("numba")`` carry the fused
    inner path of ``fast.numba_fused`` (an ``inner_path`` attribute on each:
    the causal conv and its SiLU in one kernel, the projections channels
    first, no transposes); it is used when both functions have one.
    Otherwise, the reference :func:`inner_forward` and :func:`inner_backward`.
    Both pairs take and return the same things; each reads only its own cache.
    """
    fwd, bwd = fused_pair(scan_fn, scan_backward_fn, "inner_path")
    return (inner_forward, inner_backward) if fwd is None else (fwd, bwd)


def fused_pair(scan_fn, scan_backward_fn, name, default=(None, None)):
    """The attribute ``name`` of both scan functions (a fused piece a backend carries, as
    ``fast.scan_functions("numba")`` does), or ``default`` (the reference's pair, or
    ``(None, None)``) unless both have it."""
    fwd = getattr(scan_fn, name, None)
    bwd = getattr(scan_backward_fn, name, None)
    return (fwd, bwd) if fwd is not None and bwd is not None else default


def linear_functions(scan_fn, scan_backward_fn):
    """The affine layer and its backward to run with these scan functions.

    Scan functions from ``fast.scan_functions("numba")`` carry compiled ones
    (attribute ``linear``, from ``fast.numba_linear``, with the reference's
    signatures: blocks of tokens on all cores); any other pair gets
    :func:`ssm_ref.nn.linear` and :func:`ssm_ref.nn.linear_backward`.  The
    mixers' in- and out-projections run through it.
    """
    return fused_pair(scan_fn, scan_backward_fn, "linear", default=(linear, linear_backward))


def mamba_inner_backward(dy, cache, params, *, scan_backward_fn=None):
    """Gradients of :func:`mamba_inner_forward`, layer by layer in reverse order.

    Parameters
    ----------
    dy : array_like, shape (B, D, L)
        Gradient of the loss with respect to the path's output y.
    cache : dict
        From ``mamba_inner_forward`` with the same ``params``.
    params : mapping of str -> array_like
        As in :func:`mamba_inner_forward`.
    scan_backward_fn : callable, optional
        Signature of :func:`ssm_ref.selective_scan_backward` (default).

    Returns
    -------
    dxz : ndarray, shape (B, 2D, L)
        Gradient with respect to ``xz`` (x's channels then z's), in ``dy``'s dtype.
    grads : dict of str -> ndarray
        Gradient of every parameter of :data:`INNER_KEYS`, under its
        state-dict name and in its shape, float64 (``conv1d.bias`` is None
        when the path has no conv bias).

    Raises
    ------
    TypeError
        ``cache`` is not the dict from :func:`mamba_inner_forward`.
    ValueError
        ``dy`` not the shape (B, D, L) of the cached path, or not finite.

    Notes
    -----
    The selective scan's own backward (a reverse scan, ``eq-selective-backward``)
    gives the gradients of x, delta, A, B, C, D, z and delta_bias; then
    ``A = -exp(A_log)`` so ``dA_log = dA * A`` -> ``dt_proj`` -> ``x_proj``
    (its input x_act also feeds the scan, so the two gradients add) -> SiLU ->
    the causal convolution; the gradients of x and z are concatenated back
    into the 2D channels of ``xz``.

    Examples
    --------
    >>> import numpy as np
    >>> p = mamba_init(MambaConfig(d_model=4, d_state=2), seed=0)
    >>> xz = np.ones((1, 16, 3))
    >>> y, cache = mamba_inner_forward(xz, p)
    >>> dxz, grads = mamba_inner_backward(np.ones_like(y), cache, p)
    >>> dxz.shape, grads["A_log"].shape, grads["conv1d.weight"].shape
    ((1, 16, 3), (8, 2), (8, 1, 4))
    """
    dy_in = check_cached_grad(dy, "dy", cache, "x_act", "mamba_inner_forward", ndim=3)
    check_finite(dy_in, "dy")
    w = _inner_weights(params, cache["x_act"].shape[1], "dy", dy_in)
    dxz, g = inner_backward(_f64(dy_in), cache, w, selective_scan_backward
                            if scan_backward_fn is None else scan_backward_fn)
    return dxz.astype(dy_in.dtype), g


def inner_backward(dy, cache, w, scan_backward_fn, split=False):
    """:func:`mamba_inner_backward` on float64 ``dy`` and :func:`inner_path_weights`, unchecked.

    ``split``: return ``(dx, dz)``, each (B, D, L), in place of ``dxz``: the
    gradients of ``xz``'s two halves not concatenated, for a caller that adds
    each into another path's (Vim's mixer).
    """
    xp = array_module(dy)
    g = {}
    # [book:mamba-inner-backward]
    # y = selective_scan(x_act, delta, A, B, C, D, z, delta_bias, softplus)
    s = scan_backward_fn(dy, cache["x_act"], cache["delta"], w["A"], cache["Bmat"],
                         cache["Cmat"], D=w["D"], z=cache["z"], delta_bias=w["b_dt"],
                         delta_softplus=True)
    s = {k: (None if v is None else xp.asarray(v, dtype=dy.dtype)) for k, v in s.items()}
    g["A_log"] = s["A"] * w["A"]  # A = -exp(A_log): dA/dA_log = A
    g["D"], g["dt_proj.bias"] = s["D"], s["delta_bias"]

    # delta = dt_proj.weight @ dt_low
    d_dt_low, g["dt_proj.weight"], _ = linear_backward(
        s["delta"].transpose(0, 2, 1), cache["dt_low"], w["w_dt"], check=False)  # (B, L, R)

    # (dt_low, B, C) = split(x_proj(x_act))
    d_xdbl = xp.concatenate([d_dt_low, s["B"].transpose(0, 2, 1),
                             s["C"].transpose(0, 2, 1)], axis=-1)  # (B, L, R + 2N)
    dx_act_tok, g["x_proj.weight"], _ = linear_backward(
        d_xdbl, cache["x_act"].transpose(0, 2, 1), w["w_x"], check=False)  # (B, L, D)
    dx_act = s["u"] + dx_act_tok.transpose(0, 2, 1)  # (B, D, L): scan input + x_proj input

    # x_act = silu(conv(x))
    dx_conv = silu_backward(dx_act, cache["x_conv"], check=False)  # (B, D, L)
    dx, dw_conv, g["conv1d.bias"] = causal_conv1d_backward(
        dx_conv, cache["x"], w["w_conv"], w["b_conv"], check=False)  # (B, D, L), (D, K)
    g["conv1d.weight"] = dw_conv[:, None, :]  # (D, 1, K)

    # x = xz[:, :D], z = xz[:, D:]
    if split:  # the halves apart, for a caller that adds them into another path's (Vim)
        return (dx, s["z"]), g
    dxz = xp.concatenate([dx, s["z"]], axis=1)  # (B, 2D, L)
    # [/book:mamba-inner-backward]
    return dxz, g


# --------------------------------------------------------------------------- the block
class MambaBlock(Module):
    """The Mamba block of ``mamba_ssm.modules.mamba_simple.Mamba`` on (B, L, d_model) tokens.

    Parameters
    ----------
    config : MambaConfig, optional
        Sizes and initialization settings; built from ``**config_fields`` when
        omitted (``MambaBlock(d_model=64)``), or updated by them.
    seed : int, numpy.random.Generator or None, default 0
        Seed of the official initialization (:func:`mamba_init`).
    dtype : numpy dtype, default float64
        dtype the parameters are stored in (computation is float64 regardless,
        unless :meth:`set_dtype` changes both).
    scan_fn : callable, optional
        The selective scan, with the signature of :func:`ssm_ref.selective_scan`
        (default); e.g. ``fast.selective_scan`` to run the compiled backend.
    scan_backward_fn : callable, optional
        Its backward, with the signature of :func:`ssm_ref.selective_scan_backward`.
    state_update_fn : callable, optional
        The decoding step, with the signature and in-place semantics of
        :func:`ssm_ref.selective_state_update` (the official one's): :meth:`step`
        passes it a copy of the state to update.
    **config_fields
        Fields of :class:`MambaConfig` (``d_model``, ``d_state``, ``expand``, ...).

    Attributes
    ----------
    config : MambaConfig
    params : mapping of str -> ndarray
        The weights under their official state-dict names (a live view, see
        :class:`ssm_ref.module.Module`), NumPy arrays after construction;
        :meth:`to` moves them to another array module (CuPy), where the data
        passed to the block must then live too.

    Notes
    -----
    Implements ``eq-mamba-block``; the scan inside is ``eq-selective-delta`` to
    ``eq-selective-output`` of the selective SSM chapter.  The forward follows
    the official slow path (``Mamba.forward`` with ``use_fast_path=False``):
    ``dt_proj``'s bias is not added by the linear layer but passed to the scan
    as ``delta_bias``, before the softplus.  A = -exp(A_log) keeps every
    channel's poles negative whatever the training does to ``A_log``.

    References
    ----------
    Gu and Dao (2023), arXiv:2312.00752, Figure 3 and section 3.4;
    ``state-spaces/mamba``, ``mamba_ssm/modules/mamba_simple.py``.

    Examples
    --------
    >>> import numpy as np
    >>> block = MambaBlock(d_model=8, d_state=4, seed=0)
    >>> x = np.random.default_rng(1).standard_normal((2, 5, 8))
    >>> y = block(x)
    >>> y.shape, y.dtype
    ((2, 5, 8), dtype('float64'))
    >>> conv_state, ssm_state = block.allocate_cache(batch=2)
    >>> y0, conv_state, ssm_state = block.step(x[:, 0], conv_state, ssm_state)
    >>> bool(np.allclose(y0, y[:, 0]))
    True
    """

    def __init__(self, config=None, *, seed=0, dtype=np.float64, scan_fn=None,
                 scan_backward_fn=None, state_update_fn=None, **config_fields):
        super().__init__()
        self.config = resolve_config(MambaConfig, config, config_fields)
        for k, v in mamba_init(self.config, seed=seed, dtype=dtype).items():
            self.add_param(k, v)
        self.set_backend(scan_fn, scan_backward_fn, state_update_fn)

    def __repr__(self):
        c = self.config
        return (f"MambaBlock(d_model={c.d_model}, d_inner={c.d_inner}, d_state={c.d_state}, "
                f"d_conv={c.d_conv}, dt_rank={c.dt_rank}, params={self.n_params()})")

    # ------------------------------------------------------------------ weights interchange
    @classmethod
    def from_state_dict(cls, state_dict, *, prefix="", scan_fn=None, scan_backward_fn=None,
                        state_update_fn=None):
        """Build a block from the official ``Mamba`` module's state dict (NumPy arrays).

        Sizes are inferred from the shapes: ``d_model`` and ``d_inner`` from
        ``in_proj.weight`` (2·d_inner, d_model), ``d_state`` from ``A_log``,
        ``d_conv`` from ``conv1d.weight`` (d_inner, 1, d_conv), ``dt_rank``
        from ``dt_proj.weight`` (d_inner, dt_rank); every other entry is then
        checked against them.  Arrays are copied and keep their dtype.

        Parameters
        ----------
        state_dict : mapping of str -> array_like
            E.g. ``{k: v.numpy() for k, v in mamba.state_dict().items()}``.
        prefix : str, optional
            Only keys starting with it are read, with it removed (e.g.
            ``"backbone.layers.0.mixer."`` in a full language model's state dict);
            other keys are ignored.
        scan_fn, scan_backward_fn, state_update_fn : callable, optional
            As in :class:`MambaBlock`.

        Returns
        -------
        MambaBlock

        Raises
        ------
        KeyError
            A required name is missing or an unknown name is present (all named),
            or only one of ``in_proj.bias`` / ``out_proj.bias`` is given.
        ValueError
            A shape does not match the sizes inferred (the message names the key,
            its shape and the expected shape), or a value is not finite.

        Examples
        --------
        >>> import numpy as np
        >>> sd = MambaBlock(d_model=6, d_state=2, seed=3).state_dict()
        >>> block = MambaBlock.from_state_dict(sd)
        >>> block.config.d_inner, block.config.dt_rank, block.config.d_conv
        (12, 1, 4)
        """
        required = [k for k in STATE_DICT_KEYS if k not in _OPTIONAL_KEYS]
        arrs = read_state_dict(state_dict, prefix, required, _OPTIONAL_KEYS, "Mamba")
        check_state_pair(arrs, "in_proj.bias", "out_proj.bias")
        d_model, D = in_proj_sizes(arrs)
        check_state_ndim(arrs, "A_log", 2, "(d_inner, d_state)")
        check_state_ndim(arrs, "conv1d.weight", 3, "(d_inner, 1, d_conv)")
        check_state_ndim(arrs, "dt_proj.weight", 2, "(d_inner, dt_rank)")
        N, K = arrs["A_log"].shape[1], arrs["conv1d.weight"].shape[2]
        R = arrs["dt_proj.weight"].shape[1]
        check_state_dstate(arrs, "A_log", "x_proj.weight", R, 0)
        expected = {
            "A_log": (D, N), "D": (D,), "in_proj.weight": (2 * D, d_model), "in_proj.bias": (2 * D,),
            "conv1d.weight": (D, 1, K), "conv1d.bias": (D,), "x_proj.weight": (R + 2 * N, D),
            "dt_proj.weight": (D, R), "dt_proj.bias": (D,), "out_proj.weight": (d_model, D),
            "out_proj.bias": (d_model,),
        }
        check_state_shapes(arrs, expected, f"d_model={d_model}, d_inner={D}, d_state={N}, "
                                           f"d_conv={K}, dt_rank={R}")
        config = config_from_sizes(d_model, D, d_state=N, d_conv=K, dt_rank=R,
                                   conv_bias="conv1d.bias" in arrs, bias="in_proj.bias" in arrs)
        block = cls(config, scan_fn=scan_fn, scan_backward_fn=scan_backward_fn,
                    state_update_fn=state_update_fn)
        block.params = arrs
        return block

    # ------------------------------------------------------------------ forward
    def _check_tokens(self, x, name="x"):
        x = as_array(x, name, allow_complex=False, ndim=3)
        check_shape(x, name, (None, None, self.config.d_model))
        check_nonempty(x, name)
        self._check_module(x, name)
        check_finite(x, name)
        return x

    def forward(self, x, return_cache=False):
        """Run the block on a sequence of tokens.

        Parameters
        ----------
        x : array_like, shape (B, L, d_model)
            Input tokens (called ``hidden_states`` in the official code).
        return_cache : bool, default False
            Also return the intermediates that :meth:`backward` needs.

        Returns
        -------
        out : ndarray, shape (B, L, d_model)
            In ``x``'s dtype (computed in float64).
        cache : dict
            Only with ``return_cache=True``: the input and every intermediate
            in float64 (``xz``, ``x_conv``, ``x_act``, ``dt_low``, ``delta``,
            ``Bmat``, ``Cmat``, ``z``, ``y``).

        Raises
        ------
        ValueError
            If ``x`` is not 3-D with last axis ``d_model``, or not finite.

        Notes
        -----
        Implements ``eq-mamba-block``.

        Examples
        --------
        >>> import numpy as np
        >>> block = MambaBlock(d_model=4, d_state=2)
        >>> block(np.zeros((1, 3, 4), dtype=np.float32)).dtype
        dtype('float32')
        """
        x = self._check_tokens(x)
        out, cache, _ = self._forward(x.astype(self.compute_dtype, copy=False),
                                      return_last_state=False)
        out = out.astype(x.dtype)
        return (out, cache) if return_cache else out

    def _forward(self, u, return_last_state=False):
        """The data path on float64 tokens u (B, L, d_model), unchecked; (out, cache, last_state)."""
        # [book:mamba-block-forward]
        linear, _ = linear_functions(self.scan_fn, self.scan_backward_fn)
        xz = linear(u, self._w("in_proj.weight"), self._w("in_proj.bias"),
                    check=False)  # (B, L, 2D)
        path_forward, _ = inner_path_functions(self.scan_fn, self.scan_backward_fn)
        y, inner, last_state = path_forward(xz.transpose(0, 2, 1),
                                            inner_path_weights(self._params,
                                                               dtype=self.compute_dtype),
                                            self.scan_fn, return_last_state)  # (B, D, L)
        out = linear(y.transpose(0, 2, 1), self._w("out_proj.weight"),
                     self._w("out_proj.bias"), check=False)  # (B, L, d_model)
        # [/book:mamba-block-forward]
        cache = {"u": u, "xz": xz, **inner, "y": y}
        return out, cache, last_state

    # ------------------------------------------------------------------ backward
    def backward(self, dout, cache):
        """Gradients of the block, hand-derived layer by layer in reverse order.

        Parameters
        ----------
        dout : array_like, shape (B, L, d_model)
            Gradient of the loss with respect to the block's output.
        cache : dict
            From ``forward(x, return_cache=True)`` with the current parameters.

        Returns
        -------
        dx : ndarray, shape (B, L, d_model)
            Gradient with respect to the input, in ``dout``'s dtype.
        grads : dict of str -> ndarray
            Gradient of every parameter, keyed by its state-dict name, each in
            that parameter's shape and dtype.

        Raises
        ------
        ValueError
            If ``dout`` does not have the shape of the cached input.

        Notes
        -----
        Reverse of ``eq-mamba-block``: ``out_proj`` -> the inner path
        (:func:`mamba_inner_backward`: the selective scan's own backward, a
        reverse scan ``eq-selective-backward``, then ``A = -exp(A_log)``,
        ``dt_proj``, ``x_proj``, SiLU and the causal convolution) -> ``in_proj``
        (the inner path returns the gradients of x and z concatenated back into
        the 2D channels of ``xz``).

        Examples
        --------
        >>> import numpy as np
        >>> block = MambaBlock(d_model=4, d_state=2)
        >>> x = np.ones((1, 3, 4))
        >>> out, cache = block.forward(x, return_cache=True)
        >>> dx, grads = block.backward(np.ones_like(out), cache)
        >>> dx.shape, grads["A_log"].shape, grads["conv1d.weight"].shape
        ((1, 3, 4), (8, 2), (8, 1, 4))
        """
        dout_arr = check_cached_grad(dout, "dout", cache, "u", "forward(x, return_cache=True)",
                                     ndim=3)
        self._check_module(dout_arr, "dout")
        check_finite(dout_arr, "dout")
        du, grads = self._backward(dout_arr.astype(self.compute_dtype, copy=False), cache)
        return du.astype(dout_arr.dtype), grads

    def _backward(self, dout, cache):
        """Gradients on float64 ``dout``, unchecked: (du float64, grads by state-dict name)."""
        g = {}
        # [book:mamba-block-backward]
        # out = out_proj(y)
        _, linear_backward = linear_functions(self.scan_fn, self.scan_backward_fn)
        dy_tok, g["out_proj.weight"], g["out_proj.bias"] = linear_backward(
            dout, cache["y"].transpose(0, 2, 1), self._w("out_proj.weight"),
            self._w("out_proj.bias"), check=False)

        # y = inner path(xz): the scan, dt_proj, x_proj, SiLU, conv1d in reverse
        _, path_backward = inner_path_functions(self.scan_fn, self.scan_backward_fn)
        dxz, g_inner = path_backward(dy_tok.transpose(0, 2, 1), cache,
                                     inner_path_weights(self._params, dtype=self.compute_dtype),
                                     self.scan_backward_fn)  # (B, 2D, L)
        g.update(g_inner)

        # xz = in_proj(u)
        du, g["in_proj.weight"], g["in_proj.bias"] = linear_backward(
            dxz.transpose(0, 2, 1), cache["u"], self._w("in_proj.weight"),
            self._w("in_proj.bias"), check=False)  # (B, L, d_model)
        # [/book:mamba-block-backward]
        return du, self._grads(g)

    # ------------------------------------------------------------------ recurrent mode
    def allocate_cache(self, batch, dtype=np.float64):
        """Zero caches for token-by-token decoding with :meth:`step`.

        Allocated on the array module the parameters live on (see :meth:`to`).

        Parameters
        ----------
        batch : int
        dtype : numpy dtype, default float64
            dtype of both caches (stated, never taken from a global default).

        Returns
        -------
        conv_state : ndarray, shape (batch, d_inner, d_conv)
            The last ``d_conv`` inputs of the convolution, oldest first.
        ssm_state : ndarray, shape (batch, d_inner, d_state)
            The SSM state h.

        Examples
        --------
        >>> [a.shape for a in MambaBlock(d_model=4, d_state=3).allocate_cache(2)]
        [(2, 8, 4), (2, 8, 3)]
        """
        batch = check_positive_int(batch, "batch")
        c = self.config
        xp = array_module(*self.params.values())
        return (xp.zeros((batch, c.d_inner, c.d_conv), dtype=dtype),
                xp.zeros((batch, c.d_inner, c.d_state), dtype=dtype))

    def step(self, x_t, conv_state, ssm_state):
        """Advance the block by one token, from the caches (official ``Mamba.step``).

        Parameters
        ----------
        x_t : array_like, shape (B, d_model) or (B, 1, d_model)
            The new token (the official code passes (B, 1, d_model)).
        conv_state : array_like, shape (B, d_inner, d_conv)
        ssm_state : array_like, shape (B, d_inner, d_state)
            Caches from :meth:`allocate_cache`, :meth:`prefill` or the previous step.
            They are not modified; the updated ones are returned.

        Returns
        -------
        y_t : ndarray, same shape and dtype as ``x_t``
        conv_state : ndarray, shape (B, d_inner, d_conv)
            Rolled one step left with the new x at the end (eq-mamba-conv-step),
            in the dtype it came in.
        ssm_state : ndarray, shape (B, d_inner, d_state)
            h_t, in the dtype it came in.

        Raises
        ------
        ValueError
            Wrong shapes (named, with the expected shape) or non-finite values.

        Notes
        -----
        Implements ``eq-mamba-conv-step`` then one step of the selective SSM
        (``selective_state_update``).  Per token this costs
        O(d_model·d_inner + d_inner·(d_conv + R + N)), independent of how
        many tokens came before.

        Examples
        --------
        >>> import numpy as np
        >>> block = MambaBlock(d_model=4, d_state=2)
        >>> conv, ssm = block.allocate_cache(1)
        >>> x_t = np.ones((1, 4))
        >>> y, conv, ssm = block.step(x_t, conv, ssm)
        >>> x_branch = (x_t @ block.params["in_proj.weight"].T)[:, :8]  # first d_inner channels
        >>> bool(np.allclose(conv[:, :, -1], x_branch)), bool(np.all(conv[:, :, :-1] == 0))
        (True, True)
        """
        c, p = self.config, self._params
        w = {**inner_path_weights(p), "w_in": _f64(p["in_proj.weight"]),
             "b_in": _f64(p.get("in_proj.bias")), "w_out": _f64(p["out_proj.weight"]),
             "b_out": _f64(p.get("out_proj.bias"))}
        x_in = as_array(x_t, "x_t", allow_complex=False, ndim=(2, 3))
        if x_in.ndim == 3:
            check_shape(x_in, "x_t", (None, 1, c.d_model))
        else:
            check_shape(x_in, "x_t", (None, c.d_model))
        check_finite(x_in, "x_t")
        batch = x_in.shape[0]
        conv_in = as_array(conv_state, "conv_state", allow_complex=False, ndim=3)
        check_shape(conv_in, "conv_state", (batch, c.d_inner, c.d_conv))
        ssm_in = as_array(ssm_state, "ssm_state", allow_complex=False, ndim=3)
        check_shape(ssm_in, "ssm_state", (batch, c.d_inner, c.d_state))
        xp = self._check_module(x_in, "x_t")
        _one_module({"x_t": x_in, "conv_state": conv_in, "ssm_state": ssm_in})
        check_finite(conv_in, "conv_state")
        check_finite(ssm_in, "ssm_state")
        D, N, R = c.d_inner, c.d_state, c.dt_rank

        # [book:mamba-step]
        u = x_in.reshape(batch, c.d_model).astype(np.float64)  # (B, d_model)
        xz = linear(u, w["w_in"], w["b_in"], check=False)  # (B, 2D)
        x, z = xz[:, :D], xz[:, D:]  # (B, D) each
        conv = xp.concatenate([conv_in[:, :, 1:].astype(np.float64), x[:, :, None]],
                              axis=2)  # (B, D, K): roll left, new x at the end
        x_conv = xp.sum(conv * w["w_conv"], axis=-1)  # (B, D)
        if w["b_conv"] is not None:
            x_conv = x_conv + w["b_conv"]
        x_act = silu(x_conv, check=False)  # (B, D)
        x_dbl = linear(x_act, w["w_x"], check=False)  # (B, R + 2N)
        dt_low, Bmat, Cmat = x_dbl[:, :R], x_dbl[:, R:R + N], x_dbl[:, R + N:]  # (B, R), (B, N), (B, N)
        delta = linear(dt_low, w["w_dt"], check=False)  # (B, D)
        h = ssm_in.astype(np.float64)  # (B, D, N): a copy, updated in place to h_t
        y = self.state_update_fn(h, x_act, delta, w["A"], Bmat, Cmat,
                                 D=w["D"], z=z, dt_bias=w["b_dt"], dt_softplus=True)
        out = linear(xp.asarray(y, dtype=np.float64), w["w_out"], w["b_out"],
                     check=False)  # (B, d_model)
        # [/book:mamba-step]
        out = out.reshape(x_in.shape).astype(x_in.dtype)
        return out, conv.astype(conv_in.dtype), xp.asarray(h).astype(ssm_in.dtype)

    def prefill(self, x):
        """Run the forward on a prompt and return the caches that continue it with :meth:`step`.

        Parameters
        ----------
        x : array_like, shape (B, L, d_model)

        Returns
        -------
        out : ndarray, shape (B, L, d_model), in ``x``'s dtype
        conv_state : ndarray, shape (B, d_inner, d_conv), float64
            The last ``d_conv`` inputs of the convolution (zero-padded in front
            when L < d_conv), as the official forward stores them.
        ssm_state : ndarray, shape (B, d_inner, d_state), float64
            The scan's last state.

        Examples
        --------
        >>> import numpy as np
        >>> block = MambaBlock(d_model=4, d_state=2)
        >>> x = np.random.default_rng(0).standard_normal((1, 6, 4))
        >>> _, conv, ssm = block.prefill(x[:, :4])
        >>> y4, conv, ssm = block.step(x[:, 4], conv, ssm)
        >>> bool(np.allclose(y4, block(x)[:, 4]))
        True
        """
        x = self._check_tokens(x)
        out, cache, last_state = self._forward(_f64(x), return_last_state=True)
        K, L, xp = self.config.d_conv, x.shape[1], array_module(x)
        xs = cache["x"][:, :, max(0, L - K):]  # (B, D, min(L, K))
        conv_state = xp.concatenate(
            [xp.zeros(xs.shape[:2] + (K - xs.shape[2],)), xs], axis=2)  # (B, D, K)
        return out.astype(x.dtype), conv_state, xp.asarray(last_state, dtype=np.float64)
