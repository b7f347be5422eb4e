"""Per-head against shared attention permutations (issue 23): one trained zoo aligned six ways.

    python experiments/per_head_alignment.py --model=bert --data_dir=DIR
    python experiments/per_head_alignment.py --model=vit --data_dir=DIR --num_models=4 --epochs=1 \
        --train_examples=4096 --test_examples=1000

The zoo is the zoo stage of a pipeline workdir (trained here by the pipeline's own
stage with the settings of table5_bert.py / table5_vit.py at the sizes below, or
read when the workdir already has it; an interrupted training resumes from its
checkpoints). Every model is then aligned to the reference (model 0) with no
alignment, Git Re-Basin and TransFusion, each with two specs of the same model:

- per head (the spec of `models.permutation_spec`, issue 23): each head's query/key
  and value/output dimensions are permuted on their own (`permutations.PerHead`);
- shared (the spec before issue 23): every `PerHead(name, heads)` axis made the plain
  group `name`, so one `qk` and one `vo` permutation acts on every head of a block.

The key, `max_iter` and head groups are the canonical stage's (`canonical.align_models`),
so the per-head TransFusion row is what the pipeline's canonical stage computes. L2 to
the reference is the report's: the mean over all N models (the reference's 0
included) of the Euclidean distance of the flattened weights; the mean over the N-1
other models is given beside it. Writes experiments/results/<--name or
per_head_alignment_<model>>.{md,json}.
"""

import pathlib
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import bert, vit_small  # noqa: E402
from dwf_jax import keys, permutations, pipeline, stages  # noqa: E402
from dwf_jax.canonical import align_models  # noqa: E402
from dwf_jax.data import load_configured  # noqa: E402
from dwf_jax.models import attention_head_groups, permutation_spec  # noqa: E402
from dwf_jax.session import opened  # noqa: E402
from dwf_jax.sharding import split_models  # noqa: E402
from dwf_jax.validation import validate_config  # noqa: E402
from dwf_jax.zoo_store import Flattener  # noqa: E402
from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "bert", ["bert", "vit"], "Which transformer zoo.")
flags.DEFINE_string("data_dir", None, "Folder holding vader_sentiment/ or cifar10_jpeg/ (else $DWF_DATA_DIR).")
flags.DEFINE_integer("num_models", 10, "Zoo size.")
flags.DEFINE_integer("epochs", 3, "Zoo epochs.")
flags.DEFINE_integer("hidden", 64, "BERT: encoder width.")
flags.DEFINE_integer("layers", 2, "BERT: encoder blocks.")
flags.DEFINE_integer("heads", 2, "BERT: attention heads.")
flags.DEFINE_integer("max_tokens", 64, "BERT: tokens per sentence.")
flags.DEFINE_float("learning_rate", 1e-3, "BERT: zoo learning rate (table5_bert.py's).")
flags.DEFINE_integer("depth", 6, "ViT: transformer blocks (ViT-Small-192: 6).")
flags.DEFINE_integer("batch_size", None, "ViT: zoo batch size (default: the config's 128).")
flags.DEFINE_integer(
    "train_examples", None, "Only K training examples, a fixed random subset; default: all, as the pipeline."
)
flags.DEFINE_integer("test_examples", None, "Only K test examples, a fixed random subset; default: all.")
flags.DEFINE_string("name", None, "Result file name (default per_head_alignment_<model>).")
flags.DEFINE_string("workdirs", "experiments/workdirs", "Where the zoo's workdir is kept.")

METHODS = ("none", "rebasin", "transfusion")
SPECS = ("shared", "per_head")


def make_config():
    """table5_bert.py's / table5_vit.py's run_config at this script's sizes (the pipeline's canonical settings)."""
    if FLAGS.model == "bert":
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
    else:
        config = vit_small.get_config()
        config.data.dir = FLAGS.data_dir
        config.zoo.num_models = FLAGS.num_models
        config.zoo.epochs = FLAGS.epochs
        config.model.depth = FLAGS.depth
        config.zoo.batch_size = FLAGS.batch_size or config.zoo.batch_size
    config.baselines.update(noise_stds=(), mixtures=0, average_of=0, gaussian=0)
    return config


def workdir_path() -> pathlib.Path:
    if FLAGS.model == "bert":
        size = f"h{FLAGS.hidden}_l{FLAGS.layers}_a{FLAGS.heads}"
    else:
        size = f"d{FLAGS.depth}_b{FLAGS.batch_size or 128}"
    if FLAGS.train_examples or FLAGS.test_examples:
        size += f"_random{FLAGS.train_examples or 'all'}_test{FLAGS.test_examples or 'all'}"
    return pathlib.Path(FLAGS.workdirs) / f"per_head_{FLAGS.model}_n{FLAGS.num_models}_e{FLAGS.epochs}_{size}"


def shared_spec(spec):
    """The spec before issue 23: each PerHead(name, heads) axis the plain group `name` (one permutation, all heads)."""
    return jax.tree.map(
        lambda axes: permutations.Axes(*axes.names), spec, is_leaf=lambda leaf: isinstance(leaf, permutations.Axes)
    )


def trained_zoo(config, workdir: pathlib.Path) -> tuple[list, dict, int]:
    """The zoo stage's models (trained now, resumed, or read) and its record."""
    validate_config(config)
    dataset = common.random_subset(load_configured(config.data), FLAGS.train_examples, FLAGS.test_examples)
    stages.steps_per_epoch(config, dataset)
    work = pipeline.workdir_for(config, dataset, workdir)
    with opened([work], [config]), split_models(config.num_devices):
        flattener = Flattener(stages.model_template(config, dataset))
        evaluate = stages.evaluator(config, dataset)
        start = time.perf_counter()
        zoo_stage = work.run("zoo", lambda: stages.train_zoo(config, dataset, flattener, evaluate, work, True))
        seconds = time.perf_counter() - start
        work.remove_zoo_chunks()
        store = stages.open_stage(config, work, "zoo", config.zoo.num_models, flattener)
        models = [flattener.unflatten(store.read(index)) for index in range(config.zoo.num_models)]
    accuracy = np.asarray(zoo_stage["test_accuracy"], np.float64)
    record = {
        "workdir": str(workdir),
        "data": dataset.source,
        "subset": {"train_examples": FLAGS.train_examples, "test_examples": FLAGS.test_examples},
        "train_examples": len(dataset.x_train),
        "test_examples": len(dataset.x_test),
        "metric": "Spearman" if dataset.regression else "accuracy (%)",
        "test_accuracy": accuracy.tolist(),
        "zoo_stage_seconds_this_invocation": round(seconds, 1),
        "zoo_stage_timing": work.timings.get("zoo"),
    }
    return models, record, flattener.flatten(models[0]).size


def flat(variables) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(variables)])


def align_all(config, models: list) -> list[dict]:
    reference_index = config.canonical.reference
    reference = flat(models[reference_index])
    before = np.array([np.linalg.norm(flat(model) - reference) for model in models])
    key = keys.stage_key(config.seed, "canonical")
    per_head = permutation_spec(config.model)
    rows = []
    for spec_name in SPECS:
        spec = per_head if spec_name == "per_head" else shared_spec(per_head)
        for method in METHODS:
            if method == "none" and spec_name == "per_head":
                continue  # the same as shared: nothing is permuted
            start = time.perf_counter()
            if method == "none":
                aligned = models
            else:
                heads = attention_head_groups(config.model) if method == "transfusion" else ()
                aligned = list(
                    align_models(
                        key, spec, models[reference_index], models, reference_index, config.canonical.max_iter, heads
                    )
                )
            seconds = time.perf_counter() - start
            after = np.array([np.linalg.norm(flat(model) - reference) for model in aligned])
            others = np.arange(len(models)) != reference_index
            rows.append(
                {
                    "method": method,
                    "spec": "per head and shared" if method == "none" else spec_name,
                    "l2_before_mean": float(before.mean()),
                    "l2_after_mean": float(after.mean()),
                    "l2_before_mean_others": float(before[others].mean()),
                    "l2_after_mean_others": float(after[others].mean()),
                    "l2_after_per_model": after.tolist(),
                    "seconds": round(seconds, 1),
                }
            )
            print(f"{spec_name} {method}: {before.mean():.2f} -> {after.mean():.2f} in {seconds:.1f} s", flush=True)
    return rows


def compute() -> dict:
    config = make_config()
    models, zoo, num_params = trained_zoo(config, workdir_path())
    return {
        "model": FLAGS.model,
        "num_params": int(num_params),
        "settings": {
            key: config[key.split(".")[0]][key.split(".")[1]]
            for key in (
                "zoo.num_models",
                "zoo.epochs",
                "zoo.batch_size",
                "zoo.learning_rate",
                "canonical.max_iter",
                "canonical.reference",
            )
        }
        | {"seed": config.seed, "model": config.model.to_dict(), "data.max_tokens": config.data.max_tokens},
        "zoo": zoo,
        "head_groups": attention_head_groups(config.model),
        "rows": align_all(config, models),
    }


def markdown(result: dict, provenance: dict) -> str:
    zoo, model = result["zoo"], result["settings"]["model"]
    if result["model"] == "bert":
        title = "Per-head against shared attention permutations: BERT (VADER rated sentences, reduced encoder)"
        size = (
            f"{model['hidden']} wide, {model['layers']} blocks, {model['heads']} heads, "
            f"{result['settings']['data.max_tokens']} tokens"
        )
    else:
        title = "Per-head against shared attention permutations: ViT-Small-192 (CIFAR-10, CPU-reduced zoo)"
        size = f"depth {model['depth']}"
    accuracy = np.asarray(zoo["test_accuracy"])
    lines = [
        *common.header_lines(title, provenance),
        f"Data: {zoo['data']} ({zoo['train_examples']} train / {zoo['test_examples']} test)  ",
        f"Zoo: {result['settings']['zoo.num_models']} models ({size}, {result['num_params']:,} parameters) x "
        f"{result['settings']['zoo.epochs']} epochs, batch {result['settings']['zoo.batch_size']}; test "
        f"{zoo['metric']} {accuracy.mean():.4g} ± {accuracy.std():.4g}; workdir `{zoo['workdir']}`  ",
        f"Alignment: reference model {result['settings']['canonical.reference']}, max_iter "
        f"{result['settings']['canonical.max_iter']}, the canonical stage's key; TransFusion head groups "
        f"{', '.join(result['head_groups'])}",
        "",
        "| alignment | spec | L2 to reference before -> after (mean of N) | same, mean of the N-1 others "
        "| alignment time, whole zoo (s) |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['method']} | {row['spec']} | {row['l2_before_mean']:.2f} -> {row['l2_after_mean']:.2f} "
            f"| {row['l2_before_mean_others']:.2f} -> {row['l2_after_mean_others']:.2f} | {row['seconds']:.1f} |"
        )
    lines += [
        "",
        "shared: one `qk` and one `vo` permutation for every head of a block (the spec before issue 23); "
        "per head: `permutations.PerHead` (each head its own). Times include JAX compilation.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    del argv
    name = FLAGS.name or f"per_head_alignment_{FLAGS.model}"
    common.run_and_write(name, compute, markdown)


if __name__ == "__main__":
    app.run(main)
