"""CIFAR ResNets of the paper's reference code: ResNet-20 (272,474 params) and ResNet-18 (11,173,962)."""

from collections.abc import Sequence

import flax.linen as nn
import jax

from dwf_jax.models.cnn import BN_MOMENTUM, batch_norm


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN plus shortcut, then ReLU.

    The shortcut is the identity unless the stride or width changes, in which
    case it is a 1x1 conv (no bias) + BN named `shortcut_conv` / `shortcut_bn`.
    """

    width: int
    stride: int = 1
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        strides = (self.stride, self.stride)
        y = nn.Conv(self.width, (3, 3), strides, padding=1, use_bias=False, name="conv1")(x)
        y = nn.relu(batch_norm(train, "bn1", self.bn_momentum)(y))
        y = nn.Conv(self.width, (3, 3), padding=1, use_bias=False, name="conv2")(y)
        y = batch_norm(train, "bn2", self.bn_momentum)(y)
        if self.stride != 1 or x.shape[-1] != self.width:
            x = nn.Conv(self.width, (1, 1), strides, use_bias=False, name="shortcut_conv")(x)
            x = batch_norm(train, "shortcut_bn", self.bn_momentum)(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """Stem conv3x3 (stride 1, no bias) + BN + ReLU, stages of BasicBlocks, global average pool, Dense.

    Stage s (1-based) has `blocks_per_stage` blocks `stage{s}_block{b}` of width
    `stage_widths[s-1]`; the first stage keeps the resolution, later ones halve
    it in their first block. The stem has the first stage's width, so the
    first stage needs no projection shortcut (the permutation spec relies on it).
    `bn_momentum` 0 lets BatchNorm recalibration read one batch's statistics.
    """

    stage_widths: Sequence[int]
    blocks_per_stage: int
    num_classes: int = 10
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(self.stage_widths[0], (3, 3), padding=1, use_bias=False, name="stem_conv")(x)
        x = nn.relu(batch_norm(train, "stem_bn", self.bn_momentum)(x))
        for s, width in enumerate(self.stage_widths, start=1):
            for b in range(self.blocks_per_stage):
                stride = 2 if s > 1 and b == 0 else 1
                x = BasicBlock(width, stride, self.bn_momentum, name=f"stage{s}_block{b}")(x, train)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="classifier")(x)


def resnet20(num_classes: int = 10) -> ResNet:
    """He et al.'s CIFAR ResNet-20 with 1x1-conv projection shortcuts."""
    return ResNet(stage_widths=(16, 32, 64), blocks_per_stage=3, num_classes=num_classes)


def resnet18(num_classes: int = 10) -> ResNet:
    """Torchvision-style ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool)."""
    return ResNet(stage_widths=(64, 128, 256, 512), blocks_per_stage=2, num_classes=num_classes)
