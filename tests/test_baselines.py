"""The baselines are what they say: noise of the given size around each original, convex combinations of originals,
uniform averages of K originals, draws from the zoo's per-weight Gaussian."""

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from tiny_runs import batchnorm_zoo

from dwf_jax import baselines
from dwf_jax.zoo_store import MemoryZoo

ZOO = MemoryZoo(np.random.default_rng(0).normal(size=(5, 4000)).astype(np.float32))
ALL = slice(0, ZOO.dim)


def test_noise_of_size_zero_is_the_originals_and_otherwise_has_its_std():
    np.testing.assert_array_equal(np.stack(list(baselines.noisy(ZOO, 0.0, jax.random.key(0), ALL))), ZOO.as_array())
    noisy = np.stack(list(baselines.noisy(ZOO, 0.1, jax.random.key(0), ALL)))
    assert np.std(noisy - ZOO.as_array()) == pytest.approx(0.1, rel=0.02)
    first, second = noisy[0] - ZOO.read(0), noisy[1] - ZOO.read(1)
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.1  # every model its own noise


def test_a_combination_of_a_model_with_itself_is_that_model():
    indices, weights = np.array([[3, 3], [1, 1]]), np.array([[0.3, 0.7], [0.5, 0.5]], np.float32)
    combined = np.stack(list(baselines.mixtures(ZOO, indices, weights)))
    np.testing.assert_allclose(combined, ZOO.as_array()[[3, 1]], rtol=1e-6)


def test_mixture_plans_take_distinct_models_with_convex_weights():
    indices, weights = baselines.mixture_plan(jax.random.key(1), 5, count=50, mix=3)
    assert indices.shape == (50, 3) and all(len(set(row)) == 3 for row in indices.tolist())
    assert indices.min() >= 0 and indices.max() < 5
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(weights >= 0)
    combined = np.stack(list(baselines.mixtures(ZOO, indices, weights)))
    expected = np.einsum("km,kmd->kd", weights, ZOO.as_array()[indices])
    np.testing.assert_allclose(combined, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="a combination mixes 1..5 distinct models, got 6"):
        baselines.mixture_plan(jax.random.key(1), 5, count=2, mix=6)


def test_noise_moves_the_weights_never_the_batchnorm_statistics():
    """Zeng et al. never noise running variances: a negative one gives NaN predictions."""
    flattener, zoo = batchnorm_zoo(4)
    originals = zoo.as_array().copy()
    noisy = list(baselines.noisy(zoo, 3.0, jax.random.key(0), flattener.params_columns()))
    np.testing.assert_array_equal(zoo.as_array(), originals)  # a store's rows are never noised in place
    moves = []
    for row, original in zip(noisy, zoo.as_array(), strict=True):
        moved, kept = flattener.unflatten(row), flattener.unflatten(original)
        jax.tree.map(np.testing.assert_array_equal, moved["batch_stats"], kept["batch_stats"])
        assert all(np.all(leaf["var"] >= 0) for leaf in moved["batch_stats"].values())
        moves.append(ravel_pytree(moved["params"])[0] - ravel_pytree(kept["params"])[0])
    assert np.std(moves) == pytest.approx(3.0, rel=0.1)


def test_an_average_is_exactly_the_mean_of_its_distinct_originals():
    indices = baselines.subsets(jax.random.key(3), 5, count=6, size=3)
    assert indices.shape == (6, 3) and all(len(set(row)) == 3 for row in indices.tolist())
    averaged = np.stack(list(baselines.averages(ZOO, indices)))
    expected = np.stack([ZOO.as_array()[row].mean(axis=0, dtype=np.float64).astype(np.float32) for row in indices])
    np.testing.assert_array_equal(averaged, expected)
    np.testing.assert_array_equal(indices, baselines.subsets(jax.random.key(3), 5, count=6, size=3))
    assert not np.array_equal(indices, baselines.subsets(jax.random.key(4), 5, count=6, size=3))


@pytest.mark.parametrize("block", [7, 1000])
def test_coordinate_moments_are_each_weights_mean_and_sample_std(block):
    zoo = ZOO.as_array()[:, :50]
    moments = baselines.coordinate_moments(MemoryZoo(zoo), block)
    np.testing.assert_allclose(moments.mean, zoo.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moments.std, zoo.std(axis=0, ddof=1), rtol=1e-5)


def test_gaussian_draws_have_the_zoos_per_weight_mean_and_std():
    zoo = MemoryZoo(ZOO.as_array()[:, :20] * np.linspace(0.1, 2.0, 20, dtype=np.float32))
    moments = baselines.coordinate_moments(zoo, block=8)
    draws = np.stack(list(baselines.gaussian(moments, 2000, jax.random.key(5), slice(0, 20))))
    error = 4 * moments.std / np.sqrt(len(draws))
    np.testing.assert_array_less(np.abs(draws.mean(axis=0) - moments.mean), error)
    np.testing.assert_allclose(draws.std(axis=0, ddof=1), moments.std, rtol=0.1)
    again = np.stack(list(baselines.gaussian(moments, 3, jax.random.key(5), slice(0, 20))))
    np.testing.assert_array_equal(again, draws[:3])  # same key, same models


def test_gaussian_models_take_the_zoos_mean_batchnorm_statistics():
    flattener, zoo = batchnorm_zoo(4)
    moments = baselines.coordinate_moments(zoo, block=64)
    mean_statistics = flattener.unflatten(zoo.as_array().mean(axis=0))["batch_stats"]
    for row in baselines.gaussian(moments, 3, jax.random.key(6), flattener.params_columns()):
        drawn = flattener.unflatten(row)["batch_stats"]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), drawn, mean_statistics)
        assert all(np.all(leaf["var"] > 0) for leaf in drawn.values())
