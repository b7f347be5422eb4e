"""`dwf_jax.Generator` and `python -m dwf_jax.sample`: new networks from a finished workdir, read and never written.

Two tiny Iris runs: full weights (a copy of the session's finished run) and dual PCA (baselines off to save time),
made once for the module.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from tiny_runs import snapshot, tiny_config

import dwf_jax
from dwf_jax import keys, pipeline
from dwf_jax.checkpoints import CheckpointError, restore_tree
from dwf_jax.data import load_configured
from dwf_jax.generator import named_arrays
from dwf_jax.session import copy_stages
from dwf_jax.workdir import CONFIG_FILE, Workdir
from dwf_jax.zoo_store import num_stacked, unstack

ROOT = pathlib.Path(__file__).parents[1]


def _config(pca_method: str):
    config = tiny_config()  # pca.method none: the config of the session's finished run
    if pca_method != "none":
        config.pca.method = pca_method
        config.zoo.checkpoint_every, config.flow.checkpoint_every = config.zoo.epochs, config.flow.iterations
        config.baselines.update(noise_stds=(), mixtures=0, average_of=0, gaussian=0)
    return config


@pytest.fixture(scope="module")
def runs(finished, tmp_path_factory) -> dict[str, pathlib.Path]:
    """pca.method -> the workdir of a finished tiny run; the PCA run takes the other's zoo."""
    root = tmp_path_factory.mktemp("generator")
    shutil.copytree(finished, root / "none")  # a copy: taking its stages locks it
    dual = pipeline.workdir_for(_config("dual"), load_configured(_config("dual").data), root / "dual")
    copy_stages(Workdir(root / "none"), dual, ("zoo", "canonical"))
    pipeline.run(_config("dual"), root / "dual", progress=False)
    return {method: root / method for method in ("none", "dual")}


def _untouched(workdir: pathlib.Path) -> dict[str, tuple]:
    """Every entry's modification time and contents: a reader that rewrote a file, even with the same bytes (the
    lock's PID, for one), changed it."""
    digests = snapshot(workdir)
    entries = (str(path.relative_to(workdir)) for path in workdir.rglob("*"))
    return {name: ((workdir / name).stat().st_mtime_ns, digests.get(name)) for name in entries}


def _generated(workdir: pathlib.Path, dim: int) -> np.ndarray:
    """The run's samples stage: its (num_samples, D) generated.f32."""
    num_samples = _config("none").sample.num_samples
    return Workdir(workdir).open_matrix("samples", num_samples, dim, in_memory=True).as_array()


def _rows(generator: dwf_jax.Generator, nets) -> np.ndarray:
    return np.stack([generator.flattener.flatten(unstack(nets, index)) for index in range(num_stacked(nets))])


@pytest.mark.parametrize("method", ["none", "dual"])
def test_the_runs_key_and_count_give_its_samples_bitwise(runs, method):
    before = _untouched(runs[method])
    generator = dwf_jax.Generator.load(runs[method])
    config = generator.config
    assert (generator.pca_state is None) == (method == "none")
    nets = generator.sample(keys.stage_key(config.seed, "sample"), config.sample.num_samples)
    rows = _rows(generator, nets)
    assert rows.tobytes() == _generated(runs[method], generator.flattener.dim).tobytes()
    assert _untouched(runs[method]) == before  # read-only: no lock, no config, nothing


def test_any_count_gives_networks_of_the_template(runs):
    generator = dwf_jax.Generator.load(runs["dual"])
    nets = generator.sample(jax.random.key(5), 7)
    assert jax.tree.structure(nets) == jax.tree.structure(generator.template)
    shapes = jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), nets)
    assert shapes == jax.tree.map(lambda leaf: ((7, *leaf.shape), leaf.dtype), generator.template)
    assert len(np.unique(_rows(generator, nets), axis=0)) == 7


def test_evaluate_gives_the_runs_accuracies(runs):
    generator = dwf_jax.Generator.load(runs["none"])
    nets = generator.flattener.unflatten_rows(_generated(runs["none"], generator.flattener.dim))
    assert generator.recalibrate(nets) is nets  # no BatchNorm: nothing to re-estimate
    accuracy = generator.evaluate(nets)
    np.testing.assert_array_equal(accuracy, restore_tree(runs["none"] / "eval_generated")["accuracy"])
    report = json.loads((runs["none"] / "report.json").read_text())
    np.testing.assert_allclose(accuracy, report["generated"]["per_model"], atol=1e-4)


def _flip_a_byte(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _largest_file(folder: pathlib.Path) -> pathlib.Path:
    return max((path for path in folder.rglob("*") if path.is_file()), key=lambda path: path.stat().st_size)


DAMAGES = {
    "flow file changed": ("none", lambda work: _flip_a_byte(_largest_file(work / "flow"))),
    "flow stage missing": ("none", lambda work: shutil.rmtree(work / "flow")),
    "pca components changed": ("dual", lambda work: _flip_a_byte(work / "pca_components.f32")),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_workdir_is_refused_as_the_run_refuses_it(runs, tmp_path, damage):
    method, apply = DAMAGES[damage]
    work = tmp_path / "work"
    shutil.copytree(runs[method], work)
    apply(work)
    before = _untouched(work)
    with pytest.raises(CheckpointError) as refused:
        dwf_jax.Generator.load(work)
    assert _untouched(work) == before
    with pytest.raises(CheckpointError) as run_refused:
        pipeline.run(_config(method), work, progress=False)
    assert (type(refused.value), str(refused.value)) == (type(run_refused.value), str(run_refused.value))


def test_a_config_key_added_after_the_run_keeps_its_default(runs, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(runs["none"], work)
    recorded = json.loads((work / CONFIG_FILE).read_text())
    del recorded["zoo"]["scan_steps"], recorded["models_per_vmap"]
    (work / CONFIG_FILE).write_text(json.dumps(recorded))
    generator = dwf_jax.Generator.load(work, data_dir=tmp_path)
    assert generator.config.zoo.scan_steps is True and generator.config.models_per_vmap == 0
    assert generator.config.data.dir == str(tmp_path)


def test_the_command_line_writes_the_generators_networks(runs, tmp_path):
    out = tmp_path / "nets.npz"
    before = _untouched(runs["none"])
    command = [sys.executable, "-m", "dwf_jax.sample", f"--workdir={runs['none']}", "--num=4", "--seed=11"]
    command += [f"--out={out}", "--evaluate", "--noprogress"]
    environment = {**os.environ, "JAX_DEFAULT_MATMUL_PRECISION": "highest"}  # as conftest sets it here
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    generator = dwf_jax.Generator.load(runs["none"])
    nets = generator.sample(jax.random.key(11), 4)
    expected = named_arrays(nets)
    with np.load(out) as written:
        assert sorted(written.files) == sorted(expected) and "params/Dense_0/kernel" in expected
        for name, array in expected.items():
            assert written[name].shape == array.shape and written[name].tobytes() == array.tobytes(), name
    accuracy = generator.evaluate(nets)
    assert done.stdout.splitlines() == [
        f"wrote 4 networks to {out}",
        f"test accuracy (%): {accuracy.mean():.2f} ± {accuracy.std():.2f}",
    ]
    assert _untouched(runs["none"]) == before
