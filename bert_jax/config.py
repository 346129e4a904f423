"""BertConfig: the architecture of a BERT model plus bert_jax's ablation and compute knobs.

Field names follow Hugging Face's `config.json` (a superset of Google's `bert_config.json`),
so both files load with `BertConfig.from_json_file`. Every bert_jax knob defaults to what the
BERT paper (and the released checkpoints) use.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

# hidden_act values and the function each one means (see bert_jax.modeling.activation).
# "gelu" is the exact erf form as in Hugging Face; Google's TF modeling.py calls its tanh
# approximation "gelu" too, but HF (and so every converted checkpoint) runs "gelu" as erf.
HIDDEN_ACTS = (
    "gelu",  # exact: x * Phi(x)
    "gelu_python",  # HF's name for the same exact erf form
    "gelu_new",  # tanh approximation (GPT-2 / Google TF "gelu")
    "gelu_tanh",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "relu",
    "silu",
    "swish",
)
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
PARAM_DTYPES = ("float32", "bfloat16")
# "none": keep all activations; "full": recompute each layer in the backward pass;
# "minimal": save the matmul outputs, recompute the cheap elementwise ops.
REMAT_POLICIES = ("none", "full", "minimal")
# "xla" runs everywhere; "cudnn" is cuDNN flash attention (GPU only; bf16/fp16 compute; it has
# no attention dropout, so BertConfig requires attention_probs_dropout_prob=0 with it).
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")

# Keys that Hugging Face or Google configs carry and that mean nothing to this model (or that
# we check below). They are accepted and dropped; any other unknown key is an error.
_HF_IGNORED_KEYS = frozenset(
    {
        "_name_or_path",
        "architectures",
        "model_type",
        "transformers_version",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "sep_token_id",
        "torch_dtype",
        "use_cache",
        "classifier_dropout",
        "gradient_checkpointing",
        "tie_word_embeddings",
        "chunk_size_feed_forward",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "id2label",
        "label2id",
        "num_labels",
        "problem_type",
        "is_encoder_decoder",
        "finetuning_task",
        "tokenizer_class",
        "prefix",
        "task_specific_params",
        "torchscript",
        "pruned_heads",
        "tie_encoder_decoder",
        "decoder_start_token_id",
        "embedding_size",  # equals hidden_size in plain BERT; checked below when present
    }
)
# Keys whose value changes the architecture into something this model is not: accepted only
# with the value that means plain BERT.
_HF_REQUIRED_VALUES = {
    "position_embedding_type": "absolute",
    "is_decoder": False,
    "add_cross_attention": False,
}
# Google's multilingual / Chinese bert_config.json files carry these unused pooler fields.
_GOOGLE_IGNORED_KEYS = frozenset(
    {
        "directionality",
        "pooler_fc_size",
        "pooler_num_attention_heads",
        "pooler_num_fc_layers",
        "pooler_size_per_head",
        "pooler_type",
    }
)
# Marks a file written by Hugging Face. In such a file "dtype" is the storage dtype of the
# torch weights, not bert_jax's compute dtype, so it is ignored.
_HF_MARKER_KEYS = frozenset({"model_type", "transformers_version", "architectures"})

# The 11 keys of google-research/bert's bert_config.json.
GOOGLE_KEYS = (
    "attention_probs_dropout_prob",
    "hidden_act",
    "hidden_dropout_prob",
    "hidden_size",
    "initializer_range",
    "intermediate_size",
    "max_position_embeddings",
    "num_attention_heads",
    "num_hidden_layers",
    "type_vocab_size",
    "vocab_size",
)

# (num_hidden_layers, hidden_size, num_attention_heads) of Google's released BERT sizes
# (the 24 small BERTs of Turc et al. 2019, plus base and large).
PRESETS = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


class ConfigError(ValueError):
    """A BertConfig field, or a config file, holds a value the model cannot use."""


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    # bert_jax knobs (paper defaults).
    # False: post-LN as in BERT. True: x + f(LN(x)) in every sublayer and a final LayerNorm
    # after the stack (Xiong et al. 2020; the embedding LayerNorm stays, as in Megatron-BERT).
    pre_layer_norm: bool = False
    # False: bidirectional self-attention, as in BERT. True: position t attends to positions
    # <= t only (left-to-right, GPT; the paper's "LTR" rows of Table 5), in pretraining and in
    # fine-tuning alike, and the pooler reads the last real token (the only one that has seen
    # the whole input) instead of [CLS].
    causal_attention: bool = False
    scan_layers: bool = False  # True: nn.scan over one stacked layer (faster compile)
    remat: str = "none"  # see REMAT_POLICIES
    dtype: str = "float32"  # compute dtype of activations
    param_dtype: str = "float32"  # storage dtype of parameters
    # "cudnn" needs attention_probs_dropout_prob=0 (cuDNN's fused attention has no dropout; the
    # combination with dropout > 0 is a ConfigError, never a silent switch to XLA attention).
    attention_implementation: str = "xla"  # see ATTENTION_IMPLEMENTATIONS

    def __post_init__(self):
        self._validate()

    # ---------------------------------------------------------------- validation
    def _validate(self) -> None:
        int_fields = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        )
        for name in int_fields:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"BertConfig.{name} must be a positive integer, found {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"BertConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}; each head gets hidden_size / "
                f"num_attention_heads dimensions"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"BertConfig.{name} must be a probability in [0, 1), found {value!r}")
        for name in ("initializer_range", "layer_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"BertConfig.{name} must be a positive number, found {value!r}")
        _check_choice("hidden_act", self.hidden_act, HIDDEN_ACTS)
        _check_choice("dtype", self.dtype, COMPUTE_DTYPES)
        _check_choice("param_dtype", self.param_dtype, PARAM_DTYPES)
        _check_choice("remat", self.remat, REMAT_POLICIES)
        _check_choice("attention_implementation", self.attention_implementation, ATTENTION_IMPLEMENTATIONS)
        if self.attention_implementation == "cudnn" and self.attention_probs_dropout_prob > 0:
            p = self.attention_probs_dropout_prob
            raise ConfigError(
                f"BertConfig.attention_implementation='cudnn' cannot be combined with "
                f"attention_probs_dropout_prob={p!r}: cuDNN's fused attention has no dropout on the "
                f"attention probabilities. Choose one: attention_probs_dropout_prob=0.0 with "
                f"attention_implementation='cudnn' (as MosaicBERT and Cramming), or "
                f"attention_implementation='xla' with attention_probs_dropout_prob={p!r} (0.1 in the BERT paper)"
            )
        for name in ("pre_layer_norm", "causal_attention", "scan_layers"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"BertConfig.{name} must be true or false, found {getattr(self, name)!r}")

    def validate_vocab(self, vocab_path: str | os.PathLike) -> None:
        """Raises ConfigError unless the vocab (WordPiece vocab.txt or SentencePiece .model) has
        exactly vocab_size entries."""
        if os.fspath(vocab_path).endswith(".model"):
            import sentencepiece

            size = sentencepiece.SentencePieceProcessor(model_file=os.fspath(vocab_path)).get_piece_size()
        else:
            with open(vocab_path, encoding="utf-8") as f:
                text = f.read()
            # One token per line, as Google's tokenization.load_vocab reads it.
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            size = len(lines)
        if size != self.vocab_size:
            raise ConfigError(
                f"vocab file {os.fspath(vocab_path)} has {size} entries but "
                f"BertConfig.vocab_size is {self.vocab_size}; the embedding table must have "
                f"one row per vocab entry"
            )

    # ---------------------------------------------------------------- derived sizes
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ---------------------------------------------------------------- construction
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "BertConfig":
        """Google's released sizes: tiny, mini, small, medium, base, large (intermediate = 4H)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown BertConfig preset {name!r}; valid presets: {', '.join(PRESETS)}")
        layers, hidden, heads = PRESETS[name]
        fields = dict(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
        )
        fields.update(overrides)
        return cls.from_dict(fields, source=f"preset {name!r} overrides")

    def replace(self, **changes: Any) -> "BertConfig":
        return self.from_dict({**self.to_dict(), **changes}, source="BertConfig.replace")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config dict") -> "BertConfig":
        """Builds a config from a bert_jax, Google bert_config.json or HF config.json dict.

        Known Hugging Face / Google extras are dropped; any other key is an error naming it,
        `source` and the valid keys.
        """
        d = dict(d)
        valid = {f.name for f in dataclasses.fields(cls)}
        is_hf = bool(_HF_MARKER_KEYS & d.keys())
        kwargs = {}
        for key, value in d.items():
            if key in ("dtype", "torch_dtype") and is_hf:
                continue  # torch storage dtype of the HF weights, not our compute dtype
            if key in valid:
                kwargs[key] = value
            elif key in _HF_REQUIRED_VALUES:
                if value != _HF_REQUIRED_VALUES[key]:
                    raise ConfigError(
                        f"{source}: {key}={value!r} is not supported; bert_jax implements plain "
                        f"BERT ({key}={_HF_REQUIRED_VALUES[key]!r})"
                    )
            elif key in _HF_IGNORED_KEYS or key in _GOOGLE_IGNORED_KEYS:
                if key == "embedding_size" and value not in (None, d.get("hidden_size", value)):
                    raise ConfigError(
                        f"{source}: embedding_size={value!r} differs from hidden_size="
                        f"{d.get('hidden_size')!r}; factorised embeddings (ALBERT) are not supported"
                    )
                continue
            else:
                raise ConfigError(
                    f"{source}: unknown BertConfig key {key!r}; valid keys: {', '.join(sorted(valid))}"
                )
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """All fields, bert_jax knobs included (the bert_jax file format)."""
        return dataclasses.asdict(self)

    def to_google_dict(self) -> dict[str, Any]:
        """google-research/bert's bert_config.json. Raises if the model is not plain BERT."""
        self._check_exportable("Google bert_config.json")
        return {k: getattr(self, k) for k in GOOGLE_KEYS}

    def to_hf_dict(self, architectures: tuple[str, ...] = ("BertForPreTraining",)) -> dict[str, Any]:
        """Hugging Face's config.json, loadable by transformers.BertConfig.from_pretrained."""
        self._check_exportable("Hugging Face config.json")
        d = {k: getattr(self, k) for k in GOOGLE_KEYS}
        d.update(
            architectures=list(architectures),
            model_type="bert",
            layer_norm_eps=self.layer_norm_eps,
            pad_token_id=0,
            position_embedding_type="absolute",
        )
        return dict(sorted(d.items()))

    def _check_exportable(self, what: str) -> None:
        if self.pre_layer_norm:
            raise ConfigError(f"a pre_layer_norm=True model cannot be written as a {what}: that format means post-LN BERT")
        if self.causal_attention:
            raise ConfigError(f"a causal_attention=True model cannot be written as a {what}: that format means "
                              "bidirectional BERT with a [CLS] pooler")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BertConfig":
        """Reads a bert_jax, Google (bert_config.json) or Hugging Face (config.json) file."""
        path = os.fspath(path)
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path} must hold a JSON object of config fields, found {type(d).__name__}")
        return cls.from_dict(d, source=path)

    def to_json_file(self, path: str | os.PathLike, format: str = "bert_jax") -> None:
        """Writes `format` = "bert_jax" (all fields), "google" or "hf"."""
        writers = {"bert_jax": self.to_dict, "google": self.to_google_dict, "hf": self.to_hf_dict}
        if format not in writers:
            raise ConfigError(f"unknown config format {format!r}; valid formats: {', '.join(writers)}")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(writers[format](), f, indent=2, sort_keys=True)
            f.write("\n")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"BertConfig.{name}={value!r} is not supported; valid values: {', '.join(choices)}")
