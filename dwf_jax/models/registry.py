"""Build a model and its permutation spec from `config.model`, whose fields depend on the architecture."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dwf_jax import permutations, pretrained
from dwf_jax.config import INIT_FIELDS, MODEL_FIELDS, MODEL_NAMES
from dwf_jax.models.bert import Bert
from dwf_jax.models.cnn import SmallCNN
from dwf_jax.models.mlp import INIT_SCHEMES, MIXED, MLP, scheme_of_model
from dwf_jax.models.resnet import ResNet, resnet18, resnet20
from dwf_jax.models.specs import (
    bert_permutation_spec,
    head_groups,
    resnet_permutation_spec,
    smallcnn_permutation_spec,
    vit_permutation_spec,
)
from dwf_jax.models.vit import ViT

TRANSFORMERS = {"vit_small": ViT, "bert": Bert}  # built from exactly their MODEL_FIELDS


def build_model(model_config: ml_collections.ConfigDict) -> nn.Module:
    """The model named by `model_config.name`, built from its fields."""
    if model_config.name == "mlp":
        return MLP(features=tuple(model_config.features), init_scheme=scheme_of_model(model_config.init_scheme, 0))
    if model_config.name == "smallcnn":
        return SmallCNN()
    if model_config.name == "resnet20":
        return resnet20()
    if model_config.name == "resnet18":
        return resnet18()
    if model_config.name in TRANSFORMERS:
        fields = [key for key in MODEL_FIELDS[model_config.name] if key not in INIT_FIELDS]
        return TRANSFORMERS[model_config.name](**{key: model_config[key] for key in fields})
    raise ValueError(f"unknown model {model_config.name!r}; choose one of {list(MODEL_NAMES)}")


def model_initializer(model_config: ml_collections.ConfigDict) -> Callable[[jax.Array, jax.Array, jax.Array], Any]:
    """`init(key, model_index, sample) -> variables` of zoo model `model_index`.

    Every model of a zoo is drawn the same way, except in a mixed-init MLP zoo,
    where model i uses the (i mod 5)-th scheme of INIT_SCHEMES.
    """
    if model_config.name == "mlp" and model_config.init_scheme == MIXED:
        models = [MLP(features=tuple(model_config.features), init_scheme=scheme) for scheme in INIT_SCHEMES]
        branches = [
            lambda key, sample, m=m: m.init({"params": key, "dropout": key}, sample, train=False) for m in models
        ]
        return lambda key, index, sample: jax.lax.switch(index % len(models), branches, key, sample)
    model = build_model(model_config)
    if model_config.get("pretrained"):
        return _from_pretrained(model, model_config)
    return lambda key, index, sample: model.init({"params": key, "dropout": key}, sample, train=False)


def _from_pretrained(model: nn.Module, model_config: ml_collections.ConfigDict) -> Callable:
    """Every model starts from the checkpoint's backbone; only its regression head is its own draw."""
    tokens = jnp.ones((1, model_config.max_length), jnp.int32)
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, train=False))
    backbone = jax.tree.map(jnp.asarray, pretrained.bert_backbone(model_config.pretrained, model_config, template))

    def init(key: jax.Array, index: jax.Array, sample: jax.Array) -> Any:
        variables = model.init({"params": key, "dropout": key}, sample, train=False)
        return {**variables, "params": {**variables["params"], **backbone}}

    return init


def output_width(model_config: ml_collections.ConfigDict) -> int:
    """How many classes the model predicts (1: a regression score)."""
    if model_config.name == "mlp":
        return model_config.features[-1]
    if model_config.name == "bert":
        return 1
    return build_model(model_config).num_classes


def attention_head_groups(model_config: ml_collections.ConfigDict) -> list[str]:
    """The spec's groups of attention heads, which TransFusion matches by spectrum (none outside transformers)."""
    if model_config.name == "vit_small":
        return head_groups("block", model_config.depth)
    if model_config.name == "bert":
        return head_groups("layer", model_config.layers)
    return []


def permutation_spec(model_config: ml_collections.ConfigDict) -> Any:
    """The spec whose groups are the model's hidden units (see dwf_jax.permutations)."""
    if model_config.name == "mlp":
        return permutations.builders.mlp_permutation_spec(len(model_config.features))
    if model_config.name == "vit_small":
        return vit_permutation_spec(model_config.depth)
    if model_config.name == "bert":
        return bert_permutation_spec(model_config.layers)
    model = build_model(model_config)
    if isinstance(model, SmallCNN):
        return smallcnn_permutation_spec(len(model.widths))
    if isinstance(model, ResNet):
        return resnet_permutation_spec(len(model.stage_widths), model.blocks_per_stage)
    raise ValueError(f"no permutation spec for model {model_config.name!r}")
