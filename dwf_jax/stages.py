"""Pieces both pipelines share (in memory: dwf_jax.pipeline, on disk: dwf_jax.pipeline_on_disk).

Each stage is saved under the workdir and loaded instead of recomputed when the
same config runs again.
"""

import pathlib
import time
from functools import partial
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dwf_jax import bn_recalibration, checkpoints, zoo
from dwf_jax.augment import input_pipeline
from dwf_jax.bn_recalibration import calibration_batches
from dwf_jax.data import Dataset
from dwf_jax.evaluate import ensemble_accuracy
from dwf_jax.models import build_model

PyTree = Any
Evaluator = Callable[[PyTree], np.ndarray]


class Stages:
    """Runs a stage once per workdir: later runs load its saved result; times are kept in timings.json."""

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.timings_path = workdir / "timings.json"
        self.timings = checkpoints.load_json(self.timings_path) if self.timings_path.exists() else {}

    def run(self, name: str, compute: Callable[[], PyTree]) -> PyTree:
        path = self.workdir / name
        if path.exists():
            logging.info("stage %-9s loaded from %s (computed earlier in %.1f s)", name, path, self.timings.get(name, float("nan")))
            return checkpoints.restore_tree(path)
        start = time.perf_counter()
        result = jax.block_until_ready(compute())
        checkpoints.save_tree(path, result)
        self.timings[name] = time.perf_counter() - start
        checkpoints.save_json(self.timings_path, self.timings)
        logging.info("stage %-9s done in %.1f s -> %s", name, self.timings[name], path)
        return result

    def accuracy(self, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """An evaluation as a stage: a rerun of a finished workdir does not evaluate a whole ensemble again."""
        return self.run(name, lambda: {"accuracy": compute()})["accuracy"]


def evaluator(config: ml_collections.ConfigDict, model: nn.Module, dataset: Dataset) -> Evaluator:
    """Test accuracy (percent) of every model of a stacked zoo."""
    return partial(
        ensemble_accuracy, model, x=dataset.x_test, y=dataset.y_test, batch_size=config.eval.batch_size,
        transform=input_pipeline(dataset.name, config.data.augment).eval, models_per_vmap=config.models_per_vmap,
    )


def train_chunks(
    config: ml_collections.ConfigDict, dataset: Dataset, workdir: pathlib.Path, progress: bool, first_model: int = 0
) -> Iterator[PyTree]:
    """The zoo's models `first_model`..N-1, one stacked chunk (numpy leaves) at a time.

    Each chunk checkpoints every `zoo.checkpoint_every` epochs, so an interrupted zoo resumes where it stopped.
    Model i depends only on (seed, i): a zoo can grow from a smaller one by training only the new models.
    """
    model = build_model(config.model)
    z = config.zoo
    steps_per_epoch = len(dataset.x_train) // z.batch_size if z.drop_last else -(-len(dataset.x_train) // z.batch_size)
    tx = zoo.make_optimizer(z.optimizer, z.learning_rate, z.weight_decay, z.schedule, z.epochs * steps_per_epoch)
    for indices in zoo.chunks(z.num_models - first_model, z.models_per_chunk):
        indices = indices + first_model
        manager = checkpoints.manager(workdir / "zoo_chunks" / f"models_{indices[0]:04d}-{indices[-1]:04d}")
        variables, _ = zoo.train_models(
            model, tx, dataset.x_train, dataset.y_train, seed=config.seed, model_indices=indices,
            epochs=z.epochs, batch_size=z.batch_size, inputs=input_pipeline(dataset.name, config.data.augment),
            drop_last=z.drop_last, models_per_vmap=config.models_per_vmap, scan_steps=z.scan_steps, manager=manager,
            checkpoint_every=z.checkpoint_every, progress=progress,
        )
        yield jax.tree.map(np.asarray, variables)


def recalibrate_stage(config: ml_collections.ConfigDict, model: nn.Module, generated: PyTree, dataset: Dataset) -> PyTree:
    """Generated nets with BatchNorm statistics re-estimated on training data (test data only if asked: it leaks)."""
    images = dataset.x_train if config.bn.data == "train" else dataset.x_test
    key = jax.random.fold_in(jax.random.key(config.seed), 4)
    batches = calibration_batches(key, images, config.bn.num_batches, config.bn.batch_size)
    inputs = input_pipeline(dataset.name, config.data.augment)
    return {"batch_stats": bn_recalibration.recalibrate(model, generated, inputs.eval(jnp.asarray(batches)), config.models_per_vmap)["batch_stats"]}


def expected_zoo(config: ml_collections.ConfigDict, model: nn.Module, dataset: Dataset) -> PyTree:
    """Shapes of the stacked zoo this config trains, without computing it."""
    sample = input_pipeline(dataset.name, config.data.augment).eval(jnp.asarray(dataset.x_train[:1]))
    one = jax.eval_shape(lambda: model.init(jax.random.key(0), sample, train=False))
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct((config.zoo.num_models, *leaf.shape), leaf.dtype), one)
