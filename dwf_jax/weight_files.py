"""Zoos and nets as files other frameworks read: folders of safetensors or PyTorch `.pt` state_dicts.

safetensors is read and written without torch; `.pt` files need torch and are
loaded with `weights_only=True`, so a file cannot run code. A folder's files are
taken in natural order (`mlp_seed2.pt` before `mlp_seed10.pt`), as their seeds go.
"""

import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from dwf_jax import checkpoints

SUFFIXES = (".safetensors", ".pt", ".pth")
# Where checkpoints written by training loops keep the state_dict itself.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


class WeightFileError(ValueError):
    """A weight file or folder that cannot be read as a zoo."""


def _natural_key(path: pathlib.Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def zoo_files(folder: str | os.PathLike) -> list[pathlib.Path]:
    """The weight files of a zoo folder in natural order; a missing or empty folder is an error."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise WeightFileError(f"zoo.source={folder} is not a folder of .safetensors or .pt files")
    files = sorted((path for path in folder.iterdir() if path.suffix in SUFFIXES and path.is_file()), key=_natural_key)
    if not files:
        raise WeightFileError(f"zoo.source={folder} holds no {' / '.join(SUFFIXES)} files")
    return files


def checksums(files: list[pathlib.Path]) -> dict[str, str]:
    """File name -> blake3 digest: what an imported zoo's stage records in place of the training settings."""
    return {path.name: checkpoints.file_digest(path) for path in files}


def _torch_state_dict(path: pathlib.Path) -> Mapping[str, Any]:
    try:
        import torch
    except ImportError:
        raise WeightFileError(
            f"{path} is a PyTorch file: install torch (pip install torch) to read it, or convert it to safetensors"
        ) from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises its own types for corrupt, truncated or code-carrying files
        raise WeightFileError(f"cannot read {path} as a PyTorch state_dict: {error}") from None
    for key in STATE_DICT_KEYS:
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping):
        raise WeightFileError(f"{path} holds a {type(loaded).__name__}, not a state_dict")
    return {key: value.float().numpy() if value.is_floating_point() else value.numpy() for key, value in loaded.items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """One file's state_dict as numpy arrays."""
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except Exception as error:  # safetensors raises SafetensorError or OSError for a damaged header
            raise WeightFileError(f"cannot read {path} as safetensors: {error}") from None
    return dict(_torch_state_dict(path))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """A safetensors file's header metadata, values JSON-decoded (`format` stays the plain string torch tools read)."""
    with safe_open(path, "np") as opened:
        metadata = opened.metadata() or {}
    return {key: value if key == "format" else json.loads(value) for key, value in metadata.items()}


def _sort_header(path: pathlib.Path) -> None:
    """Rewrite a safetensors header in sorted key order, in place.

    safetensors keeps the header in a Rust HashMap, so the same nets would give files of
    different bytes (and checksums) on every write; sorted, compact JSON has the same length,
    so the tensor data and its offsets stay where they are.
    """
    with open(path, "r+b") as file:
        length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(length))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > length:
            raise WeightFileError(f"{path}: the sorted safetensors header is longer than the one written")
        file.seek(8)
        file.write(text.ljust(length))


def write_safetensors(path: pathlib.Path, state_dict: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    """One safetensors file, its metadata JSON-encoded under `format: pt`, header keys sorted so equal nets give
    equal bytes; written beside, then renamed into place."""
    header = {"format": "pt", **{key: json.dumps(value) for key, value in metadata.items()}}
    partial = path.with_name(path.name + ".partial")
    save_file({key: np.ascontiguousarray(value) for key, value in state_dict.items()}, partial, metadata=header)
    _sort_header(partial)
    os.replace(partial, path)
