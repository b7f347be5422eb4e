"""The held-out measurement (zoo.held_out) beyond MLPs: a ViT, a BERT and a SmallCNN zoo (issue 26, part 4).

    python experiments/held_out_zoos.py --data_dir=../shared/datasets --ph_data_dir=/tmp/ph_data

Does the flow copy its training nets, or does it generate nets as far from them as unseen members of the same
zoo? One row per zoo, each a pipeline run whose last zoo.held_out of the zoo is held out of the canonical
reference, the PCA and the flow (`report.held_out_section`):

- vit: the 4-model ViT-Small-192 zoo of per_head_alignment.py (CIFAR-10 JPEG copy, a fixed random subset of 4096
  train / 1000 test images, 1 epoch), 1 held out; TransFusion (per head), dual PCA; its config is the zoo
  workdir's recorded one.
- bert: the 10-model BERT zoo of table5_bert.py (VADER sentences, h64, 2 blocks, 2 heads, 3 epochs; Spearman),
  2 held out; TransFusion (per head), dual PCA; its recorded config.
- cnn: a SmallCNN zoo trained here on MNIST (a CPU-sized zoo: --cnn_* flags, optionally a random training subset),
  the last 20% held out; Git Re-Basin, dual PCA.

The existing zoos' workdirs are only read (locked while read): their split-free stages (zoo, canonical,
zoo_diversity; `settings`) are copied into a new workdir held_out_zoos_<zoo>_..., where the run goes on. The
pipeline is run on the data the zoo saw (`run_on`: the subsets are no setting of dwf_jax, so `pipeline.run`'s own
loading would not match the zoo's data fingerprint). A rerun skips every finished stage. Writes
experiments/results/<--name>.{md,json}, rewritten after each finished zoo, marked partial until all are done.
"""

import dataclasses
import pathlib
import sys
import time

import ml_collections
from absl import app, flags, logging

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import smallcnn  # noqa: E402
from dwf_jax import pipeline, processes, stages  # noqa: E402
from dwf_jax.config import held_out_count, training_count  # noqa: E402
from dwf_jax.data import Dataset, load_configured  # noqa: E402
from dwf_jax.generator import recorded_config  # noqa: E402
from dwf_jax.session import copy_stages, opened  # noqa: E402
from dwf_jax.settings import SPLIT_FREE_STAGES  # noqa: E402
from dwf_jax.sharding import split_models  # noqa: E402
from dwf_jax.validation import validate_config  # noqa: E402
from dwf_jax.workdir import Workdir  # noqa: E402
from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding mnist/ IDX files, for the CNN zoo (else $DWF_DATA_DIR).")
flags.DEFINE_string("ph_data_dir", "/tmp/ph_data", "Folder holding cifar10_jpeg/ and vader_sentiment/ (ViT, BERT).")
flags.DEFINE_list("zoos", ["bert", "vit", "cnn"], "Which zoos, in this order: a subset of vit, bert, cnn.")
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where the zoos and the new runs are kept.")
flags.DEFINE_string("vit_zoo", "per_head_vit_n4_e1_d6_b128_random4096_test1000", "ViT zoo workdir (read only).")
flags.DEFINE_string("bert_zoo", "table5_bert_per_head_n10_e3_h64_l2_transfusion", "BERT zoo workdir (read only).")
flags.DEFINE_integer("vit_train_examples", 4096, "The ViT zoo's random training subset (its recorded one).")
flags.DEFINE_integer("vit_test_examples", 1000, "The ViT zoo's random test subset (its recorded one).")
flags.DEFINE_float("vit_held_out", 0.25, "zoo.held_out of the ViT zoo.")
flags.DEFINE_float("bert_held_out", 0.2, "zoo.held_out of the BERT zoo.")
flags.DEFINE_float("cnn_held_out", 0.2, "zoo.held_out of the CNN zoo.")
flags.DEFINE_integer("vit_samples", 25, "Generated ViTs (the recorded config's 25).")
flags.DEFINE_integer("bert_samples", 50, "Generated BERTs (the recorded config's 100 cost ~10 min of evaluation).")
flags.DEFINE_integer("cnn_samples", 50, "Generated SmallCNNs.")
flags.DEFINE_integer("cnn_num_models", 20, "SmallCNN zoo size.")
flags.DEFINE_integer("cnn_epochs", 1, "SmallCNN zoo epochs.")
flags.DEFINE_integer("cnn_train_examples", 0, "SmallCNN: a fixed random MNIST training subset (0: all 60k).")
flags.DEFINE_integer("cnn_flow_iterations", 10_000, "SmallCNN flow iterations.")
flags.DEFINE_string("name", "held_out_zoos", "Result files: experiments/results/<name>.{md,json}.")

ZOOS = ("vit", "bert", "cnn")


@dataclasses.dataclass
class Zoo:
    """One row's run: its config, the data its zoo saw, where it runs and the zoo workdir it starts from."""

    name: str
    description: str
    config: ml_collections.ConfigDict
    dataset: Dataset
    workdir: pathlib.Path
    source: pathlib.Path | None


def from_recorded(source_name: str, held_out: float, samples: int) -> ml_collections.ConfigDict:
    """The zoo workdir's recorded config with the split, the sample count and no baselines (not this table's)."""
    config = recorded_config(pathlib.Path(FLAGS.workdirs) / source_name, FLAGS.ph_data_dir)
    config.zoo.held_out = held_out
    config.sample.num_samples = samples
    config.baselines.update(noise_stds=(), mixtures=0, average_of=0, gaussian=0)
    return config


def vit_zoo() -> Zoo:
    config = from_recorded(FLAGS.vit_zoo, FLAGS.vit_held_out, FLAGS.vit_samples)
    dataset = common.random_subset(load_configured(config.data), FLAGS.vit_train_examples, FLAGS.vit_test_examples)
    return Zoo(
        "vit",
        f"ViT-Small-192 depth {config.model.depth}, CIFAR-10 (JPEG copy) random {FLAGS.vit_train_examples} train / "
        f"{FLAGS.vit_test_examples} test",
        config,
        dataset,
        run_path("vit", config, f"_s{FLAGS.vit_samples}"),
        pathlib.Path(FLAGS.workdirs) / FLAGS.vit_zoo,
    )


def bert_zoo() -> Zoo:
    config = from_recorded(FLAGS.bert_zoo, FLAGS.bert_held_out, FLAGS.bert_samples)
    model = config.model
    return Zoo(
        "bert",
        f"BERT h{model.hidden} / {model.layers} blocks / {model.heads} heads, VADER sentences "
        f"({config.data.max_tokens} tokens)",
        config,
        load_configured(config.data),
        run_path("bert", config, f"_s{FLAGS.bert_samples}"),
        pathlib.Path(FLAGS.workdirs) / FLAGS.bert_zoo,
    )


def cnn_zoo() -> Zoo:
    """SmallCNN on MNIST: 1 channel, so cheaper than CIFAR-10 (~45 s a model-epoch of 60k images on 2 busy cores)."""
    config = smallcnn.get_config()
    config.data.update(name="mnist", dir=FLAGS.data_dir)
    config.zoo.update(num_models=FLAGS.cnn_num_models, epochs=FLAGS.cnn_epochs, held_out=FLAGS.cnn_held_out)
    config.canonical.method = "rebasin"
    config.pca.update(method="dual", components=-1)
    iterations = FLAGS.cnn_flow_iterations
    config.flow.update(
        iterations=iterations,
        steps_per_dispatch=min(config.flow.steps_per_dispatch, iterations),
        checkpoint_every=min(config.flow.checkpoint_every, iterations),
    )
    config.sample.num_samples = FLAGS.cnn_samples
    config.baselines.update(noise_stds=(), mixtures=0, average_of=0, gaussian=0)
    examples = FLAGS.cnn_train_examples or "all"
    return Zoo(
        "cnn",
        "SmallCNN, MNIST" + (f" random {examples} train" if FLAGS.cnn_train_examples else ""),
        config,
        common.random_subset(load_configured(config.data), FLAGS.cnn_train_examples, None),
        run_path("cnn", config, f"_random{examples}_it{iterations}_s{FLAGS.cnn_samples}"),
        None,
    )


def run_path(name: str, config: ml_collections.ConfigDict, suffix: str) -> pathlib.Path:
    zoo = config.zoo
    return pathlib.Path(FLAGS.workdirs) / (
        f"held_out_zoos_{name}_n{zoo.num_models}_e{zoo.epochs}_{config.canonical.method}_{config.pca.method}"
        f"_ho{zoo.held_out:g}{suffix}"
    )


def run_on(config: ml_collections.ConfigDict, dataset: Dataset, workdir: pathlib.Path) -> dict:
    """`pipeline.run` on a given dataset (a subset the config cannot name) instead of the config's whole data."""
    validate_config(config)
    stages.steps_per_epoch(config, dataset)
    work = pipeline.workdir_for(config, dataset, workdir)
    with opened([work], [config]), split_models(config.num_devices):
        return pipeline.run_stages(config, dataset, work, processes.is_writer())


def zoo_row(zoo: Zoo) -> dict:
    """Copy the zoo's split-free stages (if it has a zoo workdir), run the rest, read the report."""
    work = pipeline.workdir_for(zoo.config, zoo.dataset, zoo.workdir)
    if zoo.source is not None:
        copy_stages(Workdir(zoo.source), work, SPLIT_FREE_STAGES)
    start = time.perf_counter()
    report = run_on(zoo.config, zoo.dataset, zoo.workdir)
    seconds = time.perf_counter() - start
    config, held_out = zoo.config, report["held_out"]
    return {
        "zoo": zoo.name,
        "description": zoo.description,
        "workdir": str(zoo.workdir),
        "zoo_workdir": None if zoo.source is None else str(zoo.source),
        "metric": report["metric"],
        "train_examples": len(zoo.dataset.x_train),
        "test_examples": len(zoo.dataset.x_test),
        "num_models": config.zoo.num_models,
        "num_training": training_count(config),
        "num_held_out": held_out_count(config),
        "epochs": config.zoo.epochs,
        "num_params": report["model"]["num_params"],
        "canonical_method": config.canonical.method,
        "flow_space": report["flow"]["weight_space"],
        "flow_iterations": config.flow.iterations,
        "flow_final_loss": report["flow"]["final_loss_mean_last_100"],
        "num_samples": report["generated"]["num_samples"],
        "original_accuracy": report["original"]["accuracy"],
        "generated_accuracy": report["generated"]["accuracy"],
        "generated_accuracy_before_bn_recalibration": report["generated"].get("accuracy_before_bn_recalibration"),
        "held_out": common.strip(held_out),
        "generalization_gap": held_out["generalization_gap"],
        "timings": report["timings"],
        "wall_seconds_this_invocation": round(seconds, 1),
    }


def write(rows: dict, code: str, start: float) -> None:
    run = common.provenance(time.perf_counter() - start, code)
    common.write_results(FLAGS.name, {"provenance": run, "rows": rows}, markdown(rows, run))


def table_rows(code: str, start: float) -> dict:
    """Each requested zoo in turn, the result files rewritten after each."""
    unknown = sorted(set(FLAGS.zoos) - set(ZOOS))
    if unknown:
        raise ValueError(f"--zoos: unknown {unknown}; choose from {list(ZOOS)}")
    builders = {"vit": vit_zoo, "bert": bert_zoo, "cnn": cnn_zoo}
    result = {"partial": True, "zoos_requested": list(FLAGS.zoos), "zoos_finished": [], "per_zoo": []}
    for name in FLAGS.zoos:
        logging.info("zoo %s", name)
        result["per_zoo"].append(zoo_row(builders[name]()))
        result["zoos_finished"].append(name)
        result["partial"] = result["zoos_finished"] != result["zoos_requested"]
        if result["partial"]:
            write(result, code, start)
    return result


def markdown(rows: dict, provenance: dict) -> str:
    per_zoo = rows["per_zoo"]
    state = (
        f"**Partial**: finished {rows['zoos_finished']} of {rows['zoos_requested']}."
        if rows["partial"]
        else f"Complete: {rows['zoos_finished']}."
    )
    lines = [
        *common.header_lines("Held-out zoo members beyond MLPs: ViT, BERT and SmallCNN zoos", provenance),
        "",
        state,
        "",
        "Each zoo's last zoo.held_out models are held out of the canonical reference, the PCA and the flow; "
        "generated nets are measured against the training and the held-out originals, and the held-out originals "
        "against the training ones (the yardstick). Accuracy: test accuracy (%; generated BatchNorm models after "
        "recalibration), BERT: test Spearman correlation. "
        "Metrics: mean ± std over the source models of the value at the nearest (L2) or most similar (IoU) target.",
        "",
        "| zoo | N (train / held out), epochs | flow space | samples | original | generated "
        "| max IoU gen -> train | gen -> held-out | held-out -> train (yardstick) "
        "| nearest L2 gen -> train | gen -> held-out | held-out -> train (yardstick) | generalization gap |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in per_zoo:
        iou, l2, gap = row["held_out"]["max_iou_of_errors"], row["held_out"]["nearest_l2"], row["generalization_gap"]
        digits = 4 if row["metric"].endswith("Spearman correlation") else 2
        original, generated = row["original_accuracy"], row["generated_accuracy"]
        lines.append(
            f"| {row['description']} ({row['num_params']:,} params) "
            f"| {row['num_models']} ({row['num_training']} / {row['num_held_out']}), {row['epochs']} "
            f"| {row['flow_space']} | {row['num_samples']} "
            f"| {common.cell(original, digits)} | {common.cell(generated, digits)} "
            f"| {common.cell(iou['generated_to_training'])} | {common.cell(iou['generated_to_held_out'])} "
            f"| {common.cell(iou['held_out_to_training'])} "
            f"| {common.cell(l2['generated_to_training'], 2)} | {common.cell(l2['generated_to_held_out'], 2)} "
            f"| {common.cell(l2['held_out_to_training'], 2)} | {'-' if gap is None else format(gap, '.3f')} |"
        )
    lines += [
        "",
        "Generalization gap: " + (per_zoo[0]["held_out"]["generalization_gap_definition"] if per_zoo else "-") + ".",
        "",
        "Runs (workdir, zoo workdir, canonicalization, flow iterations and final loss); stage times (s), stages "
        "taken from the zoo workdir included with their original times:",
        "",
    ]
    for row in per_zoo:
        timings = ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in row["timings"].items())
        source = "trained in it" if row["zoo_workdir"] is None else f"from `{row['zoo_workdir']}`"
        before = row["generated_accuracy_before_bn_recalibration"]
        if before is not None:
            timings += f"; generated accuracy before BatchNorm recalibration {common.mean_std(before)}"
        lines.append(
            f"- {row['zoo']}: `{row['workdir']}`, zoo {source}; {row['canonical_method']}; "
            f"{row['train_examples']} train / {row['test_examples']} test examples; flow {row['flow_iterations']} "
            f"iterations, final loss {row['flow_final_loss']:.4g}; {timings}; this invocation "
            f"{row['wall_seconds_this_invocation']:.0f} s"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    code, start = common.code_version(), time.perf_counter()
    common.run_and_write(FLAGS.name, lambda: table_rows(code, start), markdown)


if __name__ == "__main__":
    app.run(main)
