import jax
import jax.numpy as jnp
import numpy as np

from dwf_jax import pca


def _low_rank(num_rows=40, dim=300, rank=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(num_rows, rank)) * np.arange(rank, 0, -1)) @ rng.normal(size=(rank, dim)) + rng.normal(size=dim)


def test_dual_pca_matches_numpy_svd_subspace():
    data = _low_rank()
    state = pca.fit_dual(jnp.asarray(data, jnp.float32), 5)
    _, singular, vt = np.linalg.svd(data - data.mean(0), full_matrices=False)
    cosines = np.linalg.svd(np.asarray(state.components, np.float64) @ vt[:5].T, compute_uv=False)
    assert np.min(cosines) > 1 - 1e-4
    np.testing.assert_allclose(state.explained_variance, singular[:5] ** 2 / (len(data) - 1), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(state.components) @ np.asarray(state.components).T, np.eye(5), atol=1e-4)


def test_n_minus_one_components_reconstruct_the_zoo_exactly():
    zoo = jax.random.normal(jax.random.key(0), (12, 500))
    state = pca.fit_dual(zoo, 11)
    restored = pca.inverse_transform(state, pca.transform(state, zoo))
    assert float(jnp.linalg.norm(restored - zoo) / jnp.linalg.norm(zoo - zoo.mean(0))) < 1e-5
