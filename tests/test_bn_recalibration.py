"""BatchNorm recalibration restores statistics that were lost, for a whole ensemble at once."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from dwf_jax import zoo
from dwf_jax.augment import input_pipeline
from dwf_jax.bn_recalibration import calibration_batches, recalibrate
from dwf_jax.evaluate import ensemble_accuracy
from dwf_jax.models import SmallCNN


class OneNorm(nn.Module):
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x, train=False):
        return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(x)


def test_statistics_are_the_mean_of_batch_statistics():
    batches = jax.random.normal(jax.random.key(0), (5, 16, 3)) * jnp.array([1.0, 2.0, 3.0]) + 4.0
    variables = jax.vmap(lambda k: OneNorm().init(k, batches[0]))(jax.random.split(jax.random.key(1), 2))
    result = recalibrate(OneNorm(), variables, batches)["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(result["mean"], np.broadcast_to(batches.mean(axis=1).mean(0), (2, 3)), rtol=1e-5)
    np.testing.assert_allclose(result["var"], np.broadcast_to(batches.var(axis=1).mean(0), (2, 3)), rtol=1e-4)


def test_zeroed_statistics_are_restored_on_real_digits():
    digits = load_digits()
    images = (digits.images[..., None] / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int32)
    x_train, y_train, x_test, y_test = images[:1400], labels[:1400], images[1400:], labels[1400:]
    model = SmallCNN(dropout_rate=0.0)
    variables, _ = zoo.train_models(
        model,
        zoo.make_optimizer("adam", 3e-3, 0.0),
        x_train,
        y_train,
        seed=0,
        model_indices=np.arange(2),
        epochs=4,
        batch_size=64,
        inputs=input_pipeline("mnist"),
        drop_last=True,
        progress=False,
    )
    trained = ensemble_accuracy(model, variables, x_test, y_test)
    assert np.all(trained > 80.0), trained
    zeroed = {**variables, "batch_stats": jax.tree.map(jnp.zeros_like, variables["batch_stats"])}
    assert np.all(ensemble_accuracy(model, zeroed, x_test, y_test) < trained - 20.0)
    batches = calibration_batches(jax.random.key(0), x_train, num_batches=10, batch_size=128)
    restored = ensemble_accuracy(model, recalibrate(model, zeroed, jnp.asarray(batches)), x_test, y_test)
    np.testing.assert_allclose(restored, trained, atol=3.0)


def test_too_few_images_is_a_clear_error():
    with pytest.raises(ValueError, match="wants 4 x 8 = 32 images, the data has 10"):
        calibration_batches(jax.random.key(0), np.zeros((10, 2)), 4, 8)
