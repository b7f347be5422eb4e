"""A tiny end-to-end run on Iris: report schema, stage skipping, workdir ownership."""

import json
import pathlib

import pytest

import configs.iris_mlp as iris_config
from dwf_jax import pipeline
from dwf_jax.workdir import WorkdirConfigMismatch


def _tiny_config():
    config = iris_config.get_config()
    config.zoo.update(num_models=6, epochs=20, models_per_chunk=4)
    config.flow.update(iterations=300, hidden=32, steps_per_dispatch=100, checkpoint_every=150, batch_size=4)
    config.sample.update(num_samples=5, steps=10)
    return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("iris")
    result = pipeline.run(_tiny_config(), workdir, progress=False)
    return workdir, result


def test_report_schema(finished_run):
    workdir, result = finished_run
    written = json.loads((workdir / "report.json").read_text())
    assert written == json.loads(json.dumps(result))
    for group in ("original", "generated"):
        assert set(written[group]["accuracy"]) >= {"mean", "std", "min", "max"}
        assert 0.0 <= written[group]["accuracy"]["min"] <= written[group]["accuracy"]["max"] <= 100.0
    assert written["original"]["num_models"] == 6 and len(written["generated"]["per_model"]) == 5
    assert written["generated"]["nfe"] == 40
    assert set(written["generated"]["novelty"]) == {
        "generated_to_nearest_original",
        "original_to_nearest_other_original",
    }
    assert set(written["timings"]) == {"zoo", "canonical", "flow", "samples", "eval_generated"}
    assert (workdir / "accuracy.png").stat().st_size > 0


def test_canonicalization_preserves_function_and_moves_towards_reference(finished_run):
    _, result = finished_run
    canonical = result["canonicalization"]
    assert canonical["max_accuracy_change"] < 1e-6
    assert canonical["distance_to_reference_after"]["mean"] <= canonical["distance_to_reference_before"]["mean"]


def test_second_run_skips_done_stages(finished_run):
    workdir, first = finished_run
    stamps = {
        name: (workdir / name).stat().st_mtime_ns for name in ("zoo", "canonical", "flow", "samples", "eval_generated")
    }
    second = pipeline.run(_tiny_config(), workdir, progress=False)
    assert {name: (workdir / name).stat().st_mtime_ns for name in stamps} == stamps
    assert second["generated"]["per_model"] == first["generated"]["per_model"]
    assert second["timings"] == first["timings"]


def test_workdir_of_another_config_is_refused(finished_run):
    workdir, _ = finished_run
    before = sorted((p.name, p.stat().st_mtime_ns) for p in pathlib.Path(workdir).iterdir())
    config = _tiny_config()
    config.flow.hidden = 64
    with pytest.raises(WorkdirConfigMismatch, match=r"flow\.hidden: 32 -> 64"):
        pipeline.run(config, workdir, progress=False)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in pathlib.Path(workdir).iterdir()) == before
