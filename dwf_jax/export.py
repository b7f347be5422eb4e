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
from typing import Any, NamedTuple

import ml_collections
import numpy as np
from absl import app, flags

from dwf_jax import stages, torch_layout, weight_files
from dwf_jax.commands import INPUT_ERRORS
from dwf_jax.config import config_as_dict
from dwf_jax.data import load_configured
from dwf_jax.generator import finished_stages, recorded_config
from dwf_jax.zoo_store import Flattener, stack, unstack

PyTree = Any
NETS = ("generated", "canonical")


class FinishedNets(NamedTuple):
    """A run's generated or canonical nets as its checked stages hold them, with what describes them."""

    config: ml_collections.ConfigDict
    regression: bool
    flattener: Flattener
    rows: np.ndarray
    statistics: PyTree | None  # generated BatchNorm nets: the recalibrated statistics they were evaluated with
    accuracy: np.ndarray


def _models(rows: np.ndarray, flattener: Flattener, statistics: PyTree | None) -> Iterator[PyTree]:
    for index, row in enumerate(rows):
        variables = flattener.unflatten(row)
        if statistics is not None:
            variables = {**variables, **unstack(statistics, index)}
        yield variables


def finished_nets(workdir: pathlib.Path, nets: str) -> FinishedNets:
    """The run's `nets` from its recorded config, its data and only the stages they come from, checked as a run
    checks them: a canonical zoo exports before (or without) the flow, and nothing unused is read or hashed."""
    config = recorded_config(workdir)
    dataset = load_configured(config.data)
    template = stages.model_template(config, dataset)
    if nets == "canonical":
        names, count = ("canonical",), config.zoo.num_models
    elif "batch_stats" in template and config.bn.recalibrate:
        names, count = ("samples", "bn_stats", "eval_recalibrated"), config.sample.num_samples
    else:
        names, count = ("samples", "eval_generated"), config.sample.num_samples
    work, finished = finished_stages(workdir, config, dataset, names)
    flattener = Flattener(template)
    rows = work.open_matrix(names[0], count, flattener.dim, in_memory=True).as_array()
    accuracy = finished["canonical"]["test_accuracy"] if nets == "canonical" else finished[names[-1]]["accuracy"]
    return FinishedNets(config, dataset.regression, flattener, rows, finished.get("bn_stats"), np.asarray(accuracy))


def _refuse_existing(paths: list[pathlib.Path]) -> None:
    for path in paths:
        if os.path.lexists(path):
            raise weight_files.WeightFileError(f"{path} exists: export writes only new files; choose another --out")


def export(workdir: str | os.PathLike, out: str | os.PathLike, nets: str = "generated", stacked: bool = False) -> list:
    """Write the run's `nets` as safetensors in PyTorch layout under `out`; returns the files written."""
    if nets not in NETS:
        raise ValueError(f"nets={nets!r}: choose one of {list(NETS)}")
    out = pathlib.Path(out)
    config, regression, flattener, rows, statistics, accuracy = finished_nets(pathlib.Path(workdir), nets)
    header = {
        "architecture": config_as_dict(config.model),
        "dataset": config.data.name,
        "nets": nets,
        "metric": "spearman" if regression else "accuracy_percent",
        "config": config_as_dict(config),
    }
    models = _models(rows, flattener, statistics)
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
