"""Content-adaptive and sparse scans: the order (and the tokens) chosen from the image.

The survey *Mamba in Vision* (Rahman et al. 2024, arXiv:2410.03105) names as open
problems "adaptive scanning methods that adjust dynamically to the image
content", "learned patterns optimised during training" (§3.2, §6.2) and
"sparse scanning techniques that only process the most informative patches"
(§6.2).  Every order of :mod:`ssm_ref.vision.scan_orders` is one fixed
permutation for all images; here each image gets its own:

* :func:`patch_saliency` scores every patch from its pixels (local contrast
  or gradient magnitude);
* :func:`saliency_order` sorts the patches by score (an adaptive scan: a
  permutation per image);
* :func:`sparse_order` keeps only the k highest-scored patches (a sparse
  scan: the others never enter the SSM), listed in a fixed scan order or by score;
* :class:`TinyAdaptiveVim` is the tiny Vim with such a per-image order, and a
  *learned* score (a linear function of the patch embedding whose sigmoid gates
  the scanned tokens, so that the score receives a gradient).

Book chapter: "The survey's open problems, as experiments" (label ``open-problems``).

Glossary
--------
B        batch size
H, W     image height and width (pixels); C the image channels
p        patch size; h = H / p, w = W / p the token grid; L = h·w tokens
E        embedding width
k        tokens kept by a sparse scan (``keep``); k = L for a full scan
score    (B, L) one number per patch, raster (row-major) flat index l = i·w + j
idx      (B, k) per-image scan order: ``seq[b, t] = tokens[b, idx[b, t]]``
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import as_array, check_finite, check_positive_int
from .._xp import array_module
from ..nn import sigmoid
from .classifier import Classifier, normal_init
from .configs import VimConfig
from .patch_embed import insert_cls_token, insert_cls_token_backward
from .scan_orders import scan_order
from .vim import VimBlock

__all__ = [
    "SALIENCY",
    "patch_saliency",
    "saliency_order",
    "sparse_order",
    "gather_tokens",
    "scatter_tokens",
    "AdaptiveVimConfig",
    "TinyAdaptiveVim",
]


# ---------------------------------------------------------------------------
# scores and orders
# ---------------------------------------------------------------------------

def _patches(x, patch_size):
    """(B, H, W, C) -> (B, h, w, p·p·C): the pixels of each patch."""
    B, H, W, C = x.shape
    p = patch_size
    h, w = H // p, W // p
    x = x.reshape(B, h, p, w, p, C).transpose(0, 1, 3, 2, 4, 5)  # (B, h, w, p, p, C)
    return x.reshape(B, h, w, p * p * C)


def _contrast(x, p):
    return _patches(x, p).std(axis=-1)  # (B, h, w): the patch's pixel standard deviation


def _gradient(x, p):
    gi = np.zeros_like(x)
    gj = np.zeros_like(x)
    gi[:, :-1] = np.abs(np.diff(x, axis=1))  # |x[i+1, j] - x[i, j]|, 0 on the last row
    gj[:, :, :-1] = np.abs(np.diff(x, axis=2))  # |x[i, j+1] - x[i, j]|, 0 on the last column
    return _patches(gi + gj, p).mean(axis=-1)  # (B, h, w)


#: Saliency scores by name: ``score(x (B, H, W, C), patch_size) -> (B, h, w)``.
SALIENCY = {"contrast": _contrast, "gradient": _gradient}


def patch_saliency(x, patch_size, kind="contrast"):
    """One saliency score per patch, from the pixels alone (no parameters).

    Parameters
    ----------
    x : array_like, shape (B, H, W, C)
        Images, channels last; H and W multiples of ``patch_size``.
    patch_size : int
    kind : {"contrast", "gradient"}
        ``"contrast"``: the standard deviation of the patch's pixels (over its
        p·p pixels and C channels), a local contrast.  ``"gradient"``: the mean
        over the patch of ``|x[i+1, j] - x[i, j]| + |x[i, j+1] - x[i, j]|``
        (forward differences, summed over channels; zero past the last
        row/column), a gradient magnitude.

    Returns
    -------
    score : ndarray of float64, shape (B, h, w)

    Raises
    ------
    ValueError
        ``x`` not 4-D, H or W not a multiple of ``patch_size``, non-finite
        values, an unknown ``kind``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((1, 4, 4, 1)); x[0, :2, 2:, 0] = [[0.0, 1.0], [1.0, 0.0]]
    >>> patch_saliency(x, 2)[0]                  # only the top-right patch has contrast
    array([[0. , 0.5],
           [0. , 0. ]])
    """
    x = as_array(x, "x", allow_complex=False, ndim=4)
    p = check_positive_int(patch_size, "patch_size")
    if x.shape[1] % p or x.shape[2] % p:
        raise ValueError(f"Parameter x has shape {x.shape} (B, H, W, C): H and W must be "
                         f"multiples of patch_size = {p}")
    check_finite(x, "x")
    if kind not in SALIENCY:
        raise ValueError(f"Parameter kind = {kind!r} is not one of {sorted(SALIENCY)}")
    return SALIENCY[kind](x.astype(np.float64), p)


def _scores(score):
    s = as_array(score, "score", allow_complex=False)
    if s.ndim == 3:
        s = s.reshape(s.shape[0], -1)  # (B, h, w) -> (B, L) row-major
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"Parameter score has shape {s.shape} but should be (B, L) or (B, h, w)")
    check_finite(s, "score")
    return s


def saliency_order(score):
    """The adaptive scan: each image's patches sorted by descending score.

    Parameters
    ----------
    score : array_like, shape (B, L) or (B, h, w)
        One score per patch (row-major flat index).

    Returns
    -------
    idx : ndarray of int64, shape (B, L)
        A permutation of ``range(L)`` per image: ``seq[b, t] = tokens[b, idx[b, t]]``.
        Equal scores keep their raster order (a stable sort), so a constant
        score gives the raster scan.

    Examples
    --------
    >>> saliency_order([[0.1, 0.9, 0.5, 0.9]])
    array([[1, 3, 2, 0]])
    """
    s = _scores(score)
    return np.argsort(-s, axis=1, kind="stable").astype(np.int64)


def sparse_order(score, keep, base=None):
    """The sparse scan: only the ``keep`` highest-scored patches, in a given order.

    Parameters
    ----------
    score : array_like, shape (B, L) or (B, h, w)
    keep : int, 1 <= keep <= L
        Number of patches scanned (k); the other L - k skip the SSM.
    base : array_like of int, shape (L,) or "score", optional
        The order the kept patches are listed in: a fixed scan order (a
        permutation of ``range(L)``, default raster ``0..L-1``), or ``"score"``
        for descending score (:func:`saliency_order` cut to k).

    Returns
    -------
    idx : ndarray of int64, shape (B, keep)
        Per image, the indices of the k highest scores (ties: the lower raster
        index first), ordered as ``base``.

    Examples
    --------
    >>> s = [[0.1, 0.9, 0.5, 0.7]]
    >>> sparse_order(s, 2), sparse_order(s, 2, base=[3, 2, 1, 0]), sparse_order(s, 2, "score")
    (array([[1, 3]]), array([[3, 1]]), array([[1, 3]]))
    """
    s = _scores(score)
    B, L = s.shape
    k = check_positive_int(keep, "keep")
    if k > L:
        raise ValueError(f"Parameter keep = {k} exceeds the number of patches L = {L}")
    top = saliency_order(s)[:, :k]  # (B, k) by descending score
    if isinstance(base, str):
        if base != "score":
            raise ValueError(f"Parameter base = {base!r} must be a permutation of range({L}) "
                             "or 'score'")
        return top
    perm = np.arange(L) if base is None else np.asarray(base)
    if perm.shape != (L,) or not np.array_equal(np.sort(perm), np.arange(L)):
        raise ValueError(f"Parameter base has shape {perm.shape} but should be a permutation "
                         f"of range({L})")
    rank = np.empty(L, dtype=np.int64)
    rank[perm] = np.arange(L)  # position of each patch in the base order
    pos = np.sort(rank[top], axis=1)  # (B, k): the kept patches' base positions, in order
    return perm[pos].astype(np.int64)


def gather_tokens(tokens, idx):
    """``seq[b, t] = tokens[b, idx[b, t]]``: (B, L, E), (B, k) -> (B, k, E)."""
    xp = array_module(tokens)
    return xp.take_along_axis(tokens, xp.asarray(idx)[:, :, None], axis=1)  # (B, k, E)


def scatter_tokens(seq, idx, L):
    """The adjoint of :func:`gather_tokens`: (B, k, E) -> (B, L, E), zeros where not scanned.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(6.0).reshape(1, 3, 2)
    >>> scatter_tokens(gather_tokens(t, np.array([[2, 0]])), np.array([[2, 0]]), 3)[0]
    array([[0., 1.],
           [0., 0.],
           [4., 5.]])
    """
    xp = array_module(seq)
    B, k, E = seq.shape
    out = xp.zeros((B, L, E), dtype=seq.dtype)  # (B, L, E)
    xp.put_along_axis(out, xp.asarray(idx)[:, :, None], seq, axis=1)  # indices distinct per row
    return out


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class AdaptiveVimConfig(VimConfig):
    """Configuration of :class:`TinyAdaptiveVim`: :class:`VimConfig` plus the scan's choice.

    Attributes
    ----------
    scan, scan_options
        The fixed scan order (``"raster"``, ``"snake"``, ...), used when
        ``order="fixed"`` (all tokens, or the kept ones in this order).
    order : {"fixed", "score"}
        ``"fixed"``: the ``scan`` order; ``"score"``: each image's patches by
        descending score (an adaptive scan).
    score : {"contrast", "gradient", "learned"}
        What scores the patches: a pixel saliency of :data:`SALIENCY`, or
        ``"learned"``: ``s = tokens @ score.weight + score.bias`` on the patch
        embeddings, and each scanned token is multiplied by ``2 sigmoid(s)`` so
        that the score is trained (zero-initialised: it starts as the raster
        order with gate 1).
    keep : int or None
        Number of patches scanned (a sparse scan); None: all L.
    """

    order: str = "fixed"
    score: str = "contrast"
    keep: object = None

    def __post_init__(self):
        super().__post_init__()
        if self.order not in ("fixed", "score"):
            raise ValueError(f"Parameter order = {self.order!r} must be 'fixed' or 'score'")
        if self.score not in (*SALIENCY, "learned"):
            raise ValueError(f"Parameter score = {self.score!r} must be one of "
                             f"{sorted(SALIENCY) + ['learned']}")
        if self.keep is not None:
            L = self.grid[0] * self.grid[1]
            check_positive_int(self.keep, "keep")
            if self.keep > L:
                raise ValueError(f"Parameter keep = {self.keep} exceeds the L = {L} patches "
                                 f"of the {self.grid} grid")

    @property
    def n_scanned(self):
        """Patch tokens that enter the SSM (k)."""
        return self.grid[0] * self.grid[1] if self.keep is None else self.keep


class TinyAdaptiveVim(Classifier):
    """A tiny Vim whose scan order (and scanned tokens) are chosen per image.

    The data path::

        tok   = patch_embed(x) + pos_embed          (B, h, w, E)  position code per cell
        s     = score(x or tok)                     (B, L)        saliency or learned
        idx   = order(s)                            (B, k)        fixed / by score, top-k
        seq   = tok[b, idx[b]]                      (B, k, E)     the per-image scan
        seq   = seq * 2 sigmoid(s[idx])             (learned score only)
        seq   = insert_cls_token(seq)               (B, k + 1, E) in the middle
        seq   = VimBlock_l(seq)                     bidirectional Vim blocks
        logits = head(RMSNorm(seq)[:, cls])         (B, K)

    Unlike :class:`TinyVim`, the position embedding belongs to the grid cell
    (added before the gather), since sequence slot t holds a different cell in
    every image.  With ``order="fixed"`` and all tokens it is TinyVim with that
    choice.  The order itself is piecewise constant in the input: no gradient
    flows through the sort (or the top-k); a learned score learns through its gate.

    Parameters
    ----------
    config : AdaptiveVimConfig, optional
    seed, dtype, scan_fn, scan_backward_fn
        As :class:`TinyVim`.
    **overrides
        Fields of :class:`AdaptiveVimConfig` (``order="score"``, ``keep=8``, ...).

    Examples
    --------
    >>> import numpy as np
    >>> m = TinyAdaptiveVim(embed_dim=8, d_state=4, order="score", keep=6, seed=0)
    >>> x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 1))
    >>> logits, cache = m.forward(x, return_cache=True)
    >>> logits.shape, cache["idx"].shape             # 6 of the 16 patches scanned
    ((2, 10), (2, 6))
    >>> sorted(m.backward(np.ones_like(logits), cache)) == sorted(m.params)
    True
    """

    config_cls = AdaptiveVimConfig

    def _build(self, rng):
        c = self.config
        h, w = c.grid
        self.perm = scan_order(c.scan, h, w, **c.scan_options)  # (L,) the fixed order
        self._make_patch_embed(rng)
        self.add_param("pos_embed", normal_init(rng, 0.02, (1, h, w, c.embed_dim)))
        self.add_param("cls_token", normal_init(rng, 0.02, (1, 1, c.embed_dim)))
        if c.score == "learned":
            self.add_param("score.weight", np.zeros(c.embed_dim))
            self.add_param("score.bias", np.zeros(1))
        _, self.cls_index = insert_cls_token(np.zeros((1, c.n_scanned, 1)), np.zeros((1, 1, 1)),
                                             c.cls_position)
        self.layers = []
        for i in range(c.depth):
            blk = VimBlock(c.mamba_config(), seed=rng)
            w_out = blk.mixer.params["out_proj.weight"]
            blk.mixer.params["out_proj.weight"] = w_out / np.sqrt(c.depth)  # as TinyVim
            self.layers.append(self.add_module(f"layers.{i}", blk))
        self.add_param("norm_f.weight", np.ones(c.embed_dim))
        self._init_head(rng)

    def scan_indices(self, x):
        """The per-image scan ``idx`` (B, k) for images ``x`` (what the forward scans)."""
        x = self._check_images(x)
        _, cache = self.forward(x, return_cache=True)
        return cache["idx"]

    def _scan_idx(self, score, B):
        c = self.config
        if c.order == "fixed" and c.keep is None:
            return np.tile(self.perm, (B, 1))  # (B, L)
        if c.keep is None:
            return saliency_order(score)  # (B, L)
        return sparse_order(score, c.keep, base="score" if c.order == "score" else self.perm)

    def _forward(self, x):
        c = self.config
        xp = array_module(x)
        cache = {}
        tok, cache["patch"] = self.patch_embed._forward(x)  # (B, h, w, E)
        tok = tok + self._w("pos_embed")  # (B, h, w, E)
        B, h, w, E = tok.shape
        flat = tok.reshape(B, h * w, E)  # (B, L, E) raster
        if c.score == "learned":
            score = flat @ self._w("score.weight") + self._w("score.bias")  # (B, L)
        elif c.order == "fixed" and c.keep is None:
            score = None  # a fixed full scan needs no score
        else:
            score = SALIENCY[c.score](x, c.patch_size).reshape(B, h * w)  # (B, L)
        idx = self._scan_idx(None if score is None else np.asarray(score), B)  # (B, k)
        seq = gather_tokens(flat, idx)  # (B, k, E)
        if c.score == "learned":
            s_sel = xp.take_along_axis(score, xp.asarray(idx), axis=1)  # (B, k)
            gate = 2.0 * sigmoid(s_sel)  # (B, k)
            cache.update(ungated=seq, s_sel=s_sel, gate=gate, flat=flat)
            seq = seq * gate[:, :, None]  # (B, k, E)
        seq, _ = insert_cls_token(seq, self._w("cls_token"), self.cls_index,
                                  check=False)  # (B, k + 1, E)
        cache.update(idx=idx, grid=(h, w))
        cache["layers"] = []
        for blk in self.layers:
            seq, lc = blk._forward(seq)
            cache["layers"].append(lc)
        logits = self._cls_head_forward(seq, cache)  # RMSNorm, class token, head: (B, K)
        patches = xp.concatenate([seq[:, :self.cls_index], seq[:, self.cls_index + 1:]],
                                 axis=1)  # (B, k, E)
        feat = scatter_tokens(patches, idx, h * w).reshape(B, h, w, E)  # zeros where skipped
        return logits, feat, cache

    def _backward(self, dlogits, dfeat, cache):
        c = self.config
        g = {}
        B, _, E = cache["pre_norm"].shape
        h, w = cache["grid"]
        idx = cache["idx"]
        xp = array_module(cache["pre_norm"])
        dseq = self._cls_head_backward(dlogits, cache, g)  # (B, k + 1, E)
        if dfeat is not None:  # the features are the stream before norm_f, on the grid
            dpatch = gather_tokens(dfeat.reshape(B, h * w, E), idx)  # (B, k, E)
            dseq[:, :self.cls_index] += dpatch[:, :self.cls_index]
            dseq[:, self.cls_index + 1:] += dpatch[:, self.cls_index:]
        for i in reversed(range(len(self.layers))):
            dseq, gl = self.layers[i]._backward(dseq, cache["layers"][i])
            g.update({f"layers.{i}.{k}": v for k, v in gl.items()})
        dseq, g["cls_token"] = insert_cls_token_backward(dseq, self.cls_index)  # (B, k, E)
        if c.score == "learned":
            gate = cache["gate"]
            dgate = xp.sum(dseq * cache["ungated"], axis=-1)  # (B, k)
            ds_sel = dgate * gate * (1.0 - 0.5 * gate)  # d(2 sigmoid)/ds = 2 sig (1 - sig)
            dseq = dseq * gate[:, :, None]  # (B, k, E)
            dscore = scatter_tokens(ds_sel[:, :, None], idx, h * w)[:, :, 0]  # (B, L)
            dflat = scatter_tokens(dseq, idx, h * w)  # (B, L, E)
            g["score.weight"] = xp.einsum("bl,ble->e", dscore, cache["flat"])  # (E,)
            g["score.bias"] = xp.sum(dscore, keepdims=True).reshape(1)  # (1,)
            dflat = dflat + dscore[:, :, None] * self._w("score.weight")  # s = flat @ w + b
        else:
            dflat = scatter_tokens(dseq, idx, h * w)  # (B, L, E): zeros for skipped tokens
        dtok = dflat.reshape(B, h, w, E)  # (B, h, w, E)
        g["pos_embed"] = xp.sum(dtok, axis=0, keepdims=True)  # (1, h, w, E)
        dx, gp = self.patch_embed._backward(dtok, cache["patch"])
        g.update({"patch_embed." + k: v for k, v in gp.items()})
        return dx, g
