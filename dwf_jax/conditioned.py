"""One flow for zoos of one architecture trained on several datasets, conditioned on the dataset (Appendix K.1).

Each dataset's zoo is trained and canonicalized by the pipeline in its own
workdir (`workdir/<dataset>`), so it is shared with, and checked like, a plain
run. The flow then sees every canonical zoo at once, each row with its
dataset's index c, which it embeds beside the time (Table 19). Samples drawn
with condition c are networks for dataset c: they are evaluated on the test
split of every dataset, and the diagonal of that matrix is the result.
"""

import pathlib
from collections.abc import Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dwf_jax import checkpoints, processes, stages
from dwf_jax.config import config_as_dict
from dwf_jax.data import Dataset, load_configured
from dwf_jax.evaluate import summary
from dwf_jax.flow_stage import flow_source, sample_stage, train_flow_stage
from dwf_jax.pipeline import canonical_zoo, workdir_for
from dwf_jax.session import link_error, opened
from dwf_jax.settings import stage_settings
from dwf_jax.sharding import split_models
from dwf_jax.validation import validate_config
from dwf_jax.workdir import Workdir
from dwf_jax.zoo_store import Flattener, check_finite

STAGES = ("conditioned_flow", "conditioned_samples", "conditioned_eval")
# Keys every dataset's config must share: one architecture, one flow. Zoos may differ in seed; the flow and its
# samples draw their random streams from the first config's seed.
SHARED_KEYS = ("model", "pca", "flow", "sample")


def check_compatible(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Refuse configs one conditioned flow cannot serve, naming the first key that differs."""
    if len(configs) < 2:
        raise ValueError(f"a conditioned flow needs zoos of at least 2 datasets, got {len(configs)}")
    names = [config.data.name for config in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"each dataset may appear once, got {names}")
    for config in configs:
        validate_config(config)
        if config.pca.method != "none":
            raise ValueError(
                f"a conditioned flow works on full weights: pca.method must be 'none' ({config.data.name})"
            )
        if config.zoo.held_out:
            raise ValueError(
                f"a conditioned flow trains on every model of each zoo: zoo.held_out must be 0 ({config.data.name})"
            )
    first = config_as_dict(configs[0])
    for config in configs[1:]:
        other = config_as_dict(config)
        for key in SHARED_KEYS:
            if other[key] != first[key]:
                raise ValueError(
                    f"{key} differs between {names[0]} and {config.data.name}: one conditioned flow needs one "
                    f"architecture and one flow setting ({first[key]!r} vs {other[key]!r})"
                )


def conditioned_settings(configs: Sequence[ml_collections.ConfigDict], datasets: Sequence[Dataset]) -> dict:
    """Every conditioned stage depends on every dataset's canonical zoo and on the shared flow settings."""
    merged = {}
    for index, (config, dataset) in enumerate(zip(configs, datasets, strict=True)):
        samples = stage_settings(config, dataset.fingerprint())["samples"]
        merged.update({f"condition_{index}.{key}": value for key, value in samples.items()})
    return dict.fromkeys(STAGES, merged)


def evaluate_conditions(
    configs: Sequence[ml_collections.ConfigDict],
    datasets: Sequence[Dataset],
    samples: np.ndarray,
    flattener: Flattener,
) -> np.ndarray:
    """(C, C, M) test accuracies: [c, d, m] is sample m of condition c on dataset d's test split."""
    evaluators = [stages.evaluator(config, dataset) for config, dataset in zip(configs, datasets, strict=True)]
    return np.stack(
        [np.stack([evaluate(flattener.unflatten_rows(ensemble)) for evaluate in evaluators]) for ensemble in samples]
    )


def run(configs: Sequence[ml_collections.ConfigDict], workdir: pathlib.Path, progress: bool = True) -> dict:
    """Run (or resume) the zoos, the conditioned flow, its samples and their evaluation; returns the report."""
    check_compatible(configs)
    config = configs[0]  # the shared flow and sample settings
    datasets = [load_configured(c.data) for c in configs]
    for c, dataset in zip(configs, datasets, strict=True):
        stages.steps_per_epoch(c, dataset)
    zoo_works = [workdir_for(c, d, workdir / c.data.name) for c, d in zip(configs, datasets, strict=True)]
    work = Workdir(workdir, conditioned_settings(configs, datasets))
    for zoo_work in zoo_works:
        if zoo_work.path.is_symlink():
            raise link_error(zoo_work.path)
    progress = progress and processes.is_writer()
    with opened([work, *zoo_works], [None, *configs]), split_models(config.num_devices):
        templates = [stages.model_template(c, dataset) for c, dataset in zip(configs, datasets, strict=True)]
        zoos = []
        for c, dataset, zoo_work, template in zip(configs, datasets, zoo_works, templates, strict=True):
            evaluate = stages.evaluator(c, dataset)
            zoo_stage, _, _, canonical = canonical_zoo(c, dataset, zoo_work, Flattener(template), evaluate, progress)
            zoos.append((zoo_stage["test_accuracy"], canonical.as_array()))
        weights = np.concatenate([rows for _, rows in zoos])
        conditions = np.concatenate([np.full(len(rows), index) for index, (_, rows) in enumerate(zoos)])
        source, num_conditions = flow_source(config, templates[0]), len(configs)
        saves = work.training_checkpoints("conditioned_flow", work.flow_checkpoints)
        flow = work.run(
            "conditioned_flow",
            lambda: train_flow_stage(
                config,
                jnp.asarray(weights),
                source,
                saves,
                progress,
                conditions,
                num_conditions=num_conditions,
                curves=work.flow_curves,
            ),
        )

        def sample_all() -> dict:
            ensembles = [
                sample_stage(config, flow["params"], weights.shape[1], source, progress, index, num_conditions)
                for index in range(num_conditions)
            ]
            ensembles = np.stack(ensembles)
            check_finite(ensembles, "generated weights", "The flow diverged: lower flow.learning_rate.")
            return {"samples": ensembles}

        samples = work.run("conditioned_samples", sample_all)["samples"]
        accuracy = work.run(
            "conditioned_eval",
            lambda: {"accuracy": evaluate_conditions(configs, datasets, samples, Flattener(templates[0]))},
        )
        result = {
            "datasets": [dataset.name for dataset in datasets],
            "model": config_as_dict(config)["model"],
            "flow": {
                "hidden": config.flow.hidden,
                "iterations": config.flow.iterations,
                "num_params": int(flow["num_params"]),
                "final_loss": float(np.mean(flow["losses"][-100:])),
            },
            "per_dataset": [
                {
                    "dataset": dataset.name,
                    "original": summary(original),
                    "generated": summary(accuracy["accuracy"][index, index]),
                    "generated_on_other_datasets": {
                        other.name: summary(accuracy["accuracy"][index, column])
                        for column, other in enumerate(datasets)
                        if column != index
                    },
                }
                for index, (dataset, (original, _)) in enumerate(zip(datasets, zoos, strict=True))
            ],
            "accuracy_matrix": accuracy["accuracy"].tolist(),  # [c][d][m]: sample m of condition c on dataset d
            "timings": work.timings,
        }
        processes.writer_does(lambda: checkpoints.save_json(work.report, result))
    for row in result["per_dataset"]:
        logging.info(
            "%s: original %.2f%%, generated %.2f%%", row["dataset"], row["original"]["mean"], row["generated"]["mean"]
        )
    return result
