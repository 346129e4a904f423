"""One owner of a run's workdir: the name of every file a run writes, and their writers and readers.

    workdir/
      config.json         the resolved config of the newest start, written before step 1
      model_config.json   the run's BertConfig (the fields of config.model)
      head.json           {"model_class", "label_names"}: the model's head, for exports
      starts.jsonl        one line per start of the run (see record_start)
      metrics.jsonl       one line per logged step (bert_jax.metrics_logging)
      tensorboard/        TensorBoard event files (bert_jax.metrics_logging)
      checkpoints/        orbax checkpoints, one directory per step (bert_jax.run_checkpoints)
      damaged_checkpoints/  steps that failed to restore, moved aside (bert_jax.run_checkpoints)
      predictions/        a task's predictions, when it writes them
      results.json        the results dict of a finished run

Everything else asks this module for a name; no file name of a run is written anywhere else.
Light imports only (json, etils.epath): the checkpoint loaders and the sweep read runs without jax.
"""

from __future__ import annotations

import datetime
import dataclasses
import json
import logging
import os
from typing import Any

from etils import epath

log = logging.getLogger("bert_jax.run_files")

CONFIG_FILE = "config.json"
MODEL_CONFIG_FILE = "model_config.json"
HEAD_FILE = "head.json"
# One line per start of the run: {"start", "time", "restored_step", "process_count", "device_count",
# "changed": {dotted field: [value at the previous start, value now]}}. config.json holds the
# config of the newest start; the lines' "changed" lead back to every earlier one.
STARTS_FILE = "starts.jsonl"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"  # steps that failed to restore, moved out of orbax's sight
PREDICTIONS_DIR = "predictions"
RESULTS_FILE = "results.json"


def write_json_atomic(path: epath.Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def _flat_fields(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat_fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(previous: dict, current: dict) -> dict[str, list]:
    """{dotted field: [previous value, current value]} for every field that differs (a field
    only one side has shows None on the other)."""
    normal = lambda tree: _flat_fields(json.loads(json.dumps(tree, default=str)))
    before, now = normal(previous), normal(current)
    return {k: [before.get(k), now.get(k)] for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)}


def record_start(workdir: epath.Path, config_dict: dict, restored_step: int | None, process_count: int,
                 device_count: int) -> None:
    """Appends this start to starts.jsonl, with the fields that differ from the previous start's
    config.json (a resume with a changed config shows, and so does a rerun of a fresh workdir)."""
    previous = workdir / CONFIG_FILE
    changed = config_changes(json.loads(previous.read_text(encoding="utf-8")), config_dict) if previous.is_file() else {}
    if changed:
        log.warning("this start's config differs from the previous start's in %d field(s): %s", len(changed),
                    ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    path = workdir / STARTS_FILE
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    lines = [line for line in lines if line.strip()]
    row = {"start": len(lines), "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "restored_step": restored_step, "process_count": process_count, "device_count": device_count,
           "changed": changed}
    tmp = path.with_name(path.name + ".tmp")  # rewritten whole: appends are not atomic (nor on gs://)
    tmp.write_text("".join(line + "\n" for line in [*lines, json.dumps(row, default=str)]), encoding="utf-8")
    tmp.replace(path)


def record_run(workdir: epath.Path, config_dict: dict, bert_config, model, label_names, restored_step: int | None,
               process_count: int, device_count: int) -> None:
    """Before step 1: this start (starts.jsonl), the resolved config, the BertConfig, and what an
    export needs beyond the weights (head.json: the transformers head class, which our model
    classes' names follow, and the class names, index i = output i; see bert_jax.convert)."""
    record_start(workdir, config_dict, restored_step, process_count, device_count)
    write_json_atomic(workdir / CONFIG_FILE, config_dict)
    write_json_atomic(workdir / MODEL_CONFIG_FILE, dataclasses.asdict(bert_config))
    write_json_atomic(workdir / HEAD_FILE, {"model_class": type(model).__name__,
                                            "label_names": None if label_names is None else list(label_names)})


# --------------------------------------------------------------------------- readers


class WorkdirError(ValueError):
    """A run's file that cannot be read as what the trainer writes there."""


def is_run_workdir(path) -> bool:
    return (epath.Path(path) / CHECKPOINT_DIR).is_dir()


DATA_RECORD_FILES = ("metadata.json", "recipe.json")  # create_pretraining_data's record of its vocab


def read_json(path: epath.Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WorkdirError(f"cannot read {path} as JSON: {e}") from None
    if not isinstance(data, dict):
        raise WorkdirError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def read_run_config(workdir: str) -> dict:
    """The run's resolved config as a dict: config.json, else results.json's "config" ({} if neither)."""
    for name, key in ((CONFIG_FILE, None), (RESULTS_FILE, "config")):
        path = epath.Path(workdir) / name
        if path.is_file():
            data = read_json(path)
            return (data.get(key) or {}) if key else data
    return {}


def vocab_beside(checkpoint: str) -> str | None:
    """The vocabulary in a checkpoint directory (its vocab.txt, else its spm.model), or None."""
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
                data = read_json(path)  # both hold do_lower_case; only metadata.json the vocab's path
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
    config = read_run_config(workdir)
    data = config.get("data") or {}
    sources: list[str] = []
    vocab = config.get("vocab_file") or data.get("vocab_file") or None
    lowercase = config.get("lowercase") if isinstance(config.get("lowercase"), bool) else None
    if vocab:
        sources.append(f"vocab from {workdir}/{CONFIG_FILE}")

    def fill_from(found_vocab, found_lower, where: str) -> None:
        """Takes what is still unknown from a fallback source, and names the source."""
        nonlocal vocab, lowercase
        if not vocab and found_vocab:
            vocab = found_vocab
            sources.append(f"vocab {where}")
        if lowercase is None and found_lower is not None:
            lowercase = found_lower
            sources.append(f"do_lower_case {where}")

    record_vocab, record_lower, record = _data_record(data.get("input_files", ""))
    fill_from(record_vocab, record_lower, f"from {record}")
    init_from = str(config.get("init_from") or "")
    if init_from and (not vocab or lowercase is None) and os.path.isdir(init_from):
        if is_run_workdir(init_from):
            parent = export_info(init_from)
            parent_vocab, parent_lower = parent["vocab_file"], parent["lowercase"]
        else:
            from bert_jax.checkpoints import hf_tokenizer
            parent_vocab, parent_lower = vocab_beside(init_from), hf_tokenizer.read_lowercase(init_from)
        fill_from(parent_vocab, parent_lower, f"of init_from={init_from}")
    architecture = label_names = None
    head_path = epath.Path(workdir) / HEAD_FILE
    if head_path.is_file():
        head = read_json(head_path)
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


def read_results(workdir) -> dict:
    """results.json of a finished run."""
    return read_json(epath.Path(workdir) / RESULTS_FILE)


def read_head(workdir) -> dict | None:
    """head.json ({"model_class", "label_names"}), None for runs from before it existed."""
    path = epath.Path(workdir) / HEAD_FILE
    return read_json(path) if path.is_file() else None


def read_metrics(workdir) -> list[dict]:
    """The rows of metrics.jsonl ({"step", "split", name: value}); [] before the first one."""
    path = epath.Path(workdir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
