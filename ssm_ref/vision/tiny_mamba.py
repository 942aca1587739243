"""The tiny vision-Mamba classifiers: Vim, VMamba (and its LocalMamba, ES2D variants), PlainMamba.

Each is a :class:`ssm_ref.vision.classifier.Classifier`: patches -> blocks ->
norm -> pooled head, with the blocks of :mod:`ssm_ref.vision.vim`,
:mod:`ssm_ref.vision.vmamba` and :mod:`ssm_ref.vision.plainmamba` as
submodules under ``layers.{l}``.

Glossary
--------
B        batch size
H, W     image height and width (pixels); C the image channels
p        patch size; h = H / p, w = W / p the token grid; L = h·w tokens
E        embedding width (``embed_dim``, the blocks' ``d_model``)
N        SSM state size (``d_state``)
K        number of classes (``n_classes``)
perm     a scan order, ``seq[t] = tokens[perm[t]]`` (``ssm_ref.vision.scan_orders``)

Book chapter: "Vision Mamba blocks" (label ``vision-blocks``); survey: Rahman
et al. 2024, arXiv:2410.03105, Section 3 (the pipeline, Fig. 3).
"""
from __future__ import annotations

import math

import numpy as np

from .._xp import array_module
from .classifier import Classifier, normal_init
from .configs import PlainMambaConfig, VimConfig, VMambaConfig
from .patch_embed import (
    add_position_embedding,
    add_position_embedding_backward,
    insert_cls_token,
    insert_cls_token_backward,
)
from .plainmamba import PlainMambaBlock
from .scan_orders import from_sequence, scan_order, to_sequence
from .vim import VimBlock
from .multi import SCHEMES
from .vmamba import SS2D, MultiHeadSS2D, VSSBlock

__all__ = ["TinyVim", "TinyVMamba", "TinyPlainMamba"]


class TinyVim(Classifier):
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
        self.add_param("cls_token", normal_init(rng, 0.02, (1, 1, c.embed_dim)))
        self.add_param("pos_embed", normal_init(rng, 0.02, (1, L + 1, c.embed_dim)))
        _, self.cls_index = insert_cls_token(np.zeros((1, L, 1)), np.zeros((1, 1, 1)),
                                             c.cls_position)
        self.layers = []
        for i in range(c.depth):
            blk = VimBlock(c.mamba_config(), seed=rng)
            w_out = blk.mixer.params["out_proj.weight"]
            blk.mixer.params["out_proj.weight"] = w_out / math.sqrt(c.depth)
            self.layers.append(self.add_module(f"layers.{i}", blk))
        self.add_param("norm_f.weight", np.ones(c.embed_dim))
        self._init_head(rng)

    def _forward(self, x):
        c = self.config
        h, w = c.grid
        cache = {}
        tok, cache["patch"] = self.patch_embed._forward(x)  # (B, h, w, E)
        seq = to_sequence(tok, self.perm, check=False)  # (B, L, E) in scan order
        seq, _ = insert_cls_token(seq, self._w("cls_token"), self.cls_index,
                                  check=False)  # (B, L + 1, E)
        seq = add_position_embedding(seq, self._w("pos_embed"), check=False)  # (B, L + 1, E)
        cache["layers"] = []
        for blk in self.layers:
            seq, lc = blk._forward(seq)
            cache["layers"].append(lc)
        logits = self._cls_head_forward(seq, cache)  # RMSNorm, class token, head: (B, K)
        patches = array_module(seq).concatenate(
            [seq[:, :self.cls_index], seq[:, self.cls_index + 1:]], axis=1)  # (B, L, E) scan order, class token removed
        feat = from_sequence(patches, self.perm, h, w, check=False)  # (B, h, w, E) back on the grid
        return logits, feat, cache

    def _backward(self, dlogits, dfeat, cache):
        g = {}
        dseq = self._cls_head_backward(dlogits, cache, g)  # (B, L + 1, E)
        if dfeat is not None:  # the features are the stream before norm_f
            dpatch = to_sequence(dfeat, self.perm, check=False)  # (B, L, E) in scan order
            dseq[:, :self.cls_index] += dpatch[:, :self.cls_index]
            dseq[:, self.cls_index + 1:] += dpatch[:, self.cls_index:]
        for i in reversed(range(len(self.layers))):
            dseq, gl = self.layers[i]._backward(dseq, cache["layers"][i])
            g.update({f"layers.{i}.{k}": v for k, v in gl.items()})
        dseq, g["pos_embed"] = add_position_embedding_backward(dseq)
        dseq, g["cls_token"] = insert_cls_token_backward(dseq, self.cls_index)  # (B, L, E)
        h, w = self.config.grid
        dtok = from_sequence(dseq, self.perm, h, w,
                             check=False)  # (B, h, w, E): adjoint of the gather
        dx, gp = self.patch_embed._backward(dtok, cache["patch"])
        g.update({"patch_embed." + k: v for k, v in gp.items()})
        return dx, g



class GridClassifier(Classifier):
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
            self.layers.append(self.add_module(f"layers.{i}", blk))
        self.add_param("norm.weight", np.ones(c.embed_dim))
        self.add_param("norm.bias", np.zeros(c.embed_dim))
        self._init_head(rng)

    def _forward(self, x):
        cache = {}
        tok, cache["patch"] = self.patch_embed._forward(x)  # (B, h, w, E)
        cache["layers"] = []
        for blk in self.layers:
            tok, lc = blk._forward(tok)  # (B, h, w, E)
            cache["layers"].append(lc)
        logits = self._pool_head_forward(tok, self.norm_eps, cache)  # (B, K) global average pool
        return logits, tok, cache

    def _backward(self, dlogits, dfeat, cache):
        g = {}
        # the features are the backbone output, before the norm
        dtok = self._pool_head_backward(dlogits, dfeat, cache, self.norm_eps, g)  # (B, h, w, E)
        for i in reversed(range(len(self.layers))):
            dtok, gl = self.layers[i]._backward(dtok, cache["layers"][i])
            g.update({f"layers.{i}.{k}": v for k, v in gl.items()})
        dx, gp = self.patch_embed._backward(dtok, cache["patch"])
        g.update({"patch_embed." + k: v for k, v in gp.items()})
        return dx, g


class TinyVMamba(GridClassifier):
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
        # a multi-head scheme (each order reads its own channels) runs in MultiHeadSS2D
        multi_head = isinstance(directions, str) and SCHEMES[directions].reduce == "concat"
        return VSSBlock(c.mamba_config(), directions=directions, direction_options=options,
                        seed=rng, mixer_cls=MultiHeadSS2D if multi_head else SS2D)


class TinyPlainMamba(GridClassifier):
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
        return PlainMambaBlock(c.mamba_config(), seed=rng)
