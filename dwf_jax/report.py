"""report.json, a readable summary, and a figure of original vs generated accuracy."""

import pathlib
from typing import Any, NamedTuple

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from dwf_jax import checkpoints, diversity, durable, flow
from dwf_jax.config import held_out_count, training_count
from dwf_jax.data import Dataset
from dwf_jax.evaluate import Distances, generalization_gap, novelty, summary

ACCURACY, SPEARMAN = "test accuracy (%)", "test Spearman correlation"


def build_report(
    *,
    config: ml_collections.ConfigDict,
    dataset: Dataset,
    original_accuracy: np.ndarray,
    canonical_accuracy: np.ndarray,
    distances: Distances,
    generated_accuracy: dict[str, np.ndarray],
    evidence: dict[str, dict[str, np.ndarray]],
    within_zoo: dict[str, np.ndarray],
    baselines: "Baselines | None",
    flow: dict[str, Any],
    weight_space: str,
    timings: dict[str, float],
) -> dict:
    """Everything a reader needs to compare the generated ensemble with its zoo.

    `generated_accuracy` has "as_generated" and, for BatchNorm models,
    "bn_recalibrated"; the headline accuracy is the last one computed.
    """
    final_accuracy = generated_accuracy.get("bn_recalibrated", generated_accuracy["as_generated"])
    split = {"held_out": held_out_section(config, evidence, distances)} if held_out_count(config) else {}
    measured = diversity_per_model(evidence, distances, within_zoo)
    return {
        "metric": SPEARMAN if dataset.regression else ACCURACY,  # what every "accuracy" below measures
        "dataset": {
            "name": dataset.name,
            "source": dataset.source,
            "train": len(dataset.x_train),
            "test": len(dataset.x_test),
        },
        "model": {**model_fields(config.model), "num_params": distances.num_params},
        "original": {
            "num_models": len(original_accuracy),
            "accuracy": summary(original_accuracy),
            "per_model": np.round(original_accuracy, 4).tolist(),
        },
        "canonicalization": {
            "method": config.canonical.method,
            "max_accuracy_change": float(np.max(np.abs(canonical_accuracy - original_accuracy))),
            "distance_to_reference_before": summary(distances.to_reference_before),
            "distance_to_reference_after": summary(distances.to_reference_after),
        },
        "flow": {
            "weight_space": weight_space,
            "num_params": int(flow["num_params"]),
            "iterations": config.flow.iterations,
            "final_loss_mean_last_100": float(np.mean(flow["losses"][-100:])),
            **early_stopping_section(config, flow),
        },
        "generated": {
            "num_samples": len(final_accuracy),
            "accuracy": summary(final_accuracy),
            "per_model": np.round(final_accuracy, 4).tolist(),
            **bn_section(config, generated_accuracy),
            "ode_method": config.sample.method,
            "ode_steps": config.sample.steps,
            "nfe": flow_nfe(config),
            "novelty": novelty(distances.generated_to_canonical, distances.canonical_to_canonical),
        },
        "diversity": _summaries(measured),
        "baselines": baselines_section(baselines, evidence, measured),
        **split,
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
    }


GAP_DEFINITION = (
    "1 - mean nearest L2 of generated nets to the training originals / mean nearest L2 of held-out originals to the "
    "training originals (canonical params): 0 = generated nets lie as far from the training nets as unseen nets of "
    "the zoo do, 1 = copies of training nets, < 0 = farther than real nets"
)
HELD_OUT_DIRECTIONS = {
    "generated_to_training": ("generated", "training"),
    "generated_to_held_out": ("generated", "held_out"),
    "held_out_to_training": ("held_out", "training"),
}


def held_out_section(
    config: ml_collections.ConfigDict, evidence: dict[str, dict[str, np.ndarray]], distances: Distances
) -> dict:
    """New or memorized, against nets nothing was fitted on: nearest L2, max cosine and max IoU of errors of the
    generated nets to the training and to the held-out originals, the held-out originals' own to the training ones
    (the yardstick), and the generalization gap (`evaluate.generalization_gap`)."""
    num_training, num_originals = training_count(config), len(evidence["original"]["wrong"])
    rows = {
        "training": slice(0, num_training),
        "held_out": slice(num_training, num_originals),
        "generated": slice(num_originals, None),
    }
    wrong = np.concatenate([evidence["original"]["wrong"], evidence["generated"]["wrong"]])
    metrics = {
        "nearest_l2": (lambda a, b: distances.among_all.distance[a, b], False),
        "max_cosine": (lambda a, b: distances.among_all.cosine[a, b], True),
        "max_iou_of_errors": (lambda a, b: np.asarray(diversity.iou(wrong[a], wrong[b])), True),
    }
    section = {
        "split": f"the last {num_originals - num_training} of {num_originals} zoo models (zoo.held_out="
        f"{config.zoo.held_out}) are held out of the canonical reference, the PCA and the flow",
        "num_training": num_training,
        "num_held_out": num_originals - num_training,
        # flow.early_stopping: the held-out nets chose the flow's stopping step, so they are not wholly unseen
        "held_out_chose_stopping_step": bool(config.flow.early_stopping),
    }
    for metric, (pairwise, largest) in metrics.items():
        section[metric] = {
            direction: _with_values(diversity.nearest(pairwise(rows[source], rows[target]), False, largest))
            for direction, (source, target) in HELD_OUT_DIRECTIONS.items()
        }
    distance = distances.among_all.distance
    gap = generalization_gap(
        distance[rows["generated"], rows["training"]], distance[rows["held_out"], rows["training"]]
    )
    section["generalization_gap"] = None if np.isnan(gap) else gap
    section["generalization_gap_definition"] = GAP_DEFINITION
    return section


def _with_values(values: np.ndarray) -> dict:
    return {**summary(values), "per_model": _per_model(values)}


class Baselines(NamedTuple):
    """The baselines stage of a run, and where its models lie."""

    groups: list[tuple[str, int]]  # (name, number of models) in the stage's row order
    stage: dict[str, np.ndarray]  # accuracy and diversity evidence of every baseline model
    among_all: diversity.Geometry  # canonical originals first, then every baseline model


def _per_model(values: np.ndarray) -> list[float | None]:
    """Values rounded for JSON, an undefined one (NaN: no other model in a set of one) null."""
    return [None if np.isnan(value) else value for value in np.round(values, 6).tolist()]


def _summaries(per_model: dict[str, dict[str, np.ndarray]], other: str = "generated") -> dict:
    """Summary and per-model values of every metric and direction, the compared ensemble called `other`."""
    return {
        metric: {
            direction.replace("generated", other): {**summary(values), "per_model": _per_model(values)}
            for direction, values in directions.items()
        }
        for metric, directions in per_model.items()
    }


def diversity_per_model(
    evidence: dict[str, dict[str, np.ndarray]], distances: Distances, within_zoo: dict[str, np.ndarray]
) -> dict[str, dict[str, np.ndarray]]:
    """Per metric and direction (Table 17), every model's value against its nearest other model; the zoo's own
    values (`within_zoo`) are the zoo_diversity stage's."""
    original, generated = (diversity.Evidence(**evidence[name]) for name in ("original", "generated"))
    return diversity.per_model(original, generated, distances.among_all, within_zoo)


def baselines_section(
    baselines: Baselines | None,
    evidence: dict[str, dict[str, np.ndarray]],
    measured: dict[str, dict[str, np.ndarray]],
) -> dict:
    """Accuracy and diversity of each baseline ensemble against the originals, as for the generated one.

    The originals' own values are `measured`'s (the zoo_diversity stage's).
    """
    if baselines is None:
        return {}
    original = diversity.Evidence(**evidence["original"])
    num_originals, start, section = len(original.wrong), 0, {}
    for name, count in baselines.groups:
        rows = slice(start, start + count)
        start += count
        ensemble = diversity.Evidence(*(baselines.stage[field][rows] for field in diversity.Evidence._fields))
        index = np.r_[0:num_originals, num_originals + rows.start : num_originals + rows.stop]
        shape = diversity.Geometry(*(matrix[np.ix_(index, index)] for matrix in baselines.among_all))
        accuracy = baselines.stage["accuracy"][rows]
        section[name] = {
            "accuracy": summary(accuracy),
            "per_model": np.round(accuracy, 4).tolist(),
            "diversity": _summaries(
                diversity.per_model(original, ensemble, shape, _direction(measured, "original_to_original")),
                other="baseline",
            ),
        }
    return section


def _direction(per_model: dict[str, dict[str, np.ndarray]], direction: str) -> dict[str, np.ndarray]:
    """One direction's values of every metric (the zoo's own, for the baselines)."""
    return {metric: directions[direction] for metric, directions in per_model.items()}


def early_stopping_section(config: ml_collections.ConfigDict, flow: dict[str, Any]) -> dict:
    """With flow.early_stopping: the step kept and the held-out models' flow loss at each validated step."""
    if "best_step" not in flow:
        return {}
    every, iterations = config.flow.validate_every, config.flow.iterations
    steps = [min(step, iterations) for step in range(every, iterations + every, every)]
    return {
        "early_stopping": {
            "best_step": int(flow["best_step"]),
            "steps": steps,
            "held_out_loss": np.asarray(flow["held_out_losses"], np.float64).round(8).tolist(),
        }
    }


def model_fields(model_config: ml_collections.ConfigDict) -> dict:
    """The model's name and the fields its architecture reads (config.model holds only those), JSON-ready."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in model_config.items()}


def bn_section(config: ml_collections.ConfigDict, generated_accuracy: dict[str, np.ndarray]) -> dict:
    """Table 7's comparison: accuracy before and after BatchNorm recalibration."""
    if "bn_recalibrated" not in generated_accuracy:
        return {}
    return {
        "accuracy_before_bn_recalibration": summary(generated_accuracy["as_generated"]),
        "bn_recalibration": {
            "data": config.bn.data,
            "num_batches": config.bn.num_batches,
            "batch_size": config.bn.batch_size,
        },
    }


def flow_nfe(config: ml_collections.ConfigDict) -> int:
    return flow.num_function_evals(config.sample.method, config.sample.steps)


def format_summary(result: dict) -> str:
    original, generated = result["original"]["accuracy"], result["generated"]["accuracy"]
    novelty_stats = result["generated"]["novelty"]
    before = result["generated"].get("accuracy_before_bn_recalibration")
    model, counts = result["model"], (result["original"]["num_models"], result["generated"]["num_samples"])
    fields = "".join(f" {value}" for key, value in model.items() if key not in ("name", "num_params", "init_scheme"))
    generated_section, metric = result["generated"], result.get("metric", ACCURACY)
    lines = [
        f"{result['dataset']['name']} / {model['name']}{fields} ({model['num_params']} params), "
        f"data: {result['dataset']['source']}",
        f"  original  ({counts[0]:>4} models): {_stats(original, metric)}",
        f"  generated ({counts[1]:>4} models): {_stats(generated, metric)}",
    ]
    if before:
        calibration = generated_section["bn_recalibration"]["data"]
        lines.append(
            f"  generated before BN recalibration: {before['mean']:.2f} ± {before['std']:.2f} % "
            f"(recalibrated on {calibration} data)"
        )
    lines.append(
        f"  sampler: {generated_section['ode_method']} x {generated_section['ode_steps']} steps = "
        f"{generated_section['nfe']} flow evaluations; {result['flow']['weight_space']}"
    )
    stopping = result["flow"].get("early_stopping")
    if stopping:
        lines.append(
            f"  early stopping: kept step {stopping['best_step']} of {result['flow']['iterations']} "
            f"(held-out flow loss {min(stopping['held_out_loss']):.4g}, last {stopping['held_out_loss'][-1]:.4g})"
        )
    lines.append(
        "  novelty: generated -> nearest original {:.3f} (mean), originals -> nearest other {:.3f} (mean)".format(
            novelty_stats["generated_to_nearest_original"]["mean"],
            novelty_stats["original_to_nearest_other_original"]["mean"],
        )
    )
    for key, name in (
        ("max_iou_of_errors", "shared errors (max IoU)"),
        ("min_jensen_shannon_per_example", "prediction divergence (min per-example JS, bits)"),
    ):
        stats = result["diversity"][key]
        lines.append(
            f"  {name}: generated -> originals {stats['generated_to_original']['mean']:.3f}, "
            f"originals -> other originals {stats['original_to_original']['mean']:.3f} (mean)"
        )
    if "held_out" in result:
        lines.append(_held_out_line(result["held_out"]))
    lines.append("  timings (s): " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in result["timings"].items()))
    return "\n".join(lines)


def _held_out_line(section: dict) -> str:
    gap = section["generalization_gap"]
    l2, iou = section["nearest_l2"], section["max_iou_of_errors"]
    return (
        f"  held out ({section['num_held_out']} of {section['num_training'] + section['num_held_out']} originals): "
        f"generalization gap {'undefined' if gap is None else format(gap, '.3f')} (0: as new as unseen nets, 1: "
        f"copies); nearest L2 generated -> training {l2['generated_to_training']['mean']:.3f}, -> held-out "
        f"{l2['generated_to_held_out']['mean']:.3f}, held-out -> training {l2['held_out_to_training']['mean']:.3f}; "
        f"max IoU {iou['generated_to_training']['mean']:.3f} / {iou['generated_to_held_out']['mean']:.3f} / "
        f"{iou['held_out_to_training']['mean']:.3f} (mean)"
        + ("; the held-out nets chose the flow's stopping step" if section.get("held_out_chose_stopping_step") else "")
    )


def _stats(stats: dict, metric: str) -> str:
    if metric == SPEARMAN:
        return f"{stats['mean']:.4f} ± {stats['std']:.4f} Spearman  [min {stats['min']:.4f}, max {stats['max']:.4f}]"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f} %  [min {stats['min']:.2f}, max {stats['max']:.2f}]"


def histogram_bins(*series: list[float], count: int = 30) -> np.ndarray:
    """Increasing bin edges that hold every value of every series (all-equal values get one narrow bin)."""
    low, high = min(map(min, series)), max(map(max, series))
    return np.linspace(low, max(high, low + 1e-6), count)


def accuracy_figure(result: dict) -> Figure:
    """Histograms of the original and generated models' test accuracy on shared bins."""
    figure = Figure(figsize=(6, 3.5))
    axis = figure.subplots()
    values = [result["original"]["per_model"], result["generated"]["per_model"]]
    bins = histogram_bins(*values)
    axis.hist(values[0], bins=bins, alpha=0.6, label="original")
    axis.hist(values[1], bins=bins, alpha=0.6, label="generated")
    axis.set_xlabel(result.get("metric", ACCURACY))
    axis.set_ylabel("models")
    axis.set_title(f"{result['dataset']['name']} {result['model']['name']}: original vs generated")
    axis.legend(loc="upper left")  # a fixed place: "best" searches all the bars' points, slowly for large zoos
    figure.tight_layout()
    return figure


def diversity_figure(result: dict) -> Figure:
    """New or memorized? Accuracy against shared errors with the nearest original (Fig. 2), and nearest distances."""
    series = [
        ("original", result["original"]["per_model"], "original_to_original"),
        ("generated", result["generated"]["per_model"], "generated_to_original"),
    ]
    series += [(name, baseline["per_model"], "baseline_to_original") for name, baseline in result["baselines"].items()]
    sections = [result["diversity"]] * 2 + [baseline["diversity"] for baseline in result["baselines"].values()]
    figure = Figure(figsize=(11, 4))
    scatter, histogram = figure.subplots(1, 2)
    pairs = list(zip(series, sections, strict=True))
    nearest = [section["nearest_l2"][direction]["per_model"] for (_, _, direction), section in pairs]
    bins = histogram_bins(*nearest, count=40)
    for ((label, accuracy, direction), section), distances in zip(pairs, nearest, strict=True):
        scatter.scatter(section["max_iou_of_errors"][direction]["per_model"], accuracy, s=10, alpha=0.6, label=label)
        histogram.hist(distances, bins=bins, alpha=0.5, label=label)
    errors = "errors of sign" if result.get("metric") == SPEARMAN else "errors"
    scatter.set_xlabel(f"max IoU of test {errors} with another original")
    scatter.set_ylabel(result.get("metric", ACCURACY))
    histogram.set_xlabel("L2 to the nearest (other) original, canonical weights")
    histogram.set_ylabel("models")
    # Fixed places ("best" searches every point, slowly for large zoos): accurate nets sit high in the scatter.
    scatter.legend(fontsize="small", loc="lower left")
    histogram.legend(fontsize="small", loc="upper right")
    figure.suptitle(f"{result['dataset']['name']} {result['model']['name']}: new or memorized?")
    figure.tight_layout()
    return figure


def write(result: dict, report_path: pathlib.Path, figure_path: pathlib.Path, diversity_path: pathlib.Path) -> None:
    """report.json and the figures, each written whole or not at all."""
    checkpoints.save_json(report_path, result)
    for path, draw in ((figure_path, accuracy_figure), (diversity_path, diversity_figure)):
        with durable.atomic_path(path) as temporary:
            draw(result).savefig(temporary, dpi=120, format="png")
