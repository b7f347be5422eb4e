"""Canonicalize a zoo: align every model to a reference model (Git Re-Basin, or TransFusion for transformers).

Models arrive one at a time from any iterable (a stacked zoo in memory, or a
zoo file on disk) and leave one at a time, so a zoo larger than memory is
aligned with only the reference and one model held at once.
"""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from dwf_jax import permutations

PyTree = Any
# rebasin: Git Re-Basin weight matching; transfusion: heads by spectrum first (transformers); none: as trained.
METHODS = ("rebasin", "transfusion", "none")


def align_models(
    key: jax.Array,
    spec: PyTree,
    reference: PyTree,
    models: Iterable[PyTree],
    reference_index: int,
    max_iter: int = 100,
    head_groups: Sequence[str] = (),
) -> Iterator[PyTree]:
    """Each model permuted to match `reference` (model `reference_index` passes through unchanged).

    With `head_groups`, TransFusion matches those attention-head groups by spectrum
    before weight matching aligns the rest. Model i is matched with `fold_in(key, i)`,
    so the result does not depend on how the zoo is stored or split. Leaves come back as numpy arrays.
    """
    permutations.validate(spec, reference)
    for index, variables in enumerate(models):
        if index != reference_index:
            model_key = jax.random.fold_in(key, index)
            if head_groups:
                match = permutations.transfusion(model_key, spec, reference, variables, head_groups, max_iter)
            else:
                match = permutations.weight_matching(model_key, spec, reference, variables, max_iter=max_iter)
            variables = permutations.apply_permutation(spec, match.perms, variables)
        yield jax.tree.map(np.asarray, variables)
