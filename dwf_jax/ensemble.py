"""Run a per-model function over the leading (model) axis of a stacked zoo."""

from collections.abc import Callable
from typing import Any

import jax

from dwf_jax.sharding import gathered, over_models

PyTree = Any


def map_models(fn: Callable[[PyTree], PyTree], stacked: PyTree, models_per_vmap: int = 0) -> PyTree:
    """`fn` applied to every model: all at once with vmap (0), or `models_per_vmap` at a time with lax.map.

    Both stay inside one jitted program; under a mesh each device maps its share
    of the models (`sharding.over_models`) and every process gets all results. Vmapping convolutions over models turns
    them into grouped convolutions, which XLA's CPU backend runs several times
    slower than one model at a time; dense layers vmap well everywhere.
    """

    def on_one_device(models: PyTree) -> PyTree:
        if models_per_vmap == 0:
            return jax.vmap(fn)(models)
        return jax.lax.map(fn, models, batch_size=models_per_vmap)

    return gathered(over_models(on_one_device)(stacked))
