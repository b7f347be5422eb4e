"""Tests for dwf_jax.data; every IDX file used here is written by the test itself."""

import gzip
import struct
import sys
import types

import numpy as np
import pytest
from tarfiles import write_image_folder_tar

from dwf_jax import data


def write_idx(path, array, compress=False):
    """Write `array` (uint8) as an IDX file, the format read_idx parses."""
    payload = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    payload += struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)
    return path


def write_mnist_dir(root, name="mnist", n_train=6, n_test=4):
    rng = np.random.default_rng(0)
    directory = root / name
    directory.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images_stem, labels_stem = data.IDX_FILES[split]
        write_idx(directory / f"{images_stem}.gz", rng.integers(0, 256, (n, 28, 28)), compress=True)
        write_idx(directory / labels_stem, rng.integers(0, 10, (n,)))  # raw: both forms accepted
    return directory


def test_iris_split_standardised_stratified_deterministic():
    ds = data.load_dataset("iris")
    assert ds.x_train.shape == (120, 4) and ds.x_test.shape == (30, 4)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 3
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1.0, atol=1e-5)
    assert np.bincount(ds.y_train).tolist() == [40, 40, 40]
    again = data.load_dataset("iris", source="offline")
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_test, again.y_test)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 3, 2)).astype(np.uint8)
    labels = rng.integers(0, 10, (5,)).astype(np.uint8)
    for arr, fname in ((images, "images.idx"), (labels, "labels.idx")):
        out = data.read_idx(write_idx(tmp_path / fname, arr, compress))
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, arr)


def test_read_idx_big_endian_int32(tmp_path):
    arr = np.array([[1, -2], [70000, 3]], dtype=">i4")
    path = tmp_path / "ints.idx"
    path.write_bytes(struct.pack(">BBBB2I", 0, 0, 0x0C, 2, 2, 2) + arr.tobytes())
    np.testing.assert_array_equal(data.read_idx(path), arr)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_truncated(tmp_path, compress):
    path = write_idx(tmp_path / "short.idx", np.zeros((5, 3, 2)), compress)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="short.idx"):
        data.read_idx(path)


def test_read_idx_bad_magic(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="bad magic"):
        data.read_idx(path)


def test_load_mnist_from_data_dir(tmp_path):
    directory = write_mnist_dir(tmp_path)
    ds = data.load_dataset("mnist", data_dir=str(tmp_path))
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_test.shape == (4, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.y_train.shape == (6,) and ds.y_test.shape == (4,)
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    assert ds.num_classes == 10
    assert str(directory) in ds.source


def test_mismatched_label_count(tmp_path):
    directory = write_mnist_dir(tmp_path)
    write_idx(directory / data.IDX_FILES["test"][1], np.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        data.load_dataset("mnist", data_dir=str(tmp_path), source="offline")


def test_env_var_honoured(tmp_path, monkeypatch):
    write_mnist_dir(tmp_path, name="fashion_mnist")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    ds = data.load_dataset("fashion_mnist", source="offline")
    assert ds.x_train.shape == (6, 28, 28, 1)


def test_missing_offline_message(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset("mnist", data_dir=str(tmp_path), source="offline")
    message = str(info.value)
    assert str(tmp_path / "mnist") in message
    assert "train-images-idx3-ubyte.gz" in message
    assert "DWF_DATA_DIR" in message


def test_missing_auto_without_tfds(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset("mnist")
    assert "tensorflow-datasets" in str(info.value) and "DWF_DATA_DIR" in str(info.value)
    with pytest.raises(data.DatasetNotFoundError):
        data.load_dataset("fashion_mnist", source="tfds")


def fake_tfds(calls):
    """Stand-in for tensorflow_datasets: tiny uint8 images, the iris features for iris."""
    from sklearn.datasets import load_iris

    def load(name, split, batch_size, as_supervised):
        calls.append((name, split, batch_size, as_supervised))
        if name == "iris":
            iris = load_iris()
            return iris.data.astype(np.float32), iris.target.astype(np.int64)
        return [(np.full((n, 28, 28, 1), 255, np.uint8), np.arange(n, dtype=np.int64)) for n in (3, 2)]

    def failing_load(*args, **kwargs):
        raise ConnectionError("no internet")

    def as_numpy(x):
        return x

    working = types.SimpleNamespace(load=load, as_numpy=as_numpy)
    return working, types.SimpleNamespace(load=failing_load, as_numpy=as_numpy)


def test_tfds_source(monkeypatch):
    calls = []
    working, failing = fake_tfds(calls)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", working)
    ds = data.load_dataset("mnist", source="tfds")
    assert calls == [("mnist", ["train", "test"], -1, True)]
    assert ds.x_train.shape == (3, 28, 28, 1) and ds.x_train.dtype == np.float32 and ds.x_train.max() == 1.0
    assert ds.y_test.dtype == np.int32 and ds.source == "tensorflow-datasets"
    iris = data.load_dataset("iris", source="tfds")
    assert iris.x_train.shape == (120, 4) and np.bincount(iris.y_train).tolist() == [40, 40, 40]
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", failing)
    with pytest.raises(data.DatasetNotFoundError, match="no internet"):
        data.load_dataset("mnist", source="tfds")


def test_unknown_name_or_source():
    with pytest.raises(ValueError, match="mnist"):
        data.load_dataset("svhn")
    with pytest.raises(ValueError, match="offline"):
        data.load_dataset("iris", source="internet")


def write_cifar10_tar(root):
    """A tiny CIFAR-10 JPEG copy at root/CIFAR10_TAR: two ships and a frog to train on, a dog to test."""
    path = root / data.CIFAR10_TAR
    path.parent.mkdir(parents=True)
    write_image_folder_tar(path, {"train": {"ship": 2, "frog": 1}, "test": {"dog": 1}})
    return path


def test_load_cifar10_from_jpeg_tar(tmp_path, monkeypatch):
    monkeypatch.setenv("DWF_CACHE_DIR", str(tmp_path / "cache"))
    path = write_cifar10_tar(tmp_path / "data")
    for _ in range(2):  # decode, then from the cache
        ds = data.load_dataset("cifar10", data_dir=str(tmp_path / "data"), source="offline")
        assert ds.x_train.shape == (3, 32, 32, 3) and ds.x_test.shape == (1, 32, 32, 3)
        assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
        assert ds.y_train.tolist() == [6, 8, 8] and ds.y_test.tolist() == [5]
        assert ds.num_classes == 10
        assert ds.source.startswith("CIFAR-10 (JPEG copy)") and str(path) in ds.source
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_missing_cifar10_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    for source in ("offline", "auto"):
        with pytest.raises(data.DatasetNotFoundError) as info:
            data.load_dataset("cifar10", data_dir=str(tmp_path), source=source)
        message = str(info.value)
        assert str(tmp_path / "cifar10_jpeg" / "cifar10_jpeg.tar.gz") in message
        assert "DWF_DATA_DIR" in message and "tensorflow-datasets" in message
        assert "idx" not in message.lower()


def test_cifar10_tfds_stays_uint8(monkeypatch):
    def load(name, split, batch_size, as_supervised):
        return [(np.full((n, 32, 32, 3), 255, np.uint8), np.arange(n, dtype=np.int64)) for n in (3, 2)]

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(load=load, as_numpy=lambda x: x))
    ds = data.load_dataset("cifar10", source="tfds")
    assert ds.x_train.dtype == np.uint8 and ds.x_train.max() == 255 and ds.y_test.dtype == np.int32
    assert ds.num_classes == 10 and ds.source == "tensorflow-datasets"
