"""Transformer permutation specs: a permutation drawn from the spec keeps the function; one outside it does not."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tarfiles import write_tiny_cifar10

import configs.vit_small
from dwf_jax import permutations, pipeline
from dwf_jax.models import specs
from dwf_jax.models.bert import Bert
from dwf_jax.models.vit import ViT
from dwf_jax.permutations import builders

SMALL = {"dim": 24, "depth": 2, "heads": 3, "mlp_ratio": 2, "patch": 8, "dropout": 0.0}


@pytest.fixture(scope="module")
def vit():
    model = ViT(**SMALL)
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = model.init(jax.random.key(0), images)
    return model, _jittered(variables), images


def _jittered(variables):
    """Non-zero biases and LayerNorm parameters, so no symmetry is hidden by zeros or ones."""
    keys = iter(jax.random.split(jax.random.key(2), 200))
    return jax.tree.map(lambda leaf: leaf + 0.1 * jax.random.normal(next(keys), leaf.shape), variables)


def _num_params(model, example) -> int:
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), example))
    return sum(leaf.size for leaf in jax.tree.leaves(variables))


def test_vit_small_192_has_the_papers_size():
    assert _num_params(ViT(), jnp.zeros((1, 32, 32, 3))) == 2_693_578


@pytest.mark.parametrize("seed", range(3))
def test_a_permutation_from_the_vit_spec_keeps_the_outputs(vit, seed):
    model, variables, images = vit
    spec = specs.vit_permutation_spec(SMALL["depth"])
    perms = permutations.random_permutation(jax.random.key(seed), spec, variables)
    assert all(not np.array_equal(p, np.arange(len(p))) for p in perms.values())
    permuted = permutations.apply_permutation(spec, perms, variables)
    np.testing.assert_allclose(model.apply(permuted, images), model.apply(variables, images), atol=1e-5, rtol=1e-5)


def test_mixing_dimensions_across_heads_changes_the_outputs(vit):
    """Swap one query/key dimension of head 0 with one of head 1: outside the symmetry group."""
    model, variables, images = vit
    attention = variables["params"]["block_0"]["attention"]

    def swap(leaf, head_axis):
        leaf = np.array(leaf)
        first, second = [slice(None)] * leaf.ndim, [slice(None)] * leaf.ndim
        first[head_axis], second[head_axis] = 0, 1
        first[head_axis + 1] = second[head_axis + 1] = 0
        leaf[tuple(first)], leaf[tuple(second)] = leaf[tuple(second)].copy(), leaf[tuple(first)].copy()
        return leaf

    mixed = jax.tree.map(lambda leaf: leaf, variables)
    for name in ("query", "key"):
        mixed["params"]["block_0"]["attention"][name] = {
            "kernel": swap(attention[name]["kernel"], 1),
            "bias": swap(attention[name]["bias"], 0),
        }
    difference = np.max(np.abs(model.apply(mixed, images) - model.apply(variables, images)))
    assert difference > 1e-3


def _distance(a, b) -> float:
    return float(
        np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)))
    )


@pytest.mark.parametrize("seed", range(2))
def test_transfusion_recovers_a_planted_permutation(vit, seed):
    _, reference, _ = vit
    spec = specs.vit_permutation_spec(SMALL["depth"])
    planted = permutations.random_permutation(jax.random.key(10 + seed), spec, reference)
    permuted = permutations.apply_permutation(spec, planted, reference)
    assert _distance(permuted, reference) > 1.0
    result = permutations.transfusion(
        jax.random.key(seed), spec, reference, permuted, specs.head_groups("block", SMALL["depth"])
    )
    aligned = permutations.apply_permutation(spec, result.perms, permuted)
    assert _distance(aligned, reference) < 1e-5


@pytest.mark.parametrize("seed", range(3))
def test_transfusion_never_increases_the_distance_to_the_reference(seed):
    model = ViT(**SMALL)
    images = jnp.zeros((1, 32, 32, 3))
    reference = model.init(jax.random.key(100), images)
    other = model.init(jax.random.key(200 + seed), images)
    spec = specs.vit_permutation_spec(SMALL["depth"])
    result = permutations.transfusion(jax.random.key(0), spec, reference, other, specs.head_groups("block", 2))
    aligned = permutations.apply_permutation(spec, result.perms, other)
    assert _distance(aligned, reference) <= _distance(other, reference) + 1e-6


def test_heads_are_matched_by_spectrum_whatever_else_is_permuted(vit):
    """Planting every group's permutation, the heads come back from the spectra alone."""
    _, reference, _ = vit
    spec = specs.vit_permutation_spec(SMALL["depth"])
    planted = permutations.random_permutation(jax.random.key(7), spec, reference)
    permuted = permutations.apply_permutation(spec, planted, reference)
    for group in specs.head_groups("block", SMALL["depth"]):
        heads = permutations.match_heads(spec, reference, permuted, group)
        np.testing.assert_array_equal(heads, np.argsort(planted[group]))


def test_transfusion_keeps_the_identity_when_spectra_mislead():
    """Each head of `params` is a scaled copy of the same head of the reference, scaled so its spectrum is nearer
    the other reference head's: the spectra say swap, the weights say stay, and staying is closer."""
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(16, 4)), rng.normal(size=(16, 4))
    reference = {"query": np.stack([first, 2 * second], axis=1)}  # (dim, heads, head_dim)
    params = {"query": np.stack([2 * first, second], axis=1)}
    spec = {"query": permutations.Axes(None, "heads", None)}
    np.testing.assert_array_equal(permutations.match_heads(spec, reference, params, "heads"), [1, 0])
    result = permutations.transfusion(jax.random.key(0), spec, reference, params, ["heads"])
    np.testing.assert_array_equal(result.perms["heads"], [0, 1])


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit")
    config = configs.vit_small.get_config()
    config.data.dir = str(write_tiny_cifar10(root))
    config.model.update(dim=24, depth=2, heads=3, mlp_ratio=2, patch=8)
    config.zoo.update(num_models=3, epochs=2, batch_size=16, models_per_chunk=3)
    config.flow.update(iterations=40, hidden=16, steps_per_dispatch=20, batch_size=2)
    config.sample.update(num_samples=3, steps=4)
    config.baselines.update(noise_stds=(0.01,), mixtures=2)
    return pipeline.run(config, root / "work", progress=False)


def test_the_vit_pipeline_runs_end_to_end_with_transfusion(vit_run):
    """TransFusion moves the zoo (canonical nets lie closer to the reference) without changing any model's function."""
    canonicalization = vit_run["canonicalization"]
    assert canonicalization["method"] == "transfusion" and canonicalization["max_accuracy_change"] == 0.0
    assert (
        canonicalization["distance_to_reference_after"]["mean"]
        < canonicalization["distance_to_reference_before"]["mean"]
    )
    assert vit_run["model"]["num_params"] > 10_000 and len(vit_run["generated"]["per_model"]) == 3


TINY_BERT = {"vocab_size": 50, "hidden": 24, "layers": 2, "heads": 3, "intermediate": 32, "max_length": 16}


@pytest.fixture(scope="module")
def bert():
    model = Bert(**TINY_BERT, dropout=0.0)
    tokens = jax.random.randint(jax.random.key(1), (4, 16), 1, 50).at[:, 12:].set(0)  # padded tails
    variables = model.init(jax.random.key(0), tokens)
    return model, _jittered(variables), tokens


def test_bert_base_size():
    assert _num_params(Bert(), jnp.ones((1, 128), jnp.int32)) == 109_186_561


@pytest.mark.parametrize("seed", range(2))
def test_a_permutation_from_the_bert_spec_keeps_the_outputs(bert, seed):
    model, variables, tokens = bert
    spec = specs.bert_permutation_spec(TINY_BERT["layers"])
    perms = permutations.random_permutation(jax.random.key(seed), spec, variables)
    permuted = permutations.apply_permutation(spec, perms, variables)
    np.testing.assert_allclose(model.apply(permuted, tokens), model.apply(variables, tokens), atol=1e-5, rtol=1e-5)
    assert _distance(permuted, variables) > 1.0


def test_transfusion_recovers_a_planted_bert_permutation(bert):
    _, reference, _ = bert
    spec = specs.bert_permutation_spec(TINY_BERT["layers"])
    planted = permutations.random_permutation(jax.random.key(5), spec, reference)
    permuted = permutations.apply_permutation(spec, planted, reference)
    heads = specs.head_groups("layer", TINY_BERT["layers"])
    result = permutations.transfusion(jax.random.key(0), spec, reference, permuted, heads)
    assert _distance(permutations.apply_permutation(spec, result.perms, permuted), reference) < 1e-5


class _Attention(nn.Module):
    """The smallest model with heads: one flax attention layer and a readout, defined here, not in dwf_jax."""

    @nn.compact
    def __call__(self, x):
        x = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32, name="attention")(x)
        return nn.Dense(2, name="readout")(x)


def _per_head_planted(spec, variables, seed: int) -> dict:
    """A permutation of every group whose heads each order their dimensions differently."""
    planted = permutations.random_permutation(jax.random.key(seed), spec, variables)
    for group in permutations.per_head_groups(spec):
        rows = {tuple(np.asarray(row)) for row in planted[group]}
        assert len(rows) == planted[group].shape[0], group  # every head its own order
    return planted


def _recovered(model, variables, inputs, spec, head_groups, seed: int) -> None:
    planted = _per_head_planted(spec, variables, seed)
    permuted = permutations.apply_permutation(spec, planted, variables)
    np.testing.assert_allclose(model.apply(permuted, inputs), model.apply(variables, inputs), atol=1e-5, rtol=1e-5)
    assert _distance(permuted, variables) > 1.0
    result = permutations.transfusion(jax.random.key(seed), spec, variables, permuted, head_groups)
    assert _distance(permutations.apply_permutation(spec, result.perms, permuted), variables) < 1e-5
    back = permutations.apply_permutation(spec, permutations.inverse_permutation(planted, spec), permuted)
    assert _distance(back, variables) < 1e-6


def test_per_head_orders_of_an_attention_layer_are_recovered():
    """The issue's case: one shared q/k order cannot align heads that each order their dimensions
    differently; a permutation per head reaches 0 and keeps the function."""
    model, inputs = _Attention(), jax.random.normal(jax.random.key(3), (2, 5, 16))
    variables = _jittered(model.init(jax.random.key(4), inputs))
    spec = {
        "params": {
            **builders.multi_head_attention("attention", None, "heads", "qk", "vo"),
            **builders.dense("readout", None, None),
        }
    }
    _recovered(model, variables, inputs, spec, ["heads"], seed=0)
    orders = np.stack([np.roll(np.arange(8), shift) for shift in range(4)])  # head h: its dimensions rolled by h
    by_hand = jax.tree.map(np.asarray, variables)
    layer = by_hand["params"]["attention"]
    for name in ("query", "key", "value"):
        layer[name]["kernel"] = np.stack([layer[name]["kernel"][:, h, orders[h]] for h in range(4)], axis=1)
        layer[name]["bias"] = np.stack([layer[name]["bias"][h, orders[h]] for h in range(4)])
    layer["out"]["kernel"] = np.stack([layer["out"]["kernel"][h, orders[h]] for h in range(4)])
    np.testing.assert_allclose(model.apply(by_hand, inputs), model.apply(variables, inputs), atol=1e-5, rtol=1e-5)
    result = permutations.transfusion(jax.random.key(0), spec, variables, by_hand, ["heads"])
    assert _distance(permutations.apply_permutation(spec, result.perms, by_hand), variables) < 1e-5


def test_per_head_orders_are_recovered_in_vit_and_bert(vit, bert):
    model, variables, images = vit
    _recovered(model, variables, images, specs.vit_permutation_spec(2), specs.head_groups("block", 2), seed=1)
    model, variables, tokens = bert
    spec, heads = specs.bert_permutation_spec(TINY_BERT["layers"]), specs.head_groups("layer", TINY_BERT["layers"])
    _recovered(model, variables, tokens, spec, heads, seed=2)


def test_a_per_head_group_needs_its_heads_axis():
    spec = {"w": permutations.Axes(None, permutations.PerHead("qk", "heads"))}
    with pytest.raises(ValueError, match="within the heads of group 'heads', which is on no axis"):
        permutations.validate(spec, {"w": np.zeros((3, 4))})
