"""Spec builders for common Flax layers, in the style of git-re-basin's helpers.

Each builder returns a one-entry dict `{name: {...}}`, so a model spec is
written by merging them: `{**dense("Dense_0", None, "h"), **dense("Dense_1", "h", None)}`.
A group name of None means that axis is not permuted (network input/output).
"""

from __future__ import annotations

from collections.abc import Callable

from .spec import Axes, PerHead

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
    value dimensions with the output rows they feed (`vo`). `qk` and `vo` act per
    head (`PerHead`): every head may order its dimensions its own way.
    """
    qk, vo = PerHead(qk, heads), PerHead(vo, heads)
    projection = {"kernel": Axes(residual, heads, qk), "bias": Axes(heads, qk)}
    value = {"kernel": Axes(residual, heads, vo), "bias": Axes(heads, vo)}
    out = {"kernel": Axes(heads, vo, residual), "bias": Axes(residual)}
    return {name: {"query": projection, "key": dict(projection), "value": value, "out": out}}


def embedding(name: str, group: Group) -> SubSpec:
    """Flax `nn.Embed`: the table is (num_embeddings, features); rows are never permuted."""
    return {name: {"embedding": Axes(None, group)}}
