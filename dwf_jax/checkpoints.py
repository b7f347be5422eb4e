"""Persistence of stages and training checkpoints: atomic, checksummed, and clear about damaged files.

Every tree is written by orbax into `<path>.partial`, a manifest with the
sha256 of each of its files (and of files written beside it, like a stage's
matrix) is added, and the folder is renamed into place: a folder that exists
is complete, and any byte changed since is detected by `verify`.
"""

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

PyTree = Any
MANIFEST_FILE = "dwf_manifest.json"
PARTIAL_SUFFIX = ".partial"
_SPACE_MARGIN_BYTES = 16 << 20
_DIGEST_BLOCK_BYTES = 16 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be read back."""


class CheckpointSettingsMismatch(CheckpointError):
    """A training checkpoint was saved by a run with other settings."""


class NotEnoughSpace(OSError):
    """The disk cannot hold the next stage."""


def check_free_space(directory: pathlib.Path, tree: PyTree) -> None:
    """Refuse to start writing a tree the disk cannot hold, so no stage is left half written."""
    needed = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree)) + _SPACE_MARGIN_BYTES
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise NotEnoughSpace(
            f"not enough free space in {directory}: the next stage needs about {needed >> 20} MiB, "
            f"{free >> 20} MiB are free. "
            "Free some space and rerun the same command: finished stages are kept."
        )


def file_digest(path: pathlib.Path) -> str:
    """sha256 of a file, read in blocks so zoo-sized matrices never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_DIGEST_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _digests(folder: pathlib.Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): file_digest(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }


@contextlib.contextmanager
def _ctrl_c_after() -> Iterator[None]:
    """Hold a Ctrl-C until the block ends: orbax's background writes fail noisily when interrupted mid-save."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(*received[0])
        elif received and previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def save_tree(
    path: pathlib.Path,
    tree: PyTree,
    beside: Mapping[str, pathlib.Path] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> None:
    """Write `tree` to the folder `path` with a manifest of checksums (also of the files `beside`) and `settings`.

    A crash at any moment leaves no folder at `path`, only a `.partial` one that the next save replaces.
    """
    with _ctrl_c_after():  # orbax's writer threads would wait forever for a save left half done
        checkpointer = _start_save(path, tree)
        checkpointer.wait_until_finished()
        _seal(path, beside, settings)


def _start_save(path: pathlib.Path, tree: PyTree) -> ocp.StandardCheckpointer:
    """Start orbax writing `tree` into `<path>.partial`; it goes on in the background until waited for.

    Callers hold Ctrl-C meanwhile (`_ctrl_c_after`): orbax's background writes fail noisily when interrupted.
    """
    check_free_space(path.parent, tree)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(partial.absolute(), tree)
    return checkpointer


def _seal(path: pathlib.Path, beside: Mapping[str, pathlib.Path] | None, settings: Mapping[str, Any] | None) -> None:
    """Add the manifest to the finished `<path>.partial` and rename it to `path`."""
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    manifest = {
        "files": _digests(partial),
        "beside": {name: file_digest(file) for name, file in (beside or {}).items()},
        "settings": dict(settings or {}),
    }
    save_json(partial / MANIFEST_FILE, manifest)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(partial, path)


def read_manifest(path: pathlib.Path) -> dict:
    """The manifest `save_tree` wrote into `path`, or a CheckpointError naming the folder."""
    try:
        return load_json(path / MANIFEST_FILE)
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} has no readable {MANIFEST_FILE} ({type(error).__name__}): "
            "it was not written completely by this dwf_jax"
        ) from error


def verify(path: pathlib.Path, beside: Mapping[str, pathlib.Path] | None = None) -> dict:
    """Check every file of `path` and the files `beside` against the manifest; return the manifest.

    Raises CheckpointError naming the first file that is missing or changed.
    """
    manifest = read_manifest(path)
    expected = [(path / name, digest) for name, digest in manifest["files"].items()]
    beside = beside or {}
    for name, digest in manifest["beside"].items():
        if name not in beside:
            raise CheckpointError(f"{path}: its manifest names {name}, which this reader does not know")
        expected.append((beside[name], digest))
    for file, digest in expected:
        if not file.is_file():
            raise CheckpointError(f"{file} is missing")
        if file_digest(file) != digest:
            raise CheckpointError(f"{file} does not match the checksum recorded when it was written (damaged)")
    return manifest


def restore_tree(path: pathlib.Path, target: PyTree | None = None) -> PyTree:
    """Read a tree saved by `save_tree` (numpy leaves, or the types of `target`), naming the path if unreadable."""
    try:
        return ocp.StandardCheckpointer().restore(path.absolute(), target)
    except Exception as error:  # orbax raises many types for damaged files; report them as one.
        raise CheckpointError(
            f"{path} is corrupt, truncated or of another architecture ({type(error).__name__}: {error})"
        ) from error


class TrainingCheckpoints:
    """Periodic training states in `<directory>/<step>/`, the newest `keep` kept, each with its run's settings.

    A damaged newest state is skipped for the one before it, so a file broken by
    a crash or a bad disk costs a few steps, not the whole run. A state saved
    under other settings is never resumed (`differences(recorded, settings)`
    lists what changed, as `dwf_jax.settings.differences` does for stages).
    orbax writes each save in the background while training goes on; the next
    save or `wait` seals it.
    """

    def __init__(
        self,
        directory: pathlib.Path,
        settings: Mapping[str, Any],
        differences: Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]],
        keep: int = 2,
    ):
        self.directory, self.settings, self.keep = directory, dict(settings), keep
        self._differences = differences
        self._pending: tuple[int, ocp.StandardCheckpointer] | None = None

    def steps(self) -> list[int]:
        found = self.directory.glob("*") if self.directory.is_dir() else ()
        return sorted(int(path.name) for path in found if path.name.isdigit())

    def save(self, step: int, state: PyTree) -> None:
        """Start writing a host copy of `state`, so training may overwrite (or donate) its arrays meanwhile."""
        self.wait()
        self.directory.mkdir(parents=True, exist_ok=True)
        with _ctrl_c_after():  # a Ctrl-C is raised once the save is pending, so that `wait` seals it
            self._pending = step, _start_save(self.directory / str(step), jax.tree.map(np.array, state))

    def wait(self) -> None:
        """Block until the last save is on disk and sealed, then drop states beyond the newest `keep`."""
        if self._pending is None:
            return
        with _ctrl_c_after():  # a save left half done would keep orbax's writer threads (and the process) waiting
            (step, checkpointer), self._pending = self._pending, None
            checkpointer.wait_until_finished()
            _seal(self.directory / str(step), None, self.settings)
            for old in self.steps()[: -self.keep]:
                shutil.rmtree(self.directory / str(old))

    def __enter__(self) -> "TrainingCheckpoints":
        return self

    def __exit__(self, *exception: object) -> None:
        """Seal the last save also when training stops early (Ctrl-C, an error): orbax's writer threads
        would otherwise wait for it forever and keep the process from exiting. A second Ctrl-C that
        arrives before the wait starts is raised once the save is sealed."""
        interrupted = False
        while self._pending is not None:
            try:
                self.wait()
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt

    def restore_latest(self, target: PyTree) -> tuple[int, PyTree] | None:
        """(step, state) of the newest state that verifies and restores; None if there is none yet."""
        self.wait()
        steps = self.steps()
        for step in reversed(steps):
            try:
                recorded = verify(self.directory / str(step)).get("settings", {})
                self._check_settings(recorded)
                state = restore_tree(self.directory / str(step), target)
            except CheckpointSettingsMismatch:
                raise
            except CheckpointError as error:
                logging.warning("training checkpoint skipped, trying the one before: %s", error)
                continue
            logging.info("resuming from training checkpoint %s", self.directory / str(step))
            return step, state
        if steps:
            raise CheckpointError(
                f"no training checkpoint in {self.directory} can be restored (steps {steps} are damaged); "
                f"delete {self.directory} to train from the start"
            )
        return None

    def _check_settings(self, recorded: Mapping[str, Any]) -> None:
        changed = self._differences(recorded, self.settings)
        if changed:
            raise CheckpointSettingsMismatch(
                f"training checkpoints in {self.directory} were made with other settings ({', '.join(changed[:5])}); "
                f"delete {self.directory} to train from the start with these settings"
            )


@contextlib.contextmanager
def atomic_path(path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A temporary name beside `path` to write to; renamed onto `path` only when the write completes."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = pathlib.Path(temporary)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_json(path: pathlib.Path, payload: dict) -> None:
    """Write JSON atomically so readers never see half a file."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def load_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())
