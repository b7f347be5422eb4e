"""Tiny CIFAR-10 style image-folder archives that tests write themselves."""

import io
import tarfile

import numpy as np
from PIL import Image

from dwf_jax.data import CIFAR10_TAR
from dwf_jax.image_folder import CIFAR10_CLASSES

# Folder order deliberately not CIFAR-10's, so labels must come from the class list.
LAYOUT = {"train": {"truck": 3, "cat": 3}, "test": {"cat": 1, "airplane": 1}}


def jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_image_folder_tar(path, layout=LAYOUT, seed=0, corrupt=None):
    """Write `<root>/<split>/<class>/<NNNN>.jpg` members; returns {member name: source pixels}."""
    rng = np.random.default_rng(seed)
    sources = {}
    with tarfile.open(path, "w:gz") as tar:
        for split, classes in layout.items():
            for class_name, count in classes.items():
                for i in reversed(range(count)):  # archive order differs from the sorted order too
                    name = f"cifar10_jpeg/{split}/{class_name}/{i:04d}.jpg"
                    # Smooth images survive JPEG well; noise would not.
                    image = np.kron(rng.integers(0, 256, (2, 2, 3)), np.ones((16, 16, 1))).astype(np.uint8)
                    payload = b"not a jpeg at all" if name == corrupt else jpeg_bytes(image)
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                    sources[name] = image
    return sources


def write_tiny_cifar10(root):
    """A data dir under `root` holding a CIFAR-10 archive of every class (8 train, 2 test images each); returns it."""
    data_dir = root / "data"
    (data_dir / CIFAR10_TAR).parent.mkdir(parents=True)
    write_image_folder_tar(
        data_dir / CIFAR10_TAR,
        {"train": {name: 8 for name in CIFAR10_CLASSES}, "test": {name: 2 for name in CIFAR10_CLASSES}},
    )
    return data_dir
