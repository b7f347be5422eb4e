"""Read an image-folder tar.gz (`<root>/<split>/<class>/<file>.jpg`), such as the offline CIFAR-10 copy.

Labels come from the fixed CIFAR-10 class list, never from archive order, so
they match every other CIFAR-10 source. Decoding 60k JPEGs takes a while, so
`load_image_folder_tar` keeps the decoded arrays in a cache directory (not
next to the data, which may be read-only), keyed by the tar's path, size and
mtime so a replaced tar is decoded again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pathlib
import tarfile
import zipfile
import zlib

import numpy as np
from PIL import Image

from dwf_jax import durable

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
CACHE_DIR_ENV = "DWF_CACHE_DIR"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "dwf_jax")
_CACHE_VERSION = 1  # bump when the cached layout or decoding changes

Splits = dict[str, tuple[np.ndarray, np.ndarray]]


def read_image_folder_tar(path: str | os.PathLike) -> Splits:
    """Decode every image of the tar into {split: (uint8 (N, H, W, 3), int32 labels)}.

    The tar is streamed member by member, so memory holds the decoded pixels
    but never the whole archive. Images are ordered by class index, then file name.
    """
    found: dict[str, list[tuple[int, str, np.ndarray]]] = {split: [] for split in SPLITS}
    shape = None
    name = "<archive header>"
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = member.name
                if member.isdir():
                    continue
                split, label = _parse_member(path, member)
                image = _decode(path, name, tar.extractfile(member).read())
                if shape is None:
                    shape = image.shape
                elif image.shape != shape:
                    raise ValueError(f"{path}: member {name} has shape {image.shape}, expected {shape} like the others")
                found[split].append((label, os.path.basename(name), image))
            name = "<end of archive>"
            while tar.fileobj.read(1 << 20):  # read to the gzip trailer so its CRC and length are checked
                pass
    except FileNotFoundError:
        raise  # a missing tar is not a corrupt one
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise ValueError(f"{path}: corrupt or truncated tar.gz at member {name} ({type(e).__name__}: {e})") from e
    splits = {}
    for split, items in found.items():
        if not items:
            raise ValueError(f"{path}: no images under <root>/{split}/")
        items.sort(key=lambda item: item[:2])
        images = np.stack([image for _, _, image in items])
        labels = np.array([label for label, _, _ in items], np.int32)
        splits[split] = images, labels
    return splits


def _parse_member(path: str | os.PathLike, member: tarfile.TarInfo) -> tuple[str, int]:
    """(split, label) of a file member; anything off the expected layout is an error, not silently skipped."""
    parts = member.name.split("/")
    if not member.isfile() or len(parts) != 4:
        raise ValueError(f"{path}: unexpected member {member.name}; expected files <root>/<split>/<class>/<image>")
    _, split, class_name, _ = parts
    if split not in SPLITS:
        raise ValueError(f"{path}: member {member.name} is in unknown split {split!r}; expected one of {SPLITS}")
    if class_name not in CIFAR10_CLASSES:
        raise ValueError(
            f"{path}: member {member.name} is in unknown class folder {class_name!r}; "
            f"expected one of {', '.join(CIFAR10_CLASSES)}"
        )
    return split, CIFAR10_CLASSES.index(class_name)


def _decode(path: str | os.PathLike, name: str, raw: bytes) -> np.ndarray:
    """JPEG (or any Pillow format) bytes -> uint8 (H, W, 3); a bad image names its member."""
    try:
        with Image.open(io.BytesIO(raw)) as image:
            return np.asarray(image.convert("RGB"), np.uint8)
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for corrupt or truncated images
        raise ValueError(f"{path}: cannot decode image member {name} ({type(e).__name__}: {e})") from e


def cache_path(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """Where the decoded arrays of `path` are cached: its name plus a hash of its path, size and mtime."""
    cache_dir = cache_dir or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
    stat = os.stat(path)
    key = f"{_CACHE_VERSION}|{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    stem = os.path.basename(os.fspath(path)).split(".")[0]
    return os.path.join(os.path.expanduser(cache_dir), f"{stem}-{digest}.npz")


def load_image_folder_tar(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Splits:
    """`read_image_folder_tar`, cached in `cache_dir` (else $DWF_CACHE_DIR, else ~/.cache/dwf_jax)."""
    cached = cache_path(path, cache_dir)
    splits = _read_cache(cached)
    if splits is not None:
        return splits
    splits = read_image_folder_tar(path)
    try:
        _write_cache(cached, splits)
    except OSError as e:  # a read-only or full cache dir costs time, not correctness
        logging.warning("could not cache decoded %s at %s: %s", path, cached, e)
    return splits


def _read_cache(cached: str) -> Splits | None:
    """The cached splits, or None when absent or unreadable (then we decode again)."""
    if not os.path.isfile(cached):
        return None
    try:
        with np.load(cached) as f:
            return {split: (f[f"{split}_images"], f[f"{split}_labels"]) for split in SPLITS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        logging.warning("ignoring unreadable cache %s: %s", cached, e)
        return None


def _write_cache(cached: str, splits: Splits) -> None:
    """Write under a temporary name and rename, so readers never see a half-written cache."""
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    arrays = {f"{split}_images": images for split, (images, _) in splits.items()}
    arrays.update({f"{split}_labels": labels for split, (_, labels) in splits.items()})
    with durable.atomic_path(pathlib.Path(cached)) as temporary, open(temporary, "wb") as file:
        np.savez(file, **arrays)
