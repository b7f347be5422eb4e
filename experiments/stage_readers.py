"""Experiment helpers that read a finished workdir's stages, for zoos in memory and on disk alike.

They hold the workdir as a run does (`dwf_jax.session.opened`: locked, every stage verified against this config).
"""

import pathlib
import tempfile

import ml_collections
import numpy as np

from dwf_jax import durable, evaluate, pca, pipeline, stages
from dwf_jax.data import load_configured
from dwf_jax.session import opened
from dwf_jax.zoo_store import Flattener, groups


def recalibrated_original_accuracy(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """The zoo of `workdir` with its BatchNorm statistics re-estimated from the batches the generated models used."""
    dataset = load_configured(config.data)
    flattener = Flattener(stages.model_template(config, dataset))
    work = pipeline.workdir_for(config, dataset, workdir)
    with opened([work], record=False):
        zoo = stages.open_stage(config, work, "zoo", config.zoo.num_models, flattener)
        statistics = stages.recalibrate(config, dataset, zoo, flattener)
        accuracy = stages.store_accuracy(
            stages.evaluator(config, dataset), zoo, flattener, config.zoo.models_per_chunk, statistics
        )
    return evaluate.summary(accuracy)


def reconstructed_zoo_accuracy(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """The canonical zoo after a PCA round trip, BN recalibrated like the generated nets: what truncation alone costs.

    A stage of the workdir, so a rerun only reads it.
    """
    dataset = load_configured(config.data)
    work = pipeline.workdir_for(config, dataset, workdir)
    work.settings["reconstructed_zoo"] = work.settings["pca"]
    flattener = Flattener(stages.model_template(config, dataset))

    def compute() -> dict:
        canonical = stages.open_stage(config, work, "canonical", config.zoo.num_models, flattener)
        fitted = work.load("pca")
        state = stages.pca_state(config, work, fitted, flattener)
        with tempfile.TemporaryDirectory(prefix=f".rebuilt{durable.TEMPORARY_MARK}", dir=workdir) as scratch:
            rebuilt = pca.inverse_transform_to_file(
                state, fitted["coefficients"], pathlib.Path(scratch) / "rebuilt.f32", stages.block_size(config)
            )
            squared = [
                (np.sum((a - b) ** 2), np.sum(b**2))
                for a, b in zip(groups(rebuilt, 8), groups(canonical, 8), strict=False)
            ]
            statistics = stages.recalibrate(config, dataset, rebuilt, flattener)
            accuracy = stages.store_accuracy(
                stages.evaluator(config, dataset), rebuilt, flattener, config.zoo.models_per_chunk, statistics
            )
        error, norm = np.sum(squared, axis=0)
        return {"accuracy": accuracy, "relative_error": np.sqrt(error / norm)}

    with opened([work], record=False):
        result = work.run("reconstructed_zoo", compute)
    return {
        "accuracy_bn_recalibrated": evaluate.summary(result["accuracy"]),
        "relative_error": float(result["relative_error"]),
    }
