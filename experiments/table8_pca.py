"""Table 8: does the flow need the full weights, or do PCA coefficients do, and how many?

    python experiments/table8_pca.py --data_dir=../shared/datasets

For each MLP zoo of Table 5 (reused from experiments/workdirs/table5_<name>
when it exists: zoo and canonical zoo depend only on the data, model, zoo and
canonicalization settings, which are the same), trains one flow per weight
space (full weights, or dual / incremental PCA with k components) at the
paper's settings and compares the generated ensembles. The Table 5 run of each
zoo (MNIST: full weights) is listed first.
Writes experiments/results/table8_pca.{md,json}.
"""

import json
import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import fashion_mnist_mlp, mnist_mlp  # noqa: E402
from dwf_jax import pipeline  # noqa: E402
from dwf_jax.data import load_configured  # noqa: E402
from dwf_jax.session import copy_stages  # noqa: E402
from dwf_jax.workdir import Workdir  # noqa: E402
from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding mnist/ and fashion_mnist/ IDX files (else $DWF_DATA_DIR).")
flags.DEFINE_list("datasets", ["mnist", "fashion_mnist"], "Which zoos.")
flags.DEFINE_list(
    "spaces", ["dual:99", "incremental:99", "dual:20", "dual:5"], "Weight spaces: none, or method:components."
)
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where the stages are kept.")

CONFIGS = {"mnist": mnist_mlp, "fashion_mnist": fashion_mnist_mlp}
SHARED_STAGES = ("zoo", "canonical")


def run_space(name: str, space: str) -> dict:
    config = CONFIGS[name].get_config()
    config.data.dir = FLAGS.data_dir
    method, _, components = space.partition(":")
    if method != "none":
        config.pca.update(method=method, components=int(components))
    workdir = pathlib.Path(FLAGS.workdirs) / f"table8_{name}_{method}{components}"
    dataset = load_configured(config.data)
    target = pipeline.workdir_for(config, dataset, workdir)
    copy_stages(Workdir(pathlib.Path(FLAGS.workdirs) / f"table5_{name}"), target, SHARED_STAGES)
    start = time.perf_counter()
    result = pipeline.run(config, workdir, progress=True)
    result["wall_seconds_this_invocation"] = round(time.perf_counter() - start, 1)
    return result


def markdown(rows: list[dict], provenance: dict) -> str:
    lines = [
        "# Table 8: full weights vs PCA (with Git Re-Basin)",
        "",
        *common.provenance_lines(provenance),
        f"Wall time of this invocation: {provenance['wall_seconds']} s",
        "",
        "| dataset | flow space | flow params | flow time (s) | original (%) | generated (%) | generated min (%) "
        "| nearest-original distance (generated / originals) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in rows:
        original, generated = result["original"]["accuracy"], result["generated"]["accuracy"]
        novelty = result["generated"]["novelty"]
        lines.append(
            f"| {result['dataset']['name']} | {result['flow']['weight_space']} | {result['flow']['num_params']:,} "
            f"| {result['timings'].get('flow', float('nan')):.0f} "
            f"| {common.mean_std(original)} | {common.mean_std(generated)} | {generated['min']:.2f} "
            f"| {novelty['generated_to_nearest_original']['mean']:.2f} "
            f"/ {novelty['original_to_nearest_other_original']['mean']:.2f} |"
        )
    lines += ["", "100 models per zoo, 30k flow iterations (h=512), RK4 x 100 steps, 100 generated models.", ""]
    return "\n".join(lines)


def table_rows() -> list[dict]:
    rows = []
    for name in FLAGS.datasets:
        table5_report = Workdir(pathlib.Path(FLAGS.workdirs) / f"table5_{name}").report
        if table5_report.exists():
            rows.append(json.loads(table5_report.read_text()))  # the Table 5 run of the same zoo, in its own space
        rows += [run_space(name, space) for space in FLAGS.spaces]
    return rows


def main(argv: list[str]) -> None:
    del argv
    common.run_and_write("table8_pca", table_rows, markdown)


if __name__ == "__main__":
    app.run(main)
