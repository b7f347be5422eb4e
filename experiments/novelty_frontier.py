"""Which knob moves generated networks along the accuracy / novelty frontier? (MNIST MLP, re-basined zoo)

    python experiments/novelty_frontier.py --data_dir=../shared/datasets

Starts from the zoo, canonical zoo and PCA of table17_mnist.py's re-basin run
(same settings) and changes one flow or PCA knob per run: flow iterations,
source std, flow width, dropout, PCA components. Each row: the generated
ensemble's accuracy, its max IoU of errors with the originals and its distance
to the nearest original, beside the baselines of the table17 run. Writes
experiments/results/novelty_frontier.{md,json,png}.
"""

import json
import pathlib
import sys

from absl import app, flags
from matplotlib.figure import Figure

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dwf_jax import pipeline  # noqa: E402
from dwf_jax.data import load_configured  # noqa: E402
from dwf_jax.session import copy_stages  # noqa: E402
from dwf_jax.workdir import Workdir  # noqa: E402
from experiments import common, table17_mnist  # noqa: E402

FLAGS = flags.FLAGS
# One knob per run, on top of table17_mnist's re-basin settings (dual PCA, 99 components, 30k iterations).
KNOBS = {
    "base": {},
    "flow.iterations=2000": {"flow.iterations": 2000},
    "flow.iterations=5000": {"flow.iterations": 5000},
    "flow.source_std=0.1": {"flow.source_std": 0.1},
    "flow.source_std=1.0": {"flow.source_std": 1.0},
    "flow.hidden=64": {"flow.hidden": 64},
    "flow.dropout=0.5": {"flow.dropout": 0.5},
    "pca.components=20": {"pca.components": 20},
}


def knob_config(overrides: dict):
    config = table17_mnist.variant_config("rebasin")
    config.baselines.update(noise_stds=(), mixtures=0, average_of=0, gaussian=0)
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def run_knob(name: str, overrides: dict, base: pathlib.Path) -> dict:
    config = knob_config(overrides)
    workdir = pathlib.Path(FLAGS.workdirs) / f"novelty_frontier_{name.replace('=', '_')}"
    shared = ("zoo", "canonical") if "pca.components" in overrides else ("zoo", "canonical", "pca")
    dataset = load_configured(config.data)
    copy_stages(Workdir(base), pipeline.workdir_for(config, dataset, workdir), shared)
    report = pipeline.run(config, workdir, progress=True)
    return {
        "knob": name,
        "accuracy": report["generated"]["accuracy"],
        "max_iou": report["diversity"]["max_iou_of_errors"]["generated_to_original"],
        "nearest_l2": report["diversity"]["nearest_l2"]["generated_to_original"],
        "flow_seconds": report["timings"].get("flow"),
    }


def baseline_points(base: pathlib.Path) -> list[dict]:
    """The originals and the baselines of the table17 run, as the frontier's reference points."""
    report = json.loads(Workdir(base).report.read_text())
    points = [
        {
            "knob": "originals (to another)",
            "accuracy": report["original"]["accuracy"],
            "max_iou": report["diversity"]["max_iou_of_errors"]["original_to_original"],
            "nearest_l2": report["diversity"]["nearest_l2"]["original_to_original"],
        }
    ]
    for name, baseline in report["baselines"].items():
        section = baseline["diversity"]
        points.append(
            {
                "knob": f"baseline {name}",
                "accuracy": baseline["accuracy"],
                "max_iou": section["max_iou_of_errors"]["baseline_to_original"],
                "nearest_l2": section["nearest_l2"]["baseline_to_original"],
            }
        )
    return points


def table_rows() -> list[dict]:
    base = pathlib.Path(FLAGS.workdirs) / f"table17_mnist_with_rebasin_{FLAGS.space.replace(':', '')}"
    if not Workdir(base).report.exists():
        raise FileNotFoundError(f"{base} has no report.json: run experiments/table17_mnist.py first")
    rows = [{**run_knob(name, overrides, base), "kind": "generated"} for name, overrides in KNOBS.items()]
    rows += [{**point, "kind": "reference"} for point in baseline_points(base)]
    figure = Figure(figsize=(6, 4.5))
    axis = figure.subplots()
    for row in rows:
        marker = "o" if row["kind"] == "generated" else "s"
        axis.scatter(row["max_iou"]["mean"], row["accuracy"]["mean"], marker=marker)
        axis.annotate(row["knob"], (row["max_iou"]["mean"], row["accuracy"]["mean"]), fontsize=6)
    axis.set_xlabel("max IoU of test errors with an original (mean)")
    axis.set_ylabel("test accuracy (%, mean)")
    axis.set_title("MNIST MLP: generated ensembles (o) and references (s)")
    figure.tight_layout()
    figure.savefig(common.RESULTS / "novelty_frontier.png", dpi=120)
    return rows


def markdown(rows: list[dict], provenance: dict) -> str:
    lines = [
        *common.header_lines("Accuracy / novelty frontier of generated MNIST MLPs, one knob at a time", provenance),
        f"Base: table17_mnist.py's re-basin run ({FLAGS.space}, 30k iterations, h=512, source std 0.01, dropout 0.1).",
        "",
        "| ensemble | accuracy (%) | max IoU of errors with an original | L2 to nearest original | flow (s) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        seconds = f"{row['flow_seconds']:.0f}" if row.get("flow_seconds") is not None else "-"
        lines.append(
            f"| {row['knob']} | {common.mean_std(row['accuracy'])} | {common.cell(row['max_iou'], 4)} "
            f"| {common.cell(row['nearest_l2'], 4)} | {seconds} |"
        )
    lines += ["", "Figure: novelty_frontier.png", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    common.run_and_write("novelty_frontier", table_rows, markdown)


if __name__ == "__main__":
    app.run(main)
