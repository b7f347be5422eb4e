"""`validate_config`: a bad config becomes one clear error naming the key, before any work starts.

One validator per group of keys (structure, data and model, zoo, canonicalization,
PCA, flow, sampling and evaluation, baselines), each reading the choices from the
module that implements them.
"""

import math
from typing import Any

import jax
import ml_collections

from dwf_jax import canonical, flow, pca, zoo
from dwf_jax.bn_recalibration import CALIBRATION_DATA
from dwf_jax.config import (
    INIT_FIELDS,
    MODEL_FIELDS,
    MODEL_NAMES,
    base_config,
    config_as_dict,
    flatten,
    held_out_count,
    model_config,
    training_count,
)
from dwf_jax.data import DATASETS, NUM_CLASSES, SOURCES, TEXT_DATASETS
from dwf_jax.keys import MAX_MODELS
from dwf_jax.models import INIT_SCHEMES, MIXED, attention_head_groups, output_width
from dwf_jax.text import SPECIAL_TOKENS, YELP_VOCAB_SIZE

# The field the attention heads split, per transformer architecture.
TRANSFORMER_WIDTHS = {"vit_small": "dim", "bert": "hidden"}
# Noise scales beyond this are not weights any more: float32 samples overflow long before 1e30.
MAX_NOISE_STD = 100.0
# jax.random.key takes 32 bits of a seed: larger seeds would silently repeat smaller ones' zoos.
SEED_LIMIT = 2**32
# Tokens per text: every example is padded to it (memory grows with it, attention with its square); BERT uses 512.
MAX_TOKENS = 4096


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"invalid config: {message}")


def _check_choice(value: str, choices: tuple[str, ...], key: str) -> None:
    _check(value in choices, f"{key}={value!r} is not one of {list(choices)}")


def _same_kind(value: Any, default: Any) -> bool:
    """JSON kinds of a value and its default agree (an int where a float is expected is fine, a bool is not)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    if isinstance(default, list):
        return isinstance(value, list) and (not default or all(_same_kind(item, default[0]) for item in value))
    if default is None:  # a placeholder: unset or a string
        return value is None or isinstance(value, str)
    return isinstance(value, type(default))


def _validate_structure(config: ml_collections.ConfigDict) -> None:
    """Every key of base_config present with a value of its kind, no key it lacks, every number finite."""
    _check("model" in config and "name" in config.model, "the config has no model.name")
    _check_choice(config.model.name, MODEL_NAMES, "model.name")
    expected = base_config()
    expected.model = model_config(config.model.name)
    expected, given = flatten(config_as_dict(expected)), flatten(config_as_dict(config))
    sections = {key.split(".")[0] for key in given}
    missing = sorted(
        {key if key.split(".")[0] in sections else key.split(".")[0] for key in expected.keys() - given.keys()}
    )
    unknown = sorted(given.keys() - expected.keys())
    _check(not missing, f"missing keys {missing}: configs start from dwf_jax.config.base_config()")
    _check(not unknown, f"unknown keys {unknown} (not in base_config, nor fields of model {config.model.name!r})")
    for key, default in expected.items():
        value = given[key]
        _check(_same_kind(value, default), f"{key}={value!r} should be of the kind of its default {default!r}")
        for number in value if isinstance(value, list) else [value]:
            _check(not isinstance(number, float) or math.isfinite(number), f"{key}={value!r} is not finite")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raise one ValueError naming the first bad key and the accepted values, before any work starts."""
    _validate_structure(config)
    for validate in (_validate_data, _validate_run, _validate_zoo, _validate_canonical, _validate_pca):
        validate(config)
    for validate in (_validate_flow, _validate_sampling, _validate_baselines):
        validate(config)


def _validate_data(config: ml_collections.ConfigDict) -> None:
    """The dataset, the architecture's fields, and that the two fit together."""
    _check_choice(config.data.name, DATASETS, "data.name")
    _check_choice(config.data.source, SOURCES, "data.source")
    _validate_model(config.model)
    _validate_text(config)
    width, classes = output_width(config.model), NUM_CLASSES[config.data.name]
    _check(
        width == classes,
        f"model {config.model.name!r} has {width} outputs but {config.data.name} has {classes} classes"
        + (" (the last of model.features is the output width)" if config.model.name == "mlp" else ""),
    )


def _validate_run(config: ml_collections.ConfigDict) -> None:
    """What every stage shares: the seed and how models spread over vmaps and devices."""
    _check(
        0 <= config.seed < SEED_LIMIT,
        f"seed={config.seed} must be in [0, 2**32): jax keys take 32 bits, so larger seeds repeat smaller ones",
    )
    _check(config.models_per_vmap >= 0, f"models_per_vmap={config.models_per_vmap} must be >= 0 (0 = all)")
    _check(
        0 <= config.num_devices <= jax.device_count(),
        f"num_devices={config.num_devices} must be in [0, {jax.device_count()}] (the devices visible; 0 = all)",
    )


def _validate_zoo(config: ml_collections.ConfigDict) -> None:
    z = config.zoo
    _check(
        2 <= z.num_models < MAX_MODELS,
        f"zoo.num_models={z.num_models}: a zoo needs at least 2 models (and fewer than 2**31)",
    )
    _check(z.epochs >= 1, f"zoo.epochs={z.epochs} must be >= 1")
    _check(z.batch_size >= 1, f"zoo.batch_size={z.batch_size} must be >= 1")
    _check(z.checkpoint_every >= 1, f"zoo.checkpoint_every={z.checkpoint_every} must be >= 1")
    _check(z.models_per_chunk >= 1, f"zoo.models_per_chunk={z.models_per_chunk} must be >= 1")
    _check_choice(z.optimizer, zoo.OPTIMIZERS, "zoo.optimizer")
    _check_choice(z.schedule, zoo.SCHEDULES, "zoo.schedule")
    _check_choice(z.compute_dtype, zoo.COMPUTE_DTYPES, "zoo.compute_dtype")
    _check(z.learning_rate > 0, f"zoo.learning_rate={z.learning_rate} must be > 0")
    _check(z.weight_decay >= 0, f"zoo.weight_decay={z.weight_decay} must be >= 0")
    _check(
        0.0 <= z.held_out < 1.0 and training_count(config) >= 2,
        f"zoo.held_out={z.held_out} must be in [0, 1) and leave at least 2 training models: it holds out the last "
        f"{held_out_count(config)} of zoo.num_models={z.num_models}, leaving {training_count(config)}",
    )


def _validate_canonical(config: ml_collections.ConfigDict) -> None:
    z = config.zoo
    _check_choice(config.canonical.method, canonical.METHODS, "canonical.method")
    _check(
        config.canonical.method != "transfusion" or bool(attention_head_groups(config.model)),
        f"canonical.method='transfusion' matches attention heads; model {config.model.name!r} has none (use rebasin)",
    )
    _check(
        0 <= config.canonical.reference < training_count(config),
        f"canonical.reference={config.canonical.reference} must index a zoo model (0..{z.num_models - 1})"
        if held_out_count(config) == 0
        else f"canonical.reference={config.canonical.reference} must index a training model "
        f"(0..{training_count(config) - 1}; zoo.held_out={z.held_out} holds out the rest)",
    )
    _check(config.canonical.max_iter >= 1, f"canonical.max_iter={config.canonical.max_iter} must be >= 1")


def _validate_pca(config: ml_collections.ConfigDict) -> None:
    z = config.zoo
    _check_choice(config.pca.method, pca.METHODS, "pca.method")
    if config.pca.method != "none":
        most = training_count(config) - 1
        _check(
            config.pca.components == -1 or 1 <= config.pca.components <= most,
            f"pca.components={config.pca.components} must be -1 (all) "
            + (
                f"or in [1, zoo.num_models - 1 = {most}]"
                if held_out_count(config) == 0
                else f"or in [1, training models - 1 = {most}] (zoo.held_out={z.held_out})"
            ),
        )
    _check(
        not z.on_disk or config.pca.method != "none",
        "zoo.on_disk needs pca.method 'dual' or 'incremental' "
        "(the flow cannot hold full weights of a zoo that does not fit in memory)",
    )
    _check(config.pca.batch_size >= 1, f"pca.batch_size={config.pca.batch_size} must be >= 1")
    _check(
        config.pca.micro_batch >= 0,
        f"pca.micro_batch={config.pca.micro_batch} must be >= 0 (0 = the whole zoo at once)",
    )
    _check_choice(config.pca.solver, pca.SOLVERS, "pca.solver")


def _validate_flow(config: ml_collections.ConfigDict) -> None:
    f = config.flow
    _check(
        f.hidden >= 2 and f.hidden % 2 == 0,
        f"flow.hidden={f.hidden} must be even and >= 2 (the middle layer is hidden/2)",
    )
    _check(f.time_embed_dim >= 1, f"flow.time_embed_dim={f.time_embed_dim} must be >= 1")
    _check(0.0 <= f.dropout < 1.0, f"flow.dropout={f.dropout} must be in [0, 1)")
    _check(f.iterations >= 1, f"flow.iterations={f.iterations} must be >= 1")
    _check(f.batch_size >= 1, f"flow.batch_size={f.batch_size} must be >= 1")
    _check(f.steps_per_dispatch >= 1, f"flow.steps_per_dispatch={f.steps_per_dispatch} must be >= 1")
    _check(f.checkpoint_every >= 1, f"flow.checkpoint_every={f.checkpoint_every} must be >= 1")
    _check(f.learning_rate > 0, f"flow.learning_rate={f.learning_rate} must be > 0")
    _check(f.target_noise >= 0, f"flow.target_noise={f.target_noise} must be >= 0 (0: exact targets)")
    _check(f.validate_every >= 1, f"flow.validate_every={f.validate_every} must be >= 1")
    _check(
        not f.early_stopping or f.validate_every < f.iterations,
        f"flow.early_stopping with flow.validate_every={f.validate_every} >= flow.iterations={f.iterations} checks "
        "only the last step: lower flow.validate_every",
    )
    _check(
        not f.early_stopping or held_out_count(config) > 0,
        f"flow.early_stopping needs held-out models to stop on: zoo.held_out={config.zoo.held_out} holds out "
        f"{held_out_count(config)} of {config.zoo.num_models}",
    )
    _check(f.weight_decay >= 0, f"flow.weight_decay={f.weight_decay} must be >= 0")
    _check(
        0 < f.source_std <= MAX_NOISE_STD,
        f"flow.source_std={f.source_std} must be in (0, {MAX_NOISE_STD}] (the paper uses 0.01)",
    )
    _check_choice(f.source, flow.SOURCES, "flow.source")
    _check(
        f.source == "gaussian" or config.pca.method == "none",
        f"flow.source={f.source!r} draws networks in weight space; it needs pca.method='none', "
        f"not {config.pca.method!r}",
    )
    _check(
        f.source == "gaussian" or config.model.name not in TRANSFORMER_WIDTHS,
        f"flow.source={f.source!r} needs every weight to have a Kaiming init; model {config.model.name!r} has "
        "class-token, positional or embedding tables (normal(0.02)): use flow.source='gaussian'",
    )
    _check(0 <= f.sigma <= MAX_NOISE_STD, f"flow.sigma={f.sigma} must be in [0, {MAX_NOISE_STD}]")
    _check_choice(f.time_distribution, flow.TIME_DISTRIBUTIONS, "flow.time_distribution")
    _check(
        len(f.beta) == 2 and min(f.beta) > 0,
        f"flow.beta={tuple(f.beta)} must be two positive numbers (a, b) of a Beta(a, b) time distribution",
    )


def _validate_sampling(config: ml_collections.ConfigDict) -> None:
    """Sampling, BatchNorm recalibration and evaluation."""
    sample = config.sample
    _check(sample.num_samples >= 1, f"sample.num_samples={sample.num_samples} must be >= 1")
    _check(sample.steps >= 1, f"sample.steps={sample.steps} must be >= 1")
    _check_choice(sample.method, flow.ODE_METHODS, "sample.method")
    _check_choice(config.bn.data, CALIBRATION_DATA, "bn.data")
    _check(config.bn.num_batches >= 1 and config.bn.batch_size >= 1, "bn.num_batches and bn.batch_size must be >= 1")
    _check(config.eval.batch_size >= 1, f"eval.batch_size={config.eval.batch_size} must be >= 1")


def _validate_baselines(config: ml_collections.ConfigDict) -> None:
    z = config.zoo
    b = config.baselines
    _check(
        all(0 <= std <= MAX_NOISE_STD for std in b.noise_stds),
        f"baselines.noise_stds={tuple(b.noise_stds)} must each be in [0, {MAX_NOISE_STD}]",
    )
    _check(b.mixtures >= 0, f"baselines.mixtures={b.mixtures} must be >= 0 (0: none)")
    _check(
        2 <= b.mix <= z.num_models,
        f"baselines.mix={b.mix} must be in [2, zoo.num_models = {z.num_models}] (originals per combination)",
    )
    _check(b.average_of >= 0, f"baselines.average_of={b.average_of} must be >= 0 (originals per average; 0: none)")
    _check(
        b.gaussian >= -1, f"baselines.gaussian={b.gaussian} must be >= -1 (models; -1: as many as the other ensembles)"
    )
    _check(
        0 <= b.num_models <= z.num_models,
        f"baselines.num_models={b.num_models} must be in [0, zoo.num_models = {z.num_models}] (0: as many as the zoo)",
    )


def _validate_model(model: ml_collections.ConfigDict) -> None:
    """The values of the architecture's fields (`_validate_structure` checked which fields there are)."""
    if model.name == "mlp":
        _check_choice(model.init_scheme, (*INIT_SCHEMES, MIXED), "model.init_scheme")
        _check(
            len(model.features) >= 1 and min(model.features) >= 1,
            f"model.features={model.features} needs positive widths",
        )
    if model.name in TRANSFORMER_WIDTHS:
        width = TRANSFORMER_WIDTHS[model.name]
        sizes = {key: model[key] for key in MODEL_FIELDS[model.name] if key not in ("dropout", *INIT_FIELDS)}
        _check(min(sizes.values()) >= 1, f"model {sizes} needs positive sizes")
        _check(
            model[width] % model.heads == 0,
            f"model.{width}={model[width]} must be a multiple of model.heads={model.heads}",
        )
        _check(0.0 <= model.dropout < 1.0, f"model.dropout={model.dropout} must be in [0, 1)")
    if model.name == "vit_small":
        _check(32 % model.patch == 0, f"model.patch={model.patch} must divide the 32-pixel image side")


def _validate_text(config: ml_collections.ConfigDict) -> None:
    """Text datasets go with BERT, and the token ids they make must fit its embeddings."""
    text, bert = config.data.name in TEXT_DATASETS, config.model.name == "bert"
    _check(
        text == bert,
        f"data.name={config.data.name!r} needs model bert"
        if text
        else f"model bert needs a text dataset ({', '.join(TEXT_DATASETS)}), not {config.data.name!r}",
    )
    if not text:
        return
    d = config.data
    _check(d.max_tokens >= 3, f"data.max_tokens={d.max_tokens} must be >= 3 ([CLS], a token, [SEP])")
    _check(
        config.model.max_length <= MAX_TOKENS,
        f"model.max_length={config.model.max_length} must be <= {MAX_TOKENS} (every text is padded to its tokens)",
    )
    _check(
        d.max_tokens <= config.model.max_length,
        f"data.max_tokens={d.max_tokens} exceeds model.max_length={config.model.max_length} (its position embeddings)",
    )
    vocabulary = YELP_VOCAB_SIZE if d.name == "yelp" else d.vocab_size
    _check(
        vocabulary <= config.model.vocab_size,
        f"{d.name}'s vocabulary has {vocabulary} tokens, more than model.vocab_size={config.model.vocab_size}",
    )
    _check(d.vocab_size > len(SPECIAL_TOKENS), f"data.vocab_size={d.vocab_size} must exceed the special tokens")
