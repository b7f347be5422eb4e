"""Hugging Face BERT checkpoints as the starting point of a BERT zoo (the paper's zoo: BERT-Base fine-tuned).

Reads `bert-base-uncased`'s safetensors, or a folder written by transformers'
`save_pretrained` (BertModel or any Bert*For* head; weights as model.safetensors
or, with torch, pytorch_model.bin), into our Flax BERT's backbone. The regression
head stays each zoo model's own initialization.
"""

import os
import pathlib
from typing import Any

import ml_collections
import numpy as np

from dwf_jax import torch_layout, weight_files

PyTree = Any
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
# Names of the original BERT checkpoints' LayerNorm parameters, which transformers renames on load too.
OLD_NAMES = {".gamma": ".weight", ".beta": ".bias"}


def checkpoint_file(path: str | os.PathLike) -> pathlib.Path:
    """The weight file of a checkpoint given as a file or a `save_pretrained` folder."""
    path = pathlib.Path(path)
    if path.is_dir():
        for name in WEIGHT_NAMES:
            if (path / name).is_file():
                return path / name
        raise weight_files.WeightFileError(
            f"model.pretrained={path} holds no {' or '.join(WEIGHT_NAMES)} (a folder from save_pretrained)"
        )
    if not path.is_file():
        raise weight_files.WeightFileError(f"model.pretrained={path} does not exist")
    return path


def _renamed(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    renamed = {}
    for key, value in state_dict.items():
        for old, new in OLD_NAMES.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        renamed[key] = value
    return renamed


def bert_backbone(path: str | os.PathLike, model_config: ml_collections.ConfigDict, template: PyTree) -> PyTree:
    """The pretrained `params` of every BERT module but the regressor, shaped like `template`'s.

    Position embeddings beyond `model.max_length` are dropped (BERT-Base has 512); every other shape must match
    the config (vocabulary, widths, layers), else one LayoutMismatch names the first key that differs.
    """
    file = checkpoint_file(path)
    state_dict = _renamed(weight_files.read_state_dict(file))
    prefix = (
        torch_layout.BERT_PREFIX if f"{torch_layout.BERT_PREFIX}embeddings.word_embeddings.weight" in state_dict else ""
    )
    positions = f"{prefix}embeddings.position_embeddings.weight"
    if positions in state_dict:
        state_dict[positions] = state_dict[positions][: model_config.max_length]
    entries = torch_layout.bert_backbone_table(model_config, prefix)
    backbone = {"params": {key: value for key, value in template["params"].items() if key != "regressor"}}
    try:
        return torch_layout.variables_from(entries, state_dict, backbone, "a BERT of this config")["params"]
    except torch_layout.LayoutMismatch as error:
        raise torch_layout.LayoutMismatch(f"model.pretrained={file}: {error}") from None
