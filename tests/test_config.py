import pathlib
import re
import subprocess
import sys

import ml_collections
import pytest

import configs.fashion_mnist_mlp
import configs.iris_mlp
import configs.mnist_mlp
import configs.resnet18
import configs.resnet20
import configs.smallcnn
import configs.vit_small
from dwf_jax import report
from dwf_jax.config import base_config, pca_components
from dwf_jax.models import model_config
from dwf_jax.validation import validate_config


@pytest.mark.parametrize(
    "module",
    [
        configs.iris_mlp,
        configs.mnist_mlp,
        configs.fashion_mnist_mlp,
        configs.smallcnn,
        configs.resnet20,
        configs.resnet18,
        configs.vit_small,
    ],
)
def test_shipped_configs_are_valid(module):
    validate_config(module.get_config())


# One bad value per check in validate_config: (overrides, the words the error must contain).
BAD_VALUES = [
    ({"data.name": "cifar100"}, "data.name='cifar100'"),
    ({"data.source": "web"}, "data.source='web'"),
    ({"model.name": "vgg"}, "model.name='vgg'"),
    ({"model.init_scheme": "orthogonal"}, "model.init_scheme='orthogonal'"),
    ({"model.features": (16, 0)}, "model.features=(16, 0) needs positive widths"),
    ({"model.features": ()}, "model.features=() needs positive widths"),
    ({"model.features": (16, 16)}, "model 'mlp' has 16 outputs but iris has 3 classes"),
    ({"models_per_vmap": -1}, "models_per_vmap=-1 must be >= 0"),
    ({"zoo.num_models": 1}, "zoo.num_models=1: a zoo needs at least 2 models"),
    ({"zoo.num_models": -5}, "zoo.num_models=-5: a zoo needs at least 2 models"),
    ({"zoo.num_models": 2**31}, "fewer than 2**31"),
    ({"zoo.epochs": 0}, "zoo.epochs=0 must be >= 1"),
    ({"zoo.batch_size": 0}, "zoo.batch_size=0 must be >= 1"),
    ({"zoo.checkpoint_every": 0}, "zoo.checkpoint_every=0 must be >= 1"),
    ({"zoo.models_per_chunk": 0}, "zoo.models_per_chunk=0 must be >= 1"),
    ({"zoo.optimizer": "rmsprop"}, "zoo.optimizer='rmsprop'"),
    ({"zoo.schedule": "linear"}, "zoo.schedule='linear'"),
    ({"zoo.learning_rate": 0.0}, "zoo.learning_rate=0.0 must be > 0"),
    ({"zoo.learning_rate": float("inf")}, "zoo.learning_rate=inf is not finite"),
    ({"zoo.learning_rate": float("nan")}, "zoo.learning_rate=nan is not finite"),
    ({"zoo.weight_decay": -1e-4}, "zoo.weight_decay=-0.0001 must be >= 0"),
    ({"canonical.method": "ot"}, "canonical.method='ot'"),
    ({"canonical.method": "transfusion"}, "model 'mlp' has none (use rebasin)"),
    ({"canonical.reference": 100}, "canonical.reference=100 must index a zoo model (0..99)"),
    ({"canonical.reference": -1}, "canonical.reference=-1 must index a zoo model"),
    ({"canonical.max_iter": 0}, "canonical.max_iter=0 must be >= 1"),
    ({"pca.method": "kernel"}, "pca.method='kernel'"),
    ({"flow.source": "laplace"}, "flow.source='laplace'"),
    ({"flow.source": "kaiming", "pca.method": "dual"}, "flow.source='kaiming' draws networks in weight space"),
    (
        {"pca.method": "dual", "pca.components": 0},
        "pca.components=0 must be -1 (all) or in [1, zoo.num_models - 1 = 99]",
    ),
    ({"pca.method": "dual", "pca.components": 100}, "pca.components=100 must be -1"),
    ({"zoo.on_disk": True}, "zoo.on_disk needs pca.method 'dual' or 'incremental'"),
    ({"pca.batch_size": 0}, "pca.batch_size=0 must be >= 1"),
    ({"pca.micro_batch": -1}, "pca.micro_batch=-1 must be >= 0"),
    ({"pca.solver": "lanczos"}, "pca.solver='lanczos'"),
    ({"flow.hidden": 33}, "flow.hidden=33 must be even and >= 2"),
    ({"flow.hidden": 0}, "flow.hidden=0 must be even and >= 2"),
    ({"flow.time_embed_dim": 0}, "flow.time_embed_dim=0 must be >= 1"),
    ({"flow.dropout": 1.0}, "flow.dropout=1.0 must be in [0, 1)"),
    ({"flow.dropout": -0.1}, "flow.dropout=-0.1 must be in [0, 1)"),
    ({"flow.iterations": 0}, "flow.iterations=0 must be >= 1"),
    ({"flow.batch_size": 0}, "flow.batch_size=0 must be >= 1"),
    ({"flow.steps_per_dispatch": 0}, "flow.steps_per_dispatch=0 must be >= 1"),
    ({"flow.checkpoint_every": 0}, "flow.checkpoint_every=0 must be >= 1"),
    ({"flow.learning_rate": -5e-4}, "flow.learning_rate=-0.0005 must be > 0"),
    ({"flow.weight_decay": -1e-5}, "flow.weight_decay=-1e-05 must be >= 0"),
    ({"flow.source_std": 0.0}, "flow.source_std=0.0 must be in (0, 100.0]"),
    ({"flow.source_std": 1e30}, "flow.source_std=1e+30 must be in (0, 100.0]"),
    ({"flow.sigma": -1e-3}, "flow.sigma=-0.001 must be in [0, 100.0]"),
    ({"flow.sigma": 101.0}, "flow.sigma=101.0 must be in [0, 100.0]"),
    ({"flow.beta": (2.0,)}, "flow.beta=(2.0,) must be two positive numbers"),
    ({"flow.beta": (2.0, 0.0)}, "flow.beta=(2.0, 0.0) must be two positive numbers"),
    ({"flow.time_distribution": "cauchy"}, "flow.time_distribution='cauchy'"),
    ({"sample.num_samples": 0}, "sample.num_samples=0 must be >= 1"),
    ({"sample.steps": 0}, "sample.steps=0 must be >= 1"),
    ({"sample.method": "heun"}, "sample.method='heun'"),
    ({"bn.data": "val"}, "bn.data='val'"),
    ({"bn.num_batches": 0}, "bn.num_batches and bn.batch_size must be >= 1"),
    ({"bn.batch_size": 0}, "bn.num_batches and bn.batch_size must be >= 1"),
    ({"eval.batch_size": 0}, "eval.batch_size=0 must be >= 1"),
    ({"baselines.noise_stds": (0.1, -0.01)}, "baselines.noise_stds=(0.1, -0.01) must each be in [0, 100.0]"),
    ({"baselines.mixtures": -1}, "baselines.mixtures=-1 must be >= 0"),
    ({"baselines.mix": 1}, "baselines.mix=1 must be in [2, zoo.num_models = 100]"),
    ({"baselines.mix": 101}, "baselines.mix=101 must be in [2, zoo.num_models = 100]"),
    ({"baselines.average_of": -1}, "baselines.average_of=-1 must be >= 0"),
    ({"baselines.gaussian": -2}, "baselines.gaussian=-2 must be >= -1"),
]


def _override(config, key, value):
    *sections, field = key.split(".")
    for section in sections:
        config = config[section]
    config[field] = value


@pytest.mark.parametrize("overrides, message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_every_bad_value_gets_one_clear_error(overrides, message):
    config = configs.iris_mlp.get_config()
    for key, value in overrides.items():
        _override(config, key, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_config(config)


@pytest.mark.parametrize("overrides, _", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_each_bad_value_is_next_to_a_good_one(overrides, _):
    """The boundary next to each bad value passes, so the checks are not stricter than they say."""
    good = {
        "models_per_vmap": 0,
        "zoo.num_models": 2,
        "zoo.epochs": 1,
        "zoo.batch_size": 1,
        "zoo.checkpoint_every": 1,
        "zoo.models_per_chunk": 1,
        "zoo.learning_rate": 1e-9,
        "zoo.weight_decay": 0.0,
        "flow.learning_rate": 1e-9,
        "flow.weight_decay": 0.0,
        "flow.beta": (1e-9, 1e-9),
        "eval.batch_size": 1,
        "baselines.noise_stds": (0.0,),
        "baselines.mixtures": 0,
        "baselines.average_of": 0,
        "baselines.gaussian": -1,
        "baselines.mix": 100 if overrides.get("baselines.mix", 0) > 2 else 2,
        "canonical.reference": 0,
        "canonical.max_iter": 1,
        "pca.components": 1,
        "pca.batch_size": 1,
        "pca.micro_batch": 0,
        "flow.hidden": 2,
        "flow.time_embed_dim": 1,
        "flow.dropout": 0.0,
        "flow.iterations": 1,
        "flow.batch_size": 1,
        "flow.steps_per_dispatch": 1,
        "flow.checkpoint_every": 1,
        "flow.source_std": 100.0 if overrides.get("flow.source_std", 0) > 1 else 1e-9,
        "flow.sigma": 100.0 if overrides.get("flow.sigma", 0) > 1 else 0.0,
        "sample.num_samples": 1,
        "sample.steps": 1,
        "bn.num_batches": 1,
        "bn.batch_size": 1,
        "model.features": (1, 3),
    }
    config = configs.iris_mlp.get_config()
    for key, value in overrides.items():
        if key in good:
            _override(config, key, good[key])
        elif (key, value) == ("pca.method", "dual"):  # what makes the bad pca.components reachable
            _override(config, key, value)
    validate_config(config)


def test_model_config_holds_only_the_fields_of_its_architecture():
    config = configs.iris_mlp.get_config()
    config.model = model_config("resnet20")
    config.data.name = "cifar10"
    validate_config(config)
    config.model = model_config("mlp")
    config.model.name = "resnet20"
    unknown = "unknown keys ['model.features', 'model.init_scheme'] (not in base_config, nor fields of model 'resnet20"
    with pytest.raises(ValueError, match=re.escape(unknown)):
        validate_config(config)
    with pytest.raises(ValueError, match="model 'smallcnn' has no field 'features'"):
        model_config("smallcnn", features=(4, 3))
    mlp = {"name": "mlp", "features": [8, 3], "init_scheme": "kaiming_zero_bias"}
    assert report.model_fields(model_config("mlp", features=(8, 3))) == mlp
    assert report.model_fields(model_config("resnet18")) == {"name": "resnet18"}


def test_base_config_is_valid_and_holds_the_papers_flow_settings():
    """Table 14: the defaults every config starts from."""
    config = base_config()
    validate_config(config)
    flow = config.flow
    assert (flow.learning_rate, flow.weight_decay, flow.iterations, flow.batch_size) == (5e-4, 1e-5, 30_000, 8)
    assert (flow.sigma, flow.dropout, flow.time_distribution) == (1e-3, 0.1, "uniform")
    assert (config.sample.steps, config.sample.method, config.sample.num_samples) == (100, "rk4", 100)
    config.pca.method = "dual"
    validate_config(config)
    assert pca_components(config) == config.zoo.num_models - 1
    config.pca.components = 7
    assert pca_components(config) == 7


def _as_plain_config(config, **sections):
    """A ConfigDict built from a dict, so keys and kinds the typed ConfigDict would refuse can be tried."""
    tree = config.to_dict()
    for key, value in sections.items():
        tree[key] = value
    return ml_collections.ConfigDict(tree)


def test_missing_unknown_and_wrongly_typed_keys_are_named():
    config = configs.iris_mlp.get_config()
    flow = config.flow.to_dict()
    del flow["beta"]
    with pytest.raises(ValueError, match=re.escape("missing keys ['flow.beta']")):
        validate_config(_as_plain_config(config, flow=flow))
    with pytest.raises(ValueError, match=re.escape("unknown keys ['flow.betas']")):
        validate_config(_as_plain_config(config, flow={**config.flow.to_dict(), "betas": (1.0, 1.0)}))
    zoo = {**config.zoo.to_dict(), "num_models": "abc"}
    with pytest.raises(ValueError, match=re.escape("zoo.num_models='abc' should be of the kind of its default 100")):
        validate_config(_as_plain_config(config, zoo=zoo))
    zoo = {**config.zoo.to_dict(), "num_models": True}
    with pytest.raises(ValueError, match="zoo.num_models=True should be of the kind"):
        validate_config(_as_plain_config(config, zoo=zoo))
    model = {**config.model.to_dict(), "features": (16.5, 3)}
    with pytest.raises(ValueError, match=re.escape("model.features=[16.5, 3] should be of the kind")):
        validate_config(_as_plain_config(config, model=model))
    zoo = {**config.zoo.to_dict(), "learning_rate": 1}  # an int where a float is expected is fine
    validate_config(_as_plain_config(config, zoo=zoo))


def test_loading_a_config_imports_only_ml_collections():
    """configs/*.py read by absl's config_flags pull in no jax, flax or orbax (a config loads in milliseconds)."""
    names = sorted(path.stem for path in pathlib.Path("configs").glob("*.py") if path.stem != "__init__")
    probe = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(f'configs.{name}').get_config()\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'jaxlib', 'flax', 'orbax', 'optax'})\n"
        "assert not heavy, heavy\n"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(names) >= 7
