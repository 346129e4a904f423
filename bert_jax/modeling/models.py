"""The BERT models: the encoder (BertModel) and the encoder with each task head.

All take input_ids, token_type_ids, attention_mask, position_ids, packed_segment_ids
([batch, length] int arrays; all but input_ids optional) and `deterministic` (False needs
rngs={"dropout": key}). Outputs are dicts; logits are float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from bert_jax.config import BertConfig
from bert_jax.modeling.attention import make_attention_mask
from bert_jax.modeling.dropout import Dropout
from bert_jax.modeling.embeddings import BertEmbeddings
from bert_jax.modeling.encoder import BertEncoder
from bert_jax.modeling.heads import BertPooler, PreTrainingHeads, logits_dense


def _check_inputs(config: BertConfig, input_ids, **others) -> None:
    """Shape errors at trace time, naming the input, instead of a broadcast error inside XLA."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], found shape {tuple(input_ids.shape)}")
    length = input_ids.shape[1]
    if length > config.max_position_embeddings:
        raise ValueError(
            f"input_ids has length {length} but max_position_embeddings is {config.max_position_embeddings}"
        )
    for name, value in others.items():
        if value is not None and tuple(value.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, found {tuple(value.shape)}"
            )


def _check_positions(name: str, positions, input_ids) -> None:
    if positions.ndim != 2 or positions.shape[0] != input_ids.shape[0]:
        raise ValueError(f"{name} must be [batch, P] with batch {input_ids.shape[0]}, found {tuple(positions.shape)}")


def _pool_position(config: BertConfig, input_ids, attention_mask, packed_segment_ids) -> jax.Array:
    """[batch, 1] the row the pooler reads: [CLS] (0), or with causal attention the last real
    token, the only one whose output has seen the whole input."""
    batch, length = input_ids.shape
    if not config.causal_attention:
        return jnp.zeros((batch, 1), jnp.int32)
    real = attention_mask if attention_mask is not None else packed_segment_ids
    if real is None:
        return jnp.full((batch, 1), length - 1, jnp.int32)
    last = jnp.max(jnp.where(real != 0, jnp.arange(length, dtype=jnp.int32), 0), axis=-1)
    return last[:, None]


class BertModel(nn.Module):
    """-> {"sequence_output": [batch, length, embed], "pooled_output": [batch, embed]}.

    With `output_positions` [batch, Q], sequence_output is [batch, Q, embed] at those positions
    and the last layer computes only them and the row the pooler reads ([CLS]; with causal
    attention the last real token).
    """

    config: BertConfig

    def setup(self):
        self.embeddings = BertEmbeddings(self.config)
        self.encoder = BertEncoder(self.config)
        self.pooler = BertPooler(self.config)

    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        packed_segment_ids: jax.Array | None = None,
        deterministic: bool = True,
        output_positions: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        _check_inputs(
            self.config,
            input_ids,
            token_type_ids=token_type_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            packed_segment_ids=packed_segment_ids,
        )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        mask = make_attention_mask(attention_mask, packed_segment_ids, self.config.causal_attention, input_ids.shape[1])
        pool_position = _pool_position(self.config, input_ids, attention_mask, packed_segment_ids)  # [batch, 1]
        if output_positions is None:
            sequence_output = self.encoder(x, mask, deterministic)
            pool_rows = sequence_output  # the pooler reads row 0
            if self.config.causal_attention:
                pool_rows = jnp.take_along_axis(sequence_output, pool_position[:, :, None], axis=1)
            return {"sequence_output": sequence_output, "pooled_output": self.pooler(pool_rows)}
        _check_positions("output_positions", output_positions, input_ids)
        pool_first = jnp.concatenate([pool_position.astype(output_positions.dtype), output_positions], axis=1)
        rows = self.encoder(x, mask, deterministic, pool_first)  # [batch, 1 + Q, embed]
        return {"sequence_output": rows[:, 1:], "pooled_output": self.pooler(rows)}

    def word_embedding_table(self) -> jax.Array:
        return self.embeddings.word_embedding_table()


class BertForPreTraining(nn.Module):
    """Adds mlm_logits ([batch, P, vocab] at masked_positions, or [batch, length, vocab]) and
    nsp_logits [batch, 2].

    With masked_positions, the heads read only those rows and [CLS], so the encoder's last layer
    computes only them (BertModel's output_positions) and sequence_output is [batch, P, embed],
    the rows at masked_positions; without, every position is computed.
    """

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids,
        token_type_ids=None,
        attention_mask=None,
        position_ids=None,
        packed_segment_ids=None,
        deterministic: bool = True,
        masked_positions: jax.Array | None = None,  # [batch, P]
    ) -> dict[str, jax.Array]:
        if masked_positions is not None:
            _check_positions("masked_positions", masked_positions, input_ids)
        bert = BertModel(self.config, name="bert")
        out = bert(input_ids, token_type_ids, attention_mask, position_ids, packed_segment_ids, deterministic,
                   output_positions=masked_positions)
        mlm_logits, nsp_logits = PreTrainingHeads(self.config, name="cls")(
            out["sequence_output"], out["pooled_output"], bert.word_embedding_table()
        )
        return {**out, "mlm_logits": mlm_logits, "nsp_logits": nsp_logits}


class BertForSequenceClassification(nn.Module):
    """dropout + dense on the pooled output -> logits [batch, num_labels] (1 = regression)."""

    config: BertConfig
    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
                 packed_segment_ids=None, deterministic: bool = True) -> dict[str, jax.Array]:
        out = BertModel(self.config, name="bert")(
            input_ids, token_type_ids, attention_mask, position_ids, packed_segment_ids, deterministic
        )
        pooled = Dropout(rate=self.config.hidden_dropout_prob)(out["pooled_output"], deterministic=deterministic)
        return {**out, "logits": logits_dense(self.config, self.num_labels, "classifier")(pooled)}


class BertForTokenClassification(nn.Module):
    """dropout + dense on every token -> logits [batch, length, num_labels]."""

    config: BertConfig
    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
                 packed_segment_ids=None, deterministic: bool = True) -> dict[str, jax.Array]:
        out = BertModel(self.config, name="bert")(
            input_ids, token_type_ids, attention_mask, position_ids, packed_segment_ids, deterministic
        )
        seq = Dropout(rate=self.config.hidden_dropout_prob)(out["sequence_output"], deterministic=deterministic)
        return {**out, "logits": logits_dense(self.config, self.num_labels, "classifier")(seq)}


class BertForQuestionAnswering(nn.Module):
    """Span prediction: dense(2) on every token -> start_logits, end_logits [batch, length]."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
                 packed_segment_ids=None, deterministic: bool = True) -> dict[str, jax.Array]:
        out = BertModel(self.config, name="bert")(
            input_ids, token_type_ids, attention_mask, position_ids, packed_segment_ids, deterministic
        )
        logits = logits_dense(self.config, 2, "qa_outputs")(out["sequence_output"])  # [batch, length, 2]
        return {**out, "start_logits": logits[..., 0], "end_logits": logits[..., 1]}
