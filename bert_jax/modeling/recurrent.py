"""A stacked bidirectional LSTM over padded sequences, from flax's `nn.RNN` / `nn.Bidirectional`
over `nn.LSTMCell` (the BiLSTM heads of the paper's Tables 5 and 7).

    outputs, final = BiLSTM(hidden_size=768, num_layers=2)(x, seq_lengths)
    # x [batch, length, features], seq_lengths [batch] -> outputs [batch, length, 2 * hidden]
    # (forward | backward at every position), final [batch, 2 * hidden] (the last layer's
    # forward state after the last real token | backward state after the first)

Padding: the real tokens of a row are its first `seq_lengths[b]` positions (what every
fine-tuning task builds: `[CLS] ... [SEP]` then padding; `lengths_from_mask` reads them from the
attention mask). The forward direction runs left to right and its final state is taken at the
last real token; the backward direction starts at each row's last real token (nn.RNN flips only
the real part of a padded row) and ends at position 0. Outputs at padded positions are not
meaningful (the loss and predictions of the tasks never read them); on the real positions a
padded row gives what the same row unpadded gives.

Precision: the LSTM computes in float32 whatever the model's compute dtype. A recurrence carries
its cell state through every position, so bfloat16 rounding (8 bits of mantissa) would compound
over a 128-token sequence, and the head is a few percent of a BERT step's FLOPs at most.
Parameters take the model's param_dtype. Initialisation is LSTMCell's: lecun-normal input
kernels, orthogonal recurrent kernels, zero biases (forget-gate bias 0, not the 1 some use).

Parameter names: `layer_{i}/{forward_rnn,backward_rnn}/cell/{ii,if,ig,io}/kernel` (input ->
gate, no bias) and `.../{hi,hf,hg,ho}/{kernel,bias}` (hidden -> gate), flax's names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


def lengths_from_mask(attention_mask: jax.Array) -> jax.Array:
    """[batch, length] 1/0 mask (real tokens first) -> [batch] int32 lengths, at least 1."""
    return jnp.maximum(jnp.sum(attention_mask != 0, axis=-1), 1).astype(jnp.int32)


class BiLSTM(nn.Module):
    """`num_layers` bidirectional LSTM layers of `hidden_size` units per direction; layer i+1
    reads layer i's concatenated outputs. -> (outputs [batch, length, 2 * hidden_size],
    final [batch, 2 * hidden_size]); see the module docstring for padding."""

    hidden_size: int
    num_layers: int = 1
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, seq_lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError(f"BiLSTM: hidden_size and num_layers must be >= 1, found {self.hidden_size}, "
                             f"{self.num_layers}")
        if x.ndim != 3 or seq_lengths.shape != x.shape[:1]:
            raise ValueError(f"BiLSTM: expected x [batch, length, features] and seq_lengths [batch], found "
                             f"{tuple(x.shape)} and {tuple(seq_lengths.shape)}")
        x = x.astype(jnp.float32)
        final = None
        for i in range(self.num_layers):
            # parent=None: unbound here, adopted by the module they are passed to (so the
            # parameters sit under layer_{i}/forward_rnn/cell/..., not beside it).
            rnn = lambda: nn.RNN(nn.LSTMCell(self.hidden_size, dtype=jnp.float32, param_dtype=self.param_dtype,
                                             parent=None), parent=None)
            layer = nn.Bidirectional(rnn(), rnn(), return_carry=True, name=f"layer_{i}")
            ((_, h_forward), (_, h_backward)), x = layer(x, seq_lengths=seq_lengths)
            final = jnp.concatenate([h_forward, h_backward], axis=-1)
        return x, final
