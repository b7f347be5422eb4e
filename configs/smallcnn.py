"""SmallCNN on CIFAR-10 (21,914 params, BatchNorm); needs the CIFAR-10 copy under data.dir or tensorflow-datasets."""

from dwf_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.data.name = "cifar10"
    config.model = model_config("smallcnn")
    config.zoo.update(
        epochs=50,
        batch_size=128,
        optimizer="adamw",
        learning_rate=1e-3,
        weight_decay=1e-3,
        drop_last=True,
        models_per_chunk=25,
    )
    config.flow.update(hidden=512, time_embed_dim=64, dropout=0.1)
    config.eval.batch_size = 1000
    # XLA:CPU runs convolution gradients inside loops and vmaps several times slower
    # than alone: one model and one minibatch per dispatch. On a GPU try
    # --config.models_per_vmap=0 --config.zoo.scan_steps=True.
    config.models_per_vmap = 1
    config.zoo.scan_steps = False
    return config
