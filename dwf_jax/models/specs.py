"""Permutation specs of the models: CNNs (both `params` and `batch_stats`) and transformer encoders.

Every BatchNorm shares its conv's output group on scale, bias, mean and var,
so a permuted model computes the same function in train and eval mode. The
transformers share one residual-stream group, and every encoder block has its
own heads, per-head query/key and value/output dimensions, and MLP units.
"""

from typing import Any

from dwf_jax.permutations import Axes
from dwf_jax.permutations.builders import (
    Group,
    batch_norm,
    batch_norm_stats,
    conv,
    dense,
    embedding,
    multi_head_attention,
)

SpecDict = dict[str, Any]


def _conv_bn(
    params: SpecDict, stats: SpecDict, conv_name: str, bn_name: str, in_group: Group, out_group: Group, bias: bool
) -> None:
    """Add one conv and the BatchNorm on its output to the two collections' specs."""
    params.update(conv(conv_name, in_group, out_group, bias=bias))
    params.update(batch_norm(bn_name, out_group))
    stats.update(batch_norm_stats(bn_name, out_group))


def smallcnn_permutation_spec(num_convs: int = 3) -> dict:
    """Spec for `SmallCNN`: groups `conv{i}` for all but the last conv, and `hidden`.

    The last conv's channels are deliberately not permuted: the flatten turns
    its 4x4x24 output into one 384-long axis in HWC order, on which a channel
    permutation acts as a structured (block) permutation that an `Axes` group
    cannot express. Leaving them fixed is exact, at the cost of 24 units of
    symmetry the matcher does not exploit.
    """
    params: SpecDict = {}
    stats: SpecDict = {}
    in_group: Group = None
    for i in range(1, num_convs + 1):
        out_group = f"conv{i}" if i < num_convs else None
        _conv_bn(params, stats, f"conv{i}", f"bn{i}", in_group, out_group, bias=True)
        in_group = out_group
    params.update(dense("hidden", None, "hidden"))
    params.update(dense("classifier", "hidden", None))
    return {"params": params, "batch_stats": stats}


def resnet_permutation_spec(num_stages: int, blocks_per_stage: int) -> dict:
    """Spec for `ResNet`: one residual-stream group `stage{s}` per stage, one `{block}_inner` per block.

    Everything added into the stream of stage s shares `stage{s}`: the stem
    (for stage 1), every block's conv2/bn2, and the first block's projection
    shortcut (stages > 1), whose 1x1 conv reads the previous stage's stream.
    Identity shortcuts carry no weights, so they just keep the group. Each
    block's conv1/bn1 output is free to move on its own. The classifier reads
    the last stream; image input and logits are fixed.
    """
    params: SpecDict = {}
    stats: SpecDict = {}
    _conv_bn(params, stats, "stem_conv", "stem_bn", None, "stage1", bias=False)
    for s in range(1, num_stages + 1):
        stream = f"stage{s}"
        for b in range(blocks_per_stage):
            name = f"stage{s}_block{b}"
            in_group = f"stage{s - 1}" if s > 1 and b == 0 else stream
            inner = f"{name}_inner"
            block_params: SpecDict = {}
            block_stats: SpecDict = {}
            _conv_bn(block_params, block_stats, "conv1", "bn1", in_group, inner, bias=False)
            _conv_bn(block_params, block_stats, "conv2", "bn2", inner, stream, bias=False)
            if in_group != stream:
                _conv_bn(block_params, block_stats, "shortcut_conv", "shortcut_bn", in_group, stream, bias=False)
            params[name] = block_params
            stats[name] = block_stats
    params.update(dense("classifier", f"stage{num_stages}", None))
    return {"params": params, "batch_stats": stats}


def _encoder_block(block: str, residual: str, norms: tuple[str, str]) -> SpecDict:
    """One encoder block: attention and an MLP reading and writing the residual stream, and its two
    LayerNorms (named as the model names them: pre-norm ViT or post-norm BERT), all on `residual`.

    Groups `{block}/heads`, `/qk`, `/vo` (per head) and `/mlp` are the block's own.
    """
    return {
        **multi_head_attention("attention", residual, f"{block}/heads", f"{block}/qk", f"{block}/vo"),
        **dense("mlp_in", residual, f"{block}/mlp"),
        **dense("mlp_out", f"{block}/mlp", residual),
        **batch_norm(norms[0], residual),
        **batch_norm(norms[1], residual),
    }


def vit_permutation_spec(depth: int, residual: str = "residual") -> dict:
    """Spec for the pre-LayerNorm `ViT` (blocks `block_{i}`): everything added into or read from the stream
    carries `residual`: the patch embedding's output channels, class token, positional embedding, every
    LayerNorm (mean and variance do not depend on the order of features) and every block's projections."""
    params: SpecDict = {
        **conv("patch_embedding", None, residual),
        "cls_token": Axes(None, None, residual),
        "pos_embedding": Axes(None, None, residual),
        **batch_norm("norm", residual),
        **dense("head", residual, None),
    }
    for i in range(depth):
        params[f"block_{i}"] = _encoder_block(f"block_{i}", residual, ("norm1", "norm2"))
    return {"params": params}


def bert_permutation_spec(layers: int, residual: str = "residual") -> dict:
    """Spec for the post-LayerNorm `Bert` encoder (layers `layer_{i}`): the embeddings' features, every
    LayerNorm and every layer's projections carry `residual`; the pooler's output is a hidden group of
    its own, read by the regression head."""
    params: SpecDict = {
        **embedding("word_embedding", residual),
        **embedding("position_embedding", residual),
        **batch_norm("embedding_norm", residual),
        **dense("pooler", residual, "pooler"),
        **dense("regressor", "pooler", None),
    }
    for i in range(layers):
        params[f"layer_{i}"] = _encoder_block(f"layer_{i}", residual, ("attention_norm", "mlp_norm"))
    return {"params": params}


def head_groups(block: str, count: int) -> list[str]:
    """The head groups of `count` encoder blocks named `{block}_{i}` (`block_` in ViT, `layer_` in BERT),
    which TransFusion matches by their spectra."""
    return [f"{block}_{i}/heads" for i in range(count)]
