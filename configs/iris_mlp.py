"""Iris MLP [4, 16, 3] (131 params): the embedded default, runs offline from scikit-learn's copy."""

from dwf_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.data.name = "iris"
    config.model = model_config("mlp", features=(16, 3))
    config.zoo.update(
        epochs=100, batch_size=16, optimizer="adam", learning_rate=1e-3, weight_decay=0.0, checkpoint_every=25
    )
    config.flow.update(hidden=256, time_embed_dim=4, dropout=0.4)
    return config
