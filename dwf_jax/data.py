"""Datasets the model zoos are trained on.

Iris ships inside scikit-learn. MNIST and Fashion-MNIST come from a directory of
the standard IDX files (for machines without internet) or from
tensorflow-datasets; CIFAR-10 from a tar.gz of JPEGs (see image_folder.py) or
tensorflow-datasets; the text regression sets for BERT from text.py. Loading
never falls back to synthetic data: if no real copy is found,
`DatasetNotFoundError` says where we looked and how to fix it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import zlib
from typing import Any

import numpy as np

DATA_DIR_ENV = "DWF_DATA_DIR"
# Model outputs per dataset: classes, or 1 for the regression sets (a score per example).
NUM_CLASSES = {"iris": 3, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "vader_sentiment": 1, "yelp": 1}
TEXT_DATASETS = ("vader_sentiment", "yelp")  # token ids with a real-valued score; for BERT
DATASETS = tuple(NUM_CLASSES)
SOURCES = ("auto", "offline", "tfds")
# Kept uint8 (4x smaller on host and in transfer); augment.input_pipeline normalises them on device.
UINT8_DATASETS = ("cifar10",)
# The offline CIFAR-10 copy, relative to the data dir. It is re-encoded as JPEG (lossy),
# so results on it are labelled "CIFAR-10 (JPEG copy)".
CIFAR10_TAR = os.path.join("cifar10_jpeg", "cifar10_jpeg.tar.gz")

# Standard file names of the MNIST-style IDX distribution, per split.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class DatasetNotFoundError(FileNotFoundError):
    """No real copy of a dataset was found in any of the places looked."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A train/test split: float32 inputs (uint8 images for UINT8_DATASETS, int32 token ids for TEXT_DATASETS),
    int32 labels (float32 scores for regression)."""

    name: str
    x_train: np.ndarray  # images (N, H, W, C) or tabular (N, F)
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str  # where the data came from, so results can state provenance
    regression: bool = False  # labels are scores: the zoo minimises squared error, evaluation is Spearman's rho

    def fingerprint(self) -> str:
        """sha256 of the arrays: the identity of the data, wherever it was read from."""
        digest = hashlib.sha256(self.name.encode())
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).data)
        return digest.hexdigest()


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Labels must index the model's outputs; one outside [0, num_classes) would train silently to nonsense."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise ValueError(
            f"{where}: {len(bad)} labels outside 0..{num_classes - 1} "
            f"(first at index {bad[0]}: {labels[bad[0]]}); is this really the dataset it is named as?"
        )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzipped or raw, detected by magic bytes) into a native-endian array."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(_GZIP_MAGIC):
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"IDX file {path}: corrupt or truncated gzip data ({e})") from e
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise ValueError(f"IDX file {path}: bad magic {raw[:4]!r}, expected two zero bytes, dtype code, ndim")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"IDX file {path}: unknown dtype code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path}: header expected {header} bytes, got {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        raise ValueError(f"IDX file {path}: shape {shape} needs {expected} data bytes, got {got}")
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # copy: writable and native-endian


def load_dataset(
    name: str, data_dir: str | None = None, source: str = "auto", max_tokens: int = 128, vocab_size: int = 8192
) -> Dataset:
    """Load `name` from scikit-learn (iris), an IDX directory, a JPEG tar, tensorflow-datasets, or text.py.

    `data_dir` (else $DWF_DATA_DIR) holds `<name>/` with the four IDX files, CIFAR10_TAR, or text.VADER_ARCHIVE.
    source="auto" prefers local copies and falls back to tensorflow-datasets. Text is cut to
    `max_tokens`; the offline text set learns a WordPiece vocabulary of `vocab_size` tokens.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid sources: {', '.join(SOURCES)}")
    if source == "tfds" and name not in TEXT_DATASETS:
        try:
            return _load_tfds(name)
        except DatasetNotFoundError as e:
            raise DatasetNotFoundError(_not_found_message(name, [str(e)])) from e
    if name == "iris":
        return _load_iris_sklearn()
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or None
    if name in TEXT_DATASETS:
        return _load_text(name, data_dir, source, max_tokens, vocab_size)
    if data_dir is None:
        kind = "CIFAR-10 JPEG tar" if name == "cifar10" else "IDX directory"
        looked = [f"{kind}: none given (no data_dir argument and ${DATA_DIR_ENV} is not set)"]
    elif name == "cifar10":
        tar_path = os.path.join(data_dir, CIFAR10_TAR)
        if os.path.isfile(tar_path):
            return _load_cifar10_tar(tar_path)
        looked = [f"CIFAR-10 JPEG tar {tar_path}: no such file"]
    else:
        directory = os.path.join(data_dir, name)
        missing = [stem for stem in _idx_stems() if _idx_path(directory, stem) is None]
        if not missing:
            return _load_idx_dir(name, directory)
        looked = [f"IDX directory {directory}: missing " + ", ".join(f"{s}.gz (or {s})" for s in missing)]
    if source == "auto":
        try:
            return _load_tfds(name)
        except DatasetNotFoundError as e:
            looked.append(str(e))
    raise DatasetNotFoundError(_not_found_message(name, looked))


def load_configured(data: Any) -> Dataset:
    """The dataset a config's `data` section names, read the way it says."""
    return load_dataset(data.name, data.dir, data.source, data.max_tokens, data.vocab_size)


def _not_found_message(name: str, looked: list[str]) -> str:
    if name == "cifar10":
        files = f"the JPEG copy at DIR/{CIFAR10_TAR} (a tar.gz of cifar10_jpeg/{{train,test}}/<class>/*.jpg)"
    else:
        idx = ", ".join(f"DIR/{name}/{stem}.gz" for stem in _idx_stems())
        files = f"the IDX files ({idx}; uncompressed also accepted)"
    return (
        f"dataset {name!r} not found. Looked in:\n"
        + "".join(f"  - {place}\n" for place in looked)
        + "To fix, either:\n"
        f"  - put {files} and pass "
        f"--config.data.dir=DIR or `export {DATA_DIR_ENV}=DIR` (source 'auto' or 'offline'), or\n"
        "  - `pip install .[tfds]` on a machine with internet so tensorflow-datasets can download it."
    )


def _idx_stems() -> list[str]:
    return [stem for split in IDX_FILES.values() for stem in split]


def _idx_path(directory: str, stem: str) -> str | None:
    """The gzipped file if present, else the raw one, else None."""
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _load_idx_dir(name: str, directory: str) -> Dataset:
    splits = {}
    for split, (images_stem, labels_stem) in IDX_FILES.items():
        images_path = _idx_path(directory, images_stem)
        labels_path = _idx_path(directory, labels_stem)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{labels_path}: expected {len(images)} labels to match {images_path}, got shape {labels.shape}"
            )
        check_labels(labels, NUM_CLASSES[name], labels_path)
        splits[split] = _scale_images(images[..., None]), labels.astype(np.int32)
    return Dataset(
        name, *splits["train"], *splits["test"], num_classes=NUM_CLASSES[name], source=f"IDX files in {directory}"
    )


def _load_cifar10_tar(tar_path: str) -> Dataset:
    from dwf_jax.image_folder import CIFAR10_CLASSES, load_image_folder_tar  # Pillow only when needed

    splits = load_image_folder_tar(tar_path)
    for images, _ in splits.values():
        if images.shape[1:] != (32, 32, 3):
            raise ValueError(f"{tar_path}: expected 32x32 RGB CIFAR-10 images, got shape {images.shape[1:]}")
    return Dataset(
        "cifar10",
        *splits["train"],
        *splits["test"],
        num_classes=len(CIFAR10_CLASSES),
        source=f"CIFAR-10 (JPEG copy) from {tar_path}",
    )


def _load_text(name: str, data_dir: str | None, source: str, max_tokens: int, vocab_size: int) -> Dataset:
    from dwf_jax import text  # tokenizers only when needed

    if name == "yelp":
        if source == "offline":
            raise DatasetNotFoundError("dataset 'yelp' has no offline copy; offline, use data.name=vader_sentiment")
        try:
            splits = text.yelp_splits(max_tokens)
        except Exception as error:  # no package, no network, no hub: one message for all
            raise DatasetNotFoundError(
                f"dataset 'yelp' needs internet and `pip install datasets` ({type(error).__name__}: {error}); "
                "offline, use data.name=vader_sentiment"
            ) from error
        return Dataset(name, *splits, num_classes=1, source=text.YELP_SOURCE, regression=True)
    if source == "tfds":
        raise DatasetNotFoundError("dataset 'vader_sentiment' has no tensorflow-datasets copy; use source 'auto'")
    archive = os.path.join(data_dir, text.VADER_ARCHIVE) if data_dir else None
    if archive is None or not os.path.isfile(archive):
        where = archive or f"no data dir (no data_dir argument and ${DATA_DIR_ENV} is not set)"
        raise DatasetNotFoundError(
            f"dataset 'vader_sentiment' not found: {where}. It ships on PyPI inside the vaderSentiment source "
            f"archive; with DIR as the data dir run `{text.vader_download_hint('DIR')}` and pass --config.data.dir=DIR"
        )
    splits = text.vader_splits(archive, max_tokens, vocab_size)
    source = f"VADER rated sentences (Hutto & Gilbert 2014) from {archive}"
    return Dataset(name, *splits, num_classes=1, source=source, regression=True)


def _scale_images(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]; no other normalisation so every source agrees."""
    return images.astype(np.float32) / np.float32(255.0)


def _load_iris_sklearn() -> Dataset:
    from sklearn.datasets import load_iris

    iris = load_iris()
    return _split_iris(iris.data, iris.target, source="scikit-learn bundled copy")


def _split_iris(x: np.ndarray, y: np.ndarray, source: str) -> Dataset:
    """Stratified 80/20 split, standardised with train statistics only (no test leakage)."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        np.asarray(x, np.float64), np.asarray(y), test_size=0.2, stratify=y, random_state=42
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    return Dataset(
        "iris",
        ((x_train - mean) / std).astype(np.float32),
        y_train.astype(np.int32),
        ((x_test - mean) / std).astype(np.float32),
        y_test.astype(np.int32),
        num_classes=3,
        source=source,
    )


def _load_tfds(name: str) -> Dataset:
    """Load through tensorflow-datasets; any failure becomes DatasetNotFoundError."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DatasetNotFoundError(f"tensorflow-datasets: not installed ({e})") from e
    kwargs = dict(batch_size=-1, as_supervised=True)
    try:
        if name == "iris":  # tfds has only a train split for iris
            x, y = tfds.as_numpy(tfds.load(name, split="train", **kwargs))
            return _split_iris(x, y, source="tensorflow-datasets")
        (x_train, y_train), (x_test, y_test) = tfds.as_numpy(tfds.load(name, split=["train", "test"], **kwargs))
    # tfds and TensorFlow raise many error types (network, checksum, missing builder).
    except Exception as e:  # noqa: BLE001
        raise DatasetNotFoundError(f"tensorflow-datasets: could not load {name!r} ({type(e).__name__}: {e})") from e
    scale = np.asarray if name in UINT8_DATASETS else _scale_images
    check_labels(y_train, NUM_CLASSES[name], f"tensorflow-datasets {name} train")
    check_labels(y_test, NUM_CLASSES[name], f"tensorflow-datasets {name} test")
    return Dataset(
        name,
        scale(x_train),
        y_train.astype(np.int32),
        scale(x_test),
        y_test.astype(np.int32),
        num_classes=NUM_CLASSES[name],
        source="tensorflow-datasets",
    )
