"""Killed with SIGKILL at a random step and restarted, a run ends bitwise equal to an uninterrupted one."""

import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from background import job

from dwf_jax.checkpoints import restore_tree
from dwf_jax.workdir import MATRIX_FILES

ROOT = pathlib.Path(__file__).parents[1]
OVERRIDES = [
    "--config.zoo.num_models=8",
    "--config.zoo.epochs=30",
    "--config.zoo.checkpoint_every=1",
    "--config.flow.iterations=300",
    "--config.flow.hidden=32",
    "--config.flow.steps_per_dispatch=10",
    "--config.flow.checkpoint_every=30",
    "--config.sample.num_samples=4",
    "--config.sample.steps=10",
    "--config.baselines.noise_stds=()",
    "--config.baselines.mixtures=0",
]


def _command(workdir: pathlib.Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dwf_jax.main",
        "--config=configs/iris_mlp.py",
        f"--workdir={workdir}",
        "--noprogress",
        *OVERRIDES,
    ]


def _latest_step(folder: pathlib.Path) -> int:
    steps = [int(p.name) for p in folder.glob("*") if p.name.isdigit()] if folder.exists() else []
    return max(steps, default=-1)


def _run_until_killed(workdir: pathlib.Path, checkpoints: pathlib.Path, kill_at: int) -> None:
    """Start the run and SIGKILL it once `checkpoints` holds a step >= kill_at."""
    process = subprocess.Popen(_command(workdir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while process.poll() is None and _latest_step(checkpoints) < kill_at:
        time.sleep(0.01)
    assert process.poll() is None, f"run ended before step {kill_at}: {process.stderr.read().decode()[-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()


def _start(workdir: pathlib.Path) -> subprocess.Popen:
    """The run in the background, its stderr in a file beside `workdir` (no pipe to fill while nobody reads)."""
    with (workdir.parent / f"{workdir.name}.stderr").open("w") as stderr:
        return subprocess.Popen(_command(workdir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)


def _run_to_end(workdir: pathlib.Path, process: subprocess.Popen | None = None) -> None:
    """Run to the end (or wait for the end of `process`, a run started on `workdir`)."""
    process = process or _start(workdir)
    process.wait()
    assert process.returncode == 0, (workdir.parent / f"{workdir.name}.stderr").read_text()[-3000:]


def _assert_bitwise_equal(a: pathlib.Path, b: pathlib.Path, stage: str) -> None:
    jax.tree.map(np.testing.assert_array_equal, restore_tree(a / stage), restore_tree(b / stage))
    if stage in MATRIX_FILES:
        assert (a / MATRIX_FILES[stage]).read_bytes() == (b / MATRIX_FILES[stage]).read_bytes(), stage


@job("test_zoo_and_flow_resume_bitwise")
def resumed_runs(tmp_path: pathlib.Path) -> None:
    """An uninterrupted run, and beside it one killed in the zoo, killed in the flow and restarted to its end."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    zoo_kill, flow_kill = rng.randrange(3, 25), rng.randrange(2, 9) * 30
    (tmp_path / "kills.txt").write_text(
        f"seed {seed}: killing the zoo at epoch {zoo_kill} and the flow at step {flow_kill}"
    )

    uninterrupted = _start(tmp_path / "uninterrupted")  # beside the interrupted runs: its own workdir
    interrupted = tmp_path / "interrupted"
    try:
        _run_until_killed(interrupted, interrupted / "zoo_chunks" / "models_0000-0007", zoo_kill)
        assert not (interrupted / "zoo").exists()
        _run_until_killed(interrupted, interrupted / "flow_checkpoints", flow_kill)
        assert (interrupted / "zoo").exists() and not (interrupted / "flow").exists()
        _run_to_end(interrupted)
    finally:
        _run_to_end(tmp_path / "uninterrupted", uninterrupted)


def test_zoo_and_flow_resume_bitwise(background):
    """The runs are a background job (tests/background.py), started with the session."""
    root = background.folder("resumed_runs")
    try:
        background.result("resumed_runs")
    finally:
        print((root / "kills.txt").read_text())
    for stage in ("zoo", "canonical", "flow", "samples"):
        _assert_bitwise_equal(root / "uninterrupted", root / "interrupted", stage)
