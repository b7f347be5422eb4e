"""Dual PCA of a zoo streamed in column blocks: memory set by the block, not by N x D.

The Gram matrix of the centred zoo is a sum over column blocks, and each block is
centred by its own column means, so pass 1 reads `micro_batch` columns at a time,
keeps their means and adds Xc_b Xc_b^T to the N x N Gram matrix. Pass 2 reads the
blocks again and writes components[:, b] = V^T Xc_b / sqrt(lambda). Peak memory is a
few N x micro_batch blocks, the (D,) mean and the (k, D) output, which can be a file.
The same block passes project a zoo onto the components, write generated weights to a
file and measure distances between models, for zoos that never fit in memory.
"""

import os
import pathlib
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


def stacked_reader(*readers: Reader) -> Reader:
    """Column blocks of several readers stacked row-wise: one padded block carries all a step needs."""
    return lambda start, stop: np.concatenate([np.asarray(read(start, stop), np.float32) for read in readers])


def matrix_reader(matrix: np.ndarray | jax.Array) -> Reader:
    """Column blocks of a (rows, D) matrix: positioned reads for a raw-file memmap (pages stay out of RSS), slices otherwise."""
    if isinstance(matrix, np.memmap) and matrix.offset == 0:
        return memmap_reader(matrix.filename, *matrix.shape)
    return array_reader(matrix)


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


def fit_transform_dual_streaming(
    read_columns: Reader,
    num_models: int,
    dim: int,
    num_components: int,
    micro_batch: int,
    fp16: bool = False,
    solver: str = "eigh",
    key: jax.Array | None = None,
    components_path: str | os.PathLike | None = None,
) -> tuple[PCAState, np.ndarray]:
    """Dual PCA from two streamed passes over column blocks, and the zoo's (N, k) coefficients without a third.

    The state holds numpy float32 arrays. fp16 multiplies fp16 operands with fp32 accumulation
    (means stay fp32). solver="randomized" uses `key` (default key 0). With `components_path` the
    components are a raw float32 file, returned as a read-only np.memmap, so the (k, D) output
    does not count against RAM. The coefficients Xc C^T = Xc Xc^T V / sqrt(lambda) = G V / sqrt(lambda)
    come from the Gram matrix, exact for any eigenvector estimate (with fp16: G's fp16 products).
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
    state = PCAState(np.concatenate(means), result(), np.asarray(eigenvalues / (num_models - 1)))
    return state, np.asarray(gram @ eigenvectors / jnp.sqrt(eigenvalues))


@partial(jax.jit, static_argnames="num_models")
def _block_coefficients(block: jax.Array, num_models: int) -> jax.Array:
    """This block's share (X_b - mean_b) C_b^T of the coefficients; zero-padded columns add nothing."""
    weights, components, mean = block[:num_models], block[num_models:-1], block[-1]
    return (weights - mean) @ components.T


def transform_streaming(state: PCAState, read_columns: Reader, num_models: int, dim: int, micro_batch: int) -> np.ndarray:
    """`pca.transform` of a zoo read in column blocks: (N, k) coefficients, summed over blocks of zoo, components and mean."""
    micro_batch = min(micro_batch, dim)
    reader = stacked_reader(read_columns, matrix_reader(state.components), lambda start, stop: np.asarray(state.mean)[None, start:stop])
    coefficients = jnp.zeros((num_models, state.components.shape[0]))
    step = partial(_block_coefficients, num_models=num_models)
    for _, _, part in _map_blocks(step, reader, num_models + state.components.shape[0] + 1, dim, micro_batch):
        coefficients = coefficients + part
    return np.asarray(coefficients)


@jax.jit
def _block_weights(coefficients: jax.Array, block: jax.Array) -> jax.Array:
    """This block's columns mean_b + coefficients C_b of the weights."""
    return coefficients @ block[:-1] + block[-1]


def inverse_transform_to_file(state: PCAState, coefficients: np.ndarray | jax.Array, path: str | os.PathLike, micro_batch: int) -> np.memmap:
    """`pca.inverse_transform` written column block by column block into a raw (M, D) float32 file, returned read-only.

    Only the (M, k) coefficients and a block are in memory. The file is written beside
    its final name and renamed when complete, so it exists only whole.
    """
    path = pathlib.Path(path)
    partial_path = path.with_name(path.name + ".partial")
    num_samples, (num_components, dim) = len(coefficients), state.components.shape
    write, _ = _output(num_samples, dim, partial_path)
    reader = stacked_reader(matrix_reader(state.components), lambda start, stop: np.asarray(state.mean)[None, start:stop])
    step = partial(_block_weights, jnp.asarray(coefficients, jnp.float32))
    for start, stop, part in _map_blocks(step, reader, num_components + 1, dim, min(micro_batch, dim)):
        write(start, np.asarray(part)[:, : stop - start])
    os.replace(partial_path, path)
    return np.memmap(path, np.float32, mode="r", shape=(num_samples, dim))


@partial(jax.jit, static_argnames="num_targets")
def _block_squared_distances(block: jax.Array, num_targets: int) -> jax.Array:
    """Squared distances within this block from every row to each of the first `num_targets` rows, one row at a time."""
    targets = block[:num_targets]
    return jax.lax.map(lambda row: jnp.sum(jnp.square(targets - row), axis=1), block)


def pairwise_distances_streaming(read_columns: Reader, num_rows: int, dim: int, micro_batch: int, num_targets: int) -> np.ndarray:
    """Euclidean distances (num_rows, num_targets) from every row to each of the first `num_targets` rows.

    Squared differences are summed block by block (float64 across blocks), never as
    |a|^2 + |b|^2 - 2ab, so identical rows are exactly 0 apart as in `evaluate.pairwise_distances`.
    """
    total = np.zeros((num_rows, num_targets))
    step = partial(_block_squared_distances, num_targets=num_targets)
    for _, _, part in _map_blocks(step, read_columns, num_rows, dim, min(micro_batch, dim)):
        total += np.asarray(part)
    return np.sqrt(total)
