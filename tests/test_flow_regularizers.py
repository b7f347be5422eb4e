"""flow.target_noise and flow.early_stopping, two knobs of the novelty frontier (issue 26)."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_runs import tiny_config

from dwf_jax import checkpoints, flow
from dwf_jax.flow_stage import sample_flow, train_flow_stage
from dwf_jax.settings import differences
from dwf_jax.validation import validate_config

SOURCE = flow.Source("normal", 0.01)


def _config(**flow_settings):
    config = tiny_config()
    config.zoo.update(num_models=6, held_out=1 / 3)
    config.flow.update(iterations=60, validate_every=20, checkpoint_every=20, steps_per_dispatch=20)
    config.flow.update({"early_stopping": True, **flow_settings})
    return config


def _zoo():
    """Four training rows and two held-out rows of one distribution."""
    rows = np.random.default_rng(0).normal(size=(6, 12)).astype(np.float32)
    return jnp.asarray(rows[:4]), jnp.asarray(rows[4:])


def _train(config, folder, held_out):
    training, _ = _zoo()
    saves = checkpoints.TrainingCheckpoints(folder, {}, differences, keep=10)
    return train_flow_stage(config, training, SOURCE, saves, progress=False, held_out=held_out)


def test_early_stopping_keeps_the_step_with_the_lowest_held_out_loss(tmp_path, monkeypatch):
    """Held-out losses 3, 1, 2 at steps 20, 40, 50 (the last step is validated too): step 40's parameters."""
    scripted = iter([3.0, 1.0, 2.0])
    monkeypatch.setattr(flow, "make_validation_loss", lambda model, **_: lambda *_: next(scripted))
    _, held_out = _zoo()
    trained = _train(_config(iterations=50), tmp_path / "saves", held_out)
    np.testing.assert_array_equal(trained["held_out_losses"], [3.0, 1.0, 2.0])
    assert int(trained["best_step"]) == 40
    at = {step: checkpoints.restore_tree(tmp_path / "saves" / str(step))["state"]["params"] for step in (40, 50)}
    jax.tree.map(np.testing.assert_array_equal, trained["params"], at[40])
    assert not np.array_equal(jax.tree.leaves(trained["params"])[0], jax.tree.leaves(at[50])[0])


def test_early_stopping_resumes_to_the_same_step_and_parameters(tmp_path):
    config = _config()
    _, held_out = _zoo()
    whole = _train(config, tmp_path / "whole", held_out)
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    for step in ("40", "60"):
        shutil.rmtree(tmp_path / "resumed" / step)
    resumed = _train(config, tmp_path / "resumed", held_out)
    assert int(resumed["best_step"]) == int(whole["best_step"])
    np.testing.assert_array_equal(resumed["held_out_losses"], whole["held_out_losses"])
    jax.tree.map(np.testing.assert_array_equal, resumed["params"], whole["params"])


def test_the_held_out_loss_is_lower_for_models_of_the_zoo_the_flow_learned(tmp_path):
    """A flow trained on four rows scores those rows better than rows it never saw: the loss tells them apart."""
    config = _config(iterations=400, validate_every=400, checkpoint_every=400, steps_per_dispatch=400)
    training, held_out = _zoo()
    on_training = _train(config, tmp_path / "training", training)["held_out_losses"][0]
    on_held_out = _train(config, tmp_path / "held_out", held_out)["held_out_losses"][0]
    assert on_training < 0.5 * on_held_out


def test_early_stopping_without_held_out_models_is_one_clear_error(tmp_path):
    config = _config()
    config.zoo.held_out = 0.0
    with pytest.raises(ValueError, match="flow.early_stopping needs held-out models"):
        validate_config(config)
    with pytest.raises(ValueError, match="validate_every=60 >= flow.iterations=60 checks only the last step"):
        validate_config(_config(validate_every=60))
    with pytest.raises(ValueError, match="flow.early_stopping needs an unconditioned flow and held-out models"):
        _train(_config(), tmp_path / "saves", None)
    assert not (tmp_path / "saves").exists()


def test_target_noise_blurs_the_zoo_the_flow_learns(tmp_path):
    """A zoo of one model repeated: exact targets give back that model, noisy targets a cloud of its width."""
    model = np.random.default_rng(1).normal(size=(1, 8)).astype(np.float32)
    zoo = jnp.asarray(np.repeat(model, 8, axis=0))
    spreads = {}
    for noise in (0.0, 0.3):
        config = _config(early_stopping=False, target_noise=noise, iterations=1500, hidden=64)
        config.flow.update(steps_per_dispatch=1500, checkpoint_every=1500, learning_rate=3e-3, dropout=0.0)
        saves = checkpoints.TrainingCheckpoints(tmp_path / str(noise), {}, differences)
        params = train_flow_stage(config, zoo, SOURCE, saves, progress=False)["params"]
        samples = sample_flow(config, params, 8, SOURCE, jax.random.key(0), 200, progress=False)
        spreads[noise] = float(np.std(samples - model))
    assert spreads[0.0] < 0.1 and 0.15 < spreads[0.3] < 0.45, spreads
