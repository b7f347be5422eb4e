"""PCA of a flattened zoo through its N x N Gram matrix (dual PCA), jit-compiled.

With N models of D >> N weights, the Gram matrix of the centred zoo is tiny;
its eigenvectors give the principal directions exactly. With N-1 components
the zoo is reconstructed exactly, so the flow can train in N-1 dimensions
instead of D and every generated sample lies in the zoo's span.
"""

from functools import partial
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

# Floor for eigenvalues we divide by: a direction the zoo lacks must not become inf or nan.
EIGENVALUE_FLOOR = 1e-30


class PCAState(NamedTuple):
    mean: jax.Array  # (D,)
    components: jax.Array  # (k, D), orthonormal rows
    explained_variance: jax.Array  # (k,)


@partial(jax.jit, static_argnums=1)
def top_eigenpairs(gram: jax.Array, num_components: int) -> tuple[jax.Array, jax.Array]:
    """Largest eigenvalues (k,) of a symmetric PSD matrix, descending and floored, and eigenvectors (N, k)."""
    eigenvalues, eigenvectors = jnp.linalg.eigh(gram)
    top = jnp.argsort(eigenvalues)[::-1][:num_components]
    return jnp.maximum(eigenvalues[top], EIGENVALUE_FLOOR), eigenvectors[:, top]


@partial(jax.jit, static_argnames=("num_components", "oversample", "power_iterations"))
def randomized_top_eigenpairs(
    gram: jax.Array, num_components: int, key: jax.Array, oversample: int = 10, power_iterations: int = 4
) -> tuple[jax.Array, jax.Array]:
    """`top_eigenpairs` by randomized subspace iteration (Halko et al. 2011, Alg. 4.4 + 5.3).

    Costs O(N^2 (k + oversample)) instead of eigh's O(N^3), for zoos with many models.
    """
    width = min(num_components + oversample, gram.shape[0])
    basis, _ = jnp.linalg.qr(gram @ jax.random.normal(key, (gram.shape[0], width), gram.dtype))
    basis = jax.lax.fori_loop(0, power_iterations, lambda _, q: jnp.linalg.qr(gram @ q)[0], basis)
    eigenvalues, small_vectors = jnp.linalg.eigh(basis.T @ gram @ basis)
    top = jnp.argsort(eigenvalues)[::-1][:num_components]
    return jnp.maximum(eigenvalues[top], EIGENVALUE_FLOOR), basis @ small_vectors[:, top]


@partial(jax.jit, static_argnums=1)
def fit_dual(weights: jax.Array, num_components: int) -> PCAState:
    """Top `num_components` principal directions of the rows of `weights` (N, D)."""
    chex.assert_rank(weights, 2)
    num_models = weights.shape[0]
    mean = jnp.mean(weights, axis=0)
    centred = weights - mean
    eigenvalues, eigenvectors = top_eigenpairs(centred @ centred.T, num_components)
    components = (eigenvectors.T @ centred) / jnp.sqrt(eigenvalues)[:, None]
    return PCAState(mean, components, eigenvalues / (num_models - 1))


@jax.jit
def transform(state: PCAState, weights: jax.Array) -> jax.Array:
    """(M, D) weights -> (M, k) coefficients."""
    chex.assert_rank(weights, 2)
    chex.assert_axis_dimension(weights, 1, state.mean.shape[0])
    return (weights - state.mean) @ state.components.T


@jax.jit
def inverse_transform(state: PCAState, coefficients: jax.Array) -> jax.Array:
    """(M, k) coefficients -> (M, D) weights."""
    chex.assert_rank(coefficients, 2)
    chex.assert_axis_dimension(coefficients, 1, state.components.shape[0])
    return coefficients @ state.components + state.mean
