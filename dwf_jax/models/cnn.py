"""The paper's SmallCNN for CIFAR-10 (reference code: 21,914 params, not the table's 12,042)."""

from collections.abc import Sequence

import flax.linen as nn
import jax

BN_MOMENTUM = 0.9


def batch_norm(train: bool, name: str, momentum: float = BN_MOMENTUM) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (its momentum 0.1 is flax's 0.9), so zoos match the reference."""
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5, name=name)


class SmallCNN(nn.Module):
    """[conv3x3 -> BN -> ReLU -> maxpool 2x2] per width, then Dense 32 -> ReLU -> Dropout -> Dense.

    Submodules: `conv{i}`, `bn{i}` (i = 1..3), `hidden` (Dense 32), `classifier`.
    Inputs are NHWC; 32x32 images reach the flatten as 4x4x24 (HWC order).
    `dropout_rate` is a field so tests can make train mode deterministic;
    `bn_momentum` so BatchNorm recalibration can read one batch's statistics (0).
    """

    widths: Sequence[int] = (16, 24, 24)
    hidden_width: int = 32
    num_classes: int = 10
    dropout_rate: float = 0.3
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i, width in enumerate(self.widths, start=1):
            x = nn.Conv(width, (3, 3), padding="SAME", name=f"conv{i}")(x)
            x = nn.relu(batch_norm(train, f"bn{i}", self.bn_momentum)(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden_width, name="hidden")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        return nn.Dense(self.num_classes, name="classifier")(x)
