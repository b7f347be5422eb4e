"""Dual PCA of a zoo streamed in column blocks: memory set by the block, not by N x D.

The Gram matrix of the centred zoo is a sum over column blocks, and each block is
centred by its own column means, so pass 1 reads `micro_batch` columns at a time,
keeps their means and adds Xc_b Xc_b^T to the N x N Gram matrix. Pass 2 reads the
blocks again and writes components[:, b] = V^T Xc_b / sqrt(lambda). Peak memory is a
few N x micro_batch blocks, the (D,) mean and the (k, D) output, which can be a file.
"""

import os
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dwf_jax.pca.dual import PCAState, randomized_top_eigenpairs, top_eigenpairs

Reader = Callable[[int, int], np.ndarray]  # read_columns(start, stop) -> (N, stop - start)
SOLVERS = ("eigh", "randomized")


def array_reader(weights: np.ndarray | jax.Array) -> Reader:
    """Column blocks of an in-memory (N, D) zoo (numpy, memmap or jax)."""
    return lambda start, stop: weights[:, start:stop]


def memmap_reader(path: str | os.PathLike, num_models: int, dim: int, dtype: np.dtype = np.float32) -> Reader:
    """Column blocks of a raw row-major (N, D) file, the layout np.memmap and `write_memmap` use.

    Each block is read with one positioned read per model into a fresh array rather than
    through a map: no page faults, and the file's pages never join this process's RSS.
    """
    itemsize = np.dtype(dtype).itemsize

    def read(start: int, stop: int) -> np.ndarray:
        block = np.empty((num_models, stop - start), dtype)
        with open(path, "rb", buffering=0) as file:
            for row in range(num_models):
                file.seek((row * dim + start) * itemsize)
                if file.readinto(memoryview(block[row]).cast("B")) != block[row].nbytes:
                    raise ValueError(f"{path} is shorter than {num_models} x {dim} {np.dtype(dtype).name}")
        return block

    return read


def write_memmap(path: str | os.PathLike, rows: Iterable[np.ndarray], dim: int, dtype: np.dtype = np.float32) -> int:
    """Write a zoo row by row (one model in memory at a time) as a raw (N, D) file; return N."""
    num_rows = 0
    with open(path, "wb") as file:
        for row in rows:
            row = np.asarray(row, dtype).reshape(-1)
            if row.size != dim:
                raise ValueError(f"row {num_rows} has {row.size} weights, expected {dim}")
            row.tofile(file)
            num_rows += 1
    return num_rows


def _centre(block: jax.Array) -> tuple[jax.Array, jax.Array]:
    block = block.astype(jnp.float32)
    mean = jnp.mean(block, axis=0)
    return block - mean, mean


@partial(jax.jit, static_argnames="fp16")
def _block_gram(block: jax.Array, fp16: bool) -> tuple[jax.Array, jax.Array]:
    """This block's share Xc_b Xc_b^T of the Gram matrix (fp16 operands, fp32 sums) and its column means."""
    centred, mean = _centre(block)
    operand = centred.astype(jnp.float16) if fp16 else centred
    return jnp.matmul(operand, operand.T, preferred_element_type=jnp.float32), mean


@partial(jax.jit, static_argnames="fp16")
def _project(eigenvectors: jax.Array, eigenvalues: jax.Array, block: jax.Array, fp16: bool) -> jax.Array:
    """This block's columns of the components, V^T Xc_b / sqrt(lambda)."""
    centred, _ = _centre(block)
    dtype = jnp.float16 if fp16 else jnp.float32
    product = jnp.matmul(eigenvectors.T.astype(dtype), centred.astype(dtype), preferred_element_type=jnp.float32)
    return product / jnp.sqrt(eigenvalues)[:, None]


def _map_blocks(step: Callable, read_columns: Reader, num_models: int, dim: int, micro_batch: int) -> Iterator[tuple[int, int, Any]]:
    """(start, stop, step(block)) for each column block, the last zero-padded so one compiled step serves all.

    Each result is handed out once the next block is dispatched: the host reads a block
    while the device works on the one before, and at most two blocks are in flight.
    """
    previous = None
    for start in range(0, dim, micro_batch):
        stop = min(start + micro_batch, dim)
        block = jnp.asarray(read_columns(start, stop))
        if block.shape != (num_models, stop - start):
            raise ValueError(f"read_columns({start}, {stop}) gave shape {block.shape}, expected {(num_models, stop - start)}")
        if stop - start < micro_batch:
            block = jnp.pad(block, ((0, 0), (0, micro_batch - (stop - start))))
        current = (start, stop, step(block))
        if previous is not None:
            yield jax.block_until_ready(previous)
        previous = current
    yield jax.block_until_ready(previous)


def _output(num_components: int, dim: int, path: str | os.PathLike | None) -> tuple[Callable[[int, np.ndarray], None], Callable[[], np.ndarray]]:
    """Writer of column blocks into the (k, D) components and the getter of the result (a read-only memmap for a path)."""
    if path is None:
        out = np.empty((num_components, dim), np.float32)

        def write(start: int, values: np.ndarray) -> None:
            out[:, start : start + values.shape[1]] = values

        return write, lambda: out

    np.memmap(path, np.float32, mode="w+", shape=(num_components, dim)).flush()

    def write_file(start: int, values: np.ndarray) -> None:
        """One positioned write per component row: the output's pages stay out of this process's RSS."""
        values = np.ascontiguousarray(values, np.float32)
        with open(path, "r+b", buffering=0) as file:
            for row in range(num_components):
                file.seek((row * dim + start) * 4)
                values[row].tofile(file)

    return write_file, lambda: np.memmap(path, np.float32, mode="r", shape=(num_components, dim))


def fit_dual_streaming(
    read_columns: Reader,
    num_models: int,
    dim: int,
    num_components: int,
    micro_batch: int,
    fp16: bool = False,
    solver: str = "eigh",
    key: jax.Array | None = None,
    components_path: str | os.PathLike | None = None,
) -> PCAState:
    """Dual PCA from two streamed passes over column blocks; the state holds numpy float32 arrays.

    fp16 multiplies fp16 operands with fp32 accumulation (means stay fp32). solver="randomized"
    uses `key` (default key 0). With `components_path` the components are a raw float32 file,
    returned as a read-only np.memmap, so the (k, D) output does not count against RAM.
    """
    if not 1 <= num_components <= num_models - 1:
        raise ValueError(f"num_components={num_components} must be in [1, num_models - 1 = {num_models - 1}]")
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is not one of {list(SOLVERS)}")
    micro_batch = min(micro_batch, dim)
    gram, means = jnp.zeros((num_models, num_models)), []
    for start, stop, (block_gram, block_mean) in _map_blocks(partial(_block_gram, fp16=fp16), read_columns, num_models, dim, micro_batch):
        gram = gram + block_gram
        means.append(np.asarray(block_mean)[: stop - start])
    if solver == "eigh":
        eigenvalues, eigenvectors = top_eigenpairs(gram, num_components)
    else:
        eigenvalues, eigenvectors = randomized_top_eigenpairs(gram, num_components, jax.random.key(0) if key is None else key)
    write, result = _output(num_components, dim, components_path)
    project = partial(_project, eigenvectors, eigenvalues, fp16=fp16)
    for start, stop, part in _map_blocks(project, read_columns, num_models, dim, micro_batch):
        write(start, np.asarray(part)[:, : stop - start])
    return PCAState(np.concatenate(means), result(), np.asarray(eigenvalues / (num_models - 1)))
