"""The velocity-field network of DeepWeightFlow (Table 14)."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class VelocityField(nn.Module):
    """v(x, t): time embedding concatenated with x, then an [h, h/2, h] MLP.

    The output layer starts at zero so the initial flow is the identity map.
    With `num_conditions` > 0, v(x, t, c) also sees an embedding of the integer
    condition c (the dataset of Appendix K.1) beside the time embedding.
    """

    dim: int
    hidden: int
    time_embed_dim: int
    dropout: float
    num_conditions: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, *, train: bool, condition: jax.Array | None = None) -> jax.Array:
        if (condition is None) != (self.num_conditions == 0):
            raise ValueError(
                f"a flow with num_conditions={self.num_conditions} needs "
                f"{'a condition per row' if self.num_conditions else 'no condition'}"
            )
        embedding = nn.Dense(self.time_embed_dim)(t[:, None])
        embedding = nn.Dense(self.time_embed_dim)(nn.gelu(embedding, approximate=False))
        parts = [x, embedding]
        if condition is not None:
            label = nn.Embed(self.num_conditions, self.time_embed_dim, name="condition_embedding")(condition)
            parts.append(nn.Dense(self.time_embed_dim, name="condition_dense")(nn.gelu(label, approximate=False)))
        h = jnp.concatenate(parts, axis=-1)
        for width, drop in ((self.hidden, True), (self.hidden // 2, True), (self.hidden, False)):
            h = nn.gelu(nn.LayerNorm()(nn.Dense(width)(h)), approximate=False)
            if drop:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.dim, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)(h)
