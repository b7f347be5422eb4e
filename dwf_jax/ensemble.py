"""Run a per-model function over the leading (model) axis of a stacked zoo."""

from typing import Any, Callable, Sequence

import jax
import numpy as np

PyTree = Any


def map_models(fn: Callable[[PyTree], PyTree], stacked: PyTree, models_per_vmap: int = 0) -> PyTree:
    """`fn` applied to every model: all at once with vmap (0), or `models_per_vmap` at a time with lax.map.

    Both stay inside one jitted program. Vmapping convolutions over models turns
    them into grouped convolutions, which XLA's CPU backend runs several times
    slower than one model at a time; dense layers vmap well everywhere.
    """
    if models_per_vmap == 0:
        return jax.vmap(fn)(stacked)
    return jax.lax.map(fn, stacked, batch_size=models_per_vmap)


class NonFiniteWeights(FloatingPointError):
    """Some models of a stacked zoo have NaN or Inf weights."""


def check_finite(stacked: PyTree, what: str, advice: str) -> None:
    """Raise naming the models (leading-axis indices) whose weights are not all finite."""
    leaves = [np.asarray(leaf).reshape(len(leaf), -1) for leaf in jax.tree.leaves(stacked)]
    finite = np.all([np.all(np.isfinite(leaf), axis=1) for leaf in leaves], axis=0)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise NonFiniteWeights(f"{what}: {len(bad)} of {len(finite)} models have NaN/Inf weights (indices {bad[:10].tolist()}). {advice}")


def architecture_mismatch(expected: PyTree, actual: PyTree) -> str | None:
    """How `actual` differs from `expected` in keys or array shapes (None when they match)."""
    expected_leaves = {jax.tree_util.keystr(path): np.shape(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(expected)}
    actual_leaves = {jax.tree_util.keystr(path): np.shape(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(actual)}
    for path in sorted(expected_leaves.keys() | actual_leaves.keys()):
        if path not in actual_leaves:
            return f"{path} is missing"
        if path not in expected_leaves:
            return f"{path} is not part of the architecture"
        if expected_leaves[path] != actual_leaves[path]:
            return f"{path} has shape {actual_leaves[path]}, expected {expected_leaves[path]}"
    return None


def stack(models: Sequence[PyTree]) -> PyTree:
    """One stacked zoo (leading model axis) from separately trained models of one architecture."""
    if len(models) < 2:
        raise ValueError(f"a zoo needs at least 2 models, got {len(models)}")
    for index, candidate in enumerate(models[1:], start=1):
        difference = architecture_mismatch(models[0], candidate)
        if difference:
            raise ValueError(f"model {index} has another architecture than model 0: {difference}")
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *models)
