"""A finished run's nets exported as safetensors in PyTorch layout: the same weights, what they are, new files only."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from tiny_runs import batchnorm_zoo, snapshot, tiny_config

from dwf_jax import export, torch_layout, weight_files
from dwf_jax.checkpoints import CheckpointError
from dwf_jax.models import build_model
from dwf_jax.workdir import MATRIX_FILES, REPORT_FILE, Workdir
from dwf_jax.zoo_store import Flattener


def rows(workdir, stage: str, count: int) -> np.ndarray:
    return np.fromfile(workdir / MATRIX_FILES[stage], np.float32).reshape(count, -1)


def imported_rows(files, template) -> np.ndarray:
    config, flattener = tiny_config(), Flattener(template)
    return np.stack(
        [
            flattener.flatten(torch_layout.from_state_dict(config.model, weight_files.read_state_dict(path), template))
            for path in files
        ]
    )


def contents(folder) -> dict[str, tuple]:
    """Every file's metadata and tensors (dtype, shape, bytes): safetensors writes the metadata in hash order, so
    the same content need not be the same file bytes."""
    return {
        path.name: (
            weight_files.read_metadata(path),
            {key: (v.dtype, v.shape, v.tobytes()) for key, v in weight_files.read_state_dict(path).items()},
        )
        for path in sorted(folder.iterdir())
    }


@pytest.fixture(scope="module")
def template():
    config = tiny_config()
    return jax.eval_shape(lambda: build_model(config.model).init(jax.random.key(0), np.zeros((1, 4), np.float32)))


def test_generated_nets_export_one_file_each_with_their_accuracy(finished, tmp_path, template):
    config = tiny_config()
    files = export.export(finished, tmp_path / "out")
    assert [path.name for path in files] == [f"generated_{i:05d}.safetensors" for i in range(config.sample.num_samples)]
    np.testing.assert_array_equal(imported_rows(files, template), rows(finished, "samples", len(files)))
    report = weight_files.read_metadata(files[2])
    per_model = json.loads((finished / REPORT_FILE).read_text())["generated"]["per_model"]
    assert report["accuracy"] == pytest.approx(per_model[2], abs=1e-4) and report["model_index"] == 2
    assert report["architecture"] == {"name": "mlp", "features": [16, 3], "init_scheme": "kaiming_zero_bias"}
    assert report["nets"] == "generated" and report["dataset"] == "iris" and report["format"] == "pt"


def test_a_stacked_file_holds_every_net_on_a_leading_axis(finished, tmp_path, template):
    [stacked] = export.export(finished, tmp_path / "stacked", "canonical", stacked=True)
    arrays = weight_files.read_state_dict(stacked)
    count = tiny_config().zoo.num_models
    assert arrays["fc1.weight"].shape == (count, 16, 4)
    config, flattener = tiny_config(), Flattener(template)
    canonical = [
        flattener.flatten(torch_layout.from_state_dict(config.model, {k: v[i] for k, v in arrays.items()}, template))
        for i in range(count)
    ]
    np.testing.assert_array_equal(np.stack(canonical), rows(finished, "canonical", count))
    assert len(weight_files.read_metadata(stacked)["accuracy"]) == count


def test_export_never_overwrites(finished, tmp_path):
    export.export(finished, tmp_path / "out")
    before = snapshot(tmp_path / "out")
    with pytest.raises(weight_files.WeightFileError, match="generated_00000.safetensors exists"):
        export.export(finished, tmp_path / "out")
    assert snapshot(tmp_path / "out") == before
    (tmp_path / "link").symlink_to(tmp_path / "out")
    with pytest.raises(weight_files.WeightFileError, match="is a link"):
        export.export(finished, tmp_path / "link", stacked=True)
    assert snapshot(tmp_path / "out") == before


def test_canonical_nets_export_from_a_run_without_its_flow(finished, workdir, tmp_path):
    """The canonical zoo is finished before the flow starts: a run stopped (or pruned) there exports it, the same
    tensors and metadata; its generated nets are refused with one error naming the stage that is missing."""
    export.export(finished, tmp_path / "finished", "canonical")
    for name in ["flow", *Workdir(workdir).derived_from("flow")]:
        for path in (workdir / name, workdir / MATRIX_FILES.get(name, name)):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    assert not (workdir / "flow").exists() and not (workdir / "samples").exists()
    export.export(workdir, tmp_path / "pruned", "canonical")
    assert contents(tmp_path / "pruned") == contents(tmp_path / "finished")
    with pytest.raises(CheckpointError, match=r"stage \S*samples is missing: the run in \S+ has not finished it"):
        export.export(workdir, tmp_path / "generated")
    assert not (tmp_path / "generated").exists()


def test_batchnorm_nets_carry_the_statistics_they_were_evaluated_with():
    flattener, store = batchnorm_zoo(3)
    first = flattener.unflatten(store.read(0))["batch_stats"]
    statistics = {"batch_stats": jax.tree.map(lambda leaf: np.stack([np.full_like(leaf, i) for i in range(3)]), first)}
    models = list(export._models(store.as_array(), flattener, statistics))
    np.testing.assert_array_equal(models[2]["batch_stats"]["bn1"]["var"], np.full(2, 2.0))
    jax.tree.map(np.testing.assert_array_equal, models[1]["params"], flattener.unflatten(store.read(1))["params"])


def test_the_command_line_exports_and_refuses_in_one_line(finished, tmp_path):
    command = [sys.executable, "-m", "dwf_jax.export", f"--workdir={finished}", f"--out={tmp_path / 'out'}"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    assert f"wrote {tiny_config().sample.num_samples} file(s)" in done.stdout
    failed = subprocess.run(command, capture_output=True, text=True)
    last_line = failed.stderr.strip().splitlines()[-1]
    assert failed.returncode == 1 and last_line.startswith("dwf_jax: error: ") and "exists" in last_line
    assert "Traceback" not in failed.stderr
