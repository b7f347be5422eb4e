"""The DeepWeightFlow pipeline: zoo -> canonical zoo -> flow -> samples -> report.

Each stage is saved under the workdir and loaded instead of recomputed when
the same config runs again.
"""

import pathlib
import shutil
import time
from functools import partial
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dwf_jax import bn_recalibration, checkpoints, pca, report, zoo
from dwf_jax.augment import input_pipeline
from dwf_jax.bn_recalibration import calibration_batches
from dwf_jax.canonical import align_models
from dwf_jax.config import pca_components, validate_config
from dwf_jax.data import Dataset, load_dataset
from dwf_jax.checkpoints import CheckpointError
from dwf_jax.ensemble import architecture_mismatch, check_finite
from dwf_jax.evaluate import ensemble_accuracy
from dwf_jax.flatten import flatten_zoo, unflattener, unstack
from dwf_jax.flow_stage import sample_stage, train_flow_stage
from dwf_jax.models import build_model, permutation_spec
from dwf_jax.workdir import check_config, locked, record_config

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


def train_zoo_stage(
    config: ml_collections.ConfigDict, dataset: Dataset, evaluate: Evaluator, workdir: pathlib.Path, progress: bool
) -> PyTree:
    """All models, chunk by chunk, then their test accuracy.

    Each chunk checkpoints every `zoo.checkpoint_every` epochs, so an interrupted zoo resumes where it stopped.
    """
    model = build_model(config.model)
    z = config.zoo
    steps_per_epoch = len(dataset.x_train) // z.batch_size if z.drop_last else -(-len(dataset.x_train) // z.batch_size)
    tx = zoo.make_optimizer(z.optimizer, z.learning_rate, z.weight_decay, z.schedule, z.epochs * steps_per_epoch)
    trained = []
    for number, indices in enumerate(zoo.chunks(z.num_models, z.models_per_chunk)):
        manager = checkpoints.manager(workdir / "zoo_chunks" / f"chunk_{number:04d}")
        variables, _ = zoo.train_models(
            model, tx, dataset.x_train, dataset.y_train, seed=config.seed, model_indices=indices,
            epochs=z.epochs, batch_size=z.batch_size, inputs=input_pipeline(dataset.name, config.data.augment),
            drop_last=z.drop_last, models_per_vmap=config.models_per_vmap, scan_steps=z.scan_steps, manager=manager,
            checkpoint_every=z.checkpoint_every, progress=progress,
        )
        trained.append(jax.tree.map(np.asarray, variables))
    variables = jax.tree.map(lambda *leaves: np.concatenate(leaves), *trained)
    check_finite(variables, "zoo training", "Lower zoo.learning_rate, or check the data.")
    return {"variables": variables, "test_accuracy": evaluate(variables)}


def canonicalize_stage(config: ml_collections.ConfigDict, variables: PyTree, evaluate: Evaluator) -> PyTree:
    """Git Re-Basin weight matching of every model to the reference model."""
    models = (unstack(variables, index) for index in range(config.zoo.num_models))
    if config.canonical.method == "rebasin":
        reference = unstack(variables, config.canonical.reference)
        key = jax.random.fold_in(jax.random.key(config.seed), 1)
        spec = permutation_spec(config.model)
        models = align_models(key, spec, reference, models, config.canonical.reference, config.canonical.max_iter)
    canonical = jax.tree.map(lambda *leaves: np.stack(leaves), *models)
    return {"variables": canonical, "test_accuracy": evaluate(canonical)}


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


def generate(
    config: ml_collections.ConfigDict, flow_params: PyTree, dim: int, to_weights: Callable, workdir: pathlib.Path, progress: bool
) -> PyTree:
    """Sample the ensemble and map it to full weights; a diverged flow is an error, not a silent report."""
    weights = np.asarray(to_weights(sample_stage(config, flow_params, dim, progress)))
    check_finite(weights, "generated weights", f"The flow diverged: delete {workdir / 'flow'} and retrain with a lower flow.learning_rate.")
    return {"weights": weights}


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path, progress: bool = True) -> dict:
    """Run (or resume) every stage in `workdir` and return the report."""
    validate_config(config)
    dataset = load_dataset(config.data.name, config.data.dir, config.data.source)
    check_config(workdir, config)
    with locked(workdir):
        record_config(workdir, config)
        return _run_stages(config, dataset, workdir, progress)


def _run_stages(config: ml_collections.ConfigDict, dataset: Dataset, workdir: pathlib.Path, progress: bool) -> dict:
    stages = Stages(workdir)
    logging.info("data %s: %d train / %d test from %s", dataset.name, len(dataset.x_train), len(dataset.x_test), dataset.source)
    model = build_model(config.model)
    evaluate = partial(
        ensemble_accuracy, model, x=dataset.x_test, y=dataset.y_test, batch_size=config.eval.batch_size,
        transform=input_pipeline(dataset.name, config.data.augment).eval, models_per_vmap=config.models_per_vmap,
    )

    zoo_result = stages.run("zoo", lambda: train_zoo_stage(config, dataset, evaluate, workdir, progress))
    shutil.rmtree(workdir / "zoo_chunks", ignore_errors=True)
    canonical = stages.run("canonical", lambda: canonicalize_stage(config, zoo_result["variables"], evaluate))
    expected = expected_zoo(config, model, dataset)
    for name, stage in (("zoo", zoo_result), ("canonical", canonical)):
        difference = architecture_mismatch(expected, stage["variables"])
        if difference:
            raise CheckpointError(f"checkpoint {workdir / name} holds another architecture ({difference}); delete it to recompute that stage")

    weights = jnp.asarray(flatten_zoo(canonical["variables"]))
    flow_data, to_weights, weight_space = weights, lambda x: x, f"full weights (D={weights.shape[1]})"
    if config.pca.method != "none":
        options = dict(batch_size=config.pca.batch_size, micro_batch=config.pca.micro_batch, fp16=config.pca.fp16, solver=config.pca.solver)
        fitted = stages.run("pca", lambda: pca.fit(config.pca.method, weights, pca_components(config), **options)._asdict())
        pca_state = pca.PCAState(**{name: jnp.asarray(value) for name, value in fitted.items()})
        flow_data, to_weights = pca.transform(pca_state, weights), partial(pca.inverse_transform, pca_state)
        weight_space = f"{config.pca.method} PCA, {pca_components(config)} components of D={weights.shape[1]}"
    flow = stages.run("flow", lambda: train_flow_stage(config, flow_data, workdir, progress))
    samples = stages.run("samples", lambda: generate(config, flow["params"], flow_data.shape[1], to_weights, workdir, progress))

    generated = unflattener(unstack(canonical["variables"], 0))(samples["weights"])
    generated_accuracy = {"as_generated": evaluate(generated)}
    if "batch_stats" in generated and config.bn.recalibrate:
        statistics = stages.run("bn_stats", lambda: recalibrate_stage(config, model, generated, dataset))
        generated_accuracy["bn_recalibrated"] = evaluate({**generated, **statistics})
    result = report.build_report(
        config=config, dataset=dataset, original_accuracy=zoo_result["test_accuracy"],
        canonical_accuracy=canonical["test_accuracy"], original_weights=np.asarray(flatten_zoo(zoo_result["variables"])),
        canonical_weights=np.asarray(weights), generated_weights=samples["weights"],
        generated_accuracy=generated_accuracy, flow=flow, weight_space=weight_space, timings=stages.timings,
    )
    report.write(workdir, result)
    return result
