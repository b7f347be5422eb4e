"""Table 5 (ResNet-20 / SmallCNN rows on CIFAR-10) and Table 7 (with vs without BN recalibration).

    python experiments/table5_resnet20.py --data_dir=../shared/datasets --num_models=10 --epochs=2

The zoo is as large as the machine allows (full settings: 100 models x 5
epochs); the flag values are written into the results. Stages live in
experiments/workdirs/, so an interrupted run resumes. Writes
experiments/results/table5_<model>.{md,json}.
"""

import json
import pathlib
import sys
import time

import ml_collections
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import resnet20, smallcnn  # noqa: E402
from dwf_jax import pipeline  # noqa: E402
from dwf_jax.workdir import CONFIG_FILE, Workdir  # noqa: E402
from experiments import common, stage_readers  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding cifar10_jpeg/cifar10_jpeg.tar.gz (else $DWF_DATA_DIR).")
flags.DEFINE_enum("model", "resnet20", ["resnet20", "smallcnn"], "Which row.")
flags.DEFINE_integer("num_models", 100, "Zoo size.")
flags.DEFINE_integer("epochs", None, "Zoo epochs (default: the config's, Table 12).")
flags.DEFINE_integer("num_samples", 100, "Generated models.")
flags.DEFINE_integer("flow_iterations", 30_000, "Flow training iterations.")
flags.DEFINE_integer("models_per_vmap", None, "Models vmapped together (default: the config's; 0 = all, good on GPU).")
flags.DEFINE_enum(
    "pca", None, ["none", "dual", "incremental"], "Flow space (default: the config's; dual keeps N-1 components)."
)
flags.DEFINE_string(
    "from_workdir",
    None,
    "Summarise the finished run in this workdir (e.g. of `python -m dwf_jax.main --config=configs/resnet20.py`) "
    "from its report.json and config.json instead of running the pipeline (the other zoo flags are then ignored).",
)
flags.DEFINE_bool(
    "recalibrate_originals",
    True,
    "Also recalibrate the original zoo's BatchNorm statistics the same way (same batches) and evaluate it: "
    "recalibration can lift any network whose running statistics lag its final weights, generated or not.",
)
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where the stages are kept.")

CONFIGS = {"resnet20": resnet20, "smallcnn": smallcnn}
PAPER = {
    "resnet20": "73.62 ± 2.24 original, 75.07 ± 1.24 generated (h=512, with re-basin)",
    "smallcnn": "not in Table 5",
}


def markdown(result: dict, provenance: dict) -> str:
    original, generated = result["original"]["accuracy"], result["generated"]["accuracy"]
    before = result["generated"]["accuracy_before_bn_recalibration"]
    recal = result["generated"]["bn_recalibration"]
    return "\n".join(
        [
            f"# Table 5 ({FLAGS.model}, CIFAR-10) and Table 7 (BN recalibration)",
            "",
            *common.provenance_lines(provenance),
            f"Wall time of this invocation: {provenance['wall_seconds']} s; stage times (s): "
            + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in result["timings"].items()),
            f"Data: {result['dataset']['source']}",
            f"Zoo: {result['original']['num_models']} models x {result['zoo_epochs']} epochs; "
            f"flow: {result['flow']['weight_space']}, {result['flow']['iterations']} iterations; "
            f"{result['generated']['num_samples']} samples, RK4 x {result['generated']['ode_steps']}",
            "",
            "| | accuracy (%) mean ± std | min | max |",
            "|---|---|---|---|",
            f"| original zoo | {common.mean_std(original)} | {original['min']:.2f} | {original['max']:.2f} |",
            f"| generated, as generated (Table 7: without recalibration) | {common.mean_std(before)} "
            f"| {before['min']:.2f} | {before['max']:.2f} |",
            f"| generated, BN recalibrated on {recal['data']} data ({recal['num_batches']} x {recal['batch_size']}) "
            f"| {common.mean_std(generated)} | {generated['min']:.2f} | {generated['max']:.2f} |",
            *recalibrated_original_row(result),
            "",
            f"Paper (100 models x 5 epochs, original CIFAR-10): {PAPER[FLAGS.model]}.",
            "",
        ]
    )


def recalibrated_original_row(result: dict) -> list[str]:
    if "accuracy_after_bn_recalibration" not in result["original"]:
        return []
    stats = result["original"]["accuracy_after_bn_recalibration"]
    return [
        f"| original zoo, BN recalibrated the same way | {common.mean_std(stats)} "
        f"| {stats['min']:.2f} | {stats['max']:.2f} |"
    ]


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.from_workdir:
        summarise_workdir(pathlib.Path(FLAGS.from_workdir))
        return
    common.log_stages()
    config = CONFIGS[FLAGS.model].get_config()
    config.data.dir = FLAGS.data_dir
    config.zoo.num_models = FLAGS.num_models
    config.zoo.epochs = FLAGS.epochs or config.zoo.epochs
    config.sample.num_samples = FLAGS.num_samples
    config.flow.iterations = FLAGS.flow_iterations
    if FLAGS.pca is not None:
        config.pca.method = FLAGS.pca
    if FLAGS.models_per_vmap is not None:
        config.models_per_vmap = FLAGS.models_per_vmap
    code = common.code_version()
    start = time.perf_counter()
    workdir = pathlib.Path(FLAGS.workdirs) / f"table5_{FLAGS.model}_n{FLAGS.num_models}_e{config.zoo.epochs}"
    if FLAGS.pca is not None:
        workdir = workdir.with_name(f"{workdir.name}_{FLAGS.pca}")
    result = pipeline.run(config, workdir, progress=True)
    result["zoo_epochs"] = config.zoo.epochs
    if FLAGS.recalibrate_originals and "accuracy_before_bn_recalibration" in result["generated"]:
        result["original"]["accuracy_after_bn_recalibration"] = stage_readers.recalibrated_original_accuracy(
            config, workdir
        )
    provenance = common.provenance(time.perf_counter() - start, code)
    common.write_results(
        f"table5_{FLAGS.model}", {"provenance": provenance, "result": result}, markdown(result, provenance)
    )


def summarise_workdir(workdir: pathlib.Path) -> None:
    """Results of a run made elsewhere: its report.json and the config it recorded, nothing recomputed."""
    report, config = Workdir(workdir).report, workdir / CONFIG_FILE
    if not report.exists() or not config.exists():
        raise SystemExit(f"{workdir} holds no finished run ({report.name} and {config.name} are written at its end)")
    result, recorded = json.loads(report.read_text()), json.loads(config.read_text())
    if recorded["model"]["name"] != FLAGS.model:
        raise SystemExit(f"{workdir} holds a {recorded['model']['name']} run; pass --model={recorded['model']['name']}")
    result["zoo_epochs"] = recorded["zoo"]["epochs"]
    result["summarised_from"] = str(workdir)
    if FLAGS.recalibrate_originals and "accuracy_before_bn_recalibration" in result["generated"]:
        result["original"]["accuracy_after_bn_recalibration"] = stage_readers.recalibrated_original_accuracy(
            ml_collections.ConfigDict(recorded), workdir
        )
    provenance = common.provenance(0.0, common.code_version())
    text = markdown(result, provenance).replace(
        f"Wall time of this invocation: {provenance['wall_seconds']} s; stage times (s)",
        f"Summarised from the finished run in {workdir} (its config.json and report.json); stage times of that run (s)",
    )
    common.write_results(f"table5_{FLAGS.model}", {"provenance": provenance, "result": result}, text)


if __name__ == "__main__":
    app.run(main)
