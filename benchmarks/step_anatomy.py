"""Where a training step's time goes: the bounds behind vs_pytorch.py's rows 1, 2 and 4, side by side in one run.

    python benchmarks/step_anatomy.py

ResNet-20 (batch 128): the augmentation, the forward pass in train mode, the
gradient with respect to the inputs only, and the full gradient; the difference
of the last two is what the kernel-gradient convolutions cost. Flow steps (h=512,
batch 8) on 99 PCA coefficients and on full MNIST weights, with AdamW, with plain
SGD (the optimizer's share) and without dropout. Medians of 5 jitted calls.
"""

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dwf_jax import flow
from dwf_jax.augment import input_pipeline
from dwf_jax.models import build_model, model_config


def median_ms(function: Callable, *args) -> float:
    compiled = jax.jit(function)
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def resnet20_rows() -> list[tuple[str, float]]:
    model, inputs = build_model(model_config("resnet20")), input_pipeline("cifar10", True)
    rng = np.random.default_rng(0)
    raw = jnp.asarray(rng.integers(0, 255, (128, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 128))
    images = inputs.eval(raw)
    variables = model.init(jax.random.key(0), images[:1], train=False)

    def loss(params, images):
        logits, _ = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    params = variables["params"]
    return [
        ("ResNet-20 augmentation (crop + flip), batch 128", median_ms(inputs.train, jax.random.key(1), raw)),
        ("ResNet-20 forward, train mode", median_ms(loss, params, images)),
        ("ResNet-20 forward + input gradients only", median_ms(jax.grad(loss, argnums=1), params, images)),
        ("ResNet-20 forward + all gradients", median_ms(jax.grad(loss), params, images)),
    ]


def flow_step_ms(dim: int, tx: optax.GradientTransformation, dropout: float, steps: int) -> float:
    model = flow.VelocityField(dim=dim, hidden=512, time_embed_dim=64, dropout=dropout)
    chunk = flow.make_train_chunk(
        model,
        tx,
        batch_size=8,
        source=flow.Source("normal", 0.01),
        sigma=1e-3,
        time_distribution="uniform",
        beta=(2.0, 5.0),
    )
    state = [flow.create_flow_state(model, tx, jax.random.key(0))]
    data, key = 0.1 * jax.random.normal(jax.random.key(1), (100, dim)), jax.random.key(2)

    def run() -> jax.Array:
        state[0], losses = chunk(state[0], key, data, steps)
        return losses

    jax.block_until_ready(run())
    times = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)) / steps


def flow_rows() -> list[tuple[str, float]]:
    adamw = flow.make_optimizer(5e-4, 1e-5, 30_000)
    rows = []
    for dim, steps in ((99, 500), (26_506, 20)):
        rows += [
            (f"flow step D={dim:,}, AdamW", flow_step_ms(dim, adamw, 0.1, steps)),
            (f"flow step D={dim:,}, plain SGD", flow_step_ms(dim, optax.sgd(1e-3), 0.1, steps)),
            (f"flow step D={dim:,}, AdamW, no dropout", flow_step_ms(dim, adamw, 0.0, steps)),
        ]
    return rows


def main() -> None:
    print(f"# step anatomy, jax {jax.__version__} on {jax.devices()[0].platform}, median of 5 jitted calls\n")
    print("| what | ms |\n|---|---|")
    for label, milliseconds in [*resnet20_rows(), *flow_rows()]:
        print(f"| {label} | {milliseconds:.3g} |", flush=True)


if __name__ == "__main__":
    main()
