"""Run a per-model function over the leading (model) axis of a stacked zoo."""

from typing import Any, Callable

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
