"""A BERT encoder with a regression head (Table 13: BERT-Base 768/12/12, 128 tokens; any size down to tiny).

Written in Flax rather than taken from transformers: its 5.x line has no Flax
models, and the pipeline needs plain linen variables it can vmap and permute.
Post-LayerNorm blocks as in BERT; attention is flax's
`MultiHeadDotProductAttention` (heads and head dimensions on separate axes),
so `models.specs.bert_permutation_spec` can name them.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

_INIT = nn.initializers.normal(stddev=0.02)


class BertLayer(nn.Module):
    """LN(x + Attention(x)), then LN(x + MLP(x))."""

    hidden: int
    heads: int
    intermediate: int
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.heads,
            dropout_rate=self.dropout,
            deterministic=not train,
            kernel_init=_INIT,
            name="attention",
        )(x, x, mask=mask)
        x = nn.LayerNorm(epsilon=1e-12, name="attention_norm")(x + nn.Dropout(self.dropout, deterministic=not train)(y))
        y = nn.gelu(nn.Dense(self.intermediate, kernel_init=_INIT, name="mlp_in")(x), approximate=False)
        y = nn.Dense(self.hidden, kernel_init=_INIT, name="mlp_out")(y)
        return nn.LayerNorm(epsilon=1e-12, name="mlp_norm")(x + nn.Dropout(self.dropout, deterministic=not train)(y))


class Bert(nn.Module):
    """Token ids (batch, length), 0 = padding, -> one regression output per sequence (from the [CLS] token)."""

    vocab_size: int = 30522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_length: int = 128
    dropout: float = 0.1

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        positions = jnp.arange(tokens.shape[1])[None, :]
        x = nn.Embed(self.vocab_size, self.hidden, embedding_init=_INIT, name="word_embedding")(tokens)
        x = x + nn.Embed(self.max_length, self.hidden, embedding_init=_INIT, name="position_embedding")(positions)
        x = nn.LayerNorm(epsilon=1e-12, name="embedding_norm")(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        mask = nn.make_attention_mask(tokens > 0, tokens > 0)
        for i in range(self.layers):
            x = BertLayer(self.hidden, self.heads, self.intermediate, self.dropout, name=f"layer_{i}")(x, mask, train)
        pooled = jnp.tanh(nn.Dense(self.hidden, kernel_init=_INIT, name="pooler")(x[:, 0]))
        return nn.Dense(1, kernel_init=_INIT, name="regressor")(pooled)[:, 0]
