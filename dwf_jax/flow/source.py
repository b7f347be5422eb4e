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


# Leaves that start at 0 in the source: biases, LayerNorm/BatchNorm scales (statistics are outside 'params').
_ZERO_LEAVES = ("bias", "scale")
# flax's attention projections are DenseGeneral kernels: query/key/value (in, heads, head_dim) map one input
# axis to two feature axes, `out` (heads, head_dim, out) two input axes to one; DenseGeneral's initialiser
# takes its fan-in from the input axes only.
_ATTENTION_FEATURE_AXES = {"query": 2, "key": 2, "value": 2, "out": 1}


def kernel_fan_in(names: tuple[str, ...], shape: tuple[int, ...]) -> int:
    """The fan-in flax's variance-scaling initialiser uses for the kernel at `names`: its input axes' product.

    Dense (in, out) and Conv (h, w, in, out) have one feature axis, the last;
    attention's query/key/value kernels have two.
    """
    parent = names[-2] if len(names) >= 2 else ""
    feature_axes = _ATTENTION_FEATURE_AXES.get(parent, 1) if len(shape) == 3 else 1
    return math.prod(shape[:-feature_axes])


def kaiming_bound(names: tuple[str, ...], shape: tuple[int, ...]) -> float:
    """The bound of one leaf's Kaiming-uniform draw: sqrt(6 / fan_in) for kernels, 0 for biases and norms.

    Any other parameter (class tokens, positional and embedding tables) is drawn
    from an initialiser that is not Kaiming's, so it has no Kaiming bound: refused.
    """
    if names[0] != "params" or names[-1] in _ZERO_LEAVES:
        return 0.0
    if names[-1] == "kernel" and len(shape) >= 2:
        return math.sqrt(6.0 / kernel_fan_in(names, shape))
    raise ValueError(
        f"flow.source='kaiming' has no Kaiming bound for {'/'.join(names)} of shape {shape}: "
        "it is not a kernel, bias or norm parameter; use flow.source='gaussian'"
    )


def kaiming_bounds(variables: PyTree) -> PyTree:
    """Per weight, the bound of its Kaiming-uniform draw (`kaiming_bound`), so x0 is a freshly initialised network.

    Biases, normalisation parameters and statistics start at 0, as in the zoo's `kaiming_zero_bias` MLPs.
    """

    def bound(path: tuple, leaf: Any) -> np.ndarray:
        names = tuple(str(getattr(key, "key", key)) for key in path)
        return np.full(leaf.shape, kaiming_bound(names, tuple(leaf.shape)), np.float32)

    return jax.tree_util.tree_map_with_path(bound, variables)
