"""The one home of every knob: `base_config()` and its validation.

configs/*.py start from `base_config()` and override a few fields, in the
style of flax/examples. `validate_config` turns a bad value into one clear
error before any file is touched.
"""

import ml_collections
from ml_collections import config_dict

from dwf_jax import canonical, flow, pca, zoo
from dwf_jax.bn_recalibration import CALIBRATION_DATA
from dwf_jax.data import DATASETS, SOURCES
from dwf_jax.keys import MAX_MODELS
from dwf_jax.models import INIT_SCHEMES, MODEL_FIELDS, MODEL_NAMES, model_config


def base_config() -> ml_collections.ConfigDict:
    """Paper settings shared by every model (Table 14); per-model configs override the rest."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Models vmapped together inside each jitted program (0 = all); lax.map walks the rest.
    config.models_per_vmap = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "iris"
    config.data.dir = config_dict.placeholder(str)  # else $DWF_DATA_DIR
    config.data.source = "auto"  # auto | offline | tfds
    config.data.augment = True  # random crop + flip for image datasets that use it (CIFAR-10)

    config.model = model_config("mlp")  # configs of other architectures replace it with model_config(name)

    config.zoo = ml_collections.ConfigDict()
    config.zoo.num_models = 100
    config.zoo.epochs = 100
    config.zoo.batch_size = 16
    config.zoo.optimizer = "adam"
    config.zoo.learning_rate = 1e-3
    config.zoo.weight_decay = 0.0
    config.zoo.schedule = "none"  # none | cosine
    config.zoo.drop_last = False  # BatchNorm models drop the last partial batch
    config.zoo.models_per_chunk = 100
    config.zoo.checkpoint_every = 1  # epochs
    config.zoo.scan_steps = True  # one lax.scan per epoch; False: one dispatch per minibatch (CNNs on CPU)
    config.zoo.on_disk = False  # zoo-sized arrays as files in the workdir, never all in memory (needs pca.method dual)

    config.canonical = ml_collections.ConfigDict()
    config.canonical.method = "rebasin"
    config.canonical.reference = 0
    config.canonical.max_iter = 100

    config.pca = ml_collections.ConfigDict()
    config.pca.method = "none"  # none: the flow sees full weights; dual or incremental: it sees PCA coefficients
    config.pca.components = -1  # -1: all N-1 directions of the zoo (exact for the zoo)
    config.pca.batch_size = 50  # incremental: models per partial_fit step
    config.pca.micro_batch = 0  # dual: weights (columns) per streamed block; 0 = the whole zoo at once
    config.pca.fp16 = False  # dual: fp16 operands with fp32 sums in the streamed products
    config.pca.solver = "eigh"  # dual: eigh | randomized (eigenvectors of the N x N Gram matrix)

    config.flow = ml_collections.ConfigDict()
    config.flow.hidden = 256
    config.flow.time_embed_dim = 64
    config.flow.dropout = 0.1
    config.flow.learning_rate = 5e-4
    config.flow.weight_decay = 1e-5
    config.flow.iterations = 30_000
    config.flow.batch_size = 8
    config.flow.sigma = 1e-3
    config.flow.source_std = 0.01
    config.flow.time_distribution = "uniform"
    config.flow.beta = (2.0, 5.0)
    config.flow.steps_per_dispatch = 1000
    config.flow.checkpoint_every = 5000

    config.sample = ml_collections.ConfigDict()
    config.sample.num_samples = 100
    config.sample.steps = 100
    config.sample.method = "rk4"

    config.bn = ml_collections.ConfigDict()
    config.bn.recalibrate = True  # only models with BatchNorm
    config.bn.data = "train"  # train | test (the reference code's choice; leaks test data)
    config.bn.num_batches = 20
    config.bn.batch_size = 128

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 2000
    return config


def pca_components(config: ml_collections.ConfigDict) -> int:
    """Resolved number of PCA components (-1 means N-1)."""
    return config.zoo.num_models - 1 if config.pca.components == -1 else config.pca.components


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"invalid config: {message}")


def _check_choice(value: str, choices: tuple[str, ...], key: str) -> None:
    _check(value in choices, f"{key}={value!r} is not one of {list(choices)}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raise one ValueError naming the first bad key and the accepted values."""
    _check_choice(config.data.name, DATASETS, "data.name")
    _check_choice(config.data.source, SOURCES, "data.source")
    _validate_model(config.model)
    z, f, sample = config.zoo, config.flow, config.sample
    _check(config.models_per_vmap >= 0, f"models_per_vmap={config.models_per_vmap} must be >= 0 (0 = all)")
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
    _check(z.learning_rate > 0, f"zoo.learning_rate={z.learning_rate} must be > 0")
    _check_choice(config.canonical.method, canonical.METHODS, "canonical.method")
    _check(
        0 <= config.canonical.reference < z.num_models,
        f"canonical.reference={config.canonical.reference} must index a zoo model (0..{z.num_models - 1})",
    )
    _check(config.canonical.max_iter >= 1, f"canonical.max_iter={config.canonical.max_iter} must be >= 1")
    _check_choice(config.pca.method, pca.METHODS, "pca.method")
    if config.pca.method != "none":
        _check(
            config.pca.components == -1 or 1 <= config.pca.components <= z.num_models - 1,
            f"pca.components={config.pca.components} must be -1 (all) "
            f"or in [1, zoo.num_models - 1 = {z.num_models - 1}]",
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
    _check(f.source_std > 0 and f.sigma >= 0, "flow.source_std must be > 0 and flow.sigma >= 0")
    _check_choice(f.time_distribution, flow.TIME_DISTRIBUTIONS, "flow.time_distribution")
    _check(sample.num_samples >= 1, f"sample.num_samples={sample.num_samples} must be >= 1")
    _check(sample.steps >= 1, f"sample.steps={sample.steps} must be >= 1")
    _check_choice(sample.method, flow.ODE_METHODS, "sample.method")
    _check_choice(config.bn.data, CALIBRATION_DATA, "bn.data")
    _check(config.bn.num_batches >= 1 and config.bn.batch_size >= 1, "bn.num_batches and bn.batch_size must be >= 1")


def _validate_model(model: ml_collections.ConfigDict) -> None:
    """The model's name, and exactly the fields that architecture reads."""
    _check_choice(model.name, MODEL_NAMES, "model.name")
    extra = sorted(set(model.keys()) - {"name", *MODEL_FIELDS[model.name]})
    _check(
        not extra,
        f"model.{extra[0] if extra else ''} is not a field of model {model.name!r} "
        f"(its fields: {sorted(MODEL_FIELDS[model.name]) or 'none'})",
    )
    missing = sorted(set(MODEL_FIELDS[model.name]) - set(model.keys()))
    _check(not missing, f"model.{missing[0] if missing else ''} is missing for model {model.name!r}")
    if model.name == "mlp":
        _check_choice(model.init_scheme, tuple(INIT_SCHEMES), "model.init_scheme")
        _check(
            len(model.features) >= 1 and min(model.features) >= 1,
            f"model.features={model.features} needs positive widths",
        )
