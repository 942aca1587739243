"""Vision Mamba blocks: patch embedding, class token, Vim, VMamba's SS2D and its relatives.

Every block has a forward on channels-last input, a forward that also returns
a cache, and a hand-derived backward that returns ``(dx, grads)`` with the
gradients keyed by the block's state-dict names.  Weights are stored under the
names of the original PyTorch modules, so ``from_state_dict`` /
``state_dict`` move them between those projects and this one.

Glossary
--------
B         batch size (the SSM matrix B is written ``Bmat``/``Bs`` where both meet).
H, W      height and width of the token grid; L = H·W tokens.
C         channels of the image entering a block (``d_model``).
E         embedding width of the patch embedding.
p         patch size (and stride) of the patch embedding.
D         ``d_inner = expand * d_model``, the channels inside a mixer.
N         ``d_state``, the SSM state size per channel.
R         ``dt_rank``, the rank of the projection that makes delta.
K         number of scan directions of a multi-direction mixer (4 in SS2D),
          or the causal conv width ``d_conv`` inside Vim's Mamba paths.
delta     the step size Δ, per (batch, channel, token).
A, B, C, D  the SSM matrices: A (D, N) = -exp(A_log), B and C input-dependent
          (B, N, L), D (D,) the skip connection.
perm      a scan order: ``seq[t] = tokens[perm[t]]`` (``ssm_ref.vision.scan_orders``).

Blocks
------
:class:`PatchEmbed`      strided convolution as a matrix product on patches.
:func:`insert_cls_token`, :func:`add_position_embedding`   Vim's token helpers.
:class:`VimMixer`        Vim's bidirectional Mamba ("bimamba v2").
:class:`VimBlock`        x + VimMixer(RMSNorm(x)).
:class:`SS2D`            VMamba's 2-D selective scan (forward type v0), any set of
                         scan directions (cross-scan by default).
:class:`VSSBlock`        x + SS2D(LayerNorm(x)).
:class:`LocalSS2D`       SS2D over LocalMamba's windowed scans.
:class:`ES2D`            SS2D over EfficientVMamba's dilated sub-grids.
:class:`PlainMambaMixer`, :class:`PlainMambaBlock`   PlainMamba's shared-parameter
                         snake scans with direction-aware B.

All arithmetic is float64; outputs come back in the input's dtype and
gradients in their parameter's dtype.  Inputs and ``params`` may be NumPy or
CuPy arrays (the model moves ``params``): a block computes on its input's array
module, and its scan orders stay NumPy index arrays whose device copies are
made once and cached (``ssm_ref._xp.on_module_cached``).  The selective scan is
pluggable (``scan_fn`` / ``scan_backward_fn`` with the signatures of
:func:`ssm_ref.selective_scan` / :func:`ssm_ref.selective_scan_backward`), so a
compiled backend from ``fast`` can replace the reference.

Book chapter: "Vision Mamba blocks"; survey: Rahman et al. 2024, arXiv:2410.03105,
Sections 3-4.
"""
from __future__ import annotations

import math

import numpy as np

from .._validation import (
    as_array,
    check_choice,
    check_finite,
    check_positive_int,
    check_positive_scalar,
    check_shape,
)
from ..mamba import (
    INNER_KEYS,
    MambaConfig,
    mamba_inner_backward,
    mamba_inner_forward,
    mamba_init,
)
from ..nn import (
    depthwise_conv2d,
    depthwise_conv2d_backward,
    layer_norm,
    layer_norm_backward,
    linear,
    linear_backward,
    rms_norm,
    rms_norm_backward,
    silu,
    silu_backward,
)
from .._xp import array_module, on_module_cached
from ..selective import selective_scan, selective_scan_backward
from .multi import CROSS_SCAN_ORDERS, SCHEMES, scan_scheme
from .scan_orders import from_sequence, scan_order, to_sequence

__all__ = [
    "PatchEmbed",
    "cls_token_index",
    "insert_cls_token",
    "insert_cls_token_backward",
    "add_position_embedding",
    "add_position_embedding_backward",
    "VimMixer",
    "VimBlock",
    "SS2D",
    "VSSBlock",
    "LocalSS2D",
    "ES2D",
    "PlainMambaMixer",
    "PlainMambaBlock",
    "DIRECTION_CODES",
]


# =========================================================================== shared helpers
def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_input(x, name, ndim, last):
    """Validate a block input: real, finite, ``ndim``-D with last axis ``last``."""
    x = as_array(x, name, allow_complex=False, ndim=ndim)
    check_shape(x, name, (None,) * (ndim - 1) + (last,))
    check_finite(x, name)
    return x


def _check_dout(dout, like_shape):
    dout = as_array(dout, "dout", allow_complex=False)
    check_shape(dout, "dout", tuple(like_shape))
    check_finite(dout, "dout")
    return dout


def _check_cache(cache, cls_name):
    if not isinstance(cache, dict) or "u" not in cache:
        raise TypeError(f"Parameter cache must be the dict from {cls_name}.forward(x, "
                        "return_cache=True)")
    return cache


def _read_state_dict(state_dict, prefix, required, optional, owner):
    """Copy the arrays of a state dict after checking the key set (missing / unknown named)."""
    if not hasattr(state_dict, "keys"):
        raise TypeError(f"Parameter state_dict is a {type(state_dict).__name__}, not a mapping")
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
        arrs[k] = a.copy()  # a copy on the array's own module (NumPy or CuPy)
    return arrs


def _check_ndim(arrs, key, ndim, what):
    if arrs[key].ndim != ndim:
        raise ValueError(f"Parameter state_dict[{key!r}] has shape {arrs[key].shape} "
                         f"but should be {what}")


def _check_expected(arrs, expected, sizes):
    for k, arr in arrs.items():
        if arr.shape != expected[k]:
            raise ValueError(f"Parameter state_dict[{k!r}] has shape {arr.shape} but should be "
                             f"{expected[k]} (inferred {sizes})")


def _check_pair(arrs, a, b):
    """Optional keys that come together: both ``a`` and ``b`` or neither."""
    if (a in arrs) != (b in arrs):
        raise KeyError(f"state_dict has only one of {a!r} and {b!r}; "
                       "the original module has both or neither")


def _in_proj_sizes(arrs):
    """``(d_model, d_inner)`` from ``in_proj.weight``, (2 * d_inner, d_model)."""
    w_in = arrs["in_proj.weight"]
    if w_in.shape[0] % 2:
        raise ValueError(f"Parameter state_dict['in_proj.weight'] has shape {w_in.shape} "
                         "but should be (2 * d_inner, d_model)")
    return w_in.shape[1], w_in.shape[0] // 2


class _Module:
    """What every block shares: parameters by state-dict name, backends, ``state_dict``."""

    params: dict

    def _set_backends(self, scan_fn, scan_backward_fn):
        self.scan_fn = selective_scan if scan_fn is None else scan_fn
        self.scan_backward_fn = (selective_scan_backward if scan_backward_fn is None
                                 else scan_backward_fn)
        for name in ("scan_fn", "scan_backward_fn"):
            if not callable(getattr(self, name)):
                raise TypeError(f"Parameter {name} = {getattr(self, name)!r} is not callable")

    def __call__(self, x):
        """Same as :meth:`forward`."""
        return self.forward(x)

    @property
    def num_params(self) -> int:
        """Number of scalar parameters (the sum of every state-dict entry's size)."""
        return int(sum(v.size for v in self.state_dict().values()))

    def state_dict(self):
        """The weights under the original module's names, as copies."""
        return {k: v.copy() for k, v in self.params.items()}

    def _w(self, key):
        v = self.params.get(key)
        return None if v is None else v.astype(np.float64)

    def _grads_out(self, g):
        return {k: g[k].astype(self.params[k].dtype) for k in self.params}


class _PreNormBlock(_Module):
    """``x + mixer(norm(x))``: the layer that Vim, VMamba and PlainMamba share.

    A subclass names the attribute holding its mixer (``_mixer_name``, also
    the mixer's state-dict prefix), the norm's state-dict prefix
    (``_norm_name``: ``<prefix>.weight`` and, for LayerNorm, ``<prefix>.bias``)
    and the input's number of dimensions (``_x_ndim``: 3 for tokens (B, L, C),
    4 for images (B, H, W, C)); ``norm`` ("layer" or "rms") and ``eps`` say
    which normalization runs.
    """

    _mixer_name: str
    _norm_name: str
    _x_ndim: int
    norm: str
    eps: float

    @property
    def _mixer(self):
        return getattr(self, self._mixer_name)

    def state_dict(self):
        """The norm's names, and the mixer's under its attribute name as prefix."""
        sd = {k: v.copy() for k, v in self.params.items()}
        sd.update({f"{self._mixer_name}.{k}": v for k, v in self._mixer.state_dict().items()})
        return sd

    def _normalize(self, u):
        weight = self._w(self._norm_name + ".weight")
        if self.norm == "layer":
            return layer_norm(u, weight, self._w(self._norm_name + ".bias"), self.eps)
        return rms_norm(u, weight, self.eps)

    def forward(self, x, return_cache=False):
        """``x + mixer(norm(x))``; output in x's dtype."""
        x = _check_input(x, "x", self._x_ndim, self._mixer.config.d_model)
        u = x.astype(np.float64)
        h, mcache = self._mixer.forward(self._normalize(u), return_cache=True)
        out = (u + h).astype(x.dtype)
        return (out, {"u": u, "mixer": mcache}) if return_cache else out

    def backward(self, dout, cache):
        """Gradients: ``(dx, grads)`` keyed by the norm's names and the mixer's (prefixed)."""
        cache = _check_cache(cache, type(self).__name__)
        dout_in = _check_dout(dout, cache["u"].shape)
        dout = dout_in.astype(np.float64)
        dxn, gm = self._mixer.backward(dout, cache["mixer"])
        w_name, b_name = self._norm_name + ".weight", self._norm_name + ".bias"
        if self.norm == "layer":
            dx_norm, dw, db = layer_norm_backward(dxn, cache["u"], self._w(w_name),
                                                  self._w(b_name), self.eps)
            g = {w_name: dw, b_name: db}
        else:
            dx_norm, dw = rms_norm_backward(dxn, cache["u"], self._w(w_name), self.eps)
            g = {w_name: dw}
        grads = self._grads_out(g)
        grads.update({f"{self._mixer_name}.{k}": v for k, v in gm.items()})
        return (dout + dx_norm).astype(dout_in.dtype), grads


# =========================================================================== patch embedding
class PatchEmbed(_Module):
    """Split an image into p×p patches and embed each linearly: a strided Conv2d.

    ``y[b, i, j, e] = bias[e] + sum_{c,a,b'} weight[e, c, a, b'] x[b, i·p + a, j·p + b', c]``,
    i.e. PyTorch's ``nn.Conv2d(C, E, kernel_size=p, stride=p)`` (ViT's and Vim's
    ``patch_embed.proj``), written as a reshape of the image into patch vectors
    followed by one matrix product with the flattened weight (E, C·p·p).

    Parameters
    ----------
    in_chans : int
        C, channels of the input image.
    embed_dim : int
        E, width of each patch embedding.
    patch_size : int
        p, the patch side and the stride (non-overlapping patches).
    seed : int or numpy.random.Generator, default 0
        PyTorch's default Conv2d initialization, uniform in ``±1/sqrt(C·p·p)``
        for weight and bias (Vim re-initializes later layers, not this one).
    dtype : numpy dtype, default float64
        dtype the parameters are stored in.

    Attributes
    ----------
    params : dict
        ``proj.weight`` (E, C, p, p) in PyTorch's Conv2d layout, ``proj.bias`` (E,).

    Notes
    -----
    Implements ``eq-patch-embed``.  A patch vector is ordered (c, a, b') like the
    flattened Conv2d weight, so ``weight.reshape(E, C·p·p)`` is the matrix.
    Only stride = patch size is supported (Vim's default).

    References
    ----------
    Dosovitskiy et al. 2021, ViT, arXiv:2010.11929; Zhu et al. 2024, Vim,
    arXiv:2401.09417 (``PatchEmbed`` in ``vim/models_mamba.py``).

    Examples
    --------
    >>> import numpy as np
    >>> pe = PatchEmbed(in_chans=1, embed_dim=3, patch_size=2)
    >>> pe(np.zeros((2, 4, 6, 1))).shape
    (2, 2, 3, 3)
    """

    def __init__(self, in_chans, embed_dim, patch_size, *, seed=0, dtype=np.float64):
        C = check_positive_int(in_chans, "in_chans")
        E = check_positive_int(embed_dim, "embed_dim")
        p = check_positive_int(patch_size, "patch_size")
        rng = _rng(seed)
        bound = 1.0 / math.sqrt(C * p * p)
        self.params = {
            "proj.weight": rng.uniform(-bound, bound, (E, C, p, p)).astype(dtype),
            "proj.bias": rng.uniform(-bound, bound, (E,)).astype(dtype),
        }

    @classmethod
    def from_state_dict(cls, state_dict, *, prefix=""):
        """Build from ``{"proj.weight": (E, C, p, p), "proj.bias": (E,)}`` (bias optional).

        Raises
        ------
        KeyError
            Missing or unknown names.
        ValueError
            ``proj.weight`` not (E, C, p, p) with square patches, or a bias of the wrong shape.

        Examples
        --------
        >>> PatchEmbed.from_state_dict(PatchEmbed(3, 8, 4).state_dict()).patch_size
        4
        """
        arrs = _read_state_dict(state_dict, prefix, ["proj.weight"], ["proj.bias"], "PatchEmbed")
        w = arrs["proj.weight"]
        if w.ndim != 4 or w.shape[2] != w.shape[3]:
            raise ValueError(f"Parameter state_dict['proj.weight'] has shape {w.shape} but "
                             "should be (E, C, p, p) with square patches")
        if "proj.bias" in arrs:
            check_shape(arrs["proj.bias"], "state_dict['proj.bias']", (w.shape[0],))
        obj = cls.__new__(cls)
        obj.params = arrs
        return obj

    @property
    def patch_size(self) -> int:
        return int(self.params["proj.weight"].shape[2])

    @property
    def in_chans(self) -> int:
        return int(self.params["proj.weight"].shape[1])

    @property
    def embed_dim(self) -> int:
        return int(self.params["proj.weight"].shape[0])

    def _check(self, x):
        x = _check_input(x, "x", 4, self.in_chans)
        p = self.patch_size
        _, H, W, _ = x.shape
        if H % p or W % p:
            raise ValueError(f"Parameter x has shape {x.shape} (B, H, W, C): H = {H} and "
                             f"W = {W} must be multiples of patch_size = {p}")
        return x

    def _patches(self, x):
        """(B, H, W, C) -> (B, H/p, W/p, C·p·p), each patch ordered (c, a, b') like the weight."""
        Bsz, H, W, C = x.shape
        p = self.patch_size
        t = x.reshape(Bsz, H // p, p, W // p, p, C)  # (B, Hp, a, Wp, b', C)
        t = t.transpose(0, 1, 3, 5, 2, 4)  # (B, Hp, Wp, C, a, b')
        return t.reshape(Bsz, H // p, W // p, C * p * p)  # (B, Hp, Wp, C·p·p)

    def _unpatch(self, dpatches, shape):
        """Adjoint of :meth:`_patches` (a permutation, so it is also the inverse)."""
        Bsz, H, W, C = shape
        p = self.patch_size
        t = dpatches.reshape(Bsz, H // p, W // p, C, p, p)  # (B, Hp, Wp, C, a, b')
        t = t.transpose(0, 1, 4, 2, 5, 3)  # (B, Hp, a, Wp, b', C)
        return t.reshape(Bsz, H, W, C)  # (B, H, W, C)

    def forward(self, x, return_cache=False):
        """Embed the patches of ``x``.

        Parameters
        ----------
        x : array_like, shape (B, H, W, C)
            H and W multiples of the patch size.
        return_cache : bool, default False

        Returns
        -------
        y : ndarray, shape (B, H/p, W/p, E), in ``x``'s dtype.
        cache : dict, only with ``return_cache=True``.

        Raises
        ------
        ValueError
            ``x`` not (B, H, W, C) with the right C, H or W not divisible by p,
            or not finite.
        """
        x = self._check(x)
        E = self.embed_dim
        patches = self._patches(x.astype(np.float64))  # (B, Hp, Wp, C·p·p)
        w_mat = self._w("proj.weight").reshape(E, -1)  # (E, C·p·p)
        y = linear(patches, w_mat, self._w("proj.bias"))  # (B, Hp, Wp, E)
        cache = {"u": x, "patches": patches}
        y = y.astype(x.dtype)
        return (y, cache) if return_cache else y

    def backward(self, dout, cache):
        """Gradients: ``(dx (B, H, W, C), {"proj.weight": ..., "proj.bias": ...})``.

        Examples
        --------
        >>> import numpy as np
        >>> pe = PatchEmbed(1, 2, 2)
        >>> y, cache = pe.forward(np.ones((1, 2, 2, 1)), return_cache=True)
        >>> dx, g = pe.backward(np.ones_like(y), cache)
        >>> g["proj.weight"].shape, g["proj.bias"].tolist()
        ((2, 1, 2, 2), [1.0, 1.0])
        """
        cache = _check_cache(cache, "PatchEmbed")
        u = cache["u"]
        Bsz, H, W, _ = u.shape
        p, E = self.patch_size, self.embed_dim
        dout = _check_dout(dout, (Bsz, H // p, W // p, E))
        w = self._w("proj.weight")
        dpatches, dw_mat, db = linear_backward(dout.astype(np.float64), cache["patches"],
                                               w.reshape(E, -1), self._w("proj.bias"))
        g = {"proj.weight": dw_mat.reshape(w.shape)}
        if "proj.bias" in self.params:
            g["proj.bias"] = db
        dx = self._unpatch(dpatches, u.shape)
        return dx.astype(dout.dtype), self._grads_out(g)


# =========================================================================== class token, position
def cls_token_index(n_tokens, position="middle"):
    """Where a class token goes among ``n_tokens`` patch tokens.

    Parameters
    ----------
    n_tokens : int
        L, the number of patch tokens (before insertion).
    position : {"head", "middle", "tail"} or int
        ``"head"`` -> 0 (ViT), ``"middle"`` -> L // 2 (Vim's ``use_middle_cls_token``:
        ``token_position = M // 2``), ``"tail"`` -> L, or an explicit index 0..L.

    Returns
    -------
    int
        Index of the class token in the sequence of L + 1 tokens.

    Raises
    ------
    ValueError
        Unknown position or an index outside 0..L.

    Examples
    --------
    >>> [cls_token_index(9, p) for p in ("head", "middle", "tail")]
    [0, 4, 9]
    """
    L = check_positive_int(n_tokens, "n_tokens")
    if isinstance(position, str):
        check_choice(position, "position", ("head", "middle", "tail"))
        return {"head": 0, "middle": L // 2, "tail": L}[position]
    idx = check_positive_int(position, "position", minimum=0)
    if idx > L:
        raise ValueError(f"Parameter position = {idx} must lie in 0..{L} for {L} tokens")
    return idx


def insert_cls_token(x, cls_token, position="middle"):
    """Insert a learned class token into a token sequence.

    Parameters
    ----------
    x : array_like, shape (B, L, E)
    cls_token : array_like, shape (1, 1, E)
        Vim's ``cls_token`` parameter (the same token for every image).
    position : {"head", "middle", "tail"} or int
        See :func:`cls_token_index`.  Vim uses ``"middle"``.

    Returns
    -------
    y : ndarray, shape (B, L + 1, E), in ``x``'s dtype
    index : int
        Where the class token sits (read the classifier's input at ``y[:, index]``).

    Raises
    ------
    ValueError
        Shapes that do not match or non-finite input.

    References
    ----------
    Zhu et al. 2024, Vim, arXiv:2401.09417, section 3.3 (middle class token).

    Examples
    --------
    >>> import numpy as np
    >>> y, i = insert_cls_token(np.zeros((1, 4, 2)), np.ones((1, 1, 2)))
    >>> i, y[0, :, 0].tolist()
    (2, [0.0, 0.0, 1.0, 0.0, 0.0])
    """
    x = as_array(x, "x", allow_complex=False, ndim=3)
    check_finite(x, "x")
    Bsz, L, E = x.shape
    cls = as_array(cls_token, "cls_token", allow_complex=False, ndim=3)
    check_shape(cls, "cls_token", (1, 1, E))
    check_finite(cls, "cls_token")
    idx = cls_token_index(L, position)
    xp = array_module(x, cls)
    tok = xp.broadcast_to(cls.astype(x.dtype), (Bsz, 1, E))  # (B, 1, E)
    y = xp.concatenate([x[:, :idx], tok, x[:, idx:]], axis=1)  # (B, L + 1, E)
    return y, idx


def insert_cls_token_backward(dy, index):
    """Gradients of :func:`insert_cls_token`: ``(dx (B, L, E), dcls (1, 1, E))``.

    The class token is shared by the batch, so its gradient is the batch sum
    of ``dy[:, index]``.

    Examples
    --------
    >>> import numpy as np
    >>> dx, dcls = insert_cls_token_backward(np.ones((3, 5, 2)), 2)
    >>> dx.shape, dcls.tolist()
    ((3, 4, 2), [[[3.0, 3.0]]])
    """
    dy = as_array(dy, "dy", allow_complex=False, ndim=3)
    n = dy.shape[1]
    idx = check_positive_int(index, "index", minimum=0)
    if idx >= n:
        raise ValueError(f"Parameter index = {idx} must lie in 0..{n - 1} for dy of shape "
                         f"{dy.shape}")
    dx = array_module(dy).concatenate([dy[:, :idx], dy[:, idx + 1:]], axis=1)  # (B, L, E)
    dcls = dy[:, idx:idx + 1].sum(axis=0, keepdims=True)  # (1, 1, E)
    return dx, dcls


def add_position_embedding(x, pos_embed):
    """Add a learned absolute position embedding, ``x + pos_embed`` (Vim's ``pos_embed``).

    Parameters
    ----------
    x : array_like, shape (B, L, E)
    pos_embed : array_like, shape (1, L, E)
        One vector per sequence position (class token included when present),
        shared by the batch.

    Returns
    -------
    ndarray, shape (B, L, E), in ``x``'s dtype.

    Raises
    ------
    ValueError
        ``pos_embed`` not (1, L, E) (never broadcast silently).

    Examples
    --------
    >>> import numpy as np
    >>> add_position_embedding(np.zeros((2, 3, 1)), np.arange(3.0).reshape(1, 3, 1))[1, :, 0]
    array([0., 1., 2.])
    """
    x = as_array(x, "x", allow_complex=False, ndim=3)
    pos = as_array(pos_embed, "pos_embed", allow_complex=False, ndim=3)
    check_shape(pos, "pos_embed", (1,) + x.shape[1:])
    check_finite(x, "x")
    check_finite(pos, "pos_embed")
    return (x.astype(np.float64) + pos).astype(x.dtype)


def add_position_embedding_backward(dy):
    """Gradients of :func:`add_position_embedding`: ``(dx = dy, dpos = sum_b dy)`` (1, L, E).

    Examples
    --------
    >>> import numpy as np
    >>> add_position_embedding_backward(np.ones((2, 3, 1)))[1][0, :, 0]
    array([2., 2., 2.])
    """
    dy = as_array(dy, "dy", allow_complex=False, ndim=3)
    return dy, dy.sum(axis=0, keepdims=True)


# =========================================================================== Vim
#: Vim's names for the backward path's copy of each Mamba inner-path parameter
#: (``ssm_ref.mamba.INNER_KEYS``).
_BACKWARD_NAMES = {"A_log": "A_b_log", "D": "D_b", "conv1d.weight": "conv1d_b.weight",
                   "conv1d.bias": "conv1d_b.bias", "x_proj.weight": "x_proj_b.weight",
                   "dt_proj.weight": "dt_proj_b.weight", "dt_proj.bias": "dt_proj_b.bias"}
_VIM_KEYS = ("A_log", "A_b_log", "D", "D_b", "in_proj.weight", "in_proj.bias",
             "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
             "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight", "dt_proj_b.weight",
             "dt_proj_b.bias", "out_proj.weight", "out_proj.bias")
_VIM_OPTIONAL = ("in_proj.bias", "out_proj.bias", "conv1d.bias", "conv1d_b.bias")


class VimMixer(_Module):
    """Vim's bidirectional Mamba mixer ("bimamba v2") on (B, L, d_model) tokens.

    One ``in_proj`` feeds two Mamba inner paths (:func:`ssm_ref.mamba_inner_forward`,
    the official ``mamba_inner_fn_no_out_proj``) with separate parameters: the
    forward path reads the sequence as it is, the backward path reads it
    flipped (x and the gate z both flipped); the backward output is flipped
    back, the two are averaged and ``out_proj`` maps them to ``d_model``::

        xz    = in_proj(u)                                  (B, 2D, L)
        y_f   = path(xz;        conv1d,   x_proj,   dt_proj,   A_log,   D)
        y_b   = path(flip(xz);  conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b)
        out   = out_proj(((y_f + flip(y_b)) / 2)^T)         (B, L, d_model)

    Parameters
    ----------
    d_model : int
    d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale, dt_init_floor
        As in :class:`ssm_ref.MambaConfig`.
    conv_bias, bias
        As in :class:`ssm_ref.MambaConfig`.
    seed : int or numpy.random.Generator, default 0
    dtype : numpy dtype, default float64
    scan_fn, scan_backward_fn : callable, optional
        The selective scan and its backward (default: the reference).

    Attributes
    ----------
    config : MambaConfig
    params : dict
        Vim's names: the Mamba ones (``in_proj.weight``, ``conv1d.weight``
        (D, 1, K), ``conv1d.bias``, ``x_proj.weight``, ``dt_proj.weight``,
        ``dt_proj.bias``, ``A_log``, ``D``, ``out_proj.weight``) plus the
        backward path's ``conv1d_b.*``, ``x_proj_b.weight``, ``dt_proj_b.*``,
        ``A_b_log``, ``D_b``.

    Notes
    -----
    Implements ``eq-vim-bidirectional``.  Vim sets ``if_devide_out=True``,
    hence the average rather than the sum.  Each direction is initialized
    like the official Mamba block (:func:`ssm_ref.mamba_init`); the original
    Vim code gives the backward path's ``dt_proj_b`` PyTorch's default Linear
    initialization instead of the special dt initialization (a difference at
    initialization only; loaded weights are used as they are).

    The mixer sees a plain token sequence: which spatial order the patches
    were flattened in, and where the class token sits, is decided before it
    (see :func:`ssm_ref.vision.to_sequence` and :func:`insert_cls_token`).

    References
    ----------
    Zhu et al. 2024, "Vision Mamba", arXiv:2401.09417, Algorithm 1;
    ``hustvl/Vim``, ``mamba-1p1p1/mamba_ssm/modules/mamba_simple.py`` (bimamba v2).

    Examples
    --------
    >>> import numpy as np
    >>> mixer = VimMixer(d_model=4, d_state=2)
    >>> x = np.random.default_rng(0).standard_normal((2, 5, 4))
    >>> mixer(x).shape
    (2, 5, 4)
    >>> sorted(k for k in mixer.state_dict() if "_b" in k)  # doctest: +NORMALIZE_WHITESPACE
    ['A_b_log', 'D_b', 'conv1d_b.bias', 'conv1d_b.weight', 'dt_proj_b.bias',
     'dt_proj_b.weight', 'x_proj_b.weight']
    """

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto",
                 dt_min=1e-3, dt_max=1e-1, dt_init="random", dt_scale=1.0,
                 dt_init_floor=1e-4, conv_bias=True, bias=False, *, seed=0,
                 dtype=np.float64, scan_fn=None, scan_backward_fn=None):
        self.config = MambaConfig(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max,
                                  dt_init, dt_scale, dt_init_floor, conv_bias, bias)
        rng = _rng(seed)
        fwd = mamba_init(self.config, seed=rng, dtype=dtype)
        bwd = mamba_init(self.config, seed=rng, dtype=dtype)
        p = dict(fwd)
        for k in INNER_KEYS:
            if k in bwd:
                p[_BACKWARD_NAMES[k]] = bwd[k]
        self.params = {k: p[k] for k in _VIM_KEYS if k in p}
        self._set_backends(scan_fn, scan_backward_fn)

    def __repr__(self):
        c = self.config
        return (f"VimMixer(d_model={c.d_model}, d_inner={c.d_inner}, d_state={c.d_state}, "
                f"d_conv={c.d_conv}, dt_rank={c.dt_rank}, params={self.num_params})")

    @classmethod
    def from_state_dict(cls, state_dict, *, prefix="", scan_fn=None, scan_backward_fn=None):
        """Build a mixer from Vim's bimamba-v2 ``Mamba`` state dict (NumPy arrays).

        Sizes are inferred as in :meth:`ssm_ref.MambaBlock.from_state_dict`
        and every entry, the backward path's included, is checked against them.

        Raises
        ------
        KeyError
            Missing or unknown names (all listed), or only one of the two
            linear biases.
        ValueError
            A shape that does not match the inferred sizes (the key, its shape
            and the expected shape are named).

        Examples
        --------
        >>> m = VimMixer.from_state_dict(VimMixer(d_model=6, d_state=2).state_dict())
        >>> m.config.d_inner, m.config.d_state
        (12, 2)
        """
        required = [k for k in _VIM_KEYS if k not in _VIM_OPTIONAL]
        arrs = _read_state_dict(state_dict, prefix, required, _VIM_OPTIONAL, "Vim's Mamba (v2)")
        _check_pair(arrs, "in_proj.bias", "out_proj.bias")
        _check_pair(arrs, "conv1d.bias", "conv1d_b.bias")
        _check_ndim(arrs, "in_proj.weight", 2, "(2 * d_inner, d_model)")
        _check_ndim(arrs, "A_log", 2, "(d_inner, d_state)")
        _check_ndim(arrs, "conv1d.weight", 3, "(d_inner, 1, d_conv)")
        _check_ndim(arrs, "dt_proj.weight", 2, "(d_inner, dt_rank)")
        d_model, D = _in_proj_sizes(arrs)
        N, K = arrs["A_log"].shape[1], arrs["conv1d.weight"].shape[2]
        R = arrs["dt_proj.weight"].shape[1]
        path = {"A_log": (D, N), "D": (D,), "conv1d.weight": (D, 1, K), "conv1d.bias": (D,),
                "x_proj.weight": (R + 2 * N, D), "dt_proj.weight": (D, R), "dt_proj.bias": (D,)}
        expected = {"in_proj.weight": (2 * D, d_model), "in_proj.bias": (2 * D,),
                    "out_proj.weight": (d_model, D), "out_proj.bias": (d_model,), **path,
                    **{_BACKWARD_NAMES[k]: v for k, v in path.items()}}
        _check_expected(arrs, expected, f"d_model={d_model}, d_inner={D}, d_state={N}, "
                                        f"d_conv={K}, dt_rank={R}")
        obj = cls.__new__(cls)
        obj.config = MambaConfig(d_model=d_model, d_state=N, d_conv=K, expand=D / d_model,
                                 dt_rank=R, conv_bias="conv1d.bias" in arrs,
                                 bias="in_proj.bias" in arrs)
        if obj.config.d_inner != D:
            raise ValueError(f"cannot represent d_inner={D} as int(expand * d_model) with "
                             f"d_model={d_model}")
        obj.params = {k: arrs[k] for k in _VIM_KEYS if k in arrs}
        obj._set_backends(scan_fn, scan_backward_fn)
        return obj

    def _path_params(self, backward_path):
        """One inner path's parameters under the Mamba names (the ``_b`` copies if backward)."""
        return {k: self.params.get(_BACKWARD_NAMES[k] if backward_path else k)
                for k in INNER_KEYS}

    def forward(self, x, return_cache=False):
        """Mix a token sequence in both directions.

        Parameters
        ----------
        x : array_like, shape (B, L, d_model)
        return_cache : bool, default False

        Returns
        -------
        out : ndarray, shape (B, L, d_model), in ``x``'s dtype.
        cache : dict, only with ``return_cache=True``.

        Raises
        ------
        ValueError
            ``x`` not (B, L, d_model) or not finite.
        """
        x = _check_input(x, "x", 3, self.config.d_model)
        u = x.astype(np.float64)
        xz = linear(u, self._w("in_proj.weight"), self._w("in_proj.bias"))  # (B, L, 2D)
        xz = xz.transpose(0, 2, 1)  # (B, 2D, L)
        y_f, cache_f = mamba_inner_forward(xz, self._path_params(False),
                                           scan_fn=self.scan_fn)  # (B, D, L)
        y_b, cache_b = mamba_inner_forward(xz[:, :, ::-1], self._path_params(True),
                                           scan_fn=self.scan_fn)  # on the flipped sequence
        y = 0.5 * (y_f + y_b[:, :, ::-1])  # (B, D, L): average of the two directions
        out = linear(y.transpose(0, 2, 1), self._w("out_proj.weight"),
                     self._w("out_proj.bias"))  # (B, L, d_model)
        out = out.astype(x.dtype)
        cache = {"u": u, "y": y, "f": cache_f, "b": cache_b}
        return (out, cache) if return_cache else out

    def backward(self, dout, cache):
        """Gradients: ``(dx (B, L, d_model), grads by Vim's state-dict names)``.

        Notes
        -----
        ``out_proj`` -> halve -> each path's backward (the backward path's
        gradient is flipped in, its ``dxz`` flipped out) -> sum the two ``dxz``
        -> ``in_proj``.

        Examples
        --------
        >>> import numpy as np
        >>> m = VimMixer(d_model=4, d_state=2)
        >>> out, cache = m.forward(np.ones((1, 3, 4)), return_cache=True)
        >>> dx, g = m.backward(np.ones_like(out), cache)
        >>> dx.shape, g["A_b_log"].shape
        ((1, 3, 4), (8, 2))
        """
        cache = _check_cache(cache, "VimMixer")
        dout = _check_dout(dout, cache["u"].shape)
        xp = array_module(dout)
        g = {}
        dy_tok, g["out_proj.weight"], g["out_proj.bias"] = linear_backward(
            dout.astype(np.float64), cache["y"].transpose(0, 2, 1),
            self._w("out_proj.weight"), self._w("out_proj.bias"))
        dy = 0.5 * dy_tok.transpose(0, 2, 1)  # (B, D, L)
        dxz_f, g_f = mamba_inner_backward(dy, cache["f"], self._path_params(False),
                                          scan_backward_fn=self.scan_backward_fn)
        dxz_b, g_b = mamba_inner_backward(xp.ascontiguousarray(dy[:, :, ::-1]), cache["b"],
                                          self._path_params(True),
                                          scan_backward_fn=self.scan_backward_fn)
        g.update(g_f)
        g.update({_BACKWARD_NAMES[k]: v for k, v in g_b.items()})
        dxz = dxz_f + dxz_b[:, :, ::-1]  # (B, 2D, L)
        du, g["in_proj.weight"], g["in_proj.bias"] = linear_backward(
            dxz.transpose(0, 2, 1), cache["u"], self._w("in_proj.weight"),
            self._w("in_proj.bias"))  # (B, L, d_model)
        return du.astype(dout.dtype), self._grads_out(g)


class VimBlock(_PreNormBlock):
    """Vim's block: ``x + VimMixer(RMSNorm(x))`` on (B, L, d_model) tokens.

    Parameters
    ----------
    d_model : int
    eps : float, default 1e-5
        RMSNorm epsilon (Vim's ``norm_epsilon``).
    seed : int or numpy.random.Generator, default 0
    dtype : numpy dtype, default float64
    scan_fn, scan_backward_fn : callable, optional
    **mixer_kwargs
        Passed to :class:`VimMixer` (``d_state``, ``d_conv``, ``expand``, ...).

    Attributes
    ----------
    mixer : VimMixer
    params : dict
        ``norm.weight`` (d_model,); the mixer's under ``mixer.`` in :meth:`state_dict`.

    Notes
    -----
    Implements ``eq-vim-block``.  Vim's ``Block`` carries the residual stream
    separately: it returns ``(h, r)`` with ``r = r_prev + h_prev`` and
    ``h = mixer(norm(r))``.  Unrolled over layers the residual stream is
    ``x_0 + h_1 + ... + h_l``, which is exactly the sequence of this pre-norm
    form ``x_{l+1} = x_l + mixer(norm(x_l))`` (Vim's final ``norm_f`` then sees
    ``r + h``, the output of our last block).  Drop-path is not included.

    References
    ----------
    Zhu et al. 2024, Vim, arXiv:2401.09417; ``hustvl/Vim``, ``vim/models_mamba.py``.

    Examples
    --------
    >>> import numpy as np
    >>> blk = VimBlock(d_model=4, d_state=2)
    >>> blk(np.zeros((1, 3, 4))).shape
    (1, 3, 4)
    >>> out, cache = blk.forward(np.ones((1, 3, 4)), return_cache=True)
    >>> dx, g = blk.backward(np.ones_like(out), cache)
    >>> "norm.weight" in g and "mixer.A_b_log" in g
    True
    """

    _mixer_name, _norm_name, _x_ndim, norm = "mixer", "norm", 3, "rms"

    def __init__(self, d_model, *, eps=1e-5, seed=0, dtype=np.float64, scan_fn=None,
                 scan_backward_fn=None, **mixer_kwargs):
        self.eps = check_positive_scalar(eps, "eps")
        self.mixer = VimMixer(d_model, seed=seed, dtype=dtype, scan_fn=scan_fn,
                              scan_backward_fn=scan_backward_fn, **mixer_kwargs)
        self.params = {"norm.weight": np.ones(self.mixer.config.d_model, dtype=dtype)}

    @classmethod
    def from_state_dict(cls, state_dict, *, prefix="", eps=1e-5, scan_fn=None,
                        scan_backward_fn=None):
        """Build from Vim's ``Block`` names: ``norm.weight`` and ``mixer.*``.

        Examples
        --------
        >>> sd = VimBlock(d_model=4, d_state=2).state_dict()
        >>> VimBlock.from_state_dict(sd).mixer.config.d_state
        2
        """
        if not hasattr(state_dict, "keys") or prefix + "norm.weight" not in state_dict:
            raise KeyError(f"state_dict (prefix {prefix!r}) lacks 'norm.weight' of Vim's Block")
        obj = cls.__new__(cls)
        obj.eps = check_positive_scalar(eps, "eps")
        obj.mixer = VimMixer.from_state_dict(
            {k: v for k, v in state_dict.items() if k != prefix + "norm.weight"},
            prefix=prefix + "mixer.", scan_fn=scan_fn, scan_backward_fn=scan_backward_fn)
        w = as_array(state_dict[prefix + "norm.weight"], "state_dict['norm.weight']",
                     allow_complex=False)
        check_shape(w, "state_dict['norm.weight']", (obj.mixer.config.d_model,))
        obj.params = {"norm.weight": w.copy()}
        return obj


# =========================================================================== SS2D
def _resolve_directions(directions, direction_options):
    """Turn a directions spec into (build(H, W) -> list of index arrays, reduce, label)."""
    opts = dict(direction_options or {})
    if isinstance(directions, str):
        if directions not in SCHEMES:
            raise ValueError(f"Parameter directions = {directions!r} is not a scheme of "
                             f"{sorted(SCHEMES)} nor a list of scan-order names")
        scan_scheme(directions, 4, 4, **opts)  # validates the options now

        def build(H, W):
            return scan_scheme(directions, H, W, **opts)
        return build, SCHEMES[directions].reduce, directions
    if opts:
        raise ValueError("Parameter direction_options is only used with a scheme name; give "
                         "(name, options) pairs in a list of directions instead")
    specs = []
    for i, d in enumerate(directions):
        if isinstance(d, str):
            specs.append((d, {}))
        elif (isinstance(d, tuple) and len(d) == 2 and isinstance(d[0], str)
              and isinstance(d[1], dict)):
            specs.append((d[0], dict(d[1])))
        else:
            raise TypeError(f"Parameter directions[{i}] = {d!r} should be a scan-order name "
                            "or a (name, options) pair")
    if not specs:
        raise ValueError("Parameter directions is empty but should name at least one scan order")
    for name, o in specs:
        scan_order(name, 4, 4, **o)  # unknown names and options fail here, not at run time

    def build(H, W):
        return [scan_order(name, H, W, **o) for name, o in specs]
    return build, "sum", [s[0] if not s[1] else s for s in specs]


def _n_directions(build):
    """K of a directions spec, counted on a grid large enough for every scheme option."""
    return len(build(32, 32))


_SS2D_KEYS = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds",
              "in_proj.weight", "in_proj.bias", "conv2d.weight", "conv2d.bias",
              "out_norm.weight", "out_norm.bias", "out_proj.weight", "out_proj.bias")
_SS2D_OPTIONAL = ("in_proj.bias", "conv2d.bias", "out_proj.bias")


class SS2D(_Module):
    """VMamba's 2-D selective scan (SS2D, forward type v0) on (B, H, W, C) images.

    The data path (book equation ``eq-ss2d``)::

        xz    = in_proj(u)                             (B, H, W, 2D) -> x, z
        x     = silu(depthwise_conv2d_3x3(x))          (B, H, W, D)
        xs_k  = x read in direction k                  (B, D, L),  k = 0..K-1
        dts, Bs, Cs = split(x_proj_weight[k] @ xs_k)   (B, R, L), (B, N, L), (B, N, L)
        delta_k = dt_projs_weight[k] @ dts             (B, D, L)
        y_k   = selective_scan over the K·D channels, one call, grouped B/C
                (group k = channels k·D .. k·D + D - 1), A = -exp(A_logs),
                D = Ds, delta_bias = dt_projs_bias, softplus, no gate
        y     = sum_k scatter(y_k, direction k)        (B, H, W, D)   (VMamba's merge)
        out   = out_proj(LayerNorm(y) * silu(z))       (B, H, W, C)

    Parameters
    ----------
    d_model : int
        C, the image channels.
    d_state : int, default 16
    d_conv : int, default 3
        Side of the depthwise convolution (VMamba's 3×3).
    expand : float, default 2
    dt_rank : int or "auto"
        ``"auto"`` = ceil(d_model / 16).
    dt_min, dt_max, dt_init, dt_scale, dt_init_floor
        The dt initialization of Mamba, per direction.
    conv_bias : bool, default True
    bias : bool, default False
        Biases of ``in_proj`` and ``out_proj``.
    directions : str or sequence, default ``CROSS_SCAN_ORDERS``
        The scan directions: VMamba's four (raster, column, both reversed) by
        default; or a scheme name of :data:`ssm_ref.vision.SCHEMES`
        (``"omnidirectional"``, ``"zigma"``, ``"localmamba"``, ``"es2d"``, ...,
        merged with the scheme's ``reduce``); or a list of scan-order names or
        ``(name, options)`` pairs (merged by summation).  K is the number of directions.
    direction_options : dict, optional
        Options of a scheme name (e.g. ``{"window": 2}``).
    eps : float, default 1e-5
        ``out_norm`` epsilon (``nn.LayerNorm``'s default).
    seed, dtype, scan_fn, scan_backward_fn
        As in :class:`VimMixer`.

    Attributes
    ----------
    params : dict
        VMamba's names: ``in_proj.weight`` (2D, C), ``conv2d.weight`` (D, 1, k, k),
        ``conv2d.bias``, ``x_proj_weight`` (K, R+2N, D), ``dt_projs_weight``
        (K, D, R), ``dt_projs_bias`` (K, D), ``A_logs`` (K·D, N), ``Ds`` (K·D,),
        ``out_norm.weight``, ``out_norm.bias``, ``out_proj.weight`` (C, D).

    Notes
    -----
    With the default directions this is VMamba's ``forward_corev0``: the
    column direction is the W×H transpose flattened (``scan_order("column")``)
    and its output is put back with the inverse transpose, which on a
    non-square grid is not the same reshape as the forward one (scattering
    through the permutation does it right).  Directions of unequal length
    (ES2D's sub-grids on odd sizes) are scanned one call each.  The
    initialization follows VMamba: PyTorch's default for the linear and conv
    layers, Mamba's dt init per direction, ``A_logs = log(1..N)``, ``Ds = 1``,
    ``out_norm`` weight 1 and bias 0.  Dropout is left out.

    References
    ----------
    Liu et al. 2024, "VMamba: Visual State Space Model", arXiv:2401.10166,
    section 3 (SS2D, cross-scan); ``MzeroMiko/VMamba``,
    ``classification/models/vmamba.py`` (``SS2D.forward_corev0``).

    Examples
    --------
    >>> import numpy as np
    >>> ss2d = SS2D(d_model=4, d_state=2)
    >>> x = np.random.default_rng(0).standard_normal((1, 3, 5, 4))
    >>> ss2d(x).shape
    (1, 3, 5, 4)
    >>> ss2d.params["x_proj_weight"].shape, ss2d.params["A_logs"].shape
    ((4, 5, 8), (32, 2))
    """

    def __init__(self, d_model, d_state=16, d_conv=3, expand=2, dt_rank="auto",
                 dt_min=1e-3, dt_max=1e-1, dt_init="random", dt_scale=1.0,
                 dt_init_floor=1e-4, conv_bias=True, bias=False, *,
                 directions=CROSS_SCAN_ORDERS, direction_options=None, eps=1e-5, seed=0,
                 dtype=np.float64, scan_fn=None, scan_backward_fn=None):
        self.config = MambaConfig(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max,
                                  dt_init, dt_scale, dt_init_floor, conv_bias, bias)
        self.eps = check_positive_scalar(eps, "eps")
        self._set_directions(directions, direction_options)
        self.params = self._init_params(_rng(seed), dtype)
        self._set_backends(scan_fn, scan_backward_fn)

    def _set_directions(self, directions, direction_options):
        self._build, self.reduce, self.directions = _resolve_directions(directions,
                                                                        direction_options)
        self.n_directions = _n_directions(self._build)

    def _init_params(self, rng, dtype):
        c, K = self.config, self.n_directions
        D, k = c.d_inner, c.d_conv
        per_dir = [mamba_init(c, seed=rng) for _ in range(K)]  # Mamba's init, once per direction
        bound = 1.0 / k  # PyTorch's Conv2d default, 1/sqrt(fan_in) with fan_in = 1·k·k
        p = {
            "x_proj_weight": np.stack([q["x_proj.weight"] for q in per_dir]),  # (K, R+2N, D)
            "dt_projs_weight": np.stack([q["dt_proj.weight"] for q in per_dir]),  # (K, D, R)
            "dt_projs_bias": np.stack([q["dt_proj.bias"] for q in per_dir]),  # (K, D)
            "A_logs": np.concatenate([q["A_log"] for q in per_dir]),  # (K·D, N)
            "Ds": np.concatenate([q["D"] for q in per_dir]),  # (K·D,)
            "in_proj.weight": per_dir[0]["in_proj.weight"],  # (2D, C)
            "conv2d.weight": rng.uniform(-bound, bound, (D, 1, k, k)),
            "out_norm.weight": np.ones(D), "out_norm.bias": np.zeros(D),
            "out_proj.weight": per_dir[0]["out_proj.weight"],  # (C, D)
        }
        if c.conv_bias:
            p["conv2d.bias"] = rng.uniform(-bound, bound, (D,))
        if c.bias:
            p["in_proj.bias"] = per_dir[0]["in_proj.bias"]
            p["out_proj.bias"] = per_dir[0]["out_proj.bias"]
        return {key: p[key].astype(dtype) for key in _SS2D_KEYS if key in p}

    def __repr__(self):
        c = self.config
        return (f"{type(self).__name__}(d_model={c.d_model}, d_inner={c.d_inner}, "
                f"d_state={c.d_state}, K={self.n_directions}, directions={self.directions!r}, "
                f"params={self.num_params})")

    @classmethod
    def from_state_dict(cls, state_dict, *, prefix="", directions=CROSS_SCAN_ORDERS,
                        direction_options=None, eps=1e-5, scan_fn=None, scan_backward_fn=None):
        """Build from VMamba's SS2D (v0) state dict (NumPy arrays); sizes are inferred.

        ``d_model`` and ``d_inner`` come from ``in_proj.weight`` (2·d_inner, d_model),
        K and ``R + 2N`` from ``x_proj_weight``, R from ``dt_projs_weight``, N from
        ``A_logs``, the conv side from ``conv2d.weight``; every entry is then
        checked against them, and K against the number of ``directions``.

        Raises
        ------
        KeyError
            Missing or unknown names (all listed).
        ValueError
            A shape that does not match (key, shape and expected shape named),
            or K different from the number of directions.

        Examples
        --------
        >>> ss2d = SS2D.from_state_dict(SS2D(d_model=4, d_state=3).state_dict())
        >>> ss2d.config.d_inner, ss2d.config.d_state, ss2d.n_directions
        (8, 3, 4)
        """
        required = [k for k in _SS2D_KEYS if k not in _SS2D_OPTIONAL]
        arrs = _read_state_dict(state_dict, prefix, required, _SS2D_OPTIONAL, "VMamba's SS2D")
        _check_pair(arrs, "in_proj.bias", "out_proj.bias")
        _check_ndim(arrs, "in_proj.weight", 2, "(2 * d_inner, d_model)")
        _check_ndim(arrs, "x_proj_weight", 3, "(K, dt_rank + 2 * d_state, d_inner)")
        _check_ndim(arrs, "dt_projs_weight", 3, "(K, d_inner, dt_rank)")
        _check_ndim(arrs, "A_logs", 2, "(K * d_inner, d_state)")
        _check_ndim(arrs, "conv2d.weight", 4, "(d_inner, 1, k, k)")
        C, D = _in_proj_sizes(arrs)
        K = arrs["x_proj_weight"].shape[0]
        R, N = arrs["dt_projs_weight"].shape[2], arrs["A_logs"].shape[1]
        k = arrs["conv2d.weight"].shape[2]
        expected = {
            "x_proj_weight": (K, R + 2 * N, D), "dt_projs_weight": (K, D, R),
            "dt_projs_bias": (K, D), "A_logs": (K * D, N), "Ds": (K * D,),
            "in_proj.weight": (2 * D, C), "in_proj.bias": (2 * D,),
            "conv2d.weight": (D, 1, k, k), "conv2d.bias": (D,),
            "out_norm.weight": (D,), "out_norm.bias": (D,),
            "out_proj.weight": (C, D), "out_proj.bias": (C,),
        }
        _check_expected(arrs, expected, f"d_model={C}, d_inner={D}, d_state={N}, "
                                        f"dt_rank={R}, K={K}, conv {k}x{k}")
        obj = cls.__new__(cls)
        obj.config = MambaConfig(d_model=C, d_state=N, d_conv=k, expand=D / C, dt_rank=R,
                                 conv_bias="conv2d.bias" in arrs, bias="in_proj.bias" in arrs)
        if obj.config.d_inner != D:
            raise ValueError(f"cannot represent d_inner={D} as int(expand * d_model) with "
                             f"d_model={C}")
        obj.eps = check_positive_scalar(eps, "eps")
        obj._set_directions(directions, direction_options)
        if obj.n_directions != K:
            raise ValueError(f"Parameter state_dict['x_proj_weight'] holds K = {K} directions "
                             f"but directions={obj.directions!r} has {obj.n_directions}")
        obj.params = {key: arrs[key] for key in _SS2D_KEYS if key in arrs}
        obj._set_backends(scan_fn, scan_backward_fn)
        return obj

    # ------------------------------------------------------------------ the directional core
    def _perms(self, H, W, xp=np):
        """The K scan orders (host NumPy) and the visits of each cell (1, H, W, 1) on ``xp``."""
        perms = [np.asarray(q, dtype=np.int64) for q in self._build(H, W)]
        if len(perms) != self.n_directions:
            raise ValueError(f"directions {self.directions!r} give {len(perms)} sequences on a "
                             f"{H}x{W} grid but the parameters hold K = {self.n_directions}")
        count = np.zeros(H * W)
        for q in perms:
            count[q] += 1
        # (1, H, W, 1): visits of each cell, copied to the device once (cached)
        return perms, on_module_cached(count.reshape(1, H, W, 1), xp)

    def _core_weights(self):
        c = self.config
        K, D = self.n_directions, c.d_inner
        A_logs = self._w("A_logs")
        return {"w_x": self._w("x_proj_weight"), "w_dt": self._w("dt_projs_weight"),
                "b_dt": self._w("dt_projs_bias").reshape(K * D),  # (K·D,)
                "A": -array_module(A_logs).exp(A_logs), "D": self._w("Ds")}  # (K·D, N), (K·D,)

    def _core_forward(self, x_act, w):
        """Scan x_act (B, H, W, D) in the K directions; return y (B, H, W, D) and a cache."""
        Bsz, H, W, D = x_act.shape
        c = self.config
        R, N, K = c.dt_rank, c.d_state, self.n_directions
        xp = array_module(x_act)
        perms, count = self._perms(H, W, xp)
        xs, dts, deltas, Bs, Cs = [], [], [], [], []
        for k in range(K):
            xs_k = to_sequence(x_act, perms[k]).transpose(0, 2, 1)  # (B, D, L_k)
            x_dbl = xp.einsum("bdl,cd->bcl", xs_k, w["w_x"][k])  # (B, R + 2N, L_k)
            dts.append(x_dbl[:, :R])  # (B, R, L_k)
            Bs.append(x_dbl[:, R:R + N])  # (B, N, L_k)
            Cs.append(x_dbl[:, R + N:])  # (B, N, L_k)
            deltas.append(xp.einsum("brl,dr->bdl", dts[k], w["w_dt"][k]))  # (B, D, L_k)
            xs.append(xs_k)
        one_call = len({q.size for q in perms}) == 1
        if one_call:  # VMamba: one scan over K·D channels with K groups of B and C
            y = self.scan_fn(xp.concatenate(xs, axis=1), xp.concatenate(deltas, axis=1),
                             w["A"], xp.stack(Bs, axis=1), xp.stack(Cs, axis=1), D=w["D"],
                             z=None, delta_bias=w["b_dt"], delta_softplus=True)  # (B, K·D, L)
            y = xp.asarray(y, dtype=np.float64)
            ys = [y[:, k * D:(k + 1) * D] for k in range(K)]  # K × (B, D, L)
        else:  # sequences of different lengths: one scan per direction, its slice of parameters
            ys = []
            for k in range(K):
                sl = slice(k * D, (k + 1) * D)
                ys.append(xp.asarray(self.scan_fn(
                    xs[k], deltas[k], w["A"][sl], Bs[k], Cs[k], D=w["D"][sl], z=None,
                    delta_bias=w["b_dt"][sl], delta_softplus=True), dtype=np.float64))
        y_grid = xp.zeros((Bsz, H, W, D))  # (B, H, W, D)
        for k in range(K):
            y_grid += from_sequence(ys[k].transpose(0, 2, 1), perms[k], H, W)  # scatter back
        if self.reduce == "mean":
            y_grid = y_grid / count
        cache = {"perms": perms, "count": count, "xs": xs, "dts": dts, "deltas": deltas,
                 "Bs": Bs, "Cs": Cs, "one_call": one_call}
        return y_grid, cache

    def _core_backward(self, dy_grid, cache, w):
        """Reverse of :meth:`_core_forward`: returns dx_act (B, H, W, D) and the core's grads."""
        Bsz, H, W, D = dy_grid.shape
        K = self.n_directions
        xp = array_module(dy_grid)
        perms, xs = cache["perms"], cache["xs"]
        if self.reduce == "mean":
            dy_grid = dy_grid / cache["count"]
        dys = [to_sequence(dy_grid, perms[k]).transpose(0, 2, 1) for k in range(K)]  # (B, D, L_k)
        if cache["one_call"]:
            s = self.scan_backward_fn(
                xp.concatenate(dys, axis=1), xp.concatenate(xs, axis=1),
                xp.concatenate(cache["deltas"], axis=1), w["A"], xp.stack(cache["Bs"], axis=1),
                xp.stack(cache["Cs"], axis=1), D=w["D"], z=None, delta_bias=w["b_dt"],
                delta_softplus=True)
            s = {key: (None if v is None else xp.asarray(v, dtype=np.float64))
                 for key, v in s.items()}
            dA, dDs, dbias = s["A"], s["D"], s["delta_bias"]
            du = [s["u"][:, k * D:(k + 1) * D] for k in range(K)]  # K × (B, D, L)
            ddelta = [s["delta"][:, k * D:(k + 1) * D] for k in range(K)]
            dB = [s["B"][:, k] for k in range(K)]  # K × (B, N, L)
            dC = [s["C"][:, k] for k in range(K)]
        else:
            dA, dDs, dbias = xp.zeros_like(w["A"]), xp.zeros_like(w["D"]), xp.zeros_like(w["D"])
            du, ddelta, dB, dC = [], [], [], []
            for k in range(K):
                sl = slice(k * D, (k + 1) * D)
                s = self.scan_backward_fn(dys[k], xs[k], cache["deltas"][k], w["A"][sl],
                                          cache["Bs"][k], cache["Cs"][k], D=w["D"][sl], z=None,
                                          delta_bias=w["b_dt"][sl], delta_softplus=True)
                s = {key: (None if v is None else xp.asarray(v, dtype=np.float64))
                     for key, v in s.items()}
                dA[sl], dDs[sl], dbias[sl] = s["A"], s["D"], s["delta_bias"]
                du.append(s["u"])
                ddelta.append(s["delta"])
                dB.append(s["B"])
                dC.append(s["C"])
        g = {"A_logs": dA * w["A"],  # A = -exp(A_logs)
             "Ds": dDs, "dt_projs_bias": dbias.reshape(K, D),
             "x_proj_weight": xp.zeros_like(w["w_x"]), "dt_projs_weight": xp.zeros_like(w["w_dt"])}
        dx_act = xp.zeros((Bsz, H, W, D))  # (B, H, W, D)
        for k in range(K):
            # delta_k = dt_projs_weight[k] @ dts_k
            g["dt_projs_weight"][k] = xp.einsum("bdl,brl->dr", ddelta[k], cache["dts"][k])
            d_dts = xp.einsum("bdl,dr->brl", ddelta[k], w["w_dt"][k])  # (B, R, L_k)
            # (dts, B, C) = x_proj_weight[k] @ xs_k
            d_xdbl = xp.concatenate([d_dts, dB[k], dC[k]], axis=1)  # (B, R + 2N, L_k)
            g["x_proj_weight"][k] = xp.einsum("bcl,bdl->cd", d_xdbl, xs[k])
            dxs = du[k] + xp.einsum("bcl,cd->bdl", d_xdbl, w["w_x"][k])  # (B, D, L_k)
            dx_act += from_sequence(dxs.transpose(0, 2, 1), perms[k], H, W)  # adjoint of gather
        return dx_act, g

    # ------------------------------------------------------------------ forward / backward
    def forward(self, x, return_cache=False):
        """Run SS2D on an image.

        Parameters
        ----------
        x : array_like, shape (B, H, W, d_model)
            Any H, W (non-square included).
        return_cache : bool, default False

        Returns
        -------
        out : ndarray, shape (B, H, W, d_model), in ``x``'s dtype.
        cache : dict, only with ``return_cache=True``.

        Raises
        ------
        ValueError
            ``x`` not (B, H, W, d_model), or not finite.
        """
        c = self.config
        x = _check_input(x, "x", 4, c.d_model)
        u = x.astype(np.float64)
        D = c.d_inner
        xz = linear(u, self._w("in_proj.weight"), self._w("in_proj.bias"))  # (B, H, W, 2D)
        xc, z = xz[..., :D], xz[..., D:]  # (B, H, W, D) each
        x_conv = depthwise_conv2d(xc, self._w("conv2d.weight")[:, 0],
                                  self._w("conv2d.bias"))  # (B, H, W, D)
        x_act = silu(x_conv)  # (B, H, W, D)
        y, core = self._core_forward(x_act, self._core_weights())  # (B, H, W, D)
        y_norm = layer_norm(y, self._w("out_norm.weight"), self._w("out_norm.bias"), self.eps)
        gate = silu(z)  # (B, H, W, D)
        y_gated = y_norm * gate
        out = linear(y_gated, self._w("out_proj.weight"), self._w("out_proj.bias"))  # (B, H, W, C)
        cache = {"u": u, "xc": xc, "z": z, "x_conv": x_conv, "x_act": x_act, "y": y,
                 "y_norm": y_norm, "gate": gate, "y_gated": y_gated, "core": core}
        out = out.astype(x.dtype)
        return (out, cache) if return_cache else out

    def backward(self, dout, cache):
        """Gradients: ``(dx (B, H, W, d_model), grads by VMamba's state-dict names)``.

        Notes
        -----
        ``out_proj`` -> gate (``d y_norm = d y_gated * silu(z)``, ``dz = d y_gated *
        y_norm * silu'(z)``) -> LayerNorm -> the directional core (gather the
        gradient in each direction, the grouped scan's backward, the two
        einsum projections, scatter back) -> SiLU -> depthwise conv -> ``in_proj``.

        Examples
        --------
        >>> import numpy as np
        >>> ss2d = SS2D(d_model=4, d_state=2)
        >>> out, cache = ss2d.forward(np.ones((1, 2, 3, 4)), return_cache=True)
        >>> dx, g = ss2d.backward(np.ones_like(out), cache)
        >>> dx.shape, g["x_proj_weight"].shape, g["A_logs"].shape
        ((1, 2, 3, 4), (4, 5, 8), (32, 2))
        """
        cache = _check_cache(cache, "SS2D")
        dout = _check_dout(dout, cache["u"].shape)
        g = {}
        dy_gated, g["out_proj.weight"], g["out_proj.bias"] = linear_backward(
            dout.astype(np.float64), cache["y_gated"], self._w("out_proj.weight"),
            self._w("out_proj.bias"))  # (B, H, W, D)
        dy_norm = dy_gated * cache["gate"]
        dz = silu_backward(dy_gated * cache["y_norm"], cache["z"])  # (B, H, W, D)
        dy, g["out_norm.weight"], g["out_norm.bias"] = layer_norm_backward(
            dy_norm, cache["y"], self._w("out_norm.weight"), self._w("out_norm.bias"), self.eps)
        dx_act, gc = self._core_backward(dy, cache["core"], self._core_weights())
        g.update(gc)
        dx_conv = silu_backward(dx_act, cache["x_conv"])  # (B, H, W, D)
        dxc, dw_conv, g["conv2d.bias"] = depthwise_conv2d_backward(
            dx_conv, cache["xc"], self._w("conv2d.weight")[:, 0], self._w("conv2d.bias"))
        g["conv2d.weight"] = dw_conv[:, None]  # (D, 1, k, k)
        dxz = array_module(dxc).concatenate([dxc, dz], axis=-1)  # (B, H, W, 2D)
        du, g["in_proj.weight"], g["in_proj.bias"] = linear_backward(
            dxz, cache["u"], self._w("in_proj.weight"), self._w("in_proj.bias"))
        return du.astype(dout.dtype), self._grads_out(g)


def _with_scheme(kwargs, scheme, options):
    """SS2D's keyword arguments with ``directions`` defaulting to ``scheme``, built with ``options``.

    The options apply only when the scheme is the one used (a caller's own
    ``directions`` or ``direction_options`` are left as given).
    """
    kwargs.setdefault("directions", scheme)
    if kwargs["directions"] == scheme:
        kwargs.setdefault("direction_options", options)
    return kwargs


class LocalSS2D(SS2D):
    """SS2D over LocalMamba's windowed scans (the ``"localmamba"`` scheme).

    The four directions are local windows of side ``window`` read row-first and
    column-first, and both reversed (``ssm_ref.vision.SCHEMES["localmamba"]``);
    everything else is :class:`SS2D`.  Pass ``directions=[...]`` instead to mix
    local and global scans, as LocalMamba's searched layers do, e.g.
    ``["raster", "column_reversed", ("local", {"window": 2}), ("local_column",
    {"window": 2, "reverse": True})]``.

    Parameters
    ----------
    d_model : int
    window : int, default 2
        Window side (LocalMamba searches 2 and 7).
    **kwargs
        As :class:`SS2D` (not ``directions`` unless you mean to replace them).

    Notes
    -----
    LocalMamba's block (``MultiScanVSSM``) also re-weights the directions with
    a small channel/spatial attention before summing them; that module is not
    part of this class (the directions are summed, as in VMamba).

    References
    ----------
    Huang et al. 2024, "LocalMamba: Visual State Space Model with Windowed
    Selective Scan", arXiv:2403.09338.

    Examples
    --------
    >>> import numpy as np
    >>> blk = LocalSS2D(d_model=4, d_state=2, window=2)
    >>> blk(np.zeros((1, 4, 4, 4))).shape, blk.n_directions
    ((1, 4, 4, 4), 4)
    """

    def __init__(self, d_model, *, window=2, **kwargs):
        super().__init__(d_model, **_with_scheme(kwargs, "localmamba", {"window": window}))


class ES2D(SS2D):
    """EfficientVMamba's efficient 2-D scan: SS2D over the step² dilated sub-grids.

    The image is split into ``step**2`` atrous sub-grids (offsets (a, b), every
    ``step``-th row and column; ``ssm_ref.vision.atrous_subgrids``), each
    sub-grid is one direction with its own x_proj, dt_proj, A and D, and the
    outputs are put back in place: the sub-grids partition the image, so the
    merge has no overlap.  Each scan is ``step**2`` times shorter than a full
    cross-scan direction, which is where the saving comes from.

    Parameters
    ----------
    d_model : int
    step : int, default 2
    **kwargs
        As :class:`SS2D`.

    Notes
    -----
    On grids whose sides are not multiples of ``step`` the sub-grids differ in
    length and are scanned one call each (EfficientVMamba pads the map
    instead); on grids smaller than ``step`` some sub-grids are empty and the
    number of directions no longer matches the parameters, which raises.

    References
    ----------
    Pei et al. 2024, "EfficientVMamba: Atrous Selective Scan for Light Weight
    Visual Mamba", arXiv:2403.09977.

    Examples
    --------
    >>> import numpy as np
    >>> es2d = ES2D(d_model=4, d_state=2)
    >>> es2d(np.zeros((1, 4, 6, 4))).shape, es2d.n_directions
    ((1, 4, 6, 4), 4)
    """

    def __init__(self, d_model, *, step=2, **kwargs):
        super().__init__(d_model, **_with_scheme(kwargs, "es2d", {"step": step}))


class VSSBlock(_PreNormBlock):
    """VMamba's VSS block (v0): ``x + SS2D(LayerNorm(x))`` on (B, H, W, C) images.

    Parameters
    ----------
    d_model : int
    eps : float, default 1e-6
        ``ln_1`` epsilon (VMamba's ``partial(nn.LayerNorm, eps=1e-6)``).
    seed, dtype, scan_fn, scan_backward_fn
    mixer_cls : type, default SS2D
        The 2-D mixer (:class:`SS2D`, :class:`LocalSS2D`, :class:`ES2D`).
    **mixer_kwargs
        Passed to the mixer (``d_state``, ``directions``, ...).

    Attributes
    ----------
    self_attention : SS2D
        The mixer, under VMamba's attribute name.
    params : dict
        ``ln_1.weight``, ``ln_1.bias``; the mixer's under ``self_attention.``
        in :meth:`state_dict`.

    Notes
    -----
    Implements ``eq-vss-block``; drop-path is left out.

    References
    ----------
    Liu et al. 2024, VMamba, arXiv:2401.10166 (``VSSBlock``).

    Examples
    --------
    >>> import numpy as np
    >>> blk = VSSBlock(d_model=4, d_state=2)
    >>> blk(np.zeros((2, 3, 4, 4))).shape
    (2, 3, 4, 4)
    >>> out, cache = blk.forward(np.ones((1, 2, 2, 4)), return_cache=True)
    >>> sorted(blk.backward(np.ones_like(out), cache)[1])[:3]
    ['ln_1.bias', 'ln_1.weight', 'self_attention.A_logs']
    """

    _mixer_name, _norm_name, _x_ndim, norm = "self_attention", "ln_1", 4, "layer"

    def __init__(self, d_model, *, eps=1e-6, seed=0, dtype=np.float64, scan_fn=None,
                 scan_backward_fn=None, mixer_cls=SS2D, **mixer_kwargs):
        self.eps = check_positive_scalar(eps, "eps")
        self.self_attention = mixer_cls(d_model, seed=seed, dtype=dtype, scan_fn=scan_fn,
                                        scan_backward_fn=scan_backward_fn, **mixer_kwargs)
        C = self.self_attention.config.d_model
        self.params = {"ln_1.weight": np.ones(C, dtype=dtype),
                       "ln_1.bias": np.zeros(C, dtype=dtype)}

    @classmethod
    def from_state_dict(cls, state_dict, *, prefix="", eps=1e-6, scan_fn=None,
                        scan_backward_fn=None, **mixer_kwargs):
        """Build from VMamba's ``VSSBlock`` names: ``ln_1.*`` and ``self_attention.*``.

        Examples
        --------
        >>> sd = VSSBlock(d_model=4, d_state=2).state_dict()
        >>> VSSBlock.from_state_dict(sd).self_attention.config.d_state
        2
        """
        own = [prefix + "ln_1.weight", prefix + "ln_1.bias"]
        if not hasattr(state_dict, "keys") or any(k not in state_dict for k in own):
            raise KeyError(f"state_dict (prefix {prefix!r}) lacks 'ln_1.weight' / 'ln_1.bias'")
        obj = cls.__new__(cls)
        obj.eps = check_positive_scalar(eps, "eps")
        obj.self_attention = SS2D.from_state_dict(
            {k: v for k, v in state_dict.items() if k not in own},
            prefix=prefix + "self_attention.", scan_fn=scan_fn,
            scan_backward_fn=scan_backward_fn, **mixer_kwargs)
        C = obj.self_attention.config.d_model
        obj.params = {}
        for k in ("ln_1.weight", "ln_1.bias"):
            a = as_array(state_dict[prefix + k], f"state_dict[{k!r}]", allow_complex=False)
            obj.params[k] = check_shape(a, f"state_dict[{k!r}]", (C,)).copy()
        return obj


# =========================================================================== PlainMamba
#: Codes of the step that leads to a token (PlainMamba's order): start, right, left, up, down.
DIRECTION_CODES = {"start": 0, "right": 1, "left": 2, "up": 3, "down": 4}
_MOVES = {(0, 1): 1, (0, -1): 2, (-1, 0): 3, (1, 0): 4}


def _direction_codes(perm, W):
    """For each sequence position, the code of the move from the previous token (0 at t = 0)."""
    codes = np.zeros(perm.size, dtype=np.int64)
    for t in range(1, perm.size):
        (i0, j0), (i1, j1) = divmod(int(perm[t - 1]), W), divmod(int(perm[t]), W)
        move = (i1 - i0, j1 - j0)
        if move not in _MOVES:
            raise ValueError(
                f"direction-aware B needs a continuous scan order (each token a 4-neighbour "
                f"of the previous one), but step {t} jumps from cell ({i0}, {j0}) to ({i1}, {j1})")
        codes[t] = _MOVES[move]
    return codes


_PLAIN_KEYS = ("A_log", "D", "direction_Bs", "in_proj.weight", "in_proj.bias", "conv2d.weight",
               "conv2d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
               "out_proj.weight", "out_proj.bias")
_PLAIN_OPTIONAL = ("in_proj.bias", "conv2d.bias", "out_proj.bias")


class PlainMambaMixer(_Module):
    """PlainMamba's 2-D mixer: four snake scans sharing one set of SSM parameters.

    The data path (book equation ``eq-plainmamba``)::

        xz    = in_proj(u)                          (B, H, W, 2D) -> x, z
        x     = silu(depthwise_conv2d_kxk(x))       (B, H, W, D)     (k = 7)
        dt, B, C = split(x_proj(x))                 per token, computed once
        delta = dt_proj.weight @ dt                 (B, H, W, D)
        for each snake k (row, column, and both reversed):
            the tokens' x, delta, B, C read in snake order, B_t += direction_Bs[c_t]
            y_k = selective_scan(...; A, D, dt_proj.bias, softplus)   shared parameters
        y     = sum_k scatter(y_k)                  (B, H, W, D)
        out   = out_proj(y * silu(z))               (B, H, W, C)

    where ``c_t`` is the code of the step that reached token t (0 start,
    1 right, 2 left, 3 up, 4 down; :data:`DIRECTION_CODES`).  The learned
    ``direction_Bs`` (5, N) is PlainMamba's "direction-aware updating": since
    the parameters are shared, this is what tells the scan which way it moves.
    The four sequences run as one grouped scan over 4·D channels.

    Parameters
    ----------
    d_model : int
    d_state : int, default 16
    d_conv : int, default 7
        Side of the depthwise convolution (PlainMamba's ``conv_size``, odd).
    expand, dt_rank, dt_min, dt_max, dt_init, dt_scale, dt_init_floor, conv_bias, bias
        As in :class:`ssm_ref.MambaConfig`.
    directions : str or sequence, default ``"plainmamba"``
        As in :class:`SS2D`; every order must be continuous (4-neighbour steps)
        and cover the grid.
    seed, dtype, scan_fn, scan_backward_fn
        As in :class:`SS2D`.

    Attributes
    ----------
    params : dict
        PlainMamba's names: ``in_proj.weight``, ``conv2d.weight`` (D, 1, k, k),
        ``conv2d.bias``, ``x_proj.weight``, ``dt_proj.weight``, ``dt_proj.bias``,
        ``A_log``, ``D``, ``out_proj.weight``, ``direction_Bs`` (5, N).

    Notes
    -----
    What is implemented is the paper's description (section 3.2): each token's
    x, delta, B and C travel together along the snake.  The released code
    (``ChenhongyiYang/PlainMamba``, ``plain_mamba_layer.py``) differs in two
    ways, which this class does not copy: it permutes only x into snake order
    while delta, B and C stay in row-major order, and it adds ``dt_proj.bias``
    twice (once in ``dt_proj`` and again as the scan's ``delta_bias``).  So
    weights trained with that code load by name but do not give the same
    numbers.  Initialization: Mamba's (``ssm_ref.mamba_init``), the conv
    PyTorch's default (±1/k), ``direction_Bs`` normal with std 0.02 (the
    original's truncated normal truncates at ±2, never reached).

    References
    ----------
    Yang et al. 2024, "PlainMamba: Improving Non-Hierarchical Mamba in Visual
    Recognition", arXiv:2403.17695, section 3.2 (continuous 2D scanning,
    direction-aware updating).

    Examples
    --------
    >>> import numpy as np
    >>> m = PlainMambaMixer(d_model=4, d_state=2, d_conv=3)
    >>> m(np.zeros((1, 3, 4, 4))).shape, m.params["direction_Bs"].shape
    ((1, 3, 4, 4), (5, 2))
    """

    def __init__(self, d_model, d_state=16, d_conv=7, expand=2, dt_rank="auto",
                 dt_min=1e-3, dt_max=1e-1, dt_init="random", dt_scale=1.0,
                 dt_init_floor=1e-4, conv_bias=True, bias=False, *, directions="plainmamba",
                 direction_options=None, seed=0, dtype=np.float64, scan_fn=None,
                 scan_backward_fn=None):
        self.config = MambaConfig(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max,
                                  dt_init, dt_scale, dt_init_floor, conv_bias, bias)
        self._build, _, self.directions = _resolve_directions(directions, direction_options)
        rng = _rng(seed)
        c = self.config
        D, k = c.d_inner, c.d_conv
        p = dict(mamba_init(c, seed=rng))
        del p["conv1d.weight"]
        p.pop("conv1d.bias", None)
        bound = 1.0 / k  # PyTorch's Conv2d default, fan_in = k·k
        p["conv2d.weight"] = rng.uniform(-bound, bound, (D, 1, k, k))
        if conv_bias:
            p["conv2d.bias"] = rng.uniform(-bound, bound, (D,))
        p["direction_Bs"] = 0.02 * rng.standard_normal((len(DIRECTION_CODES), c.d_state))
        self.params = {key: p[key].astype(dtype) for key in _PLAIN_KEYS if key in p}
        self._set_backends(scan_fn, scan_backward_fn)

    @classmethod
    def from_state_dict(cls, state_dict, *, prefix="", directions="plainmamba",
                        direction_options=None, scan_fn=None, scan_backward_fn=None):
        """Build from PlainMamba's ``PlainMamba2D`` names (see the class Notes on the numbers).

        Raises
        ------
        KeyError
            Missing or unknown names.
        ValueError
            A shape that does not match the sizes inferred from ``in_proj.weight``,
            ``A_log``, ``dt_proj.weight`` and ``conv2d.weight``.

        Examples
        --------
        >>> sd = PlainMambaMixer(d_model=4, d_state=2, d_conv=3).state_dict()
        >>> PlainMambaMixer.from_state_dict(sd).config.d_conv
        3
        """
        required = [k for k in _PLAIN_KEYS if k not in _PLAIN_OPTIONAL]
        arrs = _read_state_dict(state_dict, prefix, required, _PLAIN_OPTIONAL,
                                "PlainMamba's PlainMamba2D")
        _check_pair(arrs, "in_proj.bias", "out_proj.bias")
        _check_ndim(arrs, "in_proj.weight", 2, "(2 * d_inner, d_model)")
        _check_ndim(arrs, "A_log", 2, "(d_inner, d_state)")
        _check_ndim(arrs, "dt_proj.weight", 2, "(d_inner, dt_rank)")
        _check_ndim(arrs, "conv2d.weight", 4, "(d_inner, 1, k, k)")
        C, D = _in_proj_sizes(arrs)
        N, R = arrs["A_log"].shape[1], arrs["dt_proj.weight"].shape[1]
        k = arrs["conv2d.weight"].shape[2]
        expected = {"A_log": (D, N), "D": (D,), "direction_Bs": (len(DIRECTION_CODES), N),
                    "in_proj.weight": (2 * D, C), "in_proj.bias": (2 * D,),
                    "conv2d.weight": (D, 1, k, k), "conv2d.bias": (D,),
                    "x_proj.weight": (R + 2 * N, D), "dt_proj.weight": (D, R),
                    "dt_proj.bias": (D,), "out_proj.weight": (C, D), "out_proj.bias": (C,)}
        _check_expected(arrs, expected, f"d_model={C}, d_inner={D}, d_state={N}, dt_rank={R}, "
                                        f"conv {k}x{k}")
        obj = cls.__new__(cls)
        obj.config = MambaConfig(d_model=C, d_state=N, d_conv=k, expand=D / C, dt_rank=R,
                                 conv_bias="conv2d.bias" in arrs, bias="in_proj.bias" in arrs)
        obj._build, _, obj.directions = _resolve_directions(directions, direction_options)
        obj.params = {key: arrs[key] for key in _PLAIN_KEYS if key in arrs}
        obj._set_backends(scan_fn, scan_backward_fn)
        return obj

    def _orders(self, H, W):
        perms = [np.asarray(q, dtype=np.int64) for q in self._build(H, W)]
        for q in perms:
            if q.size != H * W:
                raise ValueError(f"directions {self.directions!r} give a sequence of "
                                 f"{q.size} tokens on a {H}x{W} grid; PlainMamba needs full "
                                 "scan orders")
        return perms, [_direction_codes(q, W) for q in perms]

    def forward(self, x, return_cache=False):
        """Run the mixer on (B, H, W, d_model); output in x's dtype (see the class docstring)."""
        c = self.config
        x = _check_input(x, "x", 4, c.d_model)
        u = x.astype(np.float64)
        Bsz, H, W, _ = u.shape
        D, N, R = c.d_inner, c.d_state, c.dt_rank
        perms, codes = self._orders(H, W)
        K = len(perms)
        xp = array_module(u)
        xz = linear(u, self._w("in_proj.weight"), self._w("in_proj.bias"))  # (B, H, W, 2D)
        xc, z = xz[..., :D], xz[..., D:]
        x_conv = depthwise_conv2d(xc, self._w("conv2d.weight")[:, 0], self._w("conv2d.bias"))
        x_act = silu(x_conv)  # (B, H, W, D)
        x_dbl = linear(x_act, self._w("x_proj.weight"))  # (B, H, W, R + 2N), once per token
        dt_low = x_dbl[..., :R]  # (B, H, W, R)
        Bt, Ct = x_dbl[..., R:R + N], x_dbl[..., R + N:]  # (B, H, W, N) each
        delta = linear(dt_low, self._w("dt_proj.weight"))  # (B, H, W, D); bias goes to the scan
        dirB = self._w("direction_Bs")  # (5, N)

        def seq(t, perm):  # (B, H, W, F) -> (B, F, L) in scan order
            return to_sequence(t, perm).transpose(0, 2, 1)

        us = xp.concatenate([seq(x_act, q) for q in perms], axis=1)  # (B, K·D, L)
        ds = xp.concatenate([seq(delta, q) for q in perms], axis=1)  # (B, K·D, L)
        codes_xp = [on_module_cached(cd, xp) for cd in codes]  # device copies made once
        Bs = xp.stack([seq(Bt, q) + dirB[cd].T  # direction-aware B: (B, N, L) + (N, L)
                       for q, cd in zip(perms, codes_xp)], axis=1)  # (B, K, N, L)
        Cs = xp.stack([seq(Ct, q) for q in perms], axis=1)  # (B, K, N, L)
        A = -xp.exp(self._w("A_log"))  # (D, N)
        shared = {"A": xp.tile(A, (K, 1)), "D": xp.tile(self._w("D"), K),
                  "b": xp.tile(self._w("dt_proj.bias"), K)}  # one set, repeated for K groups
        y_all = xp.asarray(self.scan_fn(us, ds, shared["A"], Bs, Cs, D=shared["D"], z=None,
                                        delta_bias=shared["b"], delta_softplus=True),
                           dtype=np.float64)  # (B, K·D, L)
        y = xp.zeros((Bsz, H, W, D))  # (B, H, W, D)
        for k in range(K):
            y += from_sequence(y_all[:, k * D:(k + 1) * D].transpose(0, 2, 1), perms[k], H, W)
        gate = silu(z)
        out = linear(y * gate, self._w("out_proj.weight"), self._w("out_proj.bias"))
        cache = {"u": u, "xc": xc, "z": z, "x_conv": x_conv, "x_act": x_act, "dt_low": dt_low,
                 "perms": perms, "codes": codes, "us": us, "ds": ds, "Bs": Bs, "Cs": Cs,
                 "shared": shared, "y": y, "gate": gate}
        out = out.astype(x.dtype)
        return (out, cache) if return_cache else out

    def backward(self, dout, cache):
        """Gradients: ``(dx (B, H, W, d_model), grads by PlainMamba's names)``.

        Examples
        --------
        >>> import numpy as np
        >>> m = PlainMambaMixer(d_model=4, d_state=2, d_conv=3)
        >>> out, cache = m.forward(np.ones((1, 2, 2, 4)), return_cache=True)
        >>> m.backward(np.ones_like(out), cache)[1]["direction_Bs"].shape
        (5, 2)
        """
        cache = _check_cache(cache, "PlainMambaMixer")
        dout = _check_dout(dout, cache["u"].shape)
        c = self.config
        D, N, R = c.d_inner, c.d_state, c.dt_rank
        Bsz, H, W, _ = cache["u"].shape
        perms, codes, sh = cache["perms"], cache["codes"], cache["shared"]
        K = len(perms)
        xp = array_module(dout)
        g = {}
        dyg, g["out_proj.weight"], g["out_proj.bias"] = linear_backward(
            dout.astype(np.float64), cache["y"] * cache["gate"], self._w("out_proj.weight"),
            self._w("out_proj.bias"))  # (B, H, W, D)
        dy = dyg * cache["gate"]
        dz = silu_backward(dyg * cache["y"], cache["z"])  # (B, H, W, D)
        dys = xp.concatenate([to_sequence(dy, q).transpose(0, 2, 1) for q in perms],
                             axis=1)  # (B, K·D, L)
        s = self.scan_backward_fn(dys, cache["us"], cache["ds"], sh["A"], cache["Bs"],
                                  cache["Cs"], D=sh["D"], z=None, delta_bias=sh["b"],
                                  delta_softplus=True)
        s = {key: (None if v is None else xp.asarray(v, dtype=np.float64)) for key, v in s.items()}
        A = -xp.exp(self._w("A_log"))
        g["A_log"] = s["A"].reshape(K, D, N).sum(axis=0) * A  # shared: sum the K copies
        g["D"] = s["D"].reshape(K, D).sum(axis=0)
        g["dt_proj.bias"] = s["delta_bias"].reshape(K, D).sum(axis=0)
        g["direction_Bs"] = xp.zeros_like(self._w("direction_Bs"))  # (5, N)
        dx_act = xp.zeros((Bsz, H, W, D))
        ddelta = xp.zeros((Bsz, H, W, D))
        dBt = xp.zeros((Bsz, H, W, N))
        dCt = xp.zeros((Bsz, H, W, N))
        for k in range(K):
            sl = slice(k * D, (k + 1) * D)
            dx_act += from_sequence(s["u"][:, sl].transpose(0, 2, 1), perms[k], H, W)
            ddelta += from_sequence(s["delta"][:, sl].transpose(0, 2, 1), perms[k], H, W)
            dBt += from_sequence(s["B"][:, k].transpose(0, 2, 1), perms[k], H, W)
            dCt += from_sequence(s["C"][:, k].transpose(0, 2, 1), perms[k], H, W)
            # B_t += direction_Bs[code_t], so: for t: g[code_t] += sum_b dB[b, :, t].  One
            # unbuffered scatter-add instead of a loop over t (L tiny kernels on a GPU)
            xp.add.at(g["direction_Bs"], on_module_cached(codes[k], xp),
                      s["B"][:, k].sum(axis=0).T)  # (L,) codes, (L, N) values
        d_dt_low, g["dt_proj.weight"], _ = linear_backward(ddelta, cache["dt_low"],
                                                           self._w("dt_proj.weight"))
        d_xdbl = xp.concatenate([d_dt_low, dBt, dCt], axis=-1)  # (B, H, W, R + 2N)
        dx_tok, g["x_proj.weight"], _ = linear_backward(d_xdbl, cache["x_act"],
                                                        self._w("x_proj.weight"))
        dx_act += dx_tok
        dx_conv = silu_backward(dx_act, cache["x_conv"])
        dxc, dw, g["conv2d.bias"] = depthwise_conv2d_backward(
            dx_conv, cache["xc"], self._w("conv2d.weight")[:, 0], self._w("conv2d.bias"))
        g["conv2d.weight"] = dw[:, None]  # (D, 1, k, k)
        du, g["in_proj.weight"], g["in_proj.bias"] = linear_backward(
            xp.concatenate([dxc, dz], axis=-1), cache["u"], self._w("in_proj.weight"),
            self._w("in_proj.bias"))
        return du.astype(dout.dtype), self._grads_out(g)


class PlainMambaBlock(_PreNormBlock):
    """PlainMamba's layer: ``x + PlainMambaMixer(norm(x))`` on (B, H, W, C) images.

    Parameters
    ----------
    d_model : int
    norm : {"layer", "rms"}, default "layer"
        ``nn.LayerNorm`` (``norm.weight``, ``norm.bias``) or RMSNorm
        (``norm.weight``), PlainMamba's ``use_rms_norm`` switch.
    eps : float, default 1e-5
    seed, dtype, scan_fn, scan_backward_fn
    **mixer_kwargs
        Passed to :class:`PlainMambaMixer`.

    Attributes
    ----------
    mamba : PlainMambaMixer
        The mixer, under PlainMamba's attribute name (state-dict prefix ``mamba.``).

    Notes
    -----
    PlainMamba's optional depthwise conv + BatchNorm + GELU after the residual
    (``with_dwconv``) and drop-path are not included.

    References
    ----------
    Yang et al. 2024, PlainMamba, arXiv:2403.17695 (``PlainMambaLayer``).

    Examples
    --------
    >>> import numpy as np
    >>> blk = PlainMambaBlock(d_model=4, d_state=2, d_conv=3)
    >>> blk(np.zeros((1, 3, 3, 4))).shape
    (1, 3, 3, 4)
    """

    _mixer_name, _norm_name, _x_ndim = "mamba", "norm", 4

    def __init__(self, d_model, *, norm="layer", eps=1e-5, seed=0, dtype=np.float64,
                 scan_fn=None, scan_backward_fn=None, **mixer_kwargs):
        self.norm = check_choice(norm, "norm", ("layer", "rms"))
        self.eps = check_positive_scalar(eps, "eps")
        self.mamba = PlainMambaMixer(d_model, seed=seed, dtype=dtype, scan_fn=scan_fn,
                                     scan_backward_fn=scan_backward_fn, **mixer_kwargs)
        C = self.mamba.config.d_model
        self.params = {"norm.weight": np.ones(C, dtype=dtype)}
        if norm == "layer":
            self.params["norm.bias"] = np.zeros(C, dtype=dtype)
