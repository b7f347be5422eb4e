"""New or memorized? How two ensembles differ in what they get wrong, what they predict, and where their weights lie.

Every metric is a matrix between the models of two sets, summarised per model
by its nearest model of the other set (Table 17's four directions: original to
original, original to generated, generated to original, generated to
generated). Within one set a model is never compared with itself.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

from dwf_jax.zoo_store import ZooStore, map_column_blocks, stacked_columns

# Quantiles of each model's weights kept for the Wasserstein distance (all of them when D is smaller).
NUM_QUANTILES = 1024
DIRECTIONS = {
    "original_to_original": ("original", "original"),
    "original_to_generated": ("original", "generated"),
    "generated_to_original": ("generated", "original"),
    "generated_to_generated": ("generated", "generated"),
}


@jax.jit
def iou(wrong_a: jax.Array, wrong_b: jax.Array) -> jax.Array:
    """(A, B) intersection over union of the test examples each model gets wrong (two flawless models: 1)."""
    a, b = wrong_a.astype(jnp.float32), wrong_b.astype(jnp.float32)
    both = a @ b.T
    either = a.sum(axis=1)[:, None] + b.sum(axis=1)[None, :] - both
    return jnp.where(either > 0, both / jnp.maximum(either, 1.0), 1.0)


@jax.jit
def jensen_shannon(p: jax.Array, q: jax.Array) -> jax.Array:
    """(A, B) Jensen-Shannon divergence (bits, in [0, 1]) between the models' predicted class distributions."""
    p, q = p[:, None, :], q[None, :, :]
    middle = (p + q) / 2
    divergence = 0.5 * jnp.sum(xlogy(p, p) - xlogy(p, middle) + xlogy(q, q) - xlogy(q, middle), axis=-1)
    return jnp.maximum(divergence / jnp.log(2.0), 0.0)


def weight_quantiles(store: ZooStore, num_quantiles: int = NUM_QUANTILES) -> np.ndarray:
    """(M, Q) quantile function of each model's weights, read a model at a time: all sorted weights when D <= Q."""
    levels = (np.arange(num_quantiles) + 0.5) / num_quantiles
    rows = (store.read(index) for index in range(store.num_models))
    if store.dim <= num_quantiles:
        return np.stack([np.sort(row) for row in rows])
    return np.stack([np.quantile(row, levels) for row in rows]).astype(np.float32)


@jax.jit
def wasserstein(quantiles_a: jax.Array, quantiles_b: jax.Array) -> jax.Array:
    """(A, B) 1-Wasserstein distance between weight distributions: the mean gap of their quantile functions.

    Exact for two models of D <= NUM_QUANTILES weights (then the quantiles are the sorted weights).
    """
    return jax.lax.map(lambda row: jnp.mean(jnp.abs(quantiles_b - row), axis=1), quantiles_a)


@jax.jit
def _block_geometry(block: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Squared distances (summed row by row, so a model is exactly 0 from itself) and dot products in one block."""
    squared = jax.lax.map(lambda row: jnp.sum(jnp.square(block - row), axis=1), block)
    return squared, block @ block.T


class Geometry(NamedTuple):
    """Pairwise L2 distances and cosine similarities among the models of a store."""

    distance: np.ndarray
    cosine: np.ndarray


def geometry(store: ZooStore, others: ZooStore, block: int) -> Geometry:
    """Distances and cosines among all models of `store` then `others`, streamed over column blocks."""
    num_rows = store.num_models + others.num_models
    squared, dots = np.zeros((num_rows, num_rows)), np.zeros((num_rows, num_rows))
    columns = stacked_columns(store.columns, others.columns)
    for _, _, (part_squared, part_dots) in map_column_blocks(_block_geometry, columns, num_rows, store.dim, block):
        squared += np.asarray(part_squared)
        dots += np.asarray(part_dots)
    norms = np.sqrt(np.diag(dots))
    return Geometry(np.sqrt(squared), dots / np.maximum(np.outer(norms, norms), np.finfo(np.float64).tiny))


def nearest(matrix: np.ndarray, same_set: bool, largest: bool) -> np.ndarray:
    """Each row's best value among the columns (largest or smallest), its own column excluded within one set."""
    matrix = np.array(matrix, dtype=np.float64)
    if same_set:
        np.fill_diagonal(matrix, -np.inf if largest else np.inf)
    return matrix.max(axis=1) if largest else matrix.min(axis=1)


class Evidence(NamedTuple):
    """What one ensemble offers to the metrics, one entry per model."""

    wrong: np.ndarray  # (M, n) which test examples each model gets wrong
    class_distribution: np.ndarray  # (M, C) mean predicted class probabilities on the test set
    quantiles: np.ndarray  # (M, Q) quantile function of each model's weights


def per_model(original: Evidence, generated: Evidence, shape: Geometry) -> dict[str, dict[str, np.ndarray]]:
    """For every metric and direction, each source model's value against its nearest target model.

    `shape` holds the originals first, then the generated models.
    """
    sets = {"original": original, "generated": generated}
    split = len(original.wrong)
    rows = {"original": slice(0, split), "generated": slice(split, None)}
    metrics = {
        "max_iou_of_errors": (lambda a, b: iou(a.wrong, b.wrong), True),
        "min_jensen_shannon": (lambda a, b: jensen_shannon(a.class_distribution, b.class_distribution), False),
        "min_wasserstein": (lambda a, b: wasserstein(a.quantiles, b.quantiles), False),
    }
    result: dict[str, dict[str, np.ndarray]] = {name: {} for name in (*metrics, "nearest_l2", "max_cosine")}
    for direction, (source, target) in DIRECTIONS.items():
        same = source == target
        for name, (pairwise, largest) in metrics.items():
            matrix = np.asarray(pairwise(sets[source], sets[target]))
            result[name][direction] = nearest(matrix, same, largest)
        block = (rows[source], rows[target])
        result["nearest_l2"][direction] = nearest(shape.distance[block], same, largest=False)
        result["max_cosine"][direction] = nearest(shape.cosine[block], same, largest=True)
    return result
