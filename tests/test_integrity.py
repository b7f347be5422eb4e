"""Damaged files are found before they are used; damaged training states cost a few steps, never the run."""

import logging
import pathlib
import shutil

import jax
import numpy as np
import pytest
from tiny_runs import refused, tiny_config

from dwf_jax import pipeline, report, stages
from dwf_jax.checkpoints import MANIFEST_FILE, CheckpointError, CheckpointSettingsMismatch, restore_tree
from dwf_jax.data import load_dataset
from dwf_jax.workdir import REPORT_FILE, StageDamaged, Workdir


def flip_bytes(path: pathlib.Path, count: int = 64) -> None:
    """Change `count` bytes in the middle of a file, keeping its size."""
    raw = bytearray(path.read_bytes())
    middle = max(0, len(raw) // 2 - count // 2)
    for index in range(middle, min(len(raw), middle + count)):
        raw[index] ^= 0xFF
    path.write_bytes(bytes(raw))


def largest_file(folder: pathlib.Path) -> pathlib.Path:
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize(
    "damaged, stage, doomed",
    [
        (
            "zoo.f32",
            "zoo",
            "zoo, zoo.f32, canonical, canonical.f32, flow, zoo_diversity, baselines, baselines.f32, samples",
        ),
        ("canonical.f32", "canonical", "canonical, canonical.f32, flow"),
        ("generated.f32", "samples", "samples, generated.f32, eval_generated"),
        ("flow", "flow", "flow, samples, generated.f32, eval_generated"),
        ("eval_generated", "eval_generated", "eval_generated in"),
    ],
)
def test_flipped_bytes_in_a_stage_are_found_and_the_report_is_kept(workdir, damaged, stage, doomed):
    target = workdir / damaged
    flip_bytes(largest_file(target) if target.is_dir() else target)
    report_before = (workdir / REPORT_FILE).read_bytes()
    refused(workdir, StageDamaged, rf"stage {stage} is damaged: .* does not match the checksum .*delete {doomed}")
    assert (workdir / REPORT_FILE).read_bytes() == report_before


def test_stage_with_a_damaged_manifest_is_named(workdir):
    (workdir / "canonical" / MANIFEST_FILE).write_text("{")
    refused(workdir, StageDamaged, f"stage canonical is damaged: .*canonical has no readable {MANIFEST_FILE}")


def _train_zoo_chunks(config, work) -> list:
    dataset = load_dataset("iris")
    return list(stages.train_chunks(config, dataset, work, progress=False))


def test_damaged_newest_zoo_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = tiny_config()
    work = pipeline.workdir_for(config, load_dataset("iris"), tmp_path / "work")
    uninterrupted = _train_zoo_chunks(config, work)
    chunk = work.zoo_chunk(0, config.zoo.num_models - 1)
    assert sorted(p.name for p in chunk.iterdir()) == ["10", "5"]
    flip_bytes(largest_file(chunk / "10"))
    resumed = _train_zoo_chunks(config, work)
    assert "training checkpoint skipped, trying the one before" in caplog.text and "/10/" in caplog.text
    assert f"resuming from training checkpoint {chunk / '5'}" in caplog.text
    jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)

    for step in ("5", "10"):
        largest_file(chunk / step).write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"no training checkpoint in {chunk} can be restored .*delete {chunk}"):
        _train_zoo_chunks(config, work)


def test_zoo_checkpoints_of_other_settings_are_never_resumed(tmp_path):
    config = tiny_config()
    work = pipeline.workdir_for(config, load_dataset("iris"), tmp_path / "work")
    _train_zoo_chunks(config, work)
    config.zoo.learning_rate = 0.5
    changed = pipeline.workdir_for(config, load_dataset("iris"), tmp_path / "work")
    with pytest.raises(CheckpointSettingsMismatch, match=r"other settings \(zoo.learning_rate: 0.001 -> 0.5\)"):
        _train_zoo_chunks(config, changed)


def test_damaged_newest_flow_checkpoint_resumes_from_the_one_before(workdir, caplog):
    caplog.set_level(logging.INFO)
    flow_before = restore_tree(workdir / "flow")
    for stage in ("flow", "samples", "eval_generated", "diversity"):
        shutil.rmtree(workdir / stage)
    assert sorted(p.name for p in (workdir / "flow_checkpoints").iterdir()) == ["30", "60"]
    largest_file(workdir / "flow_checkpoints" / "60").write_bytes(b"truncated")
    pipeline.run(tiny_config(), workdir, progress=False)
    assert f"resuming from training checkpoint {workdir / 'flow_checkpoints' / '30'}" in caplog.text
    jax.tree.map(np.testing.assert_array_equal, restore_tree(workdir / "flow"), flow_before)


def test_figure_and_report_are_written_whole_or_not_at_all(workdir, monkeypatch):
    figure, report_json = (workdir / "accuracy.png").read_bytes(), (workdir / REPORT_FILE).read_bytes()

    def killed_midway(self, path, **kwargs):
        pathlib.Path(path).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(report.Figure, "savefig", killed_midway)
    with pytest.raises(KeyboardInterrupt, match="interrupted during stage report"):
        pipeline.run(tiny_config(), workdir, progress=False)
    assert (workdir / "accuracy.png").read_bytes() == figure
    assert (workdir / REPORT_FILE).read_bytes() == report_json
    assert not list(workdir.glob(".*.dwf-tmp-*"))


def test_the_first_stage_written_marks_the_workdir_format(tmp_path):
    """Stages written outside pipeline.run (experiments growing a zoo) still make a workdir runs can check."""
    settings = {"eval_generated": {"seed": 0}}
    Workdir(tmp_path, settings).run("eval_generated", lambda: {"accuracy": np.ones(2)})
    Workdir(tmp_path, settings).check()
