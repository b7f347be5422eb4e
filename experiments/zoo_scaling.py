"""Does memorization fall as the zoo grows? MNIST MLP zoos of N models, each with a held-out part (issue 26, part 2).

    python experiments/zoo_scaling.py --data_dir=../shared/datasets

One zoo per N of --sizes (default 100, 300, 1000, 3000): the paper's 784-32-32-10 MLP, 5 epochs, seeds 0..N-1,
so each zoo holds the smaller ones. The largest zoo is trained incrementally: the smallest zoo first, then each
larger one from the one before it by training only the new models (`stages.train_zoo`'s `reused`; model i depends
only on (seed, i)), in its own zoo workdir (zoo_scaling_zoo_n<N>_e<epochs>), resumable from its zoo-chunk
checkpoints. Per N then one pipeline run with zoo.held_out = --held_out (the last 20% of each N are held out of
the canonical reference, the PCA and the flow): Git Re-Basin, the flow at the paper's settings (h=512,
--flow_iterations) on full weights for the N in --full_weights and in dual PCA with all T-1 components of the
T training models otherwise, the pipeline's baselines with
--baseline_models models per noise, average and Gaussian ensemble. A rerun skips every finished zoo and stage.

Per N: accuracies, max IoU of errors and nearest L2 to the originals, to the training and to the held-out
originals, the held-out originals' own distance to the training ones (the yardstick), the generalization gap,
the baselines, flow and zoo time. Writes experiments/results/<--name>.{md,json,png}; after every finished N the
files are rewritten with the rows so far, marked partial until every N is done.
"""

import json
import pathlib
import sys
import time

import ml_collections
import numpy as np
from absl import app, flags, logging
from matplotlib.figure import Figure

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import mnist_mlp  # noqa: E402
from dwf_jax import pipeline, stages  # noqa: E402
from dwf_jax.config import held_out_count, pca_components, training_count  # noqa: E402
from dwf_jax.data import load_configured  # noqa: E402
from dwf_jax.session import copy_stages, opened  # noqa: E402
from dwf_jax.settings import differences  # noqa: E402
from dwf_jax.workdir import Workdir, WorkdirConfigMismatch  # noqa: E402
from dwf_jax.zoo_store import Flattener  # noqa: E402
from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding mnist/ IDX files (else $DWF_DATA_DIR).")
flags.DEFINE_list("sizes", ["100", "300", "1000", "3000"], "Zoo sizes N, each zoo the first N models of the next.")
flags.DEFINE_float("held_out", 0.2, "zoo.held_out: the last fraction of each zoo, held out of all fitting.")
flags.DEFINE_list("full_weights", [], "Zoo sizes whose flow runs on full weights (the paper's); others in dual PCA.")
flags.DEFINE_integer("flow_iterations", 30_000, "Flow iterations (the paper's 30k).")
flags.DEFINE_integer("flow_hidden", 512, "Flow width (the paper's 512 for MNIST).")
flags.DEFINE_integer("epochs", None, "Zoo epochs (default: the config's 5, the paper's).")
flags.DEFINE_integer("num_samples", None, "Generated models per N (default: the config's 100).")
flags.DEFINE_integer("models_per_chunk", None, "Zoo models trained (and checkpointed) together (default: config's).")
flags.DEFINE_integer(
    "baseline_models", 100, "baselines.num_models: models per noise, average and Gaussian ensemble (0: the zoo's)."
)
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where the zoos and the stages are kept.")
flags.DEFINE_string("name", "zoo_scaling", "Result files: experiments/results/<name>.{md,json,png}.")
flags.DEFINE_bool("redraw", False, "Only redraw <name>.png from <name>.json (no run).")


def sizes() -> list[int]:
    values = sorted({int(size) for size in FLAGS.sizes})
    if not values or values[0] < 2:
        raise ValueError(f"--sizes={','.join(FLAGS.sizes)}: every zoo needs at least 2 models")
    return values


def zoo_config(num_models: int) -> ml_collections.ConfigDict:
    """The zoo settings every N shares but the size (zoo.held_out is no setting of the zoo stage)."""
    config = mnist_mlp.get_config()
    config.data.dir = FLAGS.data_dir
    config.zoo.update(num_models=num_models, held_out=FLAGS.held_out)
    if FLAGS.epochs is not None:
        config.zoo.epochs = FLAGS.epochs
    if FLAGS.models_per_chunk is not None:
        config.zoo.models_per_chunk = FLAGS.models_per_chunk
    return config


def space(num_models: int) -> str:
    return "none" if str(num_models) in FLAGS.full_weights else "dual"


def run_config(num_models: int) -> ml_collections.ConfigDict:
    config = zoo_config(num_models)
    config.canonical.method = "rebasin"
    config.pca.update(method=space(num_models), components=-1)
    config.baselines.num_models = min(FLAGS.baseline_models, num_models)
    iterations = FLAGS.flow_iterations
    config.flow.update(
        hidden=FLAGS.flow_hidden,
        iterations=iterations,
        steps_per_dispatch=min(config.flow.steps_per_dispatch, iterations),
        checkpoint_every=min(config.flow.checkpoint_every, iterations),
    )
    if FLAGS.num_samples is not None:
        config.sample.num_samples = FLAGS.num_samples
    return config


def zoo_workdir(num_models: int, config: ml_collections.ConfigDict) -> pathlib.Path:
    return pathlib.Path(FLAGS.workdirs) / f"zoo_scaling_zoo_n{num_models}_e{config.zoo.epochs}"


def run_workdir(num_models: int, config: ml_collections.ConfigDict) -> pathlib.Path:
    name = f"zoo_scaling_n{num_models}_e{config.zoo.epochs}_{space(num_models)}_h{FLAGS.flow_hidden}"
    return pathlib.Path(FLAGS.workdirs) / f"{name}_it{FLAGS.flow_iterations}_ho{FLAGS.held_out:g}"


def grow_zoo(num_models: int, smaller: int | None) -> pathlib.Path:
    """The zoo stage of N models in its zoo workdir: the `smaller` zoo's models, then the new ones trained here."""
    config = zoo_config(num_models)
    path = zoo_workdir(num_models, config)
    if Workdir(path).done("zoo"):
        logging.info("zoo of %d models: finished in %s", num_models, path)
        return path
    dataset = load_configured(config.data)
    work = pipeline.workdir_for(config, dataset, path)
    flattener = Flattener(stages.model_template(config, dataset))
    evaluate = stages.evaluator(config, dataset)
    source = None if smaller is None else Workdir(zoo_workdir(smaller, config))
    with opened([work] + ([source] if source else []), [config], record=False):
        reused = None
        if source is not None:
            changed = differences(source.verify("zoo"), work.settings["zoo"], ignore=("zoo.num_models",))
            if changed:
                raise WorkdirConfigMismatch(f"{source.path} was trained with other settings ({', '.join(changed)})")
            accuracy = source.load("zoo")["test_accuracy"]
            reused = source.open_matrix("zoo", len(accuracy), flattener.dim, in_memory=False), accuracy
            logging.info("zoo of %d models: 0-%d from %s, training the rest", num_models, smaller - 1, source.path)
        work.run("zoo", lambda: stages.train_zoo(config, dataset, flattener, evaluate, work, True, reused=reused))
        work.remove_zoo_chunks()
    return path


def prefix_check(smaller: pathlib.Path | None, larger: pathlib.Path) -> str:
    """Whether the smaller zoo's models are bitwise the larger zoo's first models (rows of the zoo files)."""
    if smaller is None:
        return "-"
    small = np.fromfile(Workdir(smaller).matrix_file("zoo"), np.uint8)
    large = np.fromfile(Workdir(larger).matrix_file("zoo"), np.uint8)
    equal = len(small) <= len(large) and np.array_equal(small, large[: len(small)])
    return "bitwise equal" if equal else "DIFFERENT"


def size_row(num_models: int, zoo_path: pathlib.Path, prefix: str, zoo_seconds: float) -> dict:
    config = run_config(num_models)
    workdir = run_workdir(num_models, config)
    dataset = load_configured(config.data)
    copy_stages(Workdir(zoo_path), pipeline.workdir_for(config, dataset, workdir), ("zoo", "canonical"))
    start = time.perf_counter()
    report = pipeline.run(config, workdir, progress=True)
    seconds = time.perf_counter() - start
    copy_stages(Workdir(workdir), pipeline.workdir_for(config, dataset, zoo_path), ("canonical",))
    diversity, held_out = report["diversity"], report["held_out"]
    return {
        "num_models": num_models,
        "num_training": training_count(config),
        "num_held_out": held_out_count(config),
        "workdir": str(workdir),
        "zoo_workdir": str(zoo_path),
        "prefix_of_next_smaller_zoo": prefix,
        "flow_space": report["flow"]["weight_space"],
        "pca_components": None if config.pca.method == "none" else pca_components(config),
        "flow_num_params": report["flow"]["num_params"],
        "flow_iterations": config.flow.iterations,
        "flow_final_loss": report["flow"]["final_loss_mean_last_100"],
        "num_samples": report["generated"]["num_samples"],
        "original_accuracy": report["original"]["accuracy"],
        "generated_accuracy": report["generated"]["accuracy"],
        "max_iou": {
            "generated_to_original": common.strip(diversity["max_iou_of_errors"]["generated_to_original"]),
            "original_to_original": common.strip(diversity["max_iou_of_errors"]["original_to_original"]),
        },
        "nearest_l2": {
            "generated_to_original": common.strip(diversity["nearest_l2"]["generated_to_original"]),
            "original_to_original": common.strip(diversity["nearest_l2"]["original_to_original"]),
        },
        "held_out": common.strip(held_out),
        "generalization_gap": held_out["generalization_gap"],
        "baselines": {
            name: {
                "accuracy": baseline["accuracy"],
                "max_iou": common.strip(baseline["diversity"]["max_iou_of_errors"]["baseline_to_original"]),
                "nearest_l2": common.strip(baseline["diversity"]["nearest_l2"]["baseline_to_original"]),
            }
            for name, baseline in report["baselines"].items()
        },
        "flow_seconds": report["timings"].get("flow"),
        "zoo_seconds_new_models": zoo_seconds,
        "timings": report["timings"],
        "wall_seconds_this_invocation": round(seconds, 1),
    }


def write(name: str, rows: dict, code: str, start: float) -> None:
    """The result files as they stand (also after each N of a run still going)."""
    run = common.provenance(time.perf_counter() - start, code)
    common.write_results(name, {"provenance": run, "rows": rows}, markdown(rows, run))


def table_rows(code: str, start: float) -> dict:
    """Every N in turn: grow its zoo, run the pipeline, rewrite the result files with the rows so far."""
    requested = sizes()
    result = {"partial": True, "sizes_requested": requested, "sizes_finished": [], "per_size": []}
    smaller, cumulative = None, 0.0
    for num_models in requested:
        path = grow_zoo(num_models, smaller)
        prefix = prefix_check(None if smaller is None else zoo_workdir(smaller, zoo_config(smaller)), path)
        logging.info("zoo of %d models, its first models against the zoo before: %s", num_models, prefix)
        zoo_seconds = Workdir(path).timings.get("zoo", float("nan"))
        cumulative += zoo_seconds
        row = size_row(num_models, path, prefix, zoo_seconds)
        row["zoo_seconds_cumulative"] = cumulative
        result["per_size"].append(row)
        result["sizes_finished"].append(num_models)
        result["partial"] = result["sizes_finished"] != requested
        if result["partial"]:
            write(FLAGS.name, result, code, start)
            figure(result)
        smaller = num_models
    figure(result)
    return result


def noise_names(rows: dict) -> list[str]:
    return (
        [name for name in rows["per_size"][0]["baselines"] if name.startswith("noise_std_")] if rows["per_size"] else []
    )


def figure(rows: dict) -> None:
    """Accuracy and novelty against N: accuracy, max IoU of errors and nearest L2 to the nearest original, with the
    originals' own level (the target) and the noise baselines (references)."""
    per_size = rows["per_size"]
    n = [row["num_models"] for row in per_size]
    canvas = Figure(figsize=(16, 4.4))
    accuracy_axis, iou_axis, l2_axis = canvas.subplots(1, 3)
    panels = (
        (iou_axis, "max_iou", "max_iou_of_errors", "max IoU of test errors with an original"),
        (l2_axis, "nearest_l2", "nearest_l2", "L2 to the nearest original (canonical params)"),
    )

    def line(axis, values, **style):
        axis.errorbar(n, [v["mean"] for v in values], yerr=[v["std"] for v in values], capsize=3, **style)

    def finish(axis, key: str, xlabel: str, ylabel: str) -> None:
        """The noise baselines' level of `key`, a log N axis, labels and legend."""
        for number, name in enumerate(noise_names(rows)):
            values = [row["baselines"][name][key]["mean"] for row in per_size]
            axis.plot(n, values, ":", color=f"C{number + 3}", label=f"baseline {name.replace('_', ' ')}")
        axis.set_xscale("log")
        axis.set_xticks(n, [str(size) for size in n], minor=False)
        axis.minorticks_off()
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.legend(fontsize="x-small")

    line(accuracy_axis, [row["generated_accuracy"] for row in per_size], fmt="o-", color="C0", label="generated")
    line(
        accuracy_axis,
        [row["original_accuracy"] for row in per_size],
        fmt="s--",
        color="C1",
        label="originals (the target)",
    )
    finish(accuracy_axis, "accuracy", "zoo size N", "MNIST test accuracy (%)")
    for axis, key, held_key, label in panels:
        line(axis, [row[key]["generated_to_original"] for row in per_size], fmt="o-", color="C0", label="generated")
        line(
            axis,
            [row["held_out"][held_key]["generated_to_held_out"] for row in per_size],
            fmt="^-",
            color="C1",
            label="generated -> held-out originals",
        )
        line(
            axis,
            [row[key]["original_to_original"] for row in per_size],
            fmt="s--",
            color="black",
            label="target: originals -> other originals",
        )
        line(
            axis,
            [row["held_out"][held_key]["held_out_to_training"] for row in per_size],
            fmt="D:",
            color="dimgray",
            label="held-out originals -> training (yardstick)",
        )
        finish(axis, key, f"zoo size N (the last {FLAGS.held_out:g} of each held out)", label)
    status = " (partial)" if rows["partial"] else ""
    canvas.suptitle(f"MNIST MLP 784-32-32-10: accuracy and novelty of generated nets against zoo size{status}")
    canvas.tight_layout()
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    canvas.savefig(common.RESULTS / f"{FLAGS.name}.png", dpi=120)


def markdown(rows: dict, provenance: dict) -> str:
    per_size, mixtures = rows["per_size"], mnist_mlp.get_config().baselines
    state = (
        f"**Partial**: finished N = {rows['sizes_finished']} of {rows['sizes_requested']}."
        if rows["partial"]
        else f"Complete: N = {rows['sizes_finished']}."
    )
    lines = [
        *common.header_lines("Zoo-size scaling: are generated MNIST MLPs less memorized as the zoo grows?", provenance),
        "",
        state,
        "",
        f"Zoos: MNIST MLP 784-32-32-10, seeds 0..N-1 (each zoo the first N models of the next, grown by training only "
        f"the new models); zoo.held_out = {FLAGS.held_out}: the last round({FLAGS.held_out} N) models are held out of "
        f"the canonical reference, the PCA and the flow. Git Re-Basin; flow h={FLAGS.flow_hidden}, "
        f"{FLAGS.flow_iterations} iterations; baselines: the pipeline's kinds, min(N, {FLAGS.baseline_models}) models "
        "per noise / average / Gaussian ensemble (baselines.num_models: the noise moves the first ones, training "
        f"originals when fewer than the training part), {mixtures.mixtures} mixtures of {mixtures.mix}.",
        "",
        "Each cell: mean ± std over the source models of their value against the nearest target model. "
        "Diversity columns (gen. / orig. -> originals) are against the whole zoo, held-out nets included; "
        "the L2 columns marked train / held-out are from the report's held_out section.",
        "",
        "| N (train / held-out) | flow space | original acc. (%) | generated acc. (%) | max IoU gen. -> orig. "
        "| max IoU orig. -> orig. (target) | L2 gen. -> orig. | L2 orig. -> orig. (target) | L2 gen. -> train "
        "| L2 gen. -> held-out | L2 held-out -> train (yardstick) | generalization gap | flow (s) "
        "| zoo (s, new models / cumulative) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in per_size:
        l2 = row["held_out"]["nearest_l2"]
        gap = row["generalization_gap"]
        lines.append(
            f"| {row['num_models']} ({row['num_training']} / {row['num_held_out']}) | {row['flow_space']} "
            f"| {common.mean_std(row['original_accuracy'])} | {common.mean_std(row['generated_accuracy'])} "
            f"| {common.cell(row['max_iou']['generated_to_original'])} "
            f"| {common.cell(row['max_iou']['original_to_original'])} "
            f"| {common.cell(row['nearest_l2']['generated_to_original'], 2)} "
            f"| {common.cell(row['nearest_l2']['original_to_original'], 2)} "
            f"| {common.cell(l2['generated_to_training'], 2)} | {common.cell(l2['generated_to_held_out'], 2)} "
            f"| {common.cell(l2['held_out_to_training'], 2)} | {'-' if gap is None else format(gap, '.3f')} "
            f"| {row['flow_seconds']:.0f} | {row['zoo_seconds_new_models']:.0f} / {row['zoo_seconds_cumulative']:.0f} |"
        )
    lines += [
        "",
        "## Baselines (each ensemble measured against all originals)",
        "",
        "| N | ensemble | accuracy (%) | max IoU of errors with an original | L2 to nearest original |",
        "|---|---|---|---|---|",
    ]
    for row in per_size:
        lines.append(
            f"| {row['num_models']} | generated | {common.mean_std(row['generated_accuracy'])} "
            f"| {common.cell(row['max_iou']['generated_to_original'])} "
            f"| {common.cell(row['nearest_l2']['generated_to_original'], 2)} |"
        )
        for name, baseline in row["baselines"].items():
            lines.append(
                f"| {row['num_models']} | {name} | {common.mean_std(baseline['accuracy'])} "
                f"| {common.cell(baseline['max_iou'])} | {common.cell(baseline['nearest_l2'], 2)} |"
            )
    lines += [
        "",
        "Generalization gap: " + (per_size[0]["held_out"]["generalization_gap_definition"] if per_size else "-") + ".",
        "",
        "Zoo prefixes (the smaller zoo's file against the first rows of this one): "
        + ", ".join(f"N={row['num_models']}: {row['prefix_of_next_smaller_zoo']}" for row in per_size),
        "",
        "Zoo time: training of the models new at this N (the invocation that finished the zoo stage); cumulative: "
        "the whole N-model zoo. Stage times (s) of each run, stages computed by earlier invocations included:",
        "",
    ]
    for row in per_size:
        timings = ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in row["timings"].items())
        lines.append(f"- N={row['num_models']}: {timings}")
    lines += ["", f"Figure: {FLAGS.name}.png", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.redraw:
        figure(json.loads((common.RESULTS / f"{FLAGS.name}.json").read_text())["rows"])
        return
    code, start = common.code_version(), time.perf_counter()
    common.run_and_write(FLAGS.name, lambda: table_rows(code, start), markdown)


if __name__ == "__main__":
    app.run(main)
