"""Sampling uniformly random permutations for every group of a spec."""

from __future__ import annotations

from typing import Any

import jax

from .spec import group_sizes


def random_permutation(key: jax.Array, spec: Any, params: Any) -> dict[str, jax.Array]:
    """One uniform permutation per group, deterministic in `key`.

    Keys are split once and handed out in sorted group order, so the result
    depends only on `key` and the group names/sizes, never on dict order.
    Only shapes of `params` are read, so `jax.ShapeDtypeStruct` leaves work too.
    """
    sizes = group_sizes(spec, params)
    keys = jax.random.split(key, len(sizes))
    return {group: jax.random.permutation(k, n) for (group, n), k in zip(sizes.items(), keys, strict=False)}
