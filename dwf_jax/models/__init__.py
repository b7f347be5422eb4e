"""Flax linen models whose variables are plain pytrees (vmappable over a zoo)."""

from dwf_jax.config import MODEL_FIELDS, MODEL_NAMES, model_config
from dwf_jax.models.cnn import SmallCNN
from dwf_jax.models.mlp import INIT_SCHEMES, MIXED, MLP, scheme_of_model
from dwf_jax.models.registry import (
    attention_head_groups,
    build_model,
    model_initializer,
    output_width,
    permutation_spec,
)
from dwf_jax.models.resnet import BasicBlock, ResNet, resnet18, resnet20
from dwf_jax.models.specs import resnet_permutation_spec, smallcnn_permutation_spec
from dwf_jax.models.vit import ViT

__all__ = [
    "MLP",
    "ViT",
    "INIT_SCHEMES",
    "MIXED",
    "scheme_of_model",
    "model_initializer",
    "BasicBlock",
    "ResNet",
    "SmallCNN",
    "MODEL_FIELDS",
    "attention_head_groups",
    "build_model",
    "model_config",
    "output_width",
    "permutation_spec",
    "MODEL_NAMES",
    "resnet18",
    "resnet20",
    "resnet_permutation_spec",
    "smallcnn_permutation_spec",
]
