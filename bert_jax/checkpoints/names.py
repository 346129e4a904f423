"""The one table that maps bert_jax parameter paths to Hugging Face keys and Google TF names.

Every importer and exporter in this package is this table plus two generic operations:
  - Hugging Face stores torch Linear weights as [out, in]; we store kernels as [in, out]
    (so do Google's `tf.layers.dense` kernels). `hf_transposed` marks those entries.
  - Google's `cls/seq_relationship/output_weights` (and the fine-tuning `output_weights`) are
    [labels, hidden], the transpose of our kernel. `tf_transposed` marks those.
  - Attention kernels keep the head axis apart in our tree ([hidden, heads, head_dim]); the
    files hold the same numbers merged into a matrix. A plain reshape converts (row-major
    order: hidden index = head * head_dim + d, as in both Google's and HF's code).

Shapes are written with these symbols (sizes come from the BertConfig):
  V vocab_size, P max_position_embeddings, T type_vocab_size, H hidden_size,
  N num_attention_heads, D head_dim, I intermediate_size, L labels (read from the file).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

LAYER = "{i}"  # placeholder for the layer index in the templates below

# Groups of parameters. "encoder" is required in every checkpoint; the others are all or
# nothing: a checkpoint holds every parameter of a group or none of them.
ENCODER, POOLER, MLM, NSP, CLASSIFIER, QA, FINAL_LN = (
    "encoder",
    "pooler",
    "mlm head",
    "nsp head",
    "classifier",
    "qa head",
    "final LayerNorm",
)


@dataclasses.dataclass(frozen=True)
class Rename:
    ours: str  # path in our params tree, '/'-joined
    hf: str | None  # key in a Hugging Face BertForPreTraining state dict (None: HF has no such weight)
    tf: str | None  # variable name in a google-research/bert checkpoint (None: Google has none)
    shape: tuple[str, ...]  # our shape, in the symbols above
    file_shape: tuple[str, ...]  # the shape in both files once `*_transposed` is undone
    group: str
    hf_transposed: bool = False
    tf_transposed: bool = False

    def at_layer(self, i: int) -> "Rename":
        fill = lambda s: None if s is None else s.replace(LAYER, str(i))
        return dataclasses.replace(self, ours=fill(self.ours), hf=fill(self.hf), tf=fill(self.tf))

    @property
    def per_layer(self) -> bool:
        return LAYER in self.ours


def _dense(ours: str, hf: str, tf: str, din: str, dout: str, group: str) -> list[Rename]:
    return [
        Rename(f"{ours}/kernel", f"{hf}.weight", f"{tf}/kernel", (din, dout), (din, dout), group, hf_transposed=True),
        Rename(f"{ours}/bias", f"{hf}.bias", f"{tf}/bias", (dout,), (dout,), group),
    ]


def _layer_norm(ours: str, hf: str, tf: str, group: str) -> list[Rename]:
    return [
        Rename(f"{ours}/scale", f"{hf}.weight", f"{tf}/gamma", ("H",), ("H",), group),
        Rename(f"{ours}/bias", f"{hf}.bias", f"{tf}/beta", ("H",), ("H",), group),
    ]


def _attention_projection(name: str) -> list[Rename]:
    ours = f"bert/encoder/layer_{LAYER}/attention/self/{name}"
    hf = f"bert.encoder.layer.{LAYER}.attention.self.{name}"
    tf = f"bert/encoder/layer_{LAYER}/attention/self/{name}"
    return [
        Rename(f"{ours}/kernel", f"{hf}.weight", f"{tf}/kernel", ("H", "N", "D"), ("H", "H"), ENCODER, hf_transposed=True),
        Rename(f"{ours}/bias", f"{hf}.bias", f"{tf}/bias", ("N", "D"), ("H",), ENCODER),
    ]


_L = f"bert/encoder/layer_{LAYER}"
_HL = f"bert.encoder.layer.{LAYER}"

TABLE: tuple[Rename, ...] = tuple(
    [
        # Embeddings: [rows, hidden] in all three formats.
        Rename("bert/embeddings/word_embeddings/embedding", "bert.embeddings.word_embeddings.weight",
               "bert/embeddings/word_embeddings", ("V", "H"), ("V", "H"), ENCODER),
        Rename("bert/embeddings/position_embeddings/embedding", "bert.embeddings.position_embeddings.weight",
               "bert/embeddings/position_embeddings", ("P", "H"), ("P", "H"), ENCODER),
        Rename("bert/embeddings/token_type_embeddings/embedding", "bert.embeddings.token_type_embeddings.weight",
               "bert/embeddings/token_type_embeddings", ("T", "H"), ("T", "H"), ENCODER),
        *_layer_norm("bert/embeddings/LayerNorm", "bert.embeddings.LayerNorm", "bert/embeddings/LayerNorm", ENCODER),
        # One Transformer layer.
        *_attention_projection("query"),
        *_attention_projection("key"),
        *_attention_projection("value"),
        Rename(f"{_L}/attention/output/dense/kernel", f"{_HL}.attention.output.dense.weight",
               f"{_L}/attention/output/dense/kernel", ("N", "D", "H"), ("H", "H"), ENCODER, hf_transposed=True),
        Rename(f"{_L}/attention/output/dense/bias", f"{_HL}.attention.output.dense.bias",
               f"{_L}/attention/output/dense/bias", ("H",), ("H",), ENCODER),
        *_layer_norm(f"{_L}/attention/output/LayerNorm", f"{_HL}.attention.output.LayerNorm",
                     f"{_L}/attention/output/LayerNorm", ENCODER),
        *_dense(f"{_L}/intermediate/dense", f"{_HL}.intermediate.dense", f"{_L}/intermediate/dense", "H", "I", ENCODER),
        *_dense(f"{_L}/output/dense", f"{_HL}.output.dense", f"{_L}/output/dense", "I", "H", ENCODER),
        *_layer_norm(f"{_L}/output/LayerNorm", f"{_HL}.output.LayerNorm", f"{_L}/output/LayerNorm", ENCODER),
        # Pre-LN only (an ablation); neither Google's nor HF's BERT has it.
        Rename("bert/encoder/final_LayerNorm/scale", None, None, ("H",), ("H",), FINAL_LN),
        Rename("bert/encoder/final_LayerNorm/bias", None, None, ("H",), ("H",), FINAL_LN),
        *_dense("bert/pooler/dense", "bert.pooler.dense", "bert/pooler/dense", "H", "H", POOLER),
        # Masked-LM head. Its decoder matrix is the word embedding table (tied), so only the
        # output bias is a parameter of its own.
        *_dense("cls/predictions/transform/dense", "cls.predictions.transform.dense",
                "cls/predictions/transform/dense", "H", "H", MLM),
        *_layer_norm("cls/predictions/transform/LayerNorm", "cls.predictions.transform.LayerNorm",
                     "cls/predictions/transform/LayerNorm", MLM),
        Rename("cls/predictions/output_bias", "cls.predictions.bias", "cls/predictions/output_bias",
               ("V",), ("V",), MLM),
        # Next-sentence head: Google keeps output_weights as [2, hidden].
        Rename("cls/seq_relationship/kernel", "cls.seq_relationship.weight", "cls/seq_relationship/output_weights",
               ("H", "2"), ("H", "2"), NSP, hf_transposed=True, tf_transposed=True),
        Rename("cls/seq_relationship/bias", "cls.seq_relationship.bias", "cls/seq_relationship/output_bias",
               ("2",), ("2",), NSP),
        # Fine-tuning heads: run_classifier.py's output_weights / output_bias (top level), and
        # run_squad.py's cls/squad/*.
        Rename("classifier/kernel", "classifier.weight", "output_weights", ("H", "L"), ("H", "L"), CLASSIFIER,
               hf_transposed=True, tf_transposed=True),
        Rename("classifier/bias", "classifier.bias", "output_bias", ("L",), ("L",), CLASSIFIER),
        Rename("qa_outputs/kernel", "qa_outputs.weight", "cls/squad/output_weights", ("H", "2"), ("H", "2"), QA,
               hf_transposed=True, tf_transposed=True),
        Rename("qa_outputs/bias", "qa_outputs.bias", "cls/squad/output_bias", ("2",), ("2",), QA),
    ]
)

# File entries that are not parameters of ours and are skipped on import.
# torch buffers some transformers versions saved: arange(max_position_embeddings) and zeros.
HF_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")
HF_TIED_DECODER_WEIGHT = "cls.predictions.decoder.weight"  # = word embeddings (checked)
HF_TIED_DECODER_BIAS = "cls.predictions.decoder.bias"  # = cls.predictions.bias (checked)
TF_OPTIMIZER_SUFFIXES = ("/adam_m", "/adam_v")  # Google's AdamWeightDecayOptimizer slots
TF_SKIPPED_NAMES = ("global_step",)
# Heads whose HF keys have no `bert.` prefix; a BertModel state dict has none of these.
HF_HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.")


def expand(num_layers: int) -> Iterator[Rename]:
    """The table with `{i}` filled in for every layer, in file order."""
    for entry in TABLE:
        if entry.per_layer:
            for i in range(num_layers):
                yield entry.at_layer(i)
        else:
            yield entry


def dims(config, num_labels: int | None = None) -> dict[str, int]:
    """Symbol -> size for a BertConfig."""
    d = {
        "V": config.vocab_size,
        "P": config.max_position_embeddings,
        "T": config.type_vocab_size,
        "H": config.hidden_size,
        "N": config.num_attention_heads,
        "D": config.hidden_size // config.num_attention_heads,
        "I": config.intermediate_size,
        "2": 2,
    }
    if num_labels is not None:
        d["L"] = num_labels
    return d


def resolve(shape: tuple[str, ...], sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(sizes[s] for s in shape)
