"""Where a zoo's flattened (N, D) weights live: in memory or in a raw float32 file, behind one protocol.

Every stage reads a zoo through a `ZooStore`: one model (`read`), a group of
models (`rows`, `groups`) or a block of columns (`columns`, what the streamed
PCA and distances need). `MemoryZoo` wraps an array; `FileZoo` reads a raw
row-major float32 file a piece at a time, so a zoo larger than memory (100
ResNet-18s are 4.5 GB) never sits in RAM. Both are written from a stream of
models (`write_rows`), atomically and durably (`dwf_jax.durable`: every write
checked, a full disk one clear error). The pytree side lives here too: a
`Flattener` maps one model's variables to a row and back, `unstack` /
`concatenate` move between models and stacked zoos.
"""

import contextlib
import itertools
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from dwf_jax import durable

PyTree = Any
Reader = Callable[[int, int], np.ndarray]  # read_columns(start, stop) -> (rows, stop - start)


class ZooStore(Protocol):
    """A flattened zoo of `num_models` rows of `dim` float32 weights."""

    num_models: int
    dim: int

    def read(self, index: int) -> np.ndarray:
        """Model `index` as a (D,) vector."""

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Models start..stop-1 as a (stop - start, D) matrix."""

    def columns(self, start: int, stop: int) -> np.ndarray:
        """Weights start..stop-1 of every model, an (N, stop - start) block."""

    def as_array(self) -> np.ndarray:
        """The whole (N, D) matrix as an array (a read-only memory map for a file)."""


class MemoryZoo(NamedTuple):
    """A zoo held as one (N, D) array (numpy or jax)."""

    matrix: np.ndarray | jax.Array

    @property
    def num_models(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def read(self, index: int) -> np.ndarray:
        _check_index(index, self.num_models)
        return np.asarray(self.matrix[index], np.float32)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.matrix[start:stop], np.float32)

    def columns(self, start: int, stop: int) -> np.ndarray:
        return self.matrix[:, start:stop]

    def write_columns(self, start: int, values: np.ndarray) -> None:
        """Fill columns start.. of a numpy-backed zoo (a streamed output)."""
        self.matrix[:, start : start + values.shape[1]] = values

    def as_array(self) -> np.ndarray | jax.Array:
        return self.matrix


class FirstRows(NamedTuple):
    """The first `count` models of a store, read through it (the training part of a zoo with held-out models)."""

    store: ZooStore
    count: int

    @property
    def num_models(self) -> int:
        return self.count

    @property
    def dim(self) -> int:
        return self.store.dim

    def read(self, index: int) -> np.ndarray:
        _check_index(index, self.count)
        return self.store.read(index)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.store.rows(min(start, self.count), min(stop, self.count))

    def columns(self, start: int, stop: int) -> np.ndarray:
        return self.store.columns(start, stop)[: self.count]

    def as_array(self) -> np.ndarray | jax.Array:
        return self.store.as_array()[: self.count]


def first_rows(store: ZooStore, count: int) -> ZooStore:
    """The first `count` models of `store`: the store itself when that is all of them."""
    return store if count == store.num_models else FirstRows(store, count)


class FileZoo(NamedTuple):
    """A zoo as a raw row-major (N, D) float32 file, read with positioned reads.

    Reads go into fresh arrays rather than through a memory map: no page faults,
    and the file's pages never join this process's RSS.
    """

    path: pathlib.Path
    num_models: int
    dim: int

    @classmethod
    def create(cls, path: str | os.PathLike, num_models: int, dim: int) -> "FileZoo":
        """A zero-filled (sparse) zoo file, to be filled with `write_columns`; a new file, never through a link."""
        descriptor = durable.create(pathlib.Path(path))
        try:
            os.ftruncate(descriptor, num_models * dim * 4)
        finally:
            os.close(descriptor)
        return cls(pathlib.Path(path), num_models, dim)

    def read(self, index: int) -> np.ndarray:
        _check_index(index, self.num_models)
        return self.rows(index, index + 1)[0]

    def rows(self, start: int, stop: int) -> np.ndarray:
        count = (stop - start) * self.dim
        block = np.fromfile(self.path, np.float32, count=count, offset=start * self.dim * 4)
        if block.size != count:
            raise ValueError(f"{self.path} is shorter than {self.num_models} x {self.dim} float32")
        return block.reshape(stop - start, self.dim)

    def columns(self, start: int, stop: int) -> np.ndarray:
        block = np.empty((self.num_models, stop - start), np.float32)
        with open(self.path, "rb", buffering=0) as file:
            for row in range(self.num_models):
                file.seek((row * self.dim + start) * 4)
                if file.readinto(memoryview(block[row]).cast("B")) != block[row].nbytes:
                    raise ValueError(f"{self.path} is shorter than {self.num_models} x {self.dim} float32")
        return block

    def write_columns(self, start: int, values: np.ndarray) -> None:
        """Fill columns start.. with one checked write per row: the file's pages stay out of RSS."""
        values = np.ascontiguousarray(values, np.float32)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for row in range(self.num_models):
                os.lseek(descriptor, (row * self.dim + start) * 4, os.SEEK_SET)
                durable.write_all(descriptor, values[row].data, self.path)
        finally:
            os.close(descriptor)

    def as_array(self) -> np.memmap:
        """The whole file as a read-only memory map (for arrays indexed freely, e.g. PCA components)."""
        return np.memmap(self.path, np.float32, mode="r", shape=(self.num_models, self.dim))


def _check_index(index: int, num_models: int) -> None:
    if not 0 <= index < num_models:
        raise IndexError(f"model {index} is not in a zoo of {num_models}")


def open_file(path: str | os.PathLike, num_models: int, dim: int, in_memory: bool = False) -> ZooStore:
    """The (num_models, dim) zoo in `path`, read whole into a `MemoryZoo` or left on disk as a `FileZoo`.

    A missing file or one of another size raises FileNotFoundError / ValueError naming it.
    """
    path = pathlib.Path(path)
    expected = num_models * dim * 4
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    if path.stat().st_size != expected:
        raise ValueError(f"{path} has {path.stat().st_size} bytes, expected {num_models} x {dim} float32 ({expected})")
    if in_memory:
        return MemoryZoo(np.fromfile(path, np.float32).reshape(num_models, dim))
    return FileZoo(path, num_models, dim)


def as_store(matrix: np.ndarray | jax.Array) -> ZooStore:
    """A store over an (N, D) array: a `FileZoo` for a memmap of a whole zoo file (its pages stay out of RSS)."""
    whole_file = (
        isinstance(matrix, np.memmap)
        and matrix.offset == 0
        and matrix.dtype == np.float32
        and matrix.ndim == 2
        and matrix.flags.c_contiguous
        and matrix.nbytes == os.path.getsize(matrix.filename)
    )
    if whole_file:
        return FileZoo(pathlib.Path(matrix.filename), *matrix.shape)
    return MemoryZoo(matrix)


def write_rows(path: str | os.PathLike, rows: Iterable[np.ndarray]) -> FileZoo:
    """Write a stream of (D,) rows (one in memory at a time) as a zoo file.

    The file is written beside its final name, every write checked, and renamed
    when complete and fsync'ed, so neither a crash nor a full disk leaves a zoo
    file that looks whole.
    """
    path = pathlib.Path(path)
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        raise ValueError("a zoo file needs at least one model")
    dim = np.asarray(first).size
    num_rows = 0
    with durable.atomic_path(path) as temporary:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for row in itertools.chain([first], rows):
                row = np.ascontiguousarray(row, np.float32).reshape(-1)
                if row.size != dim:
                    raise ValueError(f"row {num_rows} has {row.size} weights, expected {dim}")
                durable.write_all(descriptor, row.data, path)
                num_rows += 1
            if os.fstat(descriptor).st_size != num_rows * dim * 4:
                raise durable.disk_full(path)
        finally:
            os.close(descriptor)
    return FileZoo(path, num_rows, dim)


@contextlib.contextmanager
def filled_by_columns(path: str | os.PathLike, num_models: int, dim: int) -> Iterator[FileZoo]:
    """A zero-filled zoo file to fill with `write_columns`, renamed to `path` only when the block ends cleanly."""
    path = pathlib.Path(path)
    with durable.atomic_path(path) as temporary:
        temporary.unlink()
        yield FileZoo.create(temporary, num_models, dim)


def groups(store: ZooStore, size: int) -> Iterator[np.ndarray]:
    """The zoo's rows in groups of `size` models (the last may be smaller)."""
    for start in range(0, store.num_models, size):
        yield store.rows(start, min(start + size, store.num_models))


def stacked_columns(*readers: Reader) -> Reader:
    """Column blocks of several readers stacked row-wise: one block carries all a streamed step needs."""
    return lambda start, stop: np.concatenate([np.asarray(read(start, stop), np.float32) for read in readers])


def map_column_blocks(
    step: Callable, read_columns: Reader, num_rows: int, dim: int, block: int
) -> Iterator[tuple[int, int, Any]]:
    """(start, stop, step(columns)) for each block of `block` columns, the last zero-padded (one compiled step for all).

    Each result is handed out once the next block is dispatched: the host reads a block
    while the device works on the one before, and at most two blocks are in flight.
    """
    block = min(block, dim)
    previous = None
    for start in range(0, dim, block):
        stop = min(start + block, dim)
        columns = jnp.asarray(read_columns(start, stop))
        if columns.shape != (num_rows, stop - start):
            raise ValueError(
                f"read_columns({start}, {stop}) gave shape {columns.shape}, expected {(num_rows, stop - start)}"
            )
        if stop - start < block:
            columns = jnp.pad(columns, ((0, 0), (0, block - (stop - start))))
        current = (start, stop, step(columns))
        if previous is not None:
            yield jax.block_until_ready(previous)
        previous = current
    yield jax.block_until_ready(previous)


class Flattener:
    """One architecture's variables <-> rows of `ravel_pytree` order."""

    def __init__(self, template: PyTree):
        """`template`: one model's variables, as arrays or `jax.ShapeDtypeStruct`s."""
        flat, self._unravel = ravel_pytree(jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), template))
        self.dim = int(flat.size)
        self._leaves = [(path[0], int(np.prod(leaf.shape))) for path, leaf in jax.tree.leaves_with_path(template)]

    def params_columns(self) -> slice:
        """The columns of the `params` collection, one range: rows follow the sorted collections (`batch_stats`
        before `params`), so the weight metrics can leave BatchNorm running statistics out."""
        leaves = [
            number
            for number, (collection, _) in enumerate(self._leaves)
            if collection == jax.tree_util.DictKey("params")
        ]
        if not leaves:
            raise ValueError("these variables have no `params` collection")
        offsets = np.cumsum([0] + [size for _, size in self._leaves])
        return slice(int(offsets[leaves[0]]), int(offsets[leaves[-1] + 1]))

    def flatten(self, variables: PyTree) -> np.ndarray:
        """One model's variables as a (D,) float32 row."""
        return np.asarray(ravel_pytree(variables)[0], np.float32)

    def unflatten(self, row: np.ndarray) -> PyTree:
        """One (D,) row as the model's variables."""
        return self._unravel(jnp.asarray(row))

    def unflatten_rows(self, matrix: np.ndarray | jax.Array) -> PyTree:
        """An (M, D) matrix as a stacked zoo (leading model axis)."""
        matrix = jnp.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise ValueError(
                f"expected an (N, {self.dim}) weight matrix for this architecture, got shape {matrix.shape}"
            )
        return jax.vmap(self._unravel)(matrix)

    def rows(self, stacked: PyTree) -> Iterator[np.ndarray]:
        """Each model of a stacked zoo as a row."""
        for index in range(num_stacked(stacked)):
            yield self.flatten(unstack(stacked, index))

    def models(self, store: ZooStore) -> Iterator[PyTree]:
        """Models of a store as variables, one in memory at a time."""
        for index in range(store.num_models):
            yield self.unflatten(store.read(index))

    def stacked_groups(self, store: ZooStore, size: int) -> Iterator[PyTree]:
        """The store's models as stacked zoos of `size` models."""
        for rows in groups(store, size):
            yield self.unflatten_rows(rows)


def num_stacked(stacked: PyTree) -> int:
    return len(jax.tree.leaves(stacked)[0])


def unstack(stacked: PyTree, index: int) -> PyTree:
    """Model `index` of a stacked zoo."""
    return jax.tree.map(lambda leaf: leaf[index], stacked)


def stack(models: Sequence[PyTree]) -> PyTree:
    """Single models (or per-model trees) as one stacked tree with a leading model axis, as numpy."""
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *models)


def concatenate(parts: Sequence[PyTree]) -> PyTree:
    """Stacked zoos (or stacked per-model results) joined along the model axis, as numpy."""
    return jax.tree.map(lambda *leaves: np.concatenate([np.asarray(leaf) for leaf in leaves]), *parts)


class NonFiniteWeights(FloatingPointError):
    """Some models of a zoo have NaN or Inf weights."""


def check_finite(stacked: PyTree, what: str, advice: str) -> None:
    """Raise naming the models (leading-axis indices) whose weights are not all finite."""
    leaves = [np.asarray(leaf).reshape(len(leaf), -1) for leaf in jax.tree.leaves(stacked)]
    finite = np.all([np.all(np.isfinite(leaf), axis=1) for leaf in leaves], axis=0)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise NonFiniteWeights(
            f"{what}: {len(bad)} of {len(finite)} models have NaN/Inf weights (indices {bad[:10].tolist()}). {advice}"
        )
