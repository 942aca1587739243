"""Tests of ssm_ref.data: the digits split against scikit-learn's own arrays, the pair task
decoded by an independent template matcher, batching, the registry and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from ssm_ref.data import (AUGMENTATIONS, DATASETS, PAIR_SHAPES, ImageDataset, iterate_batches,
                          load_dataset, load_digits_images, make_pair_images, random_shift,
                          stratified_split)

sklearn_datasets = pytest.importorskip("sklearn.datasets")


# --------------------------------------------------------------------------- digits
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_digits_are_sklearns_images_split_by_class(dtype):
    xtr, ytr, xte, yte = load_digits_images(seed=3, test_fraction=0.25, dtype=dtype)
    bunch = sklearn_datasets.load_digits()
    assert xtr.shape[1:] == (8, 8, 1) and xte.shape[1:] == (8, 8, 1)
    assert xtr.dtype == dtype and ytr.dtype == np.int64
    assert len(ytr) + len(yte) == len(bunch.target) == 1797
    assert 0.0 <= xtr.min() and xtr.max() <= 1.0
    # every image of the split is one of sklearn's, divided by 16, with its label
    tr, te = stratified_split(bunch.target, 0.25, 3)
    np.testing.assert_array_equal(xte[..., 0], (bunch.images[te] / 16).astype(dtype))
    np.testing.assert_array_equal(yte, bunch.target[te])
    # stratified: each class contributes round(0.25 n_k) test images
    for k in range(10):
        n_k = int((bunch.target == k).sum())
        assert int((yte == k).sum()) == round(0.25 * n_k)


def test_digits_split_is_deterministic_and_seeded():
    a = load_digits_images(seed=0)
    b = load_digits_images(seed=0)
    c = load_digits_images(seed=1)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[3], c[3]) or not np.array_equal(a[2], c[2])


def test_stratified_split_partitions():
    y = np.repeat(np.arange(3), [5, 2, 7])
    tr, te = stratified_split(y, 0.3, seed=0)
    assert np.intersect1d(tr, te).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), np.arange(len(y)))
    assert set(y[te]) == {0, 1, 2}  # every class, even the 2-image one, is in the test set
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(y, 1.0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        stratified_split(y, 0.5, seed=-1)


# --------------------------------------------------------------------------- pair task
def _decode(img, layout):
    """Independent decoder of a noise-free pair image: the two 3x3 marks, by bounding box."""
    img = img[..., 0] if layout == "row" else img[..., 0].T
    half = img.shape[1] // 2
    shapes, rows, cols = [], [], []
    for part, off in ((img[:, :half], 0), (img[:, half:], half)):
        r, c = np.nonzero(part)
        box = np.zeros((3, 3))
        r0, c0 = r.min(), c.min()
        # every shape touches the top row and the left column of its 3x3 cell,
        # so the corner of the lit pixels is the corner of the cell
        box[r - r0, c - c0] = part[r, c]
        shapes.append(int(np.flatnonzero([np.array_equal(box, s) for s in PAIR_SHAPES])[0]))
        rows.append(r0)
        cols.append(c0 + off)
    return shapes, rows, cols


@pytest.mark.parametrize("layout", ["row", "column"])
def test_pair_images_follow_the_construction(layout):
    size = 16
    x, y = make_pair_images(40, size=size, layout=layout, noise=0.0, seed=5)
    assert x.shape == (40, size, size, 1) and y.dtype == np.int64
    assert y.sum() == 20  # balanced: chance is 50%
    for img, label in zip(x, y):
        (a, b), (r1, r2), (c1, c2) = _decode(img, layout)
        assert int(a == b) == label
        assert r1 == r2  # the marks share their rows (columns for layout="column")
        assert c1 < size // 4 and c2 >= size - size // 4  # left and right quarters
        assert c2 - (c1 + 3) >= size // 2  # at least size/2 empty columns between the marks


def test_pair_single_mark_carries_no_label_information():
    x, y = make_pair_images(400, noise=0.0, seed=2)
    left = np.array([_decode(img, "row")[0][0] for img in x])
    for s in range(len(PAIR_SHAPES)):  # every shape is seen on the left in both classes
        assert ((left == s) & (y == 1)).any() and ((left == s) & (y == 0)).any()


def _template_match_solver(x):
    """A global, hand-written solver: best-matching shape on each side, then compare."""
    shapes = PAIR_SHAPES - PAIR_SHAPES.mean(axis=(1, 2), keepdims=True)
    img = x[..., 0]
    n, size, _ = img.shape
    half = size // 2
    preds = []
    for im in img:
        best = []
        for part in (im[:, :half], im[:, half:]):
            scores = np.full(len(shapes), -np.inf)
            for i in range(part.shape[0] - 2):
                for j in range(part.shape[1] - 2):
                    patch = part[i:i + 3, j:j + 3]
                    scores = np.maximum(scores, (shapes * patch).sum(axis=(1, 2)))
            best.append(int(np.argmax(scores)))
        preds.append(int(best[0] == best[1]))
    return np.array(preds)


def test_pair_task_is_solvable_under_noise_by_a_global_rule():
    ds = load_dataset("pair", seed=0, n_train=2, n_test=200)
    acc = (_template_match_solver(ds.x_test) == ds.y_test).mean()
    assert acc >= 0.95


def test_pair_task_defeats_a_linear_model_on_pixels():
    lm = pytest.importorskip("sklearn.linear_model")
    ds = load_dataset("pair", seed=0, n_train=1500, n_test=500)
    clf = lm.LogisticRegression(max_iter=300).fit(ds.x_train.reshape(1500, -1), ds.y_train)
    acc = clf.score(ds.x_test.reshape(500, -1), ds.y_test)
    assert acc < 0.6  # near the 50% chance level: the label is a comparison, not a sum


def test_pair_is_deterministic_and_train_test_differ():
    a = load_dataset("pair", seed=4, n_train=10, n_test=10)
    b = load_dataset("pair", seed=4, n_train=10, n_test=10)
    c = load_dataset("pair", seed=5, n_train=10, n_test=10)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_train, a.x_test)


@pytest.mark.parametrize("kwargs, match", [
    (dict(layout="diagonal"), "layout"), (dict(size=4), "size"), (dict(n_shapes=9), "n_shapes"),
    (dict(noise=float("nan")), "noise"), (dict(n=0), "n"),
])
def test_pair_bad_arguments(kwargs, match):
    args = dict(n=4) | kwargs
    with pytest.raises(ValueError, match=match):
        make_pair_images(**args)


# --------------------------------------------------------------------------- batches
def test_batches_cover_each_example_once_and_are_seeded():
    x, y = np.arange(23.0)[:, None], np.arange(23)
    seen = np.concatenate([yb for _, yb in iterate_batches(x, y, 5, seed=(1, 0))])
    np.testing.assert_array_equal(np.sort(seen), y)
    again = np.concatenate([yb for _, yb in iterate_batches(x, y, 5, seed=(1, 0))])
    other = np.concatenate([yb for _, yb in iterate_batches(x, y, 5, seed=(1, 1))])
    np.testing.assert_array_equal(seen, again)
    assert not np.array_equal(seen, other)
    for xb, yb in iterate_batches(x, y, 5, seed=0):
        np.testing.assert_array_equal(xb[:, 0], yb)  # x and y stay aligned
    sizes = [len(yb) for _, yb in iterate_batches(x, y, 5, drop_last=True)]
    assert sizes == [5, 5, 5, 5]


def test_batches_bad_input():
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_batches(np.zeros((3, 1)), np.zeros(3, int), 0))
    with pytest.raises(ValueError, match="match"):
        list(iterate_batches(np.zeros((3, 1)), np.zeros(2, int), 2))


# --------------------------------------------------------------------------- augmentation
def _shifted(img, dy, dx):
    """Independent oracle: zero-pad by 2 on every side, then crop the window moved by (dy, dx)."""
    H, W, _ = img.shape
    padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
    return padded[2 - dy:2 - dy + H, 2 - dx:2 - dx + W]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_shift_is_a_zero_filled_translation(rng, dtype):
    x = rng.random((30, 5, 6, 2)).astype(dtype)
    y = random_shift(x, 1, np.random.default_rng(0))
    assert y.dtype == dtype and y.shape == x.shape
    seen = set()
    for img, out in zip(x, y):
        matches = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                   if np.array_equal(out, _shifted(img, dy, dx))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 4  # the shifts really vary
    np.testing.assert_array_equal(y, random_shift(x, 1, np.random.default_rng(0)))
    np.testing.assert_array_equal(random_shift(x, 0, rng), x)
    np.testing.assert_array_equal(AUGMENTATIONS["none"](x, rng), x)
    with pytest.raises(ValueError, match="shape"):
        random_shift(x[0], 1, rng)


# --------------------------------------------------------------------------- registry
def test_registry_builds_every_dataset():
    for name, spec in DATASETS.items():
        if "root" in spec.options:  # read from files: tests/test_data_files.py writes them
            continue
        opts = {"n_train": 6, "n_test": 4} if "n_train" in spec.options else {}
        ds = load_dataset(name, seed=0, **opts)
        assert isinstance(ds, ImageDataset) and ds.name == name
        assert ds.n_classes == spec.n_classes
        assert ds.x_train.ndim == 4 and set(np.unique(ds.y_train)) <= set(range(spec.n_classes))
    assert load_dataset("digits").chance == pytest.approx(37 / 359, abs=0.01)


def test_registry_errors():
    with pytest.raises(ValueError, match="not one of"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="not options of data set 'digits'"):
        load_dataset("digits", n_train=5)
