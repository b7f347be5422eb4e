"""The velocity-field network of DeepWeightFlow (Table 14)."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class VelocityField(nn.Module):
    """v(x, t): time embedding concatenated with x, then an [h, h/2, h] MLP.

    The output layer starts at zero so the initial flow is the identity map.
    With `num_conditions` > 0, v(x, t, c) also sees an embedding of the integer
    condition c (the dataset of Appendix K.1) beside the time embedding.
    With `condition_dim` > 0 it also sees a continuous condition per row, `support` (batch, condition_dim): FLoWN's
    support-set embedding (dwf_jax.support.class_mean_embedding), passed through two Dense layers (FLoWN A.4.2) and
    concatenated beside the time embedding. Its layers are named, and absent when condition_dim is 0, so the
    unconditioned and label-conditioned fields keep their parameter trees (and old checkpoints) unchanged.
    """

    dim: int
    hidden: int
    time_embed_dim: int
    dropout: float
    num_conditions: int = 0
    condition_dim: int = 0

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        *,
        train: bool,
        condition: jax.Array | None = None,
        support: jax.Array | None = None,
    ) -> jax.Array:
        if (condition is None) != (self.num_conditions == 0):
            raise ValueError(
                f"a flow with num_conditions={self.num_conditions} needs "
                f"{'a condition per row' if self.num_conditions else 'no condition'}"
            )
        if (support is None) != (self.condition_dim == 0):
            raise ValueError(
                f"a flow with condition_dim={self.condition_dim} needs "
                f"{'a support embedding per row' if self.condition_dim else 'no support embedding'}"
            )
        if support is not None and support.shape != (x.shape[0], self.condition_dim):
            raise ValueError(
                f"support must be (batch, {self.condition_dim}) = {(x.shape[0], self.condition_dim)}, "
                f"got {support.shape}"
            )
        embedding = nn.Dense(self.time_embed_dim)(t[:, None])
        embedding = nn.Dense(self.time_embed_dim)(nn.gelu(embedding, approximate=False))
        parts = [x, embedding]
        if condition is not None:
            label = nn.Embed(self.num_conditions, self.time_embed_dim, name="condition_embedding")(condition)
            parts.append(nn.Dense(self.time_embed_dim, name="condition_dense")(nn.gelu(label, approximate=False)))
        if support is not None:
            hidden = nn.Dense(self.time_embed_dim, name="support_dense_0")(support)
            parts.append(nn.Dense(self.time_embed_dim, name="support_dense_1")(nn.gelu(hidden, approximate=False)))
        h = jnp.concatenate(parts, axis=-1)
        for width, drop in ((self.hidden, True), (self.hidden // 2, True), (self.hidden, False)):
            h = nn.gelu(nn.LayerNorm()(nn.Dense(width)(h)), approximate=False)
            if drop:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.dim, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)(h)
