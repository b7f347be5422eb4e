import pytest

import configs.fashion_mnist_mlp
import configs.iris_mlp
import configs.mnist_mlp
import configs.resnet18
import configs.resnet20
import configs.smallcnn
from dwf_jax import report
from dwf_jax.config import validate_config
from dwf_jax.models import model_config


@pytest.mark.parametrize(
    "module",
    [
        configs.iris_mlp,
        configs.mnist_mlp,
        configs.fashion_mnist_mlp,
        configs.smallcnn,
        configs.resnet20,
        configs.resnet18,
    ],
)
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


def test_model_config_holds_only_the_fields_of_its_architecture():
    config = configs.iris_mlp.get_config()
    config.model = model_config("resnet20")
    validate_config(config)
    config.model = model_config("mlp")
    config.model.name = "resnet20"
    with pytest.raises(ValueError, match=r"model.features is not a field of model 'resnet20' \(its fields: none\)"):
        validate_config(config)
    with pytest.raises(ValueError, match="model 'smallcnn' has no field 'features'"):
        model_config("smallcnn", features=(4, 3))
    mlp = {"name": "mlp", "features": [8, 3], "init_scheme": "kaiming"}
    assert report.model_fields(model_config("mlp", features=(8, 3))) == mlp
    assert report.model_fields(model_config("resnet18")) == {"name": "resnet18"}
