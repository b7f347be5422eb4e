"""Fashion-MNIST MLP [784, 128, 128, 10] (117,770 params); needs the IDX files under data.dir or tensorflow-datasets."""

from dwf_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.data.name = "fashion_mnist"
    config.model = model_config("mlp", features=(128, 128, 10))
    config.zoo.update(epochs=25, batch_size=128, optimizer="adamw", learning_rate=1e-3, weight_decay=0.0)
    config.flow.update(hidden=512, time_embed_dim=64, dropout=0.1)
    return config
