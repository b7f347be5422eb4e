"""What moves generated nets off the noise baselines' accuracy / novelty frontier? One flow knob at a time, at one
zoo size with a held-out part (issue 26, part 3).

    python experiments/held_out_frontier.py --data_dir=../shared/datasets --num_models=1000

Starts from zoo_scaling.py's run of --num_models models (same flags: --held_out, --flow_iterations, --flow_hidden,
--full_weights, --workdirs) and takes its zoo, canonical zoo, PCA and the zoo's own diversity as they are: nothing
is refitted but the flow. Each knob changes one flow setting: width, dropout, weight decay, training length and
batch size, early
stopping on the held-out nets' flow loss (flow.early_stopping: they choose the stopping step, so for that row they
are a validation set, not unseen), source std, and noise on the flow's targets (flow.target_noise, in the flow's
space). The baselines are the base run's (noise on every original, mixtures, averages, a Gaussian fit), computed
once. Per knob: accuracy, max IoU of errors with an original, nearest L2 to the training and to the held-out
originals, the generalization gap, and whether the point lies beyond the noise baselines' frontier (more accurate
than the line through the noise ensembles at its max IoU) at >= 95% of the originals' accuracy. Writes
experiments/results/<--frontier_name>.{md,json,png}, rewritten after every knob; a rerun skips finished knobs.
"""

import json
import pathlib
import sys
import time

import numpy as np
from absl import app, flags, logging
from matplotlib.figure import Figure

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dwf_jax import pipeline  # noqa: E402
from dwf_jax.data import load_configured  # noqa: E402
from dwf_jax.session import copy_stages  # noqa: E402
from dwf_jax.workdir import Workdir  # noqa: E402
from experiments import common, zoo_scaling  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_models", 1000, "Zoo size N: zoo_scaling.py's run of this N is the base.")
flags.DEFINE_list("knobs", [], "Names of KNOBS to run (default: all).")
flags.DEFINE_string("frontier_name", "held_out_frontier", "Result files: experiments/results/<name>.{md,json,png}.")

# One flow setting changed per run, on top of the zoo_scaling run's (h=512, dropout 0.1, weight decay 1e-5,
# source std 0.01, 30k iterations of batch 8, no target noise).
KNOBS = {
    "base": {},
    "hidden=128": {"hidden": 128},
    "hidden=1024": {"hidden": 1024},
    "dropout=0": {"dropout": 0.0},
    "dropout=0.3": {"dropout": 0.3},
    "weight_decay=0.01": {"weight_decay": 0.01},
    "weight_decay=0.1": {"weight_decay": 0.1},
    "iterations=3000": {"iterations": 3000},
    "iterations=10000": {"iterations": 10_000},
    "iterations=100000": {"iterations": 100_000},
    "batch_size=64": {"batch_size": 64},
    "early_stopping": {"early_stopping": True},
    "source_std=0.1": {"source_std": 0.1},
    "source_std=1.0": {"source_std": 1.0},
    "target_noise=0.1": {"target_noise": 0.1},
    "target_noise=0.3": {"target_noise": 0.3},
    "target_noise=1.0": {"target_noise": 1.0},
}
# Taken from the base run, unchanged by any knob: the knobs change the flow only.
SHARED_STAGES = ("zoo", "canonical", "pca", "zoo_diversity")
ACCURACY_SHARE = 0.95


def knob_config(overrides: dict):
    config = zoo_scaling.run_config(FLAGS.num_models)
    config.flow.update(overrides)
    iterations = config.flow.iterations
    config.flow.update(
        steps_per_dispatch=min(config.flow.steps_per_dispatch, iterations),
        checkpoint_every=min(config.flow.checkpoint_every, iterations),
    )
    config.baselines.update(noise_stds=(), mixtures=0, average_of=0, gaussian=0)  # the base run's serve all
    return config


def base_workdir() -> pathlib.Path:
    path = zoo_scaling.run_workdir(FLAGS.num_models, zoo_scaling.run_config(FLAGS.num_models))
    if not Workdir(path).report.exists():
        raise FileNotFoundError(
            f"{path} has no report.json: run experiments/zoo_scaling.py with N={FLAGS.num_models} in --sizes first"
        )
    return path


def knob_row(name: str, overrides: dict, base: pathlib.Path) -> dict:
    config = knob_config(overrides)
    workdir = pathlib.Path(FLAGS.workdirs) / f"held_out_frontier_n{FLAGS.num_models}_{name.replace('=', '_')}"
    copy_stages(Workdir(base), pipeline.workdir_for(config, load_configured(config.data), workdir), SHARED_STAGES)
    start = time.perf_counter()
    report = pipeline.run(config, workdir, progress=True)
    held_out, diversity = report["held_out"], report["diversity"]
    stopping = report["flow"].get("early_stopping")
    return {
        "knob": name,
        "overrides": {f"flow.{key}": value for key, value in overrides.items()},
        "workdir": str(workdir),
        "accuracy": report["generated"]["accuracy"],
        "max_iou": zoo_scaling.strip(diversity["max_iou_of_errors"]["generated_to_original"]),
        "nearest_l2": zoo_scaling.strip(diversity["nearest_l2"]["generated_to_original"]),
        "nearest_l2_to_training": zoo_scaling.strip(held_out["nearest_l2"]["generated_to_training"]),
        "nearest_l2_to_held_out": zoo_scaling.strip(held_out["nearest_l2"]["generated_to_held_out"]),
        "max_iou_to_held_out": zoo_scaling.strip(held_out["max_iou_of_errors"]["generated_to_held_out"]),
        "generalization_gap": held_out["generalization_gap"],
        "flow_final_loss": report["flow"]["final_loss_mean_last_100"],
        "early_stopping_step": None if stopping is None else stopping["best_step"],
        "flow_seconds": report["timings"].get("flow"),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


def references(base: pathlib.Path) -> dict:
    """The originals (their own level: the target) and every baseline ensemble of the base run."""
    report = json.loads(Workdir(base).report.read_text())
    held_out, diversity = report["held_out"], report["diversity"]
    points = {
        "originals": {
            "accuracy": report["original"]["accuracy"],
            "max_iou": zoo_scaling.strip(diversity["max_iou_of_errors"]["original_to_original"]),
            "nearest_l2": zoo_scaling.strip(diversity["nearest_l2"]["original_to_original"]),
            "held_out_to_training_l2": zoo_scaling.strip(held_out["nearest_l2"]["held_out_to_training"]),
        }
    }
    for name, baseline in report["baselines"].items():
        points[name] = {
            "accuracy": baseline["accuracy"],
            "max_iou": zoo_scaling.strip(baseline["diversity"]["max_iou_of_errors"]["baseline_to_original"]),
            "nearest_l2": zoo_scaling.strip(baseline["diversity"]["nearest_l2"]["baseline_to_original"]),
        }
    return points


def noise_frontier(points: dict) -> tuple[np.ndarray, np.ndarray]:
    """(max IoU, accuracy) of the noise ensembles, by max IoU: the line a generator has to beat."""
    noise = sorted(
        (point["max_iou"]["mean"], point["accuracy"]["mean"])
        for name, point in points.items()
        if name.startswith("noise_std_")
    )
    return np.array([iou for iou, _ in noise]), np.array([accuracy for _, accuracy in noise])


def judge(row: dict, points: dict) -> dict:
    """Accuracy above the noise line at the row's max IoU, and at >= 95% of the originals' accuracy?"""
    ious, accuracies = noise_frontier(points)
    iou, accuracy = row["max_iou"]["mean"], row["accuracy"]["mean"]
    line = float(np.interp(iou, ious, accuracies)) if len(ious) else float("nan")
    return {
        "noise_line_accuracy_at_its_max_iou": line,
        "beyond_noise_frontier": bool(accuracy > line and ious.min() <= iou <= ious.max()),
        "at_95_percent_of_original_accuracy": accuracy >= ACCURACY_SHARE * points["originals"]["accuracy"]["mean"],
    }


def figure(result: dict) -> None:
    points, rows = result["references"], result["knobs"]
    canvas = Figure(figsize=(11, 4.6))
    iou_axis, gap_axis = canvas.subplots(1, 2)
    ious, accuracies = noise_frontier(points)
    iou_axis.plot(ious, accuracies, "k:", label="noise baselines' frontier")
    for name, point in points.items():
        marker = "*" if name == "originals" else "s"
        iou_axis.scatter(point["max_iou"]["mean"], point["accuracy"]["mean"], marker=marker, color="gray", s=50)
        iou_axis.annotate(name, (point["max_iou"]["mean"], point["accuracy"]["mean"]), fontsize=6, color="gray")
    floor = ACCURACY_SHARE * points["originals"]["accuracy"]["mean"]
    iou_axis.axhline(floor, color="gray", lw=0.5, ls="--", label=f"{ACCURACY_SHARE:.0%} of the originals' accuracy")
    for row in rows:
        iou_axis.scatter(row["max_iou"]["mean"], row["accuracy"]["mean"], color="C0")
        iou_axis.annotate(row["knob"], (row["max_iou"]["mean"], row["accuracy"]["mean"]), fontsize=6)
        gap_axis.scatter(row["generalization_gap"], row["accuracy"]["mean"], color="C0")
        gap_axis.annotate(row["knob"], (row["generalization_gap"], row["accuracy"]["mean"]), fontsize=6)
    iou_axis.set_xlabel("max IoU of test errors with an original (mean; originals: with another)")
    iou_axis.set_ylabel("test accuracy (%, mean)")
    iou_axis.legend(fontsize="x-small")
    gap_axis.axvline(0.0, color="gray", lw=0.5, ls="--")
    gap_axis.set_xlabel("generalization gap (0: as far from training nets as held-out nets; 1: copies)")
    gap_axis.set_ylabel("test accuracy (%, mean)")
    canvas.suptitle(f"MNIST MLP, N={FLAGS.num_models} ({FLAGS.held_out:g} held out): one flow knob per point")
    canvas.tight_layout()
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    canvas.savefig(common.RESULTS / f"{FLAGS.frontier_name}.png", dpi=120)


def table_rows(code: str, start: float) -> dict:
    base = base_workdir()
    names = FLAGS.knobs or list(KNOBS)
    unknown = sorted(set(names) - set(KNOBS))
    if unknown:
        raise ValueError(f"--knobs: unknown {unknown}; choose from {list(KNOBS)}")
    result = {"base_workdir": str(base), "references": references(base), "knobs": [], "partial": True}
    for name in names:
        logging.info("knob %s", name)
        row = knob_row(name, KNOBS[name], base)
        result["knobs"].append({**row, **judge(row, result["references"])})
        result["partial"] = len(result["knobs"]) < len(names)
        figure(result)
        if result["partial"]:
            run = common.provenance(time.perf_counter() - start, code)
            common.write_results(FLAGS.frontier_name, {"provenance": run, **result}, markdown(result, run))
    return result


def markdown(result: dict, provenance: dict) -> str:
    points = result["references"]
    originals = points["originals"]
    lines = [
        *common.header_lines(
            f"Accuracy / novelty frontier at N={FLAGS.num_models} with a held-out part, one flow knob at a time",
            provenance,
        ),
        "",
        "**Partial**: knobs still running." if result["partial"] else "Complete.",
        "",
        f"Base: {result['base_workdir']} (zoo_scaling.py: MNIST MLP 784-32-32-10, 5 epochs, zoo.held_out = "
        f"{FLAGS.held_out}, Git Re-Basin, flow h={FLAGS.flow_hidden}, {FLAGS.flow_iterations} iterations, dropout "
        "0.1, weight decay 1e-5, source std 0.01); zoo, canonical zoo, PCA and the zoo's own diversity shared by "
        "every knob. Each cell: mean ± std over the models of their value against the nearest target.",
        "",
        f"Originals: accuracy {common.mean_std(originals['accuracy'])}, max IoU with another original "
        f"{zoo_scaling.cell(originals['max_iou'])}, L2 to the nearest other original "
        f"{zoo_scaling.cell(originals['nearest_l2'], 2)}, held-out originals to the nearest training original "
        f"{zoo_scaling.cell(originals['held_out_to_training_l2'], 2)} (the yardstick of the gap).",
        "",
        "| knob | accuracy (%) | max IoU gen. -> orig. | L2 gen. -> train | L2 gen. -> held-out | gap "
        "| noise line at its IoU (%) | beyond the noise frontier | >= 95% of orig. acc. | flow (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["knobs"]:
        stop = f" (kept step {row['early_stopping_step']})" if row["early_stopping_step"] is not None else ""
        lines.append(
            f"| {row['knob']}{stop} | {common.mean_std(row['accuracy'])} | {zoo_scaling.cell(row['max_iou'])} "
            f"| {zoo_scaling.cell(row['nearest_l2_to_training'], 2)} "
            f"| {zoo_scaling.cell(row['nearest_l2_to_held_out'], 2)} | {row['generalization_gap']:.3f} "
            f"| {row['noise_line_accuracy_at_its_max_iou']:.2f} | {'yes' if row['beyond_noise_frontier'] else 'no'} "
            f"| {'yes' if row['at_95_percent_of_original_accuracy'] else 'no'} | {row['flow_seconds']:.0f} |"
        )
    lines += [
        "",
        "## References (the base run's baselines, each against all originals)",
        "",
        "| ensemble | accuracy (%) | max IoU with an original | L2 to nearest original |",
        "|---|---|---|---|",
    ]
    for name, point in points.items():
        lines.append(
            f"| {name} | {common.mean_std(point['accuracy'])} | {zoo_scaling.cell(point['max_iou'])} "
            f"| {zoo_scaling.cell(point['nearest_l2'], 2)} |"
        )
    winners = [
        row["knob"]
        for row in result["knobs"]
        if row["beyond_noise_frontier"] and row["at_95_percent_of_original_accuracy"]
    ]
    lines += [
        "",
        "Beyond the noise baselines' frontier at >= 95% of the originals' accuracy: "
        + (", ".join(winners) if winners else "none of these knobs")
        + ". The frontier is the line through the noise ensembles' (max IoU, accuracy) means; a point outside "
        "their max IoU range is not judged beyond it.",
        "",
        f"Figure: {FLAGS.frontier_name}.png",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    code, start = common.code_version(), time.perf_counter()
    common.run_and_write(FLAGS.frontier_name, lambda: table_rows(code, start), markdown)


if __name__ == "__main__":
    app.run(main)
