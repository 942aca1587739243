"""The full VMamba backbone (VSSM, forward type v0) of ``MzeroMiko/VMamba``, reading its checkpoints.

Glossary
--------
B         batch size.
H, W      image height and width; (h, w) a stage's token grid.
C         a stage's width (``dims[s]``); E = ``ssm_ratio``·C the width inside SS2D.
K         number of classes.

The eval-mode data path of the released v0 classifiers (book section "A real
vision Mamba", ``eq-vmamba-model``), images (B, H, W, 3) channels last::

    x      = LayerNorm(Conv2d_{p×p, stride p}(images))      (B, H/p, W/p, C_0)  patch_embed
    stage s: x = x + SS2D(LayerNorm(x))   (depths[s] VSS blocks, ssm_ref.vision.VSSBlock)
             x = PatchMerging2D(x)        (B, h/2, w/2, 2C)   after every stage but the last
    f      = mean over (h, w) of LayerNorm(x)               (B, C_last)  norm
    logits = head(f)                                        (B, K)

The state dict uses the names of the released v0 checkpoints (the archived
January-2024 code): ``patch_embed.proj.*``, ``patch_embed.norm.*``,
``layers.{s}.blocks.{j}.ln_1.*``, ``layers.{s}.blocks.{j}.self_attention.*``,
``layers.{s}.downsample.{reduction,norm}.*``, ``norm.*``, ``head.*``.  The
current VMamba code's names for the same tensors (``patch_embed.0``,
``.norm``, ``.op``, ``classifier.*``) are accepted by :meth:`VSSM.load_state_dict`
and translated by :func:`vmamba_release_names`.
"""
from __future__ import annotations

import math
import re

import numpy as np

from .._validation import (as_array, check_finite, check_nonempty, check_positive_int,
                            check_positive_scalar)
from .._xp import array_module
from ..mamba import MambaConfig
from ..module import Module, check_state_dict_keys, rng_from
from ..nn import layer_norm, linear
from .full_model import FullModel
from .patch_embed import PatchEmbed
from .vmamba import VSSBlock

__all__ = ["PatchMerging2D", "VSSM", "vmamba_tiny", "vmamba_small", "vmamba_release_names"]


class PatchMerging2D(Module):
    """VMamba's patch merging (v1): 2×2 neighbours concatenated, LayerNorm, Linear(4C, 2C).

    ``x0 = x[:, 0::2, 0::2]``, ``x1 = x[:, 1::2, 0::2]``, ``x2 = x[:, 0::2, 1::2]``,
    ``x3 = x[:, 1::2, 1::2]`` (row offset first), concatenated on the channels in
    that order, then ``norm`` (LayerNorm(4C)) and ``reduction`` (no bias).

    Parameters
    ----------
    dim : int
        C, the input width.
    eps : float, default 1e-5
    seed, dtype
        PyTorch's default Linear initialization; the norm at weight 1, bias 0.

    Attributes
    ----------
    params : mapping
        ``reduction.weight`` (2C, 4C), ``norm.weight`` (4C,), ``norm.bias`` (4C,).

    References
    ----------
    Liu et al. 2024, VMamba, arXiv:2401.10166; ``PatchMerging2D`` in
    ``classification/models/vmamba.py`` (after Swin's patch merging).

    Examples
    --------
    >>> import numpy as np
    >>> pm = PatchMerging2D(3)
    >>> pm(np.ones((1, 4, 6, 3))).shape
    (1, 2, 3, 6)
    """

    x_ndim = 4

    def __init__(self, dim, *, eps=1e-5, seed=0, dtype=np.float64):
        super().__init__()
        C = self.dim = check_positive_int(dim, "dim")
        self.eps = check_positive_scalar(eps, "eps")
        rng = rng_from(seed)
        bound = 1.0 / math.sqrt(4 * C)
        self.add_param("reduction.weight", rng.uniform(-bound, bound, (2 * C, 4 * C)).astype(dtype))
        self.add_param("norm.weight", np.ones(4 * C, dtype=dtype))
        self.add_param("norm.bias", np.zeros(4 * C, dtype=dtype))

    def forward(self, x):
        """Merge (B, h, w, C) into (B, h/2, w/2, 2C), in ``x``'s dtype; h and w must be even."""
        x = self._check_input(x, 4, self.dim)
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"Parameter x has shape {x.shape} (B, h, w, C) but h and w must be "
                             "even (VMamba pads odd sizes in one version and crops in another)")
        return self._forward(x.astype(self.compute_dtype, copy=False))[0].astype(x.dtype)

    def _forward(self, x):
        xp = array_module(x)
        cat = xp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                              x[:, 1::2, 1::2]], axis=-1)  # (B, h/2, w/2, 4C)
        normed = layer_norm(cat, self._w("norm.weight"), self._w("norm.bias"), self.eps,
                            check=False)
        return linear(normed, self._w("reduction.weight"), check=False), None  # (B, h/2, w/2, 2C)


#: The current VMamba code's names -> the released v0 checkpoints' names (prefix rewrites).
_MAIN_TO_RELEASE = [
    (re.compile(r"^patch_embed\.0\."), "patch_embed.proj."),
    (re.compile(r"^patch_embed\.2\."), "patch_embed.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+\.)norm\."), r"\1ln_1."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+\.)op\."), r"\1self_attention."),
    (re.compile(r"^classifier\.norm\."), "norm."),
    (re.compile(r"^classifier\.head\."), "head."),
]


def vmamba_release_names(state_dict):
    """A VMamba state dict under the released v0 names (the current code's names translated).

    The current ``MzeroMiko/VMamba`` code renames the released checkpoints' keys
    on load (``VSSM._load_from_state_dict``); this is the inverse map, so both
    namings load.  Names already in the release form are kept.

    Examples
    --------
    >>> sorted(vmamba_release_names({"patch_embed.0.weight": 1, "layers.0.blocks.1.op.Ds": 2,
    ...                              "classifier.head.bias": 3}))
    ['head.bias', 'layers.0.blocks.1.self_attention.Ds', 'patch_embed.proj.weight']
    """
    check_state_dict_keys(state_dict)
    out = {}
    for k in state_dict.keys():
        new = k
        for pattern, repl in _MAIN_TO_RELEASE:
            new = pattern.sub(repl, new)
        if new in out:
            raise KeyError(f"state_dict holds {k!r} and another key that both mean {new!r}")
        out[new] = state_dict[k]
    return out


def _one_of(value, name, allowed, why):
    if value not in allowed:
        raise ValueError(f"Parameter {name} = {value!r} is not implemented; expected "
                         f"{' or '.join(repr(a) for a in allowed)} ({why})")
    return value


class VSSM(FullModel):
    """VMamba's classifier backbone as the released v0 checkpoints were trained, eval mode.

    The constructor takes the official ``VSSM`` keyword arguments; only the v0
    combination is implemented (``forward_type="v0"``, ``mlp_ratio=0``,
    ``downsample_version="v1"``, ``patchembed_version="v1"``, the defaults
    here, which differ from the current official defaults) and any other value
    raises ``ValueError`` naming the argument.

    Parameters
    ----------
    patch_size : int, default 4
    in_chans : int, default 3
    num_classes : int, default 1000
    depths : sequence of int, default (2, 2, 9, 2)
        VSS blocks per stage.
    dims : int or sequence of int, default 96
        Stage widths; an int C_0 means ``[C_0·2^s]``.
    ssm_d_state : int, default 16
    ssm_ratio : float, default 2.0
        E = ``int(ssm_ratio · C)``.
    ssm_dt_rank : "auto" or int, default "auto"
        ``ceil(C / 16)`` per stage when "auto".
    ssm_act_layer : "silu"; ssm_conv : 3; ssm_conv_bias : True
        v0 fixes these (a 3×3 depthwise conv with bias, SiLU).
    ssm_init : "v0"; forward_type : "v0"; mlp_ratio : 0.0; gmlp : False
    drop_path_rate, ssm_drop_rate, mlp_drop_rate : float
        Identity in eval; accepted and unused.
    mlp_act_layer, use_checkpoint
        Accepted (unused without an MLP, in eval).
    imgsize : int, default 224
        The training image size, kept as ``img_size`` (the eval crop of
        :func:`ssm_ref.vision.imagenet_eval_transform`); any multiple of
        ``patch_size · 2^(stages-1)`` runs.
    patch_norm : True; norm_layer : "ln"; downsample_version : "v1";
    patchembed_version : "v1"; posembed : False
    seed : int or numpy.random.Generator, default 0
        Random initialization (PyTorch's defaults, :class:`ssm_ref.vision.SS2D`'s
        Mamba init, truncated N(0, 0.02) head); a checkpoint then replaces it.
    dtype : numpy dtype, default float32
        dtype the parameters are stored in (computation is float64).
    scan_fn : callable, optional

    References
    ----------
    Liu et al. 2024, "VMamba: Visual State Space Model", arXiv:2401.10166;
    ``MzeroMiko/VMamba``, ``classification/models/vmamba.py`` (``VSSM``,
    ``forward_type="v0"``, configs ``vmambav0_tiny_224.yaml``).

    Examples
    --------
    >>> import numpy as np
    >>> model = VSSM(depths=(1, 1), dims=8, ssm_d_state=4, num_classes=3)
    >>> model(np.zeros((2, 16, 8, 3), dtype=np.float32)).shape
    (2, 3)
    >>> list(model.state_dict())[:3]
    ['patch_embed.proj.weight', 'patch_embed.proj.bias', 'patch_embed.norm.weight']
    """

    x_ndim = 4

    def __init__(self, patch_size=4, in_chans=3, num_classes=1000, depths=(2, 2, 9, 2), dims=96,
                 *, ssm_d_state=16, ssm_ratio=2.0, ssm_dt_rank="auto", ssm_act_layer="silu",
                 ssm_conv=3, ssm_conv_bias=True, ssm_drop_rate=0.0, ssm_init="v0",
                 forward_type="v0", mlp_ratio=0.0, mlp_act_layer="gelu", mlp_drop_rate=0.0,
                 gmlp=False, drop_path_rate=0.1, patch_norm=True, norm_layer="ln",
                 downsample_version="v1", patchembed_version="v1", use_checkpoint=False,
                 posembed=False, imgsize=224, seed=0, dtype=np.float32, scan_fn=None):
        super().__init__()
        self.patch_size = p = check_positive_int(patch_size, "patch_size")
        self.in_chans = check_positive_int(in_chans, "in_chans")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        if isinstance(depths, (int, np.integer)) or len(depths) == 0:
            raise ValueError(f"Parameter depths = {depths!r} must be a non-empty list of ints")
        self.depths = [check_positive_int(d, "depths") for d in depths]
        S = len(self.depths)
        if isinstance(dims, (int, np.integer)):
            dims = [int(dims) * 2 ** s for s in range(S)]
        if len(dims) != S:
            raise ValueError(f"Parameter dims = {dims!r} must have one width per stage "
                             f"(depths has {S})")
        self.dims = [check_positive_int(c, "dims") for c in dims]
        self.d_state = check_positive_int(ssm_d_state, "ssm_d_state")
        self.ssm_ratio = check_positive_scalar(ssm_ratio, "ssm_ratio")
        if ssm_dt_rank != "auto":
            check_positive_int(ssm_dt_rank, "ssm_dt_rank")
        _one_of(forward_type, "forward_type", ("v0",), "the released v0 checkpoints")
        _one_of(ssm_init, "ssm_init", ("v0",), "the released v0 checkpoints")
        _one_of(str(ssm_act_layer).lower(), "ssm_act_layer", ("silu",), "v0 uses SiLU")
        _one_of(ssm_conv, "ssm_conv", (3,), "v0 fixes a 3x3 depthwise conv")
        _one_of(ssm_conv_bias, "ssm_conv_bias", (True,), "v0 fixes the conv bias")
        if mlp_ratio != 0:
            raise ValueError(f"Parameter mlp_ratio = {mlp_ratio!r} is not implemented; expected "
                             "0.0 (v0 blocks have no MLP branch)")
        _one_of(gmlp, "gmlp", (False,), "v0 blocks have no MLP branch")
        _one_of(patch_norm, "patch_norm", (True,), "v0 normalizes the patch embedding")
        _one_of(str(norm_layer).lower(), "norm_layer", ("ln",), "v0 uses LayerNorm")
        _one_of(downsample_version, "downsample_version", ("v1",), "v0's PatchMerging2D")
        _one_of(patchembed_version, "patchembed_version", ("v1",), "v0's one-conv patch embed")
        _one_of(posembed, "posembed", (False,), "v0 has no position embedding")
        for value, name in ((drop_path_rate, "drop_path_rate"), (ssm_drop_rate, "ssm_drop_rate"),
                            (mlp_drop_rate, "mlp_drop_rate")):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"Parameter {name} = {value} must lie in [0, 1)")
        self.eps = 1e-5  # nn.LayerNorm's default, every norm of the v0 model
        self.img_size = check_positive_int(imgsize, "imgsize")  # the training size (the eval crop)

        rng = rng_from(seed)
        C0 = self.dims[0]
        self.patch_embed = self.add_module("patch_embed", PatchEmbed(
            self.in_chans, C0, p, seed=rng, dtype=dtype))
        self.add_param("patch_embed.norm.weight", np.ones(C0, dtype=dtype))
        self.add_param("patch_embed.norm.bias", np.zeros(C0, dtype=dtype))
        self.stages = []  # per stage: (blocks, downsample or None)
        for s, (depth, C) in enumerate(zip(self.depths, self.dims)):
            config = MambaConfig(d_model=C, d_state=self.d_state, d_conv=3, expand=self.ssm_ratio,
                                 dt_rank=ssm_dt_rank, conv_bias=True, bias=False)
            blocks = [self.add_module(f"layers.{s}.blocks.{j}",
                                      VSSBlock(config, eps=self.eps, seed=rng, dtype=dtype))
                      for j in range(depth)]
            down = None
            if s < S - 1:
                if self.dims[s + 1] != 2 * C:
                    raise ValueError(f"Parameter dims = {self.dims} must double at every stage "
                                     "(PatchMerging2D maps C to 2C)")
                down = self.add_module(f"layers.{s}.downsample",
                                       PatchMerging2D(C, eps=self.eps, seed=rng, dtype=dtype))
            self.stages.append((blocks, down))
        C = self.dims[-1]
        self.add_param("norm.weight", np.ones(C, dtype=dtype))
        self.add_param("norm.bias", np.zeros(C, dtype=dtype))
        self.add_param("head.weight", (0.02 * rng.standard_normal((self.num_classes, C)))
                       .clip(-2, 2).astype(dtype))
        self.add_param("head.bias", np.zeros(self.num_classes, dtype=dtype))
        self.set_backend(scan_fn)

    def __repr__(self):
        return (f"VSSM(patch_size={self.patch_size}, depths={self.depths}, dims={self.dims}, "
                f"ssm_d_state={self.d_state}, num_classes={self.num_classes}, "
                f"params={self.n_params()})")

    def load_state_dict(self, state_dict):
        """Load by name, strict; the released v0 names or the current VMamba code's names.

        See :meth:`ssm_ref.module.Module.load_state_dict` for the errors.
        """
        super().load_state_dict(vmamba_release_names(state_dict))

    # ------------------------------------------------------------------ forward
    def _check_images(self, images):
        x = as_array(images, "images", allow_complex=False, ndim=4)
        if x.shape[3] != self.in_chans:
            raise ValueError(f"Parameter images has shape {x.shape} but should be "
                             f"(B, H, W, {self.in_chans}) (B, H, W, C), channels last")
        m = self.patch_size * 2 ** (len(self.depths) - 1)
        if x.shape[1] % m or x.shape[2] % m or x.shape[1] == 0 or x.shape[2] == 0:
            raise ValueError(f"Parameter images has shape {x.shape}: H and W must be positive "
                             f"multiples of {m} (patch_size {self.patch_size} times 2 per "
                             f"patch merging)")
        check_nonempty(x, "images")
        check_finite(x, "images")
        return x

    def _run(self, x, trace=None):
        """The forward on float64 images, unchecked; records into ``trace`` when given.

        What :meth:`trace` returns (recorded here), a dict of float64 arrays:
        ``patch_embed`` (B, h, w, C0); per stage s and block j ``stage{s}_block{j}_norm``,
        ``_ss2d_merged`` (B, h·w, E, the four directions summed), ``_ss2d_gated`` (B, h, w,
        E), ``_op`` and ``_out``; ``stage{s}_downsample``; ``final_norm``, ``features``,
        ``logits``; and the selective-scan call of stage 0 block 0 on the first image
        (``stage0_block0_scan_{u,delta,B,C,out,A,D,delta_bias}``).
        """
        t, _ = self.patch_embed._forward(x)  # (B, h, w, C0)
        t = layer_norm(t, self._w("patch_embed.norm.weight"), self._w("patch_embed.norm.bias"),
                       self.eps, check=False)
        if trace is not None:
            trace["patch_embed"] = t
        for s, (blocks, down) in enumerate(self.stages):
            for j, blk in enumerate(blocks):
                if trace is None:
                    t = blk._forward(t)[0]
                    continue
                pre = f"stage{s}_block{j}_"
                normed = layer_norm(t, blk._w("ln_1.weight"), blk._w("ln_1.bias"), blk.eps,
                                    check=False)
                op, cache = blk.self_attention._forward(normed)
                Bsz, h, w, E = cache["y"].shape
                trace.update({pre + "norm": normed, pre + "ss2d_merged":
                              cache["y"].reshape(Bsz, h * w, E), pre + "ss2d_gated":
                              cache["y_gated"], pre + "op": op, pre + "out": t + op})
                if s == 0 and j == 0:
                    trace.update(self._scan_record(blk.self_attention, cache["core"]))
                t = t + op
            if down is not None:
                t = down._forward(t)[0]
                if trace is not None:
                    trace[f"stage{s}_downsample"] = t
        t = layer_norm(t, self._w("norm.weight"), self._w("norm.bias"), self.eps, check=False)
        feat = t.mean(axis=(1, 2))  # (B, C)
        if trace is not None:
            trace["final_norm"], trace["features"] = t, feat
        return feat

    @staticmethod
    def _scan_record(ss2d, core):
        """The inputs and output of stage 0 block 0's one selective-scan call, first image."""
        xp = array_module(core["xs"][0])
        w = ss2d._core_weights()
        u = xp.concatenate(core["xs"], axis=1)[:1]  # (1, K·E, L)
        delta = xp.concatenate(core["deltas"], axis=1)[:1]
        Bs, Cs = xp.stack(core["Bs"], axis=1)[:1], xp.stack(core["Cs"], axis=1)[:1]
        out = ss2d.scan_fn(u, delta, w["A"], Bs, Cs, D=w["D"], z=None, delta_bias=w["b_dt"],
                           delta_softplus=True)
        p = "stage0_block0_scan_"
        return {p + "u": u, p + "delta": delta, p + "B": Bs, p + "C": Cs, p + "out": out,
                p + "A": w["A"], p + "D": w["D"], p + "delta_bias": w["b_dt"]}

    def backward(self, dout, cache):
        """Not provided: the full model is for inference (its blocks have their backward)."""
        raise TypeError("VSSM runs inference only; train the tiny models "
                        "(ssm_ref.vision.TinyVMamba) or its blocks (VSSBlock.backward)")


def vmamba_tiny(**kwargs):
    """VMamba-T v0 (``vmambav0_tiny_224.yaml``): dims 96, depths [2, 2, 9, 2], d_state 16.

    About 22 M parameters; the released checkpoint is
    ``vssmtiny_dp01_ckpt_epoch_292.pth`` (release ``#v0cls`` of MzeroMiko/VMamba).
    ``kwargs`` override any argument.
    """
    return VSSM(**{**dict(depths=(2, 2, 9, 2), dims=96, ssm_d_state=16, ssm_ratio=2.0,
                          drop_path_rate=0.1), **kwargs})


def vmamba_small(**kwargs):
    """VMamba-S v0: as :func:`vmamba_tiny` with depths [2, 2, 27, 2] (about 44 M parameters).

    Released checkpoint: ``vssmsmall_dp03_ckpt_epoch_238.pth``.
    """
    return VSSM(**{**dict(depths=(2, 2, 27, 2), dims=96, ssm_d_state=16, ssm_ratio=2.0,
                          drop_path_rate=0.3), **kwargs})
