"""The DeepWeightFlow pipeline: zoo -> canonical zoo -> (PCA) -> flow -> samples -> evaluations -> report.

One sequence of stages over zoo stores: `zoo.on_disk` only picks whether the
zoo-sized matrices are read into memory (`MemoryZoo`) or a piece at a time from
their files (`FileZoo`); what every stage saves is the same either way. Each
stage is saved under the workdir and loaded instead of recomputed when the same
config runs again.
"""

import pathlib
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dwf_jax import diversity, keys, pca, processes, report, stages
from dwf_jax.config import pca_components, training_count
from dwf_jax.data import Dataset, load_configured
from dwf_jax.evaluate import percent_correct, zoo_distances
from dwf_jax.flow import Source
from dwf_jax.flow_stage import flow_source, sample_flow, train_flow_stage
from dwf_jax.pretrained import checkpoint_file
from dwf_jax.session import opened
from dwf_jax.settings import PRETRAINED_FILES, SOURCE_FILES, stage_settings
from dwf_jax.sharding import split_models
from dwf_jax.validation import validate_config
from dwf_jax.weight_files import checksums
from dwf_jax.workdir import Workdir
from dwf_jax.zoo_store import Flattener, MemoryZoo, ZooStore, check_finite, write_rows


class WeightSpace(NamedTuple):
    """Where the flow lives: the zoo as the flow sees it, and the way back to full weights."""

    description: str
    data: np.ndarray  # (N, k): the zoo in this space
    write_weights: Callable[[np.ndarray, pathlib.Path], ZooStore]  # (M, k) samples -> (M, D) weight file
    held_out: Callable[[], np.ndarray]  # the held-out models (zoo.held_out) in this space, for early stopping


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, with where it stopped; the same command resumes it."""


def workdir_for(config: ml_collections.ConfigDict, dataset: Dataset, workdir: pathlib.Path) -> Workdir:
    """The workdir whose new stages record this config's settings (`Workdir.check` compares finished ones)."""
    files = {}
    if config.zoo.source:
        files[SOURCE_FILES] = checksums(stages.imported_files(config))
    if config.model.get("pretrained"):
        files[PRETRAINED_FILES] = checksums([checkpoint_file(config.model.pretrained)])
    return Workdir(workdir, stage_settings(config, dataset.fingerprint(), files))


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path, progress: bool = True) -> dict:
    """Run (or resume) every stage in `workdir` and return the report.

    The config and the data are refused before the first write, the workdir's stages under its lock (`opened`).
    """
    validate_config(config)
    dataset = load_configured(config.data)
    stages.steps_per_epoch(config, dataset)
    work = workdir_for(config, dataset, workdir)
    with opened([work], [config]), split_models(config.num_devices):
        try:
            return run_stages(config, dataset, work, progress and processes.is_writer())
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted during stage {work.running} in {workdir}; finished stages and training checkpoints "
                "are kept: run the same command to resume"
            ) from None


def weight_space(
    config: ml_collections.ConfigDict, canonical: ZooStore, flattener: Flattener, work: Workdir
) -> WeightSpace:
    """Full weights (the identity space, pca.method none) or the PCA stage's coefficients, of the training models."""
    if config.pca.method == "none":
        training = stages.training_part(config, canonical)
        return WeightSpace(
            f"full weights (D={canonical.dim})",
            training.rows(0, training.num_models),
            lambda samples, path: write_rows(path, samples),
            lambda: canonical.rows(training.num_models, canonical.num_models),
        )
    fitted = work.run("pca", lambda: stages.reduce(config, canonical, work))
    num_components = pca_components(config)
    state = stages.pca_state(config, work, fitted, flattener)
    return WeightSpace(
        f"{config.pca.method} PCA, {num_components} components of D={canonical.dim}",
        fitted["coefficients"],
        lambda samples, path: pca.inverse_transform_to_file(state, samples, path, stages.block_size(config)),
        lambda: held_out_coefficients(config, state, canonical),
    )


def held_out_coefficients(config: ml_collections.ConfigDict, state: pca.PCAState, canonical: ZooStore) -> np.ndarray:
    """The held-out models' PCA coefficients, streamed over column blocks as the fit is (no (k, D) on a device)."""
    held_out = MemoryZoo(canonical.rows(training_count(config), canonical.num_models))
    return pca.transform_streaming(
        state, held_out.columns, held_out.num_models, held_out.dim, stages.block_size(config)
    )


def generate(
    config: ml_collections.ConfigDict,
    flow_params: dict,
    space: WeightSpace,
    source: Source,
    work: Workdir,
    progress: bool,
) -> dict:
    """Sample the ensemble in the flow's space and write its full weights; a diverged flow is an error.

    `sample.num_samples` models from the 'sample' stream: `dwf_jax.Generator.sample` with that key and count
    draws the same bits."""
    key, count = keys.stage_key(config.seed, "sample"), config.sample.num_samples
    samples = sample_flow(config, flow_params, space.data.shape[1], source, key, count, progress)
    advice = (
        f"The flow diverged: delete {work.stage('flow')} and {work.flow_checkpoints}, "
        "and retrain with a lower flow.learning_rate."
    )
    check_finite(samples, "generated weights", advice)
    if processes.is_writer():
        space.write_weights(samples, work.matrix_file("samples"))
    return {"samples": samples}


def canonical_zoo(
    config: ml_collections.ConfigDict,
    dataset: Dataset,
    work: Workdir,
    flattener: Flattener,
    evaluate: stages.Evaluator,
    progress: bool,
) -> tuple[dict, ZooStore, dict, ZooStore]:
    """The zoo and canonical stages (run or loaded) and their stores: what every flow is trained from."""
    num_models = config.zoo.num_models
    if config.zoo.source:
        zoo_stage = work.run("zoo", lambda: stages.import_zoo(config, dataset, flattener, evaluate, work))
    else:
        zoo_stage = work.run("zoo", lambda: stages.train_zoo(config, dataset, flattener, evaluate, work, progress))
    work.remove_zoo_chunks()
    original = stages.open_stage(config, work, "zoo", num_models, flattener)
    canonical_stage = work.run("canonical", lambda: stages.canonicalize(config, original, flattener, evaluate, work))
    return zoo_stage, original, canonical_stage, stages.open_stage(config, work, "canonical", num_models, flattener)


def run_stages(config: ml_collections.ConfigDict, dataset: Dataset, work: Workdir, progress: bool) -> dict:
    """Run (or resume) every stage in `work` and write the report."""
    logging.info(
        "data %s: %d train / %d test from %s", dataset.name, len(dataset.x_train), len(dataset.x_test), dataset.source
    )
    template = stages.model_template(config, dataset)
    flattener = Flattener(template)
    evaluate = stages.evaluator(config, dataset)
    group = config.zoo.models_per_chunk
    zoo_stage, original, canonical_stage, canonical = canonical_zoo(
        config, dataset, work, flattener, evaluate, progress
    )
    space = weight_space(config, canonical, flattener, work)
    saves = work.training_checkpoints("flow", work.flow_checkpoints)
    source = flow_source(config, template)
    flow = work.run(
        "flow",
        lambda: train_flow_stage(
            config,
            jnp.asarray(space.data),
            source,
            saves,
            progress,
            curves=work.flow_curves,
            held_out=jnp.asarray(space.held_out()) if config.flow.early_stopping else None,
        ),
    )
    work.run("samples", lambda: generate(config, flow["params"], space, source, work, progress))
    generated = stages.open_stage(config, work, "samples", config.sample.num_samples, flattener)

    statistics, recalibrate_bn = None, "batch_stats" in template and config.bn.recalibrate
    if recalibrate_bn:
        statistics = work.run("bn_stats", lambda: stages.recalibrate(config, dataset, generated, flattener))
    predict = stages.predictor(config, dataset)
    evidence = work.run(
        "diversity",
        lambda: {
            "original": stages.store_evidence(predict, original, canonical, flattener, group),
            "generated": stages.store_evidence(predict, generated, generated, flattener, group, statistics),
        },
    )
    # The originals' evidence depends on the zoo and its canonical form only: the stage keeps the canonical settings.
    within_zoo = work.run(
        "zoo_diversity", lambda: diversity.within(diversity.Evidence(**evidence["original"]), progress)
    )
    # Scored from the diversity evidence where it saw the same ensemble, so each ensemble is evaluated once: only
    # the accuracy before BN recalibration and regression's Spearman correlation need an evaluation of their own.
    accuracy = {
        "as_generated": work.accuracy(
            "eval_generated",
            lambda: (
                stages.store_accuracy(evaluate, generated, flattener, group)
                if recalibrate_bn or dataset.regression
                else percent_correct(evidence["generated"]["wrong"])
            ),
        )
    }
    if recalibrate_bn:
        accuracy["bn_recalibrated"] = work.accuracy(
            "eval_recalibrated",
            lambda: (
                stages.store_accuracy(evaluate, generated, flattener, group, statistics)
                if dataset.regression
                else percent_correct(evidence["generated"]["wrong"])
            ),
        )
    baseline_groups, compared = stages.baseline_groups(config), None
    if baseline_groups:
        baselines = work.run(
            "baselines",
            lambda: stages.baseline_ensembles(config, dataset, canonical, flattener, predict, work, recalibrate_bn),
        )
        store = stages.open_stage(config, work, "baselines", sum(count for _, count in baseline_groups), flattener)
        compared = report.Baselines(
            baseline_groups, baselines, stages.baseline_geometry(config, canonical, store, flattener)
        )
    work.running = "report"
    result = report.build_report(
        config=config,
        dataset=dataset,
        original_accuracy=zoo_stage["test_accuracy"],
        canonical_accuracy=canonical_stage["test_accuracy"],
        distances=zoo_distances(
            config.canonical.reference,
            original,
            canonical,
            generated,
            stages.block_size(config),
            flattener.params_columns(),
        ),
        generated_accuracy=accuracy,
        evidence=evidence,
        within_zoo=within_zoo,
        baselines=compared,
        flow=flow,
        weight_space=space.description,
        timings=work.timings,
    )
    processes.writer_does(lambda: report.write(result, work.report, work.figure, work.diversity_figure))
    return result
