"""Accuracy (Spearman correlation for regression) of whole ensembles, one jitted apply over the model axis,
and their distances in weight space."""

import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dwf_jax.diversity import ColumnRange, Geometry, geometry, nearest, pairwise_sums
from dwf_jax.ensemble import map_models
from dwf_jax.zoo_store import MemoryZoo, ZooStore

PyTree = Any
# Why a summary is null: its values are each model's nearest other model (or distance to another), of a set of one.
UNDEFINED = "needs at least 2 models: a set of one has no other model"


@partial(jax.jit, static_argnames=("model", "transform", "models_per_vmap"))
def _predictions_in_batch(
    stacked_variables: PyTree, x: jax.Array, *, model: nn.Module, transform: Callable, models_per_vmap: int
) -> tuple[jax.Array, jax.Array]:
    """Every model's predicted class and class probabilities per example."""
    inputs = transform(x)
    logits = map_models(
        lambda variables: model.apply(variables, inputs, train=False), stacked_variables, models_per_vmap
    )
    return jnp.argmax(logits, axis=-1), jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


@partial(jax.jit, static_argnames=("model", "transform", "models_per_vmap"))
def _scores_in_batch(
    stacked_variables: PyTree, x: jax.Array, *, model: nn.Module, transform: Callable, models_per_vmap: int
) -> jax.Array:
    """Every model's predicted score per example (a regression model's single output)."""
    inputs = transform(x)
    return map_models(lambda variables: model.apply(variables, inputs, train=False), stacked_variables, models_per_vmap)


def ensemble_scores(
    model: nn.Module,
    stacked_variables: PyTree,
    x: np.ndarray,
    batch_size: int = 2000,
    transform: Callable[[jax.Array], jax.Array] = lambda inputs: inputs,
    models_per_vmap: int = 0,
) -> np.ndarray:
    """(M, n) predicted scores of every model of a stacked regression zoo, the test set streamed in batches."""
    predict = partial(_scores_in_batch, model=model, transform=transform, models_per_vmap=models_per_vmap)
    batches = [x[start : start + batch_size] for start in range(0, len(x), batch_size)]
    return np.concatenate([np.asarray(predict(stacked_variables, batch)) for batch in batches], axis=1)


def ensemble_predictions(
    model: nn.Module,
    stacked_variables: PyTree,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 2000,
    transform: Callable[[jax.Array], jax.Array] = lambda images: images,
    models_per_vmap: int = 0,
    regression: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(M, n) which test examples each model gets wrong, and (M, n, C) its predicted class probabilities (float32).

    The test set is streamed in batches. `transform` must be a function that lives as long as the
    program (e.g. from `augment.input_pipeline`): it keys the compilation cache. A `regression`
    model is wrong where its score has the other sign than the target's (positive or not), and
    its "classes" are not positive and positive: probability 1 for the sign it predicts.
    """
    if regression:
        positive = ensemble_scores(model, stacked_variables, x, batch_size, transform, models_per_vmap) > 0
        return positive != (np.asarray(y) > 0)[None, :], np.stack([~positive, positive], axis=-1).astype(np.float32)
    predict = partial(_predictions_in_batch, model=model, transform=transform, models_per_vmap=models_per_vmap)
    parts = [predict(stacked_variables, x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
    labels = np.concatenate([np.asarray(batch_labels) for batch_labels, _ in parts], axis=1)
    probabilities = np.concatenate([np.asarray(batch_probabilities) for _, batch_probabilities in parts], axis=1)
    return labels != np.asarray(y)[None, :], probabilities


def ensemble_accuracy(
    model: nn.Module, stacked_variables: PyTree, x: np.ndarray, y: np.ndarray, **options: Any
) -> np.ndarray:
    """Test accuracy (percent) of every model in a stacked zoo (eval mode); `options` as for ensemble_predictions.

    For a `regression` zoo, each model's Spearman correlation with the targets instead.
    """
    if options.pop("regression", False):
        return spearman(ensemble_scores(model, stacked_variables, x, **options), np.asarray(y))
    return percent_correct(ensemble_predictions(model, stacked_variables, x, y, **options)[0])


def spearman(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each row's Spearman rank correlation with `targets`; 0 for a row of equal scores, which ranks nothing."""
    import scipy.stats  # here: scipy.stats takes ~0.5 s to import, which every command line start would pay

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
        rho = np.array([scipy.stats.spearmanr(row, targets).statistic for row in scores], np.float64)
    return np.nan_to_num(rho, nan=0.0)


def percent_correct(wrong: np.ndarray) -> np.ndarray:
    """Each model's test accuracy (percent) from its (M, n) errors, as `ensemble_predictions` gives them."""
    return 100.0 * (wrong.shape[1] - wrong.sum(axis=1)) / wrong.shape[1]


def summary(values: np.ndarray) -> dict[str, float | str | None]:
    """Mean, std, min and max; all null, with `undefined` saying why, where a value is undefined (NaN) or none is
    given: JSON has no NaN or Infinity."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.isnan(values).any():
        return {"mean": None, "std": None, "min": None, "max": None, "undefined": UNDEFINED}
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def distances_to(targets: ZooStore, others: ZooStore, block: int) -> np.ndarray:
    """Euclidean distances (targets + others, targets) from every model of both stores to each target.

    Streamed in blocks of `block` columns (`diversity.pairwise_sums`), so identical models are exactly 0 apart.
    """
    return np.sqrt(pairwise_sums((targets, others), targets.num_models, block).squared)


class Distances(NamedTuple):
    """The weight-space distances a report summarises."""

    num_params: int
    to_reference_before: np.ndarray  # (N,) original models to the original reference model
    to_reference_after: np.ndarray  # (N,) canonical models to the canonical reference model
    generated_to_canonical: np.ndarray  # (M, N)
    canonical_to_canonical: np.ndarray  # (N, N)
    among_all: Geometry  # (N + M, N + M) distances and cosines, canonical models first


def zoo_distances(
    reference: int, original: ZooStore, canonical: ZooStore, generated: ZooStore, block: int, params: slice
) -> Distances:
    """The report's distances over the `params` columns (`Flattener.params_columns`: BatchNorm running statistics
    are no learned weights), streamed over column blocks of the three stores."""
    num_models, num_params = canonical.num_models, canonical.dim
    original, canonical, generated = (ColumnRange(store, params) for store in (original, canonical, generated))
    before = distances_to(MemoryZoo(original.read(reference)[None]), original, block)
    among_all = geometry(canonical, generated, block)
    return Distances(
        num_params=num_params,
        to_reference_before=before[1:, 0],
        to_reference_after=among_all.distance[:num_models, reference],
        generated_to_canonical=among_all.distance[num_models:, :num_models],
        canonical_to_canonical=among_all.distance[:num_models, :num_models],
        among_all=among_all,
    )


def novelty(to_originals: np.ndarray, among_originals: np.ndarray) -> dict[str, dict[str, float]]:
    """Each generated model's distance to its nearest original, beside the originals' own nearest-neighbour distances.

    Takes the (M, N) generated-to-original and (N, N) original-to-original distances.
    Generated models far closer to an original than originals are to each other
    would be memorised copies rather than new networks.
    """
    return {
        "generated_to_nearest_original": summary(np.min(to_originals, axis=1)),
        "original_to_nearest_other_original": summary(nearest(among_originals, same_set=True, largest=False)),
    }


def generalization_gap(generated_to_training: np.ndarray, held_out_to_training: np.ndarray) -> float:
    """1 - (mean L2 from a generated net to its nearest training net) / (the same mean of the held-out nets).

    Takes the (M, T) generated-to-training and (H, T) held-out-to-training distances. Held-out nets are fresh draws
    of the zoo's distribution that nothing was fitted on, so their distance to the training nets is what a generator
    that generalizes gives: 0 there (exactly 0 for held-out nets measured as if generated), 1 for copies of training
    nets, negative for nets farther from the training nets than real ones are. Both means are taken against the same
    training nets, so the sizes of the held-out and generated sets do not bias it (a nearest neighbour among fewer
    nets is farther away: comparing distances to held-out with distances to training nets would be). NaN when the
    held-out nets coincide with training nets (no yardstick).
    """
    generated = float(np.mean(np.min(generated_to_training, axis=1), dtype=np.float64))
    yardstick = float(np.mean(np.min(held_out_to_training, axis=1), dtype=np.float64))
    return 1.0 - generated / yardstick if yardstick > 0 else float("nan")
