"""report.json, a readable summary, and a figure of original vs generated accuracy."""

import pathlib
from typing import Any

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from dwf_jax import checkpoints, diversity, flow
from dwf_jax.data import Dataset
from dwf_jax.evaluate import Distances, novelty, summary


def build_report(
    *,
    config: ml_collections.ConfigDict,
    dataset: Dataset,
    original_accuracy: np.ndarray,
    canonical_accuracy: np.ndarray,
    distances: Distances,
    generated_accuracy: dict[str, np.ndarray],
    evidence: dict[str, dict[str, np.ndarray]],
    flow: dict[str, Any],
    weight_space: str,
    timings: dict[str, float],
) -> dict:
    """Everything a reader needs to compare the generated ensemble with its zoo.

    `generated_accuracy` has "as_generated" and, for BatchNorm models,
    "bn_recalibrated"; the headline accuracy is the last one computed.
    """
    final_accuracy = generated_accuracy.get("bn_recalibrated", generated_accuracy["as_generated"])
    return {
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
        "diversity": diversity_section(evidence, distances),
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
    }


def diversity_section(evidence: dict[str, dict[str, np.ndarray]], distances: Distances) -> dict:
    """Per metric and direction (Table 17), the spread of every model's value against its nearest other model."""
    per_model = diversity.per_model(
        diversity.Evidence(**evidence["original"]), diversity.Evidence(**evidence["generated"]), distances.among_all
    )
    return {
        metric: {direction: summary(values) for direction, values in directions.items()}
        for metric, directions in per_model.items()
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
    generated_section = result["generated"]
    lines = [
        f"{result['dataset']['name']} / {model['name']}{fields} ({model['num_params']} params), "
        f"data: {result['dataset']['source']}",
        f"  original  ({counts[0]:>4} models): {_stats(original)}",
        f"  generated ({counts[1]:>4} models): {_stats(generated)}",
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
    lines.append(
        "  novelty: generated -> nearest original {:.3f} (mean), originals -> nearest other {:.3f} (mean)".format(
            novelty_stats["generated_to_nearest_original"]["mean"],
            novelty_stats["original_to_nearest_other_original"]["mean"],
        )
    )
    shared = result["diversity"]["max_iou_of_errors"]
    lines.append(
        "  shared errors (max IoU): generated -> originals {:.3f}, originals -> other originals {:.3f} (mean)".format(
            shared["generated_to_original"]["mean"], shared["original_to_original"]["mean"]
        )
    )
    lines.append("  timings (s): " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in result["timings"].items()))
    return "\n".join(lines)


def _stats(stats: dict) -> str:
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
    axis.set_xlabel("test accuracy (%)")
    axis.set_ylabel("models")
    axis.set_title(f"{result['dataset']['name']} {result['model']['name']}: original vs generated")
    axis.legend()
    figure.tight_layout()
    return figure


def write(result: dict, report_path: pathlib.Path, figure_path: pathlib.Path) -> None:
    """report.json and the figure, each written whole or not at all."""
    checkpoints.save_json(report_path, result)
    with checkpoints.atomic_path(figure_path) as temporary:
        accuracy_figure(result).savefig(temporary, dpi=120, format="png")
