"""Zoo stores: memory and file behind one protocol, model rows in ravel order, atomic writes, alignment from a file."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from test_cnn_models import random_variables

from dwf_jax import pca
from dwf_jax import permutations as perm
from dwf_jax.canonical import align_models
from dwf_jax.models import MLP, SmallCNN, smallcnn_permutation_spec
from dwf_jax.zoo_store import FileZoo, Flattener, MemoryZoo, as_store, groups, open_file, write_rows

SPEC = smallcnn_permutation_spec()


def _mlp_zoo(num_models):
    model = MLP((16, 3))
    return jax.vmap(lambda k: model.init(k, jnp.zeros((1, 4))))(jax.random.split(jax.random.key(0), num_models))


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


@pytest.fixture(params=["memory", "file"])
def store_and_matrix(request, tmp_path):
    matrix = np.random.default_rng(0).normal(size=(7, 50)).astype(np.float32)
    if request.param == "memory":
        return MemoryZoo(matrix), matrix
    return write_rows(tmp_path / "zoo.f32", iter(matrix)), matrix


def test_both_stores_answer_the_protocol_alike(store_and_matrix):
    store, matrix = store_and_matrix
    assert (store.num_models, store.dim) == (7, 50)
    np.testing.assert_array_equal(store.read(3), matrix[3])
    np.testing.assert_array_equal(store.rows(2, 5), matrix[2:5])
    np.testing.assert_array_equal(store.columns(10, 33), matrix[:, 10:33])
    np.testing.assert_array_equal(np.concatenate(list(groups(store, 3))), matrix)
    assert [len(group) for group in groups(store, 3)] == [3, 3, 1]
    np.testing.assert_array_equal(np.asarray(store.as_array()), matrix)
    with pytest.raises(IndexError, match="model 7 is not in a zoo of 7"):
        store.read(7)


def test_flattener_round_trips_models_in_ravel_order():
    zoo = _mlp_zoo(5)
    flattener = Flattener(jax.eval_shape(lambda: jax.tree.map(lambda leaf: leaf[0], zoo)))
    rows = np.stack(list(flattener.rows(zoo)))
    assert rows.shape == (5, 131) and flattener.dim == 131
    np.testing.assert_array_equal(rows[1], ravel_pytree(jax.tree.map(lambda leaf: leaf[1], zoo))[0])
    jax.tree.map(np.testing.assert_array_equal, flattener.unflatten_rows(rows), zoo)
    for index, model in enumerate(flattener.models(MemoryZoo(rows))):
        jax.tree.map(np.testing.assert_array_equal, model, jax.tree.map(lambda leaf, i=index: leaf[i], zoo))
    with pytest.raises(ValueError, match=r"\(N, 131\)"):
        flattener.unflatten_rows(np.zeros((2, 130)))


def test_open_file_refuses_a_missing_or_wrongly_sized_file(tmp_path):
    zoo = write_rows(tmp_path / "zoo.f32", np.ones((3, 4)))
    assert isinstance(open_file(zoo.path, 3, 4, in_memory=True), MemoryZoo)
    assert open_file(zoo.path, 3, 4) == FileZoo(zoo.path, 3, 4)
    with pytest.raises(ValueError, match="has 48 bytes, expected 3 x 5 float32"):
        open_file(zoo.path, 3, 5)
    with pytest.raises(FileNotFoundError, match="other.f32 is missing"):
        open_file(tmp_path / "other.f32", 3, 4)


def test_interrupted_write_leaves_no_zoo_file(tmp_path):
    def crashing():
        yield np.zeros(4)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_rows(tmp_path / "zoo.f32", crashing())
    assert not (tmp_path / "zoo.f32").exists()
    with pytest.raises(ValueError, match="row 1 has 3 weights, expected 4"):
        write_rows(tmp_path / "zoo.f32", [np.zeros(4), np.zeros(3)])


def test_a_memmap_of_a_whole_zoo_file_is_read_as_a_file(tmp_path):
    matrix = np.arange(12, dtype=np.float32).reshape(4, 3)
    zoo = write_rows(tmp_path / "zoo.f32", matrix)
    assert as_store(zoo.as_array()) == zoo
    assert isinstance(as_store(matrix), MemoryZoo)
    for part in (zoo.as_array()[2:4], zoo.as_array()[:, 1:]):  # slices keep the file name and offset 0
        np.testing.assert_array_equal(as_store(part).columns(0, 2), np.asarray(part)[:, :2])


def test_alignment_streamed_from_a_zoo_file_recovers_the_planted_permutations(tmp_path):
    reference, models = planted_zoo(4)
    flattener = Flattener(reference)
    zoo = write_rows(tmp_path / "zoo.f32", map(flattener.flatten, models))
    aligned = align_models(
        jax.random.key(0), SPEC, flattener.unflatten(zoo.read(0)), flattener.models(zoo), reference_index=0
    )
    canonical = write_rows(tmp_path / "canonical.f32", map(flattener.flatten, aligned))
    flat_reference = flattener.flatten(reference)
    for index in range(1, canonical.num_models):
        before = np.linalg.norm(zoo.read(index) - flat_reference)
        after = np.linalg.norm(canonical.read(index) - flat_reference)
        assert after < 0.05 * before
        assert after < 1e-3 * np.sqrt(flat_reference.size) * 1.5


def test_streamed_dual_pca_from_a_zoo_file_matches_the_in_memory_fit(tmp_path):
    weights = np.random.default_rng(0).normal(size=(6, 1000)).astype(np.float32)
    zoo = write_rows(tmp_path / "zoo.f32", iter(weights))
    streamed, _ = pca.fit_transform_dual_streaming(zoo.columns, zoo.num_models, zoo.dim, 5, micro_batch=128)
    in_memory = pca.fit_dual(weights, 5)
    np.testing.assert_allclose(streamed.mean, in_memory.mean, atol=1e-6)
    np.testing.assert_allclose(streamed.explained_variance, in_memory.explained_variance, rtol=1e-4)
    reconstructed = pca.inverse_transform(streamed, pca.transform(streamed, weights))
    np.testing.assert_allclose(reconstructed, weights, atol=1e-4)


def test_params_columns_are_exactly_the_params_collection():
    """Only the learned weights, never BatchNorm running statistics (what the weight metrics and noise read)."""
    template = SmallCNN(widths=(2, 3), hidden_width=4, num_classes=3).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    flattener = Flattener(template)
    marked = flattener.flatten(
        {
            "batch_stats": jax.tree.map(jnp.zeros_like, template["batch_stats"]),
            "params": jax.tree.map(jnp.ones_like, template["params"]),
        }
    )
    np.testing.assert_array_equal(np.flatnonzero(marked), np.arange(flattener.dim)[flattener.params_columns()])
    assert flattener.params_columns().start == 2 * (2 + 3)  # a mean and a variance per channel first
    assert Flattener({"params": template["params"]}).params_columns() == slice(0, flattener.dim - 10)
