"""What each pipeline stage computes, over zoo stores (in memory or files alike).

Stages read zoos through `dwf_jax.zoo_store` a model, a group or a column block
at a time, and write zoo-sized results as files of the workdir (`Workdir.matrix_file`);
what they return is the small part of the stage that orbax keeps.
"""

import itertools
import math
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dwf_jax import baselines, bn_recalibration, keys, pca, processes, torch_layout, weight_files, zoo
from dwf_jax.augment import input_pipeline
from dwf_jax.canonical import align_models
from dwf_jax.config import pca_components, training_count
from dwf_jax.curves import ZooCurves
from dwf_jax.data import Dataset
from dwf_jax.diversity import ColumnRange, Geometry, geometry, weight_quantiles
from dwf_jax.evaluate import ensemble_accuracy, ensemble_predictions, percent_correct
from dwf_jax.models import attention_head_groups, build_model, model_initializer, permutation_spec
from dwf_jax.workdir import Workdir
from dwf_jax.zoo_store import Flattener, NonFiniteWeights, ZooStore, check_finite, concatenate, first_rows, stack

PyTree = Any
Evaluator = Callable[[PyTree], np.ndarray]
# Columns per streamed block when pca.micro_batch is 0: 100 models x 65536 float32 = 26 MB.
DEFAULT_BLOCK = 65536
# A zoo model whose mean loss of an epoch exceeds this many times the loss of guessing has diverged. Large on
# purpose: Adam at a high rate (Iris, rate 10) starts 500x above guessing in epoch 1 and still ends below it.
DIVERGED_LOSS_FACTOR = 1000.0


def block_size(config: ml_collections.ConfigDict) -> int:
    """Columns per streamed block of PCA and distances."""
    return config.pca.micro_batch or DEFAULT_BLOCK


def model_template(config: ml_collections.ConfigDict, dataset: Dataset) -> PyTree:
    """Shapes of one model's variables under this config, without computing them."""
    sample = input_pipeline(dataset.name, config.data.augment).eval(jnp.asarray(dataset.x_train[:1]))
    return jax.eval_shape(lambda: build_model(config.model).init(jax.random.key(0), sample, train=False))


def _on_test_set(function: Callable, config: ml_collections.ConfigDict, dataset: Dataset) -> Callable:
    """`function(model, stacked_variables, ...)` bound to this config's model and the test split."""
    return partial(
        function,
        build_model(config.model),
        x=dataset.x_test,
        y=dataset.y_test,
        batch_size=config.eval.batch_size,
        transform=input_pipeline(dataset.name, config.data.augment).eval,
        models_per_vmap=config.models_per_vmap,
        regression=dataset.regression,
    )


def evaluator(config: ml_collections.ConfigDict, dataset: Dataset) -> Evaluator:
    """Test accuracy (percent; Spearman correlation for regression) of every model of a stacked zoo."""
    return _on_test_set(ensemble_accuracy, config, dataset)


def open_stage(
    config: ml_collections.ConfigDict, work: Workdir, stage: str, rows: int, flattener: Flattener
) -> ZooStore:
    """A finished stage's matrix: read into memory, or left in its file with `zoo.on_disk`."""
    return work.open_matrix(stage, rows, flattener.dim, in_memory=not config.zoo.on_disk)


def predictor(config: ml_collections.ConfigDict, dataset: Dataset) -> Callable[[PyTree], tuple]:
    """Which test examples every model of a stacked zoo gets wrong, and its predicted class probabilities."""
    return _on_test_set(ensemble_predictions, config, dataset)


def _stacked_groups(store: ZooStore, flattener: Flattener, group: int, statistics: PyTree) -> Iterator[PyTree]:
    """A store's models as stacked variables, `group` at a time; `statistics` replaces their batch_stats."""
    for number, variables in enumerate(flattener.stacked_groups(store, group)):
        if statistics is not None:
            rows = slice(number * group, (number + 1) * group)
            variables = {**variables, **jax.tree.map(lambda leaf, rows=rows: leaf[rows], statistics)}
        yield variables


def store_accuracy(
    evaluate: Evaluator, store: ZooStore, flattener: Flattener, group: int, statistics: PyTree = None
) -> np.ndarray:
    """Test accuracy of every model of a store, `group` models at a time; `statistics` replaces their batch_stats."""
    return np.concatenate([evaluate(variables) for variables in _stacked_groups(store, flattener, group, statistics)])


def store_evidence(
    predict: Callable[[PyTree], tuple],
    store: ZooStore,
    weights: ZooStore,
    flattener: Flattener,
    group: int,
    statistics: PyTree = None,
) -> dict:
    """What the diversity metrics read of an ensemble: its errors, its predicted class probabilities per test
    example and on average, and the quantiles of `weights` (the same models, canonicalized for the originals; their
    `params` only, as every weight metric)."""
    parts = [predict(variables) for variables in _stacked_groups(store, flattener, group, statistics)]
    probabilities = np.concatenate([probabilities for _, probabilities in parts])
    return {
        "wrong": np.concatenate([wrong for wrong, _ in parts]),
        "class_distribution": probabilities.mean(axis=1, dtype=np.float64),
        "probabilities": probabilities,
        "quantiles": weight_quantiles(ColumnRange(weights, flattener.params_columns())),
    }


def steps_per_epoch(config: ml_collections.ConfigDict, dataset: Dataset) -> int:
    """Minibatches per zoo epoch; a batch the training set cannot fill with `zoo.drop_last` is refused."""
    z, examples = config.zoo, len(dataset.x_train)
    steps = examples // z.batch_size if z.drop_last else -(-examples // z.batch_size)
    if steps == 0:
        raise ValueError(
            f"zoo.batch_size={z.batch_size} with zoo.drop_last leaves no step per epoch: {dataset.name} has only "
            f"{examples} training examples; lower zoo.batch_size"
        )
    return steps


def guessing_loss(dataset: Dataset) -> float:
    """The loss of a model that knows nothing: uniform over the classes, or a score of 0 (squared error)."""
    if dataset.regression:
        return max(float(np.mean(np.square(dataset.y_train, dtype=np.float64))), 1e-6)
    return math.log(dataset.num_classes)


def train_chunks(
    config: ml_collections.ConfigDict, dataset: Dataset, work: Workdir, progress: bool, first_model: int = 0
) -> Iterator[PyTree]:
    """The zoo's models `first_model`..N-1, one stacked chunk (numpy leaves) at a time.

    Each chunk checkpoints every `zoo.checkpoint_every` epochs, so an interrupted zoo resumes where it stopped.
    Model i depends only on (seed, i): a zoo can grow from a smaller one by training only the new models.
    Each chunk's training curves go to `Workdir.zoo_curves`.
    """
    model = build_model(config.model)
    z = config.zoo
    steps = steps_per_epoch(config, dataset)
    total_steps = z.epochs * steps
    tx = zoo.make_optimizer(z.optimizer, z.learning_rate, z.weight_decay, z.schedule, total_steps)
    rate = zoo.learning_rate_schedule(z.learning_rate, z.schedule, total_steps)
    for indices in zoo.chunks(z.num_models - first_model, z.models_per_chunk):
        indices = indices + first_model
        with ZooCurves(work.zoo_curves(indices[0], indices[-1]), rate, steps) as curves:
            variables, _ = zoo.train_models(
                model,
                tx,
                dataset.x_train,
                dataset.y_train,
                seed=config.seed,
                model_indices=indices,
                epochs=z.epochs,
                init=model_initializer(config.model),
                batch_size=z.batch_size,
                inputs=input_pipeline(dataset.name, config.data.augment),
                drop_last=z.drop_last,
                models_per_vmap=config.models_per_vmap,
                scan_steps=z.scan_steps,
                saves=work.zoo_checkpoints(indices),
                checkpoint_every=z.checkpoint_every,
                progress=progress,
                regression=dataset.regression,
                max_loss=DIVERGED_LOSS_FACTOR * guessing_loss(dataset),
                compute_dtype=z.compute_dtype,
                on_epoch=curves,
            )
        yield jax.tree.map(np.asarray, variables)


def train_zoo(
    config: ml_collections.ConfigDict,
    dataset: Dataset,
    flattener: Flattener,
    evaluate: Evaluator,
    work: Workdir,
    progress: bool,
    reused: tuple[ZooStore, np.ndarray] | None = None,
) -> PyTree:
    """Train the zoo chunk by chunk into its file (one chunk in memory), each chunk checked and evaluated first.

    `reused`: the first models (a store and their accuracies) of a smaller zoo with the same settings.
    """
    first_model = 0 if reused is None else reused[0].num_models
    accuracies = [] if reused is None else [reused[1]]

    def rows() -> Iterator[np.ndarray]:
        for chunk in train_chunks(config, dataset, work, progress, first_model):
            check_finite(chunk, "zoo training", "Lower zoo.learning_rate, or check the data.")
            accuracies.append(evaluate(chunk))
            yield from flattener.rows(chunk)

    reused_rows = () if reused is None else (reused[0].read(index) for index in range(first_model))
    try:
        work.write_matrix("zoo", itertools.chain(reused_rows, rows()), keep=False)
    except (zoo.ZooDiverged, NonFiniteWeights) as error:
        work.remove_zoo_chunks()  # made with the diverging settings: they would only block a rerun with a lower rate
        raise type(error)(
            f"{error}; this zoo's training checkpoints were removed: rerun to train from the start"
        ) from None
    return {"test_accuracy": np.concatenate(accuracies)}


def imported_files(config: ml_collections.ConfigDict) -> list:
    """The first zoo.num_models weight files of zoo.source, in natural order."""
    files, wanted = weight_files.zoo_files(config.zoo.source), config.zoo.num_models
    if len(files) < wanted:
        raise weight_files.WeightFileError(
            f"zoo.source={config.zoo.source} holds {len(files)} weight files; zoo.num_models={wanted} needs as many"
        )
    return files[:wanted]


def _imported_model(config: ml_collections.ConfigDict, path: Any, template: PyTree) -> PyTree:
    try:
        return torch_layout.from_state_dict(config.model, weight_files.read_state_dict(path), template)
    except torch_layout.LayoutMismatch as error:
        raise torch_layout.LayoutMismatch(f"{path}: {error}") from None


def import_zoo(
    config: ml_collections.ConfigDict, dataset: Dataset, flattener: Flattener, evaluate: Evaluator, work: Workdir
) -> PyTree:
    """The zoo stage from zoo.source's files (PyTorch layout) instead of training, each group checked and evaluated."""
    template = model_template(config, dataset)
    files, accuracies = imported_files(config), []

    def rows() -> Iterator[np.ndarray]:
        for start in range(0, len(files), config.zoo.models_per_chunk):
            models = [
                _imported_model(config, path, template) for path in files[start : start + config.zoo.models_per_chunk]
            ]
            stacked = stack(models)
            check_finite(stacked, f"the imported zoo {config.zoo.source}", "Check the files, or retrain those nets.")
            accuracies.append(evaluate(stacked))
            yield from flattener.rows(stacked)

    work.write_matrix("zoo", rows(), keep=False)
    return {"test_accuracy": np.concatenate(accuracies)}


def canonicalize(
    config: ml_collections.ConfigDict, zoo_store: ZooStore, flattener: Flattener, evaluate: Evaluator, work: Workdir
) -> PyTree:
    """Alignment of every model to the reference (Git Re-Basin or TransFusion), model by model into its file."""
    models = flattener.models(zoo_store)
    if config.canonical.method != "none":
        reference = flattener.unflatten(zoo_store.read(config.canonical.reference))
        key = keys.stage_key(config.seed, "canonical")
        models = align_models(
            key,
            permutation_spec(config.model),
            reference,
            models,
            config.canonical.reference,
            config.canonical.max_iter,
            attention_head_groups(config.model) if config.canonical.method == "transfusion" else (),
        )
    canonical = work.write_matrix("canonical", map(flattener.flatten, models))
    return {"test_accuracy": store_accuracy(evaluate, canonical, flattener, config.zoo.models_per_chunk)}


def training_part(config: ml_collections.ConfigDict, store: ZooStore) -> ZooStore:
    """The models of a zoo store that anything is fitted on: all but the held-out last ones (`zoo.held_out`)."""
    return first_rows(store, training_count(config))


def reduce(config: ml_collections.ConfigDict, canonical: ZooStore, work: Workdir) -> PyTree:
    """The PCA stage, fitted on the training models only: components to their file; mean, variances and the training
    models' coefficients kept by the stage."""
    p = config.pca
    state, coefficients = pca.fit_transform(
        p.method,
        training_part(config, canonical),
        pca_components(config),
        block_size(config),
        batch_size=p.batch_size,
        fp16=p.fp16,
        solver=p.solver,
        key=keys.stage_key(config.seed, "pca"),
        components_path=work.matrix_file("pca") if processes.is_writer() else None,
    )
    return {
        "mean": np.asarray(state.mean),
        "explained_variance": np.asarray(state.explained_variance),
        "coefficients": coefficients,
    }


def pca_state(config: ml_collections.ConfigDict, work: Workdir, fitted: PyTree, flattener: Flattener) -> pca.PCAState:
    """The PCA of a finished pca stage: its mean and variances, the components from their file."""
    components = open_stage(config, work, "pca", pca_components(config), flattener).as_array()
    return pca.PCAState(fitted["mean"], components, fitted["explained_variance"])


def recalibrate(config: ml_collections.ConfigDict, dataset: Dataset, store: ZooStore, flattener: Flattener) -> PyTree:
    """BatchNorm statistics of every model of a store, re-estimated on training data (test data if asked: it leaks)."""
    model = build_model(config.model)
    images = dataset.x_train if config.bn.data == "train" else dataset.x_test
    key = keys.stage_key(config.seed, "bn_calibration")
    batches = bn_recalibration.calibration_batches(key, images, config.bn.num_batches, config.bn.batch_size)
    inputs = input_pipeline(dataset.name, config.data.augment).eval(jnp.asarray(batches))
    parts = [
        bn_recalibration.recalibrate(model, variables, inputs, config.models_per_vmap)["batch_stats"]
        for variables in flattener.stacked_groups(store, config.zoo.models_per_chunk)
    ]
    return {"batch_stats": concatenate(parts)}


def average_size(config: ml_collections.ConfigDict) -> int:
    """Originals per average (Zeng et al.'s K): a zoo smaller than `baselines.average_of` averages all its models."""
    return min(config.baselines.average_of, config.zoo.num_models)


def ensemble_size(config: ml_collections.ConfigDict) -> int:
    """Models of each noise, average and (by default) Gaussian ensemble: `baselines.num_models`, 0 for the zoo's."""
    return config.baselines.num_models or config.zoo.num_models


def gaussian_count(config: ml_collections.ConfigDict) -> int:
    """Models drawn from the zoo's per-weight Gaussian: `baselines.gaussian`, -1 for as many as the other ensembles."""
    return ensemble_size(config) if config.baselines.gaussian == -1 else config.baselines.gaussian


def baseline_groups(config: ml_collections.ConfigDict) -> list[tuple[str, int]]:
    """(name, number of models) of each baseline ensemble, in the order of the baselines stage's rows.

    Every ensemble but the mixtures has `ensemble_size` models (by default as many as the zoo).
    """
    b, num_models = config.baselines, ensemble_size(config)
    groups = [(f"noise_std_{std:g}", num_models) for std in b.noise_stds]
    groups += [(f"mixtures_of_{b.mix}", b.mixtures)] if b.mixtures else []
    groups += [(f"average_of_{average_size(config)}", num_models)] if b.average_of else []
    return groups + ([("gaussian", gaussian_count(config))] if gaussian_count(config) else [])


def baseline_ensembles(
    config: ml_collections.ConfigDict,
    dataset: Dataset,
    canonical: ZooStore,
    flattener: Flattener,
    predict: Callable[[PyTree], tuple],
    work: Workdir,
    recalibrate_bn: bool,
) -> PyTree:
    """Every baseline ensemble into one file (rows in `baseline_groups` order), evaluated like the generated one.

    Noise and the Gaussian move the `params` columns only; each ensemble's BatchNorm statistics are then
    recalibrated like every other ensemble's when `recalibrate_bn`.
    """
    b, key = config.baselines, keys.stage_key(config.seed, "baselines")
    params, num_models, count = flattener.params_columns(), canonical.num_models, ensemble_size(config)
    parts = [
        baselines.noisy(first_rows(canonical, count), std, jax.random.fold_in(key, number), params)
        for number, std in enumerate(b.noise_stds)
    ]
    if b.mixtures:
        plan = baselines.mixture_plan(
            jax.random.fold_in(key, len(b.noise_stds)), canonical.num_models, b.mixtures, b.mix
        )
        parts.append(baselines.mixtures(canonical, *plan))
    if b.average_of:
        chosen = baselines.subsets(
            jax.random.fold_in(key, len(b.noise_stds) + 1), num_models, count, average_size(config)
        )
        parts.append(baselines.averages(canonical, chosen))
    if gaussian_count(config):
        moments = baselines.coordinate_moments(canonical, block_size(config))
        draws = jax.random.fold_in(key, len(b.noise_stds) + 2)
        parts.append(baselines.gaussian(moments, gaussian_count(config), draws, params))
    store = work.write_matrix("baselines", itertools.chain(*parts))
    statistics = recalibrate(config, dataset, store, flattener) if recalibrate_bn else None
    group = config.zoo.models_per_chunk
    evidence = store_evidence(predict, store, store, flattener, group, statistics)
    score = percent_correct(evidence["wrong"])
    if dataset.regression:  # the errors are errors of sign; the score is Spearman's, as for every other ensemble
        score = store_accuracy(evaluator(config, dataset), store, flattener, group, statistics)
    return {"accuracy": score, **evidence}


def baseline_geometry(
    config: ml_collections.ConfigDict, canonical: ZooStore, store: ZooStore, flattener: Flattener
) -> Geometry:
    """Distances and cosines among the canonical originals then every baseline model, over their `params` columns."""
    params = flattener.params_columns()
    return geometry(ColumnRange(canonical, params), ColumnRange(store, params), block_size(config))
