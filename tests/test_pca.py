import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.decomposition import IncrementalPCA

from dwf_jax import pca
from dwf_jax.config import base_config
from dwf_jax.validation import validate_config
from dwf_jax.zoo_store import FileZoo, MemoryZoo, write_rows


def _low_rank(num_rows=40, dim=300, rank=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(num_rows, rank)) * np.arange(rank, 0, -1)) @ rng.normal(size=(rank, dim)) + rng.normal(
        size=dim
    )


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


def _streaming(data, num_components, micro_batch=64, **options):
    state, _ = pca.fit_transform_dual_streaming(
        MemoryZoo(data).columns, len(data), data.shape[1], num_components, micro_batch, **options
    )
    return state


FITTERS = {
    "dual": lambda data, k: pca.fit_dual(jnp.asarray(data, jnp.float32), k),
    "incremental": lambda data, k: pca.fit_incremental(data, k, batch_size=15),  # 40 rows: a shorter last batch
    "streaming_eigh": _streaming,  # micro_batch 64 does not divide D=300 or 500
    "streaming_randomized": lambda data, k: _streaming(data, k, solver="randomized", key=jax.random.key(1)),
}


def _relative_error(state, data):
    restored = pca.inverse_transform(state, pca.transform(state, jnp.asarray(data, jnp.float32)))
    return float(np.linalg.norm(np.asarray(restored) - data) / np.linalg.norm(data - data.mean(0)))


def _cosines(components, reference):
    """Cosines of the principal angles between two row spaces."""
    return np.linalg.svd(np.asarray(components, np.float64) @ np.asarray(reference, np.float64).T, compute_uv=False)


def _match_signs(components, reference):
    components = np.asarray(components)
    return components * np.sign(np.sum(components * reference, axis=1, keepdims=True))


@pytest.mark.parametrize("method", FITTERS)
def test_every_method_matches_numpy_svd(method):
    data = _low_rank() + 1e-3 * np.random.default_rng(1).normal(size=(40, 300))
    state = FITTERS[method](data, 5)
    centred = data - data.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    assert np.min(_cosines(state.components, vt[:5])) > 1 - 1e-4
    np.testing.assert_allclose(state.explained_variance, singular[:5] ** 2 / (len(data) - 1), rtol=1e-4)
    exact_error = np.linalg.norm(centred - centred @ vt[:5].T @ vt[:5]) / np.linalg.norm(centred)
    assert abs(_relative_error(state, data) - exact_error) < 1e-4


@pytest.mark.parametrize("method", ["dual", "incremental", "streaming_eigh", "streaming_randomized"])
def test_n_minus_one_components_of_every_method_reconstruct_the_zoo(method):
    zoo = np.asarray(jax.random.normal(jax.random.key(0), (12, 500)))
    fit = {"incremental": lambda data, k: pca.fit_incremental(data, k, batch_size=5)}.get(method, FITTERS[method])
    assert _relative_error(fit(zoo, 11), zoo) < 1e-5


def test_incremental_matches_scikit_learn():
    data = _low_rank(num_rows=50, dim=200, rank=8) + 0.05 * np.random.default_rng(2).normal(size=(50, 200))
    reference = IncrementalPCA(n_components=5, batch_size=15).fit(data)  # batches 15, 15, 15, 5 in both
    state = pca.fit_incremental(data, 5, batch_size=15)
    np.testing.assert_allclose(state.explained_variance, reference.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(_match_signs(state.components, reference.components_), reference.components_, atol=1e-4)
    np.testing.assert_allclose(state.mean, reference.mean_, atol=1e-5)


def test_incremental_takes_an_iterable_of_row_blocks():
    data = _low_rank()
    whole = pca.fit_incremental(data, 5, batch_size=8)
    blocks = pca.fit_incremental((data[start : start + 13] for start in range(0, 40, 13)), 5, batch_size=8)
    assert np.min(_cosines(blocks.components, whole.components)) > 1 - 1e-4


def test_fp16_streaming_stays_within_the_stated_error_of_fp32():
    """Bound: principal-angle cosines > 0.999 and reconstruction errors within 1e-2 of fp32."""
    data = _low_rank(rank=6) + 0.05 * np.random.default_rng(3).normal(size=(40, 300))
    fp32, fp16 = _streaming(data, 6), _streaming(data, 6, fp16=True)
    assert np.min(_cosines(fp16.components, fp32.components)) > 0.999
    assert abs(_relative_error(fp16, data) - _relative_error(fp32, data)) < 1e-2
    np.testing.assert_allclose(fp16.explained_variance, fp32.explained_variance, rtol=1e-2)


def test_streaming_from_a_memmap_file_matches_in_memory_dual(tmp_path):
    data = _low_rank().astype(np.float32)
    assert write_rows(tmp_path / "zoo.bin", iter(data)).num_models == 40
    reader = FileZoo(tmp_path / "zoo.bin", 40, 300).columns
    streamed, _ = pca.fit_transform_dual_streaming(
        reader, 40, 300, 5, micro_batch=64, components_path=tmp_path / "components.bin"
    )
    in_memory = pca.fit_dual(jnp.asarray(data), 5)
    assert isinstance(streamed.components, np.memmap)
    np.testing.assert_allclose(streamed.mean, in_memory.mean, atol=1e-5)
    np.testing.assert_allclose(_match_signs(streamed.components, in_memory.components), in_memory.components, atol=1e-4)
    np.testing.assert_allclose(streamed.explained_variance, in_memory.explained_variance, rtol=1e-4)
    with pytest.raises(ValueError, match="shorter"):
        FileZoo(tmp_path / "zoo.bin", 41, 300).columns(0, 64)


@pytest.mark.parametrize("store", ["memory", "file"])
def test_fit_transform_gives_every_method_and_its_coefficients_from_any_store(store, tmp_path):
    data = _low_rank().astype(np.float32)
    zoo = MemoryZoo(data) if store == "memory" else write_rows(tmp_path / "zoo.f32", iter(data))
    for method, options in [
        ("dual", {}),
        ("dual", {"solver": "randomized", "key": jax.random.key(1)}),
        ("incremental", {"batch_size": 16}),
    ]:
        state, coefficients = pca.fit_transform(
            method, zoo, 5, 64, components_path=tmp_path / f"{method}.f32", **options
        )
        assert isinstance(state.components, np.memmap) and state.components.shape == (5, 300)
        np.testing.assert_allclose(coefficients, pca.transform(state, data), rtol=1e-4, atol=1e-3)
        assert _relative_error(state, data) < 1e-4
    with pytest.raises(ValueError, match="unknown PCA method 'kernel'"):
        pca.fit_transform("kernel", zoo, 5, 64)


def test_config_accepts_incremental_and_names_a_bad_solver():
    config = base_config()
    config.pca.method = "incremental"
    validate_config(config)
    config.pca.solver = "lanczos"
    with pytest.raises(ValueError, match="pca.solver"):
        validate_config(config)


def test_transforms_state_their_shape_contract():
    state = pca.fit_dual(jnp.asarray(_low_rank(), jnp.float32), 5)
    with pytest.raises(AssertionError, match="on axis '1'"):
        pca.transform(state, jnp.zeros((3, 299)))
    with pytest.raises(AssertionError, match="on axis '1'"):
        pca.inverse_transform(state, jnp.zeros((3, 4)))
    with pytest.raises(AssertionError, match="rank"):
        pca.fit_dual(jnp.zeros(300), 5)


def test_randomized_solver_defaults_to_key_zero():
    data = _low_rank().astype(np.float32)
    default = _streaming(data, 5, solver="randomized")
    explicit = _streaming(data, 5, solver="randomized", key=jax.random.key(0))
    other = _streaming(data, 5, solver="randomized", key=jax.random.key(1))
    np.testing.assert_array_equal(default.components, explicit.components)
    assert not np.array_equal(default.components, other.components)


def test_incremental_pca_is_scale_invariant():
    """Tiny weights (eigenvalues far below 1) keep their directions and variances."""
    data = 1e-3 * (_low_rank() + 1e-3 * np.random.default_rng(4).normal(size=(40, 300)))
    state = pca.fit_incremental(data, 5, batch_size=15)
    _, singular, vt = np.linalg.svd(data - data.mean(0), full_matrices=False)
    assert np.min(_cosines(state.components, vt[:5])) > 1 - 1e-4
    np.testing.assert_allclose(state.explained_variance, singular[:5] ** 2 / (len(data) - 1), rtol=1e-3)


def test_too_many_components_name_the_limit():
    data = _low_rank(num_rows=12).astype(np.float32)
    with pytest.raises(ValueError, match=re.escape("num_components=12 must be in [1, num_models - 1 = 11]")):
        _streaming(data, 12)
