"""Reading official checkpoints into NumPy: ``.safetensors`` and PyTorch's ``.pth``.

Glossary
--------
state dict   a flat mapping ``name -> array`` (the official parameter names).
wrapped      a training checkpoint ``{"model": state_dict, "optimizer": ..., ...}``
             as the official training scripts save it; only ``"model"`` is read.

Only NumPy is imported here; ``safetensors`` and ``torch`` are imported when a
file of their format is read, so that a missing one is named in the error.
"""
from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping

import numpy as np

__all__ = ["load_checkpoint"]

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def _load_safetensors(path):
    try:
        from safetensors.numpy import load_file  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f"reading {path} needs the safetensors package: pip install "
                          "safetensors") from exc
    return load_file(str(path))


def _load_torch(path):
    try:
        import torch  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f"reading {path} (a PyTorch checkpoint) needs the torch package: "
                          "pip install torch (CPU wheels suffice), or convert the file to "
                          ".safetensors") from exc
    # Vim's training script saves its argparse.Namespace of arguments next to the weights;
    # a Namespace only holds attributes, so it is allowed in the weights-only unpickler.
    allow = getattr(torch.serialization, "safe_globals", None)
    try:
        if allow is not None:
            with allow([argparse.Namespace]):
                return torch.load(str(path), map_location="cpu", weights_only=True)
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle.UnpicklingError (or RuntimeError) here
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch colours its message
        if "weights_only" in text or "Weights only" in text or "Unsupported global" in text:
            lines = [ln.strip() for ln in text.splitlines() if "GLOBAL" in ln]
            what = lines[0] if lines else text.splitlines()[0]
            raise ValueError(
                f"{path} holds entries other than tensors that torch.load(weights_only=True) "
                f"refuses to unpickle ({what}). Nothing else is unpickled "
                "here, on purpose: in a Python you trust, load it once and save only the "
                "weights, e.g. torch.save(torch.load(path, weights_only=False)['model'], "
                "'weights.pth'), or as .safetensors") from exc
        raise


def _to_numpy(value, key, path):
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        t = value.detach().cpu()
        if str(getattr(t, "dtype", "")) == "torch.bfloat16":  # NumPy has no bfloat16
            t = t.float()
        return t.numpy()
    raise ValueError(f"entry {key!r} of {path} is a {type(value).__name__}, not a tensor; "
                     "expected a state dict of tensors (or {'model': state dict})")


def load_checkpoint(path):
    """A checkpoint file's state dict as ``{name: numpy array}``.

    Parameters
    ----------
    path : str or os.PathLike
        ``*.safetensors`` (read with the ``safetensors`` package), or a PyTorch
        file ``*.pth`` / ``*.pt`` / ``*.bin`` / ``*.ckpt`` (read with
        ``torch.load(path, weights_only=True)``, which unpickles tensors and
        plain containers only).  A training checkpoint ``{"model": {...},
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
        The package that reads the format is not installed (it is named).
    ValueError
        An unknown suffix, a missing file, a file whose non-tensor entries
        ``weights_only`` refuses (the message says how to re-save it), or a
        state dict holding something other than tensors.

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
    obj = _load_safetensors(path) if name.endswith(".safetensors") else _load_torch(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping "
                         "name -> tensor, or {'model': state dict})")
    if isinstance(obj.get("model"), Mapping):  # a training checkpoint: the weights only
        obj = obj["model"]
    return {str(k): _to_numpy(v, k, path) for k, v in obj.items()}
