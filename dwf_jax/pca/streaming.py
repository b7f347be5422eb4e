"""Dual PCA of a zoo streamed in column blocks: memory set by the block, not by N x D.

The Gram matrix of the centred zoo is a sum over column blocks, and each block is
centred by its own column means, so pass 1 reads `micro_batch` columns at a time,
keeps their means and adds Xc_b Xc_b^T to the N x N Gram matrix. Pass 2 reads the
blocks again and writes components[:, b] = V^T Xc_b / sqrt(lambda). Peak memory is a
few N x micro_batch blocks, the (D,) mean and the (k, D) output, which can be a file.
The same block passes project a zoo onto the components and write generated weights to a
file, for zoos that never fit in memory (column blocks come from `dwf_jax.zoo_store`).
"""

import os
import pathlib
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from dwf_jax.pca.dual import PCAState, randomized_top_eigenpairs, top_eigenpairs
from dwf_jax.zoo_store import (
    FileZoo,
    MemoryZoo,
    Reader,
    as_store,
    filled_by_columns,
    map_column_blocks,
    stacked_columns,
)

SOLVERS = ("eigh", "randomized")


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
    gram, means = jnp.zeros((num_models, num_models)), []
    blocks = map_column_blocks(partial(_block_gram, fp16=fp16), read_columns, num_models, dim, micro_batch)
    for start, stop, (block_gram, block_mean) in blocks:
        gram = gram + block_gram
        means.append(np.asarray(block_mean)[: stop - start])
    if solver == "eigh":
        eigenvalues, eigenvectors = top_eigenpairs(gram, num_components)
    else:
        eigenvalues, eigenvectors = randomized_top_eigenpairs(
            gram, num_components, jax.random.key(0) if key is None else key
        )
    project = partial(_project, eigenvectors, eigenvalues, fp16=fp16)
    if components_path is None:
        components = MemoryZoo(np.empty((num_components, dim), np.float32))
        _write_blocks(components, project, read_columns, num_models, dim, micro_batch)
    else:
        with filled_by_columns(components_path, num_components, dim) as output:
            _write_blocks(output, project, read_columns, num_models, dim, micro_batch)
        components = FileZoo(pathlib.Path(components_path), num_components, dim)
    components = components.as_array()
    state = PCAState(np.concatenate(means), components, np.asarray(eigenvalues / (num_models - 1)))
    return state, np.asarray(gram @ eigenvectors / jnp.sqrt(eigenvalues))


@partial(jax.jit, static_argnames="num_models")
def _block_coefficients(block: jax.Array, num_models: int) -> jax.Array:
    """This block's share (X_b - mean_b) C_b^T of the coefficients; zero-padded columns add nothing."""
    weights, components, mean = block[:num_models], block[num_models:-1], block[-1]
    return (weights - mean) @ components.T


def transform_streaming(
    state: PCAState, read_columns: Reader, num_models: int, dim: int, micro_batch: int
) -> np.ndarray:
    """`pca.transform` of a zoo read in column blocks: (N, k) coefficients, summed block by block."""
    reader = stacked_columns(read_columns, as_store(state.components).columns, _mean_reader(state))
    coefficients = jnp.zeros((num_models, state.components.shape[0]))
    step = partial(_block_coefficients, num_models=num_models)
    for _, _, part in map_column_blocks(step, reader, num_models + state.components.shape[0] + 1, dim, micro_batch):
        coefficients = coefficients + part
    return np.asarray(coefficients)


@jax.jit
def _block_weights(coefficients: jax.Array, block: jax.Array) -> jax.Array:
    """This block's columns mean_b + coefficients C_b of the weights."""
    return coefficients @ block[:-1] + block[-1]


def inverse_transform_to_file(
    state: PCAState, coefficients: np.ndarray | jax.Array, path: str | os.PathLike, micro_batch: int
) -> FileZoo:
    """`pca.inverse_transform` written column block by column block into a raw (M, D) float32 zoo file.

    Only the (M, k) coefficients and a block are in memory. The file is written beside
    its final name and renamed when complete, so it exists only whole.
    """
    num_samples, dim = len(coefficients), state.components.shape[1]
    with filled_by_columns(path, num_samples, dim) as output:
        _inverse_blocks(state, coefficients, output, micro_batch)
    return FileZoo(pathlib.Path(path), num_samples, dim)


def inverse_transform_blocks(state: PCAState, coefficients: np.ndarray | jax.Array, micro_batch: int) -> np.ndarray:
    """`inverse_transform_to_file` into an (M, D) array: the same column blocks, so bitwise the same weights."""
    output = MemoryZoo(np.empty((len(coefficients), state.components.shape[1]), np.float32))
    _inverse_blocks(state, coefficients, output, micro_batch)
    return output.matrix


def _inverse_blocks(
    state: PCAState, coefficients: np.ndarray | jax.Array, output: MemoryZoo | FileZoo, micro_batch: int
) -> None:
    """mean + coefficients @ components, column block by column block, into `output`."""
    num_components, dim = state.components.shape
    reader = stacked_columns(as_store(state.components).columns, _mean_reader(state))
    step = partial(_block_weights, jnp.asarray(coefficients, jnp.float32))
    _write_blocks(output, step, reader, num_components + 1, dim, micro_batch)


def _mean_reader(state: PCAState) -> Reader:
    return lambda start, stop: np.asarray(state.mean)[None, start:stop]


def _write_blocks(
    output: MemoryZoo | FileZoo, step: Callable, read_columns: Reader, rows: int, dim: int, block: int
) -> None:
    """Each column block of `read_columns` through `step`, written into the same columns of `output`."""
    for start, stop, part in map_column_blocks(step, read_columns, rows, dim, block):
        output.write_columns(start, np.asarray(part)[:, : stop - start])
