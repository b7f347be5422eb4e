"""Finetuning the flow through its sampler: exact gradients, FLoWN's stopgrad, the sampler's own forward values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dwf_jax import flow, pca
from dwf_jax.data import load_dataset
from dwf_jax.models import MLP
from dwf_jax.zoo_store import Flattener


def _tiny_flow(dim: int, seed: int = 0, scale: float = 0.3):
    """A small velocity field with random (not zero) output weights, so every step moves the samples."""
    model = flow.VelocityField(dim=dim, hidden=16, time_embed_dim=8, dropout=0.0)
    params = model.init(jax.random.key(seed), jnp.zeros((1, dim)), jnp.zeros((1,)), train=False)["params"]
    keys = iter(jax.random.split(jax.random.key(seed + 1), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda leaf: leaf + scale * jax.random.normal(next(keys), leaf.shape, leaf.dtype), params)
    return model, params


def _field(model, params):
    return lambda x, t: model.apply({"params": params}, x, t, train=False)


def test_forward_values_are_the_samplers_bitwise():
    model, params = _tiny_flow(12)
    x0 = jax.random.normal(jax.random.key(2), (5, 12))
    for method, num_steps, detach_times in (("rk4", 7, (0.0, 0.45, 1.0)), ("euler", 5, (0.4,))):
        sampled = jax.jit(lambda p, n=num_steps, m=method: flow.integrate(_field(model, p), x0, n, m))(params)
        for detach_time in detach_times:
            detached = jax.jit(
                lambda p, n=num_steps, m=method, t=detach_time: flow.integrate_detached(_field(model, p), x0, n, m, t)
            )(params)
            np.testing.assert_array_equal(detached, sampled)
    eager = flow.integrate_detached(_field(model, params), x0, 7, "rk4", 0.45)
    np.testing.assert_array_equal(eager, flow.integrate(_field(model, params), x0, 7, "rk4"))


def test_gradient_through_the_sampler_matches_finite_differences():
    with jax.enable_x64(True):
        model, params = _tiny_flow(8, seed=3)
        params = jax.tree.map(lambda leaf: leaf.astype(jnp.float64), params)
        x0 = jax.random.normal(jax.random.key(4), (3, 8), jnp.float64)
        weights = jax.random.normal(jax.random.key(5), (3, 8), jnp.float64)

        @jax.jit
        def scalar(p):
            return jnp.sum(weights * flow.integrate_detached(_field(model, p), x0, 4, "rk4", 0.0))

        keys = iter(jax.random.split(jax.random.key(6), len(jax.tree.leaves(params))))
        direction = jax.tree.map(lambda leaf: jax.random.normal(next(keys), leaf.shape, leaf.dtype), params)
        gradient = jax.jit(jax.grad(scalar))(params)
        analytic = sum(
            jnp.vdot(g, u) for g, u in zip(jax.tree.leaves(gradient), jax.tree.leaves(direction), strict=True)
        )
        h = 1e-5
        shifted = [jax.tree.map(lambda p, u, s=s: p + s * h * u, params, direction) for s in (1.0, -1.0)]
        numeric = (scalar(shifted[0]) - scalar(shifted[1])) / (2 * h)
        assert abs(float(analytic)) > 1e-2  # a direction the samples do depend on
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-8)


def _step_gradients(method, num_steps, detach_time):
    """d(sum of weighted samples)/d eps, where eps[i] is added to the velocity of step i (RK4's last stage, at the
    next step's start time, reads eps[i + 1])."""
    model, params = _tiny_flow(6, seed=7)
    x0 = jax.random.normal(jax.random.key(8), (4, 6))
    weights = jax.random.normal(jax.random.key(9), (4, 6))

    def scalar(eps, integrate):
        def velocity(x, t):
            return _field(model, params)(x, t) + eps[jnp.floor(t * num_steps + 0.25).astype(jnp.int32)][:, None]

        return jnp.sum(weights * integrate(velocity))

    eps = jnp.zeros(num_steps + 1)
    detached = jax.grad(scalar)(eps, lambda v: flow.integrate_detached(v, x0, num_steps, method, detach_time))
    plain = jax.grad(scalar)(eps, lambda v: flow.integrate(v, x0, num_steps, method))
    return np.asarray(detached)[:num_steps], np.asarray(plain)[:num_steps]


@pytest.mark.parametrize(
    ("method", "detach_time", "frozen"),
    [("rk4", 0.0, 0), ("rk4", 0.3, 3), ("rk4", 0.45, 4), ("rk4", 1.0, 10), ("euler", 0.0, 0), ("euler", 0.4, 4)],
)
def test_stopgrad_zeroes_exactly_the_steps_before_t_prime(method, detach_time, frozen):
    assert flow.detached_steps(detach_time, 10) == frozen
    detached, plain = _step_gradients(method, 10, detach_time)
    np.testing.assert_array_equal(detached[:frozen], 0.0)
    assert np.all(np.abs(detached[frozen:]) > 1e-6)
    assert np.all(np.abs(plain) > 1e-6)
    if frozen == 0:  # nothing detached: the gradient of the undetached sampler
        np.testing.assert_allclose(detached, plain, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("detach_time", [-0.1, 1.5, float("nan")])
def test_detach_time_outside_zero_one_is_one_clear_error(detach_time):
    model, params = _tiny_flow(6)
    with pytest.raises(ValueError, match=r"detach_time=.*must lie in \[0, 1\]"):
        flow.integrate_detached(_field(model, params), jnp.zeros((2, 6)), 5, "rk4", detach_time)
    settings = flow.Finetuning(steps=1, learning_rate=1e-3, detach_time=detach_time)
    with pytest.raises(ValueError, match=r"detach_time=.*must lie in \[0, 1\]"):
        flow.finetune_flow(
            model,
            params,
            lambda rows: rows,
            lambda variables, x: x,
            np.zeros((4, 6)),
            np.zeros(4, np.int32),
            jax.random.key(0),
            source=flow.Source("normal", 1.0),
            settings=settings,
        )


def test_differentiable_steps_are_rematerialised():
    """The backward pass keeps one step's activations, not every stage's: far less scratch memory."""
    model, params = _tiny_flow(16)
    x0 = jax.random.normal(jax.random.key(1), (32, 16))

    def temp_bytes(integrate):
        loss = lambda p: jnp.sum(integrate(_field(model, p)) ** 2)  # noqa: E731
        analysis = jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis()
        return None if analysis is None else analysis.temp_size_in_bytes

    plain = temp_bytes(lambda v: flow.integrate(v, x0, 12, "rk4"))
    rematerialised = temp_bytes(lambda v: flow.integrate_detached(v, x0, 12, "rk4", 0.0))
    if plain is None:
        pytest.skip("this backend reports no compiled memory")
    assert rematerialised < plain / 4


def test_decoders_write_the_flow_space_into_networks():
    template = {
        "batch_stats": {"bn": {"mean": np.zeros(3), "var": np.ones(3)}},
        "params": {
            "bn": {"bias": np.zeros(3), "scale": np.ones(3)},
            "dense": {"bias": np.zeros(2), "kernel": np.zeros((3, 2))},
        },
    }
    flattener = Flattener(template)
    columns = flow.batchnorm_columns(template)
    base = np.arange(flattener.dim, dtype=np.float32)
    unchanged = np.setdiff1d(np.arange(flattener.dim), columns)
    nets = flow.column_decoder(base, columns, flattener)(jnp.full((2, columns.size), -1.0))
    for row in flattener.rows(nets):
        np.testing.assert_array_equal(row[columns], -1.0)
        np.testing.assert_array_equal(row[unchanged], base[unchanged])
    np.testing.assert_array_equal(nets["params"]["bn"]["scale"], -1.0)
    np.testing.assert_array_equal(
        nets["params"]["dense"]["kernel"], np.broadcast_to(base[-6:].reshape(3, 2), (2, 3, 2))
    )
    np.testing.assert_array_equal(nets["batch_stats"]["bn"]["var"], np.broadcast_to(base[3:6], (2, 3)))
    with pytest.raises(ValueError, match="no BatchNorm"):
        flow.batchnorm_columns({"params": template["params"]})

    zoo = jax.random.normal(jax.random.key(0), (6, flattener.dim))
    state = pca.fit_dual(zoo, 5)
    coefficients = pca.transform(state, zoo)
    decoded = flow.pca_decoder(state, flattener)(coefficients)
    np.testing.assert_allclose(np.stack(list(flattener.rows(decoded))), zoo, atol=1e-5)


def _accuracy(nets, x, y):
    logits = jax.vmap(lambda variables: MLP((4, 3)).apply(variables, x))(nets)
    return 100.0 * float(jnp.mean(jnp.argmax(logits, -1) == y[None]))


def test_finetuning_through_the_sampler_learns_a_new_task():
    """A flow over Iris MLPs, finetuned toward permuted labels, generates nets that solve the permuted task."""
    data = load_dataset("iris")
    net = MLP((4, 3))
    flattener = Flattener(net.init(jax.random.key(0), data.x_train[:1]))
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

    def train_one(key):  # a zoo member: full-batch Adam on the original labels
        variables, tx = net.init(key, x[:1]), optax.adam(0.05)

        def step(carry, _):
            variables, state = carry
            grads = jax.grad(lambda v: flow.mean_cross_entropy(net.apply, jax.tree.map(lambda a: a[None], v), x, y))(
                variables
            )
            updates, state = tx.update(grads, state)
            return (optax.apply_updates(variables, updates), state), None

        return jax.lax.scan(step, (variables, tx.init(variables)), None, length=150)[0][0]

    zoo = jax.jit(jax.vmap(train_one))(jax.random.split(jax.random.key(1), 16))
    rows = jnp.stack(list(flattener.rows(zoo)))
    source = flow.Source("normal", 0.5)
    model = flow.VelocityField(dim=flattener.dim, hidden=16, time_embed_dim=8, dropout=0.0)
    tx = flow.make_optimizer(3e-3, 0.0, 300)
    state = flow.create_flow_state(model, tx, jax.random.key(2))
    chunk = flow.make_train_chunk(
        model, tx, batch_size=8, source=source, sigma=1e-3, time_distribution="uniform", beta=(2.0, 5.0)
    )
    params = chunk(state, jax.random.key(3), rows, 300)[0].params
    decode = flow.full_weight_decoder(flattener)
    permuted_train, permuted_test = (y + 1) % 3, (jnp.asarray(data.y_test) + 1) % 3

    def generated_accuracy(params):
        samples = flow.sample_ensemble(
            _field(model, params), jax.random.key(4), 32, flattener.dim, source=source, num_steps=8, method="rk4"
        )
        return _accuracy(decode(samples), jnp.asarray(data.x_test), permuted_test)

    before = generated_accuracy(params)
    settings = flow.Finetuning(steps=60, learning_rate=1e-2, num_samples=8, batch_size=64, ode_steps=8)
    tuned, losses = flow.finetune_flow(
        model, params, decode, net.apply, x, permuted_train, jax.random.key(5), source=source, settings=settings
    )
    after = generated_accuracy(tuned)
    assert losses.shape == (60,) and losses[-10:].mean() < 0.5 * losses[:5].mean()
    assert after > before + 40.0, (before, after)
    assert after > 80.0, (before, after)
