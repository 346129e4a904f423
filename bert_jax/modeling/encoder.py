"""The Transformer layer and the stack of them (a Python loop or nn.scan, optional remat).

Loop layout: bert/encoder/layer_{i}/... (Google's and every checkpoint's layout).
Scan layout: bert/encoder/layers/... with a leading [num_layers] axis (logical name "layers");
`stack_layers` / `unstack_layers` convert between the two.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from bert_jax.config import BertConfig
from bert_jax.modeling.attention import BertAttention
from bert_jax.modeling.common import BATCH_LENGTH_EMBED, activation, dense, gather_positions, layer_norm
from bert_jax.modeling.dropout import Dropout


class BertIntermediate(nn.Module):
    """[batch, length, embed] -> act(dense) [batch, length, mlp] (intermediate/dense)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        y = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "dense")(x)
        y = activation(cfg.hidden_act)(y)
        return nn.with_logical_constraint(y, ("batch", "length", "mlp"))


class BertOutput(nn.Module):
    """Feed-forward output projection + residual (+ LayerNorm when post-LN) (output/...)."""

    config: BertConfig

    def setup(self):
        cfg = self.config
        self.dense = dense(cfg, cfg.hidden_size, ("mlp", "embed"), "dense")
        self.LayerNorm = layer_norm(cfg)
        self.dropout = Dropout(rate=cfg.hidden_dropout_prob)

    def __call__(self, inner: jax.Array, residual: jax.Array, deterministic: bool) -> jax.Array:
        y = self.dropout(self.dense(inner), deterministic=deterministic) + residual
        return y if self.config.pre_layer_norm else self.LayerNorm(y)

    def pre_norm(self, x: jax.Array) -> jax.Array:
        """The LayerNorm on the feed-forward input (pre_layer_norm only)."""
        return self.LayerNorm(x)


class BertLayer(nn.Module):
    """One Transformer layer: [batch, length, embed] -> [batch, length, embed], or
    [batch, Q, embed] when only `query_positions` [batch, Q] are computed."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool,
                 query_positions: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        h = BertAttention(cfg, name="attention")(x, mask, deterministic, query_positions)
        output = BertOutput(cfg, name="output")
        inner = BertIntermediate(cfg, name="intermediate")(output.pre_norm(h) if cfg.pre_layer_norm else h)
        y = output(inner, h, deterministic)
        return nn.with_logical_constraint(y, BATCH_LENGTH_EMBED)


class _ScannedBertLayer(BertLayer):
    """BertLayer with nn.scan's (carry, per-step output) signature; same parameter names.
    The per-step output is the layer's output when `emit_outputs` (hidden states), else None."""

    emit_outputs: bool = False

    def __call__(self, x, mask, deterministic):
        y = super().__call__(x, mask, deterministic)
        return y, (y if self.emit_outputs else None)


_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight matmuls
}


class BertEncoder(nn.Module):
    """The layer stack (+ final LayerNorm when pre-LN): [batch, length, embed] -> same.

    `output_positions` [batch, Q] -> [batch, Q, embed], the outputs at those positions only.
    In the loop layout the last layer then computes only those rows (keys and values still
    cover every position): for BERT-base pretraining with 20 of 128 positions read by the
    heads, that skips ~5% of the model's FLOPs. The scan layout computes every row, then gathers.

    `output_hidden_states=True` -> (output, hidden_states [num_layers + 1, batch, length, embed]):
    the encoder's input (the embeddings' output) and every layer's output, as Hugging Face's
    `output_hidden_states` counts them; with pre_layer_norm the last entry is after the final
    LayerNorm, so hidden_states[-1] is always the returned output. Same values in both layouts.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool,
                 output_positions: jax.Array | None = None, output_hidden_states: bool = False):
        cfg = self.config
        if output_hidden_states and output_positions is not None:
            raise ValueError("BertEncoder: output_hidden_states needs every position; pass output_positions=None")
        hidden_states = [x]
        if cfg.scan_layers:
            layer_cls = _ScannedBertLayer
            if cfg.remat != "none":
                # prevent_cse is unnecessary inside scan and would only slow it down.
                layer_cls = nn.remat(layer_cls, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False, static_argnums=(3,))
            stack = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=cfg.num_hidden_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, outputs = stack(cfg, emit_outputs=output_hidden_states, name="layers")(x, mask, deterministic)
            if output_hidden_states:
                hidden_states.extend(outputs[i] for i in range(cfg.num_hidden_layers))
            if output_positions is not None:
                x = gather_positions(x, output_positions)
        else:
            layer_cls = BertLayer
            if cfg.remat != "none":
                layer_cls = nn.remat(layer_cls, policy=_REMAT_POLICIES[cfg.remat], static_argnums=(3,))
            last = cfg.num_hidden_layers - 1
            for i in range(cfg.num_hidden_layers):
                x = layer_cls(cfg, name=f"layer_{i}")(x, mask, deterministic, output_positions if i == last else None)
                hidden_states.append(x)
        if cfg.pre_layer_norm:
            x = layer_norm(cfg, name="final_LayerNorm")(x)
            hidden_states[-1] = x
        if output_hidden_states:
            return x, jnp.stack(hidden_states)
        return x


_LAYER_KEY = re.compile(r"layer_(\d+)$")


def _unbox(tree: Any) -> Any:
    return nn.meta.unbox(tree)


def stack_layers(params: Any) -> Any:
    """Loop layout -> scan layout: every dict holding layer_0..layer_{n-1} gets one `layers`
    entry whose leaves have a leading [n] axis. Works on any subtree (full params or encoder)."""
    params = _unbox(params)
    if not isinstance(params, Mapping):
        return params
    indices = sorted(int(m.group(1)) for k in params if (m := _LAYER_KEY.fullmatch(str(k))))
    out = {k: stack_layers(v) for k, v in params.items() if not _LAYER_KEY.fullmatch(str(k))}
    if indices:
        if indices != list(range(len(indices))):
            raise ValueError(f"stack_layers: layer keys must be layer_0..layer_{{n-1}}, found layer indices {indices}")
        if "layers" in out:
            raise ValueError("stack_layers: a dict holds both layer_{i} entries and a stacked `layers` entry")
        out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"layer_{i}"] for i in indices])
    return out


def unstack_layers(params: Any) -> Any:
    """Scan layout -> loop layout: the inverse of `stack_layers`."""
    params = _unbox(params)
    if not isinstance(params, Mapping):
        return params
    out = {k: unstack_layers(v) for k, v in params.items() if k != "layers"}
    if "layers" in params:
        stacked = params["layers"]
        sizes = {x.shape[0] for x in jax.tree.leaves(stacked)}
        if len(sizes) != 1:
            raise ValueError(f"unstack_layers: stacked leaves disagree on the number of layers: {sorted(sizes)}")
        (n,) = sizes
        for i in range(n):
            out[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return out
