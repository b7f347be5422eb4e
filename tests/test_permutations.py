"""Tests for dwf_jax.permutations: spec validation, permutation symmetry, Git Re-Basin matching."""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwf_jax import permutations as perm
from dwf_jax.canonical import align_models
from dwf_jax.permutations import Axes
from dwf_jax.permutations.builders import (
    batch_norm,
    batch_norm_stats,
    conv,
    dense,
    mlp_permutation_spec,
)

MLP_WIDTHS = [(4, 16, 3), (784, 32, 32, 10), (784, 128, 128, 10)]


class MLP(nn.Module):
    features: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.features):
            x = nn.Dense(width, name=f"Dense_{i}")(x)
            if i < len(self.features) - 1:
                x = nn.relu(x)
        return x


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="Conv_0")(x))
        x = nn.relu(nn.Conv(6, (3, 3), name="Conv_1")(x))
        return nn.Dense(3, name="Dense_0")(x.mean(axis=(1, 2)))


CNN_SPEC = {
    "params": {
        **conv("Conv_0", None, "c0"),
        **conv("Conv_1", "c0", "c1"),
        **dense("Dense_0", "c1", None),
    }
}


def random_variables(model, x, seed):
    """Variables of `model` with every leaf freshly sampled, as numpy float32.

    Non-zero biases make a mis-permuted bias visible. Shapes come from
    `eval_shape` and values from numpy, which avoids eager `init` compiles.
    """
    rng = np.random.default_rng(seed)

    def sample(leaf):
        scale = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.5
        return (rng.normal(size=leaf.shape) * scale).astype(np.float32)

    return jax.tree.map(sample, jax.eval_shape(model.init, jax.random.key(0), x))


@functools.cache
def make_mlp(widths: tuple[int, ...], seed: int = 0):
    """(jitted apply, numpy variables, input batch) for an MLP with these layer widths."""
    model = MLP(widths[1:])
    x = np.random.default_rng(seed).uniform(size=(8, widths[0])).astype(np.float32)
    return jax.jit(model.apply), random_variables(model, x, seed), x


def max_abs_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=False)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


def sq_dist(a, b) -> float:
    return sum(
        float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=False)
    )


def sq_norm(tree) -> float:
    return sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree.leaves(tree))


def assert_is_permutation(p, n):
    assert np.asarray(p).shape == (n,)
    np.testing.assert_array_equal(np.sort(np.asarray(p)), np.arange(n))


@pytest.mark.parametrize("widths", MLP_WIDTHS, ids=str)
def test_random_permutation_preserves_mlp_function(widths):
    apply_fn, variables, x = make_mlp(widths)
    variables = jax.tree.map(jnp.asarray, variables)
    spec = mlp_permutation_spec(len(widths) - 1)
    planted = perm.random_permutation(jax.random.key(7), spec, variables)
    permuted = perm.apply_permutation(spec, planted, variables)
    assert max_abs_diff(permuted, variables) > 0.1  # the weights really moved
    assert max_abs_diff(apply_fn(permuted, x), apply_fn(variables, x)) < 1e-5


@pytest.mark.parametrize("widths", MLP_WIDTHS, ids=str)
def test_weight_matching_recovers_planted_permutation(widths):
    _, variables, _ = make_mlp(widths)
    spec = mlp_permutation_spec(len(widths) - 1)
    planted = perm.random_permutation(jax.random.key(3), spec, variables)
    permuted = perm.apply_permutation(spec, planted, variables)
    result = perm.weight_matching(jax.random.key(4), spec, variables, permuted)
    assert result.converged and result.sweeps >= 1
    matched = perm.apply_permutation(spec, result.perms, permuted)
    assert max_abs_diff(matched, variables) <= 1e-6
    assert sq_dist(matched, variables) == 0.0
    inverse = perm.inverse_permutation(planted)
    assert set(result.perms) == set(planted) == {f"Dense_{i}" for i in range(len(widths) - 2)}
    for group, p in result.perms.items():
        np.testing.assert_array_equal(p, np.asarray(inverse[group]))
    # objective = <reference, matched> over permuted leaves; only the output bias is unpermuted
    output_bias = variables["params"][f"Dense_{len(widths) - 2}"]["bias"]
    expected = sq_norm(variables) - sq_norm(output_bias)
    np.testing.assert_allclose(result.objective, expected, rtol=1e-9)


def test_apply_then_inverse_is_identity_and_perms_are_permutations():
    _, variables, _ = make_mlp((784, 32, 32, 10))
    spec = mlp_permutation_spec(3)
    perms = perm.random_permutation(jax.random.key(0), spec, variables)
    assert perm.group_sizes(spec, variables) == {"Dense_0": 32, "Dense_1": 32}
    for p in perms.values():
        assert_is_permutation(p, 32)
    again = perm.random_permutation(jax.random.key(0), spec, variables)
    assert all(np.array_equal(perms[g], again[g]) for g in perms)  # deterministic in the key
    there = perm.apply_permutation(spec, perms, variables)
    back = perm.apply_permutation(spec, perm.inverse_permutation(perms), there)
    assert max_abs_diff(back, variables) == 0.0


def test_numpy_params_stay_numpy_and_keep_dtype():
    _, variables, _ = make_mlp((4, 16, 3))
    np_vars = jax.tree.map(lambda a: np.asarray(a, np.float16), variables)
    spec = mlp_permutation_spec(2)
    perms = {"Dense_0": np.random.default_rng(0).permutation(16)}
    out = perm.apply_permutation(spec, perms, np_vars)
    for leaf in jax.tree.leaves(out):
        assert type(leaf) is np.ndarray and leaf.dtype == np.float16
    kernel = np_vars["params"]["Dense_0"]["kernel"]
    np.testing.assert_array_equal(out["params"]["Dense_0"]["kernel"], kernel[:, perms["Dense_0"]])


def test_apply_permutation_under_jit_matches_eager():
    _, variables, _ = make_mlp((4, 16, 3))
    spec = mlp_permutation_spec(2)
    perms = perm.random_permutation(jax.random.key(5), spec, variables)
    jitted = jax.jit(lambda p, v: perm.apply_permutation(spec, p, v))(perms, variables)
    assert max_abs_diff(jitted, perm.apply_permutation(spec, perms, variables)) == 0.0


def _small_spec_and_params():
    _, variables, _ = make_mlp((4, 16, 3))
    return mlp_permutation_spec(2), variables


def test_validate_rejects_missing_key():
    spec, variables = _small_spec_and_params()
    del spec["params"]["Dense_1"]["bias"]
    with pytest.raises(ValueError, match=re.escape("['params']['Dense_1']['bias']")):
        perm.validate(spec, variables)


def test_validate_rejects_extra_key():
    spec, variables = _small_spec_and_params()
    spec["params"].update(dense("Dense_9", None, None))
    with pytest.raises(ValueError, match=re.escape("['params']['Dense_9']['kernel']")):
        perm.validate(spec, variables)


def test_validate_rejects_wrong_axes_length():
    spec, variables = _small_spec_and_params()
    spec["params"]["Dense_0"]["kernel"] = Axes("Dense_0")
    with pytest.raises(ValueError, match=re.escape("['params']['Dense_0']['kernel'] has 1 axes")):
        perm.validate(spec, variables)


def test_validate_rejects_inconsistent_group_sizes():
    spec, variables = _small_spec_and_params()
    spec["params"]["Dense_1"]["bias"] = Axes("Dense_0")  # size 3, but Dense_0 has 16 units
    pattern = (
        r"group 'Dense_0'.*16 at \['params'\]\['Dense_0'\].*"
        r"3 at \['params'\]\['Dense_1'\]\['bias'\]"
    )
    with pytest.raises(ValueError, match=pattern):
        perm.validate(spec, variables)


def test_group_axes_lists_every_permuted_axis():
    spec, variables = _small_spec_and_params()
    assert perm.group_axes(spec, variables) == {
        "Dense_0": [
            ("['params']['Dense_0']['bias']", 0),
            ("['params']['Dense_0']['kernel']", 1),
            ("['params']['Dense_1']['kernel']", 0),
        ]
    }


@pytest.mark.parametrize(
    "perms, message",
    [
        ({"Dense_0": np.arange(15)}, r"group 'Dense_0'.*wrong length"),
        ({"Dense_0": np.r_[0, 0, 2:16]}, r"group 'Dense_0' is not a permutation"),
        ({"Dense_0": np.arange(16.0)}, r"group 'Dense_0'.*expected integers"),
        ({"other": np.arange(16)}, r"no permutation given for group\(s\) \['Dense_0'\]"),
    ],
    ids=["wrong-length", "not-a-permutation", "float", "missing-group"],
)
def test_apply_permutation_rejects_bad_perms(perms, message):
    spec, variables = _small_spec_and_params()
    with pytest.raises(ValueError, match=message):
        perm.apply_permutation(spec, perms, variables)


def test_apply_permutation_rejects_non_permutation_on_tiny_group():
    params = {"w": np.ones((3, 2))}
    with pytest.raises(ValueError, match=r"group 'g' is not a permutation.*\[0\] repeated"):
        perm.apply_permutation({"w": Axes("g", None)}, {"g": np.array([0, 0, 2])}, params)


def test_cnn_random_permutation_preserves_function_and_is_recovered():
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype(np.float32)
    variables = jax.tree.map(jnp.asarray, random_variables(CNN(), x, seed=2))
    apply_fn = jax.jit(CNN().apply)
    planted = perm.random_permutation(jax.random.key(3), CNN_SPEC, variables)
    permuted = perm.apply_permutation(CNN_SPEC, planted, variables)
    assert max_abs_diff(apply_fn(permuted, x), apply_fn(variables, x)) < 1e-5
    result = perm.weight_matching(jax.random.key(4), CNN_SPEC, variables, permuted)
    matched = perm.apply_permutation(CNN_SPEC, result.perms, permuted)
    assert max_abs_diff(matched, variables) == 0.0


def test_weight_matching_handles_batch_norm_collections():
    """A group spanning params and batch_stats (several leaves, conv axes 2 and 3)."""
    spec = {
        "params": {
            **conv("Conv_0", None, "c"),
            **batch_norm("BN_0", "c"),
            **conv("Conv_1", "c", None),
        },
        "batch_stats": batch_norm_stats("BN_0", "c"),
    }
    rng = np.random.default_rng(0)
    shapes = {"Conv_0": (3, 3, 2, 8), "Conv_1": (3, 3, 8, 5)}
    variables = {
        "params": {
            **{name: {"kernel": rng.normal(size=s), "bias": rng.normal(size=s[-1])} for name, s in shapes.items()},
            "BN_0": {"scale": rng.normal(size=8), "bias": rng.normal(size=8)},
        },
        "batch_stats": {"BN_0": {"mean": rng.normal(size=8), "var": rng.uniform(size=8)}},
    }
    planted = {"c": rng.permutation(8)}
    permuted = perm.apply_permutation(spec, planted, variables)
    result = perm.weight_matching(jax.random.key(0), spec, variables, permuted)
    np.testing.assert_array_equal(result.perms["c"], np.argsort(planted["c"]))
    assert sq_dist(perm.apply_permutation(spec, result.perms, permuted), variables) == 0.0


@settings(max_examples=15, deadline=None)
@given(
    widths=st.lists(st.integers(1, 10), min_size=3, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_property_roundtrip_function_and_matching_never_worse(widths, seed):
    widths = tuple(widths)
    apply_fn, variables, x = make_mlp(widths, seed)
    _, other, _ = make_mlp(widths, seed + 1)
    spec = mlp_permutation_spec(len(widths) - 1)
    key_perm, key_match = jax.random.split(jax.random.key(seed))
    perms = perm.random_permutation(key_perm, spec, variables)
    for group, n in perm.group_sizes(spec, variables).items():
        assert_is_permutation(perms[group], n)

    permuted = perm.apply_permutation(spec, perms, variables)
    back = perm.apply_permutation(spec, perm.inverse_permutation(perms), permuted)
    assert max_abs_diff(back, variables) == 0.0
    assert max_abs_diff(apply_fn(permuted, x), apply_fn(variables, x)) < 1e-5

    result = perm.weight_matching(key_match, spec, variables, other)
    matched = perm.apply_permutation(spec, result.perms, other)
    assert sq_dist(variables, matched) <= sq_dist(variables, other) + 1e-9
    assert max_abs_diff(apply_fn(matched, x), apply_fn(other, x)) < 1e-5


def test_max_iter_bounds_the_sweeps():
    """Two unrelated MLPs need several sweeps; max_iter=1 stops after exactly one."""
    spec = perm.builders.mlp_permutation_spec(3)
    model = MLP((32, 32, 3))
    a, b = (model.init(jax.random.key(seed), jnp.zeros((1, 4))) for seed in (0, 1))
    assert not perm.weight_matching(jax.random.key(2), spec, a, b, max_iter=1).converged
    assert perm.weight_matching(jax.random.key(2), spec, a, b, max_iter=1).sweeps == 1
    assert perm.weight_matching(jax.random.key(2), spec, a, b, max_iter=2).sweeps == 2


@pytest.mark.parametrize("tree", ["reference", "params"])
def test_weight_matching_names_the_leaf_with_nan_or_inf(tree):
    """A diverged model is named by tree and leaf path, not by scipy's 'invalid numeric entries'."""
    spec, variables = _small_spec_and_params()
    broken = jax.tree.map(np.array, variables)
    broken["params"]["Dense_1"]["kernel"][[0, 1, 2], 0] = [np.nan, np.inf, -np.inf]
    trees = {"reference": variables, "params": variables, tree: broken}
    message = f"weight_matching: {tree}['params']['Dense_1']['kernel'] has 3 NaN/Inf entries"
    with pytest.raises(ValueError, match=re.escape(message)):
        perm.weight_matching(jax.random.key(0), spec, trees["reference"], trees["params"])


def test_weight_matching_rejects_max_iter_below_one():
    spec, variables = _small_spec_and_params()
    with pytest.raises(ValueError, match=re.escape("weight_matching: max_iter must be >= 1, got -1")):
        perm.weight_matching(jax.random.key(0), spec, variables, variables, max_iter=-1)


def test_align_models_passes_max_iter_through():
    spec, variables = _small_spec_and_params()
    with pytest.raises(ValueError, match="max_iter must be >= 1, got 0"):
        list(align_models(jax.random.key(0), spec, variables, [variables, variables], reference_index=0, max_iter=0))


@pytest.mark.parametrize(
    "entry",
    [
        perm.validate,
        lambda spec, variables: perm.weight_matching(jax.random.key(0), spec, variables, variables),
        lambda spec, variables: perm.random_permutation(jax.random.key(0), spec, variables),
    ],
    ids=["validate", "weight_matching", "random_permutation"],
)
def test_group_on_two_axes_of_one_array_is_refused(entry):
    """One group on both axes of a kernel makes matching a quadratic assignment, which it cannot solve."""
    _, variables, _ = make_mlp((4, 16, 16, 3))
    spec = mlp_permutation_spec(3)
    spec["params"]["Dense_1"] = {"kernel": Axes("Dense_0", "Dense_0"), "bias": Axes("Dense_0")}
    spec["params"]["Dense_2"]["kernel"] = Axes("Dense_0", None)
    message = "spec at ['params']['Dense_1']['kernel'] uses group 'Dense_0' on axes 0 and 1"
    with pytest.raises(ValueError, match=re.escape(message)):
        entry(spec, variables)
