"""The vmapped zoo equals the same seeds trained one by one; training learns."""

import jax
import numpy as np
import pytest
from tiny_runs import train_iris_models

from dwf_jax import checkpoints, zoo
from dwf_jax.augment import input_pipeline
from dwf_jax.data import load_dataset
from dwf_jax.evaluate import ensemble_accuracy
from dwf_jax.models import MLP
from dwf_jax.settings import differences


def test_vmapped_zoo_matches_one_by_one():
    together, _ = train_iris_models([0, 1, 2])
    for i in range(3):
        alone, _ = train_iris_models([i])
        jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b[0], atol=1e-5, rtol=0), together, alone)


def test_models_differ_and_learn():
    data = load_dataset("iris")
    variables, losses = train_iris_models([0, 1, 2, 3], epochs=30)
    kernels = variables["params"]["Dense_0"]["kernel"]
    assert not np.allclose(kernels[0], kernels[1])
    accuracy = ensemble_accuracy(MLP((16, 3)), variables, data.x_test, data.y_test)
    assert accuracy.shape == (4,) and np.all(accuracy > 70.0), accuracy
    assert np.all(losses < 0.6), losses


def test_mixed_precision_learns_in_bf16_and_keeps_float32_weights():
    """zoo.compute_dtype bfloat16: the forward and backward pass round to bf16 (the zoo differs from float32's),
    the optimizer's weights stay float32, and the models learn as well."""
    data = load_dataset("iris")
    mixed, losses = train_iris_models([0, 1, 2, 3], epochs=30, compute_dtype="bfloat16")
    full, _ = train_iris_models([0, 1, 2, 3], epochs=30)
    assert {leaf.dtype for leaf in jax.tree.leaves(mixed)} == {np.dtype(np.float32)}
    difference = np.abs(mixed["params"]["Dense_0"]["kernel"] - full["params"]["Dense_0"]["kernel"]).max()
    assert 1e-4 < difference < 0.5, difference
    accuracy = ensemble_accuracy(MLP((16, 3)), mixed, data.x_test, data.y_test)
    assert np.all(accuracy > 70.0) and np.all(losses < 0.6), (accuracy, losses)


def test_chunks_cover_every_model_once():
    parts = zoo.chunks(10, 4)
    assert [len(p) for p in parts] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(10))


def test_cosine_schedule_anneals_the_step_size():
    tx = zoo.make_optimizer("adam", 0.1, 0.0, schedule="cosine", total_steps=10)
    params = {"w": np.ones(3, np.float32)}
    state = tx.init(params)
    sizes = []
    for _ in range(10):
        updates, state = tx.update({"w": np.ones(3, np.float32)}, state, params)
        sizes.append(float(np.abs(updates["w"]).max()))
    assert abs(sizes[0] - 0.1) < 1e-3 and sizes[-1] < 0.05 * sizes[0]
    assert all(a >= b for a, b in zip(sizes, sizes[1:], strict=False))


@pytest.mark.parametrize("models_per_vmap, scan_steps", [(3, True), (1, False), (0, False)])
def test_dispatch_strategies_give_the_same_zoo(models_per_vmap, scan_steps):
    data = load_dataset("iris")
    common = dict(
        seed=3, model_indices=np.arange(4), epochs=2, batch_size=16, inputs=input_pipeline("iris"), progress=False
    )
    tx = zoo.make_optimizer("adam", 1e-2, 0.0)
    reference, reference_losses = zoo.train_models(MLP((16, 3)), tx, data.x_train, data.y_train, **common)
    other, losses = zoo.train_models(
        MLP((16, 3)), tx, data.x_train, data.y_train, models_per_vmap=models_per_vmap, scan_steps=scan_steps, **common
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), reference, other)
    np.testing.assert_allclose(reference_losses, losses, rtol=1e-5)


def test_sgd_is_momentum_sgd_with_decoupled_weight_decay_added_to_the_gradient():
    tx = zoo.make_optimizer("sgd", 0.1, 0.01)
    params = {"w": np.array([1.0, -2.0], np.float32)}
    grads = {"w": np.array([0.5, 0.5], np.float32)}
    state = tx.init(params)
    velocity = np.zeros(2)
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        velocity = 0.9 * velocity + (grads["w"] + 0.01 * params["w"])  # torch.optim.SGD(momentum=0.9, weight_decay)
        np.testing.assert_allclose(updates["w"], -0.1 * velocity, rtol=1e-6)
        params = {"w": params["w"] + updates["w"]}
    with pytest.raises(ValueError, match="unknown zoo optimizer 'lion'"):
        zoo.make_optimizer("lion", 0.1, 0.0)


def _train_two_iris_models(saves: checkpoints.TrainingCheckpoints, epochs: int, checkpoint_every: int = 1) -> None:
    data = load_dataset("iris")
    zoo.train_models(
        MLP((4, 3)),
        zoo.make_optimizer("adam", 1e-2, 0.0),
        data.x_train,
        data.y_train,
        seed=0,
        model_indices=np.arange(2),
        epochs=epochs,
        batch_size=64,
        inputs=input_pipeline("iris"),
        saves=saves,
        checkpoint_every=checkpoint_every,
        progress=False,
    )


def test_checkpoints_every_k_epochs_and_at_the_end(tmp_path):
    saves = checkpoints.TrainingCheckpoints(tmp_path / "chunk", settings={}, differences=differences, keep=10)
    _train_two_iris_models(saves, epochs=7, checkpoint_every=3)
    assert saves.steps() == [3, 6, 7]


def test_training_stopped_by_ctrl_c_seals_its_last_save(tmp_path, monkeypatch):
    """The save in flight is finished and sealed on the way out: orbax's writer threads never wait on it."""
    epochs_seen = []
    saves = checkpoints.TrainingCheckpoints(tmp_path / "chunk", settings={}, differences=differences, keep=10)
    original_save = saves.save

    def save_then_ctrl_c(step, state):
        original_save(step, state)
        epochs_seen.append(step)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(saves, "save", save_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _train_two_iris_models(saves, epochs=5)
    assert epochs_seen == [1, 2] and saves.steps() == [1, 2]
    assert not list((tmp_path / "chunk").glob("*.dwf-partial"))
    assert checkpoints.verify(tmp_path / "chunk" / "2")
