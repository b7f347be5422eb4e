"""One pipeline over both zoo stores: zoos in memory and zoos on disk save the same stages and give the same report."""

import contextlib

import jax
import numpy as np
import pytest
from tarfiles import write_tiny_cifar10

import configs.iris_mlp as iris_config
import configs.smallcnn as smallcnn_config
from dwf_jax import pca, pipeline, stages
from dwf_jax.checkpoints import CheckpointError, restore_tree
from dwf_jax.evaluate import distances_to
from dwf_jax.models import build_model
from dwf_jax.validation import validate_config
from dwf_jax.workdir import MATRIX_FILES
from dwf_jax.zoo_store import Flattener, MemoryZoo, open_file, write_rows
from experiments import stage_readers

STAGES = {
    "mlp": ("zoo", "canonical", "pca", "flow", "samples", "eval_generated", "diversity"),
    "cnn": (
        "zoo",
        "canonical",
        "pca",
        "flow",
        "samples",
        "eval_generated",
        "bn_stats",
        "eval_recalibrated",
        "diversity",
    ),
}


def test_streamed_transforms_match_in_memory(tmp_path):
    zoo = np.random.default_rng(0).normal(size=(6, 1000)).astype(np.float32)
    store = write_rows(tmp_path / "zoo.f32", iter(zoo))
    state, _ = pca.fit_transform_dual_streaming(
        store.columns, 6, 1000, 5, micro_batch=128, components_path=tmp_path / "components.f32"
    )
    coefficients = pca.transform_streaming(
        state, store.columns, 6, 1000, micro_batch=128
    )  # 1000 = 7 x 128 + a padded block
    np.testing.assert_allclose(coefficients, pca.transform(state, zoo), atol=1e-5)
    written = pca.inverse_transform_to_file(state, coefficients[:4], tmp_path / "generated.f32", micro_batch=128)
    np.testing.assert_allclose(written.rows(0, 4), pca.inverse_transform(state, coefficients[:4]), atol=1e-5)
    assert (written.num_models, written.dim) == (4, 1000) and not list(tmp_path.glob(".generated.f32.dwf-tmp-*"))


@pytest.mark.parametrize("solver", ["eigh", "randomized"])
def test_fit_transform_coefficients_equal_a_streamed_transform(solver):
    """The coefficients from the Gram matrix are the projection of the zoo on the components it returns."""
    rng = np.random.default_rng(2)
    zoo = (rng.normal(size=(12, 4)) @ rng.normal(size=(4, 700)) + 0.01 * rng.normal(size=(12, 700))).astype(np.float32)
    state, coefficients = pca.fit_transform_dual_streaming(
        MemoryZoo(zoo).columns, 12, 700, 3, micro_batch=128, solver=solver
    )
    projected = pca.transform_streaming(state, MemoryZoo(zoo).columns, 12, 700, micro_batch=128)
    np.testing.assert_allclose(coefficients, projected, rtol=1e-4, atol=1e-4 * np.abs(projected).max())


def test_streamed_distances_match_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 300)).astype(np.float32), rng.normal(size=(4, 300)).astype(np.float32)
    b[1] = a[2]
    streamed = distances_to(MemoryZoo(b), MemoryZoo(a), block=64)
    exact = np.linalg.norm(np.concatenate([b, a])[:, None, :].astype(np.float64) - b[None, :, :], axis=-1)
    np.testing.assert_allclose(streamed, exact, rtol=1e-6)
    assert streamed[4 + 2, 1] == 0 and np.all(np.diag(streamed[:4]) == 0)


def test_on_disk_needs_a_pca_space():
    config = smallcnn_config.get_config()
    config.zoo.on_disk, config.pca.method = True, "none"
    with pytest.raises(ValueError, match="zoo.on_disk needs pca.method 'dual' or 'incremental'"):
        validate_config(config)


def _config(case, data_dir, on_disk):
    if case == "mlp":
        config = iris_config.get_config()
        config.zoo.update(num_models=6, epochs=10, models_per_chunk=4)
        config.pca.update(method="incremental", components=4, batch_size=4)
    else:
        config = smallcnn_config.get_config()
        config.data.dir = str(data_dir)
        config.zoo.update(num_models=3, epochs=2, batch_size=16, models_per_chunk=2)
        config.pca.update(method="dual", components=-1)
        config.bn.update(num_batches=2, batch_size=16)
    config.zoo.on_disk = on_disk
    config.flow.update(iterations=40, hidden=16, steps_per_dispatch=20, batch_size=2)
    config.sample.update(num_samples=3, steps=5)
    config.baselines.update(noise_stds=(0.0, 0.05), mixtures=3)
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


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def runs(request, tmp_path_factory):
    """The same tiny run with the zoo in memory and on disk, then the on-disk one again (all stages loaded)."""
    case, root = request.param, tmp_path_factory.mktemp(request.param)
    data_dir = write_tiny_cifar10(root) if case == "cnn" else None
    with pytest.MonkeyPatch.context() as patch, shared_compilation_cache(root / "jit_cache"):
        patch.setenv("DWF_CACHE_DIR", str(root / "cache"))
        workdirs = {on_disk: root / f"work_{on_disk}" for on_disk in (False, True)}
        results = {
            on_disk: pipeline.run(_config(case, data_dir, on_disk), workdirs[on_disk], progress=False)
            for on_disk in workdirs
        }
        stamps = {
            path: path.stat().st_mtime_ns
            for path in workdirs[True].iterdir()
            if path.name in STAGES[case] or path.suffix == ".f32"
        }
        rerun = pipeline.run(_config(case, data_dir, True), workdirs[True], progress=False)
        assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
        yield case, data_dir, workdirs, results, rerun


def _numbers(result):
    generated, canonical = result["generated"], result["canonicalization"]
    return {
        "original": result["original"]["per_model"],
        "canonical_change": [canonical["max_accuracy_change"]],
        "generated": generated["per_model"],
        "before_recalibration": list(generated.get("accuracy_before_bn_recalibration", {}).values()),
        "to_reference": [
            *canonical["distance_to_reference_before"].values(),
            *canonical["distance_to_reference_after"].values(),
        ],
        "novelty": [value for stats in generated["novelty"].values() for value in stats.values()],
    }


def test_both_stores_give_the_same_report(runs):
    _, _, _, results, _ = runs
    in_memory, on_disk = _numbers(results[False]), _numbers(results[True])
    for key in in_memory:
        np.testing.assert_allclose(on_disk[key], in_memory[key], rtol=1e-4, atol=1e-4, err_msg=key)
    assert results[True].keys() == results[False].keys() and results[True]["model"] == results[False]["model"]
    assert results[True]["canonicalization"]["distance_to_reference_after"]["min"] == 0.0
    assert results[True]["canonicalization"]["max_accuracy_change"] < 1e-6


def test_every_stage_saves_the_same_contents_in_both_modes(runs):
    """Same keys, shapes and values: the store only decides how later stages read the files."""
    case, _, workdirs, _, _ = runs
    for stage in STAGES[case]:
        in_memory, on_disk = (restore_tree(workdirs[mode] / stage) for mode in (False, True))
        assert jax.tree.structure(in_memory) == jax.tree.structure(on_disk), stage
        jax.tree.map(np.testing.assert_array_equal, in_memory, on_disk)
        if stage in MATRIX_FILES:
            files = [(workdirs[mode] / MATRIX_FILES[stage]).read_bytes() for mode in (False, True)]
            assert files[0] == files[1] and files[0], stage
    assert not any(workdirs[True].glob("*.dwf-partial")) and not (workdirs[True] / "zoo_chunks").exists()


def test_rerun_of_a_finished_workdir_loads_every_stage(runs):
    _, _, _, results, rerun = runs
    assert rerun["generated"]["per_model"] == results[True]["generated"]["per_model"]
    assert rerun["generated"]["novelty"] == results[True]["generated"]["novelty"]


def test_bn_models_report_accuracy_before_and_after_recalibration(runs):
    case, _, _, results, _ = runs
    if case != "cnn":
        pytest.skip("the MLP has no BatchNorm")
    generated = results[True]["generated"]
    assert set(generated["accuracy_before_bn_recalibration"]) == {"mean", "std", "min", "max"}
    assert generated["bn_recalibration"] == {"data": "train", "num_batches": 2, "batch_size": 16}
    assert results[True]["dataset"]["source"].startswith("CIFAR-10 (JPEG copy)")
    assert results[True]["model"] == {"name": "smallcnn", "num_params": 21914 + 128}  # weights + BatchNorm statistics


def test_experiment_helpers_read_both_stores(runs, monkeypatch):
    case, data_dir, workdirs, results, _ = runs
    if case != "cnn":
        pytest.skip("the helpers recalibrate BatchNorm")
    monkeypatch.setenv("DWF_CACHE_DIR", str(data_dir.parent / "cache"))
    recalibrated = {
        on_disk: stage_readers.recalibrated_original_accuracy(_config(case, data_dir, on_disk), workdirs[on_disk])
        for on_disk in workdirs
    }
    assert recalibrated[False] == pytest.approx(recalibrated[True], abs=1e-4)
    # noise of size 0: the canonical originals, recalibrated on the same batches as every generated ensemble
    assert results[True]["baselines"]["noise_std_0"]["accuracy"] == pytest.approx(recalibrated[True], abs=1e-4)
    rebuilt = {
        on_disk: stage_readers.reconstructed_zoo_accuracy(_config(case, data_dir, on_disk), workdirs[on_disk])
        for on_disk in workdirs
    }
    assert rebuilt[False]["relative_error"] < 1e-5 and rebuilt[True]["relative_error"] < 1e-5  # N-1 components: exact
    assert rebuilt[False]["accuracy_bn_recalibrated"] == pytest.approx(recalibrated[False], abs=1e-4)


def test_stage_without_its_file_names_the_file(runs):
    case, data_dir, workdirs, _, _ = runs
    workdir = workdirs[True]
    (workdir / "generated.f32").rename(workdir / "moved.f32")
    try:
        with pytest.raises(
            CheckpointError, match=r"stage samples is damaged: .*generated.f32 is missing; delete samples"
        ):
            pipeline.run(_config(case, data_dir, True), workdir, progress=False)
    finally:
        (workdir / "moved.f32").rename(workdir / "generated.f32")


def test_diversity_evidence_is_that_of_the_evaluated_models(runs):
    """The errors the metrics compare are those behind the reported accuracies (recalibrated BatchNorm included)."""
    case, _, workdirs, _, _ = runs
    evidence = restore_tree(workdirs[True] / "diversity")
    evaluated = "eval_recalibrated" if case == "cnn" else "eval_generated"
    for group, stage, key in (("original", "zoo", "test_accuracy"), ("generated", evaluated, "accuracy")):
        accuracy = 100.0 * (1.0 - evidence[group]["wrong"].mean(axis=1))
        np.testing.assert_allclose(accuracy, restore_tree(workdirs[True] / stage)[key], atol=1e-4, err_msg=group)
        np.testing.assert_allclose(evidence[group]["class_distribution"].sum(axis=1), 1.0, rtol=1e-5)


def test_baselines_leave_batchnorm_statistics_to_recalibration(runs):
    """Noised originals keep their statistics exactly, an average those of its originals, the Gaussian the zoo's."""
    case, data_dir, workdirs, results, _ = runs
    if case != "cnn":
        pytest.skip("the MLP has no BatchNorm")
    config = _config(case, data_dir, True)
    groups = stages.baseline_groups(config)
    assert [name for name, _ in groups] == list(results[True]["baselines"])
    assert [name for name, _ in groups][-2:] == ["average_of_3", "gaussian"]  # K = 16 > 3: the whole zoo
    template = build_model(config.model).init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    flattener, num_models = Flattener(template), config.zoo.num_models
    canonical = open_file(workdirs[True] / "canonical.f32", num_models, flattener.dim).as_array()
    rows = open_file(workdirs[True] / "baselines.f32", sum(count for _, count in groups), flattener.dim).as_array()
    statistics = slice(0, flattener.params_columns().start)  # batch_stats sort before params
    assert statistics.stop == 128
    noised = rows[: 2 * num_models, statistics]
    np.testing.assert_array_equal(noised, np.tile(canonical[:, statistics], (2, 1)))
    average = canonical.mean(axis=0, dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(rows[-2 * num_models : -num_models], np.tile(average, (num_models, 1)))
    np.testing.assert_allclose(rows[-num_models:, statistics], np.tile(average[statistics], (num_models, 1)), rtol=1e-6)
