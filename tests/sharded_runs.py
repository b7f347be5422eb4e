"""Runs on several devices or processes, for tests/test_sharding.py (the device count is fixed before jax starts).

XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_runs.py devices ROOT
    the tiny Iris pipeline on 1 and on 8 devices (ROOT/mlp_<n>/, ROOT/reports.json), and BatchNorm
    recalibration and evaluation of a SmallCNN ensemble on 1 and 8 devices (ROOT/bn_<n>.npz)
python tests/sharded_runs.py zoo OUT.npz PROCESS_ID NUM_PROCESSES PORT
    zoos of 5 and 4 Iris MLPs, across NUM_PROCESSES processes joined by jax.distributed (1: no join)
python tests/sharded_runs.py resume ROOT PROCESS_ID NUM_PROCESSES PORT
    5 Iris MLPs trained 2 epochs with checkpoints under ROOT/saves (each process its share), then resumed
    to 3 epochs (ROOT/resumed_<process>.npz)
python tests/sharded_runs.py pipeline ROOT PROCESS_ID NUM_PROCESSES PORT
    the tiny Iris pipeline (4 models, 5 samples) in ROOT/run: ROOT/reports_<process>.json
"""

import json
import pathlib
import sys

import jax
import numpy as np
from tiny_runs import tiny_config, train_iris_models

from dwf_jax import pipeline
from dwf_jax.bn_recalibration import recalibrate
from dwf_jax.checkpoints import TrainingCheckpoints
from dwf_jax.cli import use_deterministic_gpu_ops
from dwf_jax.evaluate import ensemble_predictions
from dwf_jax.models import SmallCNN
from dwf_jax.processes import ShareCheckpoints, connect
from dwf_jax.settings import differences
from dwf_jax.sharding import split_models, to_host

jax.config.update("jax_default_matmul_precision", "highest")
use_deterministic_gpu_ops()
NUM_MODELS = 5  # divides neither 2 nor 8 devices: the model axis is padded


def mlp_config():
    config = tiny_config()
    config.zoo.num_models = NUM_MODELS
    config.sample.num_samples = NUM_MODELS
    config.baselines.update(noise_stds=(0.0, 0.05), mixtures=3)
    return config


def batch_norm_ensemble(devices: int) -> dict[str, np.ndarray]:
    """Recalibrated statistics and predictions of 3 SmallCNNs, one at a time per device (models_per_vmap=1)."""
    model = SmallCNN(dropout_rate=0.0)
    images = jax.random.normal(jax.random.key(0), (5, 32, 28, 28, 1))
    init = jax.vmap(lambda key: model.init(key, images[0, :1], train=False))
    variables = init(jax.random.split(jax.random.key(1), 3))
    with split_models(devices):
        calibrated = to_host(recalibrate(model, variables, images, models_per_vmap=1))
        wrong, probabilities = ensemble_predictions(model, calibrated, np.asarray(images[0]), np.arange(32) % 10)
    leaves = jax.tree.leaves(calibrated["batch_stats"])
    return {**{f"stat_{i}": leaf for i, leaf in enumerate(leaves)}, "wrong": wrong, "probabilities": probabilities}


def on_devices(root: pathlib.Path) -> None:
    reports = {}
    for devices in (1, jax.device_count()):
        config = mlp_config()
        config.num_devices = devices
        reports[f"mlp_{devices}"] = pipeline.run(config, root / f"mlp_{devices}", progress=False)
        np.savez(root / f"bn_{devices}.npz", **batch_norm_ensemble(devices))
    (root / "reports.json").write_text(json.dumps(reports))


def zoo_across_processes(out: pathlib.Path) -> None:
    arrays = {"devices": jax.device_count()}
    for num_models in (NUM_MODELS, 4):  # padded, and split evenly (each process holds only its models)
        with split_models():
            variables, losses = train_iris_models(np.arange(num_models))
        arrays[f"losses_{num_models}"] = losses
        arrays.update({f"leaf_{num_models}_{i}": leaf for i, leaf in enumerate(jax.tree.leaves(variables))})
    np.savez(out, **arrays)


def resumed_across_processes(root: pathlib.Path) -> None:
    folder = root / "saves" / f"process_{jax.process_index()}_of_{jax.process_count()}"
    arrays = {}
    for num_models in (NUM_MODELS, 4):  # padded, and split evenly
        inodes, saves_folder = [], folder / f"models_{num_models}"
        with split_models():
            for epochs in (2, 3):
                saves = TrainingCheckpoints(saves_folder, {}, differences, per_process=True)
                variables, _ = train_iris_models(np.arange(num_models), epochs, ShareCheckpoints(saves, num_models))
                inodes.append((saves_folder / "2").stat().st_ino)
        arrays[f"step_2_inode_{num_models}"] = inodes
        arrays.update({f"leaf_{num_models}_{i}": leaf for i, leaf in enumerate(jax.tree.leaves(variables))})
    np.savez(root / f"resumed_{jax.process_index()}.npz", **arrays)


def pipeline_config():
    config = mlp_config()
    config.zoo.num_models = 4  # split evenly; the 5 samples are padded
    return config


def pipeline_across_processes(root: pathlib.Path) -> None:
    config = pipeline_config()
    reports = [pipeline.run(config, root / "run", progress=False)]
    (root / f"reports_{jax.process_index()}.json").write_text(json.dumps(reports))


if __name__ == "__main__":
    mode, path = sys.argv[1], pathlib.Path(sys.argv[2])
    if mode == "devices":
        on_devices(path)
    else:
        process_id, num_processes, port = map(int, sys.argv[3:6])
        if num_processes > 1:
            connect(f"localhost:{port}", num_processes, process_id)
        {"zoo": zoo_across_processes, "resume": resumed_across_processes, "pipeline": pipeline_across_processes}[mode](
            path
        )
