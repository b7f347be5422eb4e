"""Recompute BatchNorm running statistics of generated networks.

Generated weights come with generated running statistics, which need not
match the activations the generated weights produce. Following the paper,
the statistics are re-estimated from K data batches: each BatchNorm layer's
running mean/var become the cumulative average of its per-batch statistics
(PyTorch's momentum=None), for the whole ensemble in one vmapped call.
"""

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dwf_jax.ensemble import map_models

PyTree = Any
CALIBRATION_DATA = ("train", "test")  # test: the reference code's choice, which leaks the test set


def calibration_batches(key: jax.Array, images: np.ndarray, num_batches: int, batch_size: int) -> np.ndarray:
    """(K, B, ...) images drawn without replacement, the same for every model of the ensemble."""
    needed = num_batches * batch_size
    if needed > len(images):
        raise ValueError(
            f"BN recalibration wants {num_batches} x {batch_size} = {needed} images, the data has {len(images)}"
        )
    order = np.asarray(jax.random.permutation(key, len(images)))[:needed]
    return images[order].reshape(num_batches, batch_size, *images.shape[1:])


def recalibrate(model: nn.Module, stacked_variables: PyTree, batches: jax.Array, models_per_vmap: int = 0) -> PyTree:
    """Stacked variables whose batch_stats are the mean batch statistics over `batches` (K, B, ...).

    `model` must expose `bn_momentum`; it is set to 0 so that one forward pass in
    train mode writes exactly that batch's statistics. Compiled once per model and shapes.
    """
    if "batch_stats" not in stacked_variables:
        return stacked_variables
    return _recalibrate(stacked_variables, jnp.asarray(batches), model=model, models_per_vmap=models_per_vmap)


@partial(jax.jit, static_argnames=("model", "models_per_vmap"))
def _recalibrate(stacked_variables: PyTree, batches: jax.Array, *, model: nn.Module, models_per_vmap: int) -> PyTree:
    probe = model.clone(bn_momentum=0.0)

    def one_model(variables):
        def add_batch(total, images):
            _, state = probe.apply(
                variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
            )
            return jax.tree.map(jnp.add, total, state["batch_stats"]), None

        zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
        total, _ = jax.lax.scan(add_batch, zeros, batches)
        return {**variables, "batch_stats": jax.tree.map(lambda t: t / batches.shape[0], total)}

    return map_models(one_model, stacked_variables, models_per_vmap)
