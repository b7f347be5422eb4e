"""A workdir belongs to one config: the first run records it, later runs must match."""

import json
import pathlib

import ml_collections

from dwf_jax.checkpoints import save_json

CONFIG_FILE = "config.json"


class WorkdirConfigMismatch(ValueError):
    """The workdir holds results of a different config."""


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


def claim(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Record the config in a new workdir, or check that an existing one was made by the same config."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / CONFIG_FILE
    current = config_as_dict(config)
    if not path.exists():
        save_json(path, current)
        return
    recorded = _flatten(json.loads(path.read_text()))
    now = _flatten(current)
    differences = sorted(key for key in recorded.keys() | now.keys() if recorded.get(key) != now.get(key))
    if differences:
        details = ", ".join(f"{key}: {recorded.get(key)!r} -> {now.get(key)!r}" for key in differences[:5])
        raise WorkdirConfigMismatch(
            f"workdir {workdir} was made by a different config ({details}). "
            f"Use another --workdir, or delete {workdir} to start over."
        )
