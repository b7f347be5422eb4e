"""Tests for dwf_jax.image_folder on tiny tar.gz archives written by the tests themselves."""

import os

import numpy as np
import pytest
from tarfiles import write_image_folder_tar

from dwf_jax import image_folder


def test_read_shapes_labels_pixels(tmp_path):
    path = tmp_path / "tiny.tar.gz"
    sources = write_image_folder_tar(path)
    splits = image_folder.read_image_folder_tar(path)
    assert set(splits) == {"train", "test"}
    train_x, train_y = splits["train"]
    assert train_x.shape == (6, 32, 32, 3) and train_x.dtype == np.uint8
    assert train_y.dtype == np.int32
    # cat=3 before truck=9, whatever the folder order in the archive.
    assert train_y.tolist() == [3, 3, 3, 9, 9, 9]
    assert splits["test"][1].tolist() == [0, 3]
    expected = [sources[f"cifar10_jpeg/train/{c}/{i:04d}.jpg"] for c in ("cat", "truck") for i in range(3)]
    diff = np.abs(train_x.astype(np.int32) - np.stack(expected).astype(np.int32))
    assert diff.mean() < 10


def test_cache_written_reused_and_invalidated(tmp_path, monkeypatch):
    path = tmp_path / "tiny.tar.gz"
    write_image_folder_tar(path)
    cache_dir = tmp_path / "cache"
    first = image_folder.load_image_folder_tar(path, cache_dir)
    cached = image_folder.cache_path(path, cache_dir)
    assert os.path.isfile(cached) and os.path.dirname(cached) == str(cache_dir)
    assert not [f for f in os.listdir(cache_dir) if "dwf-tmp" in f]
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(cached).st_mode & 0o777 == 0o666 & ~umask, "the cache follows the umask"

    def fail(path):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(image_folder, "read_image_folder_tar", fail)
    second = image_folder.load_image_folder_tar(path, cache_dir)
    for split in ("train", "test"):
        np.testing.assert_array_equal(first[split][0], second[split][0])
        np.testing.assert_array_equal(first[split][1], second[split][1])
    monkeypatch.undo()

    write_image_folder_tar(path, layout={"train": {"dog": 2}, "test": {"dog": 1}}, seed=1)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse-mtime filesystems
    assert image_folder.cache_path(path, cache_dir) != cached
    changed = image_folder.load_image_folder_tar(path, cache_dir)
    assert changed["train"][1].tolist() == [5, 5]


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv(image_folder.CACHE_DIR_ENV, str(tmp_path / "env_cache"))
    path = tmp_path / "tiny.tar.gz"
    write_image_folder_tar(path)
    image_folder.load_image_folder_tar(path)
    assert os.listdir(tmp_path / "env_cache") == [os.path.basename(image_folder.cache_path(path))]


def test_corrupt_jpeg_names_member(tmp_path):
    path = tmp_path / "tiny.tar.gz"
    write_image_folder_tar(path, corrupt="cifar10_jpeg/train/cat/0001.jpg")
    with pytest.raises(ValueError, match="cifar10_jpeg/train/cat/0001.jpg"):
        image_folder.read_image_folder_tar(path)


@pytest.mark.parametrize("keep", [0.5, -4])  # mid-member, or only the gzip trailer's length field lost
def test_truncated_tar(tmp_path, keep):
    path = tmp_path / "tiny.tar.gz"
    write_image_folder_tar(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep) if keep > 0 else keep])
    with pytest.raises(ValueError, match="tiny.tar.gz: corrupt or truncated"):
        image_folder.read_image_folder_tar(path)


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"train": {"unicorn": 1}, "test": {"cat": 1}}, "unknown class folder 'unicorn'"),
        ({"train": {"cat": 1}, "valid": {"cat": 1}}, "unknown split 'valid'"),
        ({"train": {"cat": 1}}, "no images under <root>/test/"),
    ],
)
def test_bad_layout(tmp_path, layout, message):
    path = tmp_path / "tiny.tar.gz"
    write_image_folder_tar(path, layout=layout)
    with pytest.raises(ValueError, match=message):
        image_folder.read_image_folder_tar(path)
