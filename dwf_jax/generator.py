"""Sampling in one call from Python: a finished run's flow drawing any number of new networks.

    gen = Generator.load("workdirs/iris_mlp")
    nets = gen.recalibrate(gen.sample(jax.random.key(1), 1000))  # stacked variables, leading model axis
    accuracy = gen.evaluate(nets)  # per-model test accuracy

`load` reads the config the run recorded, its data, and only the stages sampling needs (flow, and pca when the
flow lives in PCA space). Those are checked as `pipeline.run` checks them, so a damaged or mismatched workdir is
refused with the run's own error. Nothing is written to the workdir and its lock is not taken: finished stages are
renamed into place whole and verified against their checksums, so a reader needs no lock to see them whole.
"""

import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.flatten_util import ravel_pytree

from dwf_jax import checkpoints, keys, pca, stages
from dwf_jax.checkpoints import CheckpointError
from dwf_jax.config import MODEL_NAMES, base_config, config_as_dict, model_config, pca_components
from dwf_jax.data import Dataset, load_configured
from dwf_jax.flow_stage import flow_source, sample_flow
from dwf_jax.pipeline import workdir_for
from dwf_jax.sharding import split_models
from dwf_jax.validation import validate_config
from dwf_jax.workdir import CONFIG_FILE, Workdir
from dwf_jax.zoo_store import Flattener, MemoryZoo, check_finite, num_stacked

PyTree = Any


def recorded_config(workdir: pathlib.Path, data_dir: str | os.PathLike | None = None) -> ml_collections.ConfigDict:
    """The config the workdir's latest run recorded, validated; `data_dir` replaces `data.dir` (data that moved)."""
    path = workdir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {workdir} is not the workdir of a dwf_jax run")
    recorded = checkpoints.load_json(path)
    defaults = base_config()
    if recorded.get("model", {}).get("name") in MODEL_NAMES:
        defaults.model = model_config(recorded["model"]["name"])
    config = ml_collections.ConfigDict(_over_defaults(config_as_dict(defaults), recorded))
    if data_dir is not None:
        config.data.dir = str(data_dir)
    validate_config(config)
    return config


def _over_defaults(defaults: dict, recorded: dict) -> dict:
    """Recorded values over the defaults: a key dwf_jax gained after the run keeps its default, as the settings
    its stages recorded are read (`settings.differences`); a key it lost stays, for `validate_config` to name."""
    merged = dict(defaults)
    for key, value in recorded.items():
        nested = isinstance(value, dict) and isinstance(defaults.get(key), dict)
        merged[key] = _over_defaults(defaults[key], value) if nested else value
    return merged


def _unfinished(work: Workdir, name: str) -> Callable[[], None]:
    """What `Workdir.run` calls for a stage that is missing with nothing computed from it: a reader cannot make it."""

    def refuse() -> None:
        raise CheckpointError(
            f"stage {work.stage(name)} is missing: the run in {work.path} has not finished it; run it to the end "
            "(`python -m dwf_jax.main` with its config) first"
        )

    return refuse


def finished_stages(
    path: pathlib.Path, config: ml_collections.ConfigDict, dataset: Dataset, names: tuple[str, ...]
) -> tuple[Workdir, dict[str, PyTree]]:
    """The named stages of a finished run, checked as a run of `config` checks them (`Workdir.check`: format,
    checksums, settings against the config and the data's fingerprint); a missing one is refused as the run
    refuses it. The Workdir returned opens the stages' matrix files."""
    settings = workdir_for(config, dataset, path).settings  # what a run of this config checks the stages with
    work = Workdir(path, {name: settings[name] for name in names})
    work.check()
    return work, {name: work.run(name, _unfinished(work, name)) for name in names}


def named_arrays(nets: PyTree) -> dict[str, np.ndarray]:
    """Stacked variables as numpy arrays named by their key paths ('params/Dense_0/kernel'), for an .npz file."""
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(leaf)
        for path, leaf in jax.tree.leaves_with_path(nets)
    }


class Generator:
    """A finished run's flow and what maps its samples to networks: the template, the PCA (if any), the data.

    Sampling goes through `flow_stage.sample_flow`, the function of the pipeline's samples stage, so
    `sample(pipeline_key(), config.sample.num_samples)` is the run's generated ensemble, bit for bit.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        dataset: Dataset,
        flow_params: PyTree,
        pca_state: pca.PCAState | None = None,
    ):
        self.config = config
        self.dataset = dataset
        self.template = stages.model_template(config, dataset)
        self.flattener = Flattener(self.template)
        self.source = flow_source(config, self.template)
        self.flow_params = flow_params
        self.pca_state = pca_state
        self._evaluate = stages.evaluator(config, dataset)

    @classmethod
    def load(cls, workdir: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> "Generator":
        """The generator of a finished workdir; `data_dir` where its data lies now (the data must be the same).

        The stages read are checked as a run checks them (`Workdir.check`: format, checksums, settings against
        the recorded config and the data's fingerprint), and a missing one is refused as the run refuses it.
        """
        path = pathlib.Path(workdir)
        config = recorded_config(path, data_dir)
        dataset = load_configured(config.data)
        work, finished = finished_stages(
            path, config, dataset, ("flow", "pca") if config.pca.method != "none" else ("flow",)
        )
        generator = cls(config, dataset, finished["flow"]["params"])
        if config.pca.method != "none":
            generator.pca_state = stages.pca_state(config, work, finished["pca"], generator.flattener)
        return generator

    @property
    def flow_dim(self) -> int:
        """Coordinates of the flow's space: every weight, or the PCA coefficients."""
        return self.flattener.dim if self.pca_state is None else pca_components(self.config)

    def pipeline_key(self) -> jax.Array:
        """The key of the run's own samples stage (the 'sample' stream of `config.seed`)."""
        return keys.stage_key(self.config.seed, "sample")

    def sample_rows(self, key: jax.Array, count: int, progress: bool = False) -> np.ndarray:
        """`count` new networks as an (count, D) float32 matrix of flattened weights (`generated.f32`'s rows)."""
        if count < 1:
            raise ValueError(f"count={count}: sample at least one network")
        with split_models(self.config.num_devices):
            points = sample_flow(self.config, self.flow_params, self.flow_dim, self.source, key, count, progress)
        check_finite(points, "generated weights", "The flow diverges from some source points.")
        if self.pca_state is None:
            return points
        return pca.inverse_transform_blocks(self.pca_state, points, stages.block_size(self.config))

    def sample(self, key: jax.Array, count: int, progress: bool = False) -> PyTree:
        """`count` new networks as stacked Flax variables (leading model axis), from one integration of the flow."""
        return self.flattener.unflatten_rows(self.sample_rows(key, count, progress))

    def recalibrate(self, nets: PyTree) -> PyTree:
        """The nets with their BatchNorm statistics re-estimated as the pipeline does (`config.bn`: the same data,
        batches and key); generated statistics need not match the activations of generated weights. Nets without
        BatchNorm are returned as they are."""
        if "batch_stats" not in nets:
            return nets
        rows = MemoryZoo(jax.vmap(lambda variables: ravel_pytree(variables)[0])(nets))  # the Flattener's rows
        return {**nets, **stages.recalibrate(self.config, self.dataset, rows, self.flattener)}

    def evaluate(self, nets: PyTree) -> np.ndarray:
        """Test accuracy (percent; Spearman's rho for regression) of every net, `zoo.models_per_chunk` at a time
        as the pipeline's evaluator, so an ensemble of any size fits in memory."""
        size = self.config.zoo.models_per_chunk
        groups = (
            jax.tree.map(lambda leaf, start=start: leaf[start : start + size], nets)
            for start in range(0, num_stacked(nets), size)
        )
        return np.concatenate([self._evaluate(group) for group in groups])
