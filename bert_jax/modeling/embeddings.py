"""BERT input embeddings: word + position + token type, then LayerNorm and dropout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from bert_jax.config import BertConfig
from bert_jax.modeling.common import (
    BATCH_LENGTH_EMBED,
    compute_dtype,
    layer_norm,
    param_dtype,
    weight_init,
)
from bert_jax.modeling.dropout import Dropout


class BertEmbeddings(nn.Module):
    """[batch, length] ids -> [batch, length, embed] (params at bert/embeddings/...)."""

    config: BertConfig

    def setup(self):
        cfg = self.config

        def embed(num, axes):
            return nn.Embed(
                num_embeddings=num,
                features=cfg.hidden_size,
                dtype=compute_dtype(cfg),
                param_dtype=param_dtype(cfg),
                embedding_init=weight_init(cfg, axes),
            )

        self.word_embeddings = embed(cfg.vocab_size, ("vocab", "embed"))
        self.position_embeddings = embed(cfg.max_position_embeddings, (None, "embed"))
        self.token_type_embeddings = embed(cfg.type_vocab_size, (None, "embed"))
        self.LayerNorm = layer_norm(cfg)
        self.dropout = Dropout(rate=cfg.hidden_dropout_prob)

    def __call__(
        self,
        input_ids: jax.Array,  # [batch, length]
        token_type_ids: jax.Array,  # [batch, length]
        position_ids: jax.Array | None,  # [batch, length]; None = 0..length-1
        deterministic: bool,
    ) -> jax.Array:  # [batch, length, embed]
        if position_ids is None:
            position_ids = jnp.arange(input_ids.shape[1], dtype=jnp.int32)[None, :]
        x = (
            self._lookup(self.word_embeddings, input_ids)
            + self._lookup(self.position_embeddings, position_ids)
            + self._lookup(self.token_type_embeddings, token_type_ids)
        )
        x = nn.with_logical_constraint(x, BATCH_LENGTH_EMBED)
        x = self.LayerNorm(x)
        return self.dropout(x, deterministic=deterministic)

    def _lookup(self, embed: nn.Embed, ids: jax.Array) -> jax.Array:
        # Gather rows from a replicated copy of the table (FSDP-style: all-gather the weight,
        # then a local lookup). A gather straight from a vocab- or embed-sharded table makes
        # the SPMD partitioner fall back to replicating its output ("involuntary full
        # rematerialization"). Without a mesh the constraint is a no-op.
        # An id >= the table size gives a NaN row (jnp.take's fill mode) rather than a silently
        # clipped lookup; negative ids wrap around as in NumPy. Ids cannot be range-checked
        # inside jit, so the trainer checks each batch on the host (predict.check_token_ids).
        table = nn.with_logical_constraint(embed.embedding, (None, None))
        return jnp.take(table, ids, axis=0).astype(compute_dtype(self.config))

    def word_embedding_table(self) -> jax.Array:
        """[vocab, embed] in param_dtype: the MLM decoder is tied to it."""
        return self.word_embeddings.embedding
