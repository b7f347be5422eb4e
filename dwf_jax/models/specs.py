"""Permutation specs of the CNN models, covering both `params` and `batch_stats`.

Every BatchNorm shares its conv's output group on scale, bias, mean and var,
so a permuted model computes the same function in train and eval mode.
"""

from typing import Any

from dwf_jax.permutations.builders import Group, batch_norm, batch_norm_stats, conv, dense

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
