"""What moves generated nets off the noise baselines' accuracy / novelty frontier? One flow knob at a time, at one
zoo size with a held-out part (issue 26, part 3).

    python experiments/held_out_frontier.py --data_dir=../shared/datasets --num_models=1000

Starts from zoo_scaling.py's run of --num_models models (same flags: --held_out, --flow_iterations, --flow_hidden,
--full_weights, --baseline_models, --workdirs) and takes its zoo, canonical zoo, PCA and the zoo's own diversity as
they are: nothing is refitted but the flow. Each knob changes one setting: flow width, dropout, weight decay,
training length and batch size, early stopping on the held-out nets' flow loss (flow.early_stopping: they choose
the stopping step, so for that row they are a validation set, not unseen), source std, noise on the flow's targets
(flow.target_noise, in the flow's space), or the flow on full weights instead of PCA coefficients (then the PCA is
not used). The references are the base run's flow and samples with a ladder of noise baselines (NOISE_LADDER) and
the default mixtures, averages and Gaussian fit, computed once. Per knob: accuracy, max IoU of errors with an
original, nearest L2 to the training and to the held-out originals, the generalization gap, and whether the
ensemble (and what share of its models) lies beyond the noise baselines' frontier (more accurate than the line
through the noise ensembles at its max IoU) at >= 95% of the originals' accuracy. Writes
experiments/results/<--frontier_name>.{md,json,png}, rewritten after every knob; a rerun reads finished knobs'
reports back.
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

# One setting changed per run, on top of the zoo_scaling run's (dual PCA, h=512, dropout 0.1, weight decay 1e-5,
# source std 0.01, 30k iterations of batch 8, no target noise).
KNOBS = {
    "base": {},
    "hidden=128": {"flow.hidden": 128},
    "hidden=1024": {"flow.hidden": 1024},
    "dropout=0": {"flow.dropout": 0.0},
    "dropout=0.3": {"flow.dropout": 0.3},
    "weight_decay=0.01": {"flow.weight_decay": 0.01},
    "weight_decay=0.1": {"flow.weight_decay": 0.1},
    "iterations=3000": {"flow.iterations": 3000},
    "iterations=10000": {"flow.iterations": 10_000},
    "iterations=100000": {"flow.iterations": 100_000},
    "batch_size=64": {"flow.batch_size": 64},
    "early_stopping": {"flow.early_stopping": True},
    "source_std=0.1": {"flow.source_std": 0.1},
    "source_std=1.0": {"flow.source_std": 1.0},
    "target_noise=0.1": {"flow.target_noise": 0.1},
    "target_noise=0.3": {"flow.target_noise": 0.3},
    "target_noise=1.0": {"flow.target_noise": 1.0},
    "full_weights": {"pca.method": "none"},
}
# Taken from the base run (the PCA only by knobs that keep it): the knobs change the flow.
SHARED_STAGES = ("zoo", "canonical", "pca", "zoo_diversity")
# The reference run: the base run's stages but its baselines, which get a dense ladder of noise stds, so the line
# through the noise ensembles follows their curve (three stds leave chords far below it).
REFERENCE_STAGES = (*SHARED_STAGES, "flow", "samples", "eval_generated", "diversity")
NOISE_LADDER = (0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1)
ACCURACY_SHARE = 0.95


def knob_config(overrides: dict):
    config = zoo_scaling.run_config(FLAGS.num_models)
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
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


def finished_report(config, workdir: pathlib.Path, base: pathlib.Path, shared: tuple[str, ...]) -> dict:
    """The run's report: read back when the run finished before (a rerun skips it), else run with `shared` stages
    copied from `base`."""
    if Workdir(workdir).report.exists():
        return json.loads(Workdir(workdir).report.read_text())
    copy_stages(Workdir(base), pipeline.workdir_for(config, load_configured(config.data), workdir), shared)
    return pipeline.run(config, workdir, progress=True)


def knob_row(name: str, overrides: dict, base: pathlib.Path) -> dict:
    config = knob_config(overrides)
    workdir = pathlib.Path(FLAGS.workdirs) / f"held_out_frontier_n{FLAGS.num_models}_{name.replace('=', '_')}"
    start = time.perf_counter()
    shared = tuple(stage for stage in SHARED_STAGES if not any(key.startswith(f"{stage}.") for key in overrides))
    report = finished_report(config, workdir, base, shared)
    held_out, diversity = report["held_out"], report["diversity"]
    stopping = report["flow"].get("early_stopping")
    return {
        "knob": name,
        "overrides": overrides,
        "workdir": str(workdir),
        "accuracy": report["generated"]["accuracy"],
        "per_model_accuracy": report["generated"]["per_model"],
        "per_model_max_iou": diversity["max_iou_of_errors"]["generated_to_original"]["per_model"],
        "max_iou": common.strip(diversity["max_iou_of_errors"]["generated_to_original"]),
        "nearest_l2": common.strip(diversity["nearest_l2"]["generated_to_original"]),
        "nearest_l2_to_training": common.strip(held_out["nearest_l2"]["generated_to_training"]),
        "nearest_l2_to_held_out": common.strip(held_out["nearest_l2"]["generated_to_held_out"]),
        "max_iou_to_held_out": common.strip(held_out["max_iou_of_errors"]["generated_to_held_out"]),
        "generalization_gap": held_out["generalization_gap"],
        "flow_final_loss": report["flow"]["final_loss_mean_last_100"],
        "early_stopping_step": None if stopping is None else stopping["best_step"],
        "flow_seconds": report["timings"].get("flow"),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


def reference_report(base: pathlib.Path) -> dict:
    """The base run with the noise ladder's baselines (the base run's flow and samples copied, baselines recomputed)."""
    config = zoo_scaling.run_config(FLAGS.num_models)
    config.baselines.noise_stds = NOISE_LADDER
    workdir = pathlib.Path(FLAGS.workdirs) / f"held_out_frontier_n{FLAGS.num_models}_references"
    return finished_report(config, workdir, base, REFERENCE_STAGES)


def references(report: dict) -> dict:
    """The originals (their own level: the target) and every baseline ensemble of the reference run."""
    held_out, diversity = report["held_out"], report["diversity"]
    points = {
        "originals": {
            "accuracy": report["original"]["accuracy"],
            "max_iou": common.strip(diversity["max_iou_of_errors"]["original_to_original"]),
            "nearest_l2": common.strip(diversity["nearest_l2"]["original_to_original"]),
            "held_out_to_training_l2": common.strip(held_out["nearest_l2"]["held_out_to_training"]),
        }
    }
    for name, baseline in report["baselines"].items():
        iou = baseline["diversity"]["max_iou_of_errors"]["baseline_to_original"]
        points[name] = {
            "accuracy": baseline["accuracy"],
            "max_iou": common.strip(iou),
            "nearest_l2": common.strip(baseline["diversity"]["nearest_l2"]["baseline_to_original"]),
            "per_model_accuracy": baseline["per_model"],
            "per_model_max_iou": iou["per_model"],
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


def above_line(accuracy: list[float], max_iou: list[float], points: dict) -> np.ndarray:
    """Per model: more accurate than the noise line at its own max IoU (and inside the line's IoU range)?"""
    ious, accuracies = noise_frontier(points)
    accuracy, max_iou = np.asarray(accuracy), np.asarray(max_iou)
    inside = (max_iou >= ious.min()) & (max_iou <= ious.max())
    return inside & (accuracy > np.interp(max_iou, ious, accuracies))


def noise_models_above_line(points: dict) -> float:
    """The share of the noise ensembles' own models above their line: how often chance puts a model there."""
    noise = [point for name, point in points.items() if name.startswith("noise_std_")]
    flags_ = [above_line(point["per_model_accuracy"], point["per_model_max_iou"], points) for point in noise]
    return float(np.mean(np.concatenate(flags_)))


def judge(row: dict, points: dict) -> dict:
    """Ensemble and per model: above the noise line at the max IoU, and at >= 95% of the originals' accuracy?"""
    ious, accuracies = noise_frontier(points)
    iou, accuracy = row["max_iou"]["mean"], row["accuracy"]["mean"]
    floor = ACCURACY_SHARE * points["originals"]["accuracy"]["mean"]
    good = np.asarray(row["per_model_accuracy"]) >= floor
    above = above_line(row["per_model_accuracy"], row["per_model_max_iou"], points)
    return {
        "noise_line_accuracy_at_its_max_iou": float(np.interp(iou, ious, accuracies)),
        "beyond_noise_frontier": bool(above_line([accuracy], [iou], points)[0]),
        "at_95_percent_of_original_accuracy": bool(accuracy >= floor),
        "share_of_models_at_95_percent": float(good.mean()),
        "share_of_models_beyond_frontier_at_95_percent": float((good & above).mean()),
    }


def figure(result: dict) -> None:
    points, rows = result["references"], result["knobs"]
    canvas = Figure(figsize=(16, 4.8))
    iou_axis, model_axis, gap_axis = canvas.subplots(1, 3)
    ious, accuracies = noise_frontier(points)
    iou_axis.plot(ious, accuracies, "k:", label="noise baselines' frontier (under each: the noise std)")
    for name, point in points.items():
        marker = "*" if name == "originals" else "s"
        where = (point["max_iou"]["mean"], point["accuracy"]["mean"])
        iou_axis.scatter(*where, marker=marker, color="gray", s=50)
        # The noise ladder crowds the top right: its stds go under the squares, the legend says what they are.
        noise = name.removeprefix("noise_std_") if name.startswith("noise_std_") else None
        label, offset = (noise, (0, -9)) if noise else (name, (3, 3))
        iou_axis.annotate(
            label,
            where,
            xytext=offset,
            textcoords="offset points",
            ha="center" if noise else "left",
            fontsize=6,
            color="gray",
        )
    floor = ACCURACY_SHARE * points["originals"]["accuracy"]["mean"]
    iou_axis.axhline(floor, color="gray", lw=0.5, ls="--", label=f"{ACCURACY_SHARE:.0%} of the originals' accuracy")
    for row in rows:
        iou_axis.scatter(row["max_iou"]["mean"], row["accuracy"]["mean"], color="C0")
        gap_axis.scatter(row["generalization_gap"], row["accuracy"]["mean"], color="C0")
        for axis, where in (
            (iou_axis, (row["max_iou"]["mean"], row["accuracy"]["mean"])),
            (gap_axis, (row["generalization_gap"], row["accuracy"]["mean"])),
        ):
            axis.annotate(row["knob"], where, xytext=(4, 2), textcoords="offset points", fontsize=6)
    for name, point in points.items():
        if name.startswith("noise_std_"):
            model_axis.scatter(point["per_model_max_iou"], point["per_model_accuracy"], s=3, color="gray", alpha=0.3)
    model_axis.plot(ious, accuracies, "k:", label="noise line (gray: noise models)")
    for number, row in enumerate(rows):
        model_axis.scatter(
            row["per_model_max_iou"],
            row["per_model_accuracy"],
            s=5,
            alpha=0.5,
            color=f"C{number % 10}",
            label=row["knob"],
        )
    model_axis.axhline(floor, color="gray", lw=0.5, ls="--")
    target = points["originals"]
    model_axis.scatter(
        target["max_iou"]["mean"], target["accuracy"]["mean"], marker="*", s=120, color="black", label="originals"
    )
    model_axis.set_xlabel("max IoU of test errors with an original (per model)")
    model_axis.set_ylabel("test accuracy (%, per model)")
    for handle in model_axis.legend(fontsize="xx-small").legend_handles:
        if hasattr(handle, "set_sizes"):  # scatter dots too small to tell apart there, the star too large
            handle.set_sizes([20])
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
    points = references(reference_report(base))
    result = {
        "base_workdir": str(base),
        "references": points,
        "noise_models_above_their_line": noise_models_above_line(points),
        "knobs": [],
        "partial": True,
    }
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
        f"{common.cell(originals['max_iou'])}, L2 to the nearest other original "
        f"{common.cell(originals['nearest_l2'], 2)}, held-out originals to the nearest training original "
        f"{common.cell(originals['held_out_to_training_l2'], 2)} (the yardstick of the gap).",
        "",
        "| knob | accuracy (%) | max IoU gen. -> orig. | L2 gen. -> train | L2 gen. -> held-out | gap "
        "| noise line at its IoU (%) | beyond the noise frontier | >= 95% of orig. acc. | models >= 95% "
        "| models >= 95% and beyond | flow (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["knobs"]:
        stop = f" (kept step {row['early_stopping_step']})" if row["early_stopping_step"] is not None else ""
        lines.append(
            f"| {row['knob']}{stop} | {common.mean_std(row['accuracy'])} | {common.cell(row['max_iou'])} "
            f"| {common.cell(row['nearest_l2_to_training'], 2)} "
            f"| {common.cell(row['nearest_l2_to_held_out'], 2)} | {row['generalization_gap']:.3f} "
            f"| {row['noise_line_accuracy_at_its_max_iou']:.2f} | {'yes' if row['beyond_noise_frontier'] else 'no'} "
            f"| {'yes' if row['at_95_percent_of_original_accuracy'] else 'no'} "
            f"| {row['share_of_models_at_95_percent']:.0%} "
            f"| {row['share_of_models_beyond_frontier_at_95_percent']:.0%} "
            f"| {row['flow_seconds']:.0f} |"
        )
    lines += [
        "",
        "## References (the base run's flow and samples with a ladder of noise baselines, each against all originals)",
        "",
        "| ensemble | accuracy (%) | max IoU with an original | L2 to nearest original |",
        "|---|---|---|---|",
    ]
    for name, point in points.items():
        lines.append(
            f"| {name} | {common.mean_std(point['accuracy'])} | {common.cell(point['max_iou'])} "
            f"| {common.cell(point['nearest_l2'], 2)} |"
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
        + ". The frontier is the line through the noise ensembles' (max IoU, accuracy) means (stds "
        + ", ".join(f"{std:g}" for std in NOISE_LADDER)
        + "); a point outside their max IoU range is not judged beyond it. Per model (the two 'models' columns): "
        "the share of generated models at >= 95% of the originals' mean accuracy, and of those above the line at "
        "their own max IoU; the noise ensembles' own models lie above their line "
        f"{result['noise_models_above_their_line']:.0%} of the time (their spread about the means).",
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
