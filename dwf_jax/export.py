"""A finished run's nets out to PyTorch: safetensors files in PyTorch layout, each saying what it holds.

    python -m dwf_jax.export --workdir=workdirs/mnist_mlp --out=exported [--nets=canonical] [--stacked]

One file per model (`generated_00000.safetensors`, ...) or one stacked file
(`generated.safetensors`, every key with a leading model axis). The header
metadata names the architecture, the run's config, the dataset and each model's
test accuracy as the run measured it; generated BatchNorm nets carry their
recalibrated statistics, the ones that accuracy was measured with. Existing
files are never overwritten, and nothing is written through a link.
"""

import os
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
from absl import app, flags

from dwf_jax import torch_layout, weight_files
from dwf_jax.commands import INPUT_ERRORS
from dwf_jax.config import config_as_dict
from dwf_jax.generator import Generator, finished_stages
from dwf_jax.zoo_store import Flattener, stack, unstack

PyTree = Any
NETS = ("generated", "canonical")


def _models(rows: np.ndarray, flattener: Flattener, statistics: PyTree | None) -> Iterator[PyTree]:
    for index, row in enumerate(rows):
        variables = flattener.unflatten(row)
        if statistics is not None:
            variables = {**variables, **unstack(statistics, index)}
        yield variables


def finished_nets(generator: Generator, workdir: pathlib.Path, nets: str) -> tuple[np.ndarray, PyTree, np.ndarray]:
    """(rows, BatchNorm statistics or None, per-model accuracy) of the run's generated or canonical nets, from its
    checked stages; generated BatchNorm nets come with their recalibrated statistics, as they were evaluated."""
    config, flattener = generator.config, generator.flattener
    if nets == "canonical":
        work, finished = finished_stages(workdir, config, generator.dataset, ("canonical",))
        rows = work.open_matrix("canonical", config.zoo.num_models, flattener.dim, in_memory=True).as_array()
        return rows, None, np.asarray(finished["canonical"]["test_accuracy"])
    recalibrated = "batch_stats" in generator.template and config.bn.recalibrate
    names = ("samples", "bn_stats", "eval_recalibrated") if recalibrated else ("samples", "eval_generated")
    work, finished = finished_stages(workdir, config, generator.dataset, names)
    rows = work.open_matrix("samples", config.sample.num_samples, flattener.dim, in_memory=True).as_array()
    statistics = finished["bn_stats"] if recalibrated else None
    return rows, statistics, np.asarray(finished[names[-1]]["accuracy"])


def _refuse_existing(paths: list[pathlib.Path]) -> None:
    for path in paths:
        if os.path.lexists(path):
            raise weight_files.WeightFileError(f"{path} exists: export writes only new files; choose another --out")


def export(workdir: str | os.PathLike, out: str | os.PathLike, nets: str = "generated", stacked: bool = False) -> list:
    """Write the run's `nets` as safetensors in PyTorch layout under `out`; returns the files written."""
    if nets not in NETS:
        raise ValueError(f"nets={nets!r}: choose one of {list(NETS)}")
    workdir, out = pathlib.Path(workdir), pathlib.Path(out)
    generator = Generator.load(workdir)
    config = generator.config
    rows, statistics, accuracy = finished_nets(generator, workdir, nets)
    header = {
        "architecture": config_as_dict(config.model),
        "dataset": config.data.name,
        "nets": nets,
        "metric": "spearman" if generator.dataset.regression else "accuracy_percent",
        "config": config_as_dict(config),
    }
    models = _models(rows, generator.flattener, statistics)
    if out.is_symlink():
        raise weight_files.WeightFileError(f"{out} is a link: export writes only inside a real folder")
    if stacked:
        path = out / f"{nets}.safetensors"
        _refuse_existing([path])
        state_dicts = [torch_layout.to_state_dict(config.model, variables) for variables in models]
        arrays = stack(state_dicts)
        out.mkdir(parents=True, exist_ok=True)
        weight_files.write_safetensors(path, arrays, {**header, "accuracy": accuracy.tolist()})
        return [path]
    paths = [out / f"{nets}_{index:05d}.safetensors" for index in range(len(rows))]
    _refuse_existing(paths)
    out.mkdir(parents=True, exist_ok=True)
    for index, (path, variables) in enumerate(zip(paths, models, strict=True)):
        state_dict = torch_layout.to_state_dict(config.model, variables)
        weight_files.write_safetensors(
            path, state_dict, {**header, "model_index": index, "accuracy": float(accuracy[index])}
        )
    return paths


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags, defined only when it runs: `export` is also a library function."""
    flags.DEFINE_string("workdir", None, "A finished run's workdir.", required=True)
    flags.DEFINE_string("out", None, "Folder the safetensors files are written to (new files only).", required=True)
    flags.DEFINE_enum("nets", "generated", list(NETS), "The generated ensemble, or the canonical (re-basined) zoo.")
    flags.DEFINE_bool("stacked", False, "One file, every key with a leading model axis, not one file per model.")
    flags.DEFINE_bool("traceback", False, "Show the full traceback of input errors.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        paths = export(FLAGS.workdir, FLAGS.out, FLAGS.nets, FLAGS.stacked)
    except INPUT_ERRORS as error:
        if FLAGS.traceback:
            raise
        sys.exit(f"dwf_jax: error: {error}")
    print(f"wrote {len(paths)} file(s) in PyTorch layout under {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
