"""One flow conditioned on the dataset (Appendix K.1): samples of condition c are networks for dataset c."""

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits
from test_data import write_idx

import configs.mnist_mlp
from dwf_jax import checkpoints, conditioned, data
from dwf_jax.curves import read_scalars
from dwf_jax.evaluate import ensemble_accuracy
from dwf_jax.models import build_model
from dwf_jax.zoo_store import Flattener


def write_digit_tasks(root):
    """Two tasks of one architecture from sklearn's 8x8 digits, as 28x28 IDX folders: the digits under the name
    mnist, and under fashion_mnist the digits in negative, on which a network for the other task fails.
    """
    digits = load_digits()
    images = np.pad(np.kron(digits.images, np.ones((3, 3))) * (255 / 16), ((0, 0), (2, 2), (2, 2))).astype(np.uint8)
    for name, pictures in (("mnist", images), ("fashion_mnist", 255 - images)):
        directory = root / name
        directory.mkdir(parents=True)
        for split, rows in (("train", slice(0, 1500)), ("test", slice(1500, None))):
            images_stem, labels_stem = data.IDX_FILES[split]
            write_idx(directory / images_stem, pictures[rows])
            write_idx(directory / labels_stem, digits.target[rows])


def tiny_configs(data_dir):
    configs = []
    for seed, name in enumerate(("mnist", "fashion_mnist")):
        config = configs_module.get_config()
        config.seed = seed  # zoos of other seeds; zoos of one seed share every init and differ little
        config.data.update(name=name, dir=str(data_dir), source="offline")
        config.model.features = (16, 10)
        config.zoo.update(num_models=6, epochs=15)
        config.flow.update(hidden=64, iterations=1200, batch_size=4, dropout=0.0, learning_rate=1e-3)
        config.flow.update(steps_per_dispatch=200, checkpoint_every=200)
        config.sample.update(num_samples=5, steps=10)
        configs.append(config)
    return configs


configs_module = configs.mnist_mlp


@pytest.fixture(scope="module")
def conditioned_root(tmp_path_factory):
    """The folder of the digit tasks (data/) and of the conditioned run on them (work/)."""
    root = tmp_path_factory.mktemp("conditioned")
    write_digit_tasks(root / "data")
    return root


@pytest.fixture(scope="module")
def conditioned_run(conditioned_root):
    return conditioned.run(tiny_configs(conditioned_root / "data"), conditioned_root / "work", progress=False)


def test_accuracy_matrix_cell_c_d_m_is_sample_m_of_condition_c_on_dataset_d(conditioned_root, conditioned_run):
    """Every cell against an evaluation of the saved samples made here, so a transposed matrix cannot pass."""
    configs = tiny_configs(conditioned_root / "data")
    datasets = [data.load_configured(config.data) for config in configs]
    model = build_model(configs[0].model)
    flattener = Flattener(model.init(jax.random.key(0), datasets[0].x_train[:1]))
    samples = checkpoints.restore_tree(conditioned_root / "work" / "conditioned_samples")["samples"]
    assert samples.shape == (2, configs[0].sample.num_samples, flattener.dim)
    expected = [
        [ensemble_accuracy(model, flattener.unflatten_rows(ensemble), d.x_test, d.y_test) for d in datasets]
        for ensemble in samples
    ]
    np.testing.assert_allclose(conditioned_run["accuracy_matrix"], expected, rtol=0, atol=1e-9)
    for condition, row in enumerate(conditioned_run["per_dataset"]):
        assert row["generated"]["mean"] == pytest.approx(np.mean(expected[condition][condition]), abs=1e-9)


def test_samples_of_condition_c_are_networks_for_dataset_c(conditioned_run):
    """Most samples of condition c do far better on dataset c than on the other (a tiny flow misplaces a few)."""
    accuracy = np.asarray(conditioned_run["accuracy_matrix"])  # [condition, dataset, sample]
    for condition in range(2):
        own, other = accuracy[condition, condition], accuracy[condition, 1 - condition]
        assert np.median(own - other) > 30, accuracy[condition]
    mnist = conditioned_run["per_dataset"][0]
    assert mnist["dataset"] == "mnist" and mnist["original"]["mean"] > 85
    assert mnist["generated"]["mean"] > 75 and mnist["generated"]["mean"] == np.mean(accuracy[0, 0])


def test_configs_of_two_architectures_are_refused(tmp_path):
    mnist, fashion = tiny_configs(tmp_path)
    fashion.model.features = (32, 10)
    with pytest.raises(ValueError, match="model differs between mnist and fashion_mnist"):
        conditioned.run([mnist, fashion], tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_the_conditioned_flow_writes_its_training_curves(conditioned_root, conditioned_run):
    curves = read_scalars(conditioned_root / "work" / "tensorboard" / "flow")
    assert [step for step, _ in curves["flow/loss"]] == list(range(200, 1201, 200))
    assert len(curves["flow/learning_rate"]) == 6
