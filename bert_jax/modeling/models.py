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
from bert_jax.modeling.common import dense, param_dtype
from bert_jax.modeling.dropout import Dropout
from bert_jax.modeling.embeddings import BertEmbeddings
from bert_jax.modeling.encoder import BertEncoder
from bert_jax.modeling.heads import BertPooler, LayerFeatures, PreTrainingHeads, logits_dense
from bert_jax.modeling.recurrent import BiLSTM, lengths_from_mask


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


# ---- BiLSTM heads (the paper's Tables 5 and 7). No transformers class holds them: their runs
# cannot be exported as Hugging Face / Google checkpoints (bert_jax.convert refuses them).


def _bilstm_lengths(input_ids, attention_mask, packed_segment_ids) -> jax.Array:
    if packed_segment_ids is not None:
        raise ValueError("the BiLSTM heads read one sequence per row; packed_segment_ids is not supported")
    if attention_mask is None:
        return jnp.full(input_ids.shape[:1], input_ids.shape[1], jnp.int32)
    return lengths_from_mask(attention_mask)


def _bilstm(config: BertConfig, hidden_size: int, num_layers: int) -> BiLSTM:
    return BiLSTM(hidden_size=hidden_size, num_layers=num_layers, param_dtype=param_dtype(config), name="bilstm")


def _bilstm_classifier(config: BertConfig, num_labels: int) -> nn.Module:
    # float32 logits; the input is the BiLSTM's 2 * hidden features, not `embed` (no logical axis).
    return dense(config, num_labels, (None, None), "classifier", dtype=jnp.float32)


def _encoder_then_bilstm(module: nn.Module, input_ids, token_type_ids, attention_mask, position_ids,
                         packed_segment_ids, deterministic: bool, features: str = ""):
    """BERT (`bert/`), dropout, then the BiLSTM (`bilstm/`) as submodules of `module` (called from
    its compact __call__) -> (BERT's outputs, BiLSTM outputs [batch, length, 2H], final states [batch, 2H]).

    features="": the BiLSTM reads the last layer and everything trains. features=<mode>: the
    encoder runs deterministically, its hidden states pass through stop_gradient and are combined
    by LayerFeatures (`feature_mix/`) for the BiLSTM to read."""
    lengths = _bilstm_lengths(input_ids, attention_mask, packed_segment_ids)
    bert = BertModel(module.config, name="bert")
    if features:
        out = bert(input_ids, token_type_ids, attention_mask, position_ids, packed_segment_ids,
                   deterministic=True, output_hidden_states=True)
        x = LayerFeatures(features, name="feature_mix")(jax.lax.stop_gradient(out.pop("hidden_states")))
    else:
        out = bert(input_ids, token_type_ids, attention_mask, position_ids, packed_segment_ids, deterministic)
        x = out["sequence_output"]
    x = Dropout(rate=module.config.hidden_dropout_prob)(x, deterministic=deterministic)
    seq, final = _bilstm(module.config, module.bilstm_hidden_size, module.bilstm_layers)(x, lengths)
    return out, seq, final


class BertBiLSTMForTokenClassification(nn.Module):
    """BERT, then a randomly initialised BiLSTM (`bilstm/`, bert_jax.modeling.recurrent), then a
    dense layer per token -> logits [batch, length, num_labels].

    features="" (fine-tuning, the paper's Table 5 "+ BiLSTM"): the BiLSTM reads the last layer
    (dropout before and after it) and the whole model trains.
    features=<one of heads.FEATURE_MODES> (feature-based, Table 7, ELMo-style): the encoder runs
    deterministically (no dropout) and returns every hidden state; those pass through
    stop_gradient (no backward pass runs through the encoder), are combined by LayerFeatures
    (`feature_mix/`), then dropout, the BiLSTM, dropout and the classifier. The encoder's params
    must also be frozen in the optimizer (config.optimizer.frozen_params), else weight decay
    would still move them; the NER task refuses a feature-based run that does not freeze them.
    The real tokens of a row are the first ones (attention_mask 1, then padding).
    """

    config: BertConfig
    num_labels: int = 2
    bilstm_hidden_size: int = 768
    bilstm_layers: int = 2
    features: str = ""

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
                 packed_segment_ids=None, deterministic: bool = True) -> dict[str, jax.Array]:
        out, seq, _ = _encoder_then_bilstm(self, input_ids, token_type_ids, attention_mask, position_ids,
                                           packed_segment_ids, deterministic, self.features)
        seq = Dropout(rate=self.config.hidden_dropout_prob)(seq, deterministic=deterministic)
        return {**out, "logits": _bilstm_classifier(self.config, self.num_labels)(seq)}


class BertBiLSTMForSequenceClassification(nn.Module):
    """BERT, then a randomly initialised BiLSTM over the last layer (the paper's Table 5 "+ BiLSTM"),
    then dense on concat(the forward state after the last real token, the backward state after
    the first) -> logits [batch, num_labels] (1 = regression). Dropout before the BiLSTM and
    before the classifier; the pooler is not used."""

    config: BertConfig
    num_labels: int = 2
    bilstm_hidden_size: int = 768
    bilstm_layers: int = 2

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
                 packed_segment_ids=None, deterministic: bool = True) -> dict[str, jax.Array]:
        out, _, final = _encoder_then_bilstm(self, input_ids, token_type_ids, attention_mask, position_ids,
                                           packed_segment_ids, deterministic)
        final = Dropout(rate=self.config.hidden_dropout_prob)(final, deterministic=deterministic)
        return {**out, "logits": _bilstm_classifier(self.config, self.num_labels)(final)}


class BertBiLSTMForQuestionAnswering(nn.Module):
    """BERT, then a randomly initialised BiLSTM (`bilstm/`), then dense(2) on every token ->
    start_logits, end_logits [batch, length]: the paper's Table 5 "+ BiLSTM" on SQuAD (fine-tuned
    end to end; the real tokens of a row are the first ones)."""

    config: BertConfig
    bilstm_hidden_size: int = 768
    bilstm_layers: int = 2

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
                 packed_segment_ids=None, deterministic: bool = True) -> dict[str, jax.Array]:
        out, seq, _ = _encoder_then_bilstm(self, input_ids, token_type_ids, attention_mask, position_ids,
                                         packed_segment_ids, deterministic)
        logits = _bilstm_classifier(self.config, 2)(seq)  # [batch, length, 2]
        return {**out, "start_logits": logits[..., 0], "end_logits": logits[..., 1]}
