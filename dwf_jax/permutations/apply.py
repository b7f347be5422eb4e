"""Applying, checking and inverting permutations of a params pytree.

Convention (same as git-re-basin's `get_permuted_param`): along an axis in
group g, the permuted array satisfies `new[i] = old[perms[g][i]]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .spec import Axes, align


def _concrete(perm: Any) -> np.ndarray | None:
    """Host copy of `perm`, or None when it is traced (values unknowable)."""
    try:
        return np.asarray(perm)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _not_a_permutation(values: np.ndarray, n: int) -> str | None:
    out_of_range = values[(values < 0) | (values >= n)]
    if out_of_range.size:
        return f"value(s) {np.unique(out_of_range).tolist()} outside range({n})"
    counts = np.bincount(values, minlength=n)
    if np.any(counts != 1):
        return (
            f"value(s) {np.flatnonzero(counts > 1).tolist()} repeated and "
            f"{np.flatnonzero(counts == 0).tolist()} missing"
        )
    return None


def check_perms(perms: Mapping[str, Any], sizes: Mapping[str, int]) -> dict[str, Any]:
    """Check that `perms` holds a valid permutation for every group in `sizes`.

    Returns the permutations (host numpy arrays when concrete) for exactly the
    groups in `sizes`; extra entries are ignored so one perm dict can serve
    several specs. Traced perms (under `jit`) can only be checked for shape and
    dtype, so their values are trusted.
    """
    missing = sorted(set(sizes) - set(perms))
    if missing:
        raise ValueError(f"no permutation given for group(s) {missing}")
    checked = {}
    for group, n in sizes.items():
        perm = perms[group]
        if not isinstance(perm, jax.Array | np.ndarray):
            perm = np.asarray(perm)
        if perm.shape != (n,):
            raise ValueError(f"permutation for group {group!r} has shape {perm.shape}, expected ({n},) (wrong length)")
        if not jnp.issubdtype(perm.dtype, jnp.integer):
            raise ValueError(f"permutation for group {group!r} has dtype {perm.dtype}, expected integers")
        values = _concrete(perm)
        if values is not None:
            problem = _not_a_permutation(values, n)
            if problem:
                raise ValueError(f"permutation for group {group!r} is not a permutation: {problem}")
            perm = values
        checked[group] = perm
    return checked


def permute_array(array: Any, axes: Axes, perms: Mapping[str, Any], except_axis: int | None = None) -> Any:
    """Reindex every permuted axis of `array` (but `except_axis`) by its group's perm.

    Stays in numpy when both array and perms are numpy, so host-side matching
    never round-trips through the device.
    """
    for axis, group in axes.permuted():
        if axis == except_axis:
            continue
        perm = perms[group]
        if isinstance(array, np.ndarray) and isinstance(perm, np.ndarray):
            array = np.take(array, perm, axis=axis)
        else:
            array = jnp.take(array, perm, axis=axis)
    return array


def apply_permutation(spec: Any, perms: Mapping[str, Any], params: Any) -> Any:
    """Return `params` with every axis in group g reindexed by `perms[g]`.

    The result has the structure, array types and dtypes of `params`. Usable
    under `jit` (close over `spec`; traced perms are then not value-checked).
    """
    aligned = align(spec, params)
    checked = check_perms(perms, aligned.group_sizes())
    leaves = [permute_array(leaf, axes, checked) for leaf, axes in zip(aligned.leaves, aligned.axes, strict=False)]
    return jax.tree_util.tree_unflatten(aligned.treedef, leaves)


def inverse_permutation(perms: Mapping[str, Any]) -> dict[str, Any]:
    """Per-group inverse, so that applying `perms` then the result is the identity."""
    return {
        group: jnp.argsort(perm) if isinstance(perm, jax.Array) else np.argsort(perm) for group, perm in perms.items()
    }
