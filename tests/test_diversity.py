"""The diversity metrics measure what they claim: a copy gives the extreme values, a permuted twin is the same model."""

import jax
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.special import softmax
from scipy.stats import wasserstein_distance
from tiny_runs import batchnorm_zoo

from dwf_jax import diversity, evaluate, permutations
from dwf_jax.data import load_dataset
from dwf_jax.evaluate import ensemble_predictions
from dwf_jax.models import MLP
from dwf_jax.zoo_store import Flattener, MemoryZoo


def test_iou_of_errors_is_one_for_a_copy_and_zero_for_disjoint_errors():
    wrong = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 0, 1, 0, 0]], bool)
    matrix = np.asarray(diversity.iou(wrong, wrong))
    np.testing.assert_allclose(np.diag(matrix)[[0, 1, 3]], 1.0)
    assert matrix[0, 1] == 0.0 and matrix[1, 0] == 0.0
    np.testing.assert_allclose(matrix[0, 3], 1 / 3)  # {0, 1} and {0, 2}: one shared of three
    assert matrix[2, 0] == 0.0  # a flawless model shares no error


def test_two_flawless_models_share_no_error():
    """Zeng et al.'s IoU of two empty error sets: 0 (nothing shared), not 1."""
    flawless = np.zeros((2, 5), bool)
    np.testing.assert_array_equal(np.asarray(diversity.iou(flawless, flawless)), 0.0)


def test_per_example_jensen_shannon_tells_a_copy_from_a_model_of_the_same_marginal():
    """Two models that predict the same classes overall but not for the same inputs differ per example only."""
    confident = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]], np.float32)
    model = confident[None]
    shuffled = confident[[1, 2, 0]][None]  # another class for every input, the same classes on average
    np.testing.assert_allclose(shuffled.mean(axis=1), model.mean(axis=1))
    assert np.asarray(diversity.jensen_shannon(model.mean(axis=1), shuffled.mean(axis=1)))[0, 0] < 1e-6
    per_example = diversity.per_example_jensen_shannon(model, np.concatenate([model, shuffled]))
    assert per_example[0, 0] == 0.0
    expected = np.mean([jensenshannon(p, q, base=2) ** 2 for p, q in zip(model[0], shuffled[0], strict=True)])
    assert per_example[0, 1] == pytest.approx(expected, rel=1e-5) and per_example[0, 1] > 0.4


@pytest.mark.parametrize(("block_elements", "tile"), [(1, 1), (7, 2), (10**6, 128)])
def test_per_example_jensen_shannon_is_the_same_in_any_block(block_elements, tile):
    rng = np.random.default_rng(2)
    p, q = softmax(rng.normal(size=(3, 11, 4)), axis=-1), softmax(rng.normal(size=(5, 11, 4)), axis=-1)
    expected = [[np.mean(jensenshannon(a, b, base=2, axis=-1) ** 2) for b in q] for a in p]
    matrix = diversity.per_example_jensen_shannon(p.astype(np.float32), q.astype(np.float32), block_elements, tile)
    np.testing.assert_allclose(matrix, expected, rtol=1e-4, atol=1e-7)
    within = q.astype(np.float32)  # one set: each pair computed once, then mirrored
    expected = [[np.mean(jensenshannon(a, b, base=2, axis=-1) ** 2) for b in q] for a in q]
    np.testing.assert_allclose(
        diversity.per_example_jensen_shannon(within, within, block_elements, tile), expected, rtol=1e-4, atol=1e-7
    )


@pytest.mark.parametrize("tile", [2, 128])
def test_the_jensen_shannon_bar_counts_each_pair_once(tile, capsys):
    """Within one set the upper triangle (5 * 6 / 2 = 15 pairs), across two sets every pair (5 * 3); same values."""
    rng = np.random.default_rng(3)
    p, q = (softmax(rng.normal(size=(n, 7, 4)), axis=-1).astype(np.float32) for n in (5, 3))
    for a, b, pairs in ((p, p, 15), (p, q, 15), (q, p, 15)):
        shown = diversity.per_example_jensen_shannon(a, b, tile=tile, progress=True)
        np.testing.assert_array_equal(shown, diversity.per_example_jensen_shannon(a, b, tile=tile))
        final = capsys.readouterr().err.rstrip().split("\r")[-1]
        assert "100%" in final and f"{pairs:.1f}/{pairs:.1f}" in final, final


def test_jensen_shannon_is_zero_for_identical_and_one_bit_for_disjoint_predictions():
    p = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    matrix = np.asarray(diversity.jensen_shannon(p, p))
    np.testing.assert_allclose(np.diag(matrix), 0.0, atol=1e-7)
    np.testing.assert_allclose(matrix[0, 1], 1.0, rtol=1e-6)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-7)
    assert 0 < matrix[0, 2] < 1


@pytest.mark.parametrize("dim", [50, 3000])
def test_wasserstein_matches_scipy(dim):
    weights = np.random.default_rng(0).normal(size=(3, dim)).astype(np.float32) * np.array([[1.0], [1.5], [0.2]])
    quantiles = diversity.weight_quantiles(MemoryZoo(weights))
    matrix = np.asarray(diversity.wasserstein(quantiles, quantiles))
    expected = [[wasserstein_distance(a, b) for b in weights] for a in weights]
    # exact when every weight is kept (D <= NUM_QUANTILES), within 1.5 per mille from 1024 quantiles otherwise
    np.testing.assert_allclose(matrix, expected, rtol=1e-5 if dim <= diversity.NUM_QUANTILES else 1.5e-3, atol=1e-6)


@pytest.mark.parametrize("block", [3, 1000])
def test_geometry_matches_numpy_for_both_sets(block):
    rng = np.random.default_rng(1)
    first, second = rng.normal(size=(4, 10)), rng.normal(size=(3, 10))
    shape = diversity.geometry(MemoryZoo(first.astype(np.float32)), MemoryZoo(second.astype(np.float32)), block)
    both = np.concatenate([first, second])
    np.testing.assert_allclose(shape.distance, np.linalg.norm(both[:, None] - both[None], axis=-1), rtol=1e-5)
    unit = both / np.linalg.norm(both, axis=1, keepdims=True)
    np.testing.assert_allclose(shape.cosine, unit @ unit.T, rtol=1e-5, atol=1e-6)
    assert np.all(np.diag(shape.distance) == 0.0)


def test_within_one_set_a_model_is_never_its_own_nearest():
    matrix = np.array([[0.0, 2.0, 3.0], [2.0, 0.0, 1.0], [3.0, 1.0, 0.0]])
    np.testing.assert_array_equal(diversity.nearest(matrix, same_set=True, largest=False), [2.0, 1.0, 1.0])
    np.testing.assert_array_equal(diversity.nearest(matrix, same_set=False, largest=False), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(diversity.nearest(matrix, same_set=True, largest=True), [3.0, 2.0, 3.0])


def test_a_permuted_twin_is_the_same_model_to_every_metric():
    """Functional twins: same errors and predictions, same weight distribution, 0 apart once canonicalized."""
    data = load_dataset("iris")
    model = MLP((16, 3))
    variables = model.init(jax.random.key(0), data.x_train[:1])
    spec = permutations.builders.mlp_permutation_spec(2)
    twin = permutations.apply_permutation(
        spec, permutations.random_permutation(jax.random.key(1), spec, variables), variables
    )
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), variables, twin)
    wrong, probabilities = ensemble_predictions(model, stacked, data.x_test, data.y_test)
    assert np.asarray(diversity.iou(wrong, wrong))[0, 1] == 1.0
    assert diversity.per_example_jensen_shannon(probabilities, probabilities)[0, 1] < 1e-6

    flattener = Flattener(variables)
    quantiles = diversity.weight_quantiles(MemoryZoo(np.stack([flattener.flatten(variables), flattener.flatten(twin)])))
    assert np.asarray(diversity.wasserstein(quantiles, quantiles))[0, 1] == 0.0

    matched = permutations.weight_matching(jax.random.key(2), spec, variables, twin)
    aligned = permutations.apply_permutation(spec, matched.perms, twin)
    canonical = MemoryZoo(np.stack([flattener.flatten(variables)]))
    shape = diversity.geometry(canonical, MemoryZoo(np.stack([flattener.flatten(aligned)])), block=64)
    assert shape.distance[0, 1] == pytest.approx(0.0, abs=1e-5) and shape.cosine[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert shape.distance[0, 1] < 1e-3 * np.linalg.norm(flattener.flatten(variables))


def test_batchnorm_statistics_are_no_weights_to_the_weight_metrics():
    """L2, cosine, Wasserstein and novelty compare the learned weights: running statistics moved alone change none."""
    flattener, zoo = batchnorm_zoo(4)
    rows = [flattener.unflatten(row) for row in zoo.as_array()]
    moved = MemoryZoo(
        np.stack(
            [
                flattener.flatten(
                    {**row, "batch_stats": jax.tree.map(lambda leaf: 3.0 * leaf + 1.0, row["batch_stats"])}
                )
                for row in rows
            ]
        )
    )
    assert not np.array_equal(moved.as_array(), zoo.as_array())
    params = flattener.params_columns()
    before, after = (evaluate.zoo_distances(0, store, store, store, 64, params) for store in (zoo, moved))
    for field in ("to_reference_before", "generated_to_canonical", "canonical_to_canonical"):
        np.testing.assert_array_equal(getattr(before, field), getattr(after, field))
    np.testing.assert_array_equal(before.among_all.cosine, after.among_all.cosine)
    quantiles = [diversity.weight_quantiles(diversity.ColumnRange(store, params)) for store in (zoo, moved)]
    np.testing.assert_array_equal(*quantiles)
    assert before.num_params == zoo.dim  # the model's size still counts its statistics


@pytest.mark.parametrize("block", [5, 64])
def test_geometry_and_distances_to_give_the_same_l2(block):
    """One streamed kernel under both: the same stores, the same distances to the last bit."""
    rng = np.random.default_rng(3)
    first, second = (MemoryZoo(rng.normal(size=(count, 70)).astype(np.float32)) for count in (3, 4))
    shape = diversity.geometry(first, second, block)
    np.testing.assert_array_equal(evaluate.distances_to(first, second, block), shape.distance[:, :3])
