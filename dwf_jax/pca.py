"""PCA of a flattened zoo through its N x N Gram matrix (dual PCA), jit-compiled.

With N models of D >> N weights, the Gram matrix of the centred zoo is tiny;
its eigenvectors give the principal directions exactly. With N-1 components
the zoo is reconstructed exactly, so the flow can train in N-1 dimensions
instead of D and every generated sample lies in the zoo's span.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp


class PCAState(NamedTuple):
    mean: jax.Array  # (D,)
    components: jax.Array  # (k, D), orthonormal rows
    explained_variance: jax.Array  # (k,)


@partial(jax.jit, static_argnums=1)
def fit_dual(weights: jax.Array, num_components: int) -> PCAState:
    """Top `num_components` principal directions of the rows of `weights` (N, D)."""
    num_models = weights.shape[0]
    mean = jnp.mean(weights, axis=0)
    centred = weights - mean
    eigenvalues, eigenvectors = jnp.linalg.eigh(centred @ centred.T)
    top = jnp.argsort(eigenvalues)[::-1][:num_components]
    eigenvalues = jnp.maximum(eigenvalues[top], 1e-30)
    components = (eigenvectors[:, top].T @ centred) / jnp.sqrt(eigenvalues)[:, None]
    return PCAState(mean, components, eigenvalues / (num_models - 1))


@jax.jit
def transform(state: PCAState, weights: jax.Array) -> jax.Array:
    return (weights - state.mean) @ state.components.T


@jax.jit
def inverse_transform(state: PCAState, coefficients: jax.Array) -> jax.Array:
    return coefficients @ state.components + state.mean


def fit(method: str, weights: jax.Array, num_components: int) -> PCAState:
    """The PCA named by `config.pca.method` on an in-memory (N, D) zoo."""
    if method == "dual":
        return fit_dual(weights, num_components)
    raise ValueError(f"unknown PCA method {method!r}")
