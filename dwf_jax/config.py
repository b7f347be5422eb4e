"""The one home of every knob: `base_config()` and its validation.

configs/*.py start from `base_config()` and override a few fields, in the
style of flax/examples. `validate_config` turns a bad value into one clear
error before any file is touched.
"""

import ml_collections
from ml_collections import config_dict

DATASETS = ("iris", "mnist", "fashion_mnist", "cifar10")
MODELS = ("mlp", "smallcnn", "resnet20", "resnet18")
ZOO_OPTIMIZERS = ("adam", "adamw", "sgd")
INIT_SCHEMES = ("kaiming", "xavier", "normal", "uniform")
CANONICALIZATION = ("rebasin", "none")
PCA_METHODS = ("none", "dual", "incremental")
TIME_DISTRIBUTIONS = ("uniform", "beta")
ODE_METHODS = ("rk4", "euler")


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

    config.model = ml_collections.ConfigDict()
    config.model.name = "mlp"
    config.model.features = (16, 3)
    config.model.init_scheme = "kaiming"

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
    _check_choice(config.data.source, ("auto", "offline", "tfds"), "data.source")
    _check_choice(config.model.name, MODELS, "model.name")
    _check_choice(config.model.init_scheme, INIT_SCHEMES, "model.init_scheme")
    _check(len(config.model.features) >= 1 and min(config.model.features) >= 1, f"model.features={config.model.features} needs positive widths")
    zoo, flow, sample = config.zoo, config.flow, config.sample
    _check(config.models_per_vmap >= 0, f"models_per_vmap={config.models_per_vmap} must be >= 0 (0 = all)")
    _check(zoo.num_models >= 2, f"zoo.num_models={zoo.num_models}: a zoo needs at least 2 models")
    _check(zoo.epochs >= 1, f"zoo.epochs={zoo.epochs} must be >= 1")
    _check(zoo.batch_size >= 1, f"zoo.batch_size={zoo.batch_size} must be >= 1")
    _check(zoo.checkpoint_every >= 1, f"zoo.checkpoint_every={zoo.checkpoint_every} must be >= 1")
    _check(zoo.models_per_chunk >= 1, f"zoo.models_per_chunk={zoo.models_per_chunk} must be >= 1")
    _check_choice(zoo.optimizer, ZOO_OPTIMIZERS, "zoo.optimizer")
    _check_choice(zoo.schedule, ("none", "cosine"), "zoo.schedule")
    _check(zoo.learning_rate > 0, f"zoo.learning_rate={zoo.learning_rate} must be > 0")
    _check_choice(config.canonical.method, CANONICALIZATION, "canonical.method")
    _check(0 <= config.canonical.reference < zoo.num_models, f"canonical.reference={config.canonical.reference} must index a zoo model (0..{zoo.num_models - 1})")
    _check(config.canonical.max_iter >= 1, f"canonical.max_iter={config.canonical.max_iter} must be >= 1")
    _check_choice(config.pca.method, PCA_METHODS, "pca.method")
    if config.pca.method != "none":
        _check(
            config.pca.components == -1 or 1 <= config.pca.components <= zoo.num_models - 1,
            f"pca.components={config.pca.components} must be -1 (all) or in [1, zoo.num_models - 1 = {zoo.num_models - 1}]",
        )
    _check(
        not zoo.on_disk or config.pca.method == "dual",
        f"zoo.on_disk needs pca.method='dual', got {config.pca.method!r} (the flow cannot hold full weights of a zoo that does not fit in memory)",
    )
    _check(config.pca.batch_size >= 1, f"pca.batch_size={config.pca.batch_size} must be >= 1")
    _check(config.pca.micro_batch >= 0, f"pca.micro_batch={config.pca.micro_batch} must be >= 0 (0 = the whole zoo at once)")
    _check_choice(config.pca.solver, ("eigh", "randomized"), "pca.solver")
    _check(flow.hidden >= 2 and flow.hidden % 2 == 0, f"flow.hidden={flow.hidden} must be even and >= 2 (the middle layer is hidden/2)")
    _check(flow.time_embed_dim >= 1, f"flow.time_embed_dim={flow.time_embed_dim} must be >= 1")
    _check(0.0 <= flow.dropout < 1.0, f"flow.dropout={flow.dropout} must be in [0, 1)")
    _check(flow.iterations >= 1, f"flow.iterations={flow.iterations} must be >= 1")
    _check(flow.batch_size >= 1, f"flow.batch_size={flow.batch_size} must be >= 1")
    _check(flow.steps_per_dispatch >= 1, f"flow.steps_per_dispatch={flow.steps_per_dispatch} must be >= 1")
    _check(flow.checkpoint_every >= 1, f"flow.checkpoint_every={flow.checkpoint_every} must be >= 1")
    _check(flow.source_std > 0 and flow.sigma >= 0, "flow.source_std must be > 0 and flow.sigma >= 0")
    _check_choice(flow.time_distribution, TIME_DISTRIBUTIONS, "flow.time_distribution")
    _check(sample.num_samples >= 1, f"sample.num_samples={sample.num_samples} must be >= 1")
    _check(sample.steps >= 1, f"sample.steps={sample.steps} must be >= 1")
    _check_choice(sample.method, ODE_METHODS, "sample.method")
    _check_choice(config.bn.data, ("train", "test"), "bn.data")
    _check(config.bn.num_batches >= 1 and config.bn.batch_size >= 1, "bn.num_batches and bn.batch_size must be >= 1")
