"""The DeepWeightFlow pipeline: zoo -> canonical zoo -> flow -> samples -> report.

Each stage is saved under the workdir and loaded instead of recomputed when
the same config runs again. This module holds zoos in memory; with zoo.on_disk
the zoo-sized arrays live in files instead (dwf_jax.pipeline_on_disk).
"""

import pathlib
import shutil
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dwf_jax import pca, pipeline_on_disk, report
from dwf_jax.canonical import align_models
from dwf_jax.config import pca_components, validate_config
from dwf_jax.data import Dataset, load_dataset
from dwf_jax.checkpoints import CheckpointError
from dwf_jax.ensemble import architecture_mismatch, check_finite
from dwf_jax.flatten import flatten_zoo, unflattener, unstack
from dwf_jax.flow_stage import sample_stage, train_flow_stage
from dwf_jax.models import build_model, permutation_spec
from dwf_jax.stages import Evaluator, PyTree, Stages, evaluator, expected_zoo, recalibrate_stage, train_chunks
from dwf_jax.workdir import check_config, locked, record_config


def train_zoo_stage(
    config: ml_collections.ConfigDict, dataset: Dataset, evaluate: Evaluator, workdir: pathlib.Path, progress: bool
) -> PyTree:
    """All models, chunk by chunk, then their test accuracy."""
    variables = jax.tree.map(lambda *leaves: np.concatenate(leaves), *train_chunks(config, dataset, workdir, progress))
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
    logging.info("data %s: %d train / %d test from %s", dataset.name, len(dataset.x_train), len(dataset.x_test), dataset.source)
    if config.zoo.on_disk:
        return pipeline_on_disk.run_stages(config, dataset, workdir, progress)
    stages = Stages(workdir)
    model = build_model(config.model)
    evaluate = evaluator(config, model, dataset)

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
    generated_accuracy = {"as_generated": stages.accuracy("eval_generated", lambda: evaluate(generated))}
    if "batch_stats" in generated and config.bn.recalibrate:
        statistics = stages.run("bn_stats", lambda: recalibrate_stage(config, model, generated, dataset))
        generated_accuracy["bn_recalibrated"] = stages.accuracy("eval_recalibrated", lambda: evaluate({**generated, **statistics}))
    result = report.build_report(
        config=config, dataset=dataset, original_accuracy=zoo_result["test_accuracy"],
        canonical_accuracy=canonical["test_accuracy"], distances=report.distances_in_memory(
            config.canonical.reference, np.asarray(flatten_zoo(zoo_result["variables"])), np.asarray(weights), samples["weights"]
        ),
        generated_accuracy=generated_accuracy, flow=flow, weight_space=weight_space, timings=stages.timings,
    )
    report.write(workdir, result)
    return result
