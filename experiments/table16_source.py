"""Table 16, MLP on MNIST: the flow's source distribution (Gaussian(0, 0.01) or Kaiming init) x flow width.

    python experiments/table16_source.py --data_dir=../shared/datasets --widths=64,128

The Kaiming source starts every path at a freshly initialised network
(`flow.source=kaiming`: kernels U(-sqrt(6/fan_in), sqrt(6/fan_in)), the rest 0),
so it lives in full weight space, as the Gaussian rows do here. The Gaussian
rows are table5_rebasin.py's full-weight MNIST runs (same zoo, same settings):
their workdirs are loaded, or computed if missing. Each Kaiming run copies the
zoo and canonical stages of its Gaussian twin. The paper's Table 16 is at flow
width 256 (a full-weight h=256 flow takes ~22 min per run on 2 CPU cores, so
--widths picks which widths run). Writes experiments/results/table16_source.{md,json}.
"""

import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import mnist_mlp  # noqa: E402
from dwf_jax import pipeline  # noqa: E402
from dwf_jax.data import load_configured  # noqa: E402
from dwf_jax.session import copy_stages  # noqa: E402
from dwf_jax.workdir import Workdir  # noqa: E402
from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding mnist/ IDX files (else $DWF_DATA_DIR).")
flags.DEFINE_list("widths", ["64", "128"], "Flow hidden widths to run.")
flags.DEFINE_integer("flow_iterations", 30_000, "Flow iterations (the paper's 30k).")
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where each run's stages are kept.")

METHODS = {"with_rebasin": "rebasin", "without_rebasin": "none"}
SOURCES = ("kaiming", "gaussian")  # Kaiming first: the Gaussian twins may still be running in table5
# Table 16 of the paper (flow width 256), for comparison only: (mean, std) with and without re-basin.
PAPER_WIDTH = 256
PAPER_ORIGINAL = (96.32, 0.20)
PAPER = {"kaiming": ((81.33, 14.10), (67.35, 26.10)), "gaussian": ((96.18, 0.23), (96.22, 0.22))}


def run_config(hidden: int, source: str, method: str):
    config = mnist_mlp.get_config()
    config.data.dir = FLAGS.data_dir
    config.canonical.method = method
    config.flow.update(hidden=hidden, iterations=FLAGS.flow_iterations, source=source)
    config.baselines.update(noise_stds=(), mixtures=0, average_of=0, gaussian=0)  # baselines are measured in table17
    return config


def workdir_of(hidden: int, source: str, variant: str) -> pathlib.Path:
    """The Gaussian runs are table5_rebasin.py's (the same config)."""
    if source == "gaussian":
        return pathlib.Path(FLAGS.workdirs) / f"table5_mnist_h{hidden}_none_{variant}"
    return pathlib.Path(FLAGS.workdirs) / f"table16_mnist_h{hidden}_{source}_{variant}"


def run_one(hidden: int, source: str, variant: str) -> dict:
    config = run_config(hidden, source, METHODS[variant])
    workdir, twin = workdir_of(hidden, source, variant), workdir_of(hidden, "gaussian", variant)
    if source != "gaussian" and (twin / "canonical").exists():
        dataset = load_configured(config.data)
        copy_stages(Workdir(twin), pipeline.workdir_for(config, dataset, workdir), ("zoo", "canonical"))
    start = time.perf_counter()
    report = pipeline.run(config, workdir, progress=True)
    return common.run_summary(report, workdir, round(time.perf_counter() - start, 1))


def table_rows() -> list[dict]:
    return [
        {"hidden": int(hidden), "source": source, "runs": {v: run_one(int(hidden), source, v) for v in METHODS}}
        for hidden in FLAGS.widths
        for source in SOURCES
    ]


def markdown(rows: list[dict], provenance: dict) -> str:
    original = rows[0]["runs"]["with_rebasin"]["original_accuracy"]
    lines = [
        *common.header_lines("Table 16, MLP on MNIST: flow source distribution x flow width", provenance),
        "",
        f"One 100-model MNIST zoo (original accuracy {common.mean_std(original)}; paper "
        f"{PAPER_ORIGINAL[0]:.2f} ± {PAPER_ORIGINAL[1]:.2f}), {FLAGS.flow_iterations} flow iterations on full "
        "weights, RK4 with 100 steps, 100 generated models per run. Accuracy: test %, mean ± std (min). The paper's "
        f"numbers are at flow width {PAPER_WIDTH} only; they stand beside every width for reference.",
        "",
        "| h | source | generated, with re-basin | generated, without re-basin | paper with (h=256) "
        "| paper without (h=256) | NN L2 gen -> orig (with) | flow (s, with / without) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        runs = row["runs"]
        with_acc = runs["with_rebasin"]["generated_accuracy"]
        without_acc = runs["without_rebasin"]["generated_accuracy"]
        paper_with, paper_without = PAPER[row["source"]]
        novelty = runs["with_rebasin"]["novelty"]["generated_to_nearest_original"]
        lines.append(
            f"| {row['hidden']} | {row['source']} | {common.mean_std(with_acc)} ({with_acc['min']:.2f}) "
            f"| {common.mean_std(without_acc)} ({without_acc['min']:.2f}) "
            f"| {paper_with[0]:.2f} ± {paper_with[1]:.2f} | {paper_without[0]:.2f} ± {paper_without[1]:.2f} "
            f"| {common.mean_std(novelty)} "
            f"| {runs['with_rebasin']['timings']['flow']:.0f} / {runs['without_rebasin']['timings']['flow']:.0f} |"
        )
    lines += ["", "Gaussian: N(0, 0.01^2) per weight. Kaiming: a freshly Kaiming-initialised network.", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    common.run_and_write("table16_source", table_rows, markdown)


if __name__ == "__main__":
    app.run(main)
