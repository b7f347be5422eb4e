"""New or memorized? How two ensembles differ in what they get wrong, what they predict, and where their weights lie.

Every metric is a matrix between the models of two sets, summarised per model
by its nearest model of the other set (Table 17's four directions: original to
original, original to generated, generated to original, generated to
generated). Within one set a model is never compared with itself.
Jensen-Shannon is compared per test input (Table 17's); that of the models'
test-set-averaged class distributions is kept beside it, but is near 0 for any
two accurate models of a balanced test set, copies or not.
"""

from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy
from tqdm.auto import tqdm

from dwf_jax.zoo_store import ZooStore, map_column_blocks, stacked_columns

# Quantiles of each model's weights kept for the Wasserstein distance (all of them when D is smaller).
NUM_QUANTILES = 1024
# Elements of the largest (target models, examples, classes) block the per-example Jensen-Shannon holds:
# 2**20 float32 = 4 MB (128 targets x 819 examples of 10 classes).
JS_BLOCK_ELEMENTS = 2**20
# Target models compared at a time by the per-example Jensen-Shannon.
JS_TILE = 128
DIRECTIONS = {
    "original_to_original": ("original", "original"),
    "original_to_generated": ("original", "generated"),
    "generated_to_original": ("generated", "original"),
    "generated_to_generated": ("generated", "generated"),
}


@jax.jit
def iou(wrong_a: jax.Array, wrong_b: jax.Array) -> jax.Array:
    """(A, B) intersection over union of the test examples each model gets wrong.

    Two flawless models share no error: 0, as in Zeng et al.'s code (boyazeng/weight_memorization),
    so a zoo of perfect models never reads as a zoo of copies.
    """
    a, b = wrong_a.astype(jnp.float32), wrong_b.astype(jnp.float32)
    both = a @ b.T
    either = a.sum(axis=1)[:, None] + b.sum(axis=1)[None, :] - both
    return both / jnp.maximum(either, 1.0)


@jax.jit
def _summed_jensen_shannon(p: jax.Array, q: jax.Array) -> jax.Array:
    """(A, B) Jensen-Shannon divergences (nats) of p (A, b, C) and q (B, b, C), summed over the b examples.

    A source model at a time, so only (B, b, C) is held. Each term is (p log p + q log q) / 2 - m log m
    with m = (p + q) / 2: p log p and q log q are taken once per model, not once per pair, so a pair costs one
    logarithm per entry; a copy (m = p) gives the same p log p on both sides: 0 up to rounding (exactly 0 on CPU,
    where nothing fuses the product into the subtraction), and the mean is clipped at 0.
    """
    p_entropy, q_entropy = xlogy(p, p), xlogy(q, q)

    def row(pair: tuple[jax.Array, jax.Array]) -> jax.Array:
        p_row, p_row_entropy = pair
        middle = (p_row + q) / 2
        terms = 0.5 * (p_row_entropy + q_entropy) - xlogy(middle, middle)
        return jnp.sum(terms, axis=(1, 2))

    return jax.lax.map(row, (p, p_entropy))


def per_example_jensen_shannon(
    p: np.ndarray,
    q: np.ndarray,
    block_elements: int = JS_BLOCK_ELEMENTS,
    tile: int = JS_TILE,
    progress: bool = False,
) -> np.ndarray:
    """(A, B) mean over the test inputs of the Jensen-Shannon divergence (bits, in [0, 1]) between two models'
    predicted class probabilities p (A, n, C) and q (B, n, C): Table 17's JS, 0 only for models that predict alike.

    Streamed over `tile` target models and blocks of examples (at most `block_elements` of q's at a time), so
    1000 x 1000 models of 10,000 examples x 10 classes fit in memory. Within one set (p is q) each pair is
    computed once and mirrored: JS is symmetric. `progress`: a bar of the pairs done (a zoo of 3000 compared
    with itself: 4.5 M pairs, 15 min on 2 CPU cores).
    """
    within = p is q
    num_targets, num_examples, num_classes = q.shape
    total = np.zeros((len(p), num_targets))
    pairs = num_targets * (num_targets + 1) // 2 if within else len(p) * num_targets
    bar = tqdm(total=pairs, desc="per-example Jensen-Shannon", unit="pair", unit_scale=True, disable=not progress)
    for first in range(0, num_targets, tile):
        targets = slice(first, min(first + tile, num_targets))
        sources = slice(0, targets.stop) if within else slice(None)
        width = targets.stop - targets.start
        block = max(1, min(num_examples, block_elements // (width * num_classes)))
        for start in range(0, num_examples, block):
            examples = slice(start, start + block)
            part = _summed_jensen_shannon(p[sources, examples], q[targets, examples])
            total[sources, targets] += np.asarray(part, np.float64)
        bar.update(_pairs_in_tile(within, len(p), targets))
    bar.close()
    if within:
        total = np.triu(total) + np.triu(total, 1).T
    return np.maximum(total / (num_examples * np.log(2.0)), 0.0)


def _pairs_in_tile(within: bool, num_sources: int, targets: slice) -> int:
    """Pairs a tile compares: within one set only those of a source up to each target, the upper triangle."""
    width = targets.stop - targets.start
    return width * (targets.start + targets.stop + 1) // 2 if within else num_sources * width


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(A, B) Jensen-Shannon divergence (bits, in [0, 1]) between class distributions p (A, C) and q (B, C)."""
    return per_example_jensen_shannon(np.asarray(p)[:, None, :], np.asarray(q)[:, None, :])


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


class ColumnRange(NamedTuple):
    """A store seen through one range of its columns (a slice with start and stop).

    The weight metrics see a model's `params` (`Flattener.params_columns`) only: BatchNorm running
    statistics are no learned weights, and a model whose statistics alone changed is the same model to them.
    """

    store: ZooStore
    span: slice

    @property
    def num_models(self) -> int:
        return self.store.num_models

    @property
    def dim(self) -> int:
        return self.span.stop - self.span.start

    def read(self, index: int) -> np.ndarray:
        return self.store.read(index)[self.span]

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.store.rows(start, stop)[:, self.span]

    def columns(self, start: int, stop: int) -> np.ndarray:
        return self.store.columns(self.span.start + start, self.span.start + stop)

    def as_array(self) -> np.ndarray:
        return self.store.as_array()[:, self.span]


@partial(jax.jit, static_argnames="num_targets")
def _block_sums(block: jax.Array, num_targets: int) -> tuple[jax.Array, jax.Array]:
    """Squared distances (summed row by row, never |a|^2 + |b|^2 - 2ab, so a model is exactly 0 from itself) and
    dot products within one block, from every row to each of the first `num_targets` rows."""
    targets = block[:num_targets]
    squared = jax.lax.map(lambda row: jnp.sum(jnp.square(targets - row), axis=1), block)
    return squared, block @ targets.T


class PairwiseSums(NamedTuple):
    """Squared distances and dot products from every model of some stores to the first `num_targets` of them."""

    squared: np.ndarray
    dots: np.ndarray


def pairwise_sums(stores: Sequence[ZooStore], num_targets: int, block: int) -> PairwiseSums:
    """The one streamed kernel of the weight-space distances: the stores' models stacked, `block` columns at a time,
    their per-block sums added in float64, so no store need fit in memory."""
    num_rows = sum(store.num_models for store in stores)
    squared, dots = np.zeros((num_rows, num_targets)), np.zeros((num_rows, num_targets))
    step = partial(_block_sums, num_targets=num_targets)
    columns = stacked_columns(*(store.columns for store in stores))
    for _, _, (part_squared, part_dots) in map_column_blocks(step, columns, num_rows, stores[0].dim, block):
        squared += np.asarray(part_squared)
        dots += np.asarray(part_dots)
    return PairwiseSums(squared, dots)


class Geometry(NamedTuple):
    """Pairwise L2 distances and cosine similarities among the models of a store."""

    distance: np.ndarray
    cosine: np.ndarray


def geometry(store: ZooStore, others: ZooStore, block: int) -> Geometry:
    """Distances and cosines among all models of `store` then `others`, streamed over column blocks."""
    squared, dots = pairwise_sums((store, others), store.num_models + others.num_models, block)
    norms = np.sqrt(np.diag(dots))
    return Geometry(np.sqrt(squared), dots / np.maximum(np.outer(norms, norms), np.finfo(np.float64).tiny))


def nearest(matrix: np.ndarray, same_set: bool, largest: bool) -> np.ndarray:
    """Each row's best value among the columns (largest or smallest), its own column excluded within one set.

    NaN within a set of one model, which has no other: undefined, not the infinity an empty min would give.
    """
    matrix = np.array(matrix, dtype=np.float64)
    if same_set and len(matrix) < 2:
        return np.full(len(matrix), np.nan)
    if same_set:
        np.fill_diagonal(matrix, -np.inf if largest else np.inf)
    return matrix.max(axis=1) if largest else matrix.min(axis=1)


class Evidence(NamedTuple):
    """What one ensemble offers to the metrics, one entry per model."""

    wrong: np.ndarray  # (M, n) which test examples each model gets wrong
    class_distribution: np.ndarray  # (M, C) mean predicted class probabilities on the test set
    probabilities: np.ndarray  # (M, n, C) predicted class probabilities of each test example
    quantiles: np.ndarray  # (M, Q) quantile function of each model's weights


# The metrics read from each ensemble's `Evidence`: (pairwise matrix of two sets given whether to show a progress
# bar, whether larger is nearer). Only the per-example Jensen-Shannon takes long enough to show one.
EVIDENCE_METRICS = {
    "max_iou_of_errors": (lambda a, b, progress: iou(a.wrong, b.wrong), True),
    "min_jensen_shannon_per_example": (
        lambda a, b, progress: per_example_jensen_shannon(a.probabilities, b.probabilities, progress=progress),
        False,
    ),
    "min_jensen_shannon_of_marginals": (
        lambda a, b, progress: jensen_shannon(a.class_distribution, b.class_distribution),
        False,
    ),
    "min_wasserstein": (lambda a, b, progress: wasserstein(a.quantiles, b.quantiles), False),
}


def within(evidence: Evidence, progress: bool = False) -> dict[str, np.ndarray]:
    """Each model's value against its nearest other model of the same set, per evidence metric: a zoo's own
    original_to_original values, computed once per zoo (the zoo_diversity stage) for every ensemble compared."""
    return {
        name: nearest(np.asarray(pairwise(evidence, evidence, progress)), same_set=True, largest=largest)
        for name, (pairwise, largest) in EVIDENCE_METRICS.items()
    }


def per_model(
    original: Evidence,
    generated: Evidence,
    shape: Geometry,
    original_to_original: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """For every metric and direction, each source model's value against its nearest target model.

    `shape` holds the originals first, then the generated models. Every metric is symmetric, so each pair of
    sets is compared once (original_to_generated is generated_to_original's matrix seen from the other side);
    `original_to_original` (`within(original)`, computed before) spares the N x N comparison of the zoo.
    """
    sets = {"original": original, "generated": generated}
    split = len(original.wrong)
    rows = {"original": slice(0, split), "generated": slice(split, None)}
    known = {"original_to_original": original_to_original} if original_to_original is not None else {}
    names = (*EVIDENCE_METRICS, "nearest_l2", "max_cosine")
    result: dict[str, dict[str, np.ndarray]] = {name: {} for name in names}
    matrices: dict[tuple[str, str, str], np.ndarray] = {}
    for direction, (source, target) in DIRECTIONS.items():
        same = source == target
        for name, (pairwise, largest) in EVIDENCE_METRICS.items():
            if direction in known:
                result[name][direction] = known[direction][name]
                continue
            mirrored = matrices.get((name, target, source))
            matrix = mirrored.T if mirrored is not None else np.asarray(pairwise(sets[source], sets[target], False))
            matrices[(name, source, target)] = matrix
            result[name][direction] = nearest(matrix, same, largest)
        block = (rows[source], rows[target])
        result["nearest_l2"][direction] = nearest(shape.distance[block], same, largest=False)
        result["max_cosine"][direction] = nearest(shape.cosine[block], same, largest=True)
    return result
