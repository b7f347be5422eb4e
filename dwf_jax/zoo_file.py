"""A zoo on disk as one raw row-major (N, D) float32 file, read and written one model at a time.

Zoos of large models (100 ResNet-18s are 4.5 GB) need not fit in memory as a
stacked pytree: each stage reads the models it needs from such a file, and the
streaming dual PCA reads its column blocks (`ZooFile.columns`).
"""

import itertools
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
from jax.flatten_util import ravel_pytree

from dwf_jax.pca.streaming import Reader, memmap_reader, write_memmap

PyTree = Any


class ZooFile(NamedTuple):
    """Where a flattened zoo lies and its (N, D) shape."""

    path: pathlib.Path
    num_models: int
    dim: int

    def read(self, index: int) -> np.ndarray:
        """Model `index` as a (D,) float32 vector: one positioned read, nothing else of the file in memory."""
        if not 0 <= index < self.num_models:
            raise IndexError(f"model {index} is not in a zoo of {self.num_models}")
        row = np.fromfile(self.path, np.float32, count=self.dim, offset=index * self.dim * 4)
        if row.size != self.dim:
            raise ValueError(f"{self.path} is shorter than {self.num_models} x {self.dim} float32")
        return row

    def columns(self) -> Reader:
        """Column-block reader for `pca.fit_transform_dual_streaming`."""
        return memmap_reader(self.path, self.num_models, self.dim)


def write_zoo(path: str | os.PathLike, models: Iterable[PyTree]) -> ZooFile:
    """Flatten models (pytrees, `ravel_pytree` order) one at a time into a zoo file.

    The file is written beside its final name and renamed when complete, so a crash
    never leaves a zoo file that looks whole.
    """
    path = pathlib.Path(path)
    partial_path = path.with_name(path.name + ".partial")
    rows = (np.asarray(ravel_pytree(model)[0], np.float32) for model in models)
    first = next(rows, None)
    if first is None:
        raise ValueError("a zoo file needs at least one model")
    num_models = write_memmap(partial_path, itertools.chain([first], rows), first.size)
    os.replace(partial_path, path)
    return ZooFile(path, num_models, first.size)


def read_models(zoo: ZooFile, unflatten: Callable[[np.ndarray], PyTree], indices: Iterable[int] | None = None) -> Iterator[PyTree]:
    """Models of the zoo as pytrees (`unflatten` = `ravel_pytree(template)[1]`), one in memory at a time."""
    for index in range(zoo.num_models) if indices is None else indices:
        yield unflatten(zoo.read(index))
