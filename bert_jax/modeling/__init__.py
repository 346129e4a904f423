"""Flax linen BERT: the encoder, its heads (BiLSTM ones included), and the layer-layout converters."""

from bert_jax.modeling.attention import make_attention_mask
from bert_jax.modeling.common import gather_positions
from bert_jax.modeling.encoder import stack_layers, unstack_layers
from bert_jax.modeling.recurrent import BiLSTM
from bert_jax.modeling.heads import FEATURE_MODES, LayerFeatures
from bert_jax.modeling.models import (
    BertBiLSTMForQuestionAnswering,
    BertBiLSTMForSequenceClassification,
    BertBiLSTMForTokenClassification,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertWithHead,
)

__all__ = [
    "BertModel",
    "BertWithHead",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertForQuestionAnswering",
    "BertBiLSTMForQuestionAnswering",
    "BertBiLSTMForSequenceClassification",
    "BertBiLSTMForTokenClassification",
    "BiLSTM",
    "LayerFeatures",
    "FEATURE_MODES",
    "make_attention_mask",
    "gather_positions",
    "stack_layers",
    "unstack_layers",
]
