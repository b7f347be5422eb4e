"""Table 5, ViT row: a reduced ViT-Small-192 zoo on CIFAR-10, with TransFusion, Git Re-Basin and no alignment.

    python experiments/table5_vit.py --data_dir=../shared/datasets --num_models=10 --epochs=10

One zoo (`configs/vit_small.py` with the zoo flags below), trained once and its
stage copied into the other runs; then canonicalization, dual PCA, flow,
samples and evaluation once per alignment method. Each run is the same as
`python -m dwf_jax.main --config=configs/vit_small.py --config.zoo.num_models=K
--config.zoo.epochs=E --config.canonical.method=M` (the result file prints the
command). The canonical stage's time is the alignment time of the whole zoo.
Writes experiments/results/<--name>.{md,json}.
"""

import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import vit_small  # noqa: E402
from dwf_jax import pipeline  # noqa: E402
from dwf_jax.data import load_configured  # noqa: E402
from dwf_jax.workdir import Workdir  # noqa: E402
from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding cifar10_jpeg/cifar10_jpeg.tar.gz (else $DWF_DATA_DIR).")
flags.DEFINE_integer("num_models", 10, "Zoo size (the paper: 100).")
flags.DEFINE_integer("epochs", 10, "Zoo epochs (the paper: 300).")
flags.DEFINE_integer("batch_size", None, "Zoo batch size (default: the config's 128).")
flags.DEFINE_integer("depth", 6, "Transformer blocks (ViT-Small-192: 6).")
flags.DEFINE_integer("flow_iterations", 30_000, "Flow iterations.")
flags.DEFINE_integer("num_samples", 25, "Generated models (the paper: 25).")
flags.DEFINE_list("methods", ["transfusion", "none", "rebasin"], "Alignment methods, one run each, in this order.")
flags.DEFINE_string("name", "table5_vit", "Result file name under experiments/results/.")
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where each run's stages are kept.")

PAPER = "83.30 ± 0.21 original, 82.99 ± 0.26 generated (100 models x 300 epochs, flow h=384, TransFusion)"
OVERRIDES = ("zoo.num_models", "zoo.epochs", "zoo.batch_size", "model.depth", "flow.iterations", "sample.num_samples")


def run_config(method: str):
    config = vit_small.get_config()
    config.data.dir = FLAGS.data_dir
    config.zoo.num_models = FLAGS.num_models
    config.zoo.epochs = FLAGS.epochs
    config.model.depth = FLAGS.depth
    config.zoo.batch_size = FLAGS.batch_size or config.zoo.batch_size
    config.flow.iterations = FLAGS.flow_iterations
    config.sample.num_samples = FLAGS.num_samples
    config.canonical.method = method
    config.baselines.update(noise_stds=(), mixtures=0)  # the baselines are measured on the MLP zoos
    return config


def main_command(config) -> str:
    """The `python -m dwf_jax.main` command that computes the same run."""
    values = {key: config[key.split(".")[0]][key.split(".")[1]] for key in OVERRIDES}
    values["canonical.method"] = config.canonical.method
    values["baselines.noise_stds"], values["baselines.mixtures"] = "()", 0
    return "python -m dwf_jax.main --config=configs/vit_small.py " + " ".join(
        f"--config.{key}={value}" for key, value in values.items()
    )


def compute_rows() -> list[dict]:
    rows, zoo_source = [], None
    for method in FLAGS.methods:
        config = run_config(method)
        workdir = pathlib.Path(FLAGS.workdirs) / (
            f"{FLAGS.name}_n{FLAGS.num_models}_e{FLAGS.epochs}_d{FLAGS.depth}_{method}"
        )
        if zoo_source is not None:
            dataset = load_configured(config.data)
            pipeline.workdir_for(config, dataset, workdir).copy_stages_from(Workdir(zoo_source), ("zoo",))
        start = time.perf_counter()
        report = pipeline.run(config, workdir, progress=True)
        row = common.run_summary(report, workdir, round(time.perf_counter() - start, 1))
        row.update(method=method, command=main_command(config), canonicalization=report["canonicalization"])
        rows.append(row)
        zoo_source = zoo_source or workdir
    return rows


def markdown(rows: list[dict], provenance: dict) -> str:
    lines = [
        *common.header_lines("Table 5, ViT-Small-192 row (CIFAR-10, reduced zoo)", provenance),
        f"Data: {rows[0]['dataset']['source']}  ",
        f"Zoo: {FLAGS.num_models} models x {FLAGS.epochs} epochs, depth {FLAGS.depth}; flow: "
        f"{rows[0]['flow_space']}, {FLAGS.flow_iterations} iterations; {FLAGS.num_samples} samples",
        "",
        "| alignment | original (%) | generated (%) | generated min | L2 to reference before -> after "
        "| alignment time, whole zoo (s) | flow (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        canonical, timings = row["canonicalization"], row["timings"]
        lines.append(
            f"| {row['method']} | {common.mean_std(row['original_accuracy'])} "
            f"| {common.mean_std(row['generated_accuracy'])} | {row['generated_accuracy']['min']:.2f} "
            f"| {canonical['distance_to_reference_before']['mean']:.2f} -> "
            f"{canonical['distance_to_reference_after']['mean']:.2f} "
            f"| {timings.get('canonical', float('nan')):.1f} | {timings.get('flow', float('nan')):.1f} |"
        )
    lines += ["", f"Paper (Table 5): {PAPER}.", "", "Equivalent commands:", ""]
    lines += [f"- `{row['command']}`" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    del argv
    common.run_and_write(FLAGS.name, compute_rows, markdown)


if __name__ == "__main__":
    app.run(main)
