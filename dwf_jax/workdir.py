"""A run's workdir: its layout, its finished stages, and the settings they were computed with.

Every path a run writes is named here. A stage is an orbax dir (small arrays)
plus, for zoo-sized results, one raw float32 matrix beside it (`MATRIX_FILES`),
written and renamed into place before the stage dir: "stage dir exists" means
"done". The stage's manifest holds checksums of both and the settings it was
computed with (`dwf_jax.settings`); `Workdir.check` verifies them all once a
run holds the workdir (`dwf_jax.session.opened`), before it computes anything.
"""

import collections
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from dwf_jax import checkpoints, processes
from dwf_jax.checkpoints import CheckpointError
from dwf_jax.settings import STAGE_KEYS, Settings, config_as_dict, differences
from dwf_jax.zoo_store import MemoryZoo, ZooStore, open_file, write_rows

PyTree = Any
MATRIX_FILES = {
    "zoo": "zoo.f32",
    "canonical": "canonical.f32",
    "pca": "pca_components.f32",
    "samples": "generated.f32",
    "baselines": "baselines.f32",
}
ZOO_CHUNKS = "zoo_chunks"
FLOW_CHECKPOINTS = "flow_checkpoints"
TENSORBOARD = "tensorboard"  # training curves (`dwf_jax.curves`), one folder per training
CONFIG_FILE = "config.json"
REPORT_FILE = "report.json"
FIGURE_FILE = "accuracy.png"
DIVERSITY_FIGURE_FILE = "diversity.png"
TIMINGS_FILE = "timings.json"
LOCK_FILE = ".lock"
FORMAT_FILE = "workdir_format.json"
# Version of the stage layout and random streams; workdirs of another version are refused.
# 2: matrix files for every zoo-sized stage, stage keys disjoint from model keys.
# 3: every stage and training checkpoint has a manifest (checksums, the stage's settings).
# 4: the MLP scheme 'kaiming' gained torch's bias init; the old zero-bias one is 'kaiming_zero_bias'.
FORMAT = 4
# What each stage is computed from: recomputing a stage makes everything computed from it stale.
UPSTREAM = {
    "canonical": ("zoo",),
    "pca": ("canonical",),
    "flow": ("canonical", "pca"),
    "samples": ("flow",),
    "eval_generated": ("samples",),
    "bn_stats": ("samples",),
    "eval_recalibrated": ("bn_stats",),
    "diversity": ("samples", "bn_stats"),
    "zoo_diversity": ("canonical",),
    "baselines": ("canonical",),
}
# Every other name a run writes at the top of its workdir (stages and matrix files aside).
RUN_FILES = (
    ZOO_CHUNKS,
    FLOW_CHECKPOINTS,
    TENSORBOARD,
    CONFIG_FILE,
    REPORT_FILE,
    FIGURE_FILE,
    DIVERSITY_FIGURE_FILE,
    TIMINGS_FILE,
    LOCK_FILE,
    FORMAT_FILE,
)


class WorkdirConfigMismatch(ValueError):
    """A finished stage of the workdir was computed with other settings."""


class WorkdirFormatMismatch(ValueError):
    """The workdir was made by a dwf_jax whose stages this version cannot use."""


class StageDamaged(CheckpointError):
    """A finished stage's files changed after they were written."""


class Workdir:
    """The paths of one run and its finished stages; a stage runs once, later runs load it.

    `settings` (`dwf_jax.settings.stage_settings`) are what new stages record and
    finished ones are checked against; a Workdir only read from needs none.
    """

    def __init__(self, path: str | os.PathLike, settings: dict[str, Settings] | None = None):
        self.path = pathlib.Path(path)
        self.settings = dict(settings or {})
        self.running = "(none)"  # the stage being computed or loaded, to say where an interrupted run stopped
        self.report = self.path / REPORT_FILE
        self.figure = self.path / FIGURE_FILE
        self.diversity_figure = self.path / DIVERSITY_FIGURE_FILE
        self.flow_checkpoints = self.path / FLOW_CHECKPOINTS
        self.tensorboard = self.path / TENSORBOARD
        self.flow_curves = self.tensorboard / "flow"
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

    def zoo_curves(self, first_model: int, last_model: int) -> pathlib.Path:
        """Training curves of zoo models first..last (inclusive), named as their checkpoints."""
        return self.tensorboard / "zoo" / self.zoo_chunk(first_model, last_model).name

    def training_checkpoints(self, stage: str, folder: pathlib.Path) -> checkpoints.TrainingCheckpoints:
        """Training states of `stage` in `folder`, tied to its settings: a changed config never resumes them.

        With several processes the writer keeps them for all (`processes.WriterCheckpoints`)."""
        saves = checkpoints.TrainingCheckpoints(folder, self.settings[stage], differences)
        return processes.WriterCheckpoints(saves) if processes.several() else saves

    def zoo_checkpoints(self, indices: np.ndarray) -> checkpoints.TrainingCheckpoints:
        """Training states of the zoo models `indices`; with several processes each keeps its own models."""
        folder = self.zoo_chunk(indices[0], indices[-1])
        if not processes.several():
            return checkpoints.TrainingCheckpoints(folder, self.settings["zoo"], differences)
        share = folder / f"process_{jax.process_index()}_of_{jax.process_count()}"
        saves = checkpoints.TrainingCheckpoints(share, self.settings["zoo"], differences, per_process=True)
        return processes.ShareCheckpoints(saves, len(indices))

    def remove_zoo_chunks(self) -> None:
        """Training checkpoints are dead weight once the zoo stage is sealed (durably), or once they diverged."""
        processes.barrier("zoo checkpoints")  # every process has finished its last save

        def remove() -> None:
            chunks = self.path / ZOO_CHUNKS
            if chunks.is_dir() and not chunks.is_symlink():
                shutil.rmtree(chunks)

        processes.writer_does(remove)

    def write_matrix(self, stage: str, rows: Iterable[np.ndarray], keep: bool = True) -> ZooStore | None:
        """The zoo-sized matrix of `stage` written to its file by the writer; another process holds it in
        memory (`keep`) or only draws the rows (later stages read the file)."""
        if processes.is_writer():
            return write_rows(self.matrix_file(stage), rows)
        if keep:
            return MemoryZoo(np.stack([np.asarray(row, np.float32) for row in rows]))
        collections.deque(rows, maxlen=0)
        return None

    def owned_names(self) -> list[str]:
        """Every name a run writes or deletes at the top of this workdir."""
        stages = {*STAGE_KEYS, *UPSTREAM, *self.settings}
        return sorted({*stages, *(MATRIX_FILES[name] for name in stages if name in MATRIX_FILES), *RUN_FILES})

    def done(self, name: str) -> bool:
        return self.stage(name).exists()

    def load(self, name: str) -> PyTree:
        return checkpoints.restore_tree(self.stage(name))

    def _beside(self, name: str) -> dict[str, pathlib.Path]:
        return {MATRIX_FILES[name]: self.matrix_file(name)} if name in MATRIX_FILES else {}

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

    def _delete_advice(self, name: str) -> str:
        doomed = [name, *self.derived_from(name)]
        files = [path for stage in doomed for path in (stage, MATRIX_FILES.get(stage)) if path]
        return f"delete {', '.join(files)} in {self.path} to recompute, or use another --workdir"

    def verify(self, name: str) -> Settings:
        """Check a finished stage's files against its checksums and return the settings it recorded."""
        try:
            return checkpoints.verify(self.stage(name), self._beside(name)).get("settings", {})
        except CheckpointError as error:
            raise StageDamaged(f"stage {name} is damaged: {error}; {self._delete_advice(name)}") from None

    def record_config(self, config: ml_collections.ConfigDict) -> None:
        """Record the config of the latest run, for people: the stages keep the settings they depend on."""
        self.record_format()
        checkpoints.save_json(self.path / CONFIG_FILE, config_as_dict(config))

    def record_format(self) -> None:
        """Mark the workdir with the format of the stages about to be written in it."""
        if processes.is_writer() and not (self.path / FORMAT_FILE).exists():
            self.path.mkdir(parents=True, exist_ok=True)
            checkpoints.save_json(self.path / FORMAT_FILE, {"workdir_format": FORMAT})

    def check(self) -> None:
        """Refuse, before anything is written, a workdir of another format, or a finished stage that is
        damaged or was computed with other settings than this run's."""
        made = any(self.done(stage) for stage in (*STAGE_KEYS, ZOO_CHUNKS, FLOW_CHECKPOINTS))
        if made:
            path = self.path / FORMAT_FILE
            written = checkpoints.load_json(path)["workdir_format"] if path.exists() else 1
            if written != FORMAT:
                raise WorkdirFormatMismatch(
                    f"workdir {self.path} was made by another dwf_jax version (workdir format {written}, this "
                    f"version reads {FORMAT}: stage files and random streams differ). Use another --workdir, "
                    "or delete it to start over."
                )
        for name in self.settings:
            if self.done(name):
                changed = differences(self.verify(name), self.settings[name])
                if changed:
                    raise WorkdirConfigMismatch(
                        f"stage {name} in {self.path} was computed with other settings ({', '.join(changed[:5])}); "
                        f"{self._delete_advice(name)}"
                    )

    def run(self, name: str, compute: Callable[[], PyTree]) -> PyTree:
        """The stage's saved result, computing and saving it first if it is not done.

        A stage is not recomputed under results computed from its earlier version:
        those must be deleted too, which the error says.
        """
        path, self.running = self.stage(name), name
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
        if name not in self.settings:
            raise ValueError(f"no settings for stage {name}: this Workdir can only read finished stages")
        start = time.perf_counter()
        result = jax.block_until_ready(compute())
        self.timings[name] = time.perf_counter() - start
        processes.writer_does(lambda: self._save(name, result))
        logging.info("stage %-9s done in %.1f s -> %s", name, self.timings[name], path)
        return result

    def _save(self, name: str, result: PyTree) -> None:
        self.record_format()
        checkpoints.save_tree(self.stage(name), result, self._beside(name), settings=self.settings[name])
        checkpoints.save_json(self._timings_file, self.timings)

    def accuracy(self, name: str, compute: Callable[[], Any]) -> Any:
        """An evaluation as a stage: a rerun of a finished workdir does not evaluate a whole ensemble again."""
        return self.run(name, lambda: {"accuracy": compute()})["accuracy"]

    def open_matrix(self, stage: str, rows: int, dim: int, in_memory: bool) -> ZooStore:
        """The finished stage's (rows, dim) matrix as a store, refusing a missing or wrongly sized file."""
        try:
            return open_file(self.matrix_file(stage), rows, dim, in_memory)
        except (FileNotFoundError, ValueError) as error:
            raise StageDamaged(f"{error} (another architecture?); {self._delete_advice(stage)}") from error
