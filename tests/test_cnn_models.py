"""SmallCNN, ResNet-20 and ResNet-18: parameter counts, shared interface, permutation specs.

ResNet-18 is slow on 2 CPU cores, so shapes come from `jax.eval_shape`, values
from numpy, inputs are 2 x 32x32x3, and each model's forward passes (eval and
train mode) are compiled once in a single jitted function.
"""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dwf_jax import permutations as perm
from dwf_jax.models import (
    MLP,
    MODEL_NAMES,
    SmallCNN,
    build_model,
    model_config,
    permutation_spec,
    resnet18,
    resnet20,
    resnet_permutation_spec,
    smallcnn_permutation_spec,
)

X_SHAPE = (2, 32, 32, 3)

# name -> (model, spec, params count, number of BatchNorm layers). SmallCNN has
# dropout off so train mode is deterministic (see test_permutation_preserves_outputs).
MODELS = {
    "smallcnn": (SmallCNN(dropout_rate=0.0), smallcnn_permutation_spec(), 21_914, 3),
    "resnet20": (resnet20(), resnet_permutation_spec(3, 3), 272_474, 1 + 2 * 9 + 2),
    "resnet18": (resnet18(), resnet_permutation_spec(4, 2), 11_173_962, 1 + 2 * 8 + 3),
}


def shapes(model: nn.Module) -> dict:
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(X_SHAPE))


def random_variables(model: nn.Module, seed: int) -> dict:
    """Every leaf freshly sampled as numpy float32, BN statistics included.

    Non-trivial biases, BN scales, running means and positive running vars
    make a mis-permuted leaf visible in eval mode too.
    """
    rng = np.random.default_rng(seed)

    def sample(path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        kind = path[-1].key
        if kind == "var":
            value = rng.uniform(0.5, 2.0, leaf.shape)
        elif kind == "scale":
            value = rng.uniform(0.5, 1.5, leaf.shape)
        elif len(leaf.shape) > 1:
            value = rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))
        else:
            value = rng.normal(size=leaf.shape) * 0.3
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(sample, shapes(model))


def images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=X_SHAPE).astype(np.float32)


def assert_close_to_scale(actual: jax.Array, expected: jax.Array) -> None:
    """allclose with atol 1e-5 once the logits are divided by their largest magnitude (at least 1)."""
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(np.asarray(actual) / scale, np.asarray(expected) / scale, rtol=0, atol=1e-5)


@functools.cache
def forward(name: str):
    """Jitted (eval logits, train logits, updated batch_stats) of MODELS[name], compiled once."""
    model = MODELS[name][0]

    def both_modes(variables, x):
        train_logits, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return model.apply(variables, x, train=False), train_logits, state["batch_stats"]

    return jax.jit(both_modes)


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_and_batch_stats(name):
    """Counts cover "params" only; every BatchNorm keeps mean and var in "batch_stats"."""
    model, _, expected, num_bn = MODELS[name]
    variables = shapes(model)
    assert set(variables) == {"params", "batch_stats"}
    assert sum(leaf.size for leaf in jax.tree.leaves(variables["params"])) == expected
    stats: dict[tuple, set] = {}
    for path, _ in jax.tree_util.tree_leaves_with_path(variables["batch_stats"]):
        stats.setdefault(path[:-1], set()).add(path[-1].key)
    assert len(stats) == num_bn
    for bn_path, keys in stats.items():
        assert keys == {"mean", "var"}
        bn_params = functools.reduce(lambda tree, key: tree[key.key], bn_path, variables["params"])
        assert set(bn_params) == {"scale", "bias"}


def test_registry_builds_every_model_with_a_fitting_spec():
    for name in MODEL_NAMES:
        config = model_config(name)
        model = build_model(config)
        sample = jnp.ones((2, 8), jnp.int32) if name == "bert" else jnp.zeros(X_SHAPE)  # token ids or images
        perm.validate(permutation_spec(config), jax.eval_shape(model.init, jax.random.key(0), sample))
    with pytest.raises(ValueError, match="unknown model"):
        build_model(ml_collections.ConfigDict({"name": "vgg"}))


def test_mlp_accepts_train_flag():
    model = MLP((8, 3))
    x = jnp.ones((2, 4))
    variables = model.init(jax.random.key(0), x)
    np.testing.assert_array_equal(model.apply(variables, x, train=True), model.apply(variables, x))


def test_smallcnn_dropout_is_active_only_in_train_mode():
    """The pipeline's exact training call: dropout follows the rng, eval ignores it."""
    model = SmallCNN()
    variables = random_variables(model, seed=0)
    x = images(1)

    def train(key):
        return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})[0]

    np.testing.assert_array_equal(train(jax.random.key(0)), train(jax.random.key(0)))
    assert not np.allclose(train(jax.random.key(0)), train(jax.random.key(1)))
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x, train=False))


# Channel axes (conv in/out, dense in/out, every 1-D leaf) that the specs leave unpermuted on purpose.
UNPERMUTED = {
    "smallcnn": {
        ("['params']['conv1']['kernel']", 2),
        ("['params']['conv3']['kernel']", 3),
        ("['params']['conv3']['bias']", 0),
        ("['params']['bn3']['scale']", 0),
        ("['params']['bn3']['bias']", 0),
        ("['batch_stats']['bn3']['mean']", 0),
        ("['batch_stats']['bn3']['var']", 0),
        ("['params']['hidden']['kernel']", 0),
        ("['params']['classifier']['kernel']", 1),
        ("['params']['classifier']['bias']", 0),
    },
    "resnet": {
        ("['params']['stem_conv']['kernel']", 2),
        ("['params']['classifier']['kernel']", 1),
        ("['params']['classifier']['bias']", 0),
    },
}


@pytest.mark.parametrize("name", MODELS)
def test_spec_permutes_every_hidden_axis(name):
    """Guards against a spec that is trivially 'correct' by leaving axes fixed."""
    model, spec, _, _ = MODELS[name]
    variables = shapes(model)
    channel_axes = set()
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        first_channel_axis = max(len(leaf.shape) - 2, 0)
        channel_axes |= {(jax.tree_util.keystr(path), axis) for axis in range(first_channel_axis, len(leaf.shape))}
    permuted = {pair for pairs in perm.group_axes(spec, variables).values() for pair in pairs}
    assert permuted <= channel_axes
    assert channel_axes - permuted == UNPERMUTED["smallcnn" if name == "smallcnn" else "resnet"]


@pytest.mark.parametrize("name", MODELS)
def test_permutation_preserves_outputs(name):
    """A random permutation changes the weights but not the function, in eval and train mode.

    Train mode also updates the running statistics, which must equal the
    permuted originals. SmallCNN runs with dropout_rate=0: flax draws the
    dropout mask positionally over the 32 hidden units, so the same rng would
    drop different units in the permuted model and the outputs would differ
    even for a correct spec. Dropout has no parameters, so nothing is lost.
    Random running statistics inflate eval-mode logits (up to ~70 for
    ResNet-20), so each mode is compared relative to its own logit scale.
    """
    model, spec, _, _ = MODELS[name]
    variables = random_variables(model, seed=0)
    perm.validate(spec, variables)
    x = images(1)
    eval_logits, train_logits, stats = forward(name)(variables, x)

    perms = perm.random_permutation(jax.random.key(2), spec, variables)
    permuted = perm.apply_permutation(spec, perms, variables)
    assert not np.allclose(permuted["params"]["classifier"]["kernel"], variables["params"]["classifier"]["kernel"])
    eval_p, train_p, stats_p = forward(name)(permuted, x)
    assert_close_to_scale(eval_p, eval_logits)
    assert_close_to_scale(train_p, train_logits)
    expected_stats = perm.apply_permutation(spec, perms, {"params": variables["params"], "batch_stats": stats})
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), stats_p, expected_stats["batch_stats"]
    )


@pytest.mark.parametrize("name", ["smallcnn", "resnet20"])
def test_weight_matching_recovers_planted_permutation(name):
    model, spec, _, _ = MODELS[name]
    variables = random_variables(model, seed=3)
    planted = perm.random_permutation(jax.random.key(4), spec, variables)
    permuted = perm.apply_permutation(spec, planted, variables)
    result = perm.weight_matching(jax.random.key(5), spec, variables, permuted)
    assert result.converged
    aligned = perm.apply_permutation(spec, result.perms, permuted)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), aligned, variables)


def test_spec_of_another_model_is_rejected_with_a_path():
    with pytest.raises(ValueError, match=re.escape("['params']['")):
        perm.validate(MODELS["resnet20"][1], shapes(MODELS["smallcnn"][0]))
    with pytest.raises(ValueError, match=re.escape("['params']['stage")):
        perm.validate(MODELS["resnet18"][1], shapes(MODELS["resnet20"][0]))
