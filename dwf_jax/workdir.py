"""A workdir belongs to one config: the first run records it, later runs must match."""

import contextlib
import fcntl
import json
import os
import pathlib
from typing import Iterator

import ml_collections

from dwf_jax.checkpoints import save_json
from dwf_jax.config import base_config

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"


class WorkdirConfigMismatch(ValueError):
    """The workdir holds results of a different config."""


class WorkdirBusy(RuntimeError):
    """Another run holds the workdir."""


class WorkdirNotWritable(PermissionError):
    """The workdir cannot be created or written."""


@contextlib.contextmanager
def locked(workdir: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive lock on the workdir for the whole run.

    flock is released by the kernel when the process dies, even by SIGKILL, so a
    killed run never leaves a stale lock behind.
    """
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        handle = open(workdir / LOCK_FILE, "a+")
    except OSError as error:
        raise WorkdirNotWritable(f"workdir {workdir} is not writable ({error.strerror}); choose another --workdir") from error
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise WorkdirBusy(
                f"workdir {workdir} is in use by another run (pid {handle.read().strip() or 'unknown'}); "
                "wait for it to finish or use another --workdir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_as_dict(config: ml_collections.ConfigDict) -> dict:
    """JSON-normalised config (tuples become lists), so recorded and current configs compare equal."""
    return json.loads(config.to_json())


def record_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Record the config that owns a new workdir."""
    if not (workdir / CONFIG_FILE).exists():
        save_json(workdir / CONFIG_FILE, config_as_dict(config))


def check_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Refuse, without writing anything, a workdir that an other config made.

    A key the recorded config lacks counts as its base_config default: workdirs made
    before that key existed stay usable while the new key keeps its default.
    """
    path = workdir / CONFIG_FILE
    if not path.exists():
        return
    defaults = _flatten(config_as_dict(base_config()))
    recorded = _flatten(json.loads(path.read_text()))
    now = _flatten(config_as_dict(config))
    differences = sorted(key for key in recorded.keys() | now.keys() if recorded.get(key, defaults.get(key)) != now.get(key))
    if differences:
        details = ", ".join(f"{key}: {recorded.get(key)!r} -> {now.get(key)!r}" for key in differences[:5])
        raise WorkdirConfigMismatch(
            f"workdir {workdir} was made by a different config ({details}). "
            f"Use another --workdir, or delete {workdir} to start over."
        )
