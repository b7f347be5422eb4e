"""Git Re-Basin weight matching (Ainsworth et al., 2023), for arbitrary specs.

Finds permutations that make `params` as close as possible (in L2) to
`reference`. Because permutations preserve norms, that is the same as
maximising the inner product <reference, permuted params>, which coordinate
descent does one group at a time: with every other group fixed, the best
permutation of group g is a linear assignment problem.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NamedTuple

import jax
import numpy as np
from scipy.optimize import linear_sum_assignment

from .apply import check_perms, permute_array
from .spec import Aligned, Axes, align


class MatchResult(NamedTuple):
    """Outcome of `weight_matching`.

    perms: group name -> permutation (numpy int array); apply it to `params`
        with `apply_permutation` to align them to `reference`.
    objective: sum over permuted leaves of <reference, permuted params>
        (float64); higher means closer.
    sweeps: number of coordinate-descent sweeps run.
    converged: True when the last sweep improved no group, False when
        `max_iter` ran out first.
    """

    perms: dict[str, np.ndarray]
    objective: float
    sweeps: int
    converged: bool


class _Term(NamedTuple):
    """One (leaf, axis) that a group acts on, with the reference pre-flattened."""

    leaf: int
    axis: int
    reference: np.ndarray  # (n, rest): reference leaf with `axis` moved first; (heads, n, rest) per head
    heads_axis: int | None = None  # the heads axis of a PerHead group's leaf


def _flat(array: np.ndarray, axis: int, heads_axis: int | None = None) -> np.ndarray:
    if heads_axis is None:
        return np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
    return np.moveaxis(array, (heads_axis, axis), (0, 1)).reshape(array.shape[heads_axis], array.shape[axis], -1)


def _similarity(terms: list[_Term], arrays: dict[int, np.ndarray], axes: list[Axes], perms: dict) -> np.ndarray:
    """A[i, j] = <reference slice i, params slice j> summed over a group's terms; (heads, n, n) per head.

    Other axes of each params leaf carry their groups' current permutations (heads included, so
    row h of a PerHead group compares the reference's head h with the params' head now there);
    the matched axis itself is left unpermuted so A's columns index raw slices.
    """
    sim = np.zeros(terms[0].reference.shape[:-1] + terms[0].reference.shape[-2:-1])
    for term in terms:
        permuted = permute_array(arrays[term.leaf], axes[term.leaf], perms, except_axis=term.axis)
        sim += term.reference @ np.swapaxes(_flat(permuted, term.axis, term.heads_axis), -1, -2)
    return sim


def _best(sim: np.ndarray, current: np.ndarray, tol: float) -> np.ndarray | None:
    """The optimal assignment of one (n, n) similarity, or None if it does not beat `current` by `tol`."""
    rows, cols = linear_sum_assignment(sim, maximize=True)
    old, new = sim[rows, current].sum(), sim[rows, cols].sum()
    return cols if new - old > tol * max(abs(old), 1.0) else None


def _improve(sim: np.ndarray, current: np.ndarray, heads: np.ndarray | None, tol: float) -> np.ndarray | None:
    """A group's better permutation, or None. Per head, row h of `sim` is the params' head heads[h]."""
    if heads is None:
        return _best(sim, current, tol)
    updated, improved = current.copy(), False
    for h, source in enumerate(heads):
        cols = _best(sim[h], current[source], tol)
        if cols is not None:
            updated[source], improved = cols, True
    return updated if improved else None


def _check_finite(name: str, aligned: Aligned) -> None:
    """Raise naming the first leaf with NaN/Inf (scipy's own error names no leaf)."""
    for path, leaf in zip(aligned.paths, aligned.leaves, strict=True):
        bad = np.size(leaf) - np.count_nonzero(np.isfinite(leaf))
        if bad:
            raise ValueError(f"weight_matching: {name}{path} has {bad} NaN/Inf entries")


def weight_matching(
    key: jax.Array,
    spec: Any,
    reference: Any,
    params: Any,
    max_iter: int = 100,
    tol: float = 1e-12,
    init_perms: dict[str, Any] | None = None,
    fixed: Collection[str] = (),
) -> MatchResult:
    """Permutations of `params` that best match `reference` (Git Re-Basin).

    Each sweep visits all groups in a random order drawn from `key` (a fresh
    subkey per sweep) and replaces a group's permutation by the optimal
    assignment only if that raises its similarity by more than
    `tol * max(|old|, 1)`, so the objective never decreases. Stops after a
    sweep with no improvement or after `max_iter` sweeps (at least 1).
    Groups in `fixed` keep their `init_perms` (TransFusion fixes heads this way).
    Leaves without permuted axes are constant under permutation and are skipped.

    All work happens on host in float64; the arrays are converted once. Every
    leaf of both trees must be finite, checked up front so that a diverged
    model is named by its leaf path rather than failing inside scipy's solver.
    """
    if max_iter < 1:
        raise ValueError(f"weight_matching: max_iter must be >= 1, got {max_iter}")
    ref_aligned = align(spec, reference)
    aligned = align(spec, params)
    _check_finite("reference", ref_aligned)
    _check_finite("params", aligned)
    ref_by_path = dict(zip(ref_aligned.paths, ref_aligned.leaves, strict=False))
    shapes, per_head = aligned.perm_shapes(), aligned.per_head()
    if init_perms is None:
        perms = {group: np.broadcast_to(np.arange(shape[-1]), shape).copy() for group, shape in shapes.items()}
    else:
        perms = {group: np.asarray(p) for group, p in check_perms(init_perms, shapes).items()}

    arrays: dict[int, np.ndarray] = {}
    refs: dict[int, np.ndarray] = {}
    terms: dict[str, list[_Term]] = {group: [] for group in shapes}
    for i, (path, leaf, axes) in enumerate(zip(aligned.paths, aligned.leaves, aligned.axes, strict=False)):
        if not axes.permuted():
            continue
        ref = ref_by_path[path]
        if np.shape(ref) != np.shape(leaf):
            raise ValueError(f"reference and params differ in shape at {path}: {np.shape(ref)} vs {np.shape(leaf)}")
        arrays[i] = np.asarray(leaf, dtype=np.float64)
        refs[i] = np.asarray(ref, dtype=np.float64)
        for axis, group in axes.permuted():
            heads = axes.heads_of(axis)
            heads_axis = None if heads is None else axes.names.index(heads)
            terms[group].append(_Term(i, axis, _flat(refs[i], axis, heads_axis), heads_axis))

    unknown = sorted(set(fixed) - set(shapes))
    if unknown:
        raise ValueError(f"weight_matching: fixed group(s) {unknown} are not groups of the spec")
    groups = [group for group in shapes if group not in fixed]
    sweeps, converged = 0, not groups
    while sweeps < max_iter and not converged:
        key, order_key = jax.random.split(key)
        sweeps += 1
        converged = True
        for g in np.asarray(jax.random.permutation(order_key, len(groups))):
            group = groups[g]
            sim = _similarity(terms[group], arrays, aligned.axes, perms)
            heads = perms[per_head[group]] if group in per_head else None
            better = _improve(sim, perms[group], heads, tol)
            if better is not None:
                perms[group], converged = better, False

    objective = sum(
        (float(np.vdot(refs[i], permute_array(arrays[i], aligned.axes[i], perms))) for i in arrays),
        0.0,
    )
    return MatchResult(perms, objective, sweeps, converged)
