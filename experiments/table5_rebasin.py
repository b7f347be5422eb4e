"""Table 5, MLP rows: flow width h against generated accuracy, with and without Git Re-Basin.

    python experiments/table5_rebasin.py --data_dir=../shared/datasets
    python experiments/table5_rebasin.py --data_dir=../shared/datasets --datasets=fashion_mnist

One 100-model zoo per dataset (trained once, its stage copied into every other
run of the dataset), then one flow per row and canonicalization (the paper's 30k
iterations, 100 samples). The flow sees full weights, except MNIST h=512 and the
Fashion-MNIST rows: dual PCA with 99 components (a full-weight h=512 MNIST flow
takes 44 min per run on 2 CPU cores); each row states its space. Stages are kept
in experiments/workdirs/, so an interrupted run resumes. `--datasets` picks the
rows this invocation runs; finished rows of the other datasets are read from
their workdirs' report.json, so the result file always holds every finished row.
Writes experiments/results/table5_rebasin.{md,json}.
"""

import json
import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import fashion_mnist_mlp, iris_mlp, mnist_mlp  # noqa: E402
from dwf_jax import pipeline  # noqa: E402
from dwf_jax.data import load_configured  # noqa: E402
from dwf_jax.session import copy_stages  # noqa: E402
from dwf_jax.workdir import Workdir  # noqa: E402
from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding mnist/ and fashion_mnist/ IDX files (else $DWF_DATA_DIR).")
flags.DEFINE_list("datasets", ["iris", "mnist", "fashion_mnist"], "Which datasets' rows this invocation runs.")
flags.DEFINE_integer("flow_iterations", 30_000, "Flow iterations (the paper's 30k).")
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where each run's stages are kept.")

CONFIGS = {"iris": iris_mlp, "mnist": mnist_mlp, "fashion_mnist": fashion_mnist_mlp}
# (flow hidden width, flow space: "none" for full weights or "method:components"), in run order.
ROWS = {
    "iris": [(32, "none"), (256, "none")],
    "mnist": [(64, "none"), (128, "none"), (512, "dual:99")],
    "fashion_mnist": [(64, "dual:99"), (512, "dual:99")],
}
STAGES = ("zoo", "canonical", "pca", "flow", "samples", "eval_generated", "diversity")
METHODS = {"with_rebasin": "rebasin", "without_rebasin": "none"}
# Table 5 of the paper, for comparison only: original accuracy, and per h the generated accuracy
# (mean, std) with and without re-basin. The paper's flows all see full weights.
PAPER_ORIGINAL = {"iris": (90.70, 2.02), "mnist": (96.32, 0.20), "fashion_mnist": (89.24, 0.27)}
PAPER = {
    ("iris", 256): ((91.43, 2.07), (91.03, 2.20)),
    ("iris", 32): ((90.80, 2.54), (88.93, 6.09)),
    ("mnist", 512): ((96.17, 0.31), (96.19, 0.27)),
    ("mnist", 128): ((91.74, 10.37), (89.71, 17.93)),
    ("mnist", 64): ((57.80, 9.85), (25.54, 12.90)),
    ("fashion_mnist", 512): ((89.10, 0.29), (89.11, 0.28)),
    ("fashion_mnist", 64): ((77.76, 3.72), (53.35, 30.49)),
}


def run_config(name: str, hidden: int, space: str, method: str):
    config = CONFIGS[name].get_config()
    config.data.dir = FLAGS.data_dir
    config.canonical.method = method
    pca_method, _, components = space.partition(":")
    config.pca.method = pca_method
    if pca_method != "none":
        config.pca.components = int(components)
    config.flow.hidden = hidden
    config.flow.iterations = FLAGS.flow_iterations
    config.baselines.update(noise_stds=(), mixtures=0, average_of=0, gaussian=0)  # baselines are measured elsewhere
    return config


def workdir_of(name: str, hidden: int, space: str, variant: str) -> pathlib.Path:
    return pathlib.Path(FLAGS.workdirs) / f"table5_{name}_h{hidden}_{space.replace(':', '')}_{variant}"


def run_one(name: str, hidden: int, space: str, variant: str, zoo_source: pathlib.Path | None) -> dict:
    """One pipeline run; the zoo stage comes from the dataset's first run (the same zoo settings)."""
    config = run_config(name, hidden, space, METHODS[variant])
    workdir = workdir_of(name, hidden, space, variant)
    if zoo_source is not None:
        dataset = load_configured(config.data)
        copy_stages(Workdir(zoo_source), pipeline.workdir_for(config, dataset, workdir), ("zoo",))
    start = time.perf_counter()
    report = pipeline.run(config, workdir, progress=True)
    return common.run_summary(report, workdir, round(time.perf_counter() - start, 1))


def table_rows() -> list[dict]:
    """Runs the rows of --datasets; reads finished rows of the others from their report.json."""
    unknown = sorted(set(FLAGS.datasets) - set(ROWS))
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; choose from {list(ROWS)}")
    rows = []
    for name, settings in ROWS.items():
        zoo_source = None
        for hidden, space in settings:
            row = {"name": name, "hidden": hidden, "space": space, "runs": {}}
            for variant in METHODS:
                workdir = workdir_of(name, hidden, space, variant)
                if name in FLAGS.datasets:
                    row["runs"][variant] = run_one(name, hidden, space, variant, zoo_source)
                    row["run_by_this_invocation"] = True
                    zoo_source = zoo_source or workdir
                elif Workdir(workdir).report.exists():
                    report = json.loads(Workdir(workdir).report.read_text())
                    row["runs"][variant] = common.run_summary(report, workdir, None)
                    row["run_by_this_invocation"] = False
            if len(row["runs"]) == len(METHODS):
                rows.append(row)
    return rows


def stage_order(stage: str) -> int:
    """Stages in the order the pipeline runs them (unknown ones last)."""
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def gap(ours: dict, paper: tuple[float, float]) -> str:
    return f"{ours['mean'] - paper[0]:+.2f}"


def markdown(rows: list[dict], provenance: dict) -> str:
    lines = [
        *common.header_lines(
            "Table 5, MLP rows: flow width h, generated accuracy with and without Git Re-Basin", provenance
        ),
        "",
        f"This invocation ran the rows of: {', '.join(FLAGS.datasets) or 'none'}."
        + (
            " The other rows were read from their workdirs' report.json (computed by an earlier invocation; "
            "their stage times are below)."
            if any(not row["run_by_this_invocation"] for row in rows)
            else ""
        ),
        "",
        f"100 models per zoo (one zoo per dataset, shared by its rows), {FLAGS.flow_iterations} flow iterations, "
        "RK4 with 100 steps, 100 generated models per run. Accuracy: test accuracy in %, mean ± std over the models. "
        "Gap: our mean minus the paper's. The paper's flows all see full weights; ours see the space the row names.",
        "",
        "| dataset | h | flow space | original (%) | generated, with re-basin | generated, without re-basin "
        "| paper original | paper with | paper without | gap with | gap without |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name, hidden = row["name"], row["hidden"]
        with_run, without_run = row["runs"]["with_rebasin"], row["runs"]["without_rebasin"]
        paper_with, paper_without = PAPER[(name, hidden)]
        with_acc, without_acc = with_run["generated_accuracy"], without_run["generated_accuracy"]
        lines.append(
            f"| {name} | {hidden} | {with_run['flow_space']} | {common.mean_std(with_run['original_accuracy'])} "
            f"| {common.mean_std(with_acc)} | {common.mean_std(without_acc)} "
            f"| {PAPER_ORIGINAL[name][0]:.2f} ± {PAPER_ORIGINAL[name][1]:.2f} "
            f"| {paper_with[0]:.2f} ± {paper_with[1]:.2f} | {paper_without[0]:.2f} ± {paper_without[1]:.2f} "
            f"| {gap(with_acc, paper_with)} | {gap(without_acc, paper_without)} |"
        )
    lines += [
        "",
        "## Per run: worst generated model, novelty, flow size and time",
        "",
        "| dataset | h | canonicalization | generated min (%) | L2 generated -> nearest original "
        "| L2 original -> nearest other original | flow params | flow loss (last 100) | flow (s) | stage times (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for variant, run in row["runs"].items():
            novelty = run["novelty"]
            timings = ", ".join(
                f"{stage} {run['timings'][stage]:.0f}" for stage in sorted(run["timings"], key=stage_order)
            )
            lines.append(
                f"| {row['name']} | {row['hidden']} | {METHODS[variant]} | {run['generated_accuracy']['min']:.2f} "
                f"| {common.mean_std(novelty['generated_to_nearest_original'])} "
                f"| {common.mean_std(novelty['original_to_nearest_other_original'])} "
                f"| {run['flow_num_params']:,} | {run['flow_final_loss']:.3g} | {run['timings']['flow']:.0f} "
                f"| {timings} |"
            )
    lines += [
        "",
        "Stage times are those of the run that computed each stage; a zoo copied from the dataset's first run "
        "keeps that run's zoo time. Times are wall clock on a shared 2-core machine, so they vary with its load. "
        "L2 distances in canonical weight space (the zoo as trained without re-basin).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    common.run_and_write("table5_rebasin", table_rows, markdown)


if __name__ == "__main__":
    app.run(main)
