"""A finished stage is reused exactly when the settings it depends on are unchanged, data identity included."""

import json

import numpy as np
import pytest
from test_data import write_idx, write_mnist_dir
from tiny_runs import refused, snapshot, tiny_config

from dwf_jax import data, pipeline
from dwf_jax.config import base_config
from dwf_jax.settings import STAGE_KEYS, differences, stage_settings
from dwf_jax.workdir import WorkdirConfigMismatch

STAGES = ("zoo", "canonical", "flow", "samples")


def test_a_diverged_flow_is_fixed_by_changing_only_the_flow(tmp_path):
    """The finished zoo does not depend on the flow's settings: the fixed config reuses it."""
    config = tiny_config()
    config.flow.learning_rate = 1e30
    workdir = tmp_path / "work"
    with pytest.raises(FloatingPointError, match="the flow diverged"):
        pipeline.run(config, workdir, progress=False)
    zoo_before = snapshot(workdir / "zoo")
    config.flow.learning_rate = 5e-4
    result = pipeline.run(config, workdir, progress=False)
    assert snapshot(workdir / "zoo") == zoo_before and np.isfinite(result["generated"]["accuracy"]["mean"])


def test_a_key_no_finished_stage_depends_on_may_change(workdir):
    config = tiny_config()
    config.eval.batch_size = 7
    config.zoo.models_per_chunk = 3
    stages_before = {name: snapshot(workdir / name) for name in ("zoo", "canonical", "flow", "samples")}
    pipeline.run(config, workdir, progress=False)
    assert {name: snapshot(workdir / name) for name in stages_before} == stages_before


def test_changed_flow_settings_name_the_flow_stage(workdir):
    config = tiny_config()
    config.flow.time_distribution = "beta"
    expected = r"stage flow .* other settings \(flow.time_distribution: 'uniform' -> 'beta'\); delete flow, samples"
    refused(workdir, WorkdirConfigMismatch, expected, lambda: pipeline.run(config, workdir, progress=False))


def mnist_config(data_dir):
    config = tiny_config()
    config.data.update(name="mnist", dir=None if data_dir is None else str(data_dir), source="offline")
    config.model.features = (16, 10)
    return config


def test_the_data_directory_is_named_by_its_content(tmp_path, monkeypatch):
    """One folder given by --config.data.dir or by $DWF_DATA_DIR is the same data; other files in it are not."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    folder = write_mnist_dir(tmp_path / "data", n_train=32, n_test=16)
    workdir = tmp_path / "work"
    pipeline.run(mnist_config(tmp_path / "data"), workdir, progress=False)
    before = {stage: snapshot(workdir / stage) for stage in STAGES}

    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "data"))
    pipeline.run(mnist_config(None), workdir, progress=False)
    assert {stage: snapshot(workdir / stage) for stage in STAGES} == before

    images = np.random.default_rng(1).integers(0, 256, (32, 28, 28))
    write_idx(folder / f"{data.IDX_FILES['train'][0]}.gz", images, compress=True)
    refused(
        workdir,
        WorkdirConfigMismatch,
        r"stage zoo .* other settings \(data.fingerprint: '[0-9a-f]+' -> '[0-9a-f]+'\)",
        lambda: pipeline.run(mnist_config(None), workdir, progress=False),
    )


def test_labels_outside_the_classes_are_refused_by_file(tmp_path):
    folder = write_mnist_dir(tmp_path / "data", n_train=32, n_test=16)
    labels = folder / data.IDX_FILES["test"][1]
    write_idx(labels, np.array([0, 1, 12, 3] * 4))
    refused(
        tmp_path / "work",
        ValueError,
        f"{labels}: 4 labels outside 0..9 \\(first at index 2: 12\\)",
        lambda: pipeline.run(mnist_config(tmp_path / "data"), tmp_path / "work", progress=False),
    )


def test_each_stage_depends_on_its_own_keys_and_those_upstream():
    settings = stage_settings(base_config(), "fingerprint")
    assert "flow.learning_rate" in settings["flow"] and "flow.learning_rate" not in settings["canonical"]
    assert "data.dir" not in settings["zoo"] and settings["zoo"]["data.fingerprint"] == "fingerprint"
    for stage, keys in settings.items():
        assert "eval.batch_size" not in keys and "zoo.models_per_chunk" not in keys
        upstream = {"canonical": "zoo", "flow": "canonical", "samples": "flow", "bn_stats": "samples"}.get(stage)
        assert upstream is None or settings[upstream].items() <= keys.items(), stage
    assert set(settings) == set(STAGE_KEYS)


def test_a_key_a_stage_never_recorded_counts_as_its_default():
    """Stages recorded before a key existed stay usable while the key keeps its default."""
    now = stage_settings(base_config(), "fingerprint")["zoo"]
    recorded = {key: value for key, value in now.items() if key != "zoo.drop_last"}
    assert differences(recorded, now) == []
    assert differences(recorded, {**now, "zoo.drop_last": True}) == ["zoo.drop_last: None -> True"]


def test_a_stage_of_an_older_layout_is_refused_by_name(workdir):
    """A diversity stage saved before it kept per-example probabilities (no layout recorded) is not read:
    the run names it and what to delete, and changes nothing."""
    config = tiny_config()
    recorded = stage_settings(config, "fingerprint")["diversity"]
    assert recorded["stage_layout"] == 3
    older = {key: value for key, value in recorded.items() if key != "stage_layout"}
    assert differences(older, recorded) == ["stage_layout: None -> 3"]
    manifest_path = workdir / "diversity" / "dwf_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["settings"]["stage_layout"]
    manifest_path.write_text(json.dumps(manifest))
    expected = r"stage diversity .* other settings \(stage_layout: None -> 3\); delete diversity"
    refused(workdir, WorkdirConfigMismatch, expected, lambda: pipeline.run(config, workdir, progress=False))


def test_validate_every_counts_only_with_early_stopping():
    """Without early stopping the flow never validates: flow.validate_every may change without rerunning it."""
    config = base_config()
    config.flow.validate_every = 7
    assert differences(stage_settings(base_config(), "f")["flow"], stage_settings(config, "f")["flow"]) == []
    recorded = {**stage_settings(base_config(), "f")["flow"], "flow.validate_every": 7}  # recorded before
    assert differences(recorded, stage_settings(base_config(), "f")["flow"]) == []
    config.flow.early_stopping = True
    stopping = base_config()
    stopping.flow.early_stopping = True
    assert differences(stage_settings(stopping, "f")["flow"], stage_settings(config, "f")["flow"]) == [
        "flow.validate_every: 1000 -> 7"
    ]
