"""Persistence of stages and training checkpoints: atomic, checksummed, and clear about damaged files.

Every tree is written by orbax into `<path>.dwf-partial`, a manifest with the
digest of each of its files (and of files written beside it, like a stage's
matrix) is added, everything is fsync'ed, and the folder is renamed into place:
a folder that exists is complete and durable, and any byte changed since is
detected by `verify`. Digests are BLAKE3 (cryptographic, about 4x faster than
sha256 here: `benchmarks/verify_cost.py`); manifests of earlier versions name
sha256 and still verify.
"""

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import blake3
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from dwf_jax import durable
from dwf_jax.durable import NotEnoughSpace

PyTree = Any
MANIFEST_FILE = "dwf_manifest.json"
PROCESS_ARRAYS_FILE = "process_arrays.npz"
PARTIAL_SUFFIX = ".dwf-partial"  # a name only dwf_jax makes: what a run may delete as its own leftover
DIGEST = "blake3"
_SPACE_MARGIN_BYTES = 16 << 20
_DIGEST_BLOCK_BYTES = 16 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be read back."""


class CheckpointSettingsMismatch(CheckpointError):
    """A training checkpoint was saved by a run with other settings."""


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


def file_digest(path: pathlib.Path, algorithm: str = DIGEST, sync: bool = False) -> str:
    """Digest of a file, read in blocks so zoo-sized matrices never sit in memory; `sync` also fsyncs it."""
    digest = blake3.blake3() if algorithm == "blake3" else hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(_DIGEST_BLOCK_BYTES):
            digest.update(block)
        if sync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def _sealed_digests(folder: pathlib.Path) -> dict[str, str]:
    """Digests of every file under `folder`, each fsync'ed, and the folders' entries fsync'ed too."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            durable.fsync_path(path)
        elif path.name != MANIFEST_FILE:
            digests[str(path.relative_to(folder))] = file_digest(path, sync=True)
    return digests


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

    A crash at any moment leaves no folder at `path`, only a `.dwf-partial` one that the next save replaces.
    Leaves are saved as host arrays: a stage written on 8 devices restores on one (orbax records shardings).
    """
    with _ctrl_c_after():  # orbax's writer threads would wait forever for a save left half done
        checkpointer = _start_save(path, jax.tree.map(np.asarray, tree))
        _finish(checkpointer, path)
        _seal(path, beside, settings)


@contextlib.contextmanager
def _full_disk_named(path: pathlib.Path) -> Iterator[None]:
    """A full disk that orbax met (raised wrapped, from its writer threads) as one NotEnoughSpace naming `path`."""
    try:
        yield
    except Exception as error:
        cause = durable.full_disk_cause(error)
        if cause is None or isinstance(error, NotEnoughSpace):
            raise
        raise durable.disk_full(path, cause) from error


def _finish(checkpointer: ocp.StandardCheckpointer, path: pathlib.Path) -> None:
    """Wait for orbax's background write of `path`."""
    with _full_disk_named(path):
        checkpointer.wait_until_finished()


def _checkpointer() -> ocp.StandardCheckpointer:
    """An orbax checkpointer of this process alone: with several processes (`dwf_jax.processes`) each
    writes its own files, where orbax would otherwise wait for all of them at every save."""
    process = {jax.process_index()}
    return ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=min(process), active_processes=process)
    )


class _Written:
    """A save that finished before `_start_save` returned."""

    def wait_until_finished(self) -> None:
        pass


def _start_save(path: pathlib.Path, tree: PyTree, per_process: bool = False) -> ocp.StandardCheckpointer | _Written:
    """Start orbax writing `tree` into `<path>.dwf-partial`; it goes on in the background until waited for.

    Callers hold Ctrl-C meanwhile (`_ctrl_c_after`): orbax's background writes fail noisily when interrupted.
    `per_process`: the state of this process alone, in one of several (`dwf_jax.processes`), as an .npz file:
    orbax writes numpy leaves on the first process only and refuses arrays that live on one process.
    """
    check_free_space(path.parent, tree)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    if per_process:
        partial.mkdir()
        with (
            _full_disk_named(path),
            durable.atomic_path(partial / PROCESS_ARRAYS_FILE) as temporary,
            open(temporary, "wb") as file,
        ):
            np.savez(file, *jax.tree.leaves(tree))
        return _Written()
    checkpointer = _checkpointer()
    with _full_disk_named(path):
        checkpointer.save(partial.absolute(), tree)
    return checkpointer


def _seal(path: pathlib.Path, beside: Mapping[str, pathlib.Path] | None, settings: Mapping[str, Any] | None) -> None:
    """Add the manifest to the finished `<path>.dwf-partial`, fsync it all and rename it to `path`.

    Files `beside` were sealed by their writers; fsync'ing them again is cheap, and the stage vouches for them.
    """
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    manifest = {
        "digest": DIGEST,
        "files": _sealed_digests(partial),
        "beside": {name: file_digest(file, sync=True) for name, file in (beside or {}).items()},
        "settings": dict(settings or {}),
    }
    save_json(partial / MANIFEST_FILE, manifest)
    durable.fsync_path(partial)
    if path.exists():
        shutil.rmtree(path)
    durable.place(partial, path)


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
    algorithm = manifest.get("digest", "sha256")  # manifests before BLAKE3 name none
    expected = [(path / name, digest) for name, digest in manifest["files"].items()]
    beside = beside or {}
    for name, digest in manifest["beside"].items():
        if name not in beside:
            raise CheckpointError(f"{path}: its manifest names {name}, which this reader does not know")
        expected.append((beside[name], digest))
    for file, digest in expected:
        if not file.is_file():
            raise CheckpointError(f"{file} is missing")
        if file_digest(file, algorithm) != digest:
            raise CheckpointError(f"{file} does not match the checksum recorded when it was written (damaged)")
    return manifest


def restore_tree(path: pathlib.Path, target: PyTree | None = None) -> PyTree:
    """Read a tree saved by `save_tree` (numpy leaves, or the types of `target`), naming the path if unreadable."""
    try:
        if (path / PROCESS_ARRAYS_FILE).is_file():
            with np.load(path / PROCESS_ARRAYS_FILE) as arrays:
                leaves = [arrays[f"arr_{index}"] for index in range(len(arrays.files))]
            return leaves if target is None else jax.tree.unflatten(jax.tree.structure(target), leaves)
        return _checkpointer().restore(path.absolute(), target)
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
        per_process: bool = False,
    ):
        self.directory, self.settings, self.keep, self.per_process = directory, dict(settings), keep, per_process
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
            self._pending = (
                step,
                _start_save(self.directory / str(step), jax.tree.map(np.array, state), self.per_process),
            )

    def wait(self) -> None:
        """Block until the last save is on disk and sealed, then drop states beyond the newest `keep`."""
        if self._pending is None:
            return
        with _ctrl_c_after():  # a save left half done would keep orbax's writer threads (and the process) waiting
            (step, checkpointer), self._pending = self._pending, None
            _finish(checkpointer, self.directory / str(step))
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

    def restore(self, step: int, target: PyTree) -> PyTree:
        """The state saved at `step`, checked against its checksums and this run's settings."""
        recorded = verify(self.directory / str(step)).get("settings", {})
        self._check_settings(recorded)
        return restore_tree(self.directory / str(step), target)

    def restore_latest(self, target: PyTree) -> tuple[int, PyTree] | None:
        """(step, state) of the newest state that verifies and restores; None if there is none yet."""
        self.wait()
        steps = self.steps()
        for step in reversed(steps):
            try:
                state = self.restore(step, target)
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


def save_json(path: pathlib.Path, payload: dict) -> None:
    """Write JSON whole and durably, so readers never see half a file; standard JSON (NaN or Infinity refused)."""
    text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False)
    durable.write_bytes(path, (text + "\n").encode())


def load_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())
