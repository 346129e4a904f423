"""One timed train step: the trainer's own step, compiled as the trainer compiles it, timed per step.

    step = compile_step(config, task, batch_size)           # under config.mesh and its rules
    figures = time_train_step(step, steps=10, warmup=2)     # tokens/s, step time, MFU, ...

`compile_step` builds the run's parts with `train_utils.build` (model, mesh, logical axis rules,
optimizer, state layout) and lowers `jit_train_step` inside `jax.set_mesh(mesh)` and
`nn.logical_axis_rules(rules)`, as `train.train_and_evaluate` does. Without the rules installed,
flax's `with_logical_constraint` maps every activation to "replicated" and the timed program is
another one than the trainer's under tensor or FSDP rules. `python -m bert_jax.benchmark` and
`benchmarks/gpu_check.py` both time through here.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
from flax import linen as nn

from bert_jax import flops as flops_lib
from bert_jax import sharding, train_utils


@dataclasses.dataclass
class CompiledStep:
    run: train_utils.TrainSetup
    compiled: Any  # the compiled jit step: (state, batch) -> (state, metrics)
    state: Any  # a fresh TrainState on its shardings (donated at every call)
    batches: list  # two global batches, alternated
    batch_size: int
    seq_len: int
    masked_predictions: int  # per sequence (0 without an MLM head)
    nsp: bool
    compile_time_s: float
    facts: dict  # train_utils.compiled_step_facts
    stablehlo: str  # the lowered program, before XLA's passes


def compile_step(config, task, batch_size: int, devices=None) -> CompiledStep:
    """The trainer's jit step for `config` (train.num_steps and optimizer.warmup_steps set),
    compiled ahead of time for two of `task`'s training batches of `batch_size` sequences."""
    run = train_utils.build(config, task, devices)
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
        state = run.layout.fresh_state(run.tx, run.layout.init_params())
        data = task.train_iterator(batch_size, int(config.seed))
        batches = [sharding.make_global_batch(next(data), run.mesh) for _ in range(2)]
        compiled, compile_time, facts, stablehlo = train_utils.compile_train_step(
            run.jit_train_step(task), state, batches[0])
    first = batches[0]
    return CompiledStep(
        run=run, compiled=compiled, state=state, batches=batches, batch_size=batch_size,
        seq_len=int(first["input_ids"].shape[1]),
        masked_predictions=int(first["masked_lm_positions"].shape[1]) if "masked_lm_positions" in first else 0,
        nsp="next_sentence_labels" in first, compile_time_s=compile_time,
        facts=facts, stablehlo=stablehlo)


def time_train_step(step: CompiledStep, steps: int, warmup: int, peak_flops: float = 0.0) -> dict:
    """Runs `warmup` + `steps` steps, each timed from dispatch to `block_until_ready` (as the
    trainer times the step_time_s it logs), and returns the figures of the `steps` timed ones:
    median and min step time, tokens/s and sequences/s at the median, model FLOPs per token,
    MFU against `peak_flops` (0: flops.peak_flops_per_device) and where that peak came from."""
    state, times = step.state, []
    with jax.set_mesh(step.run.mesh), nn.logical_axis_rules(step.run.rules):
        for i in range(warmup + steps):
            start = time.perf_counter()
            state, metrics = step.compiled(state, step.batches[i % 2])
            jax.block_until_ready(metrics)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    step.state = state  # the old one was donated
    step_time = statistics.median(times)
    tokens_per_s = step.batch_size * step.seq_len / step_time
    flops_per_token = flops_lib.training_flops_per_token(step.run.bert_config, step.seq_len,
                                                         step.masked_predictions, nsp=step.nsp)
    peak, peak_source = flops_lib.peak_flops_per_device(peak_flops)
    devices = step.run.mesh.devices.size
    return {
        "tokens_per_s": tokens_per_s, "sequences_per_s": step.batch_size / step_time,
        "step_time_s": step_time, "step_time_min_s": min(times), "step_times_s": times,
        "model_flops_per_token": flops_per_token,
        "mfu": flops_lib.mfu(tokens_per_s, flops_per_token, peak, peak_source, devices),
        "peak_flops": peak, "peak_flops_source": peak_source, "devices": devices,
        "final_loss": float(metrics["loss"]), "compile_time_s": step.compile_time_s,
    }
