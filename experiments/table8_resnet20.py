"""Table 8 for ResNet-20 on CIFAR-10: the flow on full weights vs on PCA coefficients, and how many.

    python experiments/table8_resnet20.py --data_dir=../shared/datasets --num_models=8 --epochs=1 \
        --reuse_zoo=experiments/workdirs/table5_resnet20_n4_e1

One zoo, one canonical zoo, then one pipeline run per flow space (they share
both stages). Model i depends only on (seed, i), so with --reuse_zoo the first
models are taken from a smaller zoo of the same settings and only the rest are
trained, two per resumable chunk. A full-weight flow at h=512 has 280M
parameters; on a CPU it gets --full_flow_iterations, and the PCA space of the
Table 5 run is trained a second time at that budget for a like-for-like row.
Writes experiments/results/table8_resnet20.{md,json}.
"""

import pathlib
import sys
import time

import ml_collections
from absl import app, flags, logging

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import resnet20  # noqa: E402
from dwf_jax import pipeline, stages  # noqa: E402
from dwf_jax.data import load_configured  # noqa: E402
from dwf_jax.session import copy_stages  # noqa: E402
from dwf_jax.settings import differences  # noqa: E402
from dwf_jax.workdir import Workdir, WorkdirConfigMismatch  # noqa: E402
from dwf_jax.zoo_store import Flattener  # noqa: E402
from experiments import common, stage_readers  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding cifar10_jpeg/cifar10_jpeg.tar.gz (else $DWF_DATA_DIR).")
flags.DEFINE_integer("num_models", 100, "Zoo size.")
flags.DEFINE_integer("epochs", None, "Zoo epochs (default: the config's, Table 12).")
flags.DEFINE_string(
    "reuse_zoo", None, "Workdir whose zoo stage (same seed, data, model and zoo settings) gives the first models."
)
flags.DEFINE_list(
    "spaces",
    ["dual:-1", "incremental:-1", "dual:4", "dual:2", "none"],
    "Flow spaces: none, or method:components (-1: N-1).",
)
flags.DEFINE_integer("flow_iterations", 30_000, "Flow iterations in PCA spaces (the paper's 30k).")
flags.DEFINE_integer("full_flow_iterations", 30_000, "Flow iterations on full weights (lower it on a CPU).")
flags.DEFINE_integer("num_samples", 100, "Generated models per space.")
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where the stages are kept.")

SHARED_STAGES = ("zoo", "canonical")
PAPER = (
    "Table 8, ResNet-20 (100 models x 5 epochs, h=512): original 73.62 ± 2.24; "
    "generated 75.07 ± 1.24 without PCA, 75.96 ± 0.89 with PCA."
)


def zoo_config() -> ml_collections.ConfigDict:
    config = resnet20.get_config()
    config.data.dir = FLAGS.data_dir
    config.zoo.update(num_models=FLAGS.num_models, models_per_chunk=2)
    if FLAGS.epochs is not None:
        config.zoo.epochs = FLAGS.epochs
    config.sample.num_samples = FLAGS.num_samples
    return config


def space_config(space: str, iterations: int) -> ml_collections.ConfigDict:
    config = zoo_config()
    method, _, components = space.partition(":")
    config.pca.method = method
    if method != "none":
        config.pca.components = int(components)
    config.flow.update(iterations=iterations, checkpoint_every=min(config.flow.checkpoint_every, iterations))
    if iterations < FLAGS.flow_iterations:
        config.flow.update(
            steps_per_dispatch=100, checkpoint_every=500
        )  # a slow flow: short dispatches, frequent saves
    return config


def reused_models(config: ml_collections.ConfigDict, work: Workdir, flattener: Flattener) -> tuple | None:
    """The smaller zoo's models and accuracies, after checking it was trained with the same settings."""
    if FLAGS.reuse_zoo is None:
        return None
    source = Workdir(FLAGS.reuse_zoo)
    changed = differences(source.verify("zoo"), work.settings["zoo"], ignore=("zoo.num_models",))
    if changed:
        raise WorkdirConfigMismatch(f"--reuse_zoo={source.path} was trained with other settings ({', '.join(changed)})")
    accuracy = source.load("zoo")["test_accuracy"]
    if len(accuracy) > config.zoo.num_models:
        raise ValueError(
            f"--reuse_zoo={source.path} has {len(accuracy)} models, more than --num_models={config.zoo.num_models}"
        )
    return source.open_matrix("zoo", len(accuracy), flattener.dim, in_memory=False), accuracy


def grow_zoo(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """Write workdir's zoo stage: the reused models, then the new ones trained here."""
    if Workdir(workdir).done("zoo") or FLAGS.reuse_zoo is None:
        return  # done, or the pipeline trains the whole zoo itself
    dataset = load_configured(config.data)
    work = pipeline.workdir_for(config, dataset, workdir)
    flattener = Flattener(stages.model_template(config, dataset))
    reused = reused_models(config, work, flattener)
    logging.info("zoo: models 0-%d from %s, training the rest", reused[0].num_models - 1, FLAGS.reuse_zoo)
    evaluate_models = stages.evaluator(config, dataset)
    work.run("zoo", lambda: stages.train_zoo(config, dataset, flattener, evaluate_models, work, True, reused=reused))
    work.remove_zoo_chunks()


def run_space(base: pathlib.Path, space: str, iterations: int) -> dict:
    """One pipeline run in its own workdir, starting from (and leaving behind) the shared stages in `base`."""
    workdir = base.with_name(f"{base.name}_{space.replace(':', '')}_{iterations}")
    config = space_config(space, iterations)
    dataset = load_configured(config.data)
    copy_stages(Workdir(base), pipeline.workdir_for(config, dataset, workdir), SHARED_STAGES)
    start = time.perf_counter()
    result = pipeline.run(config, workdir, progress=True)
    result["wall_seconds_this_invocation"] = round(time.perf_counter() - start, 1)
    result["zoo_epochs"] = config.zoo.epochs
    if space != "none":
        result["reconstructed_zoo"] = stage_readers.reconstructed_zoo_accuracy(config, workdir)
    copy_stages(Workdir(workdir), pipeline.workdir_for(config, dataset, base), SHARED_STAGES)
    return result


def zoo_origin(num_models: int) -> str:
    if FLAGS.reuse_zoo is None:
        return "all trained by this script"
    reused = len(Workdir(FLAGS.reuse_zoo).load("zoo")["test_accuracy"])
    return (
        f"models 0-{reused - 1} are the zoo of {FLAGS.reuse_zoo} (same seed and settings), "
        f"models {reused}-{num_models - 1} trained here"
    )


def reconstructed(result: dict) -> str:
    if "reconstructed_zoo" not in result:
        return "-"
    accuracy = result["reconstructed_zoo"]["accuracy_bn_recalibrated"]
    return f"{common.mean_std(accuracy)} ({result['reconstructed_zoo']['relative_error']:.3f})"


def markdown(rows: list[dict], provenance: dict) -> str:
    lines = [
        *common.header_lines("Table 8 (ResNet-20, CIFAR-10): full weights vs PCA, how many components", provenance),
        f"Data: {rows[0]['dataset']['source']}",
        f"Zoo: {rows[0]['original']['num_models']} models x {rows[0]['zoo_epochs']} epochs "
        f"({zoo_origin(rows[0]['original']['num_models'])}); "
        f"{rows[0]['generated']['num_samples']} generated models per row, BN recalibrated as in Table 7.",
        "",
        "| flow space | flow params | flow iterations | flow time (s) | original (%) "
        "| zoo through PCA, BN recalibrated (%) | generated, as generated (%) | generated, BN recalibrated (%) "
        "| nearest-original distance (generated / originals) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in rows:
        original, generated = result["original"]["accuracy"], result["generated"]["accuracy"]
        before = result["generated"]["accuracy_before_bn_recalibration"]
        novelty = result["generated"]["novelty"]
        lines.append(
            f"| {result['flow']['weight_space']} | {result['flow']['num_params']:,} | {result['flow']['iterations']} "
            f"| {result['timings'].get('flow', float('nan')):.0f} "
            f"| {common.mean_std(original)} | {reconstructed(result)} | {common.mean_std(before)} "
            f"| {common.mean_std(generated)} "
            f"| {novelty['generated_to_nearest_original']['mean']:.2f} "
            f"/ {novelty['original_to_nearest_other_original']['mean']:.2f} |"
        )
    lines += [
        "",
        "Zoo through PCA: each canonical model projected on the k components and back "
        "(relative L2 error in brackets), BN statistics re-estimated the same way as for the generated nets: "
        "the accuracy a flow that reproduced the zoo exactly in that space would reach.",
        "",
        PAPER,
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    config = zoo_config()
    base = pathlib.Path(FLAGS.workdirs) / f"table8_resnet20_n{config.zoo.num_models}_e{config.zoo.epochs}"
    runs = [(space, FLAGS.full_flow_iterations if space == "none" else FLAGS.flow_iterations) for space in FLAGS.spaces]
    if FLAGS.full_flow_iterations < FLAGS.flow_iterations and "none" in FLAGS.spaces:
        runs.append((FLAGS.spaces[0], FLAGS.full_flow_iterations))
    if not runs:  # --spaces= only grows the zoo
        common.log_stages()
        grow_zoo(config, base)
        return

    def table_rows() -> list[dict]:
        grow_zoo(config, base)
        return [run_space(base, space, iterations) for space, iterations in runs]

    common.run_and_write("table8_resnet20", table_rows, markdown)


if __name__ == "__main__":
    app.run(main)
