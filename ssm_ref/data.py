"""Image data sets that need no download, for the tiny vision models.

Glossary
--------
n        number of images in a split
H, W     image height and width in pixels
C        channels (1 here: grey levels in [0, 1])
K        number of classes
B        batch size
m        side of a mark (the small shape drawn in the synthetic task)

Images are (n, H, W, C) channels last, float in [0, 1] (plus noise for the
synthetic task); labels are int64 class indices (n,).

Two kinds of data:

``digits``
    scikit-learn's bundled handwritten digits (1797 images of 8×8 pixels,
    16 grey levels, 10 classes; the UCI "optical recognition of handwritten
    digits" test set), divided by 16 and split into train and test with a
    stratified, seeded split.  Chance level 10%.

``pair`` / ``pair-column``
    a synthetic task built so that the answer needs **long-range** spatial
    context and so that the **scan order** changes how far apart the evidence
    lies in the token sequence.  See :func:`make_pair_images`.

``DATASETS`` is the registry (name -> :class:`DatasetSpec`), and
``load_dataset(name, seed, **options)`` returns an :class:`ImageDataset`.
``iterate_batches`` shuffles with its own seed, so the order of the batches is
reproducible and independent of any global random state.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import data_files
from ._validation import check_bool, check_choice, check_positive_int

__all__ = [
    "ImageDataset",
    "DatasetSpec",
    "DATASETS",
    "PAIR_SHAPES",
    "load_dataset",
    "load_digits_images",
    "make_pair_images",
    "stratified_split",
    "iterate_batches",
    "random_shift",
    "AUGMENTATIONS",
]


@dataclass
class ImageDataset:
    """A train/test split of labelled images.

    Attributes
    ----------
    name : str
    x_train, x_test : ndarray, shape (n, H, W, C)
    y_train, y_test : ndarray of int64, shape (n,)
    n_classes : int
    chance : float
        The accuracy of guessing the most frequent class of the test split.
    description : str
    options : dict
        The options the set was built with (recorded in metrics.json).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    chance: float
    description: str = ""
    options: dict = field(default_factory=dict)

    @property
    def image_shape(self):
        """(H, W, C) of one image."""
        return tuple(self.x_train.shape[1:])

    def __iter__(self):
        """Unpack as ``x_train, y_train, x_test, y_test``."""
        return iter((self.x_train, self.y_train, self.x_test, self.y_test))

    def __repr__(self):
        return (f"ImageDataset({self.name!r}, train {self.x_train.shape}, test {self.x_test.shape}, "
                f"{self.n_classes} classes, chance {self.chance:.3f})")


def _check_fraction(x, name):
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not 0.0 < x < 1.0:
        raise ValueError(f"Parameter {name} = {x!r} must be a number strictly between 0 and 1")
    return float(x)


def _check_seed(seed):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"Parameter seed = {seed!r} must be an integer >= 0")
    return int(seed)


def _rng(seed):
    """``np.random.default_rng(seed)``, or an error that names ``seed`` (NumPy's does not)."""
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"Parameter seed = {seed!r} must be an integer >= 0 (or a tuple of "
                        f"them) ({exc})") from exc


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"Parameter dtype = {dtype!r} is not a NumPy dtype; expected float32 "
                        "or float64") from exc
    if dt.kind != "f":
        raise TypeError(f"Parameter dtype = {dtype!r} must be a floating-point dtype (float32 or float64)")
    return dt


def _chance(y, n_classes):
    return float(np.bincount(y, minlength=n_classes).max() / len(y))


# ---------------------------------------------------------------------------
# Splits and batches
# ---------------------------------------------------------------------------

def stratified_split(y, test_fraction, seed):
    """Indices of a stratified, seeded train/test split.

    Parameters
    ----------
    y : ndarray of int, shape (n,)
        Class labels.
    test_fraction : float
        In (0, 1): the share of each class that goes to the test split
        (``round(test_fraction · n_k)`` images of class k, at least one when
        the class has two or more images).
    seed : int
        Seeds the permutation inside each class.

    Returns
    -------
    train_idx, test_idx : ndarray of int64
        Sorted, disjoint, covering ``0 .. n-1``.

    Examples
    --------
    >>> import numpy as np
    >>> tr, te = stratified_split(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 0.5, seed=0)
    >>> len(tr), len(te), sorted(np.array([0, 0, 0, 0, 1, 1, 1, 1])[te].tolist())
    (4, 4, [0, 0, 1, 1])
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(f"Parameter y has shape {y.shape} and dtype {y.dtype} but should be a 1-D integer array")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    rng = np.random.default_rng(_check_seed(seed))
    test = []
    for k in np.unique(y):  # classes in increasing order: deterministic
        members = np.flatnonzero(y == k)  # indices of class k
        members = rng.permutation(members)
        n_test = int(round(test_fraction * len(members)))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test.extend(members[:n_test].tolist())
    test_idx = np.sort(np.array(test, dtype=np.int64))
    train_idx = np.setdiff1d(np.arange(len(y), dtype=np.int64), test_idx)
    return train_idx, test_idx


def iterate_batches(x, y, batch_size, *, shuffle=True, seed=0, drop_last=False):
    """Yield ``(x_batch, y_batch)`` over one pass (epoch) of the data.

    Parameters
    ----------
    x : ndarray, shape (n, ...)
    y : ndarray, shape (n,)
    batch_size : int
    shuffle : bool, optional
        Visit the examples in a random order drawn from ``seed``.
    seed : int or sequence of int, optional
        Seed of the permutation (``np.random.default_rng(seed)``); the training
        loop passes ``(seed, epoch)`` so each epoch has its own order, the same
        on every run and after resuming from a checkpoint.
    drop_last : bool, optional
        Skip a last batch smaller than ``batch_size``.

    Yields
    ------
    x_batch : ndarray, shape (b, ...)
    y_batch : ndarray, shape (b,)
        ``b = batch_size`` except possibly for the last batch.

    Examples
    --------
    >>> import numpy as np
    >>> x, y = np.arange(5.0).reshape(5, 1), np.arange(5)
    >>> [yb.tolist() for _, yb in iterate_batches(x, y, 2, shuffle=False)]
    [[0, 1], [2, 3], [4]]
    >>> sorted(sum((yb.tolist() for _, yb in iterate_batches(x, y, 2, seed=3)), []))
    [0, 1, 2, 3, 4]
    """
    for name, a in (("x", x), ("y", y)):
        if not hasattr(a, "shape") or len(a.shape) < 1:
            raise TypeError(f"Parameter {name} is a {type(a).__name__}; expected an array "
                            "with one example per row")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"Parameters x and y have {n} and {len(y)} examples; they must match")
    batch_size = check_positive_int(batch_size, "batch_size")
    check_bool(shuffle, "shuffle")
    check_bool(drop_last, "drop_last")
    order = _rng(seed).permutation(n) if shuffle else np.arange(n)  # (n,)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]  # (b,)
        if drop_last and len(idx) < batch_size:
            return
        yield x[idx], y[idx]


def random_shift(x, max_shift, rng):
    """Translate each image by a random whole number of pixels, filling with zeros.

    Parameters
    ----------
    x : ndarray, shape (B, H, W, C)
    max_shift : int
        Each image moves by ``(dy, dx)`` drawn uniformly from
        ``-max_shift .. max_shift`` in each direction (independently per image).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, shape (B, H, W, C)
        A new array of the dtype of ``x``; pixels shifted in from outside are 0.

    Notes
    -----
    The classic augmentation for small digit images (LeCun et al. 1998 used
    distortions of this kind); it tells the model that a digit moved by a pixel
    is the same digit, which a tiny model trained on 1438 images does not
    learn otherwise.  Not meant for the pair task, whose marks may sit at the border.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((1, 3, 3, 1)); x[0, 1, 1, 0] = 1.0
    >>> y = random_shift(x, 1, np.random.default_rng(0))
    >>> float(y.sum()), y.shape
    (1.0, (1, 3, 3, 1))
    """
    max_shift = check_positive_int(max_shift, "max_shift", minimum=0)
    if not hasattr(x, "ndim"):
        raise TypeError(f"Parameter x is a {type(x).__name__}; expected an array (B, H, W, C)")
    if x.ndim != 4:
        raise ValueError(f"Parameter x has shape {x.shape} but should be (B, H, W, C)")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"Parameter rng = {rng!r} must be a numpy.random.Generator "
                        "(np.random.default_rng(seed))")
    B, H, W, _ = x.shape
    out = np.zeros_like(x)  # (B, H, W, C)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(B, 2))  # (B, 2): (dy, dx)
    for b in range(B):
        dy, dx = int(shifts[b, 0]), int(shifts[b, 1])
        # source rows [ys0, ys1) land on rows [ys0 + dy, ys1 + dy); likewise columns
        ys0, ys1 = max(0, -dy), min(H, H - dy)
        xs0, xs1 = max(0, -dx), min(W, W - dx)
        if ys0 < ys1 and xs0 < xs1:
            out[b, ys0 + dy:ys1 + dy, xs0 + dx:xs1 + dx] = x[b, ys0:ys1, xs0:xs1]
    return out


#: Training-time augmentations by name: ``fn(x_batch, rng) -> x_batch``.
AUGMENTATIONS = {
    "none": lambda x, rng: x,
    "shift": lambda x, rng: random_shift(x, 1, rng),
}


# ---------------------------------------------------------------------------
# Digits
# ---------------------------------------------------------------------------

def load_digits_images(seed=0, test_fraction=0.2, dtype=np.float32):
    """scikit-learn's bundled 8×8 digits as (n, 8, 8, 1) images with a stratified split.

    Parameters
    ----------
    seed : int, optional
        Seeds the split (the images themselves are fixed).
    test_fraction : float, optional
        Share of each class held out for testing.
    dtype : dtype, optional
        Floating dtype of the images.

    Returns
    -------
    x_train : ndarray, shape (n_train, 8, 8, 1)
        Grey levels divided by 16, so in [0, 1].
    y_train : ndarray of int64, shape (n_train,)
    x_test : ndarray, shape (n_test, 8, 8, 1)
    y_test : ndarray of int64, shape (n_test,)

    Raises
    ------
    ImportError
        scikit-learn is not installed (``pip install ssm-ref[experiments]``).

    Notes
    -----
    1797 images of 10 classes (about 180 each).  With ``test_fraction=0.2``
    the split is 1438 / 359 images.  No download: the data ship inside
    scikit-learn (``sklearn.datasets.load_digits``).

    Examples
    --------
    >>> xtr, ytr, xte, yte = load_digits_images(seed=0)
    >>> xtr.shape, xte.shape, float(xtr.max()) <= 1.0
    ((1438, 8, 8, 1), (359, 8, 8, 1), True)
    """
    seed = _check_seed(seed)
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    dtype = _check_dtype(dtype)
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415 - optional extra
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the 'digits' data set needs scikit-learn: "
                          "pip install scikit-learn (or ssm-ref[experiments])") from exc
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64) / 16.0  # (1797, 8, 8), in [0, 1]
    x = images[..., None].astype(dtype)  # (1797, 8, 8, 1)
    y = np.asarray(bunch.target, dtype=np.int64)  # (1797,)
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


# ---------------------------------------------------------------------------
# The long-range "pair" task
# ---------------------------------------------------------------------------

#: The 3×3 marks of the pair task.  No two are equal under translation inside a
#: 3×3 box, and all have 5 lit pixels, so the total ink says nothing about the shapes.
PAIR_SHAPES = np.array([
    [[0, 1, 0], [1, 1, 1], [0, 1, 0]],  # plus
    [[1, 0, 1], [0, 1, 0], [1, 0, 1]],  # x
    [[1, 1, 1], [0, 1, 0], [0, 1, 0]],  # T
    [[1, 0, 0], [1, 0, 0], [1, 1, 1]],  # L
], dtype=np.float64)  # (4, 3, 3)


def make_pair_images(n, size=16, layout="row", n_shapes=4, noise=0.1, seed=0, dtype=np.float32):
    """The "pair" task: are the two far-apart marks the same shape?

    Parameters
    ----------
    n : int
        Number of images; half are "same" (label 1), half "different" (label 0).
    size : int, optional
        Side of the square image (>= 8).
    layout : {"row", "column"}, optional
        ``"row"``: both marks lie on the **same rows**, one in the left quarter
        and one in the right quarter of the image.  ``"column"``: the transpose
        (same columns, top and bottom quarters).
    n_shapes : int, optional
        How many of the :data:`PAIR_SHAPES` are used (2 to 4).
    noise : float, optional
        Standard deviation of the Gaussian noise added to every pixel (the
        distractor background); 0 gives clean images.
    seed : int or sequence of int, optional
        Seeds everything (shapes, positions, noise, which images are "same").
    dtype : dtype, optional

    Returns
    -------
    x : ndarray, shape (n, size, size, 1)
    y : ndarray of int64, shape (n,)
        1 when the two marks have the same shape, 0 otherwise.

    Notes
    -----
    Construction of one image (m = 3):

    1. draw the label (exactly ``n // 2`` "same" images, shuffled);
    2. draw the first shape ``a`` uniformly; ``b = a`` for "same", else ``b``
       uniform among the other ``n_shapes - 1`` shapes;
    3. for ``layout="row"`` draw one row offset ``r`` in ``0 .. size-m``; mark
       ``a`` (or ``b``, by a fair coin) goes at column ``c1`` in the left
       quarter, the other at ``c2`` in the right quarter, so the marks share
       their rows and at least ``size/2`` empty columns separate them (for
       ``size`` a multiple of 4 and >= 12);
    4. add ``N(0, noise²)`` to every pixel.

    **Chance level is 50%** (balanced classes).  Why it needs long-range
    context: each mark alone says nothing about the label (every shape occurs
    equally in both classes); the label is a comparison of two regions at least
    ``size/2`` pixels apart.  A model whose receptive field is smaller than
    that, followed by average pooling and a linear classifier, cannot solve it:
    the pooled feature is ``f(a) + f(b)``, and no linear threshold separates
    ``{2 f(a)}`` from ``{f(a) + f(b), a ≠ b}`` (if ``c_a = w·f(a)``,
    ``2 c_min > θ > c_min + c_other >= 2 c_min`` is impossible).

    Why the scan order matters: with ``layout="row"`` on a grid of tokens of
    width ``W_t``, the two marks are about ``W_t/2 .. W_t`` tokens apart in a
    raster (row-major) scan but about ``H_t·W_t/2`` tokens apart in a
    column-major scan; ``layout="column"`` swaps the two.  A selective SSM
    must carry the first shape through its state over that distance.

    Examples
    --------
    >>> x, y = make_pair_images(4, size=16, noise=0.0, seed=0)
    >>> x.shape, y.tolist().count(1), float(x.sum()) == 4 * 2 * 5
    ((4, 16, 16, 1), 2, True)
    """
    n = check_positive_int(n, "n")
    size = check_positive_int(size, "size", minimum=8)
    check_choice(layout, "layout", ("row", "column"))
    n_shapes = check_positive_int(n_shapes, "n_shapes", minimum=2)
    if n_shapes > len(PAIR_SHAPES):
        raise ValueError(f"Parameter n_shapes = {n_shapes} must be <= {len(PAIR_SHAPES)}")
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0.0 <= noise < np.inf:
        raise ValueError(f"Parameter noise = {noise!r} must be a finite number >= 0")
    dtype = _check_dtype(dtype)
    rng = _rng(seed)
    m = PAIR_SHAPES.shape[1]  # side of a mark
    quarter = size // 4
    y = np.zeros(n, dtype=np.int64)  # (n,)
    y[: n // 2] = 1
    y = rng.permutation(y)  # (n,)
    x = np.zeros((n, size, size), dtype=np.float64)  # (n, H, W)
    for i in range(n):
        a = int(rng.integers(n_shapes))
        if y[i] == 1:
            b = a
        else:
            b = int(rng.integers(n_shapes - 1))
            b = b + 1 if b >= a else b  # uniform over the other shapes
        if rng.integers(2):
            a, b = b, a  # which shape goes left (or top) is a fair coin
        r = int(rng.integers(size - m + 1))  # shared rows (row layout)
        c1 = int(rng.integers(max(1, quarter - m + 1)))  # left quarter
        c2 = int(size - quarter + rng.integers(max(1, quarter - m + 1)))  # right quarter
        c2 = min(c2, size - m)
        x[i, r:r + m, c1:c1 + m] = PAIR_SHAPES[a]
        x[i, r:r + m, c2:c2 + m] = PAIR_SHAPES[b]
        if layout == "column":
            x[i] = x[i].T.copy()
    if noise > 0:
        x = x + noise * rng.standard_normal(x.shape)  # (n, H, W)
    return x[..., None].astype(dtype), y  # (n, H, W, 1), (n,)


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetSpec:
    """One entry of :data:`DATASETS`.

    Attributes
    ----------
    name : str
    load : callable
        ``load(seed, **options) -> ImageDataset``.
    n_classes : int or None
        None where the files decide (``imagefolder``: one class per sub-folder).
    options : dict
        Accepted options and their defaults.
    description : str
    """

    name: str
    load: Callable = field(repr=False)
    n_classes: int | None
    options: dict
    description: str


def _load_digits(seed, test_fraction=0.2, dtype=np.float32):
    xtr, ytr, xte, yte = load_digits_images(seed=seed, test_fraction=test_fraction, dtype=dtype)
    return ImageDataset("digits", xtr, ytr, xte, yte, 10, _chance(yte, 10),
                        DATASETS["digits"].description,
                        {"test_fraction": test_fraction, "dtype": np.dtype(dtype).name})


def _pair_loader(name, layout):
    def load(seed, n_train=2000, n_test=1000, size=16, n_shapes=4, noise=0.1, dtype=np.float32):
        n_train = check_positive_int(n_train, "n_train", minimum=2)
        n_test = check_positive_int(n_test, "n_test", minimum=2)
        # Independent streams for train and test, both from the one seed.
        s_train, s_test = np.random.SeedSequence([_check_seed(seed), 0x9A12]).spawn(2)
        common = dict(size=size, layout=layout, n_shapes=n_shapes, noise=noise, dtype=dtype)
        xtr, ytr = make_pair_images(n_train, seed=s_train, **common)
        xte, yte = make_pair_images(n_test, seed=s_test, **common)
        opts = {"n_train": n_train, "n_test": n_test, "size": size, "n_shapes": n_shapes,
                "noise": float(noise), "layout": layout, "dtype": np.dtype(dtype).name}
        return ImageDataset(name, xtr, ytr, xte, yte, 2, _chance(yte, 2),
                            DATASETS[name].description, opts)
    return load


#: Default options of the two pair tasks (each entry gets its own copy).
_PAIR_OPTIONS = {"n_train": 2000, "n_test": 1000, "size": 16, "n_shapes": 4, "noise": 0.1,
                 "dtype": np.float32}

DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        "digits", _load_digits, 10, {"test_fraction": 0.2, "dtype": np.float32},
        "scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), "
        "stratified seeded split; chance 10%"),
    "pair": DatasetSpec(
        "pair", _pair_loader("pair", "row"), 2,
        dict(_PAIR_OPTIONS),
        "synthetic long-range task: two 3x3 marks on the same rows, one in the left and "
        "one in the right quarter of a 16x16 image; label = same shape; chance 50%"),
    "pair-column": DatasetSpec(
        "pair-column", _pair_loader("pair-column", "column"), 2,
        dict(_PAIR_OPTIONS),
        "the pair task transposed: marks in the same columns, top and bottom quarters; "
        "chance 50%"),
}


def _file_loader(name, n_classes):
    """Loader of a data set stored in files (:mod:`ssm_ref.data_files`)."""
    def load(seed, root=None, download=False, n_train=None, n_test=None, test_fraction=0.2,
             dtype=np.float32):
        dt = _check_dtype(dtype)
        if root is None:
            raise ValueError(f"data set {name!r} is read from files: pass root=DIR (the CLI's "
                             "--data-root), the folder that holds them")
        if not isinstance(download, bool):
            raise TypeError(f"Parameter download = {download!r} must be True or False")
        if download:
            if name not in data_files.SOURCES:
                raise ValueError(f"data set {name!r} cannot be downloaded; put the files in root")
            data_files.download(name, root)
        if name == "cifar10":
            xtr, ytr, xte, yte = data_files.load_cifar10(root)
        elif name == "imagefolder":
            xtr, ytr, xte, yte = _image_folder_split(root, test_fraction, seed)
        else:
            xtr, ytr, xte, yte = data_files.load_mnist(root)
        n_cls = int(max(ytr.max(), yte.max())) + 1 if n_classes is None else n_classes
        xtr, ytr = _first(xtr, ytr, n_train, "n_train")
        xte, yte = _first(xte, yte, n_test, "n_test")
        opts = {"root": str(root), "n_train": len(xtr), "n_test": len(xte),
                "dtype": dt.name}
        if name == "imagefolder":
            opts["test_fraction"] = test_fraction
        return ImageDataset(name, (xtr / 255).astype(dt), ytr.astype(np.int64),  # [0, 1]
                            (xte / 255).astype(dt), yte.astype(np.int64), n_cls,
                            _chance(yte.astype(np.int64), n_cls), DATASETS[name].description, opts)
    return load


def _first(x, y, n, name):
    """The first ``n`` images in file order (all when ``n`` is None)."""
    if n is None:
        return x, y
    n = check_positive_int(n, name)
    if n > len(x):
        raise ValueError(f"Parameter {name} = {n} but the split has only {len(x)} images")
    return x[:n], y[:n]


def _image_folder_split(root, test_fraction, seed):
    """``root/train`` and ``root/test`` when both exist, else a stratified split of ``root``."""
    from pathlib import Path  # noqa: PLC0415
    root = Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        xtr, ytr, classes = data_files.read_image_folder(root / "train")
        xte, yte, test_classes = data_files.read_image_folder(root / "test")
        if classes != test_classes:
            raise ValueError(f"image folder {root}: train classes {classes} differ from test "
                             f"classes {test_classes}")
        return xtr, ytr, xte, yte
    x, y, _ = data_files.read_image_folder(root)
    tr, te = stratified_split(y.astype(np.int64), _check_fraction(test_fraction, "test_fraction"),
                              seed)
    return x[tr], y[tr], x[te], y[te]


#: Options of the data sets read from files.
_FILE_OPTIONS = {"root": None, "download": False, "n_train": None, "n_test": None,
                 "dtype": np.float32}

DATASETS.update({
    "mnist": DatasetSpec(
        "mnist", _file_loader("mnist", 10), 10, dict(_FILE_OPTIONS),
        "MNIST handwritten digits from the four IDX files in root (28x28x1, 60000 train, "
        "10000 test, 10 classes)"),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", _file_loader("fashion-mnist", 10), 10, dict(_FILE_OPTIONS),
        "Fashion-MNIST clothing images from the four IDX files in root (28x28x1, 60000 train, "
        "10000 test, 10 classes)"),
    "cifar10": DatasetSpec(
        "cifar10", _file_loader("cifar10", 10), 10, dict(_FILE_OPTIONS),
        "CIFAR-10 from the binary batches in root/cifar-10-batches-bin (32x32x3, 50000 train, "
        "10000 test, 10 classes)"),
    "imagefolder": DatasetSpec(
        "imagefolder", _file_loader("imagefolder", None), None,
        {**_FILE_OPTIONS, "test_fraction": 0.2},
        "PNG images in root/<class>/ (classes sorted by name); root/train and root/test as the "
        "splits when both exist, else a stratified seeded split"),
})


def load_dataset(name, seed=0, **options):
    """Build the data set ``name`` of :data:`DATASETS` with a seed.

    Parameters
    ----------
    name : str
        ``"digits"``, ``"pair"``, ``"pair-column"`` (built here), or
        ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, ``"imagefolder"``
        (read from files in ``root``, see :mod:`ssm_ref.data_files`).
    seed : int, optional
        Seeds the split (digits) or the generation (synthetic sets).
    **options
        The set's options (``DATASETS[name].options``), e.g. ``test_fraction``
        for digits; ``n_train``, ``n_test``, ``size``, ``noise``, ``n_shapes``
        for the pair tasks; ``root``, ``download``, ``n_train``, ``n_test``
        (the first images in file order) for the sets read from files;
        ``dtype`` for all.

    Returns
    -------
    ImageDataset

    Raises
    ------
    ValueError
        Unknown name or option.

    Examples
    --------
    >>> ds = load_dataset("pair", seed=1, n_train=8, n_test=4)
    >>> ds.x_train.shape, ds.n_classes, ds.chance
    ((8, 16, 16, 1), 2, 0.5)
    """
    if not isinstance(name, str):
        raise TypeError(f"Parameter name = {name!r} must be a string naming a data set")
    check_choice(name, "dataset", DATASETS)
    spec = DATASETS[name]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"Parameter(s) {unknown} are not options of data set {name!r} "
                         f"(it accepts: {', '.join(sorted(spec.options))})")
    return spec.load(_check_seed(seed), **options)
