"""Transformer permutation specs: a permutation drawn from the spec keeps the function; one outside it does not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tarfiles import write_tiny_cifar10

import configs.vit_small
from dwf_jax import permutations, pipeline
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
    spec = builders.vit_permutation_spec(SMALL["depth"])
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
    spec = builders.vit_permutation_spec(SMALL["depth"])
    planted = permutations.random_permutation(jax.random.key(10 + seed), spec, reference)
    permuted = permutations.apply_permutation(spec, planted, reference)
    assert _distance(permuted, reference) > 1.0
    result = permutations.transfusion(
        jax.random.key(seed), spec, reference, permuted, builders.vit_head_groups(SMALL["depth"])
    )
    aligned = permutations.apply_permutation(spec, result.perms, permuted)
    assert _distance(aligned, reference) < 1e-5


@pytest.mark.parametrize("seed", range(3))
def test_transfusion_never_increases_the_distance_to_the_reference(seed):
    model = ViT(**SMALL)
    images = jnp.zeros((1, 32, 32, 3))
    reference = model.init(jax.random.key(100), images)
    other = model.init(jax.random.key(200 + seed), images)
    spec = builders.vit_permutation_spec(SMALL["depth"])
    result = permutations.transfusion(jax.random.key(0), spec, reference, other, builders.vit_head_groups(2))
    aligned = permutations.apply_permutation(spec, result.perms, other)
    assert _distance(aligned, reference) <= _distance(other, reference) + 1e-6


def test_heads_are_matched_by_spectrum_whatever_else_is_permuted(vit):
    """Planting every group's permutation, the heads come back from the spectra alone."""
    _, reference, _ = vit
    spec = builders.vit_permutation_spec(SMALL["depth"])
    planted = permutations.random_permutation(jax.random.key(7), spec, reference)
    permuted = permutations.apply_permutation(spec, planted, reference)
    for group in builders.vit_head_groups(SMALL["depth"]):
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
    spec = builders.bert_permutation_spec(TINY_BERT["layers"])
    perms = permutations.random_permutation(jax.random.key(seed), spec, variables)
    permuted = permutations.apply_permutation(spec, perms, variables)
    np.testing.assert_allclose(model.apply(permuted, tokens), model.apply(variables, tokens), atol=1e-5, rtol=1e-5)
    assert _distance(permuted, variables) > 1.0


def test_transfusion_recovers_a_planted_bert_permutation(bert):
    _, reference, _ = bert
    spec = builders.bert_permutation_spec(TINY_BERT["layers"])
    planted = permutations.random_permutation(jax.random.key(5), spec, reference)
    permuted = permutations.apply_permutation(spec, planted, reference)
    heads = builders.bert_head_groups(TINY_BERT["layers"])
    result = permutations.transfusion(jax.random.key(0), spec, reference, permuted, heads)
    assert _distance(permutations.apply_permutation(spec, result.perms, permuted), reference) < 1e-5
