"""Flax linen BERT: the encoder, its heads, and the layer-layout converters."""

from bert_jax.modeling.attention import make_attention_mask
from bert_jax.modeling.common import gather_positions
from bert_jax.modeling.encoder import stack_layers, unstack_layers
from bert_jax.modeling.models import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)

__all__ = [
    "BertModel",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertForQuestionAnswering",
    "make_attention_mask",
    "gather_positions",
    "stack_layers",
    "unstack_layers",
]
