"""What the FLoWN experiments share: the MLP zoo configs of MNIST, Fashion-MNIST and held-out digits, the digits
dataset, the frozen CIFAR encoder, the support banks and the support-conditioned flow trained on the zoos.

`experiments/flown_retrieval.py` (Table 2, retrieval) and `experiments/flown_init.py` (Table 3, generated
initializations) differ only in the zoos' epochs and in what they do with the flow (`SupportFlow`) afterwards.
"""

import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import mnist_mlp
from dwf_jax import flow, keys, stages
from dwf_jax.conditioned import conditioned_settings
from dwf_jax.data import IDX_FILES, Dataset, load_configured, load_dataset
from dwf_jax.flow_stage import flow_source, sample_flow, train_flow_stage
from dwf_jax.pipeline import canonical_zoo, workdir_for
from dwf_jax.session import opened
from dwf_jax.support import Encoder, class_mean_embedding, sample_support, support_bank, train_encoder
from dwf_jax.workdir import Workdir
from dwf_jax.zoo_store import Flattener

PyTree = Any
TRAINED, HELD_OUT = ("mnist", "fashion_mnist"), "digits"
ENCODER = "cifar10-grey 784-64-10, 2 epochs, seed 0"


def write_digits(directory: pathlib.Path) -> None:
    """sklearn's digits as 28x28 uint8 IDX files (3x upsampled, padded by 2): train 1500, test 297."""
    from sklearn.datasets import load_digits

    if directory.exists():
        return
    digits = load_digits()
    images = np.pad(np.kron(digits.images, np.ones((3, 3))) * (255 / 16), ((0, 0), (2, 2), (2, 2))).astype(np.uint8)
    directory.mkdir(parents=True)
    for split, rows in (("train", slice(0, 1500)), ("test", slice(1500, None))):
        for stem, array in zip(IDX_FILES[split], (images[rows], digits.target[rows].astype(np.uint8)), strict=True):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
            (directory / stem).write_bytes(header + array.tobytes())


def dataset_configs(
    root: pathlib.Path,
    data_dir: str | None,
    num_models: int,
    epochs: int,
    hidden: int,
    flow_iterations: int,
    digits_epochs: int = 15,
) -> dict[str, ml_collections.ConfigDict]:
    """The MLP [784, 16, 10] config of each dataset (seed = its position): MNIST and Fashion-MNIST zoos of `epochs`
    epochs, digits (written under root/digits_data, loaded under the name mnist) of `digits_epochs`; the
    full-weight flow settings are shared (the flow reads its settings from the first)."""
    write_digits(root / "digits_data" / "mnist")
    configs = {}
    for seed, name in enumerate((*TRAINED, HELD_OUT)):
        config = mnist_mlp.get_config()
        config.seed = seed
        digits = name == HELD_OUT
        config.data.update(name="mnist" if digits else name, dir=str(root / "digits_data") if digits else data_dir)
        config.model.features = (16, 10)
        config.zoo.update(num_models=num_models, epochs=digits_epochs if digits else epochs)
        config.flow.update(hidden=hidden, iterations=flow_iterations, dropout=0.0, learning_rate=1e-3)
        config.flow.update(steps_per_dispatch=500, checkpoint_every=1000)
        configs[name] = config
    return configs


def grey_cifar(data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 training images as 28x28 grey in [0, 1] (channel mean, centre crop): the encoder's dataset."""
    cifar = load_dataset("cifar10", data_dir, "offline")
    return (cifar.x_train[:, 2:30, 2:30].astype(np.float32).mean(-1, keepdims=True) / 255), cifar.y_train


class SupportFlow(NamedTuple):
    """A support-conditioned flow over the TRAINED zoos, and everything needed to condition and score it."""

    configs: dict[str, ml_collections.ConfigDict]
    datasets: dict[str, Dataset]
    encoder: Encoder
    extra: dict  # the encoder and support settings, as recorded in the flow's workdir
    flattener: Flattener
    evaluators: dict[str, stages.Evaluator]
    zoos: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (test accuracies, canonical weights (N, D))
    banks: np.ndarray  # (len(TRAINED), bank_size, ways * feature_dim)
    key: jax.Array  # the banks' stream; fold_in(key, i) is TRAINED[i]'s bank
    source: flow.Source
    flow: dict  # the support_flow stage: params, losses, num_params

    @property
    def config(self) -> ml_collections.ConfigDict:
        """The shared flow and sample settings."""
        return self.configs[TRAINED[0]]

    def embedding(self, key: jax.Array, name: str) -> np.ndarray:
        """The class-mean embedding of one random support set of dataset `name`'s training split."""
        d, ways = self.datasets[name], self.extra["ways"]
        support = sample_support(key, d.x_train, d.y_train, ways, self.extra["shots"])
        return class_mean_embedding(self.encoder.features, *support, ways)

    def generate(self, embedding: np.ndarray, key: jax.Array, count: int) -> PyTree:
        """`count` nets for the task of `embedding`, as stacked variables (one RK integration from `key`)."""
        dim = self.flattener.dim
        samples = sample_flow(self.config, self.flow["params"], dim, self.source, key, count, False, support=embedding)
        return self.flattener.unflatten_rows(samples)


def support_flow(
    root: pathlib.Path,
    configs: dict[str, ml_collections.ConfigDict],
    data_dir: str | None,
    ways: int,
    shots: int,
    bank_size: int,
    zoo_names: tuple[str, ...] = (*TRAINED, HELD_OUT),
) -> SupportFlow:
    """Train (or load from `root`) the zoos of `zoo_names` and the flow on the TRAINED zoos, each row paired per
    step with one of `bank_size` `ways`-way `shots`-shot support embeddings of its dataset (`dwf_jax.support`).

    The encoder is the hidden layer of a 784-64-10 MLP trained for 2 epochs on grey, centre-cropped CIFAR-10: none
    of the zoos' datasets. Every dataset of `configs` is loaded and gets an evaluator, with or without a zoo.
    """
    datasets = {name: load_configured(config.data) for name, config in configs.items()}
    encoder = train_encoder(*grey_cifar(data_dir), 10, seed=0, hidden=64, epochs=2)
    extra = {"encoder": ENCODER, "bank_size": bank_size}
    extra.update(ways=ways, shots=shots, trained=list(TRAINED))
    settings = conditioned_settings([configs[n] for n in TRAINED], [datasets[n] for n in TRAINED])
    work = Workdir(root / "flow", {stage: {**value, **extra} for stage, value in settings.items()})
    work.settings = {"support_flow": work.settings["conditioned_flow"]}
    zoo_works = {n: workdir_for(configs[n], datasets[n], root / n) for n in zoo_names}
    config = configs[TRAINED[0]]  # the shared flow and sample settings
    with opened([work, *zoo_works.values()], [None, *(configs[n] for n in zoo_names)]):
        template = stages.model_template(config, datasets[TRAINED[0]])
        flattener = Flattener(template)
        evaluators = {n: stages.evaluator(c, datasets[n]) for n, c in configs.items()}
        zoos = {}
        for n in zoo_names:
            zoo_stage, _, _, canonical = canonical_zoo(
                configs[n], datasets[n], zoo_works[n], flattener, evaluators[n], True
            )
            zoos[n] = (np.asarray(zoo_stage["test_accuracy"]), canonical.as_array())
        key = jax.random.fold_in(keys.stage_key(config.seed, "sample"), 1 << 20)  # disjoint from fold_in(., i)
        banks = np.stack(
            [
                support_bank(
                    jax.random.fold_in(key, i),
                    encoder.features,
                    datasets[n].x_train,
                    datasets[n].y_train,
                    ways,
                    shots,
                    bank_size,
                )
                for i, n in enumerate(TRAINED)
            ]
        )
        weights = np.concatenate([zoos[n][1] for n in TRAINED])
        group = np.concatenate([np.full(len(zoos[n][1]), i) for i, n in enumerate(TRAINED)])
        source = flow_source(config, template)
        saves = work.training_checkpoints("support_flow", work.flow_checkpoints)
        trained = work.run(
            "support_flow",
            lambda: train_flow_stage(
                config,
                jnp.asarray(weights),
                source,
                saves,
                True,
                (banks, group),
                curves=work.flow_curves,
                condition_dim=banks.shape[-1],
            ),
        )
    return SupportFlow(configs, datasets, encoder, extra, flattener, evaluators, zoos, banks, key, source, trained)
