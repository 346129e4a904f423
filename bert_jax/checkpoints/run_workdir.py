"""A bert_jax training run's workdir as a pretrained model: the params of its newest orbax
checkpoint (bert_jax.run_checkpoints), with the BertConfig the run recorded.

The trainer writes the run's config (`config.model` = the BertConfig fields) into
results.json when the run ends; a run that has not finished has no record of it yet.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from bert_jax.checkpoints import validation
from bert_jax.checkpoints.validation import CheckpointError
from bert_jax.config import BertConfig

CHECKPOINT_DIR = "checkpoints"  # = bert_jax.run_checkpoints.CHECKPOINT_DIR (not imported: orbax is heavy)
RESULTS_FILE = "results.json"  # = bert_jax.train.RESULTS_FILE


def is_run_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, CHECKPOINT_DIR))


def read_config(workdir: str) -> BertConfig:
    results_path = os.path.join(workdir, RESULTS_FILE)
    if not os.path.isfile(results_path):
        raise CheckpointError(
            f"run workdir {workdir} has checkpoints/ but no {RESULTS_FILE}, which is where the trainer "
            f"records the model config (config.model) when the run ends; export the params with "
            f"save_pretrained and the run's BertConfig instead"
        )
    with open(results_path, encoding="utf-8") as f:
        results = json.load(f)
    model = (results.get("config") or {}).get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"{results_path} has no config.model object with the BertConfig fields")
    return BertConfig.from_dict(model, source=f"{results_path} config.model")


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
    validation.check_params(flat, config, where=where, config_source=os.path.join(workdir, RESULTS_FILE))
    dtype = validation.resolve_dtype(dtype)
    return config, {k: np.asarray(v).astype(dtype) for k, v in flat.items()}
