"""Robustness across initialization schemes (paper Sec. 4): one Iris zoo mixing five init schemes.

    python experiments/init_robustness.py

A 100-model Iris MLP zoo whose model i is drawn with the (i mod 5)-th scheme of
dwf_jax.models.INIT_SCHEMES (20 seeds x 5 schemes), and beside it the usual
single-scheme zoo (kaiming_zero_bias); each zoo is trained once and flowed with
and without Git Re-Basin (the paper's 30k iterations, Iris settings, h=256).
Reports each scheme's original test accuracy, the generated ensemble's accuracy,
and which scheme the nearest original (L2, canonical weight space) of every
generated model was drawn with. Writes experiments/results/init_robustness.{md,json}.
"""

import pathlib
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import iris_mlp  # noqa: E402
from dwf_jax import pipeline, stages  # noqa: E402
from dwf_jax.data import load_configured  # noqa: E402
from dwf_jax.diversity import geometry  # noqa: E402
from dwf_jax.evaluate import summary  # noqa: E402
from dwf_jax.models import INIT_SCHEMES, scheme_of_model  # noqa: E402
from dwf_jax.session import copy_stages  # noqa: E402
from dwf_jax.workdir import Workdir  # noqa: E402
from dwf_jax.zoo_store import Flattener  # noqa: E402
from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Data folder (unused: Iris comes with scikit-learn).")
flags.DEFINE_integer("flow_iterations", 30_000, "Flow iterations (the paper's 30k).")
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where the stages are kept.")

ZOOS = {"mixed": "mixed", "single": "kaiming_zero_bias"}
STAGES = ("zoo", "canonical", "flow", "samples", "eval_generated", "diversity")
METHODS = {"with_rebasin": "rebasin", "without_rebasin": "none"}
PAPER = (
    'The paper gives no table for this study: it says only that the flow "successfully generated novel weights '
    'achieving high test accuracy" from the mixed-initialization zoo.'
)


def run_config(init_scheme: str, method: str):
    config = iris_mlp.get_config()
    config.data.dir = FLAGS.data_dir
    config.model.init_scheme = init_scheme
    config.canonical.method = method
    config.flow.iterations = FLAGS.flow_iterations
    config.baselines.update(noise_stds=(), mixtures=0, average_of=0, gaussian=0)  # baselines are measured elsewhere
    return config


def nearest_originals(config, workdir: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Index of, and L2 distance to, each generated model's nearest original in canonical weight space."""
    dataset = load_configured(config.data)
    flattener = Flattener(stages.model_template(config, dataset))
    work = Workdir(workdir)
    canonical = stages.open_stage(config, work, "canonical", config.zoo.num_models, flattener)
    generated = stages.open_stage(config, work, "samples", config.sample.num_samples, flattener)
    among_all = geometry(canonical, generated, stages.block_size(config))
    distance = among_all.distance[canonical.num_models :, : canonical.num_models]
    return distance.argmin(axis=1), distance.min(axis=1)


def run_variant(zoo: str, variant: str, first_workdir: pathlib.Path | None) -> dict:
    """One pipeline run; the zoo stage comes from the zoo's first workdir (the same zoo settings)."""
    init_scheme, method = ZOOS[zoo], METHODS[variant]
    config = run_config(init_scheme, method)
    workdir = pathlib.Path(FLAGS.workdirs) / f"init_robustness_{zoo}_{variant}"
    if first_workdir is not None:
        dataset = load_configured(config.data)
        copy_stages(Workdir(first_workdir), pipeline.workdir_for(config, dataset, workdir), ("zoo",))
    report = pipeline.run(config, workdir, progress=True)

    original = np.asarray(Workdir(workdir).load("zoo")["test_accuracy"], dtype=np.float64)
    schemes = np.array([scheme_of_model(init_scheme, index) for index in range(len(original))])
    generated = np.asarray(report["generated"]["per_model"], dtype=np.float64)
    index, distance = nearest_originals(config, workdir)
    stored = np.asarray(report["diversity"]["nearest_l2"]["generated_to_original"]["per_model"])
    if not np.allclose(distance, stored, rtol=1e-5, atol=1e-5):
        raise AssertionError(f"nearest distances of {workdir} disagree with its report.json")
    nearest_scheme = schemes[index]
    per_scheme = {}
    for scheme in dict.fromkeys(schemes):
        mask = nearest_scheme == scheme
        per_scheme[scheme] = {
            "num_originals": int(np.sum(schemes == scheme)),
            "original_accuracy": summary(original[schemes == scheme]),
            "generated_nearest_count": int(np.sum(mask)),
            "generated_nearest_accuracy": summary(generated[mask]) if mask.any() else None,
            "generated_nearest_l2": summary(distance[mask]) if mask.any() else None,
        }
    return {
        **common.run_summary(report, workdir, None),
        "zoo": zoo,
        "init_scheme": init_scheme,
        "variant": variant,
        "canonical_method": method,
        "flow_hidden": config.flow.hidden,
        "distance_to_reference": {
            "before": report["canonicalization"]["distance_to_reference_before"],
            "after": report["canonicalization"]["distance_to_reference_after"],
        },
        "per_scheme": per_scheme,
        "nearest_original_index": index.tolist(),
        "nearest_original_scheme": nearest_scheme.tolist(),
    }


def table_rows() -> list[dict]:
    rows = []
    for zoo in ZOOS:
        first = None
        for variant in METHODS:
            rows.append(run_variant(zoo, variant, first))
            first = first or pathlib.Path(rows[-1]["workdir"])
    return rows


def stats(values: dict | None) -> str:
    return "-" if values is None else common.mean_std(values)


def markdown(rows: list[dict], provenance: dict) -> str:
    mixed = next(row for row in rows if row["zoo"] == "mixed")
    lines = [
        *common.header_lines("Robustness across initialization schemes (Iris MLP, mixed-init zoo)", provenance),
        "",
        f"Zoos of 100 Iris MLPs [4, 16, 3]; the mixed zoo draws model i with scheme i mod 5 of "
        f"{list(INIT_SCHEMES)} (20 models each). Flow: {mixed['flow_space']}, h={mixed['flow_hidden']}, "
        f"{FLAGS.flow_iterations} iterations, 100 generated models per run. {PAPER}",
        "",
        "## Original test accuracy per init scheme (%, mean ± std over the scheme's models)",
        "",
        "| zoo | scheme | models | accuracy | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for zoo in ZOOS:
        row = next(row for row in rows if row["zoo"] == zoo)
        for scheme, entry in row["per_scheme"].items():
            accuracy = entry["original_accuracy"]
            lines.append(
                f"| {zoo} | {scheme} | {entry['num_originals']} | {common.mean_std(accuracy)} "
                f"| {accuracy['min']:.2f} | {accuracy['max']:.2f} |"
            )
        if len(row["per_scheme"]) == 1:
            continue
        accuracy = row["original_accuracy"]
        lines.append(
            f"| {zoo} | all | {sum(e['num_originals'] for e in row['per_scheme'].values())} "
            f"| {common.mean_std(accuracy)} | {accuracy['min']:.2f} | {accuracy['max']:.2f} |"
        )
    lines += [
        "",
        "## Generated models (%, 100 per run)",
        "",
        "| zoo | canonicalization | original | generated | generated min | generated max "
        "| L2 generated -> nearest original | L2 original -> nearest other original | flow (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        generated, novelty = row["generated_accuracy"], row["novelty"]
        lines.append(
            f"| {row['zoo']} | {row['canonical_method']} | {common.mean_std(row['original_accuracy'])} "
            f"| {common.mean_std(generated)} | {generated['min']:.2f} | {generated['max']:.2f} "
            f"| {common.mean_std(novelty['generated_to_nearest_original'])} "
            f"| {common.mean_std(novelty['original_to_nearest_other_original'])} "
            f"| {row['timings']['flow']:.0f} |"
        )
    lines += [
        "",
        "## Init scheme of each generated model's nearest original (L2 in canonical weight space)",
        "",
        "Count of generated models whose nearest original was drawn with the scheme, their accuracy (%) and their "
        "distance to that original. Without re-basin the canonical space is the zoo as trained.",
        "",
        "| zoo | canonicalization | scheme | nearest of (of 100) | their accuracy | their L2 to it |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        for scheme, entry in row["per_scheme"].items():
            lines.append(
                f"| {row['zoo']} | {row['canonical_method']} | {scheme} | {entry['generated_nearest_count']} "
                f"| {stats(entry['generated_nearest_accuracy'])} | {stats(entry['generated_nearest_l2'])} |"
            )
    lines += ["", "Stage times (s) of each run, stages computed by earlier invocations included:", ""]
    for row in rows:
        lines.append(
            f"- {row['zoo']} {row['variant']}: "
            + ", ".join(f"{stage} {row['timings'][stage]:.1f}" for stage in STAGES if stage in row["timings"])
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    common.run_and_write("init_robustness", table_rows, markdown)


if __name__ == "__main__":
    app.run(main)
