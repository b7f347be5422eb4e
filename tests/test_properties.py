"""Property tests over random CNN shapes (BatchNorm included): permutations round-trip,
keep the function, and weight matching never moves a model away from its reference."""

import functools

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dwf_jax import permutations as perm
from dwf_jax.models import SmallCNN
from dwf_jax.models.specs import smallcnn_permutation_spec


@functools.cache
def make_cnn(widths: tuple[int, ...], hidden: int, seed: int):
    """(jitted eval apply, numpy variables with non-trivial BN statistics, 8x8 input batch)."""
    model = SmallCNN(widths=widths, hidden_width=hidden, dropout_rate=0.0)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 8, 8, 2)).astype(np.float32)

    def sample(path, leaf):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
        scale = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.5
        return (rng.normal(size=leaf.shape) * scale).astype(np.float32)

    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    variables = jax.tree_util.tree_map_with_path(sample, abstract)
    return jax.jit(lambda v: model.apply(v, x, train=False)), variables


def squared_distance(a, b) -> float:
    return sum(
        float(np.sum((np.asarray(u, np.float64) - np.asarray(v, np.float64)) ** 2))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=False)
    )


@settings(max_examples=10, deadline=None)
@given(
    widths=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    hidden=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_cnn_permutations_round_trip_keep_function_and_matching_never_worse(widths, hidden, seed):
    apply_fn, variables = make_cnn(widths, hidden, seed)
    _, other = make_cnn(widths, hidden, seed + 1)
    spec = smallcnn_permutation_spec(len(widths))
    perm.validate(spec, variables)
    planted = perm.random_permutation(jax.random.key(seed), spec, variables)

    permuted = perm.apply_permutation(spec, planted, variables)
    back = perm.apply_permutation(spec, perm.inverse_permutation(planted), permuted)
    assert squared_distance(back, variables) == 0.0
    scale = max(1.0, float(np.max(np.abs(apply_fn(variables)))))
    assert float(np.max(np.abs(apply_fn(permuted) - apply_fn(variables)))) / scale < 1e-5

    match = perm.weight_matching(jax.random.key(seed + 2), spec, variables, other)
    matched = perm.apply_permutation(spec, match.perms, other)
    assert squared_distance(variables, matched) <= squared_distance(variables, other) + 1e-9
