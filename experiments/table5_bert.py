"""Table 5, BERT row: a reduced BERT regression zoo, with TransFusion and without alignment.

    python experiments/table5_bert.py --data_dir=DIR --num_models=10 --epochs=3

DIR holds vader_sentiment/vaderSentiment-3.3.2.tar.gz (`pip download
vaderSentiment==3.3.2 --no-deps --no-binary :all: -d DIR/vader_sentiment`): the
human-rated sentences stand in for the paper's Yelp reviews offline. The
encoder is reduced from the command line (BERT-Base is 768/12/12); the zoo
trains from scratch, as there is no pretrained checkpoint offline. Each run is
`python -m dwf_jax.main --config=configs/bert.py` with the settings the result
file prints. Writes experiments/results/<--name>.{md,json}.
"""

import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import bert  # noqa: E402
from experiments import alignment_runs, common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data_dir", None, "Folder holding vader_sentiment/vaderSentiment-3.3.2.tar.gz (else $DWF_DATA_DIR)."
)
flags.DEFINE_integer("num_models", 10, "Zoo size (the paper: 100).")
flags.DEFINE_integer("epochs", 3, "Zoo epochs (the paper: 3).")
flags.DEFINE_integer("hidden", 64, "Encoder width (BERT-Base: 768).")
flags.DEFINE_integer("layers", 2, "Encoder blocks (BERT-Base: 12).")
flags.DEFINE_integer("heads", 2, "Attention heads (BERT-Base: 12).")
flags.DEFINE_integer("max_tokens", 64, "Tokens per sentence (the paper: 128; 97% of these sentences fit in 64).")
flags.DEFINE_float(
    "learning_rate", 1e-3, "Zoo learning rate (the paper fine-tunes at 1e-4; these zoos start from scratch)."
)
flags.DEFINE_integer("flow_iterations", 30_000, "Flow iterations.")
flags.DEFINE_integer("num_samples", 100, "Generated models.")
flags.DEFINE_list("methods", ["transfusion", "none"], "Alignment methods, one run each, in this order.")
flags.DEFINE_string("name", "table5_bert", "Result file name under experiments/results/.")
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where each run's stages are kept.")

PAPER = "Yelp, BERT-Base (fine-tuned), h=1024: 0.7902 ± 0.061 original, 0.7909 ± 0.005 generated with TransFusion"
KEYS = (
    "data.max_tokens",
    "model.hidden",
    "model.layers",
    "model.heads",
    "model.intermediate",
    "model.max_length",
    "zoo.num_models",
    "zoo.epochs",
    "zoo.learning_rate",
    "flow.iterations",
    "sample.num_samples",
)


def run_config(method: str):
    config = bert.get_config()
    config.data.update(dir=FLAGS.data_dir, max_tokens=FLAGS.max_tokens)
    config.model.update(
        hidden=FLAGS.hidden,
        layers=FLAGS.layers,
        heads=FLAGS.heads,
        intermediate=4 * FLAGS.hidden,
        max_length=FLAGS.max_tokens,
    )
    config.zoo.update(num_models=FLAGS.num_models, epochs=FLAGS.epochs, learning_rate=FLAGS.learning_rate)
    config.flow.iterations = FLAGS.flow_iterations
    config.sample.num_samples = FLAGS.num_samples
    return config


def compute_rows() -> list[dict]:
    stem = pathlib.Path(FLAGS.workdirs) / (
        f"{FLAGS.name}_n{FLAGS.num_models}_e{FLAGS.epochs}_h{FLAGS.hidden}_l{FLAGS.layers}"
    )
    return alignment_runs.run_methods(run_config, FLAGS.methods, stem, "configs/bert.py", KEYS)


def markdown(rows: list[dict], provenance: dict) -> str:
    setting = (
        f"Zoo: {FLAGS.num_models} encoders ({FLAGS.hidden} wide, {FLAGS.layers} blocks, {FLAGS.heads} heads, "
        f"{FLAGS.max_tokens} tokens) x {FLAGS.epochs} epochs from scratch; {FLAGS.num_samples} samples"
    )
    title = "Table 5, BERT row (VADER rated sentences offline, reduced encoder)"
    return alignment_runs.markdown(title, rows, provenance, setting, PAPER, digits=4)


def main(argv: list[str]) -> None:
    del argv
    common.run_and_write(FLAGS.name, compute_rows, markdown)


if __name__ == "__main__":
    app.run(main)
