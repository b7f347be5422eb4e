"""A tiny Iris run (seconds on a CPU), a tiny Iris zoo, and the checks that a refused run left its workdir untouched."""

import hashlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs.iris_mlp as iris_config
from dwf_jax import pipeline, zoo
from dwf_jax.augment import input_pipeline
from dwf_jax.data import load_dataset
from dwf_jax.models import MLP, SmallCNN
from dwf_jax.zoo_store import Flattener, MemoryZoo


def tiny_config():
    config = iris_config.get_config()
    config.zoo.update(num_models=4, epochs=10, checkpoint_every=5)
    config.flow.update(iterations=60, hidden=16, steps_per_dispatch=30, checkpoint_every=30, batch_size=2)
    config.sample.update(num_samples=3, steps=4)
    return config


def train_iris_models(indices, epochs: int = 3, saves=None, compute_dtype: str = "float32", on_epoch=None):
    """Iris MLPs of the given model indices (seed 7): stacked variables and last-epoch losses (`saves`: every epoch;
    `on_epoch`: each epoch's losses, as train_models gives them)."""
    data = load_dataset("iris")
    return zoo.train_models(
        MLP((16, 3)),
        zoo.make_optimizer("adam", 1e-2, 0.0),
        data.x_train,
        data.y_train,
        seed=7,
        model_indices=np.asarray(indices),
        epochs=epochs,
        batch_size=16,
        inputs=input_pipeline("iris"),
        progress=False,
        saves=saves,
        compute_dtype=compute_dtype,
        on_epoch=on_epoch,
    )


def snapshot(folder: pathlib.Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(workdir: pathlib.Path, error: type, match: str, run=None) -> None:
    """`run` (default: the tiny pipeline) raises `error` matching `match`, and no file in `workdir` changed."""
    before = snapshot(workdir) if workdir.exists() else {}
    with pytest.raises(error, match=match):
        (run or (lambda: pipeline.run(tiny_config(), workdir, progress=False)))()
    assert (snapshot(workdir) if workdir.exists() else {}) == before


def batchnorm_zoo(num_models: int, seed: int = 0) -> tuple[Flattener, MemoryZoo]:
    """Random variables of a tiny BatchNorm CNN (positive running variances), flattened into a zoo."""
    template = SmallCNN(widths=(2, 3), hidden_width=4, num_classes=3).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    flattener, rng = Flattener(template), np.random.default_rng(seed)

    def one_model() -> dict:
        return {
            "params": jax.tree.map(lambda leaf: rng.normal(size=leaf.shape), template["params"]),
            "batch_stats": jax.tree.map(lambda leaf: rng.uniform(0.1, 2.0, leaf.shape), template["batch_stats"]),
        }

    return flattener, MemoryZoo(np.stack([flattener.flatten(one_model()) for _ in range(num_models)]))
