"""Evaluation and BatchNorm recalibration compile once for repeated calls with equal shapes."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from dwf_jax.augment import input_pipeline
from dwf_jax.bn_recalibration import recalibrate
from dwf_jax.evaluate import ensemble_accuracy
from dwf_jax.models import SmallCNN

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def counted_compilations():
    """A list that receives one entry per XLA compilation while the block runs."""
    seen: list[float] = []

    def listener(event: str, duration: float, **_) -> None:
        if event == COMPILE_EVENT:
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _zoo(num_models: int = 2):
    model = SmallCNN(dropout_rate=0.0)
    images = jnp.zeros((1, 32, 32, 3), jnp.uint8)
    variables = jax.vmap(lambda key: model.init(key, input_pipeline("cifar10").eval(images)))(
        jax.random.split(jax.random.key(0), num_models)
    )
    return model, variables


def test_repeated_ensemble_accuracy_compiles_once():
    model, variables = _zoo()
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    y = np.arange(8, dtype=np.int32) % 10

    def evaluate():
        return ensemble_accuracy(model, variables, x, y, batch_size=8, transform=input_pipeline("cifar10").eval)

    first = evaluate()
    with counted_compilations() as compilations:
        results = [evaluate() for _ in range(3)]
    assert compilations == [], f"{len(compilations)} compilations in 3 repeated calls"
    for result in results:
        np.testing.assert_array_equal(result, first)


def test_repeated_recalibration_compiles_once():
    model, variables = _zoo()
    batches = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
    first = recalibrate(model, variables, batches)
    with counted_compilations() as compilations:
        for _ in range(3):
            again = recalibrate(model, variables, batches)
    assert compilations == [], f"{len(compilations)} compilations in 3 repeated calls"
    jax.tree.map(np.testing.assert_array_equal, again, first)
