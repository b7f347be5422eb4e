"""The pipeline for zoos that do not fit in memory (config.zoo.on_disk).

The zoo, the canonical zoo, the PCA components and the generated weights are raw
float32 files beside the stage dirs (zoo.f32, canonical.f32, pca_components.f32,
generated.f32); stages read them a model, a group of models or a column block at a
time. A stage dir is written only after its file is complete, so "stage dir
exists" still means "done". The flow trains on the (N, k) dual PCA coefficients.
"""

import operator
import pathlib
import shutil
from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.flatten_util import ravel_pytree

from dwf_jax import report
from dwf_jax.canonical import align_models
from dwf_jax.checkpoints import CheckpointError
from dwf_jax.config import pca_components
from dwf_jax.data import Dataset
from dwf_jax.ensemble import check_finite
from dwf_jax.flatten import unstack
from dwf_jax.flow_stage import sample_stage, train_flow_stage
from dwf_jax.models import build_model, permutation_spec
from dwf_jax.pca import PCAState, fit_transform_dual_streaming, inverse_transform_to_file
from dwf_jax.pca.streaming import array_reader, pairwise_distances_streaming, stacked_reader
from dwf_jax.stages import Evaluator, PyTree, Stages, evaluator, expected_zoo, recalibrate_stage, train_chunks
from dwf_jax.zoo_file import ZooFile, read_models, write_zoo

# Columns per streamed block when pca.micro_batch is 0: 100 models x 65536 float32 = 26 MB.
DEFAULT_BLOCK = 65536
FILES = {"zoo": "zoo.f32", "canonical": "canonical.f32", "pca": "pca_components.f32", "samples": "generated.f32"}
Unflatten = Callable[[np.ndarray], PyTree]


def stage_file(workdir: pathlib.Path, stage: str, rows: int, dim: int) -> ZooFile:
    """The (rows, dim) file of a finished stage, refusing a missing or wrongly sized one."""
    path = workdir / FILES[stage]
    if not path.exists():
        raise CheckpointError(f"{path} is missing but stage {workdir / stage} exists; delete {workdir / stage} to recompute that stage")
    if path.stat().st_size != rows * dim * 4:
        raise CheckpointError(
            f"{path} has {path.stat().st_size} bytes, expected {rows} x {dim} float32 (truncated, or another architecture); "
            f"delete {workdir / stage} to recompute that stage"
        )
    return ZooFile(path, rows, dim)


def groups(zoo: ZooFile, unflatten: Unflatten, size: int) -> Iterator[PyTree]:
    """The zoo's models as stacked groups of `size` (the last may be smaller)."""
    for start in range(0, zoo.num_models, size):
        models = read_models(zoo, unflatten, range(start, min(start + size, zoo.num_models)))
        yield jax.tree.map(lambda *leaves: np.stack(leaves), *models)


def accuracy(evaluate: Evaluator, zoo: ZooFile, unflatten: Unflatten, size: int) -> np.ndarray:
    """Test accuracy of every model of a zoo file, evaluated `size` models at a time."""
    return np.concatenate([evaluate(group) for group in groups(zoo, unflatten, size)])


def train_zoo_stage(config: ml_collections.ConfigDict, dataset: Dataset, evaluate: Evaluator, workdir: pathlib.Path, progress: bool) -> PyTree:
    """Train chunk by chunk straight into zoo.f32: one chunk in memory, checked and evaluated before it is written."""
    accuracies = []

    def models() -> Iterator[PyTree]:
        for chunk in train_chunks(config, dataset, workdir, progress):
            check_finite(chunk, "zoo training", "Lower zoo.learning_rate, or check the data.")
            accuracies.append(evaluate(chunk))
            yield from (unstack(chunk, index) for index in range(len(accuracies[-1])))

    write_zoo(workdir / FILES["zoo"], models())
    return {"test_accuracy": np.concatenate(accuracies)}


def canonicalize_stage(config: ml_collections.ConfigDict, zoo: ZooFile, unflatten: Unflatten, evaluate: Evaluator, workdir: pathlib.Path) -> PyTree:
    """Git Re-Basin alignment model by model from zoo.f32 into canonical.f32 (a plain copy with canonical.method none)."""
    models = read_models(zoo, unflatten)
    if config.canonical.method == "rebasin":
        key = jax.random.fold_in(jax.random.key(config.seed), 1)
        reference = unflatten(zoo.read(config.canonical.reference))
        models = align_models(key, permutation_spec(config.model), reference, models, config.canonical.reference, config.canonical.max_iter)
    canonical = write_zoo(workdir / FILES["canonical"], models)
    return {"test_accuracy": accuracy(evaluate, canonical, unflatten, config.zoo.models_per_chunk)}


def pca_stage(config: ml_collections.ConfigDict, canonical: ZooFile, block: int, workdir: pathlib.Path) -> PyTree:
    """Streamed dual PCA; the components go to pca_components.f32, the stage keeps mean, variances and the zoo's coefficients."""
    p = config.pca
    state, coefficients = fit_transform_dual_streaming(
        canonical.columns(), canonical.num_models, canonical.dim, pca_components(config), block, p.fp16, p.solver,
        components_path=workdir / FILES["pca"],
    )
    return {"mean": state.mean, "explained_variance": state.explained_variance, "coefficients": coefficients}


def generate(config: ml_collections.ConfigDict, flow_params: PyTree, state: PCAState, block: int, workdir: pathlib.Path, progress: bool) -> PyTree:
    """Sample coefficients and write their weights to generated.f32; a diverged flow is an error, not a silent report."""
    coefficients = np.asarray(sample_stage(config, flow_params, state.components.shape[0], progress))
    check_finite(coefficients, "generated weights", f"The flow diverged: delete {workdir / 'flow'} and retrain with a lower flow.learning_rate.")
    inverse_transform_to_file(state, coefficients, workdir / FILES["samples"], block)
    return {"coefficients": coefficients}


def recalibrate_groups(config: ml_collections.ConfigDict, model: nn.Module, generated: ZooFile, unflatten: Unflatten, dataset: Dataset) -> PyTree:
    """BatchNorm statistics of every generated model, re-estimated a group at a time (all of them together are small)."""
    parts = [recalibrate_stage(config, model, group, dataset) for group in groups(generated, unflatten, config.zoo.models_per_chunk)]
    return jax.tree.map(lambda *leaves: np.concatenate([np.asarray(leaf) for leaf in leaves]), *parts)


def recalibrated_accuracy(
    evaluate: Evaluator, generated: ZooFile, unflatten: Unflatten, statistics: PyTree, size: int
) -> np.ndarray:
    """Test accuracy of the generated models with their recalibrated BatchNorm statistics."""
    parts = []
    for number, group in enumerate(groups(generated, unflatten, size)):
        rows = operator.itemgetter(slice(number * size, (number + 1) * size))
        parts.append(evaluate({**group, **jax.tree.map(rows, statistics)}))
    return np.concatenate(parts)


def distances(reference: int, original: ZooFile, canonical: ZooFile, generated: ZooFile, block: int) -> report.Distances:
    """The report's distances, streamed over column blocks; generate() refused non-finite models, so all count."""
    num_models, dim = canonical.num_models, canonical.dim
    before = pairwise_distances_streaming(
        stacked_reader(array_reader(original.read(reference)[None]), original.columns()), num_models + 1, dim, block, num_targets=1
    )
    together = pairwise_distances_streaming(
        stacked_reader(canonical.columns(), generated.columns()), num_models + generated.num_models, dim, block, num_targets=num_models
    )
    return report.Distances(
        num_params=dim, to_reference_before=before[1:, 0], to_reference_after=together[:num_models, reference], num_nonfinite=0,
        generated_to_canonical=together[num_models:], canonical_to_canonical=together[:num_models],
    )


def run_stages(config: ml_collections.ConfigDict, dataset: Dataset, workdir: pathlib.Path, progress: bool) -> dict:
    """Run (or resume) every stage with the zoo-sized arrays in files, and write the report."""
    stages = Stages(workdir)
    model = build_model(config.model)
    evaluate = evaluator(config, model, dataset)
    template = jax.tree.map(lambda leaf: np.zeros(leaf.shape[1:], leaf.dtype), expected_zoo(config, model, dataset))
    flat, unflatten = ravel_pytree(template)
    num_models, dim, group, block = config.zoo.num_models, flat.size, config.zoo.models_per_chunk, config.pca.micro_batch or DEFAULT_BLOCK

    zoo_result = stages.run("zoo", lambda: train_zoo_stage(config, dataset, evaluate, workdir, progress))
    shutil.rmtree(workdir / "zoo_chunks", ignore_errors=True)
    zoo = stage_file(workdir, "zoo", num_models, dim)
    canonical_result = stages.run("canonical", lambda: canonicalize_stage(config, zoo, unflatten, evaluate, workdir))
    canonical = stage_file(workdir, "canonical", num_models, dim)

    fitted = stages.run("pca", lambda: pca_stage(config, canonical, block, workdir))
    num_components = pca_components(config)
    components = np.memmap(stage_file(workdir, "pca", num_components, dim).path, np.float32, mode="r", shape=(num_components, dim))
    state = PCAState(fitted["mean"], components, fitted["explained_variance"])
    flow = stages.run("flow", lambda: train_flow_stage(config, jnp.asarray(fitted["coefficients"]), workdir, progress))
    stages.run("samples", lambda: generate(config, flow["params"], state, block, workdir, progress))
    generated = stage_file(workdir, "samples", config.sample.num_samples, dim)

    generated_accuracy = {"as_generated": stages.accuracy("eval_generated", lambda: accuracy(evaluate, generated, unflatten, group))}
    if "batch_stats" in template and config.bn.recalibrate:
        statistics = stages.run("bn_stats", lambda: recalibrate_groups(config, model, generated, unflatten, dataset))
        generated_accuracy["bn_recalibrated"] = stages.accuracy(
            "eval_recalibrated", lambda: recalibrated_accuracy(evaluate, generated, unflatten, statistics, group)
        )
    result = report.build_report(
        config=config, dataset=dataset, original_accuracy=zoo_result["test_accuracy"], canonical_accuracy=canonical_result["test_accuracy"],
        distances=distances(config.canonical.reference, zoo, canonical, generated, block), generated_accuracy=generated_accuracy,
        flow=flow, weight_space=f"dual PCA, {num_components} components of D={dim}", timings=stages.timings,
    )
    report.write(workdir, result)
    return result
