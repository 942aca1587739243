"""Real image data sets, read from the files as their authors distribute them.

Glossary
--------
n        number of images in a split
H, W     image height and width in pixels
C        channels (1 for MNIST and Fashion-MNIST, 3 for CIFAR-10)

Four readers, each of one file format, and one downloader:

``mnist``, ``fashion-mnist``
    The IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` in ``root``,
    gzipped (``.gz``, as distributed) or not.  IDX: a big-endian header
    ``0, 0, type code, ndim`` (type 0x08 = unsigned byte), then ``ndim``
    big-endian uint32 sizes, then the data in C order (LeCun et al., "The
    MNIST database"; Xiao, Rasul and Vollgraf 2017, arXiv:1708.07747).
    Images (n, 28, 28, 1) in [0, 1].
``cifar10``
    The *binary* version: ``data_batch_1.bin`` ... ``data_batch_5.bin`` and
    ``test_batch.bin`` in ``root/cifar-10-batches-bin/`` (or in ``root``).
    Each record is 1 label byte then 3072 pixel bytes, the red, green and
    blue 32x32 planes in row-major order (Krizhevsky 2009, "Learning Multiple
    Layers of Features from Tiny Images").  Images (n, 32, 32, 3) channels
    last in [0, 1], labels in file order.  No pickle is ever read.
``imagefolder``
    ``root/<class>/<image>.png``: classes sorted by name, images sorted by
    file name; every image must have the size and channel count of the
    first.  Reading PNG needs Pillow.  ``root/train`` and ``root/test``, when
    both exist, are the two splits; otherwise the whole folder is split with
    a stratified, seeded split.

``download=True`` fetches the canonical files, checks their SHA-256 sums
against :data:`SOURCES` (a file that does not match is deleted and reported)
and writes them atomically.  A missing or corrupted file raises
``ValueError`` naming the file and the layout expected.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SOURCES", "read_idx", "read_cifar10_batch", "write_cifar10_batch",
           "read_image_folder", "load_mnist", "load_cifar10", "download"]


@dataclass(frozen=True)
class Source:
    """Where a data set's files come from and their SHA-256 sums."""

    url: str
    files: dict  # file name -> sha256 hex digest


#: The canonical files (MNIST from the mirror PyTorch uses, Fashion-MNIST from the
#: authors' bucket, CIFAR-10 from its author's page) and their SHA-256 sums.
SOURCES = {
    "mnist": Source("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    }),
    "fashion-mnist": Source("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    }),
    "cifar10": Source("https://www.cs.toronto.edu/~kriz/", {
        "cifar-10-binary.tar.gz": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    }),
}

_IDX_LAYOUT = ("IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
               "t10k-labels-idx1-ubyte (each optionally .gz) directly in root")
_CIFAR_LAYOUT = ("the CIFAR-10 binary version: data_batch_1.bin ... data_batch_5.bin and test_batch.bin "
                 "in root/cifar-10-batches-bin/ (or in root), records of 1 label byte + 3072 pixel bytes")
_CIFAR_RECORD = 1 + 32 * 32 * 3


# --------------------------------------------------------------------------- IDX (MNIST)
def read_idx(path):
    """Read one IDX file of unsigned bytes (gzipped when the name ends in ``.gz``).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    ndarray of uint8
        Shaped by the header's sizes, e.g. (n, 28, 28) for images, (n,) for labels.

    Raises
    ------
    ValueError
        The file is not IDX of unsigned bytes, or its length disagrees with the header.

    Examples
    --------
    >>> import tempfile, os, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> p = os.path.join(d, "x-idx1-ubyte")
    >>> _ = open(p, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(p)
    array([7, 8, 9], dtype=uint8)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        raise ValueError(f"file {path} is not an IDX file of unsigned bytes (header "
                         f"{list(raw[:4])}, expected [0, 0, 8, ndim])")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is truncated inside its header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise ValueError(f"IDX file {path} holds {len(raw) - header} data bytes but its header "
                         f"says shape {shape} ({size} bytes)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _idx_file(root, stem):
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise ValueError(f"missing file {root / stem}(.gz); expected {_IDX_LAYOUT}")


def load_mnist(root):
    """The four MNIST-format IDX files in ``root``: ``(x_train, y_train, x_test, y_test)``.

    Images come back (n, 28, 28, 1) uint8, labels (n,) uint8; Fashion-MNIST has
    the same format.  Raises ``ValueError`` naming the file that is missing
    or malformed, or images and labels that disagree in count.
    """
    root = Path(root)
    out = []
    for split in ("train", "t10k"):
        x = read_idx(_idx_file(root, f"{split}-images-idx3-ubyte"))
        y = read_idx(_idx_file(root, f"{split}-labels-idx1-ubyte"))
        if x.ndim != 3 or y.ndim != 1:
            raise ValueError(f"{split} files in {root}: images have shape {x.shape} and labels "
                             f"{y.shape}; expected (n, H, W) and (n,)")
        if len(x) != len(y):
            raise ValueError(f"{split} files in {root}: {len(x)} images but {len(y)} labels")
        out += [x[..., None], y]  # (n, H, W, 1)
    return tuple(out)


# --------------------------------------------------------------------------- CIFAR-10 binary
def read_cifar10_batch(path):
    """Read one CIFAR-10 binary batch: images (n, 32, 32, 3) uint8 and labels (n,) uint8.

    Each record is 1 label byte then the red, green and blue 32x32 planes;
    the planes are moved to the last axis (channels last).

    Examples
    --------
    >>> import tempfile, os, numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "b.bin")
    >>> rec = np.zeros(3073, np.uint8); rec[0] = 4; rec[1 + 1024] = 200  # green plane, pixel (0, 0)
    >>> _ = open(p, "wb").write(rec.tobytes())
    >>> x, y = read_cifar10_batch(p)
    >>> x.shape, int(y[0]), int(x[0, 0, 0, 1])
    ((1, 32, 32, 3), 4, 200)
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"missing file {path}; expected {_CIFAR_LAYOUT}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise ValueError(f"file {path} has {raw.size} bytes, not a positive multiple of the "
                         f"{_CIFAR_RECORD}-byte CIFAR-10 record")
    rec = raw.reshape(-1, _CIFAR_RECORD)
    labels = rec[:, 0].copy()
    if labels.max() > 9:
        raise ValueError(f"file {path} has label {int(labels.max())}; CIFAR-10 labels are 0..9")
    x = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (n, 32, 32, 3)
    return np.ascontiguousarray(x), labels


def write_cifar10_batch(path, images, labels):
    """Write images (n, 32, 32, 3) uint8 and labels (n,) as one CIFAR-10 binary batch.

    The inverse of :func:`read_cifar10_batch` (for synthetic data in the real
    format, e.g. ``make gpu-check``'s short training run).
    """
    x = np.asarray(images)
    y = np.asarray(labels)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise ValueError(f"Parameter images has shape {x.shape} and dtype {x.dtype} but should "
                         "be (n, 32, 32, 3) uint8")
    if y.shape != (len(x),) or y.dtype.kind not in "iu" or (len(y) and (y.min() < 0 or y.max() > 9)):
        raise ValueError(f"Parameter labels has shape {y.shape} (dtype {y.dtype}) but should be "
                         f"({len(x)},) integers in 0..9")
    rec = np.empty((len(x), _CIFAR_RECORD), np.uint8)
    rec[:, 0] = y
    rec[:, 1:] = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # R, G, B planes, row-major
    Path(path).write_bytes(rec.tobytes())


def load_cifar10(root):
    """The CIFAR-10 binary batches under ``root``: ``(x_train, y_train, x_test, y_test)``."""
    root = Path(root)
    folder = root / "cifar-10-batches-bin" if (root / "cifar-10-batches-bin").is_dir() else root
    parts = [read_cifar10_batch(folder / f"data_batch_{i}.bin") for i in range(1, 6)]
    x_test, y_test = read_cifar10_batch(folder / "test_batch.bin")
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            x_test, y_test)


# --------------------------------------------------------------------------- image folder
def _read_png(path):
    try:
        from PIL import Image  # noqa: PLC0415  (optional: only this reader needs it)
    except ImportError as exc:
        raise ImportError("reading an image folder needs Pillow: pip install pillow") from exc
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "RGB", "RGBA", "LA"):
                im = im.convert("RGB")
            a = np.asarray(im)
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    if a.dtype != np.uint8:
        raise ValueError(f"image {path} has {a.dtype} pixels; 8-bit images were expected")
    return a[..., None] if a.ndim == 2 else a  # (H, W, C)


def read_image_folder(root):
    """Read ``root/<class>/<image>.png``: images (n, H, W, C) uint8, labels (n,), class names.

    Classes are the sub-folders sorted by name (label i is the i-th), images
    within a class sorted by file name.  Every image must have the shape of
    the first one read.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist; expected root/<class>/<image>.png")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders; expected "
                         "root/<class>/<image>.png")
    images, labels, shape = [], [], None
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise ValueError(f"class folder {root / cls} holds no .png image")
        for f in files:
            a = _read_png(f)
            if shape is None:
                shape = a.shape
            elif a.shape != shape:
                raise ValueError(f"image {f} has shape {a.shape} but the first image read has "
                                 f"{shape}; all images of a folder must share one size and "
                                 "channel count")
            images.append(a)
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.uint8 if len(classes) < 256 else np.int64), classes


# --------------------------------------------------------------------------- download
def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url, dest, sha256, progress):
    """Download ``url`` to ``dest`` through a temporary file; check the sum; rename."""
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            total, done = int(r.headers.get("Content-Length") or 0), 0
            for chunk in iter(lambda: r.read(1 << 16), b""):
                f.write(chunk)
                done += len(chunk)
                if progress and total:
                    bar = "#" * int(30 * done / total)
                    print(f"\r{dest.name:<28} [{bar:<30}] {done / 2**20:6.1f} / "
                          f"{total / 2**20:.1f} MiB", end="", file=sys.stderr, flush=True)
            f.flush()
            os.fsync(f.fileno())
        if progress:
            print(file=sys.stderr)
        got = _sha256(tmp)
        if got != sha256:
            raise ValueError(f"downloaded {url} has SHA-256 {got}, expected {sha256}; "
                             "the file was deleted")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _safe_extract_cifar(archive, root):
    wanted = {f"cifar-10-batches-bin/{n}" for n in
              [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin", "batches.meta.txt"]}
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
        if len(members) < 6:
            raise ValueError(f"archive {archive} lacks CIFAR-10 batches; expected {_CIFAR_LAYOUT}")
        for m in members:  # names are checked above: no absolute paths, no '..'
            with tar.extractfile(m) as src:
                out = root / m.name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(src.read())


def download(name, root, progress=True):
    """Fetch the files of data set ``name`` into ``root`` unless they are there and intact.

    Files already present are checked against :data:`SOURCES`; a file whose
    SHA-256 differs raises ``ValueError`` (delete it to fetch it again).
    CIFAR-10's archive is unpacked into ``root/cifar-10-batches-bin/``.
    """
    if name not in SOURCES:
        raise ValueError(f"Parameter name = {name!r} has no download source; known: {sorted(SOURCES)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    src = SOURCES[name]
    if name == "cifar10" and (root / "cifar-10-batches-bin" / "test_batch.bin").is_file():
        return root
    for fname, sha in src.files.items():
        dest = root / fname
        if dest.is_file():
            got = _sha256(dest)
            if got != sha:
                raise ValueError(f"file {dest} has SHA-256 {got}, expected {sha} (corrupted or a "
                                 "different version); delete it to download it again")
            continue
        _fetch(src.url + fname, dest, sha, progress)
    if name == "cifar10":
        _safe_extract_cifar(root / "cifar-10-binary.tar.gz", root)
    return root
