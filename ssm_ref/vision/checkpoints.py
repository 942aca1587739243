"""Reading official checkpoints into NumPy: ``.safetensors`` and PyTorch's ``.pth``.

Glossary
--------
state dict   a flat mapping ``name -> array`` (the official parameter names).
wrapped      a training checkpoint ``{"model": state_dict, "optimizer": ..., ...}``
             as the official training scripts save it; only ``"model"`` is read.

``.safetensors`` files are read with the ``safetensors`` package (imported when
one is read, so that its absence is named in the error); PyTorch files are read
without PyTorch by :func:`ssm_ref.vision.pth.read_pth`, a restricted unpickler
that builds nothing but containers and arrays.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from .pth import read_pth

__all__ = ["load_checkpoint"]

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def _load_safetensors(path):
    try:
        from safetensors.numpy import load_file  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f"reading {path} needs the safetensors package: pip install "
                          "safetensors") from exc
    return load_file(str(path))


def _to_numpy(value, key, path):
    if isinstance(value, np.ndarray):
        return value
    raise ValueError(f"entry {key!r} of {path} is a {type(value).__name__}, not a tensor; "
                     "expected a state dict of tensors (or {'model': state dict})")


def load_checkpoint(path):
    """A checkpoint file's state dict as ``{name: numpy array}``.

    Parameters
    ----------
    path : str or os.PathLike
        ``*.safetensors`` (read with the ``safetensors`` package), or a PyTorch
        file ``*.pth`` / ``*.pt`` / ``*.bin`` / ``*.ckpt`` (read without PyTorch
        by :func:`~ssm_ref.vision.pth.read_pth`, which builds tensors and plain
        containers only, as ``torch.load(weights_only=True)`` does).  A training checkpoint ``{"model": {...},
        "optimizer": ..., ...}``, the layout of the official Vim and VMamba
        scripts, is unwrapped to its ``"model"`` entry.

    Returns
    -------
    dict of str -> ndarray
        In the file's dtypes (bfloat16 becomes float32).  Pass it to a model's
        ``load_state_dict`` (:class:`ssm_ref.vision.VisionMamba`,
        :class:`ssm_ref.vision.VSSM`), which checks every name and shape.

    Raises
    ------
    ImportError
        ``safetensors`` is not installed (for a ``.safetensors`` file).
    ValueError
        An unknown suffix, a missing file, a PyTorch file holding objects
        other than tensors and containers (the message names the object and
        says how to re-save the weights), or a state dict holding something
        other than tensors.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from safetensors.numpy import save_file
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save_file({"head.bias": np.zeros(3, dtype=np.float32)}, path)
    >>> load_checkpoint(path)["head.bias"].shape
    (3,)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"Parameter path is a {type(path).__name__}, not a file path")
    path = os.fspath(path)
    name = path.lower()
    if not name.endswith(".safetensors") and not name.endswith(_TORCH_SUFFIXES):
        raise ValueError(f"Parameter path = {path!r} has an unknown suffix; expected "
                         f".safetensors or a PyTorch file ({', '.join(_TORCH_SUFFIXES)})")
    if not os.path.isfile(path):
        raise ValueError(f"Parameter path = {path!r} is not a file")
    obj = _load_safetensors(path) if name.endswith(".safetensors") else read_pth(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping "
                         "name -> tensor, or {'model': state dict})")
    if isinstance(obj.get("model"), Mapping):  # a training checkpoint: the weights only
        obj = obj["model"]
    return {str(k): _to_numpy(v, k, path) for k, v in obj.items()}
