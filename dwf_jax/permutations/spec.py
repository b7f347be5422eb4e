"""Permutation specs: which permutation group acts on which axis of which array.

A spec is a pytree with exactly the structure of the parameters it describes,
whose leaves are `Axes`. Keeping the spec a mirror of the params (rather than a
flat name table) lets it be written with the same nesting Flax produces and be
checked leaf-by-leaf against real arrays, with readable key paths in errors.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.tree_util import keystr


@dataclasses.dataclass(frozen=True)
class PerHead:
    """An axis permuted by group `name` within each head: one permutation per entry of the `heads` axis.

    Attention's query/key dimensions of a head move together only within that head, so every head
    may order them differently (TransFusion's intra-head symmetry). The group's permutation is an
    (num_heads, head_dim) array whose row j permutes the dimensions of the params' head j, which
    keeps them when the heads themselves move: `new[h, i] = old[p_heads[h], p[p_heads[h], i]]`.
    """

    name: str
    heads: str


@dataclasses.dataclass(frozen=True, init=False)
class Axes:
    """Permutation group name (or None = not permuted) for each axis of one array.

    An axis may instead be `PerHead(name, heads)`, permuted within each head of the array's
    `heads` axis. Deliberately not registered as a pytree node, so it stays a leaf of the spec.
    """

    names: tuple[str | None, ...]
    within: tuple[tuple[int, str], ...]  # (axis, heads group) of every PerHead axis

    def __init__(self, *names: str | PerHead | None) -> None:
        for name in names:
            if name is not None and not isinstance(name, str | PerHead):
                raise TypeError(f"Axes names must be str, PerHead or None, got {name!r}")
        plain = tuple(name.name if isinstance(name, PerHead) else name for name in names)
        within = tuple((axis, name.heads) for axis, name in enumerate(names) if isinstance(name, PerHead))
        object.__setattr__(self, "names", plain)
        object.__setattr__(self, "within", within)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        heads = dict(self.within)
        shown = [f"PerHead({n!r}, {heads[a]!r})" if a in heads else repr(n) for a, n in enumerate(self.names)]
        return f"Axes({', '.join(shown)})"

    def permuted(self) -> tuple[tuple[int, str], ...]:
        """(axis, group) for every permuted axis, in axis order."""
        return tuple((axis, g) for axis, g in enumerate(self.names) if g is not None)

    def heads_of(self, axis: int) -> str | None:
        """The heads group of a PerHead axis, None for a plain one."""
        return dict(self.within).get(axis)


def per_head_groups(spec: Any) -> dict[str, str]:
    """Every PerHead group of `spec` and the heads group it acts within (only the spec is read)."""
    found: dict[str, str] = {}
    for axes in jax.tree_util.tree_leaves(spec):
        for axis, heads in axes.within:
            found[axes.names[axis]] = heads
    return found


class Aligned(NamedTuple):
    """Params leaves paired with their `Axes`, in params flatten order.

    `treedef` is the params' own structure, so transformed leaves can be put
    back into exactly the container types the caller passed in.
    """

    paths: list[str]
    leaves: list[Any]
    axes: list[Axes]
    treedef: jax.tree_util.PyTreeDef

    def group_sizes(self) -> dict[str, int]:
        """Size of every permutation group, keyed by group name in sorted order."""
        sizes = {
            group: np.shape(leaf)[axis]
            for leaf, axes in zip(self.leaves, self.axes, strict=True)
            for axis, group in axes.permuted()
        }
        return dict(sorted(sizes.items()))

    def per_head(self) -> dict[str, str]:
        """Every PerHead group and the heads group it acts within."""
        return {axes.names[axis]: heads for axes in self.axes for axis, heads in axes.within}

    def perm_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every group's permutation: (n,), or (num_heads, head_dim) for a PerHead group."""
        sizes, per_head = self.group_sizes(), self.per_head()
        return {g: (sizes[per_head[g]], n) if g in per_head else (n,) for g, n in sizes.items()}

    def group_axes(self) -> dict[str, list[tuple[str, int]]]:
        """For every group (sorted), the (key path, axis) pairs it permutes."""
        found: dict[str, list[tuple[str, int]]] = {}
        for path, axes in zip(self.paths, self.axes, strict=False):
            for axis, group in axes.permuted():
                found.setdefault(group, []).append((path, axis))
        return dict(sorted(found.items()))


def _structure_error(spec_paths: set[str], param_paths: set[str]) -> str | None:
    missing = sorted(param_paths - spec_paths)
    extra = sorted(spec_paths - param_paths)
    parts = []
    if missing:
        parts.append(f"spec has no entry for params leaf(s) {', '.join(missing)}")
    if extra:
        parts.append(f"spec entry(ies) {', '.join(extra)} match no params leaf")
    return "; ".join(parts) or None


def align(spec: Any, params: Any) -> Aligned:
    """Validate `spec` against `params` and pair every params leaf with its `Axes`.

    Raises one `ValueError` naming the offending key path(s) when the
    structures differ, an `Axes` length differs from the array's ndim, one
    group is used on axes of different sizes, or one group permutes two axes
    of the same array. The last is refused because weight matching cannot
    handle it: that group's objective is then quadratic in its permutation, not
    a linear assignment, and the matcher's linearised updates oscillate and
    can end worse than not permuting at all.
    """
    spec_pairs, _ = jax.tree_util.tree_flatten_with_path(spec)
    by_path = {keystr(path): axes for path, axes in spec_pairs}
    param_pairs, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [keystr(path) for path, _ in param_pairs]
    for path, axes in by_path.items():
        if not isinstance(axes, Axes):
            raise ValueError(f"spec leaf at {path} must be Axes, got {axes!r}")
    error = _structure_error(set(by_path), set(paths))
    if error:
        raise ValueError(f"spec does not match params structure: {error}")

    leaves = [leaf for _, leaf in param_pairs]
    axes_list = [by_path[path] for path in paths]
    seen: dict[str, tuple[str, int, int]] = {}
    within: dict[str, str | None] = {}
    for path, leaf, axes in zip(paths, leaves, axes_list, strict=False):
        shape = np.shape(leaf)
        if len(axes) != len(shape):
            raise ValueError(
                f"spec at {path} has {len(axes)} axes {axes} but the array has ndim {len(shape)} (shape {shape})"
            )
        axis_of: dict[str, int] = {}
        for axis, group in axes.permuted():
            if group in axis_of:
                raise ValueError(
                    f"spec at {path} uses group {group!r} on axes {axis_of[group]} and {axis}: "
                    "a group may permute at most one axis of each array (weight matching cannot align it otherwise)"
                )
            axis_of[group] = axis
            heads = axes.heads_of(axis)
            if heads is not None and heads not in axes.names:
                raise ValueError(
                    f"spec at {path} permutes axis {axis} within the heads of group {heads!r}, "
                    "which is on no axis of that array"
                )
            if within.setdefault(group, heads) != heads:
                raise ValueError(f"group {group!r} is per head of {within[group]!r} elsewhere but not at {path}")
            first = seen.setdefault(group, (path, axis, shape[axis]))
            if first[2] != shape[axis]:
                raise ValueError(
                    f"group {group!r} has inconsistent sizes: {first[2]} at "
                    f"{first[0]} axis {first[1]} but {shape[axis]} at {path} axis {axis}"
                )
    return Aligned(paths, leaves, axes_list, treedef)


def validate(spec: Any, params: Any) -> None:
    """Raise a `ValueError` naming the offending path if `spec` does not fit `params`."""
    align(spec, params)


def group_sizes(spec: Any, params: Any) -> dict[str, int]:
    """Size of every permutation group, keyed by group name in sorted order."""
    return align(spec, params).group_sizes()


def group_axes(spec: Any, params: Any) -> dict[str, list[tuple[str, int]]]:
    """For every group (sorted), the (key path, axis) pairs it permutes."""
    return align(spec, params).group_axes()
