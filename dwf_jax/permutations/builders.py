"""Spec builders for common Flax layers, in the style of git-re-basin's helpers.

Each builder returns a one-entry dict `{name: {...}}`, so a model spec is
written by merging them: `{**dense("Dense_0", None, "h"), **dense("Dense_1", "h", None)}`.
A group name of None means that axis is not permuted (network input/output).
"""

from __future__ import annotations

from collections.abc import Callable

from .spec import Axes

Group = str | None
SubSpec = dict[str, dict[str, Axes]]


def dense(name: str, in_group: Group, out_group: Group, bias: bool = True) -> SubSpec:
    """Flax `nn.Dense`: kernel is (in, out), bias is (out,)."""
    layer = {"kernel": Axes(in_group, out_group)}
    if bias:
        layer["bias"] = Axes(out_group)
    return {name: layer}


def conv(name: str, in_group: Group, out_group: Group, bias: bool = True, spatial_dims: int = 2) -> SubSpec:
    """Flax `nn.Conv`: kernel is (*spatial, in, out) (HWIO for 2-D), bias is (out,).

    Spatial axes are never permuted.
    """
    layer = {"kernel": Axes(*([None] * spatial_dims), in_group, out_group)}
    if bias:
        layer["bias"] = Axes(out_group)
    return {name: layer}


def batch_norm(name: str, group: Group) -> SubSpec:
    """Flax `nn.BatchNorm` / `nn.LayerNorm` parameters (`params` collection)."""
    return {name: {"scale": Axes(group), "bias": Axes(group)}}


def batch_norm_stats(name: str, group: Group) -> SubSpec:
    """Flax `nn.BatchNorm` running statistics (`batch_stats` collection)."""
    return {name: {"mean": Axes(group), "var": Axes(group)}}


def mlp_permutation_spec(
    num_layers: int,
    layer_name: Callable[[int], str] = lambda i: f"Dense_{i}",
    collection: str | None = "params",
) -> dict:
    """Spec for a Flax linen MLP of `num_layers` Dense layers.

    The output units of hidden layer i form group `layer_name(i)`; the input of
    the first layer and the output of the last are fixed. With `collection`
    None the spec describes the bare params dict instead of the variables.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")

    def group(i: int) -> Group:
        return layer_name(i) if 0 <= i < num_layers - 1 else None

    layers: SubSpec = {}
    for i in range(num_layers):
        layers.update(dense(layer_name(i), group(i - 1), group(i)))
    return layers if collection is None else {collection: layers}


def multi_head_attention(name: str, residual: Group, heads: Group, qk: Group, vo: Group) -> SubSpec:
    """Flax `nn.MultiHeadDotProductAttention`: q/k/v kernels (dim, heads, head_dim), out (heads, head_dim, dim).

    Whole heads move together (`heads` on every projection), the query and key
    dimensions of a head together (`qk`: scores are their dot products) and the
    value dimensions with the output rows they feed (`vo`). One `qk` / `vo`
    permutation acts within every head of the block.
    """
    projection = {"kernel": Axes(residual, heads, qk), "bias": Axes(heads, qk)}
    value = {"kernel": Axes(residual, heads, vo), "bias": Axes(heads, vo)}
    out = {"kernel": Axes(heads, vo, residual), "bias": Axes(residual)}
    return {name: {"query": projection, "key": dict(projection), "value": value, "out": out}}


def vit_permutation_spec(depth: int, residual: str = "residual") -> dict:
    """Spec for a pre-LayerNorm ViT (`dwf_jax.models.ViT` names): one residual-stream group shared by every block.

    Everything added into or read from the stream carries `residual`: the patch
    embedding's output channels, class token, positional embedding, every
    LayerNorm (mean and variance do not depend on the order of features), each
    attention's input and output projections, each MLP's input and output. Per
    block `block_{i}`: groups `block_{i}/heads`, `/qk`, `/vo` and `/mlp`;
    `vit_head_groups(depth)` lists the head groups for `transfusion`.
    """
    params: dict = {
        **conv("patch_embedding", None, residual),
        "cls_token": Axes(None, None, residual),
        "pos_embedding": Axes(None, None, residual),
        **batch_norm("norm", residual),
        **dense("head", residual, None),
    }
    for i in range(depth):
        block = f"block_{i}"
        params[block] = {
            **batch_norm("norm1", residual),
            **multi_head_attention("attention", residual, f"{block}/heads", f"{block}/qk", f"{block}/vo"),
            **batch_norm("norm2", residual),
            **dense("mlp_in", residual, f"{block}/mlp"),
            **dense("mlp_out", f"{block}/mlp", residual),
        }
    return {"params": params}


def vit_head_groups(depth: int) -> list[str]:
    """The head groups of `vit_permutation_spec(depth)`, which TransFusion matches by their spectra."""
    return [f"block_{i}/heads" for i in range(depth)]


def embedding(name: str, group: Group) -> SubSpec:
    """Flax `nn.Embed`: the table is (num_embeddings, features); rows are never permuted."""
    return {name: {"embedding": Axes(None, group)}}


def bert_permutation_spec(layers: int, residual: str = "residual") -> dict:
    """Spec for a post-LayerNorm BERT encoder (`dwf_jax.models.Bert` names), one residual group for every layer.

    The embeddings' features, every LayerNorm, each attention's input and output
    projections and each MLP's input and output carry `residual`; per layer
    `layer_{i}`: `layer_{i}/heads`, `/qk`, `/vo`, `/mlp`. The pooler's output
    is a hidden group of its own, read by the regression head.
    """
    params: dict = {
        **embedding("word_embedding", residual),
        **embedding("position_embedding", residual),
        **batch_norm("embedding_norm", residual),
        **dense("pooler", residual, "pooler"),
        **dense("regressor", "pooler", None),
    }
    for i in range(layers):
        layer = f"layer_{i}"
        params[layer] = {
            **multi_head_attention("attention", residual, f"{layer}/heads", f"{layer}/qk", f"{layer}/vo"),
            **batch_norm("attention_norm", residual),
            **dense("mlp_in", residual, f"{layer}/mlp"),
            **dense("mlp_out", f"{layer}/mlp", residual),
            **batch_norm("mlp_norm", residual),
        }
    return {"params": params}


def bert_head_groups(layers: int) -> list[str]:
    """The head groups of `bert_permutation_spec(layers)`."""
    return [f"layer_{i}/heads" for i in range(layers)]
