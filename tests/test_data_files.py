"""The data sets read from files: each format written here byte by byte, read back through
``load_dataset``; malformed files raise ValueError naming the file; the downloader checks
SHA-256 sums (exercised offline through file:// URLs)."""
import gzip
import hashlib

import numpy as np
import pytest

from ssm_ref import data_files
from ssm_ref.data import DATASETS, load_dataset


def idx_bytes(arr):
    """An IDX file of unsigned bytes, written from the format's definition."""
    arr = np.asarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return head + arr.tobytes()


def write_mnist(root, rng, n_train=7, n_test=5, gz=True):
    sets = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        for stem, arr in ((f"{split}-images-idx3-ubyte", x), (f"{split}-labels-idx1-ubyte", y)):
            raw = idx_bytes(arr)
            if gz:
                (root / (stem + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (root / stem).write_bytes(raw)
        sets[split] = (x, y)
    return sets


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_sets_read_back(tmp_path, rng, name, gz):
    sets = write_mnist(tmp_path, rng, gz=gz)
    ds = load_dataset(name, root=tmp_path)
    assert ds.x_train.shape == (7, 28, 28, 1) and ds.x_test.shape == (5, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train[..., 0] * 255, sets["train"][0].astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, sets["t10k"][1])
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.n_classes == 10 and ds.options["root"] == str(tmp_path)


def test_first_n_in_file_order(tmp_path, rng):
    sets = write_mnist(tmp_path, rng)
    ds = load_dataset("mnist", root=tmp_path, n_train=3, n_test=2, dtype=np.float64)
    np.testing.assert_array_equal(ds.y_train, sets["train"][1][:3])
    assert ds.x_test.shape == (2, 28, 28, 1) and ds.x_test.dtype == np.float64
    with pytest.raises(ValueError, match="n_train = 8 but the split has only 7"):
        load_dataset("mnist", root=tmp_path, n_train=8)


def cifar_records(rng, n):
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=n, dtype=np.uint8)
    rec = np.empty((n, 3073), np.uint8)
    rec[:, 0] = y
    for i in range(n):  # the format: label, then the R, G and B planes, each row-major
        rec[i, 1:] = np.concatenate([x[i, :, :, c].ravel() for c in range(3)])
    return x, y, rec.tobytes()


@pytest.mark.parametrize("nested", [True, False])
def test_cifar10_binary(tmp_path, rng, nested):
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    folder.mkdir(exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y, raw = cifar_records(rng, 2)
        (folder / f"data_batch_{i}.bin").write_bytes(raw)
        xs.append(x)
        ys.append(y)
    xt, yt, raw = cifar_records(rng, 3)
    (folder / "test_batch.bin").write_bytes(raw)
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.x_train.shape == (10, 32, 32, 3) and ds.image_shape == (32, 32, 3)
    np.testing.assert_array_equal(np.rint(ds.x_train * 255).astype(np.uint8), np.concatenate(xs))
    np.testing.assert_array_equal(ds.y_train, np.concatenate(ys))  # file order
    np.testing.assert_array_equal(np.rint(ds.x_test * 255).astype(np.uint8), xt)
    np.testing.assert_array_equal(ds.y_test, yt)


def write_png_folder(root, rng, classes=("cat", "ant", "bee"), per_class=5, size=(6, 4)):
    from PIL import Image
    truth = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            a = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
            Image.fromarray(a).save(root / c / f"{k:02d}.png")
            truth[(c, k)] = a
    return truth


def test_image_folder_classes_sorted_and_split(tmp_path, rng):
    pytest.importorskip("PIL", reason="the image-folder reader needs Pillow (experiments extra)")
    truth = write_png_folder(tmp_path, rng)
    x, y, classes = data_files.read_image_folder(tmp_path)
    assert classes == ["ant", "bee", "cat"]
    np.testing.assert_array_equal(x[0], truth[("ant", 0)])  # PNG is lossless
    np.testing.assert_array_equal(y, np.repeat([0, 1, 2], 5))
    ds = load_dataset("imagefolder", root=tmp_path, test_fraction=0.4, seed=1)
    assert ds.n_classes == 3 and len(ds.x_train) + len(ds.x_test) == 15
    assert sorted(np.bincount(ds.y_test)) == [2, 2, 2]  # stratified


def test_image_folder_train_test_folders(tmp_path, rng):
    pytest.importorskip("PIL", reason="the image-folder reader needs Pillow (experiments extra)")
    write_png_folder(tmp_path / "train", rng, per_class=2)
    write_png_folder(tmp_path / "test", rng, per_class=1)
    ds = load_dataset("imagefolder", root=tmp_path)
    assert len(ds.x_train) == 6 and len(ds.x_test) == 3 and ds.image_shape == (6, 4, 3)


def test_image_folder_refuses_mixed_sizes(tmp_path, rng):
    pytest.importorskip("PIL", reason="the image-folder reader needs Pillow (experiments extra)")
    from PIL import Image
    write_png_folder(tmp_path, rng, per_class=1)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "cat" / "zz.png")
    with pytest.raises(ValueError, match=r"zz.png has shape \(5, 5, 1\)"):
        data_files.read_image_folder(tmp_path)


# --------------------------------------------------------------------------- bad files
def test_missing_root_and_files(tmp_path, rng):
    with pytest.raises(ValueError, match="pass root=DIR"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="missing file .*train-images-idx3-ubyte.*IDX files"):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(ValueError, match="missing file .*data_batch_1.bin.*binary version"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_dataset("imagefolder", root=tmp_path)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-10], "holds 774 data bytes but its header says shape"),
    (lambda raw: b"\x00\x00\x09\x03" + raw[4:], r"not an IDX file of unsigned bytes"),
    (lambda raw: raw[:6], "truncated inside its header"),
])
def test_corrupted_idx(tmp_path, rng, damage, message):
    write_mnist(tmp_path, rng, n_train=1, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(ValueError, match=message) as exc:
        load_dataset("mnist", root=tmp_path)
    assert "train-images-idx3-ubyte" in str(exc.value)


def test_corrupted_gzip_and_count_mismatch(tmp_path, rng):
    write_mnist(tmp_path, rng)
    good = (tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(good[:12])
    with pytest.raises(ValueError, match="cannot read IDX file .*t10k-labels"):
        load_dataset("mnist", root=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(4))))
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        load_dataset("mnist", root=tmp_path)


def test_corrupted_cifar(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(b"\x01" * 3000)
    with pytest.raises(ValueError, match="3000 bytes, not a positive multiple of the 3073"):
        load_dataset("cifar10", root=tmp_path)
    (tmp_path / "data_batch_1.bin").write_bytes(b"\x0c" + b"\x00" * 3072)
    with pytest.raises(ValueError, match="label 12; CIFAR-10 labels are 0..9"):
        load_dataset("cifar10", root=tmp_path)


# --------------------------------------------------------------------------- download
def test_download_checks_sha256(tmp_path, rng, monkeypatch):
    server = tmp_path / "server"
    server.mkdir()
    write_mnist(server, rng)
    files = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in server.iterdir()}
    monkeypatch.setitem(data_files.SOURCES, "mnist",
                        data_files.Source(server.as_uri() + "/", files))
    root = tmp_path / "data"
    ds = load_dataset("mnist", root=root, download=True)
    assert ds.x_train.shape == (7, 28, 28, 1)
    assert not list(root.glob("*.part"))  # no temporary left behind
    # a corrupted local copy is reported, not silently used or replaced
    (root / "train-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz has SHA-256 .* expected"):
        load_dataset("mnist", root=root, download=True)
    # a server file that does not match its published sum is refused and deleted
    bad = dict(files, **{"t10k-labels-idx1-ubyte.gz": "0" * 64})
    monkeypatch.setitem(data_files.SOURCES, "mnist", data_files.Source(server.as_uri() + "/", bad))
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="downloaded .*t10k-labels-idx1-ubyte.gz has SHA-256"):
        data_files.download("mnist", fresh, progress=False)
    assert not (fresh / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list(fresh.glob("*.part"))


def test_download_and_unpack_cifar(tmp_path, rng, monkeypatch):
    import io
    import tarfile
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for n in names + ["../evil.bin"]:
            raw = cifar_records(rng, 1)[2]
            info = tarfile.TarInfo(n if n.startswith("..") else f"cifar-10-batches-bin/{n}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(data_files.SOURCES, "cifar10",
                        data_files.Source(tmp_path.as_uri() + "/",
                                          {"cifar-10-binary.tar.gz": sha}))
    root = tmp_path / "data"
    ds = load_dataset("cifar10", root=root, download=True)
    assert ds.x_train.shape == (5, 32, 32, 3)
    assert not (tmp_path / "evil.bin").exists()  # members outside the layout are not written


def test_every_file_set_is_registered_with_a_source_or_a_folder():
    for name in ("mnist", "fashion-mnist", "cifar10"):
        assert name in DATASETS and name in data_files.SOURCES
        assert all(len(s) == 64 for s in data_files.SOURCES[name].files.values())
    assert "imagefolder" in DATASETS
    with pytest.raises(ValueError, match="cannot be downloaded"):
        load_dataset("imagefolder", root="/nonexistent", download=True)


def test_write_cifar10_batch_is_the_format(tmp_path, rng):
    x, y, raw = cifar_records(rng, 3)
    data_files.write_cifar10_batch(tmp_path / "b.bin", x, y)
    assert (tmp_path / "b.bin").read_bytes() == raw  # byte for byte the format written above
    with pytest.raises(ValueError, match=r"images has shape \(3, 32, 32\)"):
        data_files.write_cifar10_batch(tmp_path / "c.bin", x[..., 0], y)
    with pytest.raises(ValueError, match="labels has shape"):
        data_files.write_cifar10_batch(tmp_path / "c.bin", x, y + 10)
