"""The official ImageNet models by name, their eval transform, and top-k predictions.

Glossary
--------
H, W      image height and width; C = 3 (RGB) channels, channels last.
K         number of classes (1000 for the released ImageNet models).

==================  ===========================================================
``"vim_tiny"``      :func:`ssm_ref.vision.vim_tiny` (Vim-Ti, 7 M parameters)
``"vim_small"``     :func:`ssm_ref.vision.vim_small` (Vim-S, 26 M)
``"vmamba_tiny"``   :func:`ssm_ref.vision.vmamba_tiny` (VMamba-T v0, 22 M)
``"vmamba_small"``  :func:`ssm_ref.vision.vmamba_small` (VMamba-S v0, 44 M)
==================  ===========================================================

The eval transform both projects use (DeiT's, kept by Vim's ``vim/datasets.py``;
Swin's, kept by VMamba's ``classification/data``): resize the shorter side to
``int(img_size / 0.875)`` (256 for 224) with bicubic interpolation, crop the
centre ``img_size`` square, scale to [0, 1], normalize with the ImageNet mean
and standard deviation.
"""
from __future__ import annotations

import numpy as np

from .vim_model import VisionMamba, vim_small, vim_tiny
from .vmamba_model import VSSM, vmamba_small, vmamba_tiny

__all__ = ["OFFICIAL_MODELS", "IMAGENET_MEAN", "IMAGENET_STD", "imagenet_eval_transform",
           "top_k"]

#: Presets of the released ImageNet models, by name: ``(model class, preset function)``.
OFFICIAL_MODELS = {"vim_tiny": (VisionMamba, vim_tiny), "vim_small": (VisionMamba, vim_small),
                   "vmamba_tiny": (VSSM, vmamba_tiny), "vmamba_small": (VSSM, vmamba_small)}

#: timm's IMAGENET_DEFAULT_MEAN / _STD (RGB), used by both projects' transforms.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def imagenet_eval_transform(image, img_size=224, crop_ratio=0.875):
    """An RGB image as the official eval transform gives it to the model: (1, S, S, 3) float32.

    Parameters
    ----------
    image : PIL.Image.Image or array_like (H, W, 3) uint8
        The picture (a PIL image in any mode is converted to RGB).
    img_size : int, default 224
        S, the side of the centre crop.
    crop_ratio : float, default 0.875
        The shorter side is first resized (bicubic) to ``int(img_size / crop_ratio)``.

    Returns
    -------
    ndarray, shape (1, S, S, 3), float32, channels last, ImageNet-normalized.

    Raises
    ------
    ImportError
        Pillow is not installed.
    ValueError
        An array that is not (H, W, 3) uint8, or a crop ratio outside (0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> img = np.full((40, 60, 3), 255, dtype=np.uint8)
    >>> x = imagenet_eval_transform(img, img_size=16)
    >>> x.shape, np.allclose(x[0, 0, 0], (1 - IMAGENET_MEAN) / IMAGENET_STD)
    ((1, 16, 16, 3), True)
    """
    try:
        from PIL import Image  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("the image transform needs Pillow: pip install pillow") from exc
    if not 0 < crop_ratio <= 1:
        raise ValueError(f"Parameter crop_ratio = {crop_ratio} must lie in (0, 1]")
    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"Parameter image has shape {arr.shape} and dtype {arr.dtype} but "
                             "should be (H, W, 3) uint8 RGB (or a PIL image)")
        image = Image.fromarray(arr)
    image = image.convert("RGB")
    w, h = image.size
    short = int(img_size / crop_ratio)
    if min(w, h) != short:  # torchvision's Resize(int): the shorter side to `short`
        if w <= h:
            new = (short, int(short * h / w))
        else:
            new = (int(short * w / h), short)
        image = image.resize(new, Image.BICUBIC)
        w, h = image.size
    if min(w, h) < img_size:
        raise ValueError(f"the resized image is {w}x{h}, smaller than the crop {img_size}")
    top, left = int(round((h - img_size) / 2.0)), int(round((w - img_size) / 2.0))
    image = image.crop((left, top, left + img_size, top + img_size))
    x = np.asarray(image, dtype=np.float64) / 255.0  # (S, S, 3)
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)[None]


def top_k(logits, k=5):
    """The ``k`` most probable classes of one image: ``[(class index, probability), ...]``.

    Examples
    --------
    >>> [(i, round(p, 4)) for i, p in top_k([0.0, 2.0, 1.0], k=2)]
    [(1, 0.6652), (2, 0.2447)]
    """
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    if z.size == 0 or not np.isfinite(z).all():
        raise ValueError(f"Parameter logits (shape {np.shape(logits)}) must be non-empty and "
                         "finite")
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(i), float(p[i])) for i in order]
