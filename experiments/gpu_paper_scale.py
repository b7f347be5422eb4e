"""The paper's ResNet-20 rows at 100 models x 5 epochs (Tables 5, 7, 8) sized to fit one GPU window.

    python experiments/gpu_paper_scale.py --data_dir=DATA --budget=540

A probe (the whole pipeline at 1 zoo epoch and `--probe_iterations` flow steps)
measures this device's seconds per zoo epoch and per flow step; the main run
then takes the paper's 5 epochs and 30k flow iterations (full weights, h=512,
Git Re-Basin, Table 5) or what the budget left allows, each stated in the
result. When float32 leaves fewer epochs, a second probe trains the zoo in
mixed precision (`zoo.compute_dtype=bfloat16`: bf16 compute, float32 weights)
and the main run takes whichever fits more (`--compute_dtype` forces one); the
result names the precision of every row. As time allows, the row without re-basin and Table 8's dual-PCA row
reuse the main run's zoo. Every run resumes from its stages, so the same
command continues where a time limit stopped it. Last, ResNet-18 generation
time per model (Table 15: 1.38 s on an A100) with an untrained flow in the
paper's PCA space: the time does not depend on the flow's weights. Writes
experiments/results/<--name>.{md,json}, the device named.
"""

import ast
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import resnet20  # noqa: E402
from dwf_jax import flow, pipeline  # noqa: E402
from dwf_jax.data import load_configured  # noqa: E402
from dwf_jax.models import build_model, model_config  # noqa: E402
from dwf_jax.session import copy_stages  # noqa: E402
from dwf_jax.workdir import Workdir  # noqa: E402
from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding cifar10_jpeg/cifar10_jpeg.tar.gz (else $DWF_DATA_DIR).")
flags.DEFINE_float("budget", 540.0, "Seconds this invocation may take; the main run is sized to fit.")
flags.DEFINE_integer("num_models", 100, "Zoo size (the paper's 100).")
flags.DEFINE_integer("epochs", 5, "Zoo epochs at most (the paper's 5, Table 12).")
flags.DEFINE_integer("flow_iterations", 30_000, "Flow iterations at most (the paper's 30k).")
flags.DEFINE_integer("num_samples", 100, "Generated models.")
flags.DEFINE_integer("probe_iterations", 500, "Flow steps of the probe run.")
flags.DEFINE_enum(
    "compute_dtype",
    "auto",
    ["auto", "float32", "bfloat16"],
    "Zoo training precision (zoo.compute_dtype); auto: a second probe in bfloat16 (float32 weights) when "
    "float32 leaves fewer than --epochs, and whichever fits more epochs.",
)
flags.DEFINE_integer("resnet18_samples", 100, "Nets drawn for the ResNet-18 generation time (0: skip).")
flags.DEFINE_list("overrides", [], "Extra config settings key=value for every run (a CPU dry run's small batches).")
flags.DEFINE_string("workdirs", "experiments/workdirs/gpu_paper_scale", "Where the stages are kept.")
flags.DEFINE_string("name", "gpu_paper_scale", "Result file name under experiments/results/.")

# Checked against ../shared/paper/deepweightflow_paper.txt (mean ± std).
PAPER = {
    "table5_rebasin": "Table 5, h=512: original 73.62 ± 2.24, generated with re-basin 75.07 ± 1.24",
    "table5_without": "Table 5, h=512: generated without re-basin 74.92 ± 0.80",
    "table7": "Table 7, ResNet-20 with re-basin: no calibration 14.36 ± 3.10, recalibrated 74.57 ± 0.84; "
    "without re-basin: no calibration 12.64 ± 2.22, recalibrated 75.21 ± 0.79",
    "table8_pca": "Table 8, with PCA: 75.96 ± 0.89 (re-basin), 75.97 ± 0.86 (without); train 1.23 min",
    "table15": "Table 15: ResNet-18 generation 1.38 s per model (A100, h=1024, PCA)",
}


PRECISION = {"float32": "float32", "bfloat16": "bf16 compute, float32 weights"}


def config_for(epochs: int, iterations: int, **settings: str):
    config = resnet20.get_config()
    config.data.dir = FLAGS.data_dir
    config.zoo.update(num_models=FLAGS.num_models, epochs=epochs, models_per_chunk=FLAGS.num_models, scan_steps=True)
    config.models_per_vmap = 0  # GPUs run vmapped convolutions well (the config's 1 is for XLA:CPU)
    config.pca.method = "none"  # Table 5 trains on full weights
    config.flow.iterations = iterations
    config.flow.checkpoint_every = min(config.flow.checkpoint_every, iterations)
    config.sample.num_samples = FLAGS.num_samples
    for key, value in [*settings.items(), *(item.split("=", 1) for item in FLAGS.overrides)]:
        section, field = key.split(".")
        config[section][field] = _value(value)
    return config


def _value(text: str):
    """A command-line value as Python reads it (16, 1e-3, True), else the text itself (a name)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run(name: str, config, zoo_from: str | None = None) -> dict:
    """One pipeline run in its own workdir (the zoo copied from `zoo_from`'s), summarised."""
    workdir = pathlib.Path(FLAGS.workdirs) / name
    if zoo_from is not None:
        source = pathlib.Path(FLAGS.workdirs) / zoo_from
        copy_stages(Workdir(source), pipeline.workdir_for(config, load_configured(config.data), workdir), ("zoo",))
    start = time.perf_counter()
    report = pipeline.run(config, workdir, progress=False)
    summary = common.run_summary(report, workdir, round(time.perf_counter() - start, 1))
    generated = report["generated"]
    summary.update(
        name=name,
        zoo_epochs=config.zoo.epochs,
        flow_iterations=config.flow.iterations,
        canonical=config.canonical.method,
        compute_dtype=config.zoo.compute_dtype,
        accuracy_before_bn_recalibration=generated.get("accuracy_before_bn_recalibration"),
    )
    return summary


def sized(probe: dict, seconds_left: float) -> tuple[int, int]:
    """(epochs, flow iterations) of the main run that fit `seconds_left`, by the probe's measured rates.

    The probe's times include compilation, so the estimate errs long. Epochs come first (the zoo is the row).
    """
    timings = probe["timings"]
    zoo_epoch, flow_step = timings["zoo"], timings["flow"] / FLAGS.probe_iterations
    room = seconds_left - 1.5 * (sum(timings.values()) - timings["zoo"] - timings["flow"]) - 30.0
    shortest_flow = FLAGS.probe_iterations * flow_step
    epochs = max(1, min(FLAGS.epochs, math.floor((room - shortest_flow) / zoo_epoch)))
    iterations = math.floor((room - epochs * zoo_epoch) / flow_step)
    return epochs, max(FLAGS.probe_iterations, min(FLAGS.flow_iterations, iterations))


def resnet18_generation_seconds(num_samples: int) -> dict:
    """Seconds per generated ResNet-18 (99 PCA coefficients, flow h=1024, RK4 x 100, decoded to full weights)."""
    model = build_model(model_config("resnet18"))
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    dim, components = sum(leaf.size for leaf in jax.tree.leaves(template)), 99
    field = flow.VelocityField(dim=components, hidden=1024, time_embed_dim=64, dropout=0.1)
    params = field.init(jax.random.key(1), jnp.zeros((1, components)), jnp.zeros((1,)), train=False)
    basis = jax.random.normal(jax.random.key(2), (components, dim)) / math.sqrt(dim)

    @jax.jit
    def generate(key, params, basis):  # arguments, not constants: 4.4 GB of basis would be folded into the program
        coefficients = flow.sample_ensemble(
            lambda x, t: field.apply(params, x, t, train=False),
            key,
            num_samples,
            components,
            source=flow.Source("normal", 0.01),
            num_steps=100,
            method="rk4",
        )
        return coefficients @ basis

    generate(jax.random.key(3), params, basis).block_until_ready()  # compile
    start = time.perf_counter()
    generate(jax.random.key(4), params, basis).block_until_ready()
    total = time.perf_counter() - start
    return {"num_params": dim, "num_samples": num_samples, "seconds": total, "seconds_per_model": total / num_samples}


def compute() -> dict:
    start = time.perf_counter()
    left = lambda: FLAGS.budget - (time.perf_counter() - start)  # noqa: E731
    dtype = "float32" if FLAGS.compute_dtype == "auto" else FLAGS.compute_dtype
    rows = {"probe": run(f"probe_{dtype}", config_for(1, FLAGS.probe_iterations, **{"zoo.compute_dtype": dtype}))}
    epochs, iterations = sized(rows["probe"], left())
    if FLAGS.compute_dtype == "auto" and epochs < FLAGS.epochs:
        mixed = config_for(1, FLAGS.probe_iterations, **{"zoo.compute_dtype": "bfloat16"})
        rows["probe_bfloat16"] = run("probe_bfloat16", mixed)
        if sized(rows["probe_bfloat16"], left())[0] > epochs:
            dtype = "bfloat16"
        epochs, iterations = sized(rows["probe_bfloat16" if dtype == "bfloat16" else "probe"], left())
    settings = {"zoo.compute_dtype": dtype}
    rows["main"] = run(f"rebasin_{dtype}_e{epochs}_i{iterations}", config_for(epochs, iterations, **settings))
    main = rows["main"]["name"]
    per_row = sum(rows["main"]["timings"].values()) - rows["main"]["timings"]["zoo"]
    for name, change in (("without_rebasin", {"canonical.method": "none"}), ("dual_pca", {"pca.method": "dual"})):
        if left() > 1.5 * per_row:
            config = config_for(epochs, iterations, **settings, **change)
            rows[name] = run(f"{name}_{dtype}_e{epochs}_i{iterations}", config, main)
    if FLAGS.resnet18_samples:
        rows["resnet18_generation"] = resnet18_generation_seconds(FLAGS.resnet18_samples)
    return rows


def markdown(rows: dict, provenance: dict) -> str:
    lines = [*common.header_lines("The paper's ResNet-20 rows on one GPU (Tables 5, 7, 8)", provenance), ""]
    lines += ["| run | zoo | zoo precision | flow | original | generated, as generated | generated, BN recalibrated |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if name == "resnet18_generation":
            continue
        before = row["accuracy_before_bn_recalibration"]
        lines.append(
            f"| {name} ({row['canonical']}) | {FLAGS.num_models} x {row['zoo_epochs']} epochs | "
            f"{PRECISION[row['compute_dtype']]} | {row['flow_space']}, "
            f"{row['flow_iterations']} iterations | {common.mean_std(row['original_accuracy'])} | "
            f"{common.mean_std(before) if before else '-'} | {common.mean_std(row['generated_accuracy'])} |"
        )
    if "resnet18_generation" in rows:
        r18 = rows["resnet18_generation"]
        lines += [
            "",
            f"ResNet-18 ({r18['num_params']:,} params) generation: {r18['seconds_per_model']:.4f} s per model "
            f"({r18['num_samples']} in one call, {r18['seconds']:.2f} s).",
        ]
    lines += ["", "Paper (100 x 5 epochs, original CIFAR-10; not like for like where epochs or iterations are fewer):"]
    lines += [f"- {text}" for text in PAPER.values()]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    del argv
    common.run_and_write(FLAGS.name, compute, markdown)


if __name__ == "__main__":
    app.run(main)
