"""Configurations of the tiny classifiers: one frozen dataclass per model family.

Sizes default to the 8x8 digits of scikit-learn (one channel, patches of 2,
a 4x4 token grid, width 24, two blocks, ten classes).  The Mamba families
give their mixers a :class:`ssm_ref.MambaConfig` whole (``mamba_config()``).

Glossary
--------
H, W     image height and width (``img_size``); C the image channels (``in_chans``).
p        patch size; (h, w) = (H / p, W / p) the token grid (``grid``).
E        embedding width (``embed_dim``); N the SSM state size (``d_state``).
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field

from .._validation import check_positive_int, check_positive_scalar
from ..mamba import MambaConfig
from .multi import SCHEMES
from .scan_orders import SCAN_ORDERS, scan_order

__all__ = ["VimConfig", "VMambaConfig", "PlainMambaConfig", "AttentionConfig", "CNNConfig"]


def _img_size(value):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (int(value), int(value))
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise TypeError(f"Parameter img_size = {value!r} must be an int or a pair (H, W)")
    return (check_positive_int(value[0], "img_size[0]"), check_positive_int(value[1], "img_size[1]"))


@dataclass(frozen=True)
class BaseConfig:
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
class _MambaConfig(BaseConfig):
    """Fields of the models built from Mamba mixers: each mixer's sizes, checked."""

    d_state: int = 8
    d_conv: int = 3
    expand: float = 2

    def __post_init__(self):
        super().__post_init__()
        check_positive_int(self.d_state, "d_state")
        check_positive_int(self.d_conv, "d_conv")
        check_positive_scalar(self.expand, "expand")

    def mamba_config(self):
        """The :class:`ssm_ref.MambaConfig` of each block's mixer (width ``embed_dim``)."""
        return MambaConfig(d_model=self.embed_dim, d_state=self.d_state, d_conv=self.d_conv,
                           expand=self.expand)


@dataclass(frozen=True)
class VimConfig(_MambaConfig):
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

    d_conv: int = 4  # the rest of _MambaConfig's fields keep their place and default
    scan: str = "raster"
    scan_options: dict = field(default_factory=dict)
    cls_position: object = "middle"

    def __post_init__(self):
        super().__post_init__()
        scan_order(self.scan, *self.grid, **self.scan_options)  # unknown names fail here


@dataclass(frozen=True)
class VMambaConfig(_MambaConfig):
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

    directions: object = "vmamba_cross"
    direction_options: dict = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
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
class PlainMambaConfig(_MambaConfig):
    """Configuration of :class:`TinyPlainMamba` (d_conv 3 here; PlainMamba uses 7)."""


@dataclass(frozen=True)
class AttentionConfig(BaseConfig):
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
class CNNConfig(BaseConfig):
    """Configuration of :class:`TinyCNN`: ``kernel`` is the depthwise kernel side (3)."""

    kernel: int = 3

    def __post_init__(self):
        super().__post_init__()
        check_positive_int(self.kernel, "kernel")
