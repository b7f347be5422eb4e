"""A run writes and deletes only what it made, never through a link; a full disk is an error; values are bounded.

Each refusal is checked for its one-line message and for what it left alone:
the sha256 of every file outside dwf_jax's own names, inside the workdir and
beside it, before and after.
"""

import concurrent.futures
import contextlib
import errno
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tiny_runs import refused, snapshot, tiny_config

from dwf_jax import checkpoints, durable, pipeline, session, stages, zoo_store
from dwf_jax.checkpoints import MANIFEST_FILE, CheckpointError
from dwf_jax.data import load_dataset
from dwf_jax.durable import NotEnoughSpace
from dwf_jax.session import NotAWorkdir, WorkdirBusy, WorkdirLink, copy_stages, locked
from dwf_jax.workdir import FORMAT, StageDamaged, Workdir
from dwf_jax.zoo import ZooDiverged
from experiments import stage_readers

USER_FILES = {  # names a user may well keep where a run works, some shaped like what a run leaves behind
    "thesis.partial/chapter1.tex": "\\chapter{One}",
    "paper.tex": "\\documentclass{article}",
    ".notes.tmp": "remember",
    "results.orbax-checkpoint-tmp-1/keep.txt": "mine",
}


def plant(folder: pathlib.Path, files: dict[str, str]) -> dict[str, str]:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return snapshot(folder)


def user_files(folder: pathlib.Path) -> dict[str, str]:
    return {name: digest for name, digest in snapshot(folder).items() if name in USER_FILES}


def test_a_run_removes_its_own_leftovers_and_nothing_else(workdir):
    before = plant(workdir, USER_FILES)
    ours = [
        workdir / ".report.json.dwf-tmp-0a1b2c3d",
        workdir / "flow_checkpoints" / "90.dwf-partial",
        workdir / "samples.dwf-partial.orbax-checkpoint-tmp",
    ]
    ours[0].write_text("{")
    for folder in ours[1:]:
        folder.mkdir()
    pipeline.run(tiny_config(), workdir, progress=False)
    assert not any(path.exists() for path in ours)
    assert user_files(workdir) == {name: before[name] for name in USER_FILES}


def test_a_folder_that_is_not_a_workdir_is_refused(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    plant(home, USER_FILES)
    listed = r"\(.notes.tmp, paper.tex, results.orbax-checkpoint-tmp-1, ...\) and is not a dwf_jax workdir"
    refused(home, NotAWorkdir, rf"workdir {home} is not empty {listed} \(no workdir_format.json\)")


def test_an_empty_folder_and_a_conditioned_runs_zoo_folders_are_workdirs(tmp_path):
    (tmp_path / "iris").mkdir()
    checkpoints.save_json(tmp_path / "iris" / "workdir_format.json", {"workdir_format": FORMAT})
    session.refuse_foreign(Workdir(tmp_path))
    session.refuse_foreign(Workdir(tmp_path / "iris"))


def outside_target(tmp_path: pathlib.Path) -> pathlib.Path:
    """A folder outside the workdir that a link points into, with files shaped like a run's leftovers."""
    outside = tmp_path / "outside"
    outside.mkdir()
    plant(outside, {"precious.txt": "keep", "old.dwf-partial/file": "keep", ".x.dwf-tmp-1": "keep"})
    return outside


@pytest.mark.parametrize("name", [".lock", "flow_checkpoints", "samples", "zoo.f32", "flow_checkpoints/60"])
def test_a_link_where_a_run_writes_is_refused(workdir, tmp_path, name):
    outside = outside_target(tmp_path)
    before = snapshot(outside)
    target = outside / "precious.txt" if name in (".lock", "zoo.f32") else outside
    link = workdir / name
    if link.is_dir():
        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    link.symlink_to(target)
    refused(workdir, WorkdirLink, rf"{link} is a symbolic link: dwf_jax writes and deletes only inside its workdir")
    assert snapshot(outside) == before


def test_a_dangling_link_at_a_stage_name_is_one_error(workdir, tmp_path):
    shutil.rmtree(workdir / "samples")
    (workdir / "samples").symlink_to(tmp_path / "nowhere")
    refused(workdir, WorkdirLink, "samples is a symbolic link")


def test_the_lock_is_never_written_through_a_link(tmp_path):
    outside = outside_target(tmp_path)
    before = snapshot(outside)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / ".lock").symlink_to(outside / "precious.txt")
    with pytest.raises(WorkdirLink, match=r"\.lock is a symbolic link"), locked(tmp_path / "work"):
        pass
    assert snapshot(outside) == before


class FillingDisk:
    """`durable._write` on a disk with `room` bytes left (and at most `chunk` bytes per call, like a pipe)."""

    def __init__(self, room: int, chunk: int = 1 << 30):
        self.room, self.chunk = room, chunk

    def __call__(self, descriptor: int, data: memoryview) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        count = min(len(data), self.room, self.chunk)
        self.room -= count
        return os.write(descriptor, data[:count])


def test_a_full_disk_leaves_no_short_zoo_file(tmp_path, monkeypatch):
    rows = np.arange(100 * 131, dtype=np.float32).reshape(100, 131)
    monkeypatch.setattr(durable, "_write", FillingDisk(room=12_288))
    with pytest.raises(NotEnoughSpace, match=r"disk full: .*zoo.f32 could not be written \(No space left on device\)"):
        zoo_store.write_rows(tmp_path / "zoo.f32", iter(rows))
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_under_a_sparse_zoo_file_is_one_error(tmp_path, monkeypatch):
    """Filling a sparse file allocates pages: the disk can fill there too, outside any temporary name."""
    zoo = zoo_store.FileZoo.create(tmp_path / "zoo.f32", num_models=4, dim=1000)
    monkeypatch.setattr(durable, "_write", FillingDisk(room=6_000))
    with pytest.raises(NotEnoughSpace, match=r"disk full: .*zoo.f32 could not be written \(No space left on device\)"):
        zoo.write_columns(0, np.ones((4, 1000), np.float32))


def test_short_writes_are_continued(tmp_path, monkeypatch):
    rows = np.random.default_rng(0).normal(size=(7, 131)).astype(np.float32)
    monkeypatch.setattr(durable, "_write", FillingDisk(room=1 << 40, chunk=100))
    written = zoo_store.write_rows(tmp_path / "zoo.f32", iter(rows))
    np.testing.assert_array_equal(written.rows(0, 7), rows)


def test_a_full_disk_met_by_orbax_is_one_error(tmp_path, monkeypatch):
    def wrapped_full_disk(self):
        raise RuntimeError("write failed") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.ocp.StandardCheckpointer, "wait_until_finished", wrapped_full_disk)
    with pytest.raises(NotEnoughSpace, match="disk full: .*stage could not be written"):
        checkpoints.save_tree(tmp_path / "stage", {"a": np.ones(3)})
    assert not (tmp_path / "stage").exists()


def test_zoo_checkpoints_outlive_a_zoo_stage_that_could_not_be_sealed(tmp_path, monkeypatch):
    """The zoo stage is durable before its training checkpoints go: a failed seal keeps them to resume from."""
    workdir, save_json = tmp_path / "work", checkpoints.save_json

    def full_in_zoo_stage(path, payload):
        if path.parent.name == "zoo.dwf-partial":
            raise durable.disk_full(path)
        save_json(path, payload)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoints, "save_json", full_in_zoo_stage)
        with pytest.raises(NotEnoughSpace, match="disk full"):
            pipeline.run(tiny_config(), workdir, progress=False)
    assert not (workdir / "zoo").exists() and (workdir / "zoo_chunks" / "models_0000-0003" / "10").is_dir()

    synced, removed_after = [], []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), fsync(fd))[1])
    remove = Workdir.remove_zoo_chunks
    monkeypatch.setattr(Workdir, "remove_zoo_chunks", lambda self: (removed_after.append(list(synced)), remove(self)))
    pipeline.run(tiny_config(), workdir, progress=False)
    durable_then = removed_after[0]
    assert str(workdir / "zoo.f32") in durable_then
    assert any(path.startswith(str(workdir / "zoo.dwf-partial" / f".{MANIFEST_FILE}")) for path in durable_then)
    assert durable_then[-1] == str(workdir)  # the rename of zoo/ itself made durable
    assert not (workdir / "zoo_chunks").exists()


def test_finished_stages_are_verified_under_the_lock(workdir, monkeypatch):
    """A stage changed after the run was started but before it held the workdir is still refused."""

    @contextlib.contextmanager
    def changed_while_waiting(path):
        with locked(path) as descriptor:
            raw = bytearray((path / "generated.f32").read_bytes())
            raw[8] ^= 0xFF
            (path / "generated.f32").write_bytes(bytes(raw))
            yield descriptor

    monkeypatch.setattr(session, "locked", changed_while_waiting)
    with pytest.raises(StageDamaged, match="stage samples is damaged: .*generated.f32 does not match"):
        pipeline.run(tiny_config(), workdir, progress=False)


def test_stage_readers_hold_and_verify_the_workdir(workdir):
    config = tiny_config()
    with locked(workdir), pytest.raises(WorkdirBusy, match="in use by another run"):
        stage_readers.recalibrated_original_accuracy(config, workdir)
    raw = bytearray((workdir / "zoo.f32").read_bytes())
    raw[0] ^= 0xFF
    (workdir / "zoo.f32").write_bytes(bytes(raw))
    with pytest.raises(StageDamaged, match="stage zoo is damaged"):
        stage_readers.recalibrated_original_accuracy(config, workdir)


def test_a_copied_stage_never_lands_under_results_of_another(workdir, tmp_path):
    iris = load_dataset("iris")
    target = pipeline.workdir_for(tiny_config(), iris, tmp_path / "copy")
    copy_stages(Workdir(workdir), target, ("zoo", "canonical"))
    shutil.rmtree(target.path / "zoo")
    with pytest.raises(
        CheckpointError, match=r"stage zoo is missing in .* results computed from it remain \(canonical"
    ):
        copy_stages(Workdir(workdir), target, ("zoo",))
    with locked(workdir), pytest.raises(WorkdirBusy):
        copy_stages(Workdir(workdir), pipeline.workdir_for(tiny_config(), iris, tmp_path / "other"), ("zoo",))


@pytest.mark.parametrize(
    "section, field, value, message",
    [
        (None, "seed", 2**32, r"seed=4294967296 must be in \[0, 2\*\*32\)"),
        (None, "seed", 2**63, r"seed=9223372036854775808 must be in \[0, 2\*\*32\)"),
        (None, "seed", -1, r"seed=-1 must be in \[0, 2\*\*32\)"),
        (None, "num_devices", 2, r"num_devices=2 must be in \[0, 1\] \(the devices visible; 0 = all\)"),
        ("baselines", "noise_stds", (1e39,), r"baselines.noise_stds=\(1e\+39,\) must each be in \[0, 100.0\]"),
        ("zoo", "batch_size", 200, "zoo.batch_size=200 with zoo.drop_last leaves no step per epoch"),
    ],
)
def test_out_of_range_values_are_refused_before_any_write(tmp_path, section, field, value, message):
    config = tiny_config()
    config.zoo.drop_last = True
    (config if section is None else config[section])[field] = value
    refused(tmp_path / "work", ValueError, message, lambda: pipeline.run(config, tmp_path / "work", progress=False))
    assert not (tmp_path / "work").exists()


def test_bert_token_lengths_are_bounded(tmp_path):
    import configs.bert as bert_config

    config = bert_config.get_config()
    config.data.max_tokens = config.model.max_length = 200_000
    with pytest.raises(ValueError, match="model.max_length=200000 must be <= 4096"):
        pipeline.run(config, tmp_path / "work", progress=False)
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    "optimizer, learning_rate, diverged",
    [
        ("adam", 1e9, "in epoch 1: 4 of 4 models"),  # bounded steps: huge weights and losses, no NaN
        ("sgd", 2.0, r"in epoch [6-9]: \d of 4 models"),  # after five sound epochs were saved
    ],
)
def test_a_diverging_zoo_is_found_by_its_loss_and_never_blocks_a_lower_rate(
    tmp_path, optimizer, learning_rate, diverged
):
    config = tiny_config()
    config.zoo.update(optimizer=optimizer, learning_rate=learning_rate, checkpoint_every=1)
    workdir = tmp_path / "work"
    with pytest.raises(ZooDiverged, match=f"zoo training diverged {diverged} .* Lower zoo.learning_rate"):
        pipeline.run(config, workdir, progress=False)
    assert not (workdir / "zoo").exists() and not (workdir / "zoo_chunks").exists()
    config.zoo.update(learning_rate=1e-3, optimizer="adam")
    config.flow.update(iterations=30, checkpoint_every=30)
    assert pipeline.run(config, workdir, progress=False)["original"]["accuracy"]["mean"] > 40  # chance: 33.3


def test_the_guessing_loss_of_classes_and_of_scores():
    iris = load_dataset("iris")
    assert stages.guessing_loss(iris) == pytest.approx(math.log(3))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        checkpoints.save_json(tmp_path / "a.json", {"a": 1})
        zoo_store.write_rows(tmp_path / "zoo.f32", iter(np.ones((2, 3))))
        checkpoints.save_tree(tmp_path / "stage", {"a": np.ones(3)})
    finally:
        os.umask(previous)
    for path in (tmp_path / "a.json", tmp_path / "zoo.f32", tmp_path / "stage" / MANIFEST_FILE):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_manifests_of_sha256_still_verify_and_still_catch_damage(tmp_path):
    checkpoints.save_tree(tmp_path / "stage", {"a": np.arange(1000.0)})
    manifest = checkpoints.load_json(tmp_path / "stage" / MANIFEST_FILE)
    del manifest["digest"]
    manifest["files"] = {
        name: checkpoints.file_digest(tmp_path / "stage" / name, "sha256") for name in manifest["files"]
    }
    checkpoints.save_json(tmp_path / "stage" / MANIFEST_FILE, manifest)
    checkpoints.verify(tmp_path / "stage")
    files = [p for p in (tmp_path / "stage").rglob("*") if p.is_file() and p.name != MANIFEST_FILE]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        checkpoints.verify(tmp_path / "stage")


ROOT = pathlib.Path(__file__).parents[1]
IRIS = f"--config={ROOT / 'configs' / 'iris_mlp.py'}"
DISK_FULL_AT_START = (
    "import errno, os, sys\n"
    "from dwf_jax import cli, durable\n"
    "def full(descriptor, data):\n"
    "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
    "durable._write = full\n"
    "sys.argv = ['dwf_jax', *sys.argv[1:]]\n"
    "cli.run()\n"
)


DIVERGING_ZOO = ("--config.zoo.learning_rate=1e9", "--config.zoo.num_models=4", "--config.zoo.epochs=2")


def _workdir_with(tmp: pathlib.Path, link: str, target: pathlib.Path) -> list[str]:
    """A dwf_jax workdir (format only) with `link` pointing at `target`."""
    (tmp / "work").mkdir()
    checkpoints.save_json(tmp / "work" / "workdir_format.json", {"workdir_format": FORMAT})
    (tmp / "work" / link).symlink_to(target)
    return [IRIS, f"--workdir={tmp / 'work'}"]


# id: (prepare(tmp) -> argv after the interpreter, what the one line says); each run's cwd is its tmp folder.
CLI_CASES = {
    "foreign folder": (
        lambda tmp: [IRIS, f"--workdir={tmp / 'home'}"] if plant(tmp / "home", USER_FILES) else [],
        "is not empty (.notes.tmp, paper.tex, results.orbax-checkpoint-tmp-1, ...) and is not a dwf_jax workdir",
    ),
    "lock link": (
        lambda tmp: _workdir_with(tmp, ".lock", tmp / "outside" / "precious.txt"),
        ".lock is a symbolic link",
    ),
    "checkpoints link": (
        lambda tmp: _workdir_with(tmp, "flow_checkpoints", tmp / "outside"),
        "flow_checkpoints is a symbolic link",
    ),
    "dangling stage link": (lambda tmp: _workdir_with(tmp, "samples", tmp / "nowhere"), "samples is a symbolic link"),
    "config named ...py": (
        lambda tmp: [f"--config={shutil.copyfile(ROOT / 'configs' / 'iris_mlp.py', tmp / '...py')}"],
        "gives no folder name for the default workdir; pass --workdir",
    ),
    "seed of 64 bits": (
        lambda tmp: [IRIS, "--config.seed=9223372036854775808", f"--workdir={tmp / 'work'}"],
        "seed=9223372036854775808 must be in [0, 2**32)",
    ),
    "disk full at the start": (
        lambda tmp: ["-c", DISK_FULL_AT_START, IRIS, f"--workdir={tmp / 'work'}"],
        "disk full: ",
    ),
    "diverging zoo": (
        lambda tmp: [IRIS, f"--workdir={tmp / 'work'}", *DIVERGING_ZOO],
        "zoo training diverged in epoch 1: 4 of 4 models",
    ),
}
RUNS_AFTER_CHECKS = {"diverging zoo"}  # gets as far as training, so its workdir records its config


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Every case started in the background, one per CPU: {case: (run, tmp, snapshot of tmp before)}."""
    runs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for name, (prepare, _) in CLI_CASES.items():
            tmp = tmp_path_factory.mktemp("cli")
            outside_target(tmp)
            argv = prepare(tmp)
            argv = [sys.executable, *(argv if argv[0] == "-c" else ["-m", "dwf_jax.main", *argv])]
            before = snapshot(tmp)
            run = pool.submit(subprocess.run, argv, cwd=tmp, capture_output=True, text=True, timeout=300)
            runs[name] = run, tmp, before
        yield runs


@pytest.mark.parametrize("case", CLI_CASES)
def test_the_command_line_refuses_in_one_line_and_changes_nothing_of_the_users(cli_runs, case):
    run, tmp, before = cli_runs[case]
    result = run.result()
    lines = [line for line in result.stderr.splitlines() if line.startswith("dwf_jax")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and CLI_CASES[case][1] in lines[0], result.stderr
    after = snapshot(tmp)
    assert {name: after.get(name) for name in before} == before  # nothing that was there changed
    made = after.keys() - before.keys()
    assert not any(name.endswith(".dwf-partial") for name in made)
    assert case in RUNS_AFTER_CHECKS or not any(name.endswith("config.json") for name in made)
