"""The tokenizer files of a Hugging Face model directory, built from bert_jax's own tokenizer.

    tokenizer.json           the `tokenizers` pipeline bert_jax tokenises with (data_pipelines.
                             tokenization.WordPieceTokenizer: Python-unicodedata character classes,
                             Google's cleaning, lowercasing and accent stripping when uncased), plus
                             `[CLS] A [SEP] B [SEP]` post-processing with token types 0/1 and a
                             WordPiece decoder
    tokenizer_config.json    tokenizer class, do_lower_case, special tokens, model_max_length,
                             model_input_names (input_ids, token_type_ids, attention_mask)
    special_tokens_map.json  the five BERT special tokens
    vocab.txt                the Google vocabulary, for Google's code and slow tokenizers

Why `tokenizer_class` is "PreTrainedTokenizerFast" and not "BertTokenizer": transformers' BertTokenizer
(v5) discards the normalizer and pre-tokenizer of tokenizer.json and builds its own BertNormalizer /
BertPreTokenizer from `do_lower_case`. Those use Rust's Unicode tables, which differ from Python's
on some text (Greek final sigma when lowercasing, unassigned code points, newer punctuation), so
its ids would not always be ours. PreTrainedTokenizerFast runs tokenizer.json as written, in
transformers 4.x and 5.x alike: `AutoTokenizer.from_pretrained(dir)` gives bert_jax's ids exactly.
`do_lower_case` is still recorded for readers (and for Google's code, which takes it as a flag).

Difference from bert_jax, the usual Hugging Face convention: transformers registers the special
tokens as added tokens, so text that spells "[MASK]" becomes the [MASK] token there, while
bert_jax (like Google) tokenises it as `[`, `mask`, `]`.

A SentencePiece vocabulary is refused (TokenizerExportError): bert_jax lowercases with Python's
str.lower before SentencePiece and has no tokenizer.json that is known to reproduce its pieces;
the bert_jax format keeps the `.model` file.
"""

from __future__ import annotations

import json
import os

from bert_jax.checkpoints.validation import CheckpointError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
VOCAB_FILE = "vocab.txt"
FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, VOCAB_FILE)
TOKENIZER_CLASS = "PreTrainedTokenizerFast"
SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
            "mask_token": "[MASK]"}
MODEL_INPUT_NAMES = ["input_ids", "token_type_ids", "attention_mask"]


class TokenizerExportError(CheckpointError):
    """An export cannot write a tokenizer that reproduces bert_jax's; nothing was written."""


def build(vocab_file: str, lowercase: bool, vocab_size: int, model_max_length: int) -> dict[str, str]:
    """{file name: contents} of the tokenizer files, or TokenizerExportError. Writes nothing."""
    vocab_file = os.fspath(vocab_file)
    if vocab_file.endswith(".model"):
        raise TokenizerExportError(
            f"cannot export the SentencePiece vocabulary {vocab_file} as a Hugging Face tokenizer: bert_jax "
            f"lowercases with Python's str.lower and then runs SentencePiece, and there is no tokenizer.json "
            f"known to reproduce those pieces exactly, so transformers would tokenise differently from "
            f"training. Export with format='bert_jax' (convert --to bert_jax), which keeps the .model file, "
            f"or train a WordPiece vocab.txt (python -m data_pipelines.train_vocab --model_type wordpiece)")
    from tokenizers import decoders, processors

    from data_pipelines.tokenization import WordPieceTokenizer

    if not isinstance(lowercase, bool):
        raise TokenizerExportError(f"lowercase must be True (uncased) or False (cased), found {lowercase!r}")
    try:
        ours = WordPieceTokenizer(vocab_file, lowercase=lowercase)
    except (OSError, ValueError) as e:
        raise TokenizerExportError(f"cannot build a tokenizer from {vocab_file}: {e}") from None
    if ours.vocab_size != vocab_size:
        raise TokenizerExportError(
            f"{vocab_file} has {ours.vocab_size} entries but the model's vocab_size is {vocab_size}")
    # A token on several lines maps to its last line, as in Google's load_vocab; tokenizer.json
    # holds the same token -> id map, so the ids agree (the earlier lines' ids are never produced).
    rust = ours._rust  # the pipeline bert_jax itself encodes with
    rust.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ours.cls_id), ("[SEP]", ours.sep_id)])
    rust.decoder = decoders.WordPiece(prefix="##")
    tokenizer_config = {
        "tokenizer_class": TOKENIZER_CLASS,
        "do_lower_case": lowercase,
        "strip_accents": None,  # = do_lower_case, as Google's and transformers' BERT tokenizers do
        "tokenize_chinese_chars": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(model_max_length),
        "model_input_names": MODEL_INPUT_NAMES,
        "padding_side": "right",
        "truncation_side": "right",
        **SPECIALS,
    }
    with open(vocab_file, encoding="utf-8") as f:
        vocab_text = f.read()
    return {
        TOKENIZER_FILE: rust.to_str(pretty=True),
        TOKENIZER_CONFIG_FILE: json.dumps(tokenizer_config, indent=2) + "\n",
        SPECIAL_TOKENS_MAP_FILE: json.dumps(SPECIALS, indent=2) + "\n",
        VOCAB_FILE: vocab_text,
    }


def read_lowercase(directory: str) -> bool | None:
    """do_lower_case from a Hugging Face directory's tokenizer_config.json (None when absent)."""
    path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        value = json.load(f).get("do_lower_case")
    return value if isinstance(value, bool) else None
