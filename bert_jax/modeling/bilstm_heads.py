"""BiLSTM heads (the paper's Tables 5 and 7): a randomly initialised BiLSTM (`bilstm/`,
`recurrent.BiLSTM`) between the encoder and the output layer (`classifier/`).

No transformers class holds them: their runs cannot be exported as Hugging Face / Google
checkpoints (bert_jax.convert refuses them). The real tokens of a row are its first ones
(attention_mask 1, then padding); packed rows are refused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from bert_jax.config import BertConfig
from bert_jax.modeling.common import dense, param_dtype
from bert_jax.modeling.dropout import Dropout
from bert_jax.modeling.heads import EncoderInputs, LayerFeatures
from bert_jax.modeling.recurrent import BiLSTM, lengths_from_mask

# What the BiLSTM's outputs feed: each token's outputs, the final states, or start/end logits.
OUTPUTS = ("tokens", "sequence", "span")


def _lengths(inputs: EncoderInputs) -> jax.Array:
    """[batch] real tokens per row."""
    if inputs.packed_segment_ids is not None:
        raise ValueError("the BiLSTM heads read one sequence per row; packed_segment_ids is not supported")
    if inputs.attention_mask is None:
        return jnp.full(inputs.input_ids.shape[:1], inputs.input_ids.shape[1], jnp.int32)
    return lengths_from_mask(inputs.attention_mask)


class BiLSTMHead(nn.Module):
    """Encoder outputs -> dropout -> BiLSTM -> dense, by `output`:

      tokens    dropout, then dense per token -> logits [batch, length, num_outputs]
      sequence  dense on concat(the forward state after the last real token, the backward state
                after the first), after dropout -> logits [batch, num_outputs] (1 = regression);
                the pooler is not used
      span      dense(2) per token -> start_logits, end_logits [batch, length]

    features="" (fine-tuning, Table 5 "+ BiLSTM"): the BiLSTM reads the last layer and the whole
    model trains. features=<one of heads.FEATURE_MODES> (feature-based, Table 7, ELMo-style; tokens
    only): the encoder runs deterministically and returns every hidden state; those pass through
    stop_gradient (no backward pass runs through the encoder) and are combined by LayerFeatures
    (`feature_mix/`). The encoder's params must also be frozen in the optimizer
    (config.optimizer.frozen_params), else weight decay would still move them.
    """

    config: BertConfig
    num_outputs: int
    output: str
    hidden_size: int = 768
    num_layers: int = 2
    features: str = ""

    @nn.compact
    def __call__(self, encoder, inputs: EncoderInputs, deterministic: bool) -> dict[str, jax.Array]:
        if self.output not in OUTPUTS:
            raise ValueError(f"BiLSTMHead.output must be one of {OUTPUTS}, found {self.output!r}")
        lengths = _lengths(inputs)
        if self.features:
            out = encoder(*inputs, deterministic=True, output_hidden_states=True)
            x = LayerFeatures(self.features, name="feature_mix")(jax.lax.stop_gradient(out.pop("hidden_states")))
        else:
            out = encoder(*inputs, deterministic=deterministic)
            x = out["sequence_output"]
        x = Dropout(rate=self.config.hidden_dropout_prob)(x, deterministic=deterministic)
        bilstm = BiLSTM(hidden_size=self.hidden_size, num_layers=self.num_layers,
                        param_dtype=param_dtype(self.config), name="bilstm")
        per_token, final = bilstm(x, lengths)  # [batch, length, 2H], [batch, 2H]
        # float32 logits; the input is the BiLSTM's 2H features, not `embed` (no logical axis).
        classifier = dense(self.config, self.num_outputs, (None, None), "classifier", dtype=jnp.float32)
        if self.output == "span":
            logits = classifier(per_token)
            return {**out, "start_logits": logits[..., 0], "end_logits": logits[..., 1]}
        x = per_token if self.output == "tokens" else final
        x = Dropout(rate=self.config.hidden_dropout_prob)(x, deterministic=deterministic)
        return {**out, "logits": classifier(x)}
