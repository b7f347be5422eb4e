"""Orbax persistence of pipeline stages: atomic writes, clear errors on bad files."""

import json
import pathlib
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


_SPACE_MARGIN_BYTES = 16 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be read back."""


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


def save_tree(path: pathlib.Path, tree: PyTree) -> None:
    """Write `tree` to `path`; orbax writes a temporary folder and renames it, so a crash leaves no half stage."""
    check_free_space(path.parent, tree)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path.absolute(), tree)
    checkpointer.wait_until_finished()


def restore_tree(path: pathlib.Path, target: PyTree | None = None) -> PyTree:
    """Read a tree saved by `save_tree` (numpy leaves), naming the path when it is unreadable."""
    try:
        return ocp.StandardCheckpointer().restore(path.absolute(), target)
    except Exception as error:  # orbax raises many types for damaged files; report them as one.
        raise CheckpointError(
            f"checkpoint {path} is corrupt, truncated or of another architecture ({type(error).__name__}: {error}). "
            f"Delete {path} to recompute that stage."
        ) from error


def manager(path: pathlib.Path, keep: int = 2) -> ocp.CheckpointManager:
    """Periodic training checkpoints under `path`, the last `keep` kept; each save is atomic."""
    return ocp.CheckpointManager(path.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=keep))


def save_json(path: pathlib.Path, payload: dict) -> None:
    """Write JSON atomically (write then rename) so readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def load_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())
