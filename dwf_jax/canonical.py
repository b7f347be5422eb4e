"""Canonicalize a zoo: align every model to a reference model with Git Re-Basin weight matching.

Models arrive one at a time from any iterable (a stacked zoo in memory, or a
zoo file on disk) and leave one at a time, so a zoo larger than memory is
aligned with only the reference and one model held at once.
"""

from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np

from dwf_jax import permutations

PyTree = Any
METHODS = ("rebasin", "none")


def align_models(
    key: jax.Array, spec: PyTree, reference: PyTree, models: Iterable[PyTree], reference_index: int, max_iter: int = 100
) -> Iterator[PyTree]:
    """Each model permuted to match `reference` (model `reference_index` passes through unchanged).

    Model i is matched with `fold_in(key, i)`, so the result does not depend on how
    the zoo is stored or split. Leaves come back as numpy arrays.
    """
    permutations.validate(spec, reference)
    for index, variables in enumerate(models):
        if index != reference_index:
            match = permutations.weight_matching(
                jax.random.fold_in(key, index), spec, reference, variables, max_iter=max_iter
            )
            variables = permutations.apply_permutation(spec, match.perms, variables)
        yield jax.tree.map(np.asarray, variables)
