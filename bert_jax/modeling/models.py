"""The BERT models: the encoder (BertModel) and the encoder with each task head (BertWithHead).

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
from bert_jax.modeling.bilstm_heads import BiLSTMHead
from bert_jax.modeling.embeddings import BertEmbeddings
from bert_jax.modeling.encoder import BertEncoder
from bert_jax.modeling.heads import (BertPooler, ClassifierHead, EncoderInputs, PreTrainingHead, SpanHead,
                                     check_positions)


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

    `output_hidden_states=True` adds "hidden_states" [num_layers + 1, batch, length, embed]: the
    embeddings' output, then every layer's (BertEncoder; both layer layouts).
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
        output_hidden_states: bool = False,
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
            hidden = {}
            if output_hidden_states:
                sequence_output, hidden["hidden_states"] = self.encoder(x, mask, deterministic,
                                                                        output_hidden_states=True)
            else:
                sequence_output = self.encoder(x, mask, deterministic)
            pool_rows = sequence_output  # the pooler reads row 0
            if self.config.causal_attention:
                pool_rows = jnp.take_along_axis(sequence_output, pool_position[:, :, None], axis=1)
            return {"sequence_output": sequence_output, "pooled_output": self.pooler(pool_rows), **hidden}
        if output_hidden_states:
            raise ValueError("BertModel: output_hidden_states needs every position; pass output_positions=None")
        check_positions("output_positions", output_positions, input_ids)
        pool_first = jnp.concatenate([pool_position.astype(output_positions.dtype), output_positions], axis=1)
        rows = self.encoder(x, mask, deterministic, pool_first)  # [batch, 1 + Q, embed]
        return {"sequence_output": rows[:, 1:], "pooled_output": self.pooler(rows)}

    def word_embedding_table(self) -> jax.Array:
        return self.embeddings.word_embedding_table()


class BertWithHead(nn.Module):
    """One encoder (BertModel, `bert/`) with a task head composed onto it, as flaxformer's
    `BertClassifier(encoder, pooler, classifier_head)`; each model below only names its head.

    `nn.share_scope` puts the head's params at the top level (`cls/`, `classifier/`,
    `qa_outputs/`, `bilstm/`, `feature_mix/`), the layout of Google's and Hugging Face's
    checkpoints, so importers and exporters stay tables of renames.
    Called as every model is (module docstring); extra keywords go to the head.
    """

    config: BertConfig

    def make_head(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must say which head it has (make_head)")

    def setup(self):
        self.bert = BertModel(self.config)
        self.head = self.make_head()
        nn.share_scope(self, self.head)

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
                 packed_segment_ids=None, deterministic: bool = True, **head_inputs) -> dict[str, jax.Array]:
        inputs = EncoderInputs(input_ids, token_type_ids, attention_mask, position_ids, packed_segment_ids)
        return self.head(self.bert, inputs, deterministic, **head_inputs)


class BertForPreTraining(BertWithHead):
    """Adds mlm_logits ([batch, P, vocab] at `masked_positions` [batch, P], or [batch, length,
    vocab]) and nsp_logits [batch, 2]; see heads.PreTrainingHead."""

    def make_head(self):
        return PreTrainingHead(self.config)


class BertForSequenceClassification(BertWithHead):
    """dropout + dense on the pooled output -> logits [batch, num_labels] (1 = regression)."""

    num_labels: int = 2

    def make_head(self):
        return ClassifierHead(self.config, self.num_labels)


class BertForTokenClassification(BertWithHead):
    """dropout + dense on every token -> logits [batch, length, num_labels]."""

    num_labels: int = 2

    def make_head(self):
        return ClassifierHead(self.config, self.num_labels, per_token=True)


class BertForQuestionAnswering(BertWithHead):
    """Span prediction: dense(2) on every token -> start_logits, end_logits [batch, length]."""

    def make_head(self):
        return SpanHead(self.config)


class BertBiLSTMForTokenClassification(BertWithHead):
    """BERT, a BiLSTM, then dense per token -> logits [batch, length, num_labels]: fine-tuned
    (features="", Table 5 "+ BiLSTM") or feature-based (features=<heads.FEATURE_MODES>, Table 7;
    the NER task refuses one that does not freeze the encoder). See bilstm_heads.BiLSTMHead."""

    num_labels: int = 2
    bilstm_hidden_size: int = 768
    bilstm_layers: int = 2
    features: str = ""

    def make_head(self):
        return BiLSTMHead(self.config, self.num_labels, "tokens", self.bilstm_hidden_size, self.bilstm_layers,
                          self.features)


class BertBiLSTMForSequenceClassification(BertWithHead):
    """BERT, a BiLSTM over the last layer (Table 5 "+ BiLSTM"), then dense on its final states ->
    logits [batch, num_labels] (1 = regression). See bilstm_heads.BiLSTMHead."""

    num_labels: int = 2
    bilstm_hidden_size: int = 768
    bilstm_layers: int = 2

    def make_head(self):
        return BiLSTMHead(self.config, self.num_labels, "sequence", self.bilstm_hidden_size, self.bilstm_layers)


class BertBiLSTMForQuestionAnswering(BertWithHead):
    """BERT, a BiLSTM, then dense(2) on every token -> start_logits, end_logits [batch, length]:
    Table 5 "+ BiLSTM" on SQuAD. See bilstm_heads.BiLSTMHead."""

    bilstm_hidden_size: int = 768
    bilstm_layers: int = 2

    def make_head(self):
        return BiLSTMHead(self.config, 2, "span", self.bilstm_hidden_size, self.bilstm_layers)
