"""The numeric core's formulas against cases computed by hand or by an independent numpy version.

Tolerances are tight enough to see an off-by-one step, a dropped term or a
swapped argument, not only a crash.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dwf_jax import flow, zoo
from dwf_jax.data import load_dataset
from dwf_jax.evaluate import ensemble_accuracy
from dwf_jax.flow.train import minibatch_indices
from dwf_jax.flow_stage import flow_source, sample_stage
from dwf_jax.models import MLP
from dwf_jax.zoo_store import Flattener


def _numpy_loss(velocity, key, x1, source_std, sigma, beta=None):
    """The flow-matching loss written out in numpy, from the same three random draws."""
    key_x0, key_t, key_eps = jax.random.split(key, 3)
    x0 = source_std * np.asarray(jax.random.normal(key_x0, x1.shape), np.float64)
    if beta is None:
        t = np.asarray(jax.random.uniform(key_t, (x1.shape[0],)), np.float64)
    else:
        t = np.asarray(jax.random.beta(key_t, beta[0], beta[1], (x1.shape[0],)), np.float64)
    eps = np.asarray(jax.random.normal(key_eps, x1.shape), np.float64)
    x_t = (1.0 - t[:, None]) * x0 + t[:, None] * x1 + sigma * eps
    return np.mean((velocity(x_t, t) - (x1 - x0)) ** 2)


@pytest.mark.parametrize("source_std, sigma", [(1.0, 0.0), (0.01, 1e-3), (0.5, 0.7)])
@pytest.mark.parametrize("distribution", ["uniform", "beta"])
def test_flow_matching_loss_equals_its_formula(source_std, sigma, distribution):
    x1 = np.random.default_rng(0).normal(size=(6, 5))
    key = jax.random.key(4)

    def velocity(x, t):
        return 0.3 * x + t[:, None] ** 2 - 0.1

    beta = (2.0, 5.0)
    got = flow.flow_matching_loss(
        velocity,
        key,
        jnp.asarray(x1, jnp.float32),
        source=flow.Source("normal", source_std),
        sigma=sigma,
        time_distribution=distribution,
        beta=beta,
    )
    expected = _numpy_loss(velocity, key, x1, source_std, sigma, beta if distribution == "beta" else None)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_euler_takes_exactly_n_steps_from_t_zero():
    n = 10
    growth = flow.integrate(lambda x, t: x, jnp.ones((1, 1)), n, "euler")
    np.testing.assert_allclose(growth, (1 + 1 / n) ** n, rtol=1e-6)
    # dx/dt = t: Euler sums dt * (0, dt, ..., (n-1) dt) = (n-1) / (2n), exactly.
    ramp = flow.integrate(lambda x, t: jnp.broadcast_to(t[:, None], x.shape), jnp.zeros((2, 1)), n, "euler")
    np.testing.assert_allclose(ramp, (n - 1) / (2 * n), rtol=1e-6)


def test_rk4_step_is_the_classic_tableau():
    n, h = 5, 1 / 5
    one_step = 1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24  # RK4 on dx/dt = x multiplies by this per step
    growth = flow.integrate(lambda x, t: x, jnp.ones((1, 1)), n, "rk4")
    np.testing.assert_allclose(growth, one_step**n, rtol=1e-6)
    # dx/dt = 4 t^3: RK4 is Simpson's rule in t, exact for cubics, also over a few steps.
    quartic = flow.integrate(lambda x, t: jnp.broadcast_to(4 * t[:, None] ** 3, x.shape), jnp.zeros((1, 1)), 3, "rk4")
    np.testing.assert_allclose(quartic, 1.0, rtol=1e-6)


def test_the_source_distribution_has_the_configured_moments():
    samples = flow.sample_ensemble(
        lambda x, t: jnp.zeros_like(x),
        jax.random.key(0),
        400,
        500,
        source=flow.Source("normal", 0.05),
        num_steps=3,
        method="rk4",
    )
    assert abs(float(jnp.mean(samples))) < 0.05 * 0.01
    np.testing.assert_allclose(float(jnp.std(samples)), 0.05, rtol=0.01)


def _fresh_flow_samples(source: str, template, num_samples: int) -> np.ndarray:
    """A fresh flow's output layer is zero, so its samples are the source points themselves."""
    config = ml_collections.ConfigDict(
        {
            "seed": 0,
            "flow": {"hidden": 8, "time_embed_dim": 4, "dropout": 0.0, "source": source, "source_std": 0.03},
            "sample": {"num_samples": num_samples, "steps": 2, "method": "euler"},
        }
    )
    dim = Flattener(template).dim
    model = flow.VelocityField(dim=dim, hidden=8, time_embed_dim=4, dropout=0.0)
    params = flow.create_flow_state(model, flow.make_optimizer(1e-3, 0.0, 10), jax.random.key(1)).params
    return sample_stage(config, params, dim, flow_source(config, template), progress=False)


def test_the_sampler_stage_starts_from_flow_source_std():
    samples = _fresh_flow_samples("gaussian", {"params": {"w": jnp.zeros((300,))}}, 200)
    np.testing.assert_allclose(np.std(samples), 0.03, rtol=0.01)


def test_the_kaiming_source_draws_freshly_initialised_networks():
    """Kernels U(-sqrt(6/fan_in), sqrt(6/fan_in)) per layer, like the zoo's first step; biases 0."""
    model = MLP((32, 10))
    template = model.init(jax.random.key(0), jnp.zeros((1, 784)))
    samples = _fresh_flow_samples("kaiming", template, 20)
    networks = Flattener(template).unflatten_rows(samples)["params"]
    for layer, fan_in in (("Dense_0", 784), ("Dense_1", 32)):
        kernel, bound = np.asarray(networks[layer]["kernel"]), np.sqrt(6.0 / fan_in)
        assert np.max(np.abs(kernel)) <= bound
        np.testing.assert_allclose(np.std(kernel), bound / np.sqrt(3.0), rtol=0.02)
        assert np.all(np.asarray(networks[layer]["bias"]) == 0)
    assert np.std(samples[0] - samples[1]) > 0


@pytest.mark.parametrize("num_examples, batch_size, drop_last", [(10, 4, False), (10, 4, True), (12, 4, False)])
def test_zoo_minibatches_are_a_new_permutation_every_epoch(num_examples, batch_size, drop_last):
    key = jax.random.key(3)
    orders = []
    for epoch in range(3):
        indices, weights, step_keys = zoo.epoch_plan(key, epoch, num_examples, batch_size, drop_last)
        used = np.asarray(indices)[np.asarray(weights) > 0]
        expected_batches = num_examples // batch_size if drop_last else -(-num_examples // batch_size)
        assert indices.shape == (expected_batches, batch_size) and len(step_keys) == expected_batches
        if drop_last:
            assert len(set(used.tolist())) == len(used) == expected_batches * batch_size
        else:
            assert sorted(used.tolist()) == list(range(num_examples))  # every example once, padding masked
            assert float(np.sum(weights)) == num_examples
        orders.append(tuple(np.asarray(indices).ravel().tolist()))
    assert len(set(orders)) == 3


def test_flow_minibatches_walk_a_new_permutation_every_epoch():
    key, num_examples, batch_size = jax.random.key(5), 12, 4
    epochs = [
        np.concatenate(
            [np.asarray(minibatch_indices(key, step, num_examples, batch_size)) for step in range(e * 3, e * 3 + 3)]
        )
        for e in range(3)
    ]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(num_examples))
    assert len({tuple(order.tolist()) for order in epochs}) == 3


def test_accuracy_does_not_depend_on_the_test_batch_size():
    data = load_dataset("iris")
    model = MLP((16, 3))
    variables = jax.vmap(lambda key: model.init(key, data.x_test[:1]))(jax.random.split(jax.random.key(0), 3))
    logits = jax.vmap(lambda v: model.apply(v, data.x_test))(variables)
    expected = 100.0 * np.mean(np.argmax(np.asarray(logits), -1) == data.y_test[None], axis=1)
    for batch_size in (7, 8, 30):  # 30 test images: several batches, a short last one, one batch
        accuracy = ensemble_accuracy(model, variables, data.x_test, data.y_test, batch_size=batch_size)
        np.testing.assert_allclose(accuracy, expected)
