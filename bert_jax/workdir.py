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

from etils import epath

log = logging.getLogger("bert_jax.workdir")

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
