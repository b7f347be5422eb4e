"""Fully connected ReLU classifiers of the paper's MLP zoos (Table 13)."""

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]
# A bias initialiser is built per layer from the layer's fan-in.
BiasInitializer = Callable[[int], Initializer]


def zero_bias(fan_in: int) -> Initializer:
    del fan_in
    return nn.initializers.zeros


def torch_bias(fan_in: int) -> Initializer:
    """torch.nn.Linear's default bias, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which `kaiming_uniform_` leaves alone."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# The init schemes of the robustness study (paper Sec. 4, "Robustness Across Initialization Schemes"), in the
# order a mixed zoo cycles through them. "kaiming" is torch's kaiming_uniform_ on the weights with the Linear
# default bias; "kaiming_zero_bias" (the reference code's MNIST zoo, and our default) zeroes the biases.
# "uniform" follows torch.nn.init.uniform_'s default, U(0, 1).
INIT_SCHEMES: dict[str, tuple[Initializer, BiasInitializer]] = {
    "kaiming": (nn.initializers.kaiming_uniform(), torch_bias),
    "xavier": (nn.initializers.xavier_uniform(), zero_bias),
    "kaiming_zero_bias": (nn.initializers.kaiming_uniform(), zero_bias),
    "normal": (nn.initializers.normal(stddev=1.0), zero_bias),
    "uniform": (nn.initializers.uniform(scale=1.0), zero_bias),
}
# A zoo whose model i is drawn with the (i mod 5)-th scheme: 100 models = 20 seeds x 5 schemes.
MIXED = "mixed"


def scheme_of_model(init_scheme: str, model_index: int) -> str:
    """The scheme model `model_index` of a zoo was drawn with."""
    return list(INIT_SCHEMES)[model_index % len(INIT_SCHEMES)] if init_scheme == MIXED else init_scheme


class MLP(nn.Module):
    """Dense layers `Dense_0..Dense_{L-1}` with ReLU between; input is flattened.

    `features` lists every layer's width, output last: Iris is (16, 3).
    `train` is accepted (and ignored) so every model shares the BN/dropout
    models' `apply(variables, x, train=...)` interface.
    """

    features: Sequence[int]
    init_scheme: str = "kaiming_zero_bias"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        kernel_init, bias_init = INIT_SCHEMES[self.init_scheme]
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.features):
            dense = nn.Dense(width, kernel_init=kernel_init, bias_init=bias_init(x.shape[-1]), name=f"Dense_{i}")
            x = dense(x)
            if i < len(self.features) - 1:
                x = nn.relu(x)
        return x
