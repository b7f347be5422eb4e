"""report.json, a readable summary, and a figure of original vs generated accuracy."""

import pathlib
from typing import Any, NamedTuple

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from dwf_jax import checkpoints, flow
from dwf_jax.data import Dataset
from dwf_jax.evaluate import novelty, pairwise_distances, summary

REPORT_FILE = "report.json"
FIGURE_FILE = "accuracy.png"


class Distances(NamedTuple):
    """The weight-space distances the report summarises: computed from matrices in memory, or streamed from zoo files."""

    num_params: int
    to_reference_before: np.ndarray  # (N,) original models to the original reference model
    to_reference_after: np.ndarray  # (N,) canonical models to the canonical reference model
    num_nonfinite: int  # generated models with NaN/Inf weights, left out of the novelty
    generated_to_canonical: np.ndarray  # (M finite, N)
    canonical_to_canonical: np.ndarray  # (N, N)


def distances_in_memory(reference: int, original: np.ndarray, canonical: np.ndarray, generated: np.ndarray) -> Distances:
    """`Distances` of (N, D), (N, D) and (M, D) weight matrices."""
    finite = np.all(np.isfinite(generated), axis=1)
    return Distances(
        num_params=int(original.shape[1]),
        to_reference_before=np.linalg.norm(original - original[reference], axis=1),
        to_reference_after=np.linalg.norm(canonical - canonical[reference], axis=1),
        num_nonfinite=int(np.sum(~finite)),
        generated_to_canonical=np.asarray(pairwise_distances(generated[finite], canonical)) if finite.any() else np.zeros((0, len(canonical))),
        canonical_to_canonical=np.asarray(pairwise_distances(canonical, canonical)),
    )


def build_report(
    *,
    config: ml_collections.ConfigDict,
    dataset: Dataset,
    original_accuracy: np.ndarray,
    canonical_accuracy: np.ndarray,
    distances: Distances,
    generated_accuracy: dict[str, np.ndarray],
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
        "dataset": {"name": dataset.name, "source": dataset.source, "train": len(dataset.x_train), "test": len(dataset.x_test)},
        "model": {"name": config.model.name, "features": list(config.model.features), "num_params": distances.num_params},
        "original": {"num_models": len(original_accuracy), "accuracy": summary(original_accuracy), "per_model": np.round(original_accuracy, 4).tolist()},
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
            "num_nonfinite": distances.num_nonfinite,
            "accuracy": summary(final_accuracy),
            "per_model": np.round(final_accuracy, 4).tolist(),
            **bn_section(config, generated_accuracy),
            "ode_method": config.sample.method,
            "ode_steps": config.sample.steps,
            "nfe": flow_nfe(config),
            "novelty": novelty(distances.generated_to_canonical, distances.canonical_to_canonical) if len(distances.generated_to_canonical) else {},
        },
        "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
    }


def bn_section(config: ml_collections.ConfigDict, generated_accuracy: dict[str, np.ndarray]) -> dict:
    """Table 7's comparison: accuracy before and after BatchNorm recalibration."""
    if "bn_recalibrated" not in generated_accuracy:
        return {}
    return {
        "accuracy_before_bn_recalibration": summary(generated_accuracy["as_generated"]),
        "bn_recalibration": {"data": config.bn.data, "num_batches": config.bn.num_batches, "batch_size": config.bn.batch_size},
    }


def flow_nfe(config: ml_collections.ConfigDict) -> int:
    return flow.num_function_evals(config.sample.method, config.sample.steps)


def format_summary(result: dict) -> str:
    original, generated = result["original"]["accuracy"], result["generated"]["accuracy"]
    novelty_stats = result["generated"]["novelty"]
    before = result["generated"].get("accuracy_before_bn_recalibration")
    lines = [
        f"{result['dataset']['name']} / {result['model']['name']} {result['model']['features']} ({result['model']['num_params']} params), data: {result['dataset']['source']}",
        f"  original  ({result['original']['num_models']:>4} models): {original['mean']:.2f} ± {original['std']:.2f} %  [min {original['min']:.2f}, max {original['max']:.2f}]",
        f"  generated ({result['generated']['num_samples']:>4} models): {generated['mean']:.2f} ± {generated['std']:.2f} %  [min {generated['min']:.2f}, max {generated['max']:.2f}]",
        *(
            [f"  generated before BN recalibration: {before['mean']:.2f} ± {before['std']:.2f} % (recalibrated on {result['generated']['bn_recalibration']['data']} data)"]
            if before
            else []
        ),
        f"  sampler: {result['generated']['ode_method']} x {result['generated']['ode_steps']} steps = {result['generated']['nfe']} flow evaluations; {result['flow']['weight_space']}",
    ]
    if novelty_stats:
        lines.append(
            "  novelty: generated -> nearest original {:.3f} (mean), originals -> nearest other {:.3f} (mean)".format(
                novelty_stats["generated_to_nearest_original"]["mean"], novelty_stats["original_to_nearest_other_original"]["mean"]
            )
        )
    lines.append("  timings (s): " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in result["timings"].items()))
    return "\n".join(lines)


def plot_accuracy(result: dict, path: pathlib.Path) -> None:
    figure = Figure(figsize=(6, 3.5))
    axis = figure.subplots()
    values = [result["original"]["per_model"], result["generated"]["per_model"]]
    bins = np.linspace(min(map(min, values)), max(map(max, values)) + 1e-6, 30)
    axis.hist(values[0], bins=bins, alpha=0.6, label="original")
    axis.hist(values[1], bins=bins, alpha=0.6, label="generated")
    axis.set_xlabel("test accuracy (%)")
    axis.set_ylabel("models")
    axis.set_title(f"{result['dataset']['name']} {result['model']['name']}: original vs generated")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write(workdir: pathlib.Path, result: dict) -> None:
    checkpoints.save_json(workdir / REPORT_FILE, result)
    plot_accuracy(result, workdir / FIGURE_FILE)
