"""Bring your own zoo: MNIST MLPs trained in PyTorch, through dwf_jax, and the generated nets back in PyTorch.

    python experiments/torch_zoo_mnist.py --data_dir=../shared/datasets

1. Trains --num_models MLPs 784-32-32-10 in PyTorch as the DeepWeightFlow reference code does (its
   generate_mnist_weights.py: kaiming_uniform_ weights, zero biases, Adam 1e-3, batch 64, 5 epochs, pixels / 255),
   one `mlp_seed{i}.pt` state_dict per seed (resumable: finished files are kept).
2. Runs the pipeline on them (`zoo.source`): import, Git Re-Basin, the flow (--space), sampling, evaluation.
3. Exports the generated nets as safetensors in PyTorch layout (`dwf_jax.export`), loads each into a torch MLP
   and measures its test accuracy in PyTorch beside the accuracy dwf_jax measured.
Needs torch (`pip install ".[torch]"`). Writes experiments/results/torch_zoo_mnist.{md,json}.
"""

import pathlib
import shutil
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from configs import mnist_mlp  # noqa: E402
from dwf_jax import export, pipeline, torch_models, weight_files  # noqa: E402
from dwf_jax.data import load_configured  # noqa: E402
from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding mnist/ IDX files (else $DWF_DATA_DIR).")
flags.DEFINE_integer("num_models", 100, "PyTorch-trained models in the zoo.")
flags.DEFINE_integer("epochs", 5, "Epochs per PyTorch model (the reference code's 5).")
flags.DEFINE_string(
    "space", "dual:-1", "The flow's space: none, or method:components (-1: all N-1, as the reference code's 99 of 100)."
)
flags.DEFINE_integer("flow_iterations", 30_000, "Flow iterations (the paper's 30k).")
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where the torch zoo, the stages and the export are kept.")

FEATURES = (32, 32, 10)


def torch_mlp(seed: int) -> torch.nn.Module:
    """The reference code's MLP_MNIST with init 'he': kaiming_uniform_(relu) weights, zero biases."""
    torch.manual_seed(seed)
    model = torch_models.MLP(FEATURES, in_features=784)
    for layer in model.modules():
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
            torch.nn.init.zeros_(layer.bias)
    return model


def torch_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * float((model.eval()(images).argmax(1) == labels).float().mean())


def train_torch_zoo(folder: pathlib.Path, dataset) -> float:
    """The zoo's missing .pt files, one seed at a time; returns the seconds spent training."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = torch.from_numpy(np.asarray(dataset.x_train, np.float32)), torch.from_numpy(dataset.y_train)
    start = time.perf_counter()
    for seed in range(FLAGS.num_models):
        path = folder / f"mlp_seed{seed}.pt"
        if path.exists():
            continue
        model, order = torch_mlp(seed), torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(FLAGS.epochs):
            for batch in torch.randperm(len(images), generator=order).split(64):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(images[batch]), labels[batch].long()).backward()
                optimizer.step()
        torch.save(model.state_dict(), folder / f"{path.name}.partial")
        (folder / f"{path.name}.partial").rename(path)
        print(f"torch model {seed}: trained", flush=True)
    return time.perf_counter() - start


def run_config(folder: pathlib.Path):
    config = mnist_mlp.get_config()
    config.data.dir = FLAGS.data_dir
    config.zoo.source = str(folder)
    config.zoo.num_models = FLAGS.num_models
    config.sample.num_samples = FLAGS.num_models
    pca_method, _, components = FLAGS.space.partition(":")
    config.pca.method = pca_method
    if pca_method != "none":
        config.pca.components = int(components)
    config.flow.iterations = FLAGS.flow_iterations
    return config


def compute() -> dict:
    root = pathlib.Path(FLAGS.workdirs)
    folder = root / f"torch_zoo_mnist_e{FLAGS.epochs}"  # seed i is model i whatever the zoo size: one folder
    config = run_config(folder)
    dataset = load_configured(config.data)
    torch_seconds = train_torch_zoo(folder, dataset)
    test_images = torch.from_numpy(np.asarray(dataset.x_test, np.float32))
    test_labels = torch.from_numpy(dataset.y_test)
    zoo_in_torch = []
    for path in weight_files.zoo_files(folder)[: FLAGS.num_models]:
        model = torch_models.MLP(FEATURES, in_features=784)
        model.load_state_dict(torch.load(path, weights_only=True))
        zoo_in_torch.append(torch_accuracy(model, test_images, test_labels))
    workdir = root / f"torch_zoo_mnist_n{FLAGS.num_models}_{FLAGS.space.replace(':', '').replace('-', 'm')}"
    start = time.perf_counter()
    report = pipeline.run(config, workdir, progress=True)
    pipeline_seconds = time.perf_counter() - start
    exported = root / f"{workdir.name}_exported"
    shutil.rmtree(exported, ignore_errors=True)  # made by this script only: the export refuses to overwrite
    start = time.perf_counter()
    files = export.export(workdir, exported, "generated")
    export_seconds = time.perf_counter() - start
    generated_in_torch = []
    for path in files:
        model = torch_models.MLP(FEATURES, in_features=784)
        model.load_state_dict(load_file(path), strict=True)
        generated_in_torch.append(torch_accuracy(model, test_images, test_labels))
    ours = np.asarray(report["generated"]["per_model"])
    return {
        "zoo_folder": str(folder),
        "workdir": str(workdir),
        "export_folder": str(exported),
        "torch_training_seconds_this_invocation": round(torch_seconds, 1),
        "pipeline_seconds_this_invocation": round(pipeline_seconds, 1),
        "export_seconds": round(export_seconds, 1),
        "zoo_accuracy_in_torch": summary(zoo_in_torch),
        "zoo_accuracy_in_dwf_jax": report["original"]["accuracy"],
        "zoo_max_abs_difference": float(np.max(np.abs(np.asarray(report["original"]["per_model"]) - zoo_in_torch))),
        "generated_accuracy_in_dwf_jax": report["generated"]["accuracy"],
        "generated_accuracy_in_torch": summary(generated_in_torch),
        "generated_max_abs_difference": float(np.max(np.abs(ours - generated_in_torch))),
        "report": common.run_summary(report, workdir, pipeline_seconds),
        "exported_metadata_of_first_file": weight_files.read_metadata(files[0]) | {"config": "(omitted here)"},
    }


def summary(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "count": len(values)}


def markdown(rows: dict, provenance: dict) -> str:
    r = rows
    return "\n".join(
        [
            *common.header_lines("A PyTorch-trained MNIST MLP zoo through dwf_jax, and back into PyTorch", provenance),
            "",
            f"Zoo: {FLAGS.num_models} MLPs 784-32-32-10 trained in PyTorch {torch.__version__} as the reference "
            f"code does ({FLAGS.epochs} epochs, Adam 1e-3, batch 64, kaiming_uniform_ weights, zero biases), "
            f"one .pt per seed in `{r['zoo_folder']}`. Flow space: {FLAGS.space}; {FLAGS.flow_iterations} flow "
            "iterations; Git Re-Basin to model 0.",
            "",
            "| nets | accuracy in dwf_jax (%) | accuracy in PyTorch (%) | max per-model difference (points) |",
            "|---|---|---|---|",
            f"| zoo (imported .pt files) | {common.mean_std(r['zoo_accuracy_in_dwf_jax'])} "
            f"| {common.mean_std(r['zoo_accuracy_in_torch'])} | {r['zoo_max_abs_difference']:.4f} |",
            f"| generated (exported safetensors) | {common.mean_std(r['generated_accuracy_in_dwf_jax'])} "
            f"| {common.mean_std(r['generated_accuracy_in_torch'])} | {r['generated_max_abs_difference']:.4f} |",
            "",
            f"PyTorch zoo training this invocation: {r['torch_training_seconds_this_invocation']} s; pipeline "
            f"(import to report): {r['pipeline_seconds_this_invocation']} s; export of the generated nets: "
            f"{r['export_seconds']} s. Stage times (s): "
            + ", ".join(f"{name} {seconds:.1f}" for name, seconds in r["report"]["timings"].items()),
            "",
            f"Workdir: `{r['workdir']}`; exported files: `{r['export_folder']}` (one safetensors per net; its "
            f"metadata: {sorted(r['exported_metadata_of_first_file'])}).",
            "",
        ]
    )


def main(argv: list[str]) -> None:
    del argv
    common.run_and_write("torch_zoo_mnist", compute, markdown)


if __name__ == "__main__":
    app.run(main)
