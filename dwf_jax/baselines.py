"""The two simple ensembles a weight generator must beat at being both new and accurate (Zeng et al., 2025).

Originals plus Gaussian noise, and convex combinations of a few originals
(interpolations of canonicalized models: re-basin is what makes averaging
meaningful). Both are built from the canonical zoo a model at a time, so an
on-disk zoo never has to fit in memory.
"""

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from dwf_jax.zoo_store import ZooStore


def noisy(store: ZooStore, std: float, key: jax.Array) -> Iterator[np.ndarray]:
    """Every model of `store` plus N(0, std^2) noise on each weight (model i's noise from fold_in(key, i))."""
    for index in range(store.num_models):
        noise = jax.random.normal(jax.random.fold_in(key, index), (store.dim,), jnp.float32)
        yield store.read(index) + np.float32(std) * np.asarray(noise)


def mixture_plan(key: jax.Array, num_models: int, count: int, mix: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, mix) distinct model indices and convex weights (flat Dirichlet) of each combination."""
    if not 1 <= mix <= num_models:
        raise ValueError(f"a combination mixes 1..{num_models} distinct models, got {mix}")
    index_key, weight_key = jax.random.split(key)
    indices = jax.vmap(lambda k: jax.random.choice(k, num_models, (mix,), replace=False))(
        jax.random.split(index_key, count)
    )
    weights = jax.random.dirichlet(weight_key, jnp.ones(mix), (count,))
    return np.asarray(indices), np.asarray(weights, np.float32)


def mixtures(store: ZooStore, indices: np.ndarray, weights: np.ndarray) -> Iterator[np.ndarray]:
    """Each row of the plan as the weighted sum of its models, reading `mix` models at a time."""
    for row_indices, row_weights in zip(indices, weights, strict=True):
        yield sum(weight * store.read(int(index)) for index, weight in zip(row_indices, row_weights, strict=True))
