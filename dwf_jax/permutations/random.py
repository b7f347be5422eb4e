"""Sampling uniformly random permutations for every group of a spec."""

from __future__ import annotations

from typing import Any

import jax

from .spec import align


def random_permutation(key: jax.Array, spec: Any, params: Any) -> dict[str, jax.Array]:
    """One uniform permutation per group (per head of a PerHead group), deterministic in `key`.

    Keys are split once and handed out in sorted group order, so the result
    depends only on `key` and the group names/sizes, never on dict order.
    Only shapes of `params` are read, so `jax.ShapeDtypeStruct` leaves work too.
    """
    shapes = align(spec, params).perm_shapes()
    keys = jax.random.split(key, len(shapes))
    return {
        group: jax.vmap(lambda k, n=shape[-1]: jax.random.permutation(k, n))(jax.random.split(k, shape[0]))
        if len(shape) == 2
        else jax.random.permutation(k, shape[0])
        for (group, shape), k in zip(shapes.items(), keys, strict=False)
    }
