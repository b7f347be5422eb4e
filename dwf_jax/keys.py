"""Every random stream of a run, named in one place.

Zoo model i draws from `fold_in(key(seed), i)` (unchanged, so zoos trained
before stay valid). Each stage draws from `fold_in(key(seed), 2**31 + s)` for
its own stream number s: model indices stay below 2**31 (`MAX_MODELS`, checked
by the config), so no stage key can equal a model key, and no two stages share
a stream.
"""

import jax
import jax.numpy as jnp
import numpy as np

MAX_MODELS = 2**31
STAGE_STREAMS = ("canonical", "pca", "flow", "sample", "bn_calibration", "baselines")


def model_keys(seed: int, model_indices: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Per-model (init, data-order) keys, derived from the model's index alone."""
    indices = np.asarray(model_indices)
    if indices.size and (indices.min() < 0 or indices.max() >= MAX_MODELS):
        raise ValueError(f"model indices must lie in [0, {MAX_MODELS}), got {indices.min()}..{indices.max()}")
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(jax.random.key(seed), i)))(
        jnp.asarray(indices, jnp.uint32)
    )
    return keys[:, 0], keys[:, 1]


def stage_key(seed: int, stream: str) -> jax.Array:
    """The key of one stage's stream, disjoint from every model's."""
    if stream not in STAGE_STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; streams: {list(STAGE_STREAMS)}")
    return jax.random.fold_in(jax.random.key(seed), MAX_MODELS + STAGE_STREAMS.index(stream))
