"""Flax linen models whose variables are plain pytrees (vmappable over a zoo)."""

from dwf_jax.models.mlp import MLP, INIT_SCHEMES
from dwf_jax.models.registry import build_model, permutation_spec, MODEL_NAMES

__all__ = ["MLP", "INIT_SCHEMES", "build_model", "permutation_spec", "MODEL_NAMES"]
