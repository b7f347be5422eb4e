"""The on-disk pipeline (zoo.on_disk): streamed PCA transforms and distances, and a tiny SmallCNN run matching the in-memory one."""

import contextlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tarfiles import write_tiny_cifar10

import configs.smallcnn as smallcnn_config
from dwf_jax import pca, pipeline
from dwf_jax.checkpoints import CheckpointError
from dwf_jax.config import validate_config
from dwf_jax.evaluate import pairwise_distances
from dwf_jax.pca.streaming import array_reader, pairwise_distances_streaming, stacked_reader
from dwf_jax.workdir import WorkdirConfigMismatch, check_config, config_as_dict

STAGES = ("zoo", "canonical", "pca", "flow", "samples", "eval_generated", "bn_stats", "eval_recalibrated")
FILES = ("zoo.f32", "canonical.f32", "pca_components.f32", "generated.f32")


def test_streamed_transforms_match_in_memory(tmp_path):
    zoo = np.random.default_rng(0).normal(size=(6, 1000)).astype(np.float32)
    pca.write_memmap(tmp_path / "zoo.f32", zoo, 1000)
    read = pca.memmap_reader(tmp_path / "zoo.f32", 6, 1000)
    state, _ = pca.fit_transform_dual_streaming(read, 6, 1000, 5, micro_batch=128, components_path=tmp_path / "components.f32")
    in_memory = pca.PCAState(*map(jnp.asarray, state))
    coefficients = pca.transform_streaming(state, read, 6, 1000, micro_batch=128)  # 1000 = 7 x 128 + a padded block
    np.testing.assert_allclose(coefficients, pca.transform(in_memory, zoo), atol=1e-5)
    written = pca.inverse_transform_to_file(state, coefficients[:4], tmp_path / "generated.f32", micro_batch=128)
    np.testing.assert_allclose(written, pca.inverse_transform(in_memory, coefficients[:4]), atol=1e-5)
    assert written.shape == (4, 1000) and not (tmp_path / "generated.f32.partial").exists()


@pytest.mark.parametrize("solver", ["eigh", "randomized"])
def test_fit_transform_coefficients_equal_a_streamed_transform(solver):
    """The coefficients from the Gram matrix are the projection of the zoo on the components it returns."""
    rng = np.random.default_rng(2)
    zoo = (rng.normal(size=(12, 4)) @ rng.normal(size=(4, 700)) + 0.01 * rng.normal(size=(12, 700))).astype(np.float32)
    state, coefficients = pca.fit_transform_dual_streaming(array_reader(zoo), 12, 700, 3, micro_batch=128, solver=solver)
    projected = pca.transform_streaming(state, array_reader(zoo), 12, 700, micro_batch=128)
    np.testing.assert_allclose(coefficients, projected, rtol=1e-4, atol=1e-4 * np.abs(projected).max())


def test_streamed_distances_match_pairwise_distances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 300)).astype(np.float32), rng.normal(size=(4, 300)).astype(np.float32)
    b[1] = a[2]
    streamed = pairwise_distances_streaming(stacked_reader(array_reader(b), array_reader(a)), 9, 300, 64, num_targets=4)
    np.testing.assert_allclose(streamed[4:], pairwise_distances(a, b), rtol=1e-5)
    np.testing.assert_allclose(streamed[:4], pairwise_distances(b, b), rtol=1e-5, atol=1e-6)
    assert streamed[4 + 2, 1] == 0 and np.all(np.diag(streamed[:4]) == 0)


@pytest.mark.parametrize("method", ["none", "incremental"])
def test_on_disk_needs_dual_pca(method):
    config = smallcnn_config.get_config()
    config.zoo.on_disk, config.pca.method = True, method
    with pytest.raises(ValueError, match="zoo.on_disk needs pca.method='dual'"):
        validate_config(config)


def _config(data_dir, on_disk):
    config = smallcnn_config.get_config()
    config.data.dir = str(data_dir)
    config.zoo.update(num_models=3, epochs=2, batch_size=16, models_per_chunk=2, on_disk=on_disk)
    config.flow.update(iterations=40, hidden=16, steps_per_dispatch=20, batch_size=2)
    config.pca.update(method="dual", components=-1)
    config.sample.update(num_samples=3, steps=5)
    config.bn.update(num_batches=2, batch_size=16)
    return config


@contextlib.contextmanager
def shared_compilation_cache(path):
    """Both runs compile the same programs: a persistent compilation cache lets the second reuse them."""
    options = {"jax_compilation_cache_dir": str(path), "jax_persistent_cache_min_compile_time_secs": 0.0}
    saved = {name: getattr(jax.config, name) for name in options}
    for name, value in options.items():
        jax.config.update(name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_tiny_cifar10(root)
    with pytest.MonkeyPatch.context() as patch, shared_compilation_cache(root / "jit_cache"):
        patch.setenv("DWF_CACHE_DIR", str(root / "cache"))
        results = {on_disk: pipeline.run(_config(root / "data", on_disk), root / f"work_{on_disk}", progress=False) for on_disk in (False, True)}
        stamps = {name: (root / "work_True" / name).stat().st_mtime_ns for name in (*STAGES, *FILES)}
        rerun = pipeline.run(_config(root / "data", True), root / "work_True", progress=False)
        assert {name: (root / "work_True" / name).stat().st_mtime_ns for name in stamps} == stamps
    return results, rerun, root / "work_True"


def _numbers(result):
    generated, canonical = result["generated"], result["canonicalization"]
    return {
        "original": result["original"]["per_model"],
        "canonical_change": [canonical["max_accuracy_change"]],
        "generated": generated["per_model"],
        "before_recalibration": list(generated["accuracy_before_bn_recalibration"].values()),
        "to_reference": [*canonical["distance_to_reference_before"].values(), *canonical["distance_to_reference_after"].values()],
        "novelty": [value for stats in generated["novelty"].values() for value in stats.values()],
    }


def test_on_disk_report_matches_in_memory(runs):
    results, _, _ = runs
    in_memory, on_disk = _numbers(results[False]), _numbers(results[True])
    assert in_memory.keys() == on_disk.keys()
    for key in in_memory:
        np.testing.assert_allclose(on_disk[key], in_memory[key], rtol=1e-4, atol=1e-4, err_msg=key)
    assert results[True]["canonicalization"]["distance_to_reference_after"]["min"] == 0.0
    assert results[True].keys() == results[False].keys() and results[True]["model"] == results[False]["model"]


def test_on_disk_workdir_holds_the_zoo_files_and_reruns_from_them(runs):
    results, rerun, workdir = runs
    assert all((workdir / name).is_file() for name in FILES)
    assert not any(workdir.glob("*.partial"))
    assert rerun["generated"]["per_model"] == results[True]["generated"]["per_model"]
    assert rerun["generated"]["novelty"] == results[True]["generated"]["novelty"]


def test_stage_without_its_file_names_the_file(runs):
    _, _, workdir = runs
    (workdir / "generated.f32").rename(workdir / "moved.f32")
    try:
        with pytest.raises(CheckpointError, match=r"generated.f32 is missing.*delete .*samples"):
            pipeline.run(_config(workdir.parent / "data", True), workdir, progress=False)
    finally:
        (workdir / "moved.f32").rename(workdir / "generated.f32")


def test_workdir_recorded_before_on_disk_existed_still_matches(tmp_path):
    config = smallcnn_config.get_config()
    recorded = config_as_dict(config)
    del recorded["zoo"]["on_disk"]
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    check_config(tmp_path, config)
    config.zoo.on_disk = True
    with pytest.raises(WorkdirConfigMismatch, match="zoo.on_disk: None -> True"):
        check_config(tmp_path, config)
