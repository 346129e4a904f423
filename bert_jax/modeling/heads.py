"""Pooler and task heads. Every head returns float32 logits whatever the compute dtype.

A task head (`PreTrainingHead`, `ClassifierHead`, `SpanHead`; the BiLSTM ones in `bilstm_heads`)
is composed onto the one encoder by `models.BertWithHead`, as flaxformer composes
`BertClassifier(encoder, pooler, classifier_head)`. It is called as

    head(encoder, inputs, deterministic, **head_inputs) -> {**encoder outputs, "logits": ...}

with `encoder` the bound BertModel and `inputs` an `EncoderInputs`, so the head decides how the
encoder runs (which rows the last layer computes, whether hidden states are returned).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from bert_jax.config import BertConfig
from bert_jax.modeling.common import activation, compute_dtype, dense, layer_norm, param_dtype, zeros_init
from bert_jax.modeling.dropout import Dropout


class EncoderInputs(NamedTuple):
    """The [batch, length] int inputs of every model, in BertModel's argument order (all but
    input_ids optional): `encoder(*inputs, deterministic=...)`."""

    input_ids: jax.Array
    token_type_ids: Optional[jax.Array] = None
    attention_mask: Optional[jax.Array] = None
    position_ids: Optional[jax.Array] = None
    packed_segment_ids: Optional[jax.Array] = None


def check_positions(name: str, positions, input_ids) -> None:
    if positions.ndim != 2 or positions.shape[0] != input_ids.shape[0]:
        raise ValueError(f"{name} must be [batch, P] with batch {input_ids.shape[0]}, found {tuple(positions.shape)}")


class BertPooler(nn.Module):
    """tanh(dense(rows[:, 0])) -> [batch, embed] (bert/pooler/dense); the caller puts the row
    to pool first ([CLS], or the last real token of a causal model)."""

    config: BertConfig

    @nn.compact
    def __call__(self, sequence_output: jax.Array) -> jax.Array:
        cfg = self.config
        return jnp.tanh(dense(cfg, cfg.hidden_size, ("embed", "mlp"), "dense")(sequence_output[:, 0]))


class MLMTransform(nn.Module):
    """dense + act + LayerNorm (cls/predictions/transform)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = dense(cfg, cfg.hidden_size, ("embed", "mlp"), "dense")(x)
        return layer_norm(cfg)(activation(cfg.hidden_act)(x))


class MaskedLMHead(nn.Module):
    """[batch, P, embed] -> [batch, P, vocab] float32 logits (cls/predictions).

    The decoder is the transposed word-embedding table (tied, passed in) plus output_bias.
    Callers gather the masked positions first so the vocab-sized matmul runs on P, not length.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        cfg = self.config
        x = MLMTransform(cfg, name="transform")(x)
        bias = self.param("output_bias", zeros_init(("vocab",)), (cfg.vocab_size,), param_dtype(cfg))
        table = word_embeddings.astype(compute_dtype(cfg))
        # Inputs in the compute dtype, accumulation and logits in float32.
        logits = jnp.einsum("bpe,ve->bpv", x, table, preferred_element_type=jnp.float32)
        return logits + bias.astype(jnp.float32)


def logits_dense(config: BertConfig, features: int, name: str) -> nn.DenseGeneral:
    """A small output layer computed in float32 (its logits feed a softmax or a loss)."""
    return dense(config, features, ("embed", None), name, dtype=jnp.float32)


class PreTrainingHeads(nn.Module):
    """MLM + NSP heads (cls/predictions, cls/seq_relationship): MLM logits at every row of
    `sequence_output` (the caller passes only the masked rows when it has them)."""

    config: BertConfig

    @nn.compact
    def __call__(self, sequence_output, pooled_output, word_embeddings):
        mlm_logits = MaskedLMHead(self.config, name="predictions")(sequence_output, word_embeddings)
        nsp_logits = logits_dense(self.config, 2, "seq_relationship")(pooled_output)
        return mlm_logits, nsp_logits


class PreTrainingHead(nn.Module):
    """-> mlm_logits ([batch, P, vocab] at masked_positions, or [batch, length, vocab]) and
    nsp_logits [batch, 2] (`cls/`).

    With masked_positions, the heads read only those rows and the pooled one, so the encoder's
    last layer computes only them (BertModel's output_positions) and sequence_output is
    [batch, P, embed], the rows at masked_positions; without, every position is computed.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, encoder, inputs: EncoderInputs, deterministic: bool,
                 masked_positions: jax.Array | None = None) -> dict[str, jax.Array]:
        if masked_positions is not None:
            check_positions("masked_positions", masked_positions, inputs.input_ids)
        out = encoder(*inputs, deterministic=deterministic, output_positions=masked_positions)
        mlm_logits, nsp_logits = PreTrainingHeads(self.config, name="cls")(
            out["sequence_output"], out["pooled_output"], encoder.word_embedding_table())
        return {**out, "mlm_logits": mlm_logits, "nsp_logits": nsp_logits}


class ClassifierHead(nn.Module):
    """dropout + dense (`classifier/`): on the pooled output -> logits [batch, num_labels]
    (1 = regression), or with per_token on every row -> logits [batch, length, num_labels]."""

    config: BertConfig
    num_labels: int
    per_token: bool = False

    @nn.compact
    def __call__(self, encoder, inputs: EncoderInputs, deterministic: bool) -> dict[str, jax.Array]:
        out = encoder(*inputs, deterministic=deterministic)
        x = out["sequence_output"] if self.per_token else out["pooled_output"]
        x = Dropout(rate=self.config.hidden_dropout_prob)(x, deterministic=deterministic)
        return {**out, "logits": logits_dense(self.config, self.num_labels, "classifier")(x)}


class SpanHead(nn.Module):
    """Span prediction: dense(2) (`qa_outputs/`) on every row -> start_logits, end_logits [batch, length]."""

    config: BertConfig

    @nn.compact
    def __call__(self, encoder, inputs: EncoderInputs, deterministic: bool) -> dict[str, jax.Array]:
        out = encoder(*inputs, deterministic=deterministic)
        logits = logits_dense(self.config, 2, "qa_outputs")(out["sequence_output"])  # [batch, length, 2]
        return {**out, "start_logits": logits[..., 0], "end_logits": logits[..., 1]}


# The layer combinations of the paper's Table 7 (feature-based NER), by config.task.features.
FEATURE_MODES = ("embeddings", "second_to_last", "last", "sum_last_four", "concat_last_four", "sum_all")
_HIDDEN_STATES_NEEDED = {"embeddings": 1, "second_to_last": 2, "last": 1, "sum_last_four": 4,
                         "concat_last_four": 4, "sum_all": 1}


class LayerFeatures(nn.Module):
    """hidden_states [num_layers + 1, batch, length, embed] (the embeddings' output, then each
    layer's) -> float32 features [batch, length, F], as Table 7 of the paper combines them:

      embeddings        hidden_states[0]                                     F = embed
      second_to_last    hidden_states[-2]                                    F = embed
      last              hidden_states[-1]                                    F = embed
      sum_last_four     gamma * sum_j softmax(w)_j hidden_states[-4 + j]     F = embed
      concat_last_four  hidden_states[-4] | ... | hidden_states[-1]          F = 4 * embed
      sum_all           gamma * sum_j softmax(w)_j hidden_states[j]          F = embed

    The paper's "weighted sum" is not specified further; the weighted modes are ELMo's scalar mix
    (Peters et al. 2018, eq. 1): learned scalars `weights` (one per layer, init 0 = the plain
    mean), softmax-normalised, and a learned scale `gamma` (init 1). The "last four" modes need
    four hidden states (3 layers + the embeddings at least): a mode that needs more hidden states
    than the model has is an error.
    """

    mode: str

    @nn.compact
    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        if self.mode not in FEATURE_MODES:
            raise ValueError(f"config.task.features: expected one of {FEATURE_MODES}, found {self.mode!r}")
        available, needed = hidden_states.shape[0], _HIDDEN_STATES_NEEDED[self.mode]
        if available < needed:
            raise ValueError(f"config.task.features={self.mode!r} needs {needed} hidden states (embeddings + "
                             f"{needed - 1} layers); the model has {available - 1} layer(s)")
        hidden_states = hidden_states.astype(jnp.float32)
        if self.mode == "embeddings":
            return hidden_states[0]
        if self.mode == "second_to_last":
            return hidden_states[-2]
        if self.mode == "last":
            return hidden_states[-1]
        if self.mode == "concat_last_four":
            return jnp.concatenate(list(hidden_states[-4:]), axis=-1)
        chosen = hidden_states[-4:] if self.mode == "sum_last_four" else hidden_states
        weights = self.param("weights", nn.initializers.zeros, (chosen.shape[0],), jnp.float32)
        gamma = self.param("gamma", nn.initializers.ones, (), jnp.float32)
        return gamma * jnp.einsum("k,kble->ble", jax.nn.softmax(weights), chosen)
