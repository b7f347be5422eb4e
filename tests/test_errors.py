"""Every bad input gets one clear error, raised before any file in the workdir changes."""

import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from tarfiles import write_image_folder_tar
from tiny_runs import refused, snapshot, tiny_config

from dwf_jax import checkpoints, flow, permutations, pipeline
from dwf_jax.checkpoints import CheckpointError, NotEnoughSpace
from dwf_jax.data import CIFAR10_TAR, DatasetNotFoundError, load_dataset
from dwf_jax.models import MLP, model_config
from dwf_jax.session import WorkdirBusy, WorkdirNotWritable, copy_stages, locked
from dwf_jax.workdir import (
    FORMAT,
    StageDamaged,
    Workdir,
    WorkdirConfigMismatch,
    WorkdirFormatMismatch,
)
from dwf_jax.zoo import ZooDiverged
from dwf_jax.zoo_store import NonFiniteWeights

ROOT = pathlib.Path(__file__).parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dwf_jax.main", *args], cwd=ROOT, capture_output=True, text=True)


def test_unknown_config_key_is_named():
    result = cli("--config=configs/iris_mlp.py", "--config.zoo.num_modles=3")
    assert result.returncode != 0 and "unknown config key 'num_modles'" in result.stderr


def test_wrong_type_is_named():
    result = cli("--config=configs/iris_mlp.py", "--config.zoo.num_models=many")
    assert result.returncode != 0 and "--config.zoo.num_models=many" in result.stderr


@pytest.mark.parametrize(
    "section, field, value, message",
    [
        ("zoo", "num_models", -3, "a zoo needs at least 2 models"),
        ("zoo", "num_models", 1, "a zoo needs at least 2 models"),
        ("sample", "steps", 0, "sample.steps=0 must be >= 1"),
        ("flow", "iterations", 0, "flow.iterations=0 must be >= 1"),
        ("flow", "hidden", 255, "flow.hidden=255 must be even"),
        ("pca", "components", 7, r"pca.components=7 must be -1 \(all\) or in \[1, zoo.num_models - 1 = 3\]"),
    ],
)
def test_out_of_range_values(workdir, section, field, value, message):
    config = tiny_config()
    if section == "pca":
        config.pca.method = "dual"
    config[section][field] = value
    refused(workdir, ValueError, message, lambda: pipeline.run(config, workdir, progress=False))


def test_a_batch_larger_than_the_training_set_with_drop_last(tmp_path):
    config = tiny_config()
    config.zoo.update(batch_size=200, drop_last=True)
    message = "zoo.batch_size=200 with zoo.drop_last leaves no step per epoch: iris has only 120 training examples"
    with pytest.raises(ValueError, match=message):
        pipeline.run(config, tmp_path / "work", progress=False)


def test_cli_prints_one_line_without_traceback(tmp_path):
    result = cli("--config=configs/iris_mlp.py", "--config.flow.hidden=3", f"--workdir={tmp_path / 'never'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("dwf_jax: error: invalid config: flow.hidden=3")
    assert not (tmp_path / "never").exists()


def test_missing_dataset(workdir, monkeypatch):
    monkeypatch.delenv("DWF_DATA_DIR", raising=False)
    config = tiny_config()
    config.data.update(name="mnist", source="offline", dir=str(workdir.parent / "no-data"))
    config.model.features = (16, 10)
    refused(
        workdir,
        DatasetNotFoundError,
        "no-data/mnist: missing train-images-idx3-ubyte.gz",
        lambda: pipeline.run(config, workdir, progress=False),
    )


def test_workdir_of_another_config(workdir):
    config = tiny_config()
    config.zoo.epochs = 11
    refused(
        workdir,
        WorkdirConfigMismatch,
        r"stage zoo in .* was computed with other settings \(zoo.epochs: 10 -> 11\); delete zoo, zoo.f32, canonical",
        lambda: pipeline.run(config, workdir, progress=False),
    )


def test_truncated_checkpoint(workdir):
    files = (p for p in (workdir / "samples").rglob("*") if p.is_file() and p.name != "dwf_manifest.json")
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    refused(workdir, StageDamaged, r"stage samples is damaged: .*samples/.* does not match the checksum")


def test_stage_of_another_architecture(workdir, tmp_path):
    other_config = tiny_config()
    other_config.model.features = (8, 3)
    pipeline.run(other_config, tmp_path / "other", progress=False)
    shutil.rmtree(workdir / "zoo")
    shutil.copytree(tmp_path / "other" / "zoo", workdir / "zoo")
    shutil.copyfile(tmp_path / "other" / "zoo.f32", workdir / "zoo.f32")
    refused(workdir, WorkdirConfigMismatch, r"stage zoo .* other settings \(model.features: \[8, 3\] -> \[16, 3\]\)")
    wrong_size = r"zoo.f32 has 1072 bytes, expected 4 x 131 float32 .*another architecture.*delete zoo, zoo.f32"
    with pytest.raises(StageDamaged, match=wrong_size):
        Workdir(workdir).open_matrix("zoo", 4, 131, in_memory=True)


def test_spec_that_does_not_fit_the_params():
    params = MLP((16, 3)).init(jax.random.key(0), np.zeros((1, 4)))
    spec = permutations.builders.mlp_permutation_spec(3)
    with pytest.raises(ValueError, match="Dense_2"):
        permutations.validate(spec, params)


@pytest.mark.parametrize("perm, message", [([0, 1, 2], "length"), ([0] * 16, "not a permutation")])
def test_bad_permutations(perm, message):
    params = MLP((16, 3)).init(jax.random.key(0), np.zeros((1, 4)))
    spec = permutations.builders.mlp_permutation_spec(2)
    with pytest.raises(ValueError, match=message):
        permutations.apply_permutation(spec, {"Dense_0": np.asarray(perm)}, params)


def test_zoo_with_nan_weights(tmp_path):
    config = tiny_config()
    config.zoo.learning_rate = 1e38
    with pytest.raises(ZooDiverged, match="zoo training diverged in epoch 1: 4 of 4 .* not finite .model 0: nan"):
        pipeline.run(config, tmp_path / "work", progress=False)
    assert not (tmp_path / "work" / "zoo").exists()


def test_generated_nan_weights(workdir):
    config = tiny_config()
    trained = checkpoints.restore_tree(workdir / "flow")
    broken = jax.tree.map(lambda leaf: leaf * np.nan, trained["params"])
    never_written = lambda samples, path: pytest.fail("wrote weights")  # noqa: E731
    space = pipeline.WeightSpace("full weights", np.zeros((4, 131), np.float32), never_written, lambda: None)
    with pytest.raises(NonFiniteWeights, match="generated weights: 3 of 3 models .* delete .*flow"):
        source = flow.Source("normal", config.flow.source_std)
        pipeline.generate(config, broken, space, source, pipeline.Workdir(workdir), progress=False)


def test_flow_nan_guard_names_step_and_what_to_do(tmp_path):
    config = tiny_config()
    config.flow.learning_rate = 1e30
    diverged = "flow loss became non-finite near step 30: the flow diverged. Lower flow.learning_rate and delete .*"
    with pytest.raises(FloatingPointError, match=diverged + "flow_checkpoints"):
        pipeline.run(config, tmp_path / "work", progress=False)


def test_workdir_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(WorkdirNotWritable, match="a-file/work is not writable"):
        pipeline.run(tiny_config(), blocker / "work", progress=False)


def test_full_disk(workdir, monkeypatch):
    for stage in ("samples", "eval_generated", "diversity"):
        shutil.rmtree(workdir / stage)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1 << 40, 1 << 40, 1024))
    refused(workdir, NotEnoughSpace, "not enough free space .* 0 MiB are free. Free some space and rerun")


def test_second_run_on_a_busy_workdir(workdir):
    with locked(workdir):
        refused(workdir, WorkdirBusy, f"workdir {workdir} is in use by another run")


def test_truncated_idx_file(workdir, tmp_path, monkeypatch):
    monkeypatch.delenv("DWF_DATA_DIR", raising=False)
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    header = bytes([0, 0, 8, 3]) + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (folder / name).write_bytes(header + bytes(100))
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(bytes([0, 0, 8, 1]) + (60000).to_bytes(4, "big") + bytes(10))
    config = tiny_config()
    config.data.update(name="mnist", dir=str(tmp_path / "data"), source="offline")
    config.model.features = (16, 10)
    refused(
        workdir,
        ValueError,
        "idx3-ubyte.*needs 47040000 data bytes, got 100",
        lambda: pipeline.run(config, workdir, progress=False),
    )


def test_corrupt_jpeg_in_the_cifar_archive(workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("DWF_CACHE_DIR", str(tmp_path / "cache"))
    tar = tmp_path / "data" / CIFAR10_TAR
    tar.parent.mkdir(parents=True)
    write_image_folder_tar(tar, {"train": {"cat": 2}, "test": {"dog": 1}}, corrupt="cifar10_jpeg/train/cat/0001.jpg")
    config = tiny_config()
    config.data.update(name="cifar10", dir=str(tmp_path / "data"), source="offline")
    config.model = model_config("smallcnn")
    refused(
        workdir, ValueError, "cifar10_jpeg/train/cat/0001.jpg", lambda: pipeline.run(config, workdir, progress=False)
    )


def test_workdir_of_an_older_format(workdir):
    (workdir / "workdir_format.json").unlink()
    expected = f"made by another dwf_jax version .workdir format 1, this version reads {FORMAT}"
    refused(workdir, WorkdirFormatMismatch, expected)


def test_a_stage_is_not_recomputed_under_results_of_its_earlier_version(workdir):
    shutil.rmtree(workdir / "canonical")
    stale = "flow, zoo_diversity, baselines, samples, eval_generated, diversity, flow_checkpoints"
    refused(workdir, CheckpointError, rf"canonical is missing while results computed from it remain in .* \({stale}\)")


def test_copied_stages_need_the_same_zoo_settings_and_never_land_half(workdir, tmp_path, monkeypatch):
    iris = load_dataset("iris")
    other = tiny_config()
    other.zoo.epochs = 11
    with pytest.raises(WorkdirConfigMismatch, match="zoo.epochs: 10 -> 11"):
        copy_stages(Workdir(workdir), pipeline.workdir_for(other, iris, tmp_path / "copy"), ("zoo", "canonical"))
    target = pipeline.workdir_for(tiny_config(), iris, tmp_path / "copy")
    assert not target.done("zoo")

    copy_file, copied = shutil.copyfile, []

    def interrupted(*args, **kwargs):  # the matrix file, then the second file of the stage dir fails
        copied.append(args)
        if len(copied) == 3:
            raise OSError("disk gone")
        return copy_file(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(shutil, "copyfile", interrupted)
        with pytest.raises(OSError, match="disk gone"):
            copy_stages(Workdir(workdir), target, ("zoo", "canonical"))
    assert not target.done("zoo")
    copy_stages(Workdir(workdir), target, ("zoo", "canonical"))
    assert snapshot(target.path / "zoo") == snapshot(workdir / "zoo")
    assert (target.path / "zoo.f32").read_bytes() == (workdir / "zoo.f32").read_bytes()
