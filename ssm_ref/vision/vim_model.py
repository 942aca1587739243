"""The full Vision Mamba (Vim) model of ``hustvl/Vim``, reading its official checkpoints.

Glossary
--------
B         batch size.
H, W      image height and width (both ``img_size``); C the image channels.
M         number of patch tokens, ``gh·gw`` with ``gh = (H - patch_size) // stride + 1``.
L         tokens in the sequence, ``M + 1`` with the class token.
D         ``embed_dim``, the token width; E = 2·D the width inside each Mamba path.
K         number of classes.

The eval-mode data path of the official ``VisionMamba`` (``vim/models_mamba.py``;
book section "A real vision Mamba", ``eq-vim-model``), images (B, H, W, C)::

    t      = PatchEmbed(images)                    (B, M, D)   Conv2d(p, stride), row-major
    t      = insert cls_token at M // 2            (B, L, D)   (position 0 without the middle flag)
    x_0    = t + pos_embed                         (B, L, D)
    x_{i+1} = x_i + VimMixer_i(RMSNorm_i(x_i))     i = 0 .. depth-1
    f      = RMSNorm_f(x_depth)[:, cls position]   (B, D)
    logits = head(f)                               (B, K)

The official code writes the residual sum as "add, then norm" (``residual =
residual + hidden; hidden = mixer(norm(residual))``); unrolled over the
layers it is the same sum (see :class:`ssm_ref.vision.VimBlock`).  Every sum
here is computed in float64, which covers ``residual_in_fp32``.
"""
from __future__ import annotations

import math

import numpy as np

from .._validation import (as_array, check_finite, check_nonempty, check_positive_int,
                            check_positive_scalar)
from .._xp import array_module
from ..mamba import MambaConfig
from ..module import rng_from
from ..nn import rms_norm, softplus
from .full_model import FullModel
from .patch_embed import PatchEmbed
from .vim import VimBlock

__all__ = ["VisionMamba", "vim_tiny", "vim_small"]


def _trunc_normal(rng, std, shape):
    """timm's ``trunc_normal_(std=std)``: N(0, std²) cut at ±2 (absolute), redrawn outside."""
    out = std * rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = std * rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out


def _flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Parameter {name} = {value!r} must be True or False")
    return bool(value)


class VisionMamba(FullModel):
    """Vim (Zhu et al. 2024) as the official ``VisionMamba`` builds it, eval mode.

    The constructor takes the official keyword arguments; the state dict uses
    the official names (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
    ``layers.{i}.norm.weight``, ``layers.{i}.mixer.*`` with the bimamba-v2
    ``*_b`` copies, ``norm_f.weight``, ``head.*``), so an official checkpoint
    loads with :meth:`load_state_dict` (strict by name; read the file with
    :func:`ssm_ref.vision.load_checkpoint`).

    Parameters
    ----------
    img_size : int, default 224
        Side of the square input image (the official model asserts it).
    patch_size, stride : int, default 16, 16
        The patch embedding's Conv2d kernel and stride (``stride < patch_size``:
        overlapping patches, the ``*_stride8_*`` models).
    depth : int, default 24
    embed_dim : int, default 192
    d_state : int, default 16
        N of every Mamba path (d_conv 4, expand 2, dt_rank ``ceil(embed_dim / 16)``).
    channels : int, default 3
    num_classes : int, default 1000
    rms_norm : bool, default True
        Only RMSNorm (True, every released Vim model) is implemented.
    residual_in_fp32, fused_add_norm : bool, default True
        Accepted either way: they change only where the official code rounds
        (here every sum is float64).
    final_pool_type : {"mean", "none"}, default "mean"
        Pooling when there is no class token: the mean over tokens, or the
        last token (``"none"``).  Unused with a class token, as officially.
    if_abs_pos_embed : bool, default True
        Learned absolute position embedding ``pos_embed`` (1, L, D).
    if_rope, if_rope_residual : bool, default False
        Rotary embeddings are not implemented: True raises.
    bimamba_type : str, default "v2"
        Only ``"v2"`` (two scans per layer, the released models) is implemented.
    if_cls_token : bool, default True
    if_divide_out : bool, default True
        Average the two directions (False: sum them).
    use_middle_cls_token : bool, default True
        The class token at ``M // 2`` (False: first).
    use_double_cls_token : bool, default False
        Not implemented: True raises.
    norm_epsilon : float, default 1e-5
    drop_rate, drop_path_rate : float, default 0.0, 0.1
        Training-time dropout and drop path; identity in eval, accepted and unused.
    seed : int or numpy.random.Generator, default 0
        Random initialization (the official one: truncated N(0, 0.02) for
        ``cls_token``, ``pos_embed`` and ``head.weight``, zero ``head.bias``,
        :func:`ssm_ref.mamba_init` per direction, ``out_proj.weight`` divided
        by ``sqrt(depth)``); a checkpoint then replaces it.
    dtype : numpy dtype, default float32
        dtype the parameters are stored in (computation is float64).
    scan_fn : callable, optional
        The selective scan (e.g. a backend of :mod:`fast`).

    Raises
    ------
    ValueError
        An unsupported option (named) or a size that is not a positive integer.

    References
    ----------
    Zhu et al. 2024, "Vision Mamba: Efficient Visual Representation Learning
    with Bidirectional State Space Model", arXiv:2401.09417; ``hustvl/Vim``,
    ``vim/models_mamba.py``.

    Examples
    --------
    >>> import numpy as np
    >>> model = VisionMamba(img_size=16, patch_size=8, stride=8, embed_dim=8, depth=2,
    ...                     d_state=4, num_classes=5)
    >>> model(np.zeros((2, 16, 16, 3), dtype=np.float32)).shape
    (2, 5)
    >>> list(model.state_dict())[:4]
    ['cls_token', 'pos_embed', 'patch_embed.proj.weight', 'patch_embed.proj.bias']
    >>> VisionMamba(if_rope=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: Parameter if_rope = True: rotary position embeddings are not implemented ...
    """

    x_ndim = 4

    def __init__(self, img_size=224, patch_size=16, stride=16, depth=24, embed_dim=192,
                 d_state=16, channels=3, num_classes=1000, *, rms_norm=True,
                 residual_in_fp32=True, fused_add_norm=True, final_pool_type="mean",
                 if_abs_pos_embed=True, if_rope=False, if_rope_residual=False,
                 bimamba_type="v2", if_cls_token=True, if_divide_out=True,
                 use_middle_cls_token=True, use_double_cls_token=False, norm_epsilon=1e-5,
                 drop_rate=0.0, drop_path_rate=0.1, seed=0, dtype=np.float32, scan_fn=None):
        super().__init__()
        self.img_size = check_positive_int(img_size, "img_size")
        self.patch_size = check_positive_int(patch_size, "patch_size")
        self.stride = check_positive_int(stride, "stride")
        self.depth = check_positive_int(depth, "depth")
        self.embed_dim = D = check_positive_int(embed_dim, "embed_dim")
        self.d_state = check_positive_int(d_state, "d_state")
        self.channels = check_positive_int(channels, "channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.eps = check_positive_scalar(norm_epsilon, "norm_epsilon")
        for value, name in ((drop_rate, "drop_rate"), (drop_path_rate, "drop_path_rate")):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"Parameter {name} = {value} must lie in [0, 1)")
        flags = {name: _flag(value, name) for name, value in (
            ("rms_norm", rms_norm), ("residual_in_fp32", residual_in_fp32),
            ("fused_add_norm", fused_add_norm), ("if_abs_pos_embed", if_abs_pos_embed),
            ("if_rope", if_rope), ("if_rope_residual", if_rope_residual),
            ("if_cls_token", if_cls_token), ("if_divide_out", if_divide_out),
            ("use_middle_cls_token", use_middle_cls_token),
            ("use_double_cls_token", use_double_cls_token))}
        if not flags["rms_norm"]:
            raise ValueError("Parameter rms_norm = False (LayerNorm blocks) is not implemented; "
                             "every released Vim model uses rms_norm=True")
        for name in ("if_rope", "if_rope_residual"):
            if flags[name]:
                raise ValueError(f"Parameter {name} = True: rotary position embeddings are not "
                                 "implemented (the released Vim models use if_rope=False)")
        if bimamba_type != "v2":
            raise ValueError(f"Parameter bimamba_type = {bimamba_type!r} is not implemented; "
                             "expected 'v2' (the released Vim models)")
        if flags["use_double_cls_token"]:
            raise ValueError("Parameter use_double_cls_token = True (head and tail class tokens) "
                             "is not implemented")
        if final_pool_type not in ("mean", "none"):
            raise ValueError(f"Parameter final_pool_type = {final_pool_type!r} is not "
                             "implemented; expected 'mean' or 'none'")
        self.final_pool_type = final_pool_type
        self.if_cls_token = flags["if_cls_token"]
        self.if_abs_pos_embed = flags["if_abs_pos_embed"]
        self.use_middle_cls_token = flags["use_middle_cls_token"]
        if self.patch_size > self.img_size:
            raise ValueError(f"Parameter patch_size = {patch_size} exceeds img_size = {img_size}")
        self.grid = ((self.img_size - self.patch_size) // self.stride + 1,) * 2
        self.num_patches = M = self.grid[0] * self.grid[1]
        self.cls_position = (M // 2 if self.use_middle_cls_token else 0) if self.if_cls_token \
            else None
        L = M + int(self.if_cls_token)

        rng = rng_from(seed)
        if self.if_cls_token:
            self.add_param("cls_token", _trunc_normal(rng, 0.02, (1, 1, D)).astype(dtype))
        if self.if_abs_pos_embed:
            self.add_param("pos_embed", _trunc_normal(rng, 0.02, (1, L, D)).astype(dtype))
        self.patch_embed = self.add_module("patch_embed", PatchEmbed(
            self.channels, D, self.patch_size, stride=self.stride, seed=rng, dtype=dtype))
        self.add_param("head.weight", _trunc_normal(rng, 0.02, (self.num_classes, D)).astype(dtype))
        self.add_param("head.bias", np.zeros(self.num_classes, dtype=dtype))
        block_config = MambaConfig(d_model=D, d_state=self.d_state, d_conv=4, expand=2,
                                   conv_bias=True, bias=False)
        self.layers = []
        for i in range(self.depth):
            block = VimBlock(block_config, eps=self.eps, seed=rng, dtype=dtype,
                             divide_out=flags["if_divide_out"])
            # the official init rescales the residual branch's output (prenorm residual)
            block.params["mixer.out_proj.weight"] = (
                block.params["mixer.out_proj.weight"] / math.sqrt(self.depth)).astype(dtype)
            self.layers.append(self.add_module(f"layers.{i}", block))
        self.add_param("norm_f.weight", np.ones(D, dtype=dtype))
        self.set_backend(scan_fn)

    def __repr__(self):
        return (f"VisionMamba(img_size={self.img_size}, patch_size={self.patch_size}, "
                f"stride={self.stride}, embed_dim={self.embed_dim}, depth={self.depth}, "
                f"d_state={self.d_state}, num_classes={self.num_classes}, "
                f"params={self.n_params()})")

    # ------------------------------------------------------------------ forward
    def _check_images(self, images):
        x = as_array(images, "images", allow_complex=False, ndim=4)
        want = (self.img_size, self.img_size, self.channels)
        if x.shape[1:] != want:
            raise ValueError(f"Parameter images has shape {x.shape} but should be "
                             f"(B, {want[0]}, {want[1]}, {want[2]}) (B, H, W, C), channels last")
        check_nonempty(x, "images")
        check_finite(x, "images")
        return x

    def _run(self, x, trace=None, selection=None):
        """The forward on float64 images, unchecked; records into ``trace`` (a dict) and
        ``selection`` (a list, one entry per layer) when given.  Returns the features (B, D).

        What :meth:`trace` returns (recorded here), a dict of float64 arrays:
        ``patch_embed`` (B, M, D), ``tokens_in`` (B, L, D), per layer i
        ``layer{i}_residual`` (the residual stream entering the layer's norm),
        ``layer{i}_mixer_in``, ``layer{i}_y_fwd`` and ``layer{i}_y_bwd`` (B, E, L: each
        path's gated scan output before ``out_proj``, the backward one in reversed token
        order as the official code returns it), ``layer{i}_hidden`` (the mixer output), then
        ``norm_f_out``, ``features`` and ``logits``.
        """
        tokens, _ = self.patch_embed._forward(x)  # (B, gh, gw, D)
        Bsz = tokens.shape[0]
        t = tokens.reshape(Bsz, -1, self.embed_dim)  # (B, M, D), row-major
        if trace is not None:
            trace["patch_embed"] = t
        if self.if_cls_token:
            pos = self.cls_position
            xp = array_module(t)
            cls = xp.broadcast_to(self._w("cls_token"), (Bsz, 1, self.embed_dim))
            t = xp.concatenate([t[:, :pos], cls, t[:, pos:]], axis=1)  # (B, L, D)
        if self.if_abs_pos_embed:
            t = t + self._w("pos_embed")
        if trace is not None:
            trace["tokens_in"] = t
        h = t  # the residual stream x_i
        for i, layer in enumerate(self.layers):
            normed = rms_norm(h, layer._w("norm.weight"), layer.eps, check=False)
            out, cache = layer.mixer._forward(normed)  # (B, L, D)
            if trace is not None:
                trace.update({f"layer{i}_residual": h, f"layer{i}_mixer_in": normed,
                              f"layer{i}_y_fwd": cache["y_f"], f"layer{i}_y_bwd": cache["y_b"],
                              f"layer{i}_hidden": out})
            if selection is not None:
                selection.append(self._selection_of(layer.mixer, cache))
            h = h + out
        h = rms_norm(h, self._w("norm_f.weight"), self.eps, check=False)  # (B, L, D)
        if trace is not None:
            trace["norm_f_out"] = h
        if self.if_cls_token:
            feat = h[:, self.cls_position]
        elif self.final_pool_type == "mean":
            feat = h.mean(axis=1)
        else:  # "none": the last token
            feat = h[:, -1]
        if trace is not None:
            trace["features"] = feat
        return feat

    def selection(self, images):
        """What each layer's two selection mechanisms compute for ``images`` (B, H, W, C).

        Returns a list with one dict per layer, ``{"forward": path, "backward":
        path}``; each path holds ``delta`` (B, E, L), the step Δ = softplus(dt_proj(x)
        + bias) its scan uses; ``B`` and ``C`` (B, N, L); ``A`` (E, N) = -exp(A_log);
        ``u`` (B, E, L), the scan's input (after conv1d and SiLU); ``z`` (B, E, L),
        the gate.  The backward path's arrays are in the order it reads the tokens,
        reversed: its index t is token L - 1 - t.  The class token is token
        :attr:`cls_position`.
        """
        x = self._check_images(images)
        out = []
        self._run(x.astype(self.compute_dtype, copy=False), selection=out)
        return out

    @staticmethod
    def _selection_of(mixer, cache):
        paths = {}
        for key, (c, a_log, bias) in {"forward": (cache["f"], "A_log", "dt_proj.bias"),
                                      "backward": (cache["b"], "A_b_log", "dt_proj_b.bias")
                                      }.items():
            xp = array_module(c["delta"])
            paths[key] = {"delta": softplus(c["delta"] + mixer._w(bias)[:, None], check=False),
                          "B": c["Bmat"], "C": c["Cmat"], "A": -xp.exp(mixer._w(a_log)),
                          "u": c["x_act"], "z": c["z"]}
        return paths

    def backward(self, dout, cache):
        """Not provided: the full model is for inference (its blocks have their backward)."""
        raise TypeError("VisionMamba runs inference only; train the tiny models "
                        "(ssm_ref.vision.TinyVim) or its blocks (VimBlock.backward)")


def vim_tiny(**kwargs):
    """Vim-Ti: the kwargs of ``vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2``.

    embed_dim 192, depth 24, patch 16, stride 16, img 224, d_state 16 (about
    7 M parameters); the released checkpoint is ``vim_t_midclstok_76p1acc.pth``
    (Hugging Face ``hustvl/Vim-tiny-midclstok``).  ``kwargs`` override any argument.

    Examples
    --------
    >>> round(vim_tiny().n_params() / 1e6, 2)
    7.15
    """
    return VisionMamba(**{**dict(patch_size=16, stride=16, embed_dim=192, depth=24),
                          **kwargs})


def vim_small(**kwargs):
    """Vim-S: as :func:`vim_tiny` with embed_dim 384 (about 26 M parameters).

    The released checkpoint: ``vim_s_midclstok_80p5acc.pth`` (Hugging Face
    ``hustvl/Vim-small-midclstok``).
    """
    return VisionMamba(**{**dict(patch_size=16, stride=16, embed_dim=384, depth=24),
                          **kwargs})
