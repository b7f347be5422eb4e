"""PyTorch twins of the Flax architectures in `dwf_jax.models`, for running generated nets in PyTorch.

A net exported in PyTorch layout loads with `load_state_dict(state_dict, strict=True)` and, in eval mode,
computes our Flax model's logits. The state-dict key names are a contract with the Flax<->torch converter:
they follow the DeepWeightFlow reference code (MLP, SmallCNN, ResNet-20, ViT) and torchvision (ResNet-18), so
zoos trained there import directly. Images are NCHW here (NHWC in Flax): pass the same normalised inputs,
transposed. BERT is Hugging Face's `BertForSequenceClassification` (see `build`).
"""

from collections.abc import Sequence

import ml_collections
import torch
from torch import nn

from dwf_jax.config import MODEL_FIELDS, MODEL_NAMES


class MLP(nn.Module):
    """Linear layers `fc1..fc{L}` (our `Dense_0..Dense_{L-1}`) with ReLU between; the input is flattened."""

    def __init__(self, features: Sequence[int], in_features: int) -> None:
        super().__init__()
        widths = [in_features, *features]
        self.depth = len(features)
        for i in range(self.depth):
            self.add_module(f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A single channel flattens in the same order as NHWC, so MNIST needs no permutation.
        x = x.flatten(1)
        for i in range(1, self.depth + 1):
            x = getattr(self, f"fc{i}")(x)
            if i < self.depth:
                x = torch.relu(x)
        return x


class SmallCNN(nn.Module):
    """[conv3x3 -> BN -> ReLU -> maxpool 2x2] per width (`conv{i}`, `bn{i}`), then `hidden`, `dropout`, `classifier`.

    The flatten is in CHW order, so `hidden.weight`'s columns are our HWC-ordered Dense rows, permuted.
    `image_size` fixes the width of `hidden`'s input.
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 24, 24),
        hidden_width: int = 32,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        self.depth = len(widths)
        for i, (c_in, c_out) in enumerate(zip([in_channels, *widths[:-1]], widths, strict=True), start=1):
            self.add_module(f"conv{i}", nn.Conv2d(c_in, c_out, 3, padding=1))
            self.add_module(f"bn{i}", nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1))
        side = image_size // 2**self.depth
        self.hidden = nn.Linear(widths[-1] * side * side, hidden_width)
        self.dropout = nn.Dropout(0.3)
        self.classifier = nn.Linear(hidden_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.depth + 1):
            x = torch.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            x = nn.functional.max_pool2d(x, 2)
        x = self.dropout(torch.relu(self.hidden(x.flatten(1))))
        return self.classifier(x)


# Names of a ResNet's projection shortcut and classifier in each style of state dict.
RESNET_NAMING: dict[str, tuple[str, str]] = {"reference": ("shortcut", "linear"), "torchvision": ("downsample", "fc")}


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    The shortcut (attribute `shortcut_name`) is an empty `nn.Sequential` (the identity, no keys) unless the
    stride or width changes; then it is a 1x1 conv (no bias) + BN, keys `{shortcut_name}.0/1.*`.
    """

    def __init__(self, in_width: int, width: int, stride: int, shortcut_name: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_width, width, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        projection = stride != 1 or in_width != width
        layers = [nn.Conv2d(in_width, width, 1, stride, bias=False), nn.BatchNorm2d(width)] if projection else []
        self.shortcut_name = shortcut_name
        self.add_module(shortcut_name, nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + getattr(self, self.shortcut_name)(x))


class ResNet(nn.Module):
    """Stem `conv1` (3x3, stride 1, no bias) + `bn1` + ReLU, stages `layer{s}` of BasicBlocks, average pool, Linear.

    Like our Flax ResNet, the stem has the first stage's width and later stages halve the resolution in their
    first block. `naming` picks the shortcut and classifier names (`RESNET_NAMING`).
    """

    def __init__(
        self,
        stage_widths: Sequence[int],
        blocks_per_stage: int,
        num_classes: int = 10,
        naming: str = "reference",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        shortcut_name, self.classifier_name = RESNET_NAMING[naming]
        self.conv1 = nn.Conv2d(in_channels, stage_widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stage_widths[0])
        in_width = stage_widths[0]
        for s, width in enumerate(stage_widths, start=1):
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(in_width, width, 2 if s > 1 and b == 0 else 1, shortcut_name))
                in_width = width
            self.add_module(f"layer{s}", nn.Sequential(*blocks))
        self.num_stages = len(stage_widths)
        self.add_module(self.classifier_name, nn.Linear(in_width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        for s in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{s}")(x)
        return getattr(self, self.classifier_name)(x.mean(dim=(2, 3)))


def resnet20(num_classes: int = 10) -> ResNet:
    """ResNet-20 with the reference code's names (`shortcut`, `linear`)."""
    return ResNet((16, 32, 64), 3, num_classes, naming="reference")


def resnet18(num_classes: int = 10) -> ResNet:
    """ResNet-18 with torchvision's names (`downsample`, `fc`) and the CIFAR stem (3x3 stride-1 conv, no max-pool)."""
    return ResNet((64, 128, 256, 512), 2, num_classes, naming="torchvision")


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens, row-major over the patch grid (as our reshape of NHWC patches)."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; `qkv` rows are [q|k|v], each (heads, head_dim); `proj` reads heads head-major."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        weights = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> dropout -> fc2 -> dropout (the last one is our residual dropout)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(nn.functional.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-LN encoder block: x + attn(norm1(x)), then x + mlp(norm2(x)); LayerNorm eps is Flax's 1e-6."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, dropout)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision transformer with the reference code's names; the `head` reads the normalised class token."""

    def __init__(
        self,
        num_classes: int = 10,
        patch: int = 4,
        dim: int = 192,
        depth: int = 6,
        heads: int = 3,
        mlp_ratio: int = 4,
        dropout: float = 0.1,
        image_size: int = 32,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_channels, dim, patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + (image_size // patch) ** 2, dim))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.blocks(self.pos_drop(tokens + self.pos_embed))
        return self.head(self.norm(tokens[:, 0]))


def _bert(model_config: ml_collections.ConfigDict) -> nn.Module:
    """Hugging Face's BERT with a one-output regression head (imported here: only BERT needs transformers)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=model_config.vocab_size,
        hidden_size=model_config.hidden,
        num_hidden_layers=model_config.layers,
        num_attention_heads=model_config.heads,
        intermediate_size=model_config.intermediate,
        max_position_embeddings=model_config.max_length,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        hidden_dropout_prob=model_config.dropout,
        attention_probs_dropout_prob=model_config.dropout,
        num_labels=1,
    )
    return BertForSequenceClassification(config)


def build(model_config: ml_collections.ConfigDict, *, in_features: int | None = None) -> nn.Module:
    """The torch twin of `models.registry.build_model(model_config)`, in eval mode.

    `in_features` (the flattened input width) is required for 'mlp', whose config does not know its data.
    BERT is `BertForSequenceClassification`: pass `attention_mask=(ids > 0)`; its logits are (batch, 1).
    """
    name = model_config.name
    if name == "mlp":
        if in_features is None:
            raise ValueError("build('mlp') needs in_features, the flattened input width")
        module = MLP(tuple(model_config.features), in_features)
    elif name == "smallcnn":
        module = SmallCNN()
    elif name == "resnet20":
        module = resnet20()
    elif name == "resnet18":
        module = resnet18()
    elif name == "vit_small":
        module = ViT(**{key: model_config[key] for key in MODEL_FIELDS[name]})
    elif name == "bert":
        module = _bert(model_config)
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")
    return module.eval()
