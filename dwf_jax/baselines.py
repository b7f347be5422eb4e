"""The simple ensembles a weight generator must beat at being both new and accurate (Zeng et al., 2025).

Originals plus Gaussian noise; convex combinations of a few originals (interpolations of canonicalized models:
re-basin is what makes averaging meaningful); and Zeng et al.'s own two as their code
(boyazeng/weight_memorization, P-diff/evaluation/baseline.py) defines them: uniform averages of K distinct
originals drawn at random per model, and draws from a per-weight Gaussian fitted to the zoo. Noise and the
Gaussian move a model's `params` columns only: its BatchNorm running statistics are no learned weights (noised,
a running variance can turn negative and every prediction NaN). All are built from the canonical zoo a model (or
a column block) at a time, so an on-disk zoo never has to fit in memory.
"""

from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dwf_jax.zoo_store import ZooStore


def noisy(store: ZooStore, std: float, key: jax.Array, params: slice) -> Iterator[np.ndarray]:
    """Every model of `store` plus N(0, std^2) noise on each of its `params` weights (model i's from fold_in(key, i));
    the other columns (BatchNorm running statistics) kept as they are."""
    for index in range(store.num_models):
        row = np.array(store.read(index))
        noise = jax.random.normal(jax.random.fold_in(key, index), (row[params].size,), jnp.float32)
        row[params] += np.float32(std) * np.asarray(noise)
        yield row


def subsets(key: jax.Array, num_models: int, count: int, size: int) -> np.ndarray:
    """(count, size) model indices, each row `size` distinct models drawn at random."""
    return np.asarray(
        jax.vmap(lambda k: jax.random.choice(k, num_models, (size,), replace=False))(jax.random.split(key, count))
    )


def mixture_plan(key: jax.Array, num_models: int, count: int, mix: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, mix) distinct model indices and convex weights (flat Dirichlet) of each combination."""
    if not 1 <= mix <= num_models:
        raise ValueError(f"a combination mixes 1..{num_models} distinct models, got {mix}")
    index_key, weight_key = jax.random.split(key)
    weights = jax.random.dirichlet(weight_key, jnp.ones(mix), (count,))
    return subsets(index_key, num_models, count, mix), np.asarray(weights, np.float32)


def mixtures(store: ZooStore, indices: np.ndarray, weights: np.ndarray) -> Iterator[np.ndarray]:
    """Each row of the plan as the weighted sum of its models, reading `mix` models at a time."""
    for row_indices, row_weights in zip(indices, weights, strict=True):
        yield sum(weight * store.read(int(index)) for index, weight in zip(row_indices, row_weights, strict=True))


def averages(store: ZooStore, indices: np.ndarray) -> Iterator[np.ndarray]:
    """The uniform average of each row's models (Zeng et al.'s average of K originals), summed in float64."""
    for row_indices in indices:
        total = sum(store.read(int(index)).astype(np.float64) for index in row_indices)
        yield (total / len(row_indices)).astype(np.float32)


class CoordinateMoments(NamedTuple):
    """Each weight's mean and standard deviation over the models of a zoo."""

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)


def coordinate_moments(store: ZooStore, block: int) -> CoordinateMoments:
    """Per-weight mean and std (ddof 1, as torch.std in Zeng et al.'s code), `block` columns read at a time."""
    mean, std = np.empty(store.dim, np.float32), np.empty(store.dim, np.float32)
    for start in range(0, store.dim, block):
        columns = np.asarray(store.columns(start, min(start + block, store.dim)), np.float64)
        mean[start : start + block] = columns.mean(axis=0)
        std[start : start + block] = columns.std(axis=0, ddof=1)
    return CoordinateMoments(mean, std)


def gaussian(moments: CoordinateMoments, count: int, key: jax.Array, params: slice) -> Iterator[np.ndarray]:
    """`count` models whose `params` weights are drawn from N(mean, std^2) each (model i's from fold_in(key, i)),
    the other columns (BatchNorm running statistics) the zoo's mean: a mean of variances is never negative."""
    mean, std = moments.mean[params], moments.std[params]
    for index in range(count):
        row = moments.mean.copy()
        row[params] = mean + std * np.asarray(jax.random.normal(jax.random.fold_in(key, index), mean.shape))
        yield row
