"""ViT-Small-192 of the paper's CIFAR-10 zoo (Table 13; ~2.7M parameters).

Patch-4 convolutional embedding, class token and learned positional embedding,
pre-LayerNorm blocks of multi-head attention and a GELU MLP, the head on the
class token. Attention is flax's `MultiHeadDotProductAttention`, whose
query/key/value kernels are (dim, heads, head_dim) and output kernel
(heads, head_dim, dim): heads and their dimensions are separate axes, so a
permutation spec can move whole heads and the dimensions within them.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

_EMBEDDING_INIT = nn.initializers.normal(stddev=0.02)


class EncoderBlock(nn.Module):
    """x + Attention(LN(x)), then x + MLP(LN(x))."""

    dim: int
    heads: int
    mlp_ratio: int
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.LayerNorm(name="norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.heads, dropout_rate=self.dropout, deterministic=not train, name="attention"
        )(y, y)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.LayerNorm(name="norm2")(x)
        y = nn.gelu(nn.Dense(self.dim * self.mlp_ratio, name="mlp_in")(y), approximate=False)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.Dense(self.dim, name="mlp_out")(y)
        return x + nn.Dropout(self.dropout, deterministic=not train)(y)


class ViT(nn.Module):
    """Vision transformer classifier; `block_{i}` are its encoder blocks."""

    num_classes: int = 10
    patch: int = 4
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: int = 4
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        patches = nn.Conv(
            self.dim, (self.patch, self.patch), strides=self.patch, padding="VALID", name="patch_embedding"
        )(x)
        tokens = patches.reshape(patches.shape[0], -1, self.dim)
        cls = self.param("cls_token", _EMBEDDING_INIT, (1, 1, self.dim))
        tokens = jnp.concatenate([jnp.broadcast_to(cls, (tokens.shape[0], 1, self.dim)), tokens], axis=1)
        tokens = tokens + self.param("pos_embedding", _EMBEDDING_INIT, (1, tokens.shape[1], self.dim))
        tokens = nn.Dropout(self.dropout, deterministic=not train)(tokens)
        for i in range(self.depth):
            tokens = EncoderBlock(self.dim, self.heads, self.mlp_ratio, self.dropout, name=f"block_{i}")(tokens, train)
        return nn.Dense(self.num_classes, name="head")(nn.LayerNorm(name="norm")(tokens[:, 0]))
