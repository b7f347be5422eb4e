"""The baselines are what they say: noise of the given size around each original, convex combinations of originals."""

import jax
import numpy as np
import pytest

from dwf_jax import baselines
from dwf_jax.zoo_store import MemoryZoo

ZOO = MemoryZoo(np.random.default_rng(0).normal(size=(5, 4000)).astype(np.float32))


def test_noise_of_size_zero_is_the_originals_and_otherwise_has_its_std():
    np.testing.assert_array_equal(np.stack(list(baselines.noisy(ZOO, 0.0, jax.random.key(0)))), ZOO.as_array())
    noisy = np.stack(list(baselines.noisy(ZOO, 0.1, jax.random.key(0))))
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
