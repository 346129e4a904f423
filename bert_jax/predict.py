"""The one prediction loop: `Predictor` runs `task.predict` (jitted) over finite global batches on a mesh.

The trainer's evaluation, GLUE's test-set predictions (`tasks.glue.write_test_predictions`) and
`benchmarks/mlm_eval.py` all run through it; callers that hold a loaded checkpoint rather than a
training state get one from `pretrained_predictor`. Tasks get a Predictor passed in; they never
import the trainer.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import linen as nn

from bert_jax import sharding
from bert_jax.batch_checks import check_index_ranges
from bert_jax.metrics_logging import eval_progress
from bert_jax.train_utils import merge_pretrained, param_layout


def check_token_ids(batch: dict, vocab_size: int, where: str) -> None:
    """Ids outside [0, vocab_size) would read past the embedding table inside jit (a NaN row,
    or a silently clamped one): refuse them on the host, naming where (e.g. "step 7") and the id."""
    for name in ("input_ids", "masked_lm_ids"):
        ids = batch.get(name)
        if ids is None or ids.size == 0:
            continue
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"{where}: batch field {name!r} holds token id {bad}, outside [0, {vocab_size}) "
                f"(model.vocab_size={vocab_size}); the data was made with a different vocabulary "
                "than the model's (check data.vocab_file / the instances' metadata.json)")


def _process_rows(batch: dict, process_index: int, process_count: int) -> dict:
    """This process's rows of a global batch."""
    n = next(iter(batch.values())).shape[0]
    if n % process_count:
        raise ValueError(f"eval batch of {n} rows is not divisible by {process_count} processes")
    per = n // process_count
    return {k: v[process_index * per:(process_index + 1) * per] for k, v in batch.items()}


class Predictor:
    """The one prediction loop: `task.predict` (jitted) over finite global batches on a mesh.

    Each process feeds its rows of every global batch and gets the outputs of all rows back
    (replicated), so `task.evaluate` / `write_predictions` see every example. Every batch has its
    token ids checked first (`check_token_ids`, naming "eval batch i of <where>"). The trainer's
    evaluation, GLUE's test-set predictions (`tasks.glue.write_test_predictions`) and
    `benchmarks/mlm_eval.py` all run through it (`pretrained_predictor` for a loaded checkpoint)."""

    def __init__(self, task, model, mesh, rules, param_shardings, vocab_size: int, type_vocab_size: int | None = None):
        self.mesh, self.rules, self.vocab_size = mesh, rules, int(vocab_size)
        self.type_vocab_size = type_vocab_size  # given: segment ids, masked positions, NSP labels range-checked too
        self.data_parallel = sharding.data_parallel_size(mesh)
        self._step = jax.jit(lambda params, batch: task.predict(model, params, batch),
                             in_shardings=(param_shardings, sharding.batch_sharding(mesh, 1)),
                             out_shardings=sharding.replicated(mesh))

    def __call__(self, params, batches, where: str, progress: bool = False) -> tuple[list[dict], list[dict]]:
        """(predictions: one dict of numpy arrays per batch, the global batches), in order."""
        predictions, seen = [], []
        process_index, process_count = jax.process_index(), jax.process_count()
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            for i, global_batch in enumerate(eval_progress(batches, enabled=progress)):
                what = f"eval batch {i + 1} of {where}"
                check_token_ids(global_batch, self.vocab_size, what)
                if self.type_vocab_size is not None:
                    check_index_ranges(global_batch, self.type_vocab_size, what)
                rows = next(iter(global_batch.values())).shape[0]
                if rows % self.data_parallel:
                    raise ValueError(f"{what}: {rows} rows are not divisible by the {self.data_parallel} "
                                     "data-parallel devices (mesh data x fsdp); make the eval batch size a "
                                     "multiple of them (config.train.eval_batch_size)")
                local = _process_rows(global_batch, process_index, process_count)
                out = self._step(params, sharding.make_global_batch(local, self.mesh))
                predictions.append(jax.tree.map(np.asarray, out))
                seen.append(global_batch)
        return predictions, seen


def pretrained_predictor(task, bert_config, loaded_params, source: str, mesh_config=None,
                         devices=None) -> tuple[Predictor, Any]:
    """(Predictor, params on its mesh) for `task`'s model with a checkpoint's params.

    The params are put into the model's layout (scanned or not) by `merge_pretrained`; a
    parameter the model needs that the checkpoint lacks is an error naming it (an evaluation
    never runs a freshly initialised head). `mesh_config` defaults to data parallel over
    `devices` (default: all)."""
    mesh_config = mesh_config or {"data": -1, "fsdp": 1, "tensor": 1, "rules": "data_parallel"}
    model = task.make_model(bert_config)
    mesh = sharding.make_mesh(mesh_config, devices)
    rules = sharding.axis_rules(mesh_config["rules"])
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract_params, param_shardings = param_layout(model, mesh, rules)
    merged, _, missing = merge_pretrained(abstract_params, loaded_params, source)
    if missing:
        raise ValueError(f"{source}: the checkpoint lacks {len(missing)} parameter(s) that "
                         f"{type(model).__name__} needs to predict: {', '.join(missing[:8])}")
    params = jax.device_put(merged, param_shardings)
    return Predictor(task, model, mesh, rules, param_shardings, bert_config.vocab_size,
                     bert_config.type_vocab_size), params
