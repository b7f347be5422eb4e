"""ResNet-18 on CIFAR-10 (11.17M params, BatchNorm); the flow trains on N-1 PCA components (Table 4, h=1024)."""

from dwf_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.data.name = "cifar10"
    config.model = model_config("resnet18")
    config.zoo.update(
        epochs=100,
        batch_size=128,
        optimizer="sgd",
        learning_rate=0.1,
        weight_decay=5e-4,
        schedule="cosine",
        drop_last=True,
        models_per_chunk=2,
        on_disk=True,  # 100 models x 11.18M weights = 4.5 GB per copy of the zoo: keep the zoo-sized arrays in files
    )
    config.pca.update(method="dual", components=-1)
    config.flow.update(hidden=1024, time_embed_dim=128, dropout=0.1)
    config.eval.batch_size = 250
    # XLA:CPU runs convolution gradients inside loops and vmaps several times slower
    # than alone: one model and one minibatch per dispatch. On a GPU try
    # --config.models_per_vmap=0 --config.zoo.scan_steps=True.
    config.models_per_vmap = 1
    config.zoo.scan_steps = False
    return config
