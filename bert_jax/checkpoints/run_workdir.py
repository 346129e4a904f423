"""A bert_jax training run's workdir as a pretrained model: the params of its newest orbax
checkpoint (bert_jax.run_checkpoints), with the BertConfig the run recorded. The workdir's file
names, and what an export needs beyond the weights (`export_info`), are bert_jax.run_files's.

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

from bert_jax.run_files import CHECKPOINT_DIR, CONFIG_FILE, MODEL_CONFIG_FILE, RESULTS_FILE


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
