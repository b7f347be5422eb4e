"""FLoWN's support-set conditioning: support sets, their class-mean embedding, and the flow that sees it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

import configs.mnist_mlp
from dwf_jax import flow
from dwf_jax.flow_stage import sample_flow
from dwf_jax.support import class_mean_embedding, retrieval_scores, sample_support, support_bank, train_encoder

WAYS, SHOTS = 4, 3


@pytest.fixture(scope="module")
def tasks():
    """Two tasks from sklearn's digits as 28x28 images in [0, 1]: the digits, and the digits in negative."""
    digits = load_digits()
    images = np.pad(np.kron(digits.images, np.ones((3, 3))) / 16, ((0, 0), (2, 2), (2, 2)))[..., None]
    images = images.astype(np.float32)
    return [(images, digits.target), (1 - images, digits.target)]


@pytest.fixture(scope="module")
def encoder(tasks):
    """Trained on the digits' second half, as if another dataset; the supports below come from the first half."""
    images, labels = tasks[0]
    return train_encoder(images[900:], labels[900:], 10, seed=0, hidden=8, epochs=1, batch_size=64)


def perturbed(params):
    """Every parameter moved off its init, so the zero-initialised output layer lets the input show."""
    return jax.tree.map(lambda a: a + 0.01 * jnp.arange(a.size).reshape(a.shape) / a.size, params)


def field_output(model, params, support=None, condition=None):
    x = jax.random.normal(jax.random.key(1), (3, model.dim))
    return model.apply(
        {"params": params}, x, jnp.array([0.1, 0.5, 0.9]), train=False, condition=condition, support=support
    )


# Per-leaf sums and outputs of the fields before support conditioning existed (computed with that code).
BEFORE = {
    "Dense_0": (0.015, -3.112021),
    "Dense_1": (0.015, 1.283139),
    "Dense_2": (0.035, -0.669139),
    "Dense_3": (0.015, -0.848057),
    "Dense_4": (0.035, -1.288092),
    "Dense_5": (0.025, 0.235),
    "LayerNorm_0": (0.035, 8.035),
    "LayerNorm_1": (0.015, 4.015),
    "LayerNorm_2": (0.035, 8.035),
}
OUTPUT_ROW_0 = {
    0: [0.019856, 0.022087, 0.024318, 0.02655, 0.028781, 0.031012],
    3: [0.019753, 0.021985, 0.024216, 0.026448, 0.028679, 0.030911],
}
LABEL_LEAVES = {"Dense_2": (0.035, 0.724236), "condition_dense": (0.015, -0.293565), "condition_embedding": (2.57063,)}


@pytest.mark.parametrize("num_conditions", [0, 3])
def test_fields_without_support_keep_their_params_and_outputs(num_conditions):
    model = flow.VelocityField(dim=6, hidden=8, time_embed_dim=4, dropout=0.0, num_conditions=num_conditions)
    condition = jnp.array([0, 2, 1]) if num_conditions else None
    x = jax.random.normal(jax.random.key(1), (3, 6))
    params = perturbed(
        model.init(jax.random.key(0), x, jnp.array([0.1, 0.5, 0.9]), train=False, condition=condition)["params"]
    )
    expected = {**BEFORE, **(LABEL_LEAVES if num_conditions else {})}
    assert sorted(params) == sorted(expected)
    for name, sums in expected.items():
        leaves = [params[name][leaf] for leaf in sorted(params[name])]
        np.testing.assert_allclose([float(jnp.sum(leaf)) for leaf in leaves], sums, atol=2e-6, err_msg=name)
    np.testing.assert_allclose(
        field_output(model, params, condition=condition)[0], OUTPUT_ROW_0[num_conditions], atol=2e-6
    )


def test_support_set_steers_the_field_and_its_order_does_not(tasks, encoder):
    key = jax.random.key(3)
    (digits, labels), (negative, _) = tasks
    support, support_labels = sample_support(key, digits[:900], labels[:900], WAYS, SHOTS)
    assert sorted(support_labels.tolist()) == sorted(list(range(WAYS)) * SHOTS)
    embedding = class_mean_embedding(encoder.features, support, support_labels, WAYS)
    assert embedding.shape == (WAYS * encoder.feature_dim,)
    order = np.random.default_rng(0).permutation(len(support_labels))
    reordered = class_mean_embedding(encoder.features, support[order], support_labels[order], WAYS)
    other_draw = class_mean_embedding(
        encoder.features, *sample_support(jax.random.key(4), digits[:900], labels[:900], WAYS, SHOTS), WAYS
    )
    other_task = class_mean_embedding(encoder.features, *sample_support(key, negative, labels, WAYS, SHOTS), WAYS)

    model = flow.VelocityField(dim=6, hidden=8, time_embed_dim=4, dropout=0.0, condition_dim=embedding.size)
    init = model.init(jax.random.key(0), jnp.zeros((1, 6)), jnp.zeros(1), train=False, support=embedding[None])
    params = perturbed(init["params"])
    assert {"support_dense_0", "support_dense_1"} <= set(params)

    def output(vector):
        return np.asarray(field_output(model, params, support=jnp.broadcast_to(vector, (3, vector.size))))

    np.testing.assert_array_equal(reordered, embedding)  # bitwise: the order of the shots is no information
    np.testing.assert_array_equal(output(reordered), output(embedding))
    # Outputs are ~0.02 (a ulp ~2e-9): the other task moves them ~3e-5, another draw of the same task less.
    assert np.abs(output(other_task) - output(embedding)).max() > 1e-5
    assert np.abs(output(other_draw) - output(embedding)).max() > 1e-7
    with pytest.raises(ValueError, match="needs a support embedding per row"):
        field_output(model, params)


@pytest.mark.parametrize(("ways", "shots"), [(0, 3), (3, 0)])
def test_an_empty_support_set_is_refused(tasks, ways, shots):
    images, labels = tasks[0]
    with pytest.raises(ValueError, match="an empty support set"):
        sample_support(jax.random.key(0), images, labels, ways, shots)


def test_a_class_without_enough_examples_is_refused(tasks):
    images, labels = tasks[0]
    keep = (labels != 2) | (np.cumsum(labels == 2) <= 2)  # two examples of class 2 are left
    with pytest.raises(ValueError, match="class 2 has 2 examples, fewer than shots=3"):
        sample_support(jax.random.key(0), images[keep], labels[keep], WAYS, 3)
    with pytest.raises(ValueError, match="no example of class 3"):
        class_mean_embedding(lambda x: np.ones((len(x), 2)), images[:3], np.array([0, 1, 2]), WAYS)


def test_retrieval_scores_are_the_mean_the_best_and_the_mean_of_the_best_five():
    scores = retrieval_scores(np.array([50.0, 90, 10, 70, 80, 60, 20]))
    assert scores == {"mean": 380 / 7, "top1": 90.0, "top5": 70.0, "min": 10.0}


def test_support_conditioned_training_learns_each_task_from_its_support(tasks, encoder):
    """Rows of task 0 lie near +1, of task 1 near -1; the flow sees only support embeddings of the two tasks."""
    dim, rows = 8, 16
    banks = np.stack(
        [support_bank(jax.random.key(10 + t), encoder.features, *tasks[t], WAYS, SHOTS, 6) for t in range(2)]
    )
    group = np.arange(rows) % 2
    centres = np.where(group[:, None] == 0, 1.0, -1.0)
    data = jnp.asarray(centres + 0.05 * np.random.default_rng(0).normal(size=(rows, dim)), jnp.float32)
    config = configs.mnist_mlp.get_config()
    config.flow.update(hidden=32, time_embed_dim=8, dropout=0.0)
    config.sample.update(steps=10, method="rk4")
    model = flow.VelocityField(dim=dim, hidden=32, time_embed_dim=8, dropout=0.0, condition_dim=banks.shape[-1])
    tx = flow.make_optimizer(3e-3, 0.0, 400)
    state = flow.create_flow_state(model, tx, jax.random.key(0))
    source = flow.Source("normal", 0.1)
    train = flow.make_train_chunk(
        model, tx, batch_size=8, source=source, sigma=1e-3, time_distribution="uniform", beta=(2.0, 5.0)
    )
    state, losses = train(state, jax.random.key(1), data, 400, (jnp.asarray(banks), jnp.asarray(group)))
    losses = np.asarray(losses)
    assert losses[-50:].mean() < 0.1 * losses[:50].mean(), (losses[:50].mean(), losses[-50:].mean())
    for task in range(2):
        held = class_mean_embedding(
            encoder.features, *sample_support(jax.random.key(99), *tasks[task], WAYS, SHOTS), WAYS
        )  # a support set the bank never held
        samples = sample_flow(config, state.params, dim, source, jax.random.key(5), 6, False, support=held)
        assert np.all(np.sign(samples.mean(axis=1)) == (1 if task == 0 else -1)), samples.mean(axis=1)
