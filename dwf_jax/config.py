"""The one home of every knob: `base_config()` and `model_config(name)`.

configs/*.py start from `base_config()` and override a few fields, in the
style of flax/examples. Loading a config imports only ml_collections (no jax,
flax or orbax); `dwf_jax.validation.validate_config` turns a bad value into one
clear error before any file is touched.
"""

import json
from typing import Any

import ml_collections
from ml_collections import config_dict

# Each architecture's config fields beside `name`, with their defaults.
MODEL_FIELDS: dict[str, dict[str, Any]] = {
    "mlp": {"features": (16, 3), "init_scheme": "kaiming_zero_bias"},
    "smallcnn": {},
    "resnet20": {},
    "resnet18": {},
    "vit_small": {"patch": 4, "dim": 192, "depth": 6, "heads": 3, "mlp_ratio": 4, "dropout": 0.1},
    "bert": {
        "vocab_size": 30522,
        "hidden": 768,
        "layers": 12,
        "heads": 12,
        "intermediate": 3072,
        "max_length": 128,
        "dropout": 0.1,
        # A Hugging Face BERT checkpoint (a save_pretrained folder or its weight file) every zoo model starts from,
        # as the paper's zoo fine-tunes BERT-Base; the files' checksums become the zoo's settings. Empty: random.
        "pretrained": "",
    },
}
# Model fields that say how a zoo's models start, not what the module is.
INIT_FIELDS = ("pretrained",)
MODEL_NAMES = tuple(MODEL_FIELDS)


def model_config(name: str, **fields: Any) -> ml_collections.ConfigDict:
    """`config.model` for one architecture: its name and only the fields it reads."""
    if name not in MODEL_FIELDS:
        raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")
    unknown = sorted(set(fields) - set(MODEL_FIELDS[name]))
    if unknown:
        raise ValueError(
            f"model {name!r} has no field {unknown[0]!r}; its fields: {sorted(MODEL_FIELDS[name]) or 'none'}"
        )
    return ml_collections.ConfigDict({"name": name, **MODEL_FIELDS[name], **fields})


def base_config() -> ml_collections.ConfigDict:
    """Paper settings shared by every model (Table 14); per-model configs override the rest."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Models vmapped together inside each jitted program (0 = all); lax.map walks the rest.
    config.models_per_vmap = 0
    # Devices the model axis is split over (0 = every device of every process); never changes a stage's settings.
    config.num_devices = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "iris"
    config.data.dir = config_dict.placeholder(str)  # else $DWF_DATA_DIR
    config.data.source = "auto"  # auto | offline | tfds
    config.data.augment = True  # random crop + flip for image datasets that use it (CIFAR-10)
    config.data.max_tokens = 128  # text: tokens per example, [CLS] included (longer text is cut)
    config.data.vocab_size = 8192  # vader_sentiment: WordPiece vocabulary learned from its training split

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
    config.zoo.compute_dtype = "float32"  # bfloat16: forward and backward in bf16, float32 weights (mixed precision)
    config.zoo.on_disk = False  # zoo-sized arrays as files in the workdir, never all in memory (needs pca.method dual)
    # A folder of trained nets (.safetensors or PyTorch .pt state_dicts, one per model, in PyTorch layout) that
    # replaces zoo training: its first zoo.num_models files in natural order; the files' checksums become the zoo
    # stage's settings. Empty: train the zoo.
    config.zoo.source = ""
    # A fraction in [0, 1) of the zoo held out of everything that is fitted (the canonical reference's choice, the
    # PCA, the flow): the LAST round(held_out * num_models) models, so a zoo of seeds 0..N-1 keeps the same training
    # part as held_out grows and a larger zoo's held-out part is new seeds. The held-out nets are still aligned to the
    # reference, and the report measures generated nets against them (`report.held_out_section`). 0: none.
    config.zoo.held_out = 0.0

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
    config.flow.source = "gaussian"  # gaussian: N(0, source_std^2); kaiming: Kaiming-initialised networks (Table 16)
    config.flow.source_std = 0.01
    config.flow.time_distribution = "uniform"
    config.flow.beta = (2.0, 5.0)
    # Noise (std, in the flow's space) added to each minibatch's targets: a regularizer against copying members.
    config.flow.target_noise = 0.0
    # Keep the flow's parameters of the validate_every step with the lowest flow-matching loss on the held-out
    # models (needs zoo.held_out > 0; they then choose the stopping step) instead of the last step's.
    config.flow.early_stopping = False
    config.flow.validate_every = 1000
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

    # The ensembles generated models are compared with (Zeng et al., 2025): originals plus noise, and averages.
    config.baselines = ml_collections.ConfigDict()
    config.baselines.noise_stds = (0.01, 0.03, 0.1)  # one ensemble per std: every canonical original + N(0, std^2)
    config.baselines.mixtures = 100  # convex combinations of canonical originals (0: none)
    config.baselines.mix = 2  # originals per combination (weights from a flat Dirichlet)
    # Zeng et al.'s own two, as many models as the zoo: each the uniform average of K random canonical originals
    # (K capped at the zoo's size; 0: none), and draws from the zoo's per-weight Gaussian (-1: as many as the zoo).
    config.baselines.average_of = 16
    config.baselines.gaussian = -1
    # Models per noise, average and Gaussian ensemble: the noise moves the first num_models canonical originals
    # (with a held-out part: training ones when it is at most the training count). 0: as many as the zoo. A large
    # zoo's ensembles cost (ensemble x zoo) comparisons each; as many as the generated ensemble compares like with
    # like.
    config.baselines.num_models = 0
    return config


def held_out_count(config: ml_collections.ConfigDict) -> int:
    """Models held out of the fitting: the last round(zoo.held_out * zoo.num_models) of the zoo."""
    return round(config.zoo.held_out * config.zoo.num_models)


def training_count(config: ml_collections.ConfigDict) -> int:
    """Models the canonical reference, the PCA and the flow see: the zoo's first N - held_out_count."""
    return config.zoo.num_models - held_out_count(config)


def pca_components(config: ml_collections.ConfigDict) -> int:
    """Resolved number of PCA components (-1 means all N-1 directions of the training models)."""
    return training_count(config) - 1 if config.pca.components == -1 else config.pca.components


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_as_dict(config: ml_collections.ConfigDict) -> dict:
    """JSON-normalised config (tuples become lists), so recorded and current values compare equal."""
    return json.loads(config.to_json())
