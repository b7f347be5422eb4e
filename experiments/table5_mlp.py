"""Table 5, MLP rows: Iris, MNIST and Fashion-MNIST zoos at the paper's full settings, with re-basin.

    python experiments/table5_mlp.py --data_dir=../shared/datasets

Stages are kept in experiments/workdirs/, so an interrupted run resumes.
Writes experiments/results/table5_mlp.{md,json}.
"""

import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import fashion_mnist_mlp, iris_mlp, mnist_mlp  # noqa: E402
from dwf_jax import pipeline  # noqa: E402
from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding mnist/ and fashion_mnist/ IDX files (else $DWF_DATA_DIR).")
flags.DEFINE_list("datasets", ["iris", "mnist", "fashion_mnist"], "Which rows to run.")
flags.DEFINE_list(
    "pca_datasets", ["fashion_mnist"], "Rows whose flow trains on 99 dual-PCA components instead of full weights."
)
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where each row's stages are kept.")

CONFIGS = {"iris": iris_mlp, "mnist": mnist_mlp, "fashion_mnist": fashion_mnist_mlp}
# Table 5 of the paper (with re-basin, Table 5's h), for comparison only.
PAPER = {"iris": (90.70, 91.43), "mnist": (96.32, 96.17), "fashion_mnist": (89.24, 89.10)}


def run_row(name: str) -> dict:
    config = CONFIGS[name].get_config()
    config.data.dir = FLAGS.data_dir
    if name in FLAGS.pca_datasets:
        config.pca.update(method="dual", components=config.zoo.num_models - 1)
    start = time.perf_counter()
    result = pipeline.run(config, pathlib.Path(FLAGS.workdirs) / f"table5_{name}", progress=True)
    result["row_wall_seconds_this_invocation"] = round(time.perf_counter() - start, 1)
    result["flow_hidden"] = config.flow.hidden
    return result


def markdown(rows: dict, provenance: dict) -> str:
    lines = [
        "# Table 5, MLP rows (with Git Re-Basin)",
        "",
        *common.provenance_lines(provenance),
        f"Wall time of this invocation: {provenance['wall_seconds']} s "
        "(stages done earlier are loaded, their own times are below)",
        "",
        "| dataset | h | flow space | original (%) | generated (%) | paper original | paper generated "
        "| stage times (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in rows.items():
        original, generated = result["original"]["accuracy"], result["generated"]["accuracy"]
        timings = ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in result["timings"].items())
        lines.append(
            f"| {result['dataset']['name']} ({result['dataset']['source']}) | {result['flow_hidden']} "
            f"| {result['flow']['weight_space']} "
            f"| {common.mean_std(original)} | {common.mean_std(generated)} "
            f"| {PAPER[name][0]:.2f} | {PAPER[name][1]:.2f} | {timings} |"
        )
    lines += [
        "",
        "100 models per zoo, 30k flow iterations, RK4 with 100 steps (400 flow evaluations), 100 generated models.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    common.run_and_write("table5_mlp", lambda: {name: run_row(name) for name in FLAGS.datasets}, markdown)


if __name__ == "__main__":
    app.run(main)
