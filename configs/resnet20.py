"""ResNet-20 on CIFAR-10 (272,474 params, BatchNorm).

The flow trains on the zoo's N-1 dual-PCA coefficients (exact for the zoo):
a full-weight flow at h=512 has 280M parameters, which a CPU cannot train in
reasonable time. On a GPU, `--config.pca.method=none` follows the paper's text.
"""

from dwf_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.data.name = "cifar10"
    config.model = model_config("resnet20")
    config.zoo.update(
        epochs=5,
        batch_size=128,
        optimizer="adam",
        learning_rate=1e-3,
        weight_decay=0.0,
        drop_last=True,
        models_per_chunk=10,
    )
    config.pca.update(method="dual", components=-1)
    config.flow.update(hidden=512, time_embed_dim=64, dropout=0.1)
    config.eval.batch_size = 500
    # XLA:CPU runs convolution gradients inside loops and vmaps several times slower
    # than alone: one model and one minibatch per dispatch. On a GPU try
    # --config.models_per_vmap=0 --config.zoo.scan_steps=True.
    config.models_per_vmap = 1
    config.zoo.scan_steps = False
    return config
