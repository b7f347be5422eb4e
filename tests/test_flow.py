"""Flow matching learns a toy distribution; the ODE solvers are exact where they must be."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from dwf_jax import flow


def test_rk4_integrates_linear_ode_and_counts_evaluations():
    matrix = jnp.array([[0.0, 1.0], [-1.0, -0.1]])
    calls = []

    def velocity(x, t):
        calls.append(1)
        return x @ matrix.T

    x0 = jnp.array([[1.0, 0.0], [0.5, -2.0]])
    x1 = flow.integrate(velocity, x0, num_steps=100, method="rk4")
    exact = x0 @ scipy.linalg.expm(np.asarray(matrix)).T
    np.testing.assert_allclose(x1, exact, atol=1e-6)
    assert flow.num_function_evals("rk4", 100) == 400
    assert len(calls) == 4  # traced once inside lax.scan: 4 evaluations per step


def test_euler_is_first_order_and_counts():
    x0 = jnp.ones((1, 1))
    x1 = flow.integrate(lambda x, t: x, x0, num_steps=1000, method="euler")
    np.testing.assert_allclose(x1, np.e, rtol=2e-3)
    assert flow.num_function_evals("euler", 1000) == 1000
    with pytest.raises(ValueError, match="unknown ODE method"):
        flow.num_function_evals("heun", 10)


def test_time_dependent_field():
    x1 = flow.integrate(lambda x, t: jnp.broadcast_to(3.0 * t[:, None] ** 2, x.shape), jnp.zeros((2, 3)), 50, "rk4")
    np.testing.assert_allclose(x1, 1.0, atol=1e-6)


def _toy_training(iterations):
    key = jax.random.key(0)
    data = jnp.concatenate([jnp.full((16, 4), 1.0), jnp.full((16, 4), -1.0)]) + 0.05 * jax.random.normal(key, (32, 4))
    model = flow.VelocityField(dim=4, hidden=64, time_embed_dim=8, dropout=0.0)
    tx = flow.make_optimizer(3e-3, 1e-5, iterations)
    state = flow.create_flow_state(model, tx, jax.random.key(1))
    train_chunk = flow.make_train_chunk(
        model,
        tx,
        batch_size=8,
        source=flow.Source("normal", 1.0),
        sigma=1e-3,
        time_distribution="uniform",
        beta=(2.0, 5.0),
    )
    state, losses = train_chunk(state, jax.random.key(2), data, iterations)
    return model, state, losses


def test_flow_loss_decreases_and_samples_land_on_the_data():
    model, state, losses = _toy_training(600)
    assert float(jnp.mean(losses[-100:])) < 0.5 * float(jnp.mean(losses[:20]))
    samples = flow.sample_ensemble(
        lambda x, t: model.apply({"params": state.params}, x, t, train=False),
        jax.random.key(3),
        64,
        4,
        source=flow.Source("normal", 1.0),
        num_steps=50,
        method="rk4",
    )
    distance_to_nearest_mode = jnp.minimum(jnp.abs(samples - 1.0), jnp.abs(samples + 1.0)).mean()
    assert float(distance_to_nearest_mode) < 0.3


def test_output_layer_starts_at_zero():
    model = flow.VelocityField(dim=5, hidden=8, time_embed_dim=4, dropout=0.1)
    params = model.init(jax.random.key(0), jnp.ones((2, 5)), jnp.ones((2,)), train=False)["params"]
    out = model.apply({"params": params}, jnp.ones((2, 5)), jnp.full((2,), 0.3), train=False)
    np.testing.assert_array_equal(out, 0.0)


def test_training_is_deterministic():
    _, state_a, _ = _toy_training(50)
    _, state_b, _ = _toy_training(50)
    jax.tree.map(np.testing.assert_array_equal, state_a.params, state_b.params)


def test_beta_time_distribution_is_skewed_to_noise():
    t = flow.sample_time(jax.random.key(0), 20_000, "beta", (2.0, 5.0))
    assert abs(float(t.mean()) - 2.0 / 7.0) < 0.01
    with pytest.raises(ValueError, match="unknown time distribution"):
        flow.sample_time(jax.random.key(0), 4, "cauchy", (1.0, 1.0))
