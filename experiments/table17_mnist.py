"""Table 17 and Figure 2 on MNIST: are the generated MLPs new networks, or copies of the zoo?

    python experiments/table17_mnist.py --data_dir=../shared/datasets

One 100-model MNIST zoo (Table 13 settings), two flows: on the re-basined zoo and
on the zoo as trained. Each run also builds the baselines (originals plus
Gaussian noise, convex combinations of two originals) and measures every
ensemble against the originals. The flow works in --space: dual PCA with 99
components by default, since the full-weight flow at h=512 takes 44 min per run
on 2 CPU cores (`--space=none` is the paper's setting). Writes
experiments/results/table17_mnist.{md,json} and each run's Figure 2 picture
(table17_mnist_<variant>.png).
"""

import pathlib
import shutil
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import mnist_mlp  # noqa: E402
from dwf_jax import diversity, pipeline  # noqa: E402
from dwf_jax.data import load_configured  # noqa: E402
from dwf_jax.session import copy_stages  # noqa: E402
from dwf_jax.workdir import Workdir  # noqa: E402
from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding mnist/ IDX files (else $DWF_DATA_DIR).")
flags.DEFINE_string("space", "dual:99", "The flow's space: none, or method:components.")
flags.DEFINE_integer("flow_iterations", 30_000, "Flow iterations (the paper's 30k).")
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where the stages are kept.")

VARIANTS = {"with_rebasin": "rebasin", "without_rebasin": "none"}
METRICS = {
    "max_iou_of_errors": "IoU (max)",
    "min_wasserstein": "Wasserstein (min)",
    "min_jensen_shannon_per_example": "Jensen-Shannon per example (min, bits)",
    "min_jensen_shannon_of_marginals": "Jensen-Shannon of class marginals (min, bits)",
    "nearest_l2": "NN L2",
    "max_cosine": "Cosine sim. (max)",
}
PAPER = (
    "The paper's Table 17 values did not survive the text extraction in ../shared/paper (only its layout did), "
    "so no paper numbers stand beside these."
)


def variant_config(method: str):
    config = mnist_mlp.get_config()
    config.data.dir = FLAGS.data_dir
    config.canonical.method = method
    pca_method, _, components = FLAGS.space.partition(":")
    config.pca.method = pca_method
    if pca_method != "none":
        config.pca.components = int(components)
    config.flow.iterations = FLAGS.flow_iterations
    return config


def run_variant(variant: str, method: str, first_workdir: pathlib.Path | None) -> dict:
    """One pipeline run; the zoo stage comes from the first variant's workdir (the same zoo settings)."""
    config = variant_config(method)
    workdir = pathlib.Path(FLAGS.workdirs) / f"table17_mnist_{variant}_{FLAGS.space.replace(':', '')}"
    if first_workdir is not None:
        dataset = load_configured(config.data)
        copy_stages(Workdir(first_workdir), pipeline.workdir_for(config, dataset, workdir), ("zoo",))
    result = pipeline.run(config, workdir, progress=True)
    shutil.copyfile(Workdir(workdir).diversity_figure, common.RESULTS / f"table17_mnist_{variant}.png")
    return {"variant": variant, "workdir": str(workdir), "report": without_per_model(result)}


def without_per_model(tree: dict) -> dict:
    """The report less its per-model lists (the workdir's report.json keeps them)."""
    return {
        key: without_per_model(value) if isinstance(value, dict) else value
        for key, value in tree.items()
        if key != "per_model"
    }


def table_rows() -> list[dict]:
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    rows, first = [], None
    for variant, method in VARIANTS.items():
        rows.append(run_variant(variant, method, first))
        first = first or pathlib.Path(rows[0]["workdir"])
    return rows


def markdown(rows: list[dict], provenance: dict) -> str:
    lines = [
        *common.header_lines("Table 17 (MNIST MLP): diversity of generated networks, and the baselines", provenance),
        f"Flow space: {FLAGS.space}; {FLAGS.flow_iterations} flow iterations; 100 originals, 100 generated. {PAPER}",
        "",
        "Each cell: mean ± std over the source models of their value against the nearest target model "
        "(within one set, never itself). L2 and cosine in canonical weight space.",
        "",
        "| variant | metric | Org. to Org. | Org. to Gen. | Gen. to Org. | Gen. to Gen. |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        section = row["report"]["diversity"]
        for metric, label in METRICS.items():
            cells = " | ".join(common.cell(section[metric][direction], 4) for direction in diversity.DIRECTIONS)
            lines.append(f"| {row['variant']} | {label} | {cells} |")
    lines += [
        "",
        "## Generated networks against the baselines (each ensemble measured against the originals)",
        "",
        "| variant | ensemble | accuracy (%) | max IoU of errors with an original | L2 to nearest original |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        report = row["report"]
        ensembles = [
            (
                "originals (to another original)",
                report["original"]["accuracy"],
                report["diversity"],
                "original_to_original",
            ),
            ("generated", report["generated"]["accuracy"], report["diversity"], "generated_to_original"),
        ]
        ensembles += [
            (name, baseline["accuracy"], baseline["diversity"], "baseline_to_original")
            for name, baseline in report["baselines"].items()
        ]
        for name, accuracy, section, direction in ensembles:
            lines.append(
                f"| {row['variant']} | {name} | {common.mean_std(accuracy)} "
                f"| {common.cell(section['max_iou_of_errors'][direction], 4)} "
                f"| {common.cell(section['nearest_l2'][direction], 4)} |"
            )
    lines += ["", "Stage times (s) of each run, stages computed by earlier invocations included:", ""]
    for row in rows:
        timings = row["report"]["timings"]
        lines.append(
            f"- {row['variant']}: " + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in timings.items())
        )
    lines += ["", "Figures: " + ", ".join(f"table17_mnist_{row['variant']}.png" for row in rows), ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    common.run_and_write("table17_mnist", table_rows, markdown)


if __name__ == "__main__":
    app.run(main)
