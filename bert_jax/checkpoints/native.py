"""bert_jax's own checkpoint format: a directory holding

    bert_jax_config.json   every BertConfig field, bert_jax knobs included (BertConfig.to_json_file)
    params.safetensors     the params tree, keys '/'-joined (`bert/encoder/layer_0/...`), in the
                           unstacked layer_{i} layout and the params' own dtype (bf16 stays bf16)
    vocab.txt              optional, when save_pretrained was given one

The safetensors header records {"format": "bert_jax", "format_version": "1"}. Unlike the
Hugging Face and Google formats it holds every parameter bert_jax has (pre-LN's final
LayerNorm, scanned or not) and round-trips exactly.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Mapping

import numpy as np

from bert_jax.checkpoints import validation
from bert_jax.checkpoints.validation import CheckpointError
from bert_jax.config import BertConfig

CONFIG_FILE = "bert_jax_config.json"
PARAMS_FILE = "params.safetensors"
VOCAB_FILE = "vocab.txt"
SPM_FILE = "spm.model"
FORMAT_NAME = "bert_jax"
FORMAT_VERSION = "1"


def is_native_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE))


def save(flat: Mapping[str, Any], config: BertConfig, directory: str, vocab_file: str | None = None) -> None:
    from safetensors.numpy import save_file

    validation.check_params(flat, config)
    if vocab_file is not None:
        config.validate_vocab(vocab_file)
    os.makedirs(directory, exist_ok=True)
    config.to_json_file(os.path.join(directory, CONFIG_FILE), format="bert_jax")
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flat.items()}
    save_file(
        arrays,
        os.path.join(directory, PARAMS_FILE),
        metadata={"format": FORMAT_NAME, "format_version": FORMAT_VERSION},
    )
    if vocab_file is not None:
        # A SentencePiece model keeps its own name (features.resolve_vocab_file looks for both).
        name = SPM_FILE if os.fspath(vocab_file).endswith(".model") else VOCAB_FILE
        shutil.copyfile(vocab_file, os.path.join(directory, name))


def load(directory: str, dtype=np.float32, check_vocab: bool = True) -> tuple[BertConfig, dict[str, Any]]:
    from safetensors import safe_open

    config_path = validation.require_file(directory, CONFIG_FILE, "bert_jax checkpoint")
    params_path = validation.require_file(directory, PARAMS_FILE, "bert_jax checkpoint")
    config = BertConfig.from_json_file(config_path)
    vocab_path = os.path.join(directory, VOCAB_FILE)
    if check_vocab and os.path.isfile(vocab_path):
        config.validate_vocab(vocab_path)
    with safe_open(params_path, framework="np") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT_NAME:
            raise CheckpointError(
                f"{params_path} was not written by bert_jax (header format={metadata.get('format')!r}, "
                f"expected {FORMAT_NAME!r})"
            )
        if metadata.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{params_path} has bert_jax format version {metadata.get('format_version')!r}; "
                f"this code reads version {FORMAT_VERSION}"
            )
        flat = {key: f.get_tensor(key) for key in f.keys()}
    validation.check_params(flat, config, where=params_path, config_source=config_path)
    if dtype is None:  # keep the stored dtype: an exact round trip
        return config, flat
    dtype = validation.resolve_dtype(dtype)
    return config, {k: v.astype(dtype) for k, v in flat.items()}
