"""google-research/bert TF1 checkpoints: bert_model.ckpt.{index,data-*} + bert_config.json + vocab.txt.

Variable names are those of Google's modeling.py / run_pretraining.py
(`bert/encoder/layer_3/attention/self/query/kernel`, `cls/seq_relationship/output_weights`,
...; see names.TABLE). Optimizer slots (`*/adam_m`, `*/adam_v`) and `global_step`, which
checkpoints written during pretraining carry, are skipped.

Note on "gelu": Google's TF code computes its tanh approximation under the name "gelu";
BertConfig (like Hugging Face, and every converted checkpoint) reads "gelu" as the exact erf
form. The two differ by less than 1e-3 per activation.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from typing import Any

import numpy as np

from bert_jax.checkpoints import names, staging, tensors, validation
from bert_jax.checkpoints.validation import CheckpointError
from bert_jax.config import BertConfig

CONFIG_FILE = "bert_config.json"
VOCAB_FILE = "vocab.txt"
DEFAULT_PREFIX = "bert_model.ckpt"


def is_tf_checkpoint(path: str) -> bool:
    """A directory with bert_config.json and a *.index file, or a checkpoint prefix."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, CONFIG_FILE)) and bool(glob.glob(os.path.join(path, "*.index")))
    return os.path.isfile(path + ".index")


def find_prefix(path: str) -> str:
    """The checkpoint prefix inside a directory (or `path` itself when it is a prefix)."""
    if not os.path.isdir(path):
        if os.path.isfile(path + ".index"):
            return path
        raise CheckpointError(f"{path} is neither a directory nor a TF checkpoint prefix ({path}.index does not exist)")
    if os.path.isfile(os.path.join(path, DEFAULT_PREFIX + ".index")):
        return os.path.join(path, DEFAULT_PREFIX)
    prefixes = sorted(p[: -len(".index")] for p in glob.glob(os.path.join(path, "*.index")))
    if len(prefixes) == 1:
        return prefixes[0]
    if not prefixes:
        raise CheckpointError(
            f"Google TF checkpoint directory {path} has no {DEFAULT_PREFIX}.index (nor any *.index); "
            f"found: {sorted(os.listdir(path))}"
        )
    # run_pretraining.py leaves model.ckpt-<step> files: take the newest step.
    steps = [re.search(r"-(\d+)$", p) for p in prefixes]
    if all(steps):
        return max(zip((int(s.group(1)) for s in steps), prefixes))[1]
    raise CheckpointError(
        f"{path} holds several TF checkpoints ({', '.join(os.path.basename(p) for p in prefixes)}); "
        f"pass the prefix of the one to load"
    )


def _skipped(name: str) -> bool:
    return name.endswith(names.TF_OPTIMIZER_SUFFIXES) or name in names.TF_SKIPPED_NAMES


def load(path: str, dtype=np.float32, check_vocab: bool = True) -> tuple[BertConfig, dict[str, Any]]:
    """A Google TF checkpoint directory (or prefix) -> (BertConfig, flat params)."""
    prefix = find_prefix(path)
    directory = os.path.dirname(prefix) or "."
    config_path = validation.require_file(directory, CONFIG_FILE, "Google TF checkpoint")
    config = BertConfig.from_json_file(config_path)
    vocab_path = os.path.join(directory, VOCAB_FILE)
    if not os.path.isfile(vocab_path):
        logging.warning("%s has no %s; the vocab size is not checked", directory, VOCAB_FILE)
    elif check_vocab:
        config.validate_vocab(vocab_path)
    try:
        import tensorflow as tf
    except ImportError:
        raise CheckpointError(f"reading the TF checkpoint {prefix} needs tensorflow (pip install tensorflow-cpu)") from None
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as e:  # tf raises NotFoundError / DataLossError with its own text
        raise CheckpointError(f"cannot read the TF checkpoint {prefix}: {e}") from None
    shapes = {
        name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items() if not _skipped(name)
    }
    source = tensors.TensorSource(prefix, shapes, reader.get_tensor)
    return config, tensors.import_params(source, "tf", config, config_path, dtype)


def save(flat: dict[str, Any], config: BertConfig, directory: str, vocab_file: str | None = None) -> None:
    """Writes a google-research/bert directory: bert_config.json, bert_model.ckpt.{index,data-*}
    with Google's variable names and layouts (names.TABLE), and vocab.txt when given.

    The checkpoint is TF's V2 format (the format of Google's released checkpoints), written by
    TF's own SaveV2 op, so `tf.train.load_checkpoint` and Google's `modeling.py` /
    `init_from_checkpoint` read it. Built in a temporary directory and moved into place: a failed
    export leaves nothing. A SentencePiece .model is refused (Google's code reads only vocab.txt).
    """
    import json
    import shutil

    google_dict = config.to_google_dict()
    if vocab_file is not None:
        vocab_file = os.fspath(vocab_file)
        if vocab_file.endswith(".model"):
            raise CheckpointError(
                f"cannot export {vocab_file} to the Google TF format: Google's tokenization.py reads a WordPiece "
                f"vocab.txt only; export with format='bert_jax' to keep the SentencePiece model")
        config.validate_vocab(vocab_file)
    state = tensors.export_params(flat, config, "tf")
    try:
        import tensorflow as tf
    except ImportError:
        raise CheckpointError("writing a Google TF checkpoint needs tensorflow (pip install tensorflow-cpu)") from None
    with staging.staged_directory(directory, stale=(DEFAULT_PREFIX + ".*", VOCAB_FILE)) as staged:
        with open(os.path.join(staged, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(google_dict, f, indent=2, sort_keys=True)
            f.write("\n")
        names_sorted = sorted(state)
        with tf.device("/cpu:0"):
            tf.raw_ops.SaveV2(prefix=os.path.join(staged, DEFAULT_PREFIX), tensor_names=names_sorted,
                              shape_and_slices=[""] * len(names_sorted),
                              tensors=[tf.constant(state[n], tf.float32) for n in names_sorted])
        if vocab_file is not None:
            shutil.copyfile(vocab_file, os.path.join(staged, VOCAB_FILE))
