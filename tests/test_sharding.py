"""The model axis split over 8 devices, or over 2 processes, gives the one-device results.

Not bitwise in general: XLA:CPU picks its matrix kernels by shape, so 5 models
vmapped on one device and 1 per device round differently (measured: at most
1.2e-7 on these weights). Bitwise where the computation is the same: 2
processes of 1 device each against one process of 2 devices.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from background import job
from sharded_runs import NUM_MODELS, mlp_config, pipeline_config

import configs.iris_mlp as iris_config
from dwf_jax import pipeline
from dwf_jax.checkpoints import restore_tree
from dwf_jax.config import config_as_dict, flatten
from dwf_jax.sharding import model_mesh, pad_models, padded_count
from dwf_jax.workdir import MATRIX_FILES

TESTS = pathlib.Path(__file__).parent
STAGES = ("zoo", "canonical", "flow", "samples", "eval_generated", "diversity", "baselines")
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def _run_worker(args: list[str], devices: int, cwd: pathlib.Path, wait: bool = True):
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]),
        "DWF_CACHE_DIR": str(cwd / "cache"),
    }
    command = [sys.executable, str(TESTS / "sharded_runs.py"), *args]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return _finished(process) if wait else process


def _finished(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]


@job(
    "test_every_stage_on_8_devices_equals_one_device",
    "test_the_reports_agree",
    "test_batch_norm_recalibration_and_evaluation_on_8_devices",
    "test_a_workdir_of_8_devices_resumes_on_one",
)
def on_8_devices(root: pathlib.Path) -> None:
    _run_worker(["devices", str(root)], devices=8, cwd=root)


@pytest.fixture(scope="module")
def eight_devices(background):
    """The 8-device runs, a background job (tests/background.py) started with the session."""
    background.result("on_8_devices")
    root = background.folder("on_8_devices")
    return root, json.loads((root / "reports.json").read_text())


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_on_8_devices_equals_one_device(eight_devices, stage):
    root, _ = eight_devices
    one, eight = (restore_tree(root / f"mlp_{devices}" / stage) for devices in (1, 8))
    assert jax.tree.structure(one) == jax.tree.structure(eight)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, **TOLERANCE), one, eight)
    if stage in MATRIX_FILES:
        one, eight = (np.fromfile(root / f"mlp_{devices}" / MATRIX_FILES[stage], np.float32) for devices in (1, 8))
        np.testing.assert_allclose(eight, one, **TOLERANCE)


def test_the_reports_agree(eight_devices):
    _, reports = eight_devices
    one, eight = reports["mlp_1"], reports["mlp_8"]
    np.testing.assert_allclose(eight["original"]["per_model"], one["original"]["per_model"], **TOLERANCE)
    np.testing.assert_allclose(eight["generated"]["per_model"], one["generated"]["per_model"], **TOLERANCE)
    assert len(eight["generated"]["per_model"]) == 5


def test_batch_norm_recalibration_and_evaluation_on_8_devices(eight_devices):
    root, _ = eight_devices
    one, eight = (np.load(root / f"bn_{devices}.npz") for devices in (1, 8))
    assert sorted(one.files) == sorted(eight.files) and len(one.files) > 2
    for name in one.files:
        np.testing.assert_allclose(eight[name], one[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_a_workdir_of_8_devices_resumes_on_one(eight_devices, tmp_path):
    """Stages are saved as host arrays: another device topology reads them, recomputing nothing."""
    root, reports = eight_devices
    stamps = {path: path.stat().st_mtime_ns for path in (root / "mlp_8").iterdir()}
    report = pipeline.run(mlp_config(), root / "mlp_8", progress=False)
    assert report["generated"]["per_model"] == reports["mlp_8"]["generated"]["per_model"]
    assert {path: stamps[path] for path in stamps if path.name in STAGES} == {
        path: path.stat().st_mtime_ns for path in stamps if path.name in STAGES
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _two_processes(mode: str, root: pathlib.Path) -> None:
    port = _free_port()
    workers = [_run_worker([mode, str(root), str(i), "2", str(port)], 1, root, wait=False) for i in range(2)]
    for worker in workers:
        _finished(worker)


@job("test_each_process_saves_and_resumes_its_own_models")
def process_shares(root: pathlib.Path) -> None:
    _two_processes("resume", root)
    _run_worker(["zoo", str(root / "straight.npz"), "0", "1", "0"], devices=2, cwd=root)


def test_each_process_saves_and_resumes_its_own_models(background):
    """Two processes joined by jax.distributed train zoos of 5 (padded) and 4 models, each process saving only
    its rows of the padded model axis; a resume continues from them (step 2 is not written again) to the zoo
    of an uninterrupted run in one process of two devices, bitwise. (The runs: a background job.)"""
    background.result("process_shares")
    tmp_path = background.folder("process_shares")
    shares = [tmp_path / "saves" / f"process_{i}_of_2" / f"models_{NUM_MODELS}" for i in range(2)]
    first, second = (restore_tree(share / "2") for share in shares)
    assert [leaf.shape[0] for leaf in first + second] == [3] * (len(first) + len(second))  # 5 models padded to 6
    np.testing.assert_array_equal(second[0][2], second[0][1])  # the padding copies model 4
    straight = np.load(tmp_path / "straight.npz")
    for process in range(2):
        resumed = np.load(tmp_path / f"resumed_{process}.npz")
        for name in resumed.files:
            if name.startswith("step_2_inode"):
                assert resumed[name][0] == resumed[name][1]  # resumed, not trained again
            else:
                np.testing.assert_array_equal(resumed[name], straight[name])


def _without_timings(reports: list[dict]) -> list[dict]:
    return [{key: value for key, value in report.items() if key != "timings"} for report in reports]


def _cli_flags(config) -> list[str]:
    """`--config.KEY=VALUE` for every key where `config` differs from configs/iris_mlp.py."""
    given, shipped = (flatten(config_as_dict(c)) for c in (config, iris_config.get_config()))
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in given.items()}
    return [f"--config.{key}={value}" for key, value in values.items() if given[key] != shipped[key]]


@job("test_two_processes_run_the_command_line_pipeline_in_one_workdir")
def command_line_in_two_processes(tmp_path: pathlib.Path) -> list[tuple[list[int], list[str], dict]]:
    """The reference (tmp_path/reports_0.json), then twice the command in two processes: their return codes,
    outputs and report."""
    _run_worker(["pipeline", str(tmp_path), "0", "1", "0"], devices=2, cwd=tmp_path)
    workdir, rounds = tmp_path / "cli", []
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "DWF_CACHE_DIR": str(tmp_path)}
    for _ in range(2):
        port = _free_port()
        command = [sys.executable, "-m", "dwf_jax.main", "--config=configs/iris_mlp.py", f"--workdir={workdir}"]
        command += ["--noprogress", f"--coordinator_address=localhost:{port}", "--num_processes=2"]
        command += _cli_flags(pipeline_config())
        workers = [
            subprocess.Popen(
                [*command, f"--process_id={i}"],
                cwd=TESTS.parent,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in range(2)
        ]
        outputs = [worker.communicate(timeout=300)[0] for worker in workers]
        returncodes = [worker.returncode for worker in workers]
        report = json.loads((workdir / "report.json").read_text()) if returncodes == [0, 0] else None
        rounds.append((returncodes, outputs, report))
        if report is None:
            break
    return rounds


def test_two_processes_run_the_command_line_pipeline_in_one_workdir(background):
    """`python -m dwf_jax.main --coordinator_address --num_processes --process_id` in two processes of one
    device each, one workdir (the first writes): the report equals one process of two devices, bitwise, and
    the same command again loads every stage to the same report. (The runs: a background job.)"""
    rounds = background.result("command_line_in_two_processes")
    tmp_path = background.folder("command_line_in_two_processes")
    expected = _without_timings(json.loads((tmp_path / "reports_0.json").read_text()))[0]
    reports = []
    for returncodes, outputs, report in rounds:
        assert returncodes == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
        assert "report:" in outputs[0] and "report:" not in outputs[1]  # the writer prints the summary
        reports.append(_without_timings([report])[0])
    assert reports == [expected, expected]
    assert not (tmp_path / "cli" / "zoo_chunks").exists()


def test_padding_repeats_the_last_model_and_fits_the_mesh():
    tree = {"w": np.arange(10.0).reshape(5, 2)}
    padded = pad_models(tree, padded_count(5, 8))
    assert padded["w"].shape == (8, 2) and np.all(np.asarray(padded["w"][5:]) == tree["w"][-1])
    assert padded_count(16, 8) == 16 and padded_count(1, 8) == 8


def test_more_devices_than_visible_is_one_error():
    with pytest.raises(ValueError, match=r"num_devices=3, but 1 devices are visible"):
        model_mesh(3)
