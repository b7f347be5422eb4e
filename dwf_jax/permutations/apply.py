"""Applying, checking and inverting permutations of a params pytree.

Convention (same as git-re-basin's `get_permuted_param`): along an axis in
group g, the permuted array satisfies `new[i] = old[perms[g][i]]`. A PerHead
group's (heads, head_dim) permutation reorders each head's dimensions before
the heads move: `new[h, i] = old[p_heads[h], p[p_heads[h], i]]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .spec import Axes, align, per_head_groups


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


def check_perms(perms: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """Check that `perms` holds a valid permutation of the given shape for every group in `shapes`.

    A shape (n,) is one permutation of range(n); (heads, n) is one per head (a PerHead group).
    Returns the permutations (host numpy arrays when concrete) for exactly the
    groups in `shapes`; extra entries are ignored so one perm dict can serve
    several specs. Traced perms (under `jit`) can only be checked for shape and
    dtype, so their values are trusted.
    """
    missing = sorted(set(shapes) - set(perms))
    if missing:
        raise ValueError(f"no permutation given for group(s) {missing}")
    checked = {}
    for group, shape in shapes.items():
        perm = perms[group]
        if not isinstance(perm, jax.Array | np.ndarray):
            perm = np.asarray(perm)
        if perm.shape != tuple(shape):
            raise ValueError(
                f"permutation for group {group!r} has shape {perm.shape}, expected {tuple(shape)} (wrong length)"
            )
        if not jnp.issubdtype(perm.dtype, jnp.integer):
            raise ValueError(f"permutation for group {group!r} has dtype {perm.dtype}, expected integers")
        values = _concrete(perm)
        if values is not None:
            for row in values.reshape(-1, shape[-1]):
                problem = _not_a_permutation(row, shape[-1])
                if problem:
                    raise ValueError(f"permutation for group {group!r} is not a permutation: {problem}")
            perm = values
        checked[group] = perm
    return checked


def _within_heads(array: Any, heads_axis: int, axis: int, perm: Any) -> Any:
    """`array` with the dimensions of head j along `axis` reordered by perm[j] (heads along `heads_axis`)."""
    xp = np if isinstance(array, np.ndarray) and isinstance(perm, np.ndarray) else jnp
    moved = xp.moveaxis(array, (heads_axis, axis), (0, 1))
    index = perm.reshape(perm.shape + (1,) * (moved.ndim - 2))
    taken = xp.take_along_axis(moved, xp.broadcast_to(index, moved.shape), axis=1)
    return xp.moveaxis(taken, (0, 1), (heads_axis, axis))


def permute_array(array: Any, axes: Axes, perms: Mapping[str, Any], except_axis: int | None = None) -> Any:
    """Reindex every permuted axis of `array` (but `except_axis`) by its group's perm.

    PerHead axes go first, while each head is still where the params hold it.
    Stays in numpy when both array and perms are numpy, so host-side matching
    never round-trips through the device.
    """
    for axis, heads in axes.within:
        if axis != except_axis:
            array = _within_heads(array, axes.names.index(heads), axis, perms[axes.names[axis]])
    for axis, group in axes.permuted():
        if axis == except_axis or axes.heads_of(axis) is not None:
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
    checked = check_perms(perms, aligned.perm_shapes())
    leaves = [permute_array(leaf, axes, checked) for leaf, axes in zip(aligned.leaves, aligned.axes, strict=False)]
    return jax.tree_util.tree_unflatten(aligned.treedef, leaves)


def inverse_permutation(perms: Mapping[str, Any], spec: Any = None) -> dict[str, Any]:
    """Per-group inverse, so that applying `perms` then the result is the identity.

    A PerHead group's inverse depends on its heads' permutation, which `spec` names.
    """
    per_head = per_head_groups(spec) if spec is not None else {}
    unnamed = sorted(group for group, perm in perms.items() if np.ndim(perm) == 2 and group not in per_head)
    if unnamed:
        raise ValueError(f"group(s) {unnamed} are permuted per head: pass the spec to invert them")
    inverse = {}
    for group, perm in perms.items():
        xp = jnp if isinstance(perm, jax.Array) else np
        if group in per_head:  # old head p[k] reordered by perm[p[k]] lands at k: undo it there
            inverse[group] = xp.argsort(xp.take(perm, perms[per_head[group]], axis=0), axis=-1)
        else:
            inverse[group] = xp.argsort(perm)
    return inverse
