"""The velocity-field network of DeepWeightFlow (Table 14)."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class VelocityField(nn.Module):
    """v(x, t): time embedding concatenated with x, then an [h, h/2, h] MLP.

    The output layer starts at zero so the initial flow is the identity map.
    """

    dim: int
    hidden: int
    time_embed_dim: int
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, *, train: bool) -> jax.Array:
        embedding = nn.Dense(self.time_embed_dim)(t[:, None])
        embedding = nn.Dense(self.time_embed_dim)(nn.gelu(embedding, approximate=False))
        h = jnp.concatenate([x, embedding], axis=-1)
        for width, drop in ((self.hidden, True), (self.hidden // 2, True), (self.hidden, False)):
            h = nn.gelu(nn.LayerNorm()(nn.Dense(width)(h)), approximate=False)
            if drop:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.dim, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)(h)
