"""Images to tokens: the patch embedding, the class token and the position embedding.

The first three moves of every vision model here (Vim's, VMamba's, ViT's):
cut the image into p×p patches and embed each linearly, insert a learned
class token into the token sequence, add a learned position embedding.  Each
comes with its hand-derived backward.

Glossary
--------
B         batch size.
H, W      image height and width; C the image channels.
p         patch size (and stride) of the patch embedding.
E         embedding width.
L         number of tokens (patches) in a sequence.

Book chapter: "Images as sequences" and "Vision Mamba blocks" (``eq-patch-embed``);
survey: Rahman et al. 2024, arXiv:2410.03105, Section 3.
"""
from __future__ import annotations

import math

import numpy as np

from .._validation import as_array, check_choice, check_finite, check_positive_int, check_shape
from .._xp import array_module
from ..module import Module, read_state_dict, rng_from
from ..nn import linear, linear_backward

__all__ = [
    "PatchEmbed",
    "cls_token_index",
    "insert_cls_token",
    "insert_cls_token_backward",
    "add_position_embedding",
    "add_position_embedding_backward",
]


class PatchEmbed(Module):
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
        p, the patch side.
    stride : int, optional
        s, the step between patches; ``None`` (the default) means ``s = p``,
        non-overlapping patches.  ``s < p`` gives overlapping patches (Vim's
        ``*_stride8_*`` models): a ((H - p)/s + 1) × ((W - p)/s + 1) grid.
    seed : int or numpy.random.Generator, default 0
        PyTorch's default Conv2d initialization, uniform in ``±1/sqrt(C·p·p)``
        for weight and bias (Vim re-initializes later layers, not this one).
    dtype : numpy dtype, default float64
        dtype the parameters are stored in.
    bias : bool, default True
        Whether the projection has a bias (``proj.bias``).

    Attributes
    ----------
    params : mapping
        ``proj.weight`` (E, C, p, p) in PyTorch's Conv2d layout, ``proj.bias`` (E,).

    Notes
    -----
    Implements ``eq-patch-embed``.  A patch vector is ordered (c, a, b') like the
    flattened Conv2d weight, so ``weight.reshape(E, C·p·p)`` is the matrix.
    With ``s = p`` H and W must be multiples of p; with another stride
    ``H - p`` and ``W - p`` must be multiples of s (no pixel is dropped).

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

    def __init__(self, in_chans, embed_dim, patch_size, *, stride=None, seed=0, dtype=np.float64,
                 bias=True):
        super().__init__()
        C = check_positive_int(in_chans, "in_chans")
        E = check_positive_int(embed_dim, "embed_dim")
        p = check_positive_int(patch_size, "patch_size")
        self.stride = p if stride is None else check_positive_int(stride, "stride")
        rng = rng_from(seed)
        bound = 1.0 / math.sqrt(C * p * p)
        self.add_param("proj.weight", rng.uniform(-bound, bound, (E, C, p, p)).astype(dtype))
        b = rng.uniform(-bound, bound, (E,)).astype(dtype)
        if bias:
            self.add_param("proj.bias", b)

    @classmethod
    def from_state_dict(cls, state_dict, *, prefix="", stride=None):
        """Build from ``{"proj.weight": (E, C, p, p), "proj.bias": (E,)}`` (bias optional).

        ``stride`` is not in the weights: give it when it differs from p.

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
        arrs = read_state_dict(state_dict, prefix, ["proj.weight"], ["proj.bias"], "PatchEmbed")
        w = arrs["proj.weight"]
        if w.ndim != 4 or w.shape[2] != w.shape[3]:
            raise ValueError(f"Parameter state_dict['proj.weight'] has shape {w.shape} but "
                             "should be (E, C, p, p) with square patches")
        if "proj.bias" in arrs:
            check_shape(arrs["proj.bias"], "state_dict['proj.bias']", (w.shape[0],))
        E, C, p, _ = w.shape
        obj = cls(C, E, p, stride=stride, bias="proj.bias" in arrs)
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
        x = self._check_input(x, 4, self.in_chans)
        p, s = self.patch_size, self.stride
        _, H, W, _ = x.shape
        if s == p and (H % p or W % p):
            raise ValueError(f"Parameter x has shape {x.shape} (B, H, W, C): H = {H} and "
                             f"W = {W} must be multiples of patch_size = {p}")
        if s != p and (H < p or W < p or (H - p) % s or (W - p) % s):
            raise ValueError(f"Parameter x has shape {x.shape} (B, H, W, C): H - {p} and "
                             f"W - {p} must be multiples of stride = {s} (patch_size = {p})")
        return x

    def grid(self, H, W):
        """The token grid (h, w) of an H×W image: ``((H - p) // s + 1, (W - p) // s + 1)``."""
        p, s = self.patch_size, self.stride
        return (H - p) // s + 1, (W - p) // s + 1

    def _patches(self, x):
        """(B, H, W, C) -> (B, H/p, W/p, C·p·p), each patch ordered (c, a, b') like the weight."""
        Bsz, H, W, C = x.shape
        p, s = self.patch_size, self.stride
        if s != p:  # overlapping patches: gather rows i·s + a and columns j·s + b'
            gh, gw = self.grid(H, W)
            xp = array_module(x)
            rows = (xp.arange(gh) * s)[:, None] + xp.arange(p)[None, :]  # (gh, p)
            cols = (xp.arange(gw) * s)[:, None] + xp.arange(p)[None, :]  # (gw, p)
            t = x[:, rows[:, :, None, None], cols[None, None, :, :]]  # (B, gh, a, gw, b', C)
            return t.transpose(0, 1, 3, 5, 2, 4).reshape(Bsz, gh, gw, C * p * p)
        t = x.reshape(Bsz, H // p, p, W // p, p, C)  # (B, Hp, a, Wp, b', C)
        t = t.transpose(0, 1, 3, 5, 2, 4)  # (B, Hp, Wp, C, a, b')
        return t.reshape(Bsz, H // p, W // p, C * p * p)  # (B, Hp, Wp, C·p·p)

    def _unpatch(self, dpatches, shape):
        """Adjoint of :meth:`_patches` (for s = p a permutation, so also the inverse)."""
        Bsz, H, W, C = shape
        p, s = self.patch_size, self.stride
        if s != p:  # overlapping patches: each pixel sums the gradients of every patch it is in
            gh, gw = self.grid(H, W)
            t = dpatches.reshape(Bsz, gh, gw, C, p, p)  # (B, gh, gw, C, a, b')
            dx = array_module(dpatches).zeros((Bsz, H, W, C), dtype=dpatches.dtype)
            for a in range(p):
                for b in range(p):
                    dx[:, a:a + s * (gh - 1) + 1:s, b:b + s * (gw - 1) + 1:s] += t[..., a, b]
            return dx
        t = dpatches.reshape(Bsz, H // p, W // p, C, p, p)  # (B, Hp, Wp, C, a, b')
        t = t.transpose(0, 1, 4, 2, 5, 3)  # (B, Hp, a, Wp, b', C)
        return t.reshape(Bsz, H, W, C)  # (B, H, W, C)

    def forward(self, x, return_cache=False):
        """Embed the patches of ``x``.

        Parameters
        ----------
        x : array_like, shape (B, H, W, C)
            H and W multiples of the patch size (see the class notes for a stride).
        return_cache : bool, default False

        Returns
        -------
        y : ndarray, shape (B, h, w, E), in ``x``'s dtype; (h, w) = (H/p, W/p), or
            :meth:`grid` with another stride.
        cache : dict, only with ``return_cache=True``.

        Raises
        ------
        ValueError
            ``x`` not (B, H, W, C) with the right C, H or W not divisible by p,
            or not finite.
        """
        x = self._check(x)
        y, cache = self._forward(x.astype(self.compute_dtype, copy=False))
        y = y.astype(x.dtype)
        return (y, cache) if return_cache else y

    def _forward(self, x):
        """Patch embedding of float64 ``x``, unchecked: ``(y, cache)``."""
        E = self.embed_dim
        # [book:patch-embed]
        patches = self._patches(x)  # (B, Hp, Wp, C·p·p)
        w_mat = self._w("proj.weight").reshape(E, -1)  # (E, C·p·p)
        y = linear(patches, w_mat, self._w("proj.bias"), check=False)  # (B, Hp, Wp, E)
        # [/book:patch-embed]
        return y, {"x_shape": x.shape, "patches": patches}

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
        if not isinstance(cache, dict) or "patches" not in cache:
            raise TypeError("Parameter cache must be the dict from PatchEmbed.forward(x, "
                            "return_cache=True)")
        dout = as_array(dout, "dout", allow_complex=False)
        check_shape(dout, "dout", cache["patches"].shape[:3] + (self.embed_dim,))
        check_finite(dout, "dout")
        dx, g = self._backward(dout.astype(self.compute_dtype, copy=False), cache)
        return dx.astype(dout.dtype), g

    def _backward(self, dout, cache):
        """Gradients on float64 ``dout``, unchecked: ``(dx, grads)``."""
        w = self._w("proj.weight")
        dpatches, dw_mat, db = linear_backward(dout, cache["patches"], w.reshape(w.shape[0], -1),
                                               self._w("proj.bias"), check=False)
        dx = self._unpatch(dpatches, cache["x_shape"])
        return dx, self._grads({"proj.weight": dw_mat.reshape(w.shape), "proj.bias": db})


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


def insert_cls_token(x, cls_token, position="middle", *, check=True):
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
    if check:  # a model's internal call passes check=False (its input is validated)
        x = as_array(x, "x", allow_complex=False, ndim=3)
        check_finite(x, "x")
        cls_token = as_array(cls_token, "cls_token", allow_complex=False, ndim=3)
        check_shape(cls_token, "cls_token", (1, 1, x.shape[2]))
        check_finite(cls_token, "cls_token")
    Bsz, L, E = x.shape
    idx = cls_token_index(L, position)
    xp = array_module(x, cls_token)
    tok = xp.broadcast_to(cls_token.astype(x.dtype, copy=False), (Bsz, 1, E))  # (B, 1, E)
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


def add_position_embedding(x, pos_embed, *, check=True):
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
    if check:  # a model's internal call passes check=False (its input is validated)
        x = as_array(x, "x", allow_complex=False, ndim=3)
        pos_embed = as_array(pos_embed, "pos_embed", allow_complex=False, ndim=3)
        check_shape(pos_embed, "pos_embed", (1,) + x.shape[1:])
        check_finite(x, "x")
        check_finite(pos_embed, "pos_embed")
    return (x.astype(np.float64, copy=False) + pos_embed).astype(x.dtype, copy=False)


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
