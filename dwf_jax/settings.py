"""The config keys each stage's result depends on.

A finished stage records its settings (these keys' values, and a fingerprint
of the data it saw) in its manifest. A later run may change any key that no
finished stage depends on, so a bad flow setting is fixed without retraining
the zoo; a changed key some finished stage depends on is refused by name.
"""

from typing import Any

import ml_collections

from dwf_jax.config import base_config, config_as_dict, flatten

Settings = dict[str, Any]
ZOO_KEYS = ("seed", "data", "model", "zoo")
CANONICAL_KEYS = (*ZOO_KEYS, "canonical")
_SAMPLE_KEYS = (*CANONICAL_KEYS, "pca", "flow", "sample")
# Prefixes of the keys each stage's result depends on, those of the stages it is computed from included.
STAGE_KEYS = {
    "zoo": ZOO_KEYS,
    "canonical": CANONICAL_KEYS,
    "pca": (*CANONICAL_KEYS, "pca"),
    "flow": (*CANONICAL_KEYS, "pca", "flow"),
    "samples": _SAMPLE_KEYS,
    "eval_generated": _SAMPLE_KEYS,
    "bn_stats": (*_SAMPLE_KEYS, "bn"),
    "eval_recalibrated": (*_SAMPLE_KEYS, "bn"),
    "diversity": (*_SAMPLE_KEYS, "bn"),
    "zoo_diversity": CANONICAL_KEYS,
    "baselines": (*CANONICAL_KEYS, "baselines", "bn"),
}
# What a stage stores, for the stages whose contents a dwf_jax version changed: a finished stage of an older
# layout is refused by name (the run says which stages to delete), never read wrongly. diversity and baselines
# 2: each model's class probabilities per test example (the per-example Jensen-Shannon divergence); 3: weight
# metrics over `params` only, and Zeng et al.'s average and Gaussian baselines.
STAGE_LAYOUTS = {"diversity": 3, "baselines": 3}
# The held-out split changes only what is fitted after alignment (the PCA, the flow) and all that follows from it: a
# zoo, its canonical form (every model aligned to a training reference, on its own), the zoo's own diversity and the
# baselines (of the whole zoo) stay valid for any split, so a zoo trained before is reused when only zoo.held_out
# changes.
HELD_OUT_KEY = "zoo.held_out"
SPLIT_FREE_STAGES = ("zoo", "canonical", "zoo_diversity", "baselines")
LAYOUT_KEY = "stage_layout"
# Keys that change where data comes from or how a stage runs, never its result.
RESULT_FREE_KEYS = (
    "data.dir",
    "data.source",
    "zoo.models_per_chunk",
    "zoo.checkpoint_every",
    "zoo.scan_steps",
    "zoo.on_disk",
    "zoo.source",
    "model.pretrained",
    "flow.steps_per_dispatch",
    "flow.checkpoint_every",
)
# Keys that change a result only when another key is on: flow.validate_every picks the steps early stopping
# compares; without it the flow never validates.
CONDITIONAL_KEYS = {"flow.validate_every": "flow.early_stopping"}
DATA_FINGERPRINT = "data.fingerprint"
# Files a zoo is read from (name -> checksum), in place of their paths: moved files give the same zoo. An imported
# zoo's files, and the checkpoint its models start from.
SOURCE_FILES = "zoo.source_files"
PRETRAINED_FILES = "model.pretrained_files"


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def stage_settings(
    config: ml_collections.ConfigDict, data_fingerprint: str, files: dict[str, dict[str, str]] | None = None
) -> dict[str, Settings]:
    """Per stage, the values of the keys its result depends on: the data's fingerprint in place of its path, and
    `files` ({SOURCE_FILES or PRETRAINED_FILES: {file name: checksum}}) in place of the paths they were read from."""
    flat = {key: value for key, value in flatten(config_as_dict(config)).items() if key not in RESULT_FREE_KEYS}
    flat[DATA_FINGERPRINT] = data_fingerprint
    flat.update(files or {})
    settings = {
        stage: {key: value for key, value in flat.items() if _under(key, prefixes)}
        for stage, prefixes in STAGE_KEYS.items()
    }
    for stage in SPLIT_FREE_STAGES:
        settings[stage].pop(HELD_OUT_KEY, None)
    for stage, layout in STAGE_LAYOUTS.items():
        settings[stage][LAYOUT_KEY] = layout
    return settings


def differences(recorded: Settings, now: Settings, ignore: tuple[str, ...] = ()) -> list[str]:
    """`key: recorded -> now` for each key that differs, less `ignore`.

    A key one side lacks counts as its base_config default: stages made before a
    key existed stay usable while the new key keeps its default.
    """
    defaults = flatten(config_as_dict(base_config()))
    # A conditional key whose switch is off now counts on neither side.
    ignore = (*ignore, *(key for key, switch in CONDITIONAL_KEYS.items() if not now.get(switch, defaults[switch])))
    keys = sorted(key for key in recorded.keys() | now.keys() if key not in ignore)
    return [
        f"{key}: {recorded.get(key)!r} -> {now.get(key)!r}"
        for key in keys
        if recorded.get(key, defaults.get(key)) != now.get(key, defaults.get(key))
    ]
