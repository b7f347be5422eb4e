"""Flatten a zoo of stacked params pytrees into an (N, D) matrix and back."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any


def flatten_zoo(stacked_params: PyTree) -> jax.Array:
    """(N, D) matrix whose row i is model i's params in `ravel_pytree` order."""
    return jax.vmap(lambda params: ravel_pytree(params)[0])(stacked_params)


def unflattener(template: PyTree) -> Callable[[jax.Array], PyTree]:
    """Map an (N, D) matrix back to a stacked pytree shaped like `template` (one model)."""
    flat, unravel = ravel_pytree(template)
    dim = flat.shape[0]

    def unflatten_zoo(matrix: jax.Array) -> PyTree:
        matrix = jnp.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[1] != dim:
            raise ValueError(f"expected an (N, {dim}) weight matrix for this architecture, got shape {matrix.shape}")
        return jax.vmap(unravel)(matrix)

    return unflatten_zoo


def unstack(stacked: PyTree, index: int) -> PyTree:
    """Model `index` of a stacked zoo."""
    return jax.tree.map(lambda leaf: leaf[index], stacked)
