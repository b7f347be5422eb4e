"""MNIST MLP [784, 32, 32, 10] (26,506 params); needs MNIST IDX files under data.dir or tensorflow-datasets."""

from dwf_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.data.name = "mnist"
    config.model = model_config("mlp", features=(32, 32, 10))
    config.zoo.update(epochs=5, batch_size=64, optimizer="adam", learning_rate=1e-3, weight_decay=0.0)
    config.flow.update(hidden=512, time_embed_dim=64, dropout=0.1)
    return config
