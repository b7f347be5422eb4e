"""Build a model and its permutation spec from `config.model`."""

from typing import Any

import flax.linen as nn
import ml_collections

from dwf_jax import permutations
from dwf_jax.models.cnn import SmallCNN
from dwf_jax.models.mlp import MLP
from dwf_jax.models.resnet import ResNet, resnet18, resnet20
from dwf_jax.models.specs import resnet_permutation_spec, smallcnn_permutation_spec

MODEL_NAMES = ("mlp", "smallcnn", "resnet20", "resnet18")


def build_model(model_config: ml_collections.ConfigDict) -> nn.Module:
    """The model named by `model_config.name`; only the MLP reads further fields."""
    if model_config.name == "mlp":
        return MLP(features=tuple(model_config.features), init_scheme=model_config.init_scheme)
    if model_config.name == "smallcnn":
        return SmallCNN()
    if model_config.name == "resnet20":
        return resnet20()
    if model_config.name == "resnet18":
        return resnet18()
    raise ValueError(f"unknown model {model_config.name!r}; choose one of {list(MODEL_NAMES)}")


def permutation_spec(model_config: ml_collections.ConfigDict) -> Any:
    """The spec whose groups are the model's hidden units (see dwf_jax.permutations)."""
    if model_config.name == "mlp":
        return permutations.builders.mlp_permutation_spec(len(model_config.features))
    model = build_model(model_config)
    if isinstance(model, SmallCNN):
        return smallcnn_permutation_spec(len(model.widths))
    if isinstance(model, ResNet):
        return resnet_permutation_spec(len(model.stage_widths), model.blocks_per_stage)
    raise ValueError(f"no permutation spec for model {model_config.name!r}")
