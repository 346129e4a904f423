"""Pooler and task heads. Every head returns float32 logits whatever the compute dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from bert_jax.config import BertConfig
from bert_jax.modeling.common import activation, compute_dtype, dense, layer_norm, param_dtype, zeros_init


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
