"""Incremental PCA over batches of models (Ross et al. 2008; scikit-learn's IncrementalPCA), jit-compiled.

Only one batch of rows and a (k + batch + 1, D) stack are ever in memory, so the
zoo can come from disk or a generator. Each step updates the running mean and
takes the SVD of [singular values * components; centred batch; mean-correction
row], exactly as scikit-learn does. The first batch is decomposed alone, so no
step carries k zero rows, and a short last batch is not padded: jit compiles once
per batch shape (first, full, last) instead of paying for padding at every fit.
"""

from collections.abc import Iterable, Iterator
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dwf_jax.pca.dual import PCAState

DEFAULT_BATCH_SIZE = 50


class IncrementalState(NamedTuple):
    mean: jax.Array  # (D,) mean of the models seen
    components: jax.Array  # (k, D), orthonormal rows (zero rows beyond the rank seen)
    singular_values: jax.Array  # (k,)
    count: jax.Array  # () number of models seen


def _eigh64(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    eigenvalues, eigenvectors = np.linalg.eigh(np.asarray(matrix, np.float64))
    return eigenvalues.astype(matrix.dtype), eigenvectors.astype(matrix.dtype)


def _wide_svd(matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Singular values (descending) and right singular vectors of a wide (m, D) matrix, m << D.

    LAPACK's SVD of the stack costs ~15x more than two m x m Gram rounds, but one fp32
    Gram round has eigenvalue errors ~eps * s_max^2, which wreck small components. The
    first round only rotates the rows to near-orthogonality; the Gram matrix of those rows
    is then accurate entry by entry, and its eigh in float64 on the host (m x m, cheap)
    gives LAPACK-grade fp32 accuracy. Values below the noise floor come back as zero rows.
    """
    _, rotation = jnp.linalg.eigh(matrix @ matrix.T)
    rotated = rotation.T @ matrix
    gram = rotated @ rotated.T
    shapes = (jax.ShapeDtypeStruct(gram.shape[:1], gram.dtype), jax.ShapeDtypeStruct(gram.shape, gram.dtype))
    eigenvalues, rotation = jax.pure_callback(_eigh64, shapes, gram)
    singular = jnp.sqrt(jnp.maximum(eigenvalues[::-1], 0.0))
    keep = singular > singular[0] * matrix.shape[0] * jnp.finfo(matrix.dtype).eps
    vectors = (rotation[:, ::-1].T @ rotated) / jnp.where(keep, singular, 1.0)[:, None]
    return jnp.where(keep, singular, 0.0), jnp.where(keep[:, None], vectors, 0.0)


@partial(jax.jit, static_argnums=1)
def first_fit(batch: jax.Array, num_components: int) -> IncrementalState:
    """The state after the first batch (b, D): the SVD of the centred batch, zero rows beyond b."""
    mean = jnp.mean(batch, axis=0)
    singular, vectors = _wide_svd(batch - mean)
    missing = max(num_components - batch.shape[0], 0)
    singular = jnp.pad(singular, (0, missing))[:num_components]
    vectors = jnp.pad(vectors, ((0, missing), (0, 0)))[:num_components]
    return IncrementalState(mean, vectors, singular, jnp.asarray(batch.shape[0], jnp.int32))


@jax.jit
def partial_fit(state: IncrementalState, batch: jax.Array) -> IncrementalState:
    """Fold a batch of models (b, D) into the state."""
    seen, new = state.count.astype(batch.dtype), batch.shape[0]
    total = seen + new
    batch_mean = jnp.mean(batch, axis=0)
    correction = jnp.sqrt(seen * new / total) * (state.mean - batch_mean)
    stack = jnp.concatenate([state.singular_values[:, None] * state.components, batch - batch_mean, correction[None]])
    singular, vectors = _wide_svd(stack)
    num_components = state.components.shape[0]
    mean = state.mean + (batch_mean - state.mean) * (new / total)
    return IncrementalState(mean, vectors[:num_components], singular[:num_components], state.count + new)


def to_pca_state(state: IncrementalState) -> PCAState:
    return PCAState(state.mean, state.components, state.singular_values**2 / (state.count - 1))


def _batches(source: jax.Array | np.ndarray | Iterable, batch_size: int) -> Iterator[jax.Array]:
    """float32 device batches of at most batch_size rows, from an array or an iterable of row blocks."""
    for chunk in (source,) if hasattr(source, "shape") else source:
        for start in range(0, len(chunk), batch_size):
            yield jnp.asarray(chunk[start : start + batch_size], jnp.float32)


def fit_incremental(
    weights_or_batches: jax.Array | np.ndarray | Iterable, num_components: int, batch_size: int = DEFAULT_BATCH_SIZE
) -> PCAState:
    """Incremental PCA of an (N, D) array (memmaps work) or of an iterable of (b_i, D) row blocks.

    Unlike scikit-learn, a batch may hold fewer rows than `num_components`.
    """
    batches = _batches(weights_or_batches, batch_size)
    first = next(batches, None)
    if first is None:
        raise ValueError("incremental PCA needs at least 2 models")
    state = first_fit(first, num_components)
    for batch in batches:
        state = partial_fit(state, batch)
    if int(state.count) < 2:
        raise ValueError("incremental PCA needs at least 2 models")
    return to_pca_state(state)
