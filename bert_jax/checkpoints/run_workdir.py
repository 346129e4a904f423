"""A bert_jax training run's workdir as a pretrained model: the params of its newest orbax
checkpoint (bert_jax.run_checkpoints), with the BertConfig the run recorded.

The trainer writes the run's BertConfig (model_config.json) and its resolved config
(config.json) before step 1, so the workdir of a run that is still going, or was stopped
before its end, is as usable as a finished one: its newest complete checkpoint is taken.
Runs from before those files existed have the config in results.json (finished runs only).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from etils import epath

from bert_jax.checkpoints import validation
from bert_jax.checkpoints.validation import CheckpointError
from bert_jax.config import BertConfig

CHECKPOINT_DIR = "checkpoints"  # = bert_jax.run_checkpoints.CHECKPOINT_DIR (not imported: orbax is heavy)
RESULTS_FILE = "results.json"  # = bert_jax.train.RESULTS_FILE
MODEL_CONFIG_FILE = "model_config.json"  # = bert_jax.train.MODEL_CONFIG_FILE
CONFIG_FILE = "config.json"  # = bert_jax.train.CONFIG_FILE


def is_run_workdir(path: str) -> bool:
    return (epath.Path(path) / CHECKPOINT_DIR).is_dir()


def config_source(workdir: str) -> str:
    """The file that holds the run's BertConfig (see read_config)."""
    for name in (MODEL_CONFIG_FILE, CONFIG_FILE, RESULTS_FILE):
        if (epath.Path(workdir) / name).is_file():
            return os.fspath(epath.Path(workdir) / name)
    raise CheckpointError(
        f"run workdir {workdir} has checkpoints/ but none of {MODEL_CONFIG_FILE}, {CONFIG_FILE}, "
        f"{RESULTS_FILE}, where the trainer records the model config; export the params with "
        f"save_pretrained and the run's BertConfig instead")


def read_config(workdir: str) -> BertConfig:
    path = config_source(workdir)
    data = json.loads(epath.Path(path).read_text())
    if path.endswith(MODEL_CONFIG_FILE):
        model, where = data, path
    elif path.endswith(CONFIG_FILE):
        model, where = data.get("model"), f"{path} model"
    else:
        model, where = (data.get("config") or {}).get("model"), f"{path} config.model"
    if not isinstance(model, dict):
        raise CheckpointError(f"{where}: expected an object with the BertConfig fields, found {type(model).__name__}")
    return BertConfig.from_dict(model, source=where)


def load(workdir: str, dtype=np.float32, check_vocab: bool = True) -> tuple[BertConfig, dict[str, Any]]:
    """(BertConfig, flat params in the unstacked layout) from the newest checkpoint of a run."""
    del check_vocab  # a run workdir holds no vocab file
    config = read_config(workdir)
    from bert_jax import run_checkpoints
    from bert_jax.modeling.encoder import unstack_layers

    try:
        params, step = run_checkpoints.restore_params(workdir)
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None
    flat = validation.flatten(unstack_layers(params))  # a scan_layers run stores bert/encoder/layers
    where = f"{os.path.join(workdir, CHECKPOINT_DIR, str(step))} (params)"
    validation.check_params(flat, config, where=where, config_source=config_source(workdir))
    dtype = validation.resolve_dtype(dtype)
    return config, {k: np.asarray(v).astype(dtype) for k, v in flat.items()}


HEAD_FILE = "head.json"  # = bert_jax.train.HEAD_FILE
DATA_RECORD_FILES = ("metadata.json", "recipe.json")  # create_pretraining_data's record of its vocab


def _read_json(path: epath.Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} as JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _run_config(workdir: str) -> dict:
    for name, key in ((CONFIG_FILE, None), (RESULTS_FILE, "config")):
        path = epath.Path(workdir) / name
        if path.is_file():
            data = _read_json(path)
            return (data.get(key) or {}) if key else data
    return {}


def _vocab_beside(checkpoint: str) -> str | None:
    for name in ("vocab.txt", "spm.model"):
        if os.path.isfile(os.path.join(checkpoint, name)):
            return os.path.join(checkpoint, name)
    return None


def _data_record(input_files: str) -> tuple[str | None, bool | None, str | None]:
    """(vocab_file, do_lower_case, the record read) from create_pretraining_data's metadata.json /
    recipe.json beside the first pattern of config.data.input_files."""
    for pattern in [p for p in str(input_files or "").split(",") if p.strip()][:1]:
        directory = os.path.dirname(pattern.strip())
        for name in DATA_RECORD_FILES:
            path = epath.Path(directory) / name
            if path.is_file():
                data = _read_json(path)  # both hold do_lower_case; only metadata.json the vocab's path
                vocab = data.get("vocab_file")
                lower = data.get("do_lower_case")
                return vocab or None, lower if isinstance(lower, bool) else None, os.fspath(path)
    return None, None, None


def export_info(workdir: str) -> dict[str, Any]:
    """What an export of this run needs beyond its weights, from the files the trainer (and
    create_pretraining_data) recorded: {"vocab_file", "lowercase", "label_names",
    "architecture", "sources": [where each came from]}. Missing facts are None.

    vocab: config.vocab_file (fine-tuning), else config.data.vocab_file (pretraining), else the
    vocab recorded by create_pretraining_data beside config.data.input_files, else the vocab
    of config.init_from (a run workdir, recursively, or a vocab.txt / spm.model beside it).
    lowercase: config.lowercase (fine-tuning) or the data record's do_lower_case.
    head: head.json (model class and label names), else results.json's config.task.labels.
    """
    config = _run_config(workdir)
    data = config.get("data") or {}
    sources: list[str] = []
    vocab = config.get("vocab_file") or data.get("vocab_file") or None
    lowercase = config.get("lowercase") if isinstance(config.get("lowercase"), bool) else None
    if vocab:
        sources.append(f"vocab from {workdir}/{CONFIG_FILE}")
    record_vocab, record_lower, record = _data_record(data.get("input_files", ""))
    if not vocab and record_vocab:
        vocab = record_vocab
        sources.append(f"vocab from {record}")
    if lowercase is None and record_lower is not None:
        lowercase = record_lower
        sources.append(f"do_lower_case from {record}")
    init_from = str(config.get("init_from") or "")
    if init_from and (not vocab or lowercase is None) and os.path.isdir(init_from):
        if is_run_workdir(init_from):
            parent = export_info(init_from)
            parent_vocab, parent_lower = parent["vocab_file"], parent["lowercase"]
        else:
            from bert_jax.checkpoints import hf_tokenizer
            parent_vocab, parent_lower = _vocab_beside(init_from), hf_tokenizer.read_lowercase(init_from)
        if not vocab and parent_vocab:
            vocab = parent_vocab
            sources.append(f"vocab of init_from={init_from}")
        if lowercase is None and parent_lower is not None:
            lowercase = parent_lower
            sources.append(f"do_lower_case of init_from={init_from}")
    architecture = label_names = None
    head_path = epath.Path(workdir) / HEAD_FILE
    if head_path.is_file():
        head = _read_json(head_path)
        architecture, label_names = head.get("model_class"), head.get("label_names")
        sources.append(f"head from {head_path}")
    else:
        labels = (config.get("task") or {}).get("labels")
        if isinstance(labels, str) and labels:
            label_names = labels.split(",")
            sources.append("label names from config.task.labels")
    if architecture not in ("BertForSequenceClassification", "BertForTokenClassification",
                            "BertForQuestionAnswering", "BertForPreTraining", "BertForMaskedLM"):
        architecture = None  # the params' keys decide
    return {"vocab_file": vocab, "lowercase": lowercase, "label_names": label_names,
            "architecture": architecture, "sources": sources}
