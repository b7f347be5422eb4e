"""Orbax persistence of pipeline stages: atomic writes, clear errors on bad files."""

import json
import pathlib
from typing import Any

import orbax.checkpoint as ocp

PyTree = Any


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be read back."""


def save_tree(path: pathlib.Path, tree: PyTree) -> None:
    """Write `tree` to `path`; orbax writes a temporary folder and renames it, so a crash leaves no half stage."""
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


def save_json(path: pathlib.Path, payload: dict) -> None:
    """Write JSON atomically (write then rename) so readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def load_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())
