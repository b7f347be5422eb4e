"""Build a model and its permutation spec from `config.model`."""

from typing import Any

import flax.linen as nn
import ml_collections

from dwf_jax import permutations
from dwf_jax.models.mlp import MLP

MODEL_NAMES = ("mlp",)


def build_model(model_config: ml_collections.ConfigDict) -> nn.Module:
    if model_config.name == "mlp":
        return MLP(features=tuple(model_config.features), init_scheme=model_config.init_scheme)
    raise ValueError(f"unknown model {model_config.name!r}; choose one of {list(MODEL_NAMES)}")


def permutation_spec(model_config: ml_collections.ConfigDict) -> Any:
    """The spec whose groups are the model's hidden units (see dwf_jax.permutations)."""
    if model_config.name == "mlp":
        return permutations.builders.mlp_permutation_spec(len(model_config.features))
    raise ValueError(f"no permutation spec for model {model_config.name!r}")
