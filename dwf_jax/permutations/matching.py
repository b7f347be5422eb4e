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
    reference: np.ndarray  # (n, rest): reference leaf with `axis` moved first


def _flat(array: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)


def _similarity(terms: list[_Term], arrays: dict[int, np.ndarray], axes: list[Axes], perms: dict) -> np.ndarray:
    """A[i, j] = <reference slice i, params slice j> summed over a group's terms.

    Other axes of each params leaf carry their groups' current permutations;
    the matched axis itself is left unpermuted so A's columns index raw slices.
    """
    n = terms[0].reference.shape[0]
    sim = np.zeros((n, n))
    for term in terms:
        other = permute_array(arrays[term.leaf], axes[term.leaf], perms, except_axis=term.axis)
        sim += term.reference @ _flat(other, term.axis).T
    return sim


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
    sizes = aligned.group_sizes()
    if init_perms is None:
        perms = {group: np.arange(n) for group, n in sizes.items()}
    else:
        perms = {group: np.asarray(p) for group, p in check_perms(init_perms, sizes).items()}

    arrays: dict[int, np.ndarray] = {}
    refs: dict[int, np.ndarray] = {}
    terms: dict[str, list[_Term]] = {group: [] for group in sizes}
    for i, (path, leaf, axes) in enumerate(zip(aligned.paths, aligned.leaves, aligned.axes, strict=False)):
        if not axes.permuted():
            continue
        ref = ref_by_path[path]
        if np.shape(ref) != np.shape(leaf):
            raise ValueError(f"reference and params differ in shape at {path}: {np.shape(ref)} vs {np.shape(leaf)}")
        arrays[i] = np.asarray(leaf, dtype=np.float64)
        refs[i] = np.asarray(ref, dtype=np.float64)
        for axis, group in axes.permuted():
            terms[group].append(_Term(i, axis, _flat(refs[i], axis)))

    unknown = sorted(set(fixed) - set(sizes))
    if unknown:
        raise ValueError(f"weight_matching: fixed group(s) {unknown} are not groups of the spec")
    groups = [group for group in sizes if group not in fixed]
    sweeps, converged = 0, not groups
    while sweeps < max_iter and not converged:
        key, order_key = jax.random.split(key)
        sweeps += 1
        converged = True
        for g in np.asarray(jax.random.permutation(order_key, len(groups))):
            group = groups[g]
            sim = _similarity(terms[group], arrays, aligned.axes, perms)
            rows, cols = linear_sum_assignment(sim, maximize=True)
            old = sim[rows, perms[group]].sum()
            new = sim[rows, cols].sum()
            if new - old > tol * max(abs(old), 1.0):
                perms[group] = cols
                converged = False

    objective = sum(
        (float(np.vdot(refs[i], permute_array(arrays[i], aligned.axes[i], perms))) for i in arrays),
        0.0,
    )
    return MatchResult(perms, objective, sweeps, converged)
