"""Fully connected ReLU classifiers of the paper's MLP zoos (Table 13)."""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

Initializer = Callable[..., jax.Array]

# Weight initialisers of the robustness study; biases are always zero.
# "uniform" follows torch.nn.init.uniform_'s default, U(0, 1).
INIT_SCHEMES: dict[str, Initializer] = {
    "kaiming": nn.initializers.kaiming_uniform(),
    "xavier": nn.initializers.xavier_uniform(),
    "normal": nn.initializers.normal(stddev=1.0),
    "uniform": nn.initializers.uniform(scale=1.0),
}


class MLP(nn.Module):
    """Dense layers `Dense_0..Dense_{L-1}` with ReLU between; input is flattened.

    `features` lists every layer's width, output last: Iris is (16, 3).
    `train` is accepted (and ignored) so every model shares the BN/dropout
    models' `apply(variables, x, train=...)` interface.
    """

    features: Sequence[int]
    init_scheme: str = "kaiming"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        kernel_init = INIT_SCHEMES[self.init_scheme]
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.features):
            x = nn.Dense(width, kernel_init=kernel_init, bias_init=nn.initializers.zeros, name=f"Dense_{i}")(x)
            if i < len(self.features) - 1:
                x = nn.relu(x)
        return x
