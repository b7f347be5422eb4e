"""Table 5, ViT row: a reduced ViT-Small-192 zoo on CIFAR-10, with TransFusion, Git Re-Basin and no alignment.

    python experiments/table5_vit.py --data_dir=../shared/datasets --num_models=10 --epochs=10

One zoo (`configs/vit_small.py` with the zoo flags below), trained once and its
stage copied into the other runs; then canonicalization, dual PCA, flow,
samples and evaluation once per alignment method. Each run is the same as
`python -m dwf_jax.main --config=configs/vit_small.py --config.zoo.num_models=K
--config.zoo.epochs=E --config.canonical.method=M` (the result file prints the
command). The canonical stage's time is the alignment time of the whole zoo.
Writes experiments/results/<--name>.{md,json}.
"""

import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import vit_small  # noqa: E402
from experiments import alignment_runs, common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder holding cifar10_jpeg/cifar10_jpeg.tar.gz (else $DWF_DATA_DIR).")
flags.DEFINE_integer("num_models", 10, "Zoo size (the paper: 100).")
flags.DEFINE_integer("epochs", 10, "Zoo epochs (the paper: 300).")
flags.DEFINE_integer("batch_size", None, "Zoo batch size (default: the config's 128).")
flags.DEFINE_integer("depth", 6, "Transformer blocks (ViT-Small-192: 6).")
flags.DEFINE_integer("flow_iterations", 30_000, "Flow iterations.")
flags.DEFINE_integer("num_samples", 25, "Generated models (the paper: 25).")
flags.DEFINE_list("methods", ["transfusion", "none", "rebasin"], "Alignment methods, one run each, in this order.")
flags.DEFINE_string("name", "table5_vit", "Result file name under experiments/results/.")
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where each run's stages are kept.")

PAPER = "83.30 ± 0.29 original, 82.99 ± 0.11 generated (100 models x 300 epochs, flow h=384, TransFusion)"
KEYS = ("zoo.num_models", "zoo.epochs", "zoo.batch_size", "model.depth", "flow.iterations", "sample.num_samples")


def run_config(method: str):
    config = vit_small.get_config()
    config.data.dir = FLAGS.data_dir
    config.zoo.num_models = FLAGS.num_models
    config.zoo.epochs = FLAGS.epochs
    config.model.depth = FLAGS.depth
    config.zoo.batch_size = FLAGS.batch_size or config.zoo.batch_size
    config.flow.iterations = FLAGS.flow_iterations
    config.sample.num_samples = FLAGS.num_samples
    return config


def compute_rows() -> list[dict]:
    stem = pathlib.Path(FLAGS.workdirs) / f"{FLAGS.name}_n{FLAGS.num_models}_e{FLAGS.epochs}_d{FLAGS.depth}"
    return alignment_runs.run_methods(run_config, FLAGS.methods, stem, "configs/vit_small.py", KEYS)


def markdown(rows: list[dict], provenance: dict) -> str:
    setting = (
        f"Zoo: {FLAGS.num_models} models x {FLAGS.epochs} epochs, depth {FLAGS.depth}; {FLAGS.num_samples} samples"
    )
    title = "Table 5, ViT-Small-192 row (CIFAR-10, reduced zoo)"
    return alignment_runs.markdown(title, rows, provenance, setting, PAPER, digits=2)


def main(argv: list[str]) -> None:
    del argv
    common.run_and_write(FLAGS.name, compute_rows, markdown)


if __name__ == "__main__":
    app.run(main)
