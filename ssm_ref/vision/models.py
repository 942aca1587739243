"""Tiny image classifiers built from the vision blocks, plus attention and CNN baselines.

Glossary
--------
B        batch size
H, W     image height and width (pixels); C the image channels
p        patch size; h = H / p, w = W / p the token grid; L = h·w tokens
E        embedding width (``embed_dim``, the blocks' ``d_model``)
N        SSM state size (``d_state``)
K        number of classes (``n_classes``)
perm     a scan order, ``seq[t] = tokens[perm[t]]`` (``ssm_ref.vision.scan_orders``)
logits   (B, K) class scores before the softmax

Every model has the same interface (the training loop of ``ssm_ref.train``
relies on exactly this)::

    model.params                         dict name -> ndarray, official-style dotted names
    model.forward(x, return_cache=False) x (B, H, W, C) -> logits (B, K) [, cache]
    model.backward(dlogits, cache)       -> grads, a dict with exactly the keys of params
    model.backward(dlogits, cache, return_input_grad=True) -> (dx (B, H, W, C), grads)
    model.forward_features(x, return_cache=False) -> backbone output (B, h, w, E) [, cache]
    model.backward_features(dfeat, cache)         -> (dx, grads)   (receptive fields)
    model.state_dict() / model.load_state_dict(sd)     copies; np.savez-friendly
    model.n_params(), model.no_weight_decay(), model.config (a dataclass)
    model.set_backend(scan_fn, scan_backward_fn)       swap the selective scan
    model.to(xp)                                       move params to numpy or cupy

``params`` is the single source of truth: the blocks inside read their weights
from it at every forward, so an optimiser may update the arrays in place or
replace them.  Computation is float64; logits come back in the input's dtype,
gradients in their parameter's dtype.

On a GPU: ``model.to(cupy)`` moves the parameters, and a forward/backward on
CuPy images then runs entirely on the device (every layer looks up its array
module from its inputs, see ``ssm_ref._xp``); pair it with
``set_backend`` and the ``"cuda"`` scan of :mod:`fast`.

The models (``build_model(name, **kw)``):

====================  ======================================================================
``"vim"``             :class:`TinyVim`: patches -> scan order -> middle class token -> position
                      embedding -> Vim blocks -> RMSNorm -> head on the class token
``"vmamba"``          :class:`TinyVMamba`: patches -> VSS blocks (SS2D, cross-scan) on the grid
                      -> LayerNorm -> mean pool -> head
``"localmamba"``      TinyVMamba with LocalMamba's windowed directions
``"efficientvmamba"`` TinyVMamba with EfficientVMamba's atrous (ES2D) directions
``"plainmamba"``      :class:`TinyPlainMamba`: PlainMamba blocks (4 shared-parameter snakes)
``"attention"``       :class:`TinyAttention`: a ViT of the same width (softmax attention, MLP)
``"cnn"``             :class:`TinyCNN`: depthwise 3x3 conv blocks (a local baseline)
====================  ======================================================================

Book chapter: "Vision Mamba blocks" (label ``vision-blocks``); survey: Rahman
et al. 2024, arXiv:2410.03105, Section 3 (the pipeline, Fig. 3) and Section 5
(the comparison with CNNs and Transformers).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from .._validation import (
    as_array,
    check_choice,
    check_finite,
    check_positive_int,
    check_positive_scalar,
    check_shape,
)
from .._xp import array_module, on_module, special
from ..nn import (
    depthwise_conv2d,
    depthwise_conv2d_backward,
    layer_norm,
    layer_norm_backward,
    linear,
    linear_backward,
    rms_norm,
    rms_norm_backward,
)
from ..selective import selective_scan, selective_scan_backward
from .blocks import (
    PatchEmbed,
    PlainMambaBlock,
    VimBlock,
    VSSBlock,
    add_position_embedding,
    add_position_embedding_backward,
    insert_cls_token,
    insert_cls_token_backward,
)
from .multi import SCHEMES
from .scan_orders import SCAN_ORDERS, from_sequence, scan_order, to_sequence

__all__ = [
    "VimConfig",
    "VMambaConfig",
    "PlainMambaConfig",
    "AttentionConfig",
    "CNNConfig",
    "TinyVim",
    "TinyVMamba",
    "TinyPlainMamba",
    "TinyAttention",
    "TinyCNN",
    "MODELS",
    "build_model",
    "gelu",
    "gelu_backward",
]


# =========================================================================== small layers
def gelu(x):
    """Exact GELU, ``x Φ(x) = x (1 + erf(x / sqrt 2)) / 2`` (PyTorch's default ``nn.GELU``).

    Examples
    --------
    >>> import numpy as np
    >>> gelu(np.array([-1.0, 0.0, 1.0]))
    array([-0.15865525,  0.        ,  0.84134475])
    """
    xp = array_module(x)
    x = xp.asarray(x)
    x64 = x.astype(np.float64)
    erf = special(xp).erf  # scipy.special.erf, or cupyx.scipy.special.erf on a GPU
    return (0.5 * x64 * (1.0 + erf(x64 / math.sqrt(2.0)))).astype(x.dtype)


def gelu_backward(dy, x):
    """Gradient of :func:`gelu`: ``dy (Φ(x) + x φ(x))`` with φ the standard normal density.

    Examples
    --------
    >>> import numpy as np
    >>> gelu_backward(np.ones(2), np.array([0.0, 10.0]))
    array([0.5, 1. ])
    """
    xp = array_module(x, dy)
    x64 = xp.asarray(x, dtype=np.float64)
    cdf = 0.5 * (1.0 + special(xp).erf(x64 / math.sqrt(2.0)))
    pdf = xp.exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi)
    return xp.asarray(dy, dtype=np.float64) * (cdf + x64 * pdf)


def _normal(rng, std, shape):
    """``trunc_normal_(std=std)`` of timm: its cut at ±2 (absolute) is never reached at std 0.02."""
    return std * rng.standard_normal(shape)


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# =========================================================================== configurations
def _img_size(value):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (int(value), int(value))
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise TypeError(f"Parameter img_size = {value!r} must be an int or a pair (H, W)")
    return (check_positive_int(value[0], "img_size[0]"), check_positive_int(value[1], "img_size[1]"))


@dataclass(frozen=True)
class _BaseConfig:
    """Fields every tiny model has; sizes default to the 8x8 digits of scikit-learn."""

    img_size: tuple = (8, 8)
    in_chans: int = 1
    patch_size: int = 2
    embed_dim: int = 24
    depth: int = 2
    n_classes: int = 10

    def __post_init__(self):
        object.__setattr__(self, "img_size", _img_size(self.img_size))
        for name in ("in_chans", "patch_size", "embed_dim", "depth", "n_classes"):
            check_positive_int(getattr(self, name), name)
        H, W = self.img_size
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"Parameter img_size = {self.img_size} must be a multiple of "
                             f"patch_size = {self.patch_size}")

    @property
    def grid(self):
        """(h, w): the token grid."""
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    def to_dict(self):
        """A JSON-friendly dict of the fields (for metrics files and checkpoints)."""
        out = dataclasses.asdict(self)
        out["img_size"] = list(self.img_size)
        return out


@dataclass(frozen=True)
class VimConfig(_BaseConfig):
    """Configuration of :class:`TinyVim`.

    Attributes
    ----------
    img_size, in_chans, patch_size, embed_dim, depth, n_classes
        Image (8x8x1), patches (2 -> a 4x4 grid), width E (24), blocks (2), classes (10).
    d_state, d_conv, expand
        Of each Mamba path (8, 4, 2; Vim uses 16, 4, 2 at full size).
    scan : str
        The scan order the patches are flattened in (``"raster"``: Vim's own).
    scan_options : dict
        Options of the order (``{"window": 2}`` for ``"local"``, ...).
    cls_position : str or int
        Where the class token goes in the scanned sequence (``"middle"``: Vim).
    """

    d_state: int = 8
    d_conv: int = 4
    expand: float = 2
    scan: str = "raster"
    scan_options: dict = field(default_factory=dict)
    cls_position: object = "middle"

    def __post_init__(self):
        super().__post_init__()
        check_positive_int(self.d_state, "d_state")
        check_positive_int(self.d_conv, "d_conv")
        check_positive_scalar(self.expand, "expand")
        scan_order(self.scan, *self.grid, **self.scan_options)  # unknown names fail here


@dataclass(frozen=True)
class VMambaConfig(_BaseConfig):
    """Configuration of :class:`TinyVMamba`.

    Attributes
    ----------
    img_size, in_chans, patch_size, embed_dim, depth, n_classes
        As :class:`VimConfig`.
    d_state, d_conv, expand
        Of each SS2D (8, 3 (the 3x3 depthwise conv), 2).
    directions : str or tuple
        A scheme of ``ssm_ref.vision.SCHEMES`` (``"vmamba_cross"``: VMamba's four
        directions; ``"localmamba"``, ``"es2d"``, ``"omnidirectional"``, ...), a
        single scan-order name (one direction), or a tuple of order names.
    direction_options : dict
        Options of a scheme (``{"window": 2}``, ``{"step": 2}``).
    """

    d_state: int = 8
    d_conv: int = 3
    expand: float = 2
    directions: object = "vmamba_cross"
    direction_options: dict = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        check_positive_int(self.d_state, "d_state")
        check_positive_int(self.d_conv, "d_conv")
        check_positive_scalar(self.expand, "expand")
        d = self.directions
        if isinstance(d, str):
            if d not in SCHEMES and d not in SCAN_ORDERS:
                raise ValueError(f"Parameter directions = {d!r} is neither a scheme "
                                 f"{sorted(SCHEMES)} nor a scan order {sorted(SCAN_ORDERS)}")
        else:
            object.__setattr__(self, "directions", tuple(d))

    def mixer_directions(self):
        """The ``directions`` argument for the SS2D mixer (a scan-order name becomes a 1-list)."""
        d = self.directions
        if isinstance(d, str) and d in SCHEMES:
            return d, dict(self.direction_options) or None
        if isinstance(d, str):
            return [(d, dict(self.direction_options))], None
        return list(d), None


@dataclass(frozen=True)
class PlainMambaConfig(_BaseConfig):
    """Configuration of :class:`TinyPlainMamba` (d_conv 3 here; PlainMamba uses 7)."""

    d_state: int = 8
    d_conv: int = 3
    expand: float = 2

    def __post_init__(self):
        super().__post_init__()
        check_positive_int(self.d_state, "d_state")
        check_positive_int(self.d_conv, "d_conv")
        check_positive_scalar(self.expand, "expand")


@dataclass(frozen=True)
class AttentionConfig(_BaseConfig):
    """Configuration of :class:`TinyAttention` (a ViT with mean pooling).

    Attributes
    ----------
    n_heads : int
        Attention heads (2); ``embed_dim`` must be a multiple.
    mlp_ratio : float
        MLP hidden width / E (2; ViT uses 4).
    """

    n_heads: int = 2
    mlp_ratio: float = 2.0

    def __post_init__(self):
        super().__post_init__()
        check_positive_int(self.n_heads, "n_heads")
        check_positive_scalar(self.mlp_ratio, "mlp_ratio")
        if self.embed_dim % self.n_heads:
            raise ValueError(f"Parameter embed_dim = {self.embed_dim} must be a multiple of "
                             f"n_heads = {self.n_heads}")


@dataclass(frozen=True)
class CNNConfig(_BaseConfig):
    """Configuration of :class:`TinyCNN`: ``kernel`` is the depthwise kernel side (3)."""

    kernel: int = 3

    def __post_init__(self):
        super().__post_init__()
        check_positive_int(self.kernel, "kernel")


# =========================================================================== the shared interface
class _TinyModel:
    """What every tiny model shares: parameters, interface, checks, state dict."""

    config_cls = _BaseConfig
    #: Whether the image size is fixed by a position embedding.
    fixed_size = True

    def __init__(self, config=None, *, seed=0, dtype=np.float64, scan_fn=None,
                 scan_backward_fn=None, **overrides):
        if config is None:
            config = self.config_cls(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        if not isinstance(config, self.config_cls):
            raise TypeError(f"Parameter config is a {type(config).__name__} but a "
                            f"{self.config_cls.__name__} was expected")
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"Parameter dtype = {self.dtype} must be a floating-point dtype")
        self.scan_fn = selective_scan if scan_fn is None else scan_fn
        self.scan_backward_fn = (selective_scan_backward if scan_backward_fn is None
                                 else scan_backward_fn)
        self._bindings = []  # (model name, owner dict, owner key): where blocks read weights
        self.params = {}
        self._build(_rng(seed))
        self.params = {k: np.asarray(v).astype(self.dtype) for k, v in self.params.items()}
        self.set_backend(self.scan_fn, self.scan_backward_fn)

    # ------------------------------------------------------------------ construction helpers
    def _bind(self, prefix, module):
        """Register a block's parameters (and its mixer's) under ``prefix``."""
        for k in module.params:
            self._bindings.append((prefix + k, module.params, k))
            self.params[prefix + k] = module.params[k]
        for attr in ("mixer", "self_attention", "mamba"):
            sub = getattr(module, attr, None)
            if sub is not None and hasattr(sub, "params"):
                self._bind(prefix + attr + ".", sub)

    def _push(self):
        """Let every block read the current arrays of ``params`` (the source of truth)."""
        for name, owner, key in self._bindings:
            owner[key] = self.params[name]

    def _blocks(self):
        return []

    def set_backend(self, scan_fn=None, scan_backward_fn=None):
        """Use another selective scan (e.g. ``fast``'s Numba or CUDA backends) in every block.

        Parameters
        ----------
        scan_fn, scan_backward_fn : callable, optional
            Signatures of :func:`ssm_ref.selective_scan` and
            :func:`ssm_ref.selective_scan_backward`; None means the reference.
        """
        self.scan_fn = selective_scan if scan_fn is None else scan_fn
        self.scan_backward_fn = (selective_scan_backward if scan_backward_fn is None
                                 else scan_backward_fn)
        for name in ("scan_fn", "scan_backward_fn"):
            if not callable(getattr(self, name)):
                raise TypeError(f"Parameter {name} = {getattr(self, name)!r} is not callable")
        for blk in self._blocks():
            for sub in (blk, getattr(blk, "mixer", None), getattr(blk, "self_attention", None),
                        getattr(blk, "mamba", None)):
                if sub is not None and hasattr(sub, "scan_fn"):
                    sub.scan_fn, sub.scan_backward_fn = self.scan_fn, self.scan_backward_fn

    # ------------------------------------------------------------------ checks
    def _check_images(self, x):
        c = self.config
        x = as_array(x, "x", allow_complex=False, ndim=4)
        if self.fixed_size:
            check_shape(x, "x", (None, c.img_size[0], c.img_size[1], c.in_chans))
        else:
            check_shape(x, "x", (None, None, None, c.in_chans))
            if x.shape[1] % c.patch_size or x.shape[2] % c.patch_size:
                raise ValueError(f"Parameter x has shape {x.shape} (B, H, W, C): H and W must "
                                 f"be multiples of patch_size = {c.patch_size}")
        check_finite(x, "x")
        return x

    @staticmethod
    def _check_cache(cache):
        if not isinstance(cache, dict) or "logits" not in cache:
            raise TypeError("Parameter cache must be the dict from forward(x, return_cache=True)")
        return cache

    # ------------------------------------------------------------------ public interface
    def __call__(self, x):
        """Same as :meth:`forward`."""
        return self.forward(x)

    def __repr__(self):
        return f"{type(self).__name__}({self.config}, params={self.n_params()})"

    def forward(self, x, return_cache=False):
        """Classify images.

        Parameters
        ----------
        x : array_like, shape (B, H, W, C)
            Images, channels last.
        return_cache : bool, default False
            Also return what :meth:`backward` needs.

        Returns
        -------
        logits : ndarray, shape (B, n_classes), in ``x``'s dtype
        cache : dict, only with ``return_cache=True``

        Raises
        ------
        ValueError
            ``x`` not (B, H, W, C) with the configured size and channels, or not finite.
        """
        x = self._check_images(x)
        self._push()
        logits, feat, cache = self._forward(x.astype(np.float64))
        cache.update(x_dtype=x.dtype, logits=logits, feat_shape=feat.shape)
        logits = logits.astype(x.dtype)
        return (logits, cache) if return_cache else logits

    def backward(self, dlogits, cache, return_input_grad=False):
        """Gradients of every parameter (and optionally of the images), hand-derived.

        Parameters
        ----------
        dlogits : array_like, shape (B, n_classes)
            Gradient of the loss with respect to the logits.
        cache : dict
            From ``forward(x, return_cache=True)`` with the current parameters.
        return_input_grad : bool, default False
            Also return the gradient with respect to the images (adversarial
            attacks, saliency).

        Returns
        -------
        grads : dict of str -> ndarray
            Exactly the keys of :attr:`params`, each in its parameter's shape and dtype.
        dx : ndarray, shape (B, H, W, C)
            Only with ``return_input_grad=True``, returned first: ``(dx, grads)``.

        Raises
        ------
        ValueError
            ``dlogits`` of the wrong shape or not finite.
        """
        cache = self._check_cache(cache)
        d = as_array(dlogits, "dlogits", allow_complex=False, ndim=2)
        check_shape(d, "dlogits", cache["logits"].shape)
        check_finite(d, "dlogits")
        self._push()
        dx, grads = self._backward(d.astype(np.float64), None, cache)
        grads = self._grads_out(grads)
        return (dx.astype(cache["x_dtype"]), grads) if return_input_grad else grads

    def forward_features(self, x, return_cache=False):
        """The backbone's output on the token grid: the last block's, before the final norm.

        This is what VMamba's and RepLKNet's receptive-field code differentiates
        (``forward_backbone`` / ``forward_features``).  Taking it before the
        final LayerNorm matters: the channel sum of a LayerNorm output with
        unit weight and zero bias is constant, so its gradient would vanish.

        Returns
        -------
        feat : ndarray, shape (B, h, w, E), in ``x``'s dtype
            For :class:`TinyVim` the patch tokens of the residual stream put back
            on the grid (the class token left out).
        cache : dict, only with ``return_cache=True`` (for :meth:`backward_features`).
        """
        x = self._check_images(x)
        self._push()
        logits, feat, cache = self._forward(x.astype(np.float64))
        cache.update(x_dtype=x.dtype, logits=logits, feat_shape=feat.shape)
        feat = feat.astype(x.dtype)
        return (feat, cache) if return_cache else feat

    def backward_features(self, dfeat, cache):
        """Gradients through :meth:`forward_features`: ``(dx (B, H, W, C), grads)``."""
        cache = self._check_cache(cache)
        d = as_array(dfeat, "dfeat", allow_complex=False, ndim=4)
        check_shape(d, "dfeat", cache["feat_shape"])
        check_finite(d, "dfeat")
        self._push()
        dx, grads = self._backward(None, d.astype(np.float64), cache)
        return dx.astype(cache["x_dtype"]), self._grads_out(grads)

    def _grads_out(self, grads):
        if set(grads) != set(self.params):
            missing = sorted(set(self.params) - set(grads))
            extra = sorted(set(grads) - set(self.params))
            raise RuntimeError(f"internal: gradient keys differ (missing {missing}, extra {extra})")
        return {k: grads[k].astype(self.params[k].dtype) for k in self.params}

    def to(self, xp):
        """Move the parameters to array module ``xp`` (``numpy`` or ``cupy``); returns self.

        One copy per parameter, done once: afterwards forward and backward on
        images of that module stay there (no host round-trip inside a step).

        Examples
        --------
        >>> import numpy as np
        >>> m = build_model("vim", depth=1, embed_dim=8).to(np)
        >>> type(m.params["head.weight"]).__name__
        'ndarray'
        """
        if not hasattr(xp, "asarray") or not hasattr(xp, "zeros"):
            raise TypeError(f"Parameter xp = {xp!r} must be an array module such as numpy or cupy")
        self.params = {k: on_module(v, xp) for k, v in self.params.items()}
        self._push()
        return self

    def state_dict(self):
        """Copies of the parameters by name (``np.savez(path, **model.state_dict())`` works
        on NumPy parameters; on a GPU save ``{k: cupy.asnumpy(v) ...}``)."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict):
        """Load parameters by name (a dict or an ``np.load`` of an ``.npz``); strict.

        Values are copied and cast to the model's dtype, onto the array module
        the parameters live in (a NumPy state dict loads into a model on a GPU).

        Raises
        ------
        KeyError
            Missing or unexpected names (all listed).
        ValueError
            A shape that differs from the model's (name and both shapes given).
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"Parameter state_dict is a {type(state_dict).__name__}, not a mapping")
        keys = set(state_dict.keys())
        missing, extra = sorted(set(self.params) - keys), sorted(keys - set(self.params))
        if missing or extra:
            raise KeyError(f"state_dict does not match {type(self).__name__}: missing {missing}, "
                           f"unexpected {extra}")
        new = {}
        for k in self.params:
            v = as_array(state_dict[k], f"state_dict[{k!r}]", allow_complex=False)
            if v.shape != self.params[k].shape:
                raise ValueError(f"Parameter state_dict[{k!r}] has shape {v.shape} but the model's "
                                 f"is {self.params[k].shape}")
            check_finite(v, f"state_dict[{k!r}]")
            xp = array_module(self.params[k])
            new[k] = on_module(v, xp).astype(self.params[k].dtype, copy=True)
        self.params.update(new)
        self._push()

    def n_params(self):
        """Number of scalar parameters."""
        return int(sum(v.size for v in self.params.values()))

    def no_weight_decay(self):
        """Names excluded from weight decay, as the official code does.

        ``A_log``/``D`` of every scan (Mamba's ``_no_weight_decay``; Vim's
        ``A_b_log``/``D_b``; VMamba's ``A_logs``/``Ds``), the position embedding
        and class token (Vim's and timm's ``no_weight_decay``), and every
        1-D parameter (biases and norm weights, the rule of timm's
        ``param_groups_weight_decay`` used by Vim and VMamba).
        """
        special = {"A_log", "A_b_log", "A_logs", "D", "D_b", "Ds", "pos_embed", "cls_token",
                   "direction_Bs"}
        return {k for k, v in self.params.items()
                if k.split(".")[-1] in special or v.ndim <= 1}

    # ------------------------------------------------------------------ shared pieces
    def _head_forward(self, pooled):
        return linear(pooled, self.params["head.weight"].astype(np.float64),
                      self.params["head.bias"].astype(np.float64))  # (B, K)

    def _head_backward(self, dlogits, pooled, g):
        dpooled, g["head.weight"], g["head.bias"] = linear_backward(
            dlogits, pooled, self.params["head.weight"].astype(np.float64),
            self.params["head.bias"].astype(np.float64))  # (B, E)
        return dpooled

    def _pool_head_forward(self, t, eps, cache):
        """Final LayerNorm (``norm.*``) -> mean over the tokens -> head; the logits (B, K).

        ``t`` is (B, ..., E) with the tokens on the middle axes; it is kept in
        ``cache["pre_norm"]`` (it is also the models' feature map).
        """
        cache["pre_norm"] = t
        normed = layer_norm(t, self._w("norm.weight"), self._w("norm.bias"), eps)
        pooled = normed.mean(axis=tuple(range(1, t.ndim - 1)))  # (B, E)
        cache["pooled"] = pooled
        return self._head_forward(pooled)  # (B, K)

    def _pool_head_backward(self, dlogits, dfeat, cache, eps, g):
        """Adjoint of :meth:`_pool_head_forward`, plus ``dfeat`` (either may be None).

        Fills the head and ``norm.*`` gradients into ``g``; returns d pre_norm.
        """
        t = cache["pre_norm"]
        Bsz, E = t.shape[0], t.shape[-1]
        xp = array_module(t)
        dnormed = xp.zeros(t.shape)  # (B, ..., E)
        if dlogits is not None:
            dpooled = self._head_backward(dlogits, cache["pooled"], g)  # (B, E)
            spread = (Bsz,) + (1,) * (t.ndim - 2) + (E,)
            dnormed += dpooled.reshape(spread) / (t.size // (Bsz * E))  # the mean spreads evenly
        else:
            g["head.weight"] = xp.zeros(self.params["head.weight"].shape)
            g["head.bias"] = xp.zeros(self.params["head.bias"].shape)
        dt, g["norm.weight"], g["norm.bias"] = layer_norm_backward(
            dnormed, t, self._w("norm.weight"), self._w("norm.bias"), eps)
        if dfeat is not None:  # the features are the stream before the final norm
            dt = dt + dfeat.reshape(t.shape)
        return dt

    def _init_head(self, rng):
        c = self.config
        self.params["head.weight"] = _normal(rng, 0.02, (c.n_classes, c.embed_dim))  # (K, E)
        self.params["head.bias"] = np.zeros(c.n_classes)

    def _make_patch_embed(self, rng):
        c = self.config
        self.patch_embed = PatchEmbed(c.in_chans, c.embed_dim, c.patch_size, seed=rng)
        self._bind("patch_embed.", self.patch_embed)

    def _w(self, name):
        return self.params[name].astype(np.float64)


# =========================================================================== Vim
class TinyVim(_TinyModel):
    """A tiny Vision Mamba (Vim) classifier.

    The data path (book equation ``eq-vim-model``)::

        tok  = patch_embed(x)                         (B, h, w, E)
        seq  = to_sequence(tok, perm)                 (B, L, E)      the scan order
        seq  = insert_cls_token(seq, cls_token)       (B, L + 1, E)  at L // 2 (middle)
        seq  = seq + pos_embed                        (1, L + 1, E)
        seq  = VimBlock_l(seq), l = 0..depth-1        x + VimMixer(RMSNorm(x))
        seq  = RMSNorm(seq; norm_f)
        logits = head(seq[:, L // 2])                 (B, K)

    Parameters
    ----------
    config : VimConfig, optional
        Default ``VimConfig()`` updated by ``**overrides``.
    seed : int or numpy.random.Generator, default 0
    dtype : numpy dtype, default float64
        dtype of the parameters.
    scan_fn, scan_backward_fn : callable, optional
        The selective scan and its backward (default: the reference).
    **overrides
        Fields of :class:`VimConfig` (``embed_dim=16``, ``scan="hilbert"``, ...).

    Attributes
    ----------
    params : dict
        Vim's names: ``patch_embed.proj.weight`` (E, C, p, p), ``patch_embed.proj.bias``,
        ``cls_token`` (1, 1, E), ``pos_embed`` (1, L + 1, E),
        ``layers.{l}.norm.weight``, ``layers.{l}.mixer.*`` (bimamba v2 names),
        ``norm_f.weight``, ``head.weight`` (K, E), ``head.bias``.
    perm : ndarray
        The scan order on the token grid.
    cls_index : int
        Position of the class token in the sequence.

    Notes
    -----
    With ``scan="raster"`` this is Vim's ``VisionMamba`` (``use_middle_cls_token``,
    ``bimamba_type="v2"``, ``if_devide_out``, RMSNorm, residual in the stream)
    at tiny size, without drop-path.  Another scan order permutes the patch
    tokens *before* the class token and the position embedding are added, so
    ``pos_embed[t]`` belongs to sequence position t, which for a fixed order is
    a fixed cell: the embedding stays a learned position code.  Initialization
    as Vim: ``pos_embed`` and ``cls_token`` normal(0.02), ``head`` normal(0.02)
    with zero bias, each mixer's ``out_proj.weight`` divided by ``sqrt(depth)``
    (Mamba's ``rescale_prenorm_residual``), zero linear biases.

    References
    ----------
    Zhu et al. 2024, "Vision Mamba: Efficient Visual Representation Learning
    with Bidirectional State Space Model", arXiv:2401.09417
    (``hustvl/Vim``, ``vim/models_mamba.py``).

    Examples
    --------
    >>> import numpy as np
    >>> model = TinyVim(embed_dim=8, d_state=4, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((2, 8, 8, 1))
    >>> logits, cache = model.forward(x, return_cache=True)
    >>> logits.shape, model.cls_index, model.params["pos_embed"].shape
    ((2, 10), 8, (1, 17, 8))
    >>> grads = model.backward(np.ones_like(logits), cache)
    >>> sorted(grads) == sorted(model.params)
    True
    """

    config_cls = VimConfig

    def _build(self, rng):
        c = self.config
        h, w = c.grid
        L = h * w
        self.perm = scan_order(c.scan, h, w, **c.scan_options)  # (L,)
        self._make_patch_embed(rng)
        self.params["cls_token"] = _normal(rng, 0.02, (1, 1, c.embed_dim))
        self.params["pos_embed"] = _normal(rng, 0.02, (1, L + 1, c.embed_dim))
        _, self.cls_index = insert_cls_token(np.zeros((1, L, 1)), np.zeros((1, 1, 1)),
                                             c.cls_position)
        self.layers = []
        for i in range(c.depth):
            blk = VimBlock(c.embed_dim, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand,
                           seed=rng)
            blk.mixer.params["out_proj.weight"] = blk.mixer.params["out_proj.weight"] / math.sqrt(c.depth)
            self.layers.append(blk)
            self._bind(f"layers.{i}.", blk)
        self.params["norm_f.weight"] = np.ones(c.embed_dim)
        self._init_head(rng)

    def _blocks(self):
        return self.layers

    def _forward(self, x):
        c = self.config
        h, w = c.grid
        cache = {}
        tok, cache["patch"] = self.patch_embed.forward(x, return_cache=True)  # (B, h, w, E)
        seq = to_sequence(tok, self.perm)  # (B, L, E) in scan order
        seq, _ = insert_cls_token(seq, self._w("cls_token"), self.cls_index)  # (B, L + 1, E)
        seq = add_position_embedding(seq, self._w("pos_embed"))  # (B, L + 1, E)
        cache["layers"] = []
        for blk in self.layers:
            seq, lc = blk.forward(seq, return_cache=True)
            cache["layers"].append(lc)
        cache["pre_norm"] = seq
        normed = rms_norm(seq, self._w("norm_f.weight"))  # (B, L + 1, E)
        pooled = normed[:, self.cls_index]  # (B, E) the class token
        cache["pooled"] = pooled
        logits = self._head_forward(pooled)  # (B, K)
        patches = array_module(seq).concatenate(
            [seq[:, :self.cls_index], seq[:, self.cls_index + 1:]], axis=1)  # (B, L, E) scan order, class token removed
        feat = from_sequence(patches, self.perm, h, w)  # (B, h, w, E) back on the grid
        return logits, feat, cache

    def _backward(self, dlogits, dfeat, cache):
        g = {}
        seq = cache["pre_norm"]
        Bsz, L1, E = seq.shape
        xp = array_module(seq)
        dnormed = xp.zeros((Bsz, L1, E))  # (B, L + 1, E)
        if dlogits is not None:
            dnormed[:, self.cls_index] = self._head_backward(dlogits, cache["pooled"], g)
        else:
            g["head.weight"] = xp.zeros(self.params["head.weight"].shape)
            g["head.bias"] = xp.zeros(self.params["head.bias"].shape)
        dseq, g["norm_f.weight"] = rms_norm_backward(dnormed, seq, self._w("norm_f.weight"))
        if dfeat is not None:  # the features are the stream before norm_f
            dpatch = to_sequence(dfeat, self.perm)  # (B, L, E) in scan order
            dseq[:, :self.cls_index] += dpatch[:, :self.cls_index]
            dseq[:, self.cls_index + 1:] += dpatch[:, self.cls_index:]
        for i in reversed(range(len(self.layers))):
            dseq, gl = self.layers[i].backward(dseq, cache["layers"][i])
            g.update({f"layers.{i}.{k}": v for k, v in gl.items()})
        dseq, g["pos_embed"] = add_position_embedding_backward(dseq)
        dseq, g["cls_token"] = insert_cls_token_backward(dseq, self.cls_index)  # (B, L, E)
        h, w = self.config.grid
        dtok = from_sequence(dseq, self.perm, h, w)  # (B, h, w, E): adjoint of the gather
        dx, gp = self.patch_embed.backward(dtok, cache["patch"])
        g.update({"patch_embed." + k: v for k, v in gp.items()})
        return dx, g


# =========================================================================== VMamba and PlainMamba
class _GridModel(_TinyModel):
    """Patches -> blocks on the (B, h, w, E) grid -> LayerNorm -> mean pool -> head."""

    fixed_size = False
    norm_eps = 1e-5

    def _make_block(self, rng):
        raise NotImplementedError

    def _build(self, rng):
        c = self.config
        self._make_patch_embed(rng)
        self.layers = []
        for i in range(c.depth):
            blk = self._make_block(rng)
            self.layers.append(blk)
            self._bind(f"layers.{i}.", blk)
        self.params["norm.weight"] = np.ones(c.embed_dim)
        self.params["norm.bias"] = np.zeros(c.embed_dim)
        self._init_head(rng)

    def _blocks(self):
        return self.layers

    def _forward(self, x):
        cache = {}
        tok, cache["patch"] = self.patch_embed.forward(x, return_cache=True)  # (B, h, w, E)
        cache["layers"] = []
        for blk in self.layers:
            tok, lc = blk.forward(tok, return_cache=True)  # (B, h, w, E)
            cache["layers"].append(lc)
        logits = self._pool_head_forward(tok, self.norm_eps, cache)  # (B, K) global average pool
        return logits, tok, cache

    def _backward(self, dlogits, dfeat, cache):
        g = {}
        # the features are the backbone output, before the norm
        dtok = self._pool_head_backward(dlogits, dfeat, cache, self.norm_eps, g)  # (B, h, w, E)
        for i in reversed(range(len(self.layers))):
            dtok, gl = self.layers[i].backward(dtok, cache["layers"][i])
            g.update({f"layers.{i}.{k}": v for k, v in gl.items()})
        dx, gp = self.patch_embed.backward(dtok, cache["patch"])
        g.update({"patch_embed." + k: v for k, v in gp.items()})
        return dx, g


class TinyVMamba(_GridModel):
    """A tiny VMamba classifier: VSS blocks (SS2D) on the token grid.

    The data path (book equation ``eq-vmamba-model``)::

        tok    = patch_embed(x)                       (B, h, w, E)
        tok    = VSSBlock_l(tok), l = 0..depth-1      x + SS2D(LayerNorm(x))
        feat   = LayerNorm(tok; norm)                 (B, h, w, E)
        logits = head(mean_{h, w} feat)               (B, K)

    Parameters
    ----------
    config : VMambaConfig, optional
    seed, dtype, scan_fn, scan_backward_fn
        As :class:`TinyVim`.
    **overrides
        Fields of :class:`VMambaConfig` (``directions="localmamba"``, ...).

    Attributes
    ----------
    params : dict
        ``patch_embed.proj.*``, ``layers.{l}.ln_1.*``, ``layers.{l}.self_attention.*``
        (VMamba's SS2D v0 names), ``norm.*``, ``head.*``.

    Notes
    -----
    One stage, no downsampling (VMamba's four stages with patch merging are
    what makes it hierarchical; at 4x4 tokens there is nothing to merge).  The
    image size is free (no position embedding): any H, W divisible by the
    patch size.  Initialization: VMamba re-initializes every ``nn.Linear``
    with a normal(0.02) and zero bias (its ``_init_weights``); here only the
    head is, and the SS2D's ``in_proj``/``out_proj`` keep PyTorch's default,
    which trains faster at this size (a stated deviation).

    References
    ----------
    Liu et al. 2024, "VMamba: Visual State Space Model", arXiv:2401.10166
    (``MzeroMiko/VMamba``, ``classification/models/vmamba.py``, ``VSSM``).

    Examples
    --------
    >>> import numpy as np
    >>> model = TinyVMamba(embed_dim=8, d_state=4, seed=0)
    >>> x = np.zeros((2, 8, 8, 1), dtype=np.float32)
    >>> model(x).shape, model(x).dtype
    ((2, 10), dtype('float32'))
    >>> model.forward_features(x).shape
    (2, 4, 4, 8)
    """

    config_cls = VMambaConfig

    def _make_block(self, rng):
        c = self.config
        directions, options = c.mixer_directions()
        return VSSBlock(c.embed_dim, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand,
                        directions=directions, direction_options=options, seed=rng)


class TinyPlainMamba(_GridModel):
    """A tiny PlainMamba classifier: PlainMamba blocks (four snakes, shared parameters).

    Same pipeline as :class:`TinyVMamba` with :class:`ssm_ref.vision.PlainMambaBlock`
    (LayerNorm, mixer under ``mamba.``) in place of the VSS block.

    References
    ----------
    Yang et al. 2024, "PlainMamba", arXiv:2403.17695.

    Examples
    --------
    >>> model = TinyPlainMamba(embed_dim=8, d_state=4)
    >>> "layers.0.mamba.direction_Bs" in model.params
    True
    """

    config_cls = PlainMambaConfig

    def _make_block(self, rng):
        c = self.config
        return PlainMambaBlock(c.embed_dim, d_state=c.d_state, d_conv=c.d_conv,
                               expand=c.expand, seed=rng)


# =========================================================================== attention baseline
def _attention_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_heads):
    """Multi-head softmax self-attention (timm's ``Attention``) on (B, L, E)."""
    Bsz, L, E = x.shape
    dh = E // n_heads
    qkv = linear(x, w_qkv, b_qkv)  # (B, L, 3E)
    qkv = qkv.reshape(Bsz, L, 3, n_heads, dh).transpose(2, 0, 3, 1, 4)  # (3, B, nh, L, dh)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B, nh, L, dh) each
    scale = dh ** -0.5
    S = (q @ k.transpose(0, 1, 3, 2)) * scale  # (B, nh, L, L) the L x L score matrix
    S = S - S.max(axis=-1, keepdims=True)  # stable softmax
    xp = array_module(S)
    P = xp.exp(S)
    P /= P.sum(axis=-1, keepdims=True)  # (B, nh, L, L) attention weights, rows sum to 1
    O = P @ v  # (B, nh, L, dh)
    Oc = O.transpose(0, 2, 1, 3).reshape(Bsz, L, E)  # (B, L, E) heads concatenated
    out = linear(Oc, w_proj, b_proj)  # (B, L, E)
    return out, {"x": x, "q": q, "k": k, "v": v, "P": P, "Oc": Oc, "scale": scale}


def _attention_backward(dout, cache, w_qkv, b_qkv, w_proj, b_proj):
    """Reverse of :func:`_attention_forward`: dx and the four parameter gradients.

    With ``P = softmax(S)``: ``dS = P * (dP - rowsum(dP * P))``; ``dq = dS k scale``,
    ``dk = dS^T q scale``, ``dv = P^T dO``.
    """
    x, q, k, v, P = cache["x"], cache["q"], cache["k"], cache["v"], cache["P"]
    Bsz, L, E = x.shape
    n_heads, dh = q.shape[1], q.shape[3]
    dOc, dw_proj, db_proj = linear_backward(dout, cache["Oc"], w_proj, b_proj)  # (B, L, E)
    dO = dOc.reshape(Bsz, L, n_heads, dh).transpose(0, 2, 1, 3)  # (B, nh, L, dh)
    dP = dO @ v.transpose(0, 1, 3, 2)  # (B, nh, L, L)
    dv = P.transpose(0, 1, 3, 2) @ dO  # (B, nh, L, dh)
    xp = array_module(P)
    dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))  # softmax backward, row by row
    dq = (dS @ k) * cache["scale"]  # (B, nh, L, dh)
    dk = (dS.transpose(0, 1, 3, 2) @ q) * cache["scale"]
    dqkv = xp.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(Bsz, L, 3 * E)  # (B, L, 3E)
    dx, dw_qkv, db_qkv = linear_backward(dqkv, x, w_qkv, b_qkv)  # (B, L, E)
    return dx, dw_qkv, db_qkv, dw_proj, db_proj


class TinyAttention(_TinyModel):
    """A tiny Vision Transformer of the same width: the softmax-attention baseline.

    The data path::

        tok    = patch_embed(x) + pos_embed           (B, L, E)
        tok    = tok + Attn(LayerNorm(tok))           multi-head softmax attention, L x L
        tok    = tok + MLP(LayerNorm(tok))            fc1 -> GELU -> fc2
        feat   = LayerNorm(tok; norm)
        logits = head(mean_L feat)

    Parameters
    ----------
    config : AttentionConfig, optional
    seed, dtype
        As :class:`TinyVim`.
    scan_fn, scan_backward_fn
        Accepted for a uniform interface; attention has no scan.
    **overrides
        Fields of :class:`AttentionConfig`.

    Attributes
    ----------
    params : dict
        timm's ViT names: ``patch_embed.proj.*``, ``pos_embed`` (1, L, E),
        ``blocks.{l}.norm1.*``, ``blocks.{l}.attn.qkv.*`` (3E, E),
        ``blocks.{l}.attn.proj.*``, ``blocks.{l}.norm2.*``, ``blocks.{l}.mlp.fc1.*``,
        ``blocks.{l}.mlp.fc2.*``, ``norm.*``, ``head.*``.

    Notes
    -----
    Every token attends to every token: the score matrix is (L, L) per head,
    so time and memory grow as L² where the Mamba models grow as L (the
    survey's Section 5 comparison; measured in the book chapter).  No class
    token (mean pooling, as the Mamba grid models), LayerNorm eps 1e-6 and
    the normal(0.02) init of timm, zero biases.  The backward is hand-derived
    (softmax: ``dS = P (dP - rowsum(P dP))``) and gradient-checked.

    References
    ----------
    Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", arXiv:2010.11929;
    Vaswani et al. 2017, arXiv:1706.03762 (``timm``'s ``VisionTransformer``).

    Examples
    --------
    >>> import numpy as np
    >>> model = TinyAttention(embed_dim=8, n_heads=2)
    >>> model(np.zeros((3, 8, 8, 1))).shape
    (3, 10)
    """

    config_cls = AttentionConfig
    eps = 1e-6

    def _build(self, rng):
        c = self.config
        h, w = c.grid
        E, hidden = c.embed_dim, int(c.mlp_ratio * c.embed_dim)
        self._make_patch_embed(rng)
        self.params["pos_embed"] = _normal(rng, 0.02, (1, h * w, E))
        for i in range(c.depth):
            pre = f"blocks.{i}."
            self.params.update({
                pre + "norm1.weight": np.ones(E), pre + "norm1.bias": np.zeros(E),
                pre + "attn.qkv.weight": _normal(rng, 0.02, (3 * E, E)),
                pre + "attn.qkv.bias": np.zeros(3 * E),
                pre + "attn.proj.weight": _normal(rng, 0.02, (E, E)),
                pre + "attn.proj.bias": np.zeros(E),
                pre + "norm2.weight": np.ones(E), pre + "norm2.bias": np.zeros(E),
                pre + "mlp.fc1.weight": _normal(rng, 0.02, (hidden, E)),
                pre + "mlp.fc1.bias": np.zeros(hidden),
                pre + "mlp.fc2.weight": _normal(rng, 0.02, (E, hidden)),
                pre + "mlp.fc2.bias": np.zeros(E),
            })
        self.params["norm.weight"] = np.ones(E)
        self.params["norm.bias"] = np.zeros(E)
        self._init_head(rng)

    def _forward(self, x):
        c = self.config
        h, w = c.grid
        cache = {"blocks": []}
        tok, cache["patch"] = self.patch_embed.forward(x, return_cache=True)  # (B, h, w, E)
        Bsz = tok.shape[0]
        t = add_position_embedding(tok.reshape(Bsz, h * w, c.embed_dim),
                                   self._w("pos_embed"))  # (B, L, E)
        for i in range(c.depth):
            p = lambda name: self._w(f"blocks.{i}.{name}")  # noqa: E731
            bc = {"t0": t}
            n1 = layer_norm(t, p("norm1.weight"), p("norm1.bias"), self.eps)
            a, bc["attn"] = _attention_forward(n1, p("attn.qkv.weight"), p("attn.qkv.bias"),
                                               p("attn.proj.weight"), p("attn.proj.bias"),
                                               c.n_heads)
            t = t + a  # (B, L, E)
            bc["t1"] = t
            n2 = layer_norm(t, p("norm2.weight"), p("norm2.bias"), self.eps)
            bc["n2"] = n2
            hid = linear(n2, p("mlp.fc1.weight"), p("mlp.fc1.bias"))  # (B, L, hidden)
            bc["hid"] = hid
            act = gelu(hid)
            bc["act"] = act
            t = t + linear(act, p("mlp.fc2.weight"), p("mlp.fc2.bias"))  # (B, L, E)
            cache["blocks"].append(bc)
        logits = self._pool_head_forward(t, self.eps, cache)  # (B, K)
        return logits, t.reshape(Bsz, h, w, c.embed_dim), cache

    def _backward(self, dlogits, dfeat, cache):
        c = self.config
        h, w = c.grid
        g = {}
        Bsz, L, E = cache["pre_norm"].shape
        dt = self._pool_head_backward(dlogits, dfeat, cache, self.eps, g)  # (B, L, E)
        for i in reversed(range(c.depth)):
            pre = f"blocks.{i}."
            p = lambda name: self._w(pre + name)  # noqa: E731
            bc = cache["blocks"][i]
            # t2 = t1 + fc2(gelu(fc1(norm2(t1))))
            dact, g[pre + "mlp.fc2.weight"], g[pre + "mlp.fc2.bias"] = linear_backward(
                dt, bc["act"], p("mlp.fc2.weight"), p("mlp.fc2.bias"))
            dhid = gelu_backward(dact, bc["hid"])  # (B, L, hidden)
            dn2, g[pre + "mlp.fc1.weight"], g[pre + "mlp.fc1.bias"] = linear_backward(
                dhid, bc["n2"], p("mlp.fc1.weight"), p("mlp.fc1.bias"))
            dres, g[pre + "norm2.weight"], g[pre + "norm2.bias"] = layer_norm_backward(
                dn2, bc["t1"], p("norm2.weight"), p("norm2.bias"), self.eps)
            dt = dt + dres
            # t1 = t0 + attn(norm1(t0))
            dn1, g[pre + "attn.qkv.weight"], g[pre + "attn.qkv.bias"], \
                g[pre + "attn.proj.weight"], g[pre + "attn.proj.bias"] = _attention_backward(
                    dt, bc["attn"], p("attn.qkv.weight"), p("attn.qkv.bias"),
                    p("attn.proj.weight"), p("attn.proj.bias"))
            dres, g[pre + "norm1.weight"], g[pre + "norm1.bias"] = layer_norm_backward(
                dn1, bc["t0"], p("norm1.weight"), p("norm1.bias"), self.eps)
            dt = dt + dres
        dt, g["pos_embed"] = add_position_embedding_backward(dt)
        dx, gp = self.patch_embed.backward(dt.reshape(Bsz, h, w, E), cache["patch"])
        g.update({"patch_embed." + k: v for k, v in gp.items()})
        return dx, g


# =========================================================================== CNN baseline
class TinyCNN(_TinyModel):
    """A tiny depthwise-convolution network: the local (CNN) baseline.

    The data path::

        tok    = patch_embed(x)                                   (B, h, w, E)
        tok    = tok + pwconv(GELU(dwconv_kxk(LayerNorm(tok))))   per block
        feat   = LayerNorm(tok; norm)
        logits = head(mean_{h, w} feat)

    Each block sees a k x k neighbourhood, so ``depth`` blocks see a
    ``(depth (k - 1) + 1)``-wide square of tokens: the receptive field grows
    linearly with depth, where one Mamba block already covers the image.

    Parameters
    ----------
    config : CNNConfig, optional
    seed, dtype
    scan_fn, scan_backward_fn
        Accepted for a uniform interface; unused.
    **overrides
        Fields of :class:`CNNConfig`.

    Attributes
    ----------
    params : dict
        ``patch_embed.proj.*``, ``layers.{l}.norm.*``, ``layers.{l}.dwconv.weight``
        (E, 1, k, k), ``layers.{l}.dwconv.bias``, ``layers.{l}.pwconv.*`` (E, E),
        ``norm.*``, ``head.*``.

    Notes
    -----
    A ConvNeXt-style block, much reduced (one pointwise layer, no expansion).
    Initialization: PyTorch's default for the depthwise conv, normal(0.02) for
    the pointwise layer, zero biases.

    References
    ----------
    Liu et al. 2022, "A ConvNet for the 2020s" (ConvNeXt), arXiv:2201.03545.

    Examples
    --------
    >>> import numpy as np
    >>> TinyCNN(embed_dim=8)(np.zeros((1, 8, 8, 1))).shape
    (1, 10)
    """

    config_cls = CNNConfig
    fixed_size = False
    eps = 1e-6

    def _build(self, rng):
        c = self.config
        E, k = c.embed_dim, c.kernel
        self._make_patch_embed(rng)
        for i in range(c.depth):
            pre = f"layers.{i}."
            self.params.update({
                pre + "norm.weight": np.ones(E), pre + "norm.bias": np.zeros(E),
                pre + "dwconv.weight": rng.uniform(-1 / k, 1 / k, (E, 1, k, k)),
                pre + "dwconv.bias": rng.uniform(-1 / k, 1 / k, (E,)),
                pre + "pwconv.weight": _normal(rng, 0.02, (E, E)),
                pre + "pwconv.bias": np.zeros(E),
            })
        self.params["norm.weight"] = np.ones(E)
        self.params["norm.bias"] = np.zeros(E)
        self._init_head(rng)

    def _forward(self, x):
        c = self.config
        cache = {"blocks": []}
        t, cache["patch"] = self.patch_embed.forward(x, return_cache=True)  # (B, h, w, E)
        for i in range(c.depth):
            p = lambda name: self._w(f"layers.{i}.{name}")  # noqa: E731
            bc = {"t0": t}
            n = layer_norm(t, p("norm.weight"), p("norm.bias"), self.eps)
            bc["n"] = n
            hc = depthwise_conv2d(n, p("dwconv.weight")[:, 0], p("dwconv.bias"))  # (B, h, w, E)
            bc["hc"] = hc
            act = gelu(hc)
            bc["act"] = act
            t = t + linear(act, p("pwconv.weight"), p("pwconv.bias"))  # (B, h, w, E)
            cache["blocks"].append(bc)
        return self._pool_head_forward(t, self.eps, cache), t, cache

    def _backward(self, dlogits, dfeat, cache):
        c = self.config
        g = {}
        dt = self._pool_head_backward(dlogits, dfeat, cache, self.eps, g)  # (B, h, w, E)
        for i in reversed(range(c.depth)):
            pre = f"layers.{i}."
            p = lambda name: self._w(pre + name)  # noqa: E731
            bc = cache["blocks"][i]
            dact, g[pre + "pwconv.weight"], g[pre + "pwconv.bias"] = linear_backward(
                dt, bc["act"], p("pwconv.weight"), p("pwconv.bias"))
            dhc = gelu_backward(dact, bc["hc"])
            dn, dw, g[pre + "dwconv.bias"] = depthwise_conv2d_backward(
                dhc, bc["n"], p("dwconv.weight")[:, 0], p("dwconv.bias"))
            g[pre + "dwconv.weight"] = dw[:, None]  # (E, 1, k, k)
            dres, g[pre + "norm.weight"], g[pre + "norm.bias"] = layer_norm_backward(
                dn, bc["t0"], p("norm.weight"), p("norm.bias"), self.eps)
            dt = dt + dres
        dx, gp = self.patch_embed.backward(dt, cache["patch"])
        g.update({"patch_embed." + k: v for k, v in gp.items()})
        return dx, g


# =========================================================================== registry
def _vmamba_variant(directions, **defaults):
    def make(**kw):
        kw.setdefault("directions", directions)
        for k, v in defaults.items():
            kw.setdefault(k, v)
        return TinyVMamba(**kw)
    return make


#: Model names accepted by :func:`build_model`, each a constructor taking keyword arguments.
MODELS = {
    "vim": TinyVim,
    "vmamba": TinyVMamba,
    "localmamba": _vmamba_variant("localmamba"),
    "efficientvmamba": _vmamba_variant("es2d"),
    "plainmamba": TinyPlainMamba,
    "attention": TinyAttention,
    "cnn": TinyCNN,
}


def build_model(name, **kwargs):
    """Build a tiny classifier by name.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS`: ``"vim"``, ``"vmamba"``, ``"localmamba"``
        (VMamba with LocalMamba's windowed directions), ``"efficientvmamba"``
        (VMamba with the ES2D atrous sub-grids), ``"plainmamba"``,
        ``"attention"``, ``"cnn"``.
    **kwargs
        ``seed``, ``dtype``, ``scan_fn``, ``scan_backward_fn``, ``config`` and
        any configuration field (``embed_dim``, ``depth``, ``scan`` for Vim,
        ``directions`` for the VMamba family, ``img_size``, ...).

    Returns
    -------
    model

    Raises
    ------
    ValueError
        Unknown name.
    TypeError
        A keyword the model's configuration does not have.

    Examples
    --------
    >>> model = build_model("vim", scan="snake", embed_dim=8, d_state=4)
    >>> type(model).__name__, model.config.scan
    ('TinyVim', 'snake')
    >>> build_model("localmamba", embed_dim=8).config.directions
    'localmamba'
    """
    if not isinstance(name, str):
        raise TypeError(f"Parameter name = {name!r} must be a string naming a model")
    check_choice(name, "name", MODELS)
    return MODELS[name](**kwargs)
