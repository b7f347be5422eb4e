"""Where the flow's straight paths start: Gaussian noise (the paper's choice) or freshly initialised networks.

Table 16 compares the two: x0 ~ N(0, 0.01^2) per weight, against x0 drawn as a
network with Kaiming-uniform weights, the distribution the zoo itself starts from.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
SOURCES = ("gaussian", "kaiming")


class Source(NamedTuple):
    """x0 = scale * N(0, 1) ("normal") or x0 ~ U(-scale, scale) ("uniform"); `scale` is one number or one per weight."""

    distribution: str
    scale: float | jax.Array


def draw(source: Source, key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Source points of `shape` (models, dim)."""
    if source.distribution == "normal":
        return source.scale * jax.random.normal(key, shape, dtype)
    if source.distribution == "uniform":
        return source.scale * jax.random.uniform(key, shape, dtype, -1.0, 1.0)
    raise ValueError(f"unknown source distribution {source.distribution!r}; choose 'normal' or 'uniform'")


def kaiming_bounds(variables: PyTree) -> PyTree:
    """Per weight, the bound of its Kaiming-uniform draw: sqrt(6 / fan_in) for kernels, 0 for everything else.

    A kernel's fan-in is the product of all but its last axis (Dense (in, out), Conv (h, w, in, out)).
    Biases, normalisation parameters and statistics start at 0, as in the zoo's `kaiming_zero_bias` MLPs.
    """

    def bound(path: tuple, leaf: Any) -> np.ndarray:
        is_kernel = jax.tree_util.keystr(path[:1]) == "['params']" and len(leaf.shape) >= 2
        value = math.sqrt(6.0 / math.prod(leaf.shape[:-1])) if is_kernel else 0.0
        return np.full(leaf.shape, value, np.float32)

    return jax.tree_util.tree_map_with_path(bound, variables)
