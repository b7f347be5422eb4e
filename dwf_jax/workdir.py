"""A run's workdir: its layout, its finished stages, and the config that owns it.

Every path a run writes is named here. A stage is an orbax dir (small arrays)
plus, for zoo-sized results, one raw float32 matrix beside it (`MATRIX_FILES`),
written and renamed into place before the stage dir: "stage dir exists" means
"done". The first run records its config; later runs must match it.
"""

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import ml_collections
from absl import logging

from dwf_jax import checkpoints
from dwf_jax.checkpoints import CheckpointError
from dwf_jax.config import base_config
from dwf_jax.zoo_store import ZooStore, open_file

PyTree = Any
MATRIX_FILES = {"zoo": "zoo.f32", "canonical": "canonical.f32", "pca": "pca_components.f32", "samples": "generated.f32"}
ZOO_CHUNKS = "zoo_chunks"
FLOW_CHECKPOINTS = "flow_checkpoints"
CONFIG_FILE = "config.json"
REPORT_FILE = "report.json"
FIGURE_FILE = "accuracy.png"
TIMINGS_FILE = "timings.json"
LOCK_FILE = ".lock"
# The config keys a zoo depends on, for reusing a zoo under another config (a larger zoo, another flow).
FORMAT_FILE = "workdir_format.json"
# Version of the stage layout and random streams; workdirs of another version are refused.
# 2: matrix files for every zoo-sized stage, stage keys disjoint from model keys.
FORMAT = 2
# What each stage is computed from: recomputing a stage makes everything computed from it stale.
UPSTREAM = {
    "canonical": ("zoo",),
    "pca": ("canonical",),
    "flow": ("canonical", "pca"),
    "samples": ("flow",),
    "eval_generated": ("samples",),
    "bn_stats": ("samples",),
    "eval_recalibrated": ("bn_stats",),
}
# The config keys the zoo and canonical zoo depend on, and keys that change how a stage runs, never its result.
ZOO_KEYS = ("seed", "data", "model", "zoo")
CANONICAL_KEYS = (*ZOO_KEYS, "canonical")
RESULT_FREE_KEYS = ("zoo.models_per_chunk", "zoo.checkpoint_every", "zoo.scan_steps", "zoo.on_disk")


class WorkdirConfigMismatch(ValueError):
    """The workdir holds results of a different config."""


class WorkdirFormatMismatch(ValueError):
    """The workdir was made by a dwf_jax whose stages this version cannot use."""


class WorkdirBusy(RuntimeError):
    """Another run holds the workdir."""


class WorkdirNotWritable(PermissionError):
    """The workdir cannot be created or written."""


class Workdir:
    """The paths of one run and its finished stages; a stage runs once, later runs load it."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self.report = self.path / REPORT_FILE
        self.figure = self.path / FIGURE_FILE
        self.flow_checkpoints = self.path / FLOW_CHECKPOINTS
        self._timings_file = self.path / TIMINGS_FILE
        self.timings = checkpoints.load_json(self._timings_file) if self._timings_file.exists() else {}

    def stage(self, name: str) -> pathlib.Path:
        return self.path / name

    def matrix_file(self, stage: str) -> pathlib.Path:
        """Where the zoo-sized matrix of `stage` lies."""
        return self.path / MATRIX_FILES[stage]

    def zoo_chunk(self, first_model: int, last_model: int) -> pathlib.Path:
        """Training checkpoints of zoo models first..last (inclusive)."""
        return self.path / ZOO_CHUNKS / f"models_{first_model:04d}-{last_model:04d}"

    def remove_zoo_chunks(self) -> None:
        """Training checkpoints are dead weight once the zoo stage exists."""
        shutil.rmtree(self.path / ZOO_CHUNKS, ignore_errors=True)

    def done(self, name: str) -> bool:
        return self.stage(name).exists()

    def load(self, name: str) -> PyTree:
        return checkpoints.restore_tree(self.stage(name))

    def derived_from(self, name: str) -> list[str]:
        """The finished stages (and flow checkpoints) computed from stage `name`, directly or not."""
        derived, frontier = [], [name]
        while frontier:
            current = frontier.pop()
            for stage, upstream in UPSTREAM.items():
                if current in upstream and stage not in derived:
                    derived.append(stage)
                    frontier.append(stage)
        found = [stage for stage in derived if self.done(stage)]
        if "flow" in derived and self.flow_checkpoints.exists():
            found.append(FLOW_CHECKPOINTS)
        return found

    def run(self, name: str, compute: Callable[[], PyTree]) -> PyTree:
        """The stage's saved result, computing and saving it first if it is not done.

        A stage is not recomputed under results computed from its earlier version:
        those must be deleted too, which the error says.
        """
        path = self.stage(name)
        if path.exists():
            logging.info(
                "stage %-9s loaded from %s (computed earlier in %.1f s)",
                name,
                path,
                self.timings.get(name, float("nan")),
            )
            return self.load(name)
        stale = self.derived_from(name)
        if stale:
            raise CheckpointError(
                f"stage {path} is missing while results computed from it remain in {self.path} "
                f"({', '.join(stale)}); delete those too to recompute {name}, or delete the whole workdir"
            )
        start = time.perf_counter()
        result = jax.block_until_ready(compute())
        checkpoints.save_tree(path, result)
        self.timings[name] = time.perf_counter() - start
        checkpoints.save_json(self._timings_file, self.timings)
        logging.info("stage %-9s done in %.1f s -> %s", name, self.timings[name], path)
        return result

    def accuracy(self, name: str, compute: Callable[[], Any]) -> Any:
        """An evaluation as a stage: a rerun of a finished workdir does not evaluate a whole ensemble again."""
        return self.run(name, lambda: {"accuracy": compute()})["accuracy"]

    def open_matrix(self, stage: str, rows: int, dim: int, in_memory: bool) -> ZooStore:
        """The finished stage's (rows, dim) matrix as a store, refusing a missing or wrongly sized file."""
        try:
            return open_file(self.matrix_file(stage), rows, dim, in_memory)
        except (FileNotFoundError, ValueError) as error:
            raise CheckpointError(
                f"{error} (stage {self.stage(stage)} exists: a truncated file, or another architecture); "
                f"delete {self.stage(stage)} to recompute that stage"
            ) from error

    def copy_stages_from(self, source: "Workdir", stages: Iterable[str], config: ml_collections.ConfigDict) -> None:
        """Take finished stages (dir and matrix file) of another workdir made with the same zoo settings.

        Stages this workdir has are kept. Each is copied under a temporary name and
        renamed, so an interrupted copy never looks like a finished stage.
        """
        check_config(source.path, config, only=CANONICAL_KEYS, ignore=RESULT_FREE_KEYS)
        self.path.mkdir(parents=True, exist_ok=True)
        for name in stages:
            if not source.done(name) or self.done(name):
                continue
            if name in MATRIX_FILES:
                if not source.matrix_file(name).is_file():
                    raise CheckpointError(
                        f"{source.matrix_file(name)} is missing: {source.stage(name)} cannot be copied"
                    )
                partial = self.matrix_file(name).with_name(self.matrix_file(name).name + ".partial")
                shutil.copyfile(source.matrix_file(name), partial)
                os.replace(partial, self.matrix_file(name))
            partial = self.stage(name).with_name(name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(source.stage(name), partial)
            os.replace(partial, self.stage(name))
            self.timings.setdefault(name, source.timings.get(name, float("nan")))
            logging.info("stage %-9s taken from %s", name, source.path)
        checkpoints.save_json(self._timings_file, self.timings)


@contextlib.contextmanager
def locked(workdir: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive lock on the workdir for the whole run.

    flock is released by the kernel when the process dies, even by SIGKILL, so a
    killed run never leaves a stale lock behind.
    """
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        handle = open(workdir / LOCK_FILE, "a+")  # noqa: SIM115 (closed by the with below, after the error mapping)
    except OSError as error:
        raise WorkdirNotWritable(
            f"workdir {workdir} is not writable ({error.strerror}); choose another --workdir"
        ) from error
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
        checkpoints.save_json(workdir / FORMAT_FILE, {"workdir_format": FORMAT})
        checkpoints.save_json(workdir / CONFIG_FILE, config_as_dict(config))


def config_differences(
    recorded: dict, config: ml_collections.ConfigDict, only: Iterable[str] = (), ignore: Iterable[str] = ()
) -> list[str]:
    """`key: recorded -> now` for each key that differs, among the keys under `only` (all if empty) less `ignore`.

    A key one side lacks counts as its base_config default: workdirs made before a
    key existed stay usable while the new key keeps its default.
    """
    defaults = _flatten(config_as_dict(base_config()))
    recorded, now = _flatten(recorded), _flatten(config_as_dict(config))
    only, ignore = tuple(only), set(ignore)

    def compared(key: str) -> bool:
        return key not in ignore and (not only or any(key == prefix or key.startswith(prefix + ".") for prefix in only))

    keys = sorted(key for key in recorded.keys() | now.keys() if compared(key))
    return [
        f"{key}: {recorded.get(key)!r} -> {now.get(key)!r}"
        for key in keys
        if recorded.get(key, defaults.get(key)) != now.get(key, defaults.get(key))
    ]


def check_config(
    workdir: pathlib.Path, config: ml_collections.ConfigDict, only: Iterable[str] = (), ignore: Iterable[str] = ()
) -> None:
    """Refuse, without writing anything, a workdir that another config made (compared as `config_differences`)."""
    path = workdir / CONFIG_FILE
    if not path.exists():
        return
    written = checkpoints.load_json(workdir / FORMAT_FILE)["workdir_format"] if (workdir / FORMAT_FILE).exists() else 1
    if written != FORMAT:
        raise WorkdirFormatMismatch(
            f"workdir {workdir} was made by another dwf_jax version (workdir format {written}, this version reads "
            f"{FORMAT}: stage files and random streams differ). Use another --workdir, or delete it to start over."
        )
    differences = config_differences(json.loads(path.read_text()), config, only, ignore)
    if differences:
        raise WorkdirConfigMismatch(
            f"workdir {workdir} was made by a different config ({', '.join(differences[:5])}). "
            f"Use another --workdir, or delete {workdir} to start over."
        )
