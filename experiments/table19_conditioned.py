"""Table 19 (Appendix K.1): one flow for MNIST and Fashion-MNIST MLP zoos, conditioned on the dataset.

    python experiments/table19_conditioned.py --data_dir=../shared/datasets

Both zoos have the MNIST MLP's architecture [784, 32, 32, 10] and training
settings (Table 13's Fashion-MNIST MLP is wider, and one flow needs one
architecture); the Fashion-MNIST zoo uses seed 1, so the two zoos share no
initial weights. `dwf_jax.conditioned.run` trains one full-weight flow on the
200 canonical networks, each with its dataset's index embedded beside the
time, and samples 100 networks per dataset. The MNIST zoo and its canonical
stage are copied from table5_rebasin.py's MNIST runs when they exist (same
settings). Writes experiments/results/table19_conditioned_h<hidden>.{md,json}.
"""

import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import mnist_mlp  # noqa: E402
from dwf_jax import conditioned, pipeline  # noqa: E402
from dwf_jax.data import load_configured  # noqa: E402
from dwf_jax.session import copy_stages  # noqa: E402
from dwf_jax.workdir import Workdir  # noqa: E402
from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding mnist/ and fashion_mnist/ IDX files (else $DWF_DATA_DIR).")
flags.DEFINE_integer("hidden", 128, "Flow hidden width (full weights; h=512 takes ~44 min per 30k steps here).")
flags.DEFINE_integer("flow_iterations", 30_000, "Flow iterations (the paper's 30k).")
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where the stages are kept.")

# Table 19 of the paper, for comparison only: (mean, std) of original and generated accuracy.
PAPER = {"mnist": ((96.74, 0.25), (96.61, 0.22)), "fashion_mnist": ((86.80, 0.31), (86.46, 0.28))}
MNIST_ZOO = "table5_mnist_h64_none_with_rebasin"  # a finished MNIST zoo of these settings, if table5 ran


def dataset_configs() -> list:
    configs = []
    for seed, name in enumerate(("mnist", "fashion_mnist")):
        config = mnist_mlp.get_config()
        config.seed = seed
        config.data.update(name=name, dir=FLAGS.data_dir)
        config.flow.update(hidden=FLAGS.hidden, iterations=FLAGS.flow_iterations)
        configs.append(config)
    return configs


def run_rows() -> dict:
    configs = dataset_configs()
    workdir = pathlib.Path(FLAGS.workdirs) / f"table19_conditioned_h{FLAGS.hidden}"
    finished_zoo = pathlib.Path(FLAGS.workdirs) / MNIST_ZOO
    if (finished_zoo / "canonical").exists() and not (workdir / "mnist" / "canonical").exists():
        mnist = configs[0]
        dataset = load_configured(mnist.data)
        target = pipeline.workdir_for(mnist, dataset, workdir / "mnist")
        copy_stages(Workdir(finished_zoo), target, ("zoo", "canonical"))
    start = time.perf_counter()
    result = conditioned.run(configs, workdir, progress=True)
    result["workdir"] = str(workdir)
    result["wall_seconds_this_invocation"] = round(time.perf_counter() - start, 1)
    return result


def markdown(result: dict, provenance: dict) -> str:
    flow = result["flow"]
    lines = [
        *common.header_lines("Table 19: one flow conditioned on the dataset (MNIST and Fashion-MNIST)", provenance),
        "",
        f"Two 100-model zoos of the MLP {result['model']['features']} (MNIST settings: 5 epochs, batch 64, Adam), "
        f"one flow of width {flow['hidden']} ({flow['num_params']:,} parameters) on their 200 canonical networks in "
        f"full weight space, {flow['iterations']} iterations, 100 samples per dataset. Test accuracy in %, "
        "mean ± std (min). 'On the other dataset': the same samples scored on the other dataset's test split, "
        "which shows the condition picks the task.",
        "",
        "| dataset | original | generated | on the other dataset | paper original | paper generated "
        "| gap original | gap generated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["per_dataset"]:
        (paper_original, paper_generated), name = PAPER[row["dataset"]], row["dataset"]
        (other,) = row["generated_on_other_datasets"].values()
        lines.append(
            f"| {name} | {common.mean_std(row['original'])} | {common.mean_std(row['generated'])} "
            f"({row['generated']['min']:.2f}) | {common.mean_std(other)} "
            f"| {paper_original[0]:.2f} ± {paper_original[1]:.2f} "
            f"| {paper_generated[0]:.2f} ± {paper_generated[1]:.2f} "
            f"| {row['original']['mean'] - paper_original[0]:+.2f} "
            f"| {row['generated']['mean'] - paper_generated[0]:+.2f} |"
        )
    timings = ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in result["timings"].items())
    lines += [
        "",
        f"Stage times (s): {timings}; final flow loss (mean of the last 100 steps) {flow['final_loss']:.3g}. "
        "The paper's architecture and flow width for Table 19 are not stated in ../shared/paper.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    common.run_and_write(f"table19_conditioned_h{FLAGS.hidden}", run_rows, markdown)


if __name__ == "__main__":
    app.run(main)
