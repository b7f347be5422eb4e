import pytest

from dwf_jax.config import validate_config

import configs.fashion_mnist_mlp
import configs.iris_mlp
import configs.mnist_mlp


@pytest.mark.parametrize("module", [configs.iris_mlp, configs.mnist_mlp, configs.fashion_mnist_mlp])
def test_shipped_configs_are_valid(module):
    validate_config(module.get_config())


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("zoo.num_models", 1, "at least 2 models"),
        ("zoo.num_models", -5, "at least 2 models"),
        ("zoo.epochs", 0, "zoo.epochs=0"),
        ("flow.hidden", 33, "must be even"),
        ("flow.iterations", 0, "flow.iterations=0"),
        ("flow.batch_size", 0, "flow.batch_size=0"),
        ("sample.steps", 0, "sample.steps=0"),
        ("sample.method", "heun", "sample.method='heun'"),
        ("canonical.reference", 100, "canonical.reference=100"),
        ("data.name", "cifar100", "data.name='cifar100'"),
    ],
)
def test_bad_values_get_one_clear_error(key, value, message):
    config = configs.iris_mlp.get_config()
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate_config(config)
