"""A zoo streamed from disk: the zoo file, alignment model by model, and dual PCA read from the file."""

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from dwf_jax import pca
from dwf_jax import permutations as perm
from dwf_jax.canonical import align_models
from dwf_jax.models import SmallCNN, smallcnn_permutation_spec
from dwf_jax.zoo_file import ZooFile, read_models, write_zoo
from test_cnn_models import random_variables

SPEC = smallcnn_permutation_spec()


def planted_zoo(num_models: int) -> tuple[dict, list[dict]]:
    """A reference SmallCNN and permuted, slightly perturbed copies of it (model 0 is the reference)."""
    reference = random_variables(SmallCNN(dropout_rate=0.0), seed=0)
    rng = np.random.default_rng(1)
    models = [reference]
    for index in range(1, num_models):
        planted = perm.random_permutation(jax.random.key(index), SPEC, reference)
        noisy = jax.tree.map(lambda leaf: leaf + 1e-3 * rng.normal(size=leaf.shape).astype(np.float32), reference)
        models.append(jax.tree.map(np.asarray, perm.apply_permutation(SPEC, planted, noisy)))
    return reference, models


def test_zoo_file_round_trips_models_in_ravel_order(tmp_path):
    _, models = planted_zoo(3)
    zoo = write_zoo(tmp_path / "zoo.f32", iter(models))
    assert zoo == ZooFile(tmp_path / "zoo.f32", 3, ravel_pytree(models[0])[0].size)
    unflatten = ravel_pytree(models[0])[1]
    for model, read in zip(models, read_models(zoo, unflatten), strict=True):
        jax.tree.map(np.testing.assert_array_equal, read, model)
    with pytest.raises(IndexError, match="model 3 is not in a zoo of 3"):
        zoo.read(3)


def test_interrupted_write_leaves_no_zoo_file(tmp_path):
    _, models = planted_zoo(2)

    def crashing():
        yield models[0]
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_zoo(tmp_path / "zoo.f32", crashing())
    assert not (tmp_path / "zoo.f32").exists()


def test_alignment_streamed_from_a_zoo_file_recovers_the_planted_permutations(tmp_path):
    reference, models = planted_zoo(4)
    zoo = write_zoo(tmp_path / "zoo.f32", iter(models))
    unflatten = ravel_pytree(reference)[1]
    aligned = align_models(jax.random.key(0), SPEC, unflatten(zoo.read(0)), read_models(zoo, unflatten), reference_index=0)
    canonical = write_zoo(tmp_path / "canonical.f32", aligned)
    flat_reference = ravel_pytree(reference)[0]
    for index in range(1, canonical.num_models):
        before = np.linalg.norm(zoo.read(index) - flat_reference)
        after = np.linalg.norm(canonical.read(index) - flat_reference)
        assert after < 0.05 * before
        assert after < 1e-3 * np.sqrt(flat_reference.size) * 1.5


def test_streamed_dual_pca_from_a_zoo_file_matches_the_in_memory_fit(tmp_path):
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(6, 1000)).astype(np.float32)
    zoo = write_zoo(tmp_path / "zoo.f32", iter(weights))
    streamed, _ = pca.fit_transform_dual_streaming(zoo.columns(), zoo.num_models, zoo.dim, 5, micro_batch=128)
    in_memory = pca.fit_dual(weights, 5)
    np.testing.assert_allclose(streamed.mean, in_memory.mean, atol=1e-6)
    np.testing.assert_allclose(streamed.explained_variance, in_memory.explained_variance, rtol=1e-4)
    reconstructed = pca.inverse_transform(streamed, pca.transform(streamed, weights))
    np.testing.assert_allclose(reconstructed, weights, atol=1e-4)
