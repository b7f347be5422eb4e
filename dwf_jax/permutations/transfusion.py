"""TransFusion (Rinaldi et al., 2025): Git Re-Basin for transformers, with heads matched by their spectra.

A head's query, key, value and output projections are matrices whose rows and
columns the other groups (residual stream, dimensions within the head) permute,
so their singular values do not depend on any of those permutations. Heads
are therefore matched first, block by block, by the distance between their
spectra (a linear assignment); weight matching then aligns every other group
with the heads held fixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from scipy.optimize import linear_sum_assignment

from .matching import MatchResult, weight_matching
from .spec import align


def head_spectra(spec: Any, params: Any, head_group: str) -> list[np.ndarray]:
    """Per projection kernel of `head_group`, the (heads, k) singular values of each head's slice.

    A kernel's head axis moves first and its other axes fold into a matrix per
    head: (dim, heads, head_dim) gives (heads, dim, head_dim). Biases are vectors
    per head and carry no spectrum beyond their norm; they are left to weight matching.
    """
    aligned = align(spec, params)
    spectra = []
    for leaf, axes in zip(aligned.leaves, aligned.axes, strict=True):
        for axis, group in axes.permuted():
            if group == head_group and np.ndim(leaf) >= 3:
                heads = np.moveaxis(np.asarray(leaf, np.float64), axis, 0)
                spectra.append(np.linalg.svd(heads.reshape(heads.shape[0], heads.shape[1], -1), compute_uv=False))
    if not spectra:
        raise ValueError(f"transfusion: no kernel of rank >= 3 carries head group {head_group!r}")
    return spectra


def match_heads(spec: Any, reference: Any, params: Any, head_group: str) -> np.ndarray:
    """The permutation of `params`' heads closest in spectrum to the reference's heads (new[i] = old[perm[i]])."""
    distance = sum(
        np.linalg.norm(ours[:, None, :] - theirs[None, :, :], axis=-1)
        for ours, theirs in zip(
            head_spectra(spec, reference, head_group), head_spectra(spec, params, head_group), strict=True
        )
    )
    rows, columns = linear_sum_assignment(distance)
    return columns[np.argsort(rows)]


def transfusion(
    key: jax.Array, spec: Any, reference: Any, params: Any, head_groups: Sequence[str], max_iter: int = 10
) -> MatchResult:
    """Permutations of `params` that align it to `reference`: heads by spectra, then weight matching.

    Never worse than weight matching with every head where it is: if the aligned inner product
    with the reference falls below that (spectra can mislead between unrelated models), that
    result is returned. PerHead groups (each head's query/key and value/output dimensions) are
    solved per head by weight matching in both.
    """
    shapes = align(spec, params).perm_shapes()
    missing = sorted(set(head_groups) - set(shapes))
    if missing:
        raise ValueError(f"transfusion: head group(s) {missing} are not groups of the spec")
    identity = {group: np.broadcast_to(np.arange(shape[-1]), shape).copy() for group, shape in shapes.items()}
    heads = {group: match_heads(spec, reference, params, group) for group in head_groups}
    result = weight_matching(key, spec, reference, params, max_iter, init_perms={**identity, **heads}, fixed=heads)
    in_place = weight_matching(key, spec, reference, params, max_iter, init_perms=identity, fixed=list(head_groups))
    return result if result.objective >= in_place.objective else in_place
