"""Flow matching learns a toy distribution; the ODE solvers are exact where they must be."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from dwf_jax import flow
from dwf_jax.flow.source import kernel_fan_in
from dwf_jax.models import model_config, model_initializer
from dwf_jax.validation import validate_config


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


# max |w| / sqrt(6 / fan_in) as draws pile up: 1 for Kaiming-uniform kernels; flax's default lecun_normal is a
# normal of std sqrt(1 / fan_in) / 0.8796 truncated at 2 std.
KAIMING_UNIFORM_MAX, LECUN_NORMAL_MAX = 1.0, 2.0 / 0.87962566103423978 / np.sqrt(6.0)
KAIMING_MODELS = {
    "mlp": (model_config("mlp", features=(16, 3)), jnp.zeros((1, 4)), KAIMING_UNIFORM_MAX, 200),
    "smallcnn": (model_config("smallcnn"), jnp.zeros((1, 32, 32, 3)), LECUN_NORMAL_MAX, 40),
}  # the ResNets have Conv and Dense kernels as these do; the config test below covers them
REFUSED_MODELS = {
    "vit_small": (model_config("vit_small", dim=16, depth=1, heads=2), jnp.zeros((1, 8, 8, 3)), "cls_token"),
    "bert": (
        model_config("bert", vocab_size=50, hidden=16, layers=1, heads=2, intermediate=32, max_length=8),
        jnp.ones((1, 8), jnp.int32),
        "position_embedding/embedding",
    ),
}


def _observed_max_over_bound(init, draws: int) -> dict[str, float]:
    """Per kernel, max |w| over `draws` initialisations divided by its Kaiming bound; every other bound must be 0."""
    template = init(jax.random.key(0))
    variables = jax.jit(jax.vmap(init))(jax.random.split(jax.random.key(1), draws))
    ratios = {}
    for (path, leaf), bound in zip(
        jax.tree_util.tree_leaves_with_path(variables),
        jax.tree_util.tree_leaves(flow.kaiming_bounds(template)),
        strict=True,
    ):
        name = jax.tree_util.keystr(path)
        assert np.ptp(bound) == 0, name
        if name.endswith("['kernel']"):
            ratios[name] = float(np.max(np.abs(leaf)) / bound.flat[0])
        else:
            assert bound.flat[0] == 0, name
    return ratios


@pytest.mark.parametrize("name", sorted(KAIMING_MODELS))
def test_kaiming_bounds_use_the_fan_in_of_each_kernels_initialiser(name):
    """A wrong fan-in moves max |w| / bound by a factor sqrt(fan_in ratio), far outside 2%."""
    config, sample, expected, draws = KAIMING_MODELS[name]
    init = model_initializer(config)
    ratios = _observed_max_over_bound(lambda key: init(key, 0, sample), draws)
    assert ratios
    for kernel, ratio in ratios.items():
        assert 0.98 * expected <= ratio <= expected * (1 + 1e-6), (kernel, ratio, expected)


def test_kaiming_bounds_of_attention_kernels_count_only_their_input_axes():
    """query/key/value (16, heads, head_dim) have fan-in 16, out (heads, head_dim, 16) has heads * head_dim = 8."""
    attention = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)
    sample = jnp.zeros((1, 3, 16))
    ratios = _observed_max_over_bound(lambda key: attention.init(key, sample), 200)
    assert len(ratios) == 4
    for kernel, ratio in ratios.items():
        assert 0.98 * LECUN_NORMAL_MAX <= ratio <= LECUN_NORMAL_MAX * (1 + 1e-6), (kernel, ratio)
    assert kernel_fan_in(("params", "query", "kernel"), (16, 2, 4)) == 16
    assert kernel_fan_in(("params", "out", "kernel"), (2, 4, 16)) == 8


@pytest.mark.parametrize("name", sorted(REFUSED_MODELS))
def test_kaiming_source_refuses_leaves_without_a_kaiming_init(name):
    config, sample, leaf = REFUSED_MODELS[name]
    variables = jax.eval_shape(lambda: model_initializer(config)(jax.random.key(0), 0, sample))
    with pytest.raises(ValueError, match=f"no Kaiming bound for params/.*{leaf}"):
        flow.kaiming_bounds(variables)


@pytest.mark.parametrize("name", sorted([*KAIMING_MODELS, "resnet20", "resnet18", *REFUSED_MODELS]))
def test_config_refuses_the_kaiming_source_exactly_for_models_kaiming_bounds_refuses(name):
    config = importlib.import_module(f"configs.{'mnist_mlp' if name == 'mlp' else name}").get_config()
    config.flow.source, config.pca.method, config.zoo.on_disk = "kaiming", "none", False
    if name in REFUSED_MODELS:
        with pytest.raises(ValueError, match=f"flow.source='kaiming' needs .* model '{name}'"):
            validate_config(config)
    else:
        validate_config(config)
