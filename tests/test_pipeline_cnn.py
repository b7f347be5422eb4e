"""A tiny end-to-end run of a BatchNorm model on a CIFAR-10 style JPEG archive written by the test."""

import json

import pytest
from tarfiles import write_tiny_cifar10

import configs.smallcnn as smallcnn_config
from dwf_jax import pipeline


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    config = smallcnn_config.get_config()
    config.data.dir = str(write_tiny_cifar10(root))
    config.zoo.update(num_models=3, epochs=2, batch_size=16)
    config.flow.update(iterations=40, hidden=16, steps_per_dispatch=20, batch_size=2)
    config.pca.update(method="dual", components=-1)
    config.sample.update(num_samples=3, steps=5)
    config.bn.update(num_batches=2, batch_size=16)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DWF_CACHE_DIR", str(root / "cache"))
        return pipeline.run(config, root / "work", progress=False), root / "work"


def test_report_has_accuracy_before_and_after_recalibration(cnn_run):
    result, workdir = cnn_run
    generated = json.loads((workdir / "report.json").read_text())["generated"]
    assert set(generated["accuracy_before_bn_recalibration"]) == {"mean", "std", "min", "max"}
    assert generated["bn_recalibration"] == {"data": "train", "num_batches": 2, "batch_size": 16}
    assert result["dataset"]["source"].startswith("CIFAR-10 (JPEG copy)")
    assert (workdir / "bn_stats").exists()


def test_canonical_zoo_keeps_every_models_accuracy(cnn_run):
    result, _ = cnn_run
    assert result["canonicalization"]["max_accuracy_change"] < 1e-6
