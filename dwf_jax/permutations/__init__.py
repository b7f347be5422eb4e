"""Git Re-Basin permutation utilities for any JAX pytree of parameters.

Self-contained (depends only on jax, numpy and scipy), so it can be copied into
any JAX project. A *spec* mirrors the params pytree with one `Axes` per array,
naming the permutation group (or None) of each axis; hidden units that must
move together share a group name.

Example::

    import jax
    from dwf_jax import permutations as perm

    spec = perm.builders.mlp_permutation_spec(num_layers=3)   # Dense_0..Dense_2
    perm.validate(spec, variables_a)
    planted = perm.random_permutation(jax.random.key(0), spec, variables_a)
    variables_b = perm.apply_permutation(spec, planted, variables_a)  # same function

    result = perm.weight_matching(jax.random.key(1), spec, variables_a, variables_b)
    aligned_b = perm.apply_permutation(spec, result.perms, variables_b)  # == variables_a
"""

from . import builders
from .apply import apply_permutation, inverse_permutation
from .matching import MatchResult, weight_matching
from .random import random_permutation
from .spec import Axes, PerHead, group_axes, group_sizes, per_head_groups, validate
from .transfusion import match_heads, transfusion

__all__ = [
    "Axes",
    "MatchResult",
    "PerHead",
    "apply_permutation",
    "builders",
    "group_axes",
    "group_sizes",
    "inverse_permutation",
    "match_heads",
    "per_head_groups",
    "transfusion",
    "random_permutation",
    "validate",
    "weight_matching",
]
