"""Accuracy of whole ensembles (one jitted apply over the model axis) and their novelty in weight space."""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dwf_jax.ensemble import map_models

PyTree = Any


def ensemble_accuracy(
    model: nn.Module,
    stacked_variables: PyTree,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 2000,
    transform: Callable[[jax.Array], jax.Array] = lambda images: images,
    models_per_vmap: int = 0,
) -> np.ndarray:
    """Test accuracy (percent) of every model in a stacked zoo (eval mode); the test set is streamed in batches."""

    @jax.jit
    def correct_in_batch(variables, xb, yb):
        inputs = transform(xb)
        logits = map_models(lambda v: model.apply(v, inputs, train=False), variables, models_per_vmap)
        return jnp.sum(jnp.argmax(logits, axis=-1) == yb[None, :], axis=1)

    correct = sum(
        np.asarray(correct_in_batch(stacked_variables, x[start : start + batch_size], y[start : start + batch_size]))
        for start in range(0, len(x), batch_size)
    )
    return 100.0 * correct / len(x)


def summary(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()), "max": float(values.max())}


@jax.jit
def pairwise_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """Euclidean distances between rows of a (M, D) and b (N, D), one row of a at a time (exact near zero)."""
    return jax.lax.map(lambda row: jnp.linalg.norm(b - row, axis=1), a)


def novelty(to_originals: np.ndarray, among_originals: np.ndarray) -> dict[str, dict[str, float]]:
    """Each generated model's distance to its nearest original, beside the originals' own nearest-neighbour distances.

    Takes the (M, N) generated-to-original and (N, N) original-to-original distances.
    Generated models far closer to an original than originals are to each other
    would be memorised copies rather than new networks.
    """
    among_others = np.asarray(among_originals) + np.diag(np.full(len(among_originals), np.inf))
    return {
        "generated_to_nearest_original": summary(np.min(to_originals, axis=1)),
        "original_to_nearest_other_original": summary(among_others.min(axis=1)),
    }
