"""Pretrained checkpoints in and out: Hugging Face, Google TF and bert_jax's own format.

    config, params = load_pretrained(path)                  # format detected from the files
    save_pretrained(params, config, out_dir, format="hf", vocab_file="vocab.txt")  # or "google", "bert_jax"

`params` is the tree of docs/ARCHITECTURE.md in the unstacked `layer_{i}` layout, as numpy
arrays: `bert/...`, plus `cls/...` (MLM and NSP heads), `classifier/...` or `qa_outputs/...`
when the checkpoint holds them. Every import and export is the one rename table in
`names.py` plus reshapes; any disagreement between a checkpoint and its config (missing key,
unexpected key, shape) raises CheckpointError naming the parameter, both shapes and the file.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Mapping, Sequence

import numpy as np

from bert_jax import run_files
from bert_jax.checkpoints import google_tf, hf, hf_tokenizer, hub, native, run_workdir, validation
from bert_jax.checkpoints.hf_tokenizer import TokenizerExportError
from bert_jax.checkpoints.validation import CheckpointError, flatten, unflatten
from bert_jax.config import BertConfig

FORMATS = ("bert_jax", "hf", "google_tf", "run_workdir")

__all__ = ["CheckpointError", "TokenizerExportError", "FORMATS", "detect_format", "load_config", "load_pretrained",
           "resolve_path", "save_pretrained"]

resolve_path = hub.resolve  # a local path, or the Hub snapshot directory of an id


def detect_format(path: str | os.PathLike) -> str:
    """'bert_jax', 'hf', 'google_tf' or 'run_workdir' for a directory (or a TF checkpoint prefix).
    A Hugging Face Hub id is resolved to its snapshot directory first (`hub.resolve`)."""
    path = hub.resolve(path)
    if "://" in os.fspath(path) and run_files.is_run_workdir(path):
        return "run_workdir"  # gs://...: a run's workdir in a bucket (etils.epath and orbax read it)
    if os.path.isdir(path):
        if native.is_native_dir(path):
            return "bert_jax"
        if run_files.is_run_workdir(path):
            return "run_workdir"
        if hf.is_hf_dir(path):
            return "hf"
        if os.path.isfile(os.path.join(path, google_tf.CONFIG_FILE)) or glob.glob(os.path.join(path, "*.index")):
            return "google_tf"  # google_tf.load names the missing config or checkpoint
        if os.path.isfile(os.path.join(path, hf.CONFIG_FILE)):
            return "hf"  # hf.load names the missing weights file
        raise CheckpointError(
            f"{path} is not a checkpoint directory bert_jax can read. Expected one of:\n"
            f"  bert_jax:      {native.CONFIG_FILE} + {native.PARAMS_FILE}\n"
            f"  Hugging Face:  {hf.CONFIG_FILE} + {hf.SAFETENSORS_FILE} or {hf.TORCH_FILE}\n"
            f"  Google TF:     {google_tf.CONFIG_FILE} + {google_tf.DEFAULT_PREFIX}.index/.data-* (+ vocab.txt)\n"
            f"  training run:  {run_files.CHECKPOINT_DIR}/ (orbax) + {run_files.MODEL_CONFIG_FILE}\n"
            f"found: {sorted(os.listdir(path))}"
        )
    if google_tf.is_tf_checkpoint(path):
        return "google_tf"
    if os.path.isfile(path):
        raise CheckpointError(f"{path} is a file; pass the checkpoint directory that holds it")
    raise CheckpointError(f"checkpoint path {path} does not exist")


def load_config(path: str | os.PathLike) -> BertConfig:
    """The BertConfig of a checkpoint (any format load_pretrained reads), without its weights."""
    path = hub.resolve(path)
    fmt = detect_format(path)
    if fmt == "run_workdir":
        return run_workdir.read_config(path)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    what = {"bert_jax": "bert_jax checkpoint", "hf": "Hugging Face checkpoint", "google_tf": "Google TF checkpoint"}[fmt]
    filename = {"bert_jax": native.CONFIG_FILE, "hf": hf.CONFIG_FILE, "google_tf": google_tf.CONFIG_FILE}[fmt]
    return BertConfig.from_json_file(validation.require_file(directory, filename, what))


def load_pretrained(
    path: str | os.PathLike, dtype: Any = np.float32, check_vocab: bool = True, allow_nonfinite: bool = False
) -> tuple[BertConfig, dict[str, Any]]:
    """Reads a checkpoint -> (BertConfig, params) with numpy leaves of `dtype`.

    `path` is a Hugging Face directory (config.json + model.safetensors / pytorch_model.bin),
    a google-research/bert directory (bert_config.json + bert_model.ckpt.* + vocab.txt) or a
    TF checkpoint prefix, a bert_jax directory (save_pretrained(format="bert_jax")), or a
    bert_jax training run's workdir (params of its newest checkpoint). When
    the directory has a vocab.txt, its size must equal config.vocab_size (check_vocab=False
    skips that). dtype=None keeps a bert_jax checkpoint's stored dtype. A Hugging Face Hub id
    (`google-bert/bert-base-uncased`) is read from the huggingface_hub cache, or downloaded when
    there is a network (`hub.resolve`). NaN or Inf weights are refused unless `allow_nonfinite`.
    """
    path = hub.resolve(path)
    fmt = detect_format(path)
    if fmt == "bert_jax":
        config, flat = native.load(path, dtype, check_vocab)
    else:
        loader = {"hf": hf.load, "google_tf": google_tf.load, "run_workdir": run_workdir.load}[fmt]
        config, flat = loader(path, np.float32 if dtype is None else dtype, check_vocab)
    if not allow_nonfinite:
        validation.check_finite(flat, os.fspath(path))
    return config, unflatten(flat)


def save_pretrained(
    params: Mapping[str, Any],
    config: BertConfig,
    path: str | os.PathLike,
    format: str = "hf",
    vocab_file: str | os.PathLike | None = None,
    lowercase: bool = True,
    label_names: Sequence[str] | None = None,
    architecture: str | None = None,
) -> None:
    """Writes `params` (loop or scan layout, numpy or jax leaves) as a checkpoint directory.

    format="hf": config.json + model.safetensors with BertForPreTraining keys (`bert.*`,
    `cls.*`), float32, for transformers' `from_pretrained`; with `vocab_file` (a WordPiece
    vocab.txt) also tokenizer.json, tokenizer_config.json (do_lower_case=`lowercase`) and
    special_tokens_map.json, so AutoTokenizer gives bert_jax's ids (`hf_tokenizer`); a
    SentencePiece .model raises TokenizerExportError. `label_names` fill id2label/label2id;
    `architecture` names the transformers class (e.g. "BertForTokenClassification").
    format="google": google-research/bert's bert_config.json + bert_model.ckpt.* (TF V2
    checkpoint, Google's variable names) + vocab.txt.
    format="bert_jax": every parameter in its own dtype, exact.
    `vocab_file` is checked against config.vocab_size and copied in. The hf and google exports
    are built in a temporary directory and moved into place; a failed one leaves nothing.
    """
    if format not in ("hf", "bert_jax", "google"):
        raise ValueError(f"save_pretrained: format must be 'hf', 'google' or 'bert_jax', found {format!r}")
    flat = flatten(_plain_tree(params))
    vocab_file = None if vocab_file is None else os.fspath(vocab_file)
    if format == "hf":
        hf.save(flat, config, os.fspath(path), vocab_file, lowercase=lowercase, label_names=label_names,
                architecture=architecture)
    elif format == "google":
        google_tf.save(flat, config, os.fspath(path), vocab_file)
    else:
        native.save(flat, config, os.fspath(path), vocab_file)


def _plain_tree(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """Unwraps {'params': ...}, strips Flax partitioning boxes, unstacks scanned layers."""
    params = validation.unwrap_variables(params)
    leaves_boxed_or_scanned = any(
        "/layers/" in k or not hasattr(v, "shape") for k, v in _flatten_any(params).items()
    )
    if leaves_boxed_or_scanned:
        from bert_jax.modeling.encoder import unstack_layers  # unboxes too

        params = unstack_layers(params)
    return params


def _flatten_any(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(_flatten_any(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    return {prefix: tree}
