"""Reading PyTorch ``.pth`` checkpoints without PyTorch: a restricted unpickler.

Glossary
--------
archive    the zip file ``torch.save`` writes (its default since PyTorch 1.6):
           ``<root>/data.pkl`` (a pickle of the saved object), ``<root>/data/<key>``
           (one file of raw bytes per storage), ``<root>/byteorder``.
storage    a flat typed buffer; a tensor is a strided view of one.

The pickle refers to each storage by a *persistent id*
``("storage", <storage type>, key, location, numel)`` and rebuilds each tensor
with ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
(PyTorch's ``torch/serialization.py`` and ``torch/_utils.py``).  This reader
answers both with NumPy, and refuses every other global the pickle names, so a
checkpoint can only ever produce dicts, lists, tuples, numbers, strings and
arrays, the same promise as ``torch.load(weights_only=True)``.  An
``argparse.Namespace`` (the official Vim script saves its arguments in one)
is also allowed: it only holds attributes.
"""
from __future__ import annotations

import argparse
import collections
import pickle
import zipfile

import numpy as np

__all__ = ["read_pth"]

#: PyTorch's legacy storage classes, as the pickle names them, and their NumPy dtypes
#: (bfloat16 is read as uint16 and widened to float32, NumPy having no bfloat16).
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.name = name


def _bfloat16_to_float32(raw):
    """bfloat16 is the upper half of a float32: shift the 16 bits into place."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None,
                       metadata=None):
    """``torch._utils._rebuild_tensor_v2``: a strided view of ``storage``, copied out."""
    item = storage.itemsize
    if len(size) == 0:
        return storage[offset].copy()
    span = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else offset
    if span > storage.size:
        raise ValueError(f"a tensor of size {tuple(size)}, stride {tuple(stride)} at offset "
                         f"{offset} reaches past its storage of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride))
    return view.copy()


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("argparse", "Namespace"): argparse.Namespace,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive, root, path):
        super().__init__(file)
        self.archive, self.root, self.path = archive, root, path
        self.storages = {}

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"persistent id {pid!r} is not a tensor storage")
        _, stype, key, _location, numel = pid
        if key not in self.storages:
            raw = self.archive.read(f"{self.root}/data/{key}")
            dtype = STORAGE_DTYPES[stype.name]
            if dtype == "bfloat16":
                arr = _bfloat16_to_float32(np.frombuffer(raw, dtype="<u2"))
            else:
                arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
            if arr.size < numel:
                raise ValueError(f"{self.path}: storage {key} holds {arr.size} elements but the "
                                 f"pickle says {numel}")
            self.storages[key] = arr.astype(arr.dtype.newbyteorder("="))
        return self.storages[key]


def read_pth(path):
    """The object ``torch.save`` wrote to ``path``, with every tensor as a NumPy array.

    Only dicts, lists, tuples, numbers, strings, ``OrderedDict``,
    ``argparse.Namespace`` and tensors are built; any other object in the
    pickle raises ``ValueError`` naming it, and nothing of it is executed.

    Raises
    ------
    ValueError
        Not a zip archive written by ``torch.save`` (PyTorch >= 1.6; the older
        format is refused), big-endian data, or a refused global.

    Examples
    --------
    >>> from pathlib import Path
    >>> root = Path(__file__).resolve().parents[2] / "tests" / "data" / "official_vision"
    >>> sd = read_pth(root / "vim_tiny" / "model.pth")["model"]
    >>> sd["cls_token"].shape, sd["cls_token"].dtype
    ((1, 1, 32), dtype('float32'))
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a zip archive written by torch.save (PyTorch >= 1.6); "
                         "re-save it with a current PyTorch or as .safetensors")
    with zipfile.ZipFile(path) as archive:
        pkls = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ValueError(f"{path} has {len(pkls)} data.pkl entries; a torch.save archive "
                             "has exactly one, <root>/data.pkl")
        root = pkls[0].split("/")[0]
        order = f"{root}/byteorder"
        if order in archive.namelist() and archive.read(order).strip() != b"little":
            raise ValueError(f"{path} was saved big-endian; only little-endian files are read")
        with archive.open(pkls[0]) as f:
            try:
                return _Unpickler(f, archive, root, path).load()
            except pickle.UnpicklingError as exc:
                raise ValueError(
                    f"{path} holds something other than tensors and plain containers ({exc}); "
                    "nothing else is unpickled here, on purpose: in a Python you trust, load it "
                    "once and save only the weights, e.g. torch.save(torch.load(path, "
                    "weights_only=False)['model'], 'weights.pth'), or as .safetensors") from exc
