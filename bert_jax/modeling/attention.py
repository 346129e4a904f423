"""Multi-head self-attention with padding and packed-segment masks.

Attention runs through `jax.nn.dot_product_attention` (XLA, or cuDNN flash attention on GPU
with `attention_implementation="cudnn"`). That function has no dropout, so when attention
dropout is active (training with attention_probs_dropout_prob > 0, which BertConfig allows with
"xla" only) the same computation runs as explicit einsums with dropout on the probabilities.
Softmax is in float32 on both paths.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from bert_jax.config import BertConfig
from bert_jax.modeling.common import compute_dtype, dense, gather_positions, layer_norm
from bert_jax.modeling.dropout import Dropout


def make_attention_mask(
    attention_mask: jax.Array | None,  # [batch, length] 1 = real token, 0 = padding
    packed_segment_ids: jax.Array | None,  # [batch, length] equal ids attend; 0 = padding
    causal: bool = False,
    length: int | None = None,  # the sequence length; needed only when causal and both are None
) -> jax.Array | None:
    """Boolean mask broadcastable to [batch, heads, query, key]; True = may attend.

    Padding only: [batch, 1, 1, key] (keys are masked; padded queries still attend to the
    real tokens, as in BERT, and their outputs are ignored). Packing: [batch, 1, query, key],
    block-diagonal by segment id, with id 0 never attended to. Causal: query t also sees only
    keys <= t ([1|batch, 1, query, key]).
    """
    mask = None
    if attention_mask is not None:
        mask = (attention_mask != 0)[:, None, None, :]
    if packed_segment_ids is not None:
        seg = packed_segment_ids
        same = (seg[:, None, :, None] == seg[:, None, None, :]) & (seg != 0)[:, None, None, :]
        mask = same if mask is None else (mask & same)
    if causal:
        if length is None:
            length = (attention_mask if attention_mask is not None else packed_segment_ids).shape[1]
        lower = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
        mask = lower if mask is None else (mask & lower)
    return mask


def explicit_attention(query, key, value, mask, dropout_fn=None):
    """softmax(q k^T / sqrt(d)) v, with `dropout_fn` applied to the probabilities.

    query/key/value [batch, length, heads, head_dim] -> [batch, length, heads, head_dim].
    """
    scale = 1.0 / np.sqrt(query.shape[-1])
    logits = jnp.einsum("bqnd,bknd->bnqk", query, key, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        # Same finite fill as jax.nn.dot_product_attention, so fully masked rows stay finite.
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min * 0.7)
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout_fn is not None:
        probs = dropout_fn(probs)
    return jnp.einsum("bnqk,bknd->bqnd", probs.astype(value.dtype), value)


class BertSelfAttention(nn.Module):
    """[batch, length, embed] -> [batch, length, heads, head_dim] (attention/self/...).

    With `queries` [batch, Q, embed], only those rows attend (keys and values still come from
    all of x) and the output is [batch, Q, heads, head_dim]; `mask` must then be
    [batch, 1|heads, 1|Q, length].
    """

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool,
                 queries: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        heads = (cfg.num_attention_heads, cfg.head_dim)
        axes = ("embed", "heads", "kv")
        qkv_names = ("batch", "length", "heads", "kv")
        q = nn.with_logical_constraint(dense(cfg, heads, axes, "query")(x if queries is None else queries), qkv_names)
        k = nn.with_logical_constraint(dense(cfg, heads, axes, "key")(x), qkv_names)
        v = nn.with_logical_constraint(dense(cfg, heads, axes, "value")(x), qkv_names)
        if deterministic or cfg.attention_probs_dropout_prob == 0.0:
            # A "cudnn" config always comes here, in training too: BertConfig refuses cudnn with
            # attention dropout > 0, so the implementation asked for is the one that runs.
            impl = cfg.attention_implementation
            if impl == "cudnn" and mask is not None:
                # cuDNN turns the mask into a bias, which must be [batch, 1|heads, query, key].
                mask = jnp.broadcast_to(mask, (mask.shape[0], 1, q.shape[1], k.shape[1]))
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
        else:  # "xla" with attention dropout: einsums, dropout on the probabilities
            dropout = Dropout(rate=cfg.attention_probs_dropout_prob)
            out = explicit_attention(q, k, v, mask, lambda p: dropout(p, deterministic=False))
        return nn.with_logical_constraint(out.astype(compute_dtype(cfg)), qkv_names)


class BertSelfOutput(nn.Module):
    """Output projection of attention (attention/output/{dense,LayerNorm})."""

    config: BertConfig

    def setup(self):
        cfg = self.config
        self.dense = dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), "dense")
        self.LayerNorm = layer_norm(cfg)
        self.dropout = Dropout(rate=cfg.hidden_dropout_prob)

    def __call__(self, attended: jax.Array, residual: jax.Array, deterministic: bool) -> jax.Array:
        """attended [batch, length, heads, head_dim] -> [batch, length, embed]."""
        y = self.dropout(self.dense(attended), deterministic=deterministic) + residual
        return y if self.config.pre_layer_norm else self.LayerNorm(y)

    def pre_norm(self, x: jax.Array) -> jax.Array:
        """The LayerNorm on the attention input (pre_layer_norm only)."""
        return self.LayerNorm(x)


class BertAttention(nn.Module):
    """Self-attention sublayer: post-LN LN(x + attn(x)) or pre-LN x + attn(LN(x)).

    [batch, length, embed] -> [batch, length, embed], or -> [batch, Q, embed] with
    `query_positions` [batch, Q]: only those positions are computed (all still attended to).
    """

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool,
                 query_positions: jax.Array | None = None) -> jax.Array:
        output = BertSelfOutput(self.config, name="output")
        inputs = output.pre_norm(x) if self.config.pre_layer_norm else x
        residual, queries = x, None
        if query_positions is not None:
            residual, queries = gather_positions(x, query_positions), gather_positions(inputs, query_positions)
            if mask is not None and mask.shape[2] != 1:  # per-query (packed) masks keep their rows
                mask = jnp.take_along_axis(mask, query_positions[:, None, :, None].astype(jnp.int32), axis=2)
        attended = BertSelfAttention(self.config, name="self")(inputs, mask, deterministic, queries)
        return output(attended, residual, deterministic)
