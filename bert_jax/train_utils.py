"""The trainer's setup, beside its loop (bert_jax/train.py), as MaxText keeps train_utils beside train.

- distributed init: `maybe_initialize_distributed`;
- warm starts: `load_init_from` reads a pretrained model, `merge_pretrained` fits it to the model;
- the sharded state: `TrainState` and `state_layout` (params and optimizer state created directly
  on the shardings that the model's logical axis names and the rules give);
- the step: `make_train_step` (one optimizer update, micro-batches a scan inside it),
  `jit_train_step` (sharded in and out, state donated) and `compile_train_step` (ahead of time,
  with facts read from the lowered program);
- `build`: all of a resolved config's parts (model, mesh, logical axis rules, optimizer,
  schedule, state layout) as one `TrainSetup`, which the trainer and bert_jax.step_timing share.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import optim, run_checkpoints, sharding

log = logging.getLogger("bert_jax.train")

# Every model in bert_jax.modeling accepts input_ids alone; param shapes do not depend on length.
_INIT_INPUT_SHAPE = (1, 8)


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # [] int32: optimizer updates done (skipped non-finite updates included)
    params: Any
    opt_state: Any
    rng: jax.Array  # [2] uint32: the run's base key; step s uses fold_in(rng, s)
    nonfinite_steps: jax.Array  # [] int32: updates skipped because loss or grad norm was not finite
    first_nonfinite_step: jax.Array  # [] int32: 1-based step of the first one, -1 if none


# --------------------------------------------------------------------------- distributed setup


def maybe_initialize_distributed(distributed_config) -> None:
    """`jax.distributed.initialize()` when the config or $BERT_JAX_DISTRIBUTED asks for it.

    Empty fields are left to JAX's auto-detection (TPU pods, SLURM, ...). Must run before
    anything touches a device."""
    cfg = distributed_config
    if not (cfg.initialize or os.environ.get("BERT_JAX_DISTRIBUTED") == "1"):
        return
    kwargs = {}
    if cfg.coordinator_address:
        kwargs["coordinator_address"] = cfg.coordinator_address
    if cfg.num_processes > 0:
        kwargs["num_processes"] = int(cfg.num_processes)
    if cfg.process_id >= 0:
        kwargs["process_id"] = int(cfg.process_id)
    if cfg.cpu_collectives:
        # CPU processes need a collectives backend to run cross-process all-reduces.
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    jax.distributed.initialize(**kwargs)


# --------------------------------------------------------------------------- init and init_from


def _flat(tree) -> dict[str, Any]:
    return {optim.param_path(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def merge_pretrained(fresh: Any, loaded: Any, source: str) -> tuple[Any, list[str], list[str]]:
    """The fresh params with every leaf that `loaded` also has replaced by the loaded value.

    Returns (params, loaded names, names left at their fresh init (new heads)). A loaded leaf
    whose shape differs is an error; loaded leaves the model does not have (e.g. `cls/` when
    fine-tuning) are ignored."""
    from bert_jax.modeling.encoder import stack_layers, unstack_layers

    fresh_flat = _flat(fresh)
    if any("/encoder/layers/" in k for k in fresh_flat):
        loaded = stack_layers(loaded)
    else:
        loaded = unstack_layers(loaded)
    loaded_flat = _flat(loaded)
    used, new = [], []
    mismatches = []
    for name, value in fresh_flat.items():
        if name in loaded_flat:
            found = np.shape(loaded_flat[name])
            if tuple(found) != tuple(value.shape):
                mismatches.append(f"{name}: model expects {tuple(value.shape)}, {source} has {tuple(found)}")
            used.append(name)
        else:
            new.append(name)
    if mismatches:
        raise ValueError(f"init_from={source}: parameter shapes do not fit the model config:\n  "
                         + "\n  ".join(mismatches))
    if not any(name.startswith("bert/") for name in used):
        raise ValueError(f"init_from={source}: none of the model's bert/ parameters are in the checkpoint "
                         f"(it has {sorted(loaded_flat)[:5]}...)")
    paths_and_leaves = jax.tree_util.tree_leaves_with_path(fresh)
    leaves = [np.asarray(loaded_flat[optim.param_path(p)], dtype=v.dtype) if optim.param_path(p) in loaded_flat
              else v for p, v in paths_and_leaves]
    merged = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(fresh), leaves)
    return merged, used, new


def load_init_from(path: str) -> Any:
    """Params from a pretrained model: a bert_jax run workdir (its newest checkpoint) or anything
    `bert_jax.checkpoints.load_pretrained` reads (Hugging Face, Google TF, bert_jax format)."""
    p = pathlib.Path(path)
    if (p / run_checkpoints.CHECKPOINT_DIR).is_dir():
        params, step = run_checkpoints.restore_params(p)
        log.info("init_from: params of step %d of the run in %s", step, p)
        return params
    from bert_jax.checkpoints import load_pretrained
    _, params = load_pretrained(path)
    return params


def checkpoint_config(init_from: str):
    if not init_from:
        return None
    from bert_jax.checkpoints import load_config
    return load_config(init_from)


# --------------------------------------------------------------------------- the steps


def make_train_step(task, model, tx, schedule: Callable, grad_accum_steps: int, mesh) -> Callable:
    """(state, batch) -> (state, metrics); the whole global batch, one optimizer update."""

    def loss_fn(params, batch, rng):
        loss, metrics = task.loss_and_metrics(model, params, batch, rng)
        return loss.astype(jnp.float32), metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch):
        step_rng = jax.random.fold_in(state.rng, state.step)
        if grad_accum_steps == 1:
            (loss, metrics), grads = grad_fn(state.params, batch, step_rng)
        else:
            k = grad_accum_steps
            # [B, ...] -> [k, B/k, ...] taking rows i, i+k, ...: every device keeps its own rows
            # in every micro-batch (a plain reshape would put micro-batch 0 on a few devices).
            micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)
            micro = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
                x, NamedSharding(mesh, PartitionSpec(None, sharding.BATCH_AXES))), micro)

            def accumulate(carry, xs):
                index, micro_batch = xs
                (l, m), g = grad_fn(state.params, micro_batch, jax.random.fold_in(step_rng, index))
                return jax.tree.map(jnp.add, carry, (l, m, g)), None

            first = jax.tree.map(lambda x: x[0], micro)
            metrics_shape = jax.eval_shape(lambda: loss_fn(state.params, first, step_rng))[1]
            zeros = (jnp.zeros((), jnp.float32),
                     jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape),
                     jax.tree.map(jnp.zeros_like, state.params))
            (loss, metrics, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(k), micro))
            loss, metrics, grads = jax.tree.map(lambda x: x / k, (loss, metrics, grads))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply_update(operand):
            params, opt_state = operand
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        # A cond, not jnp.where(finite, new, old) per leaf: the select kept the old params and
        # optimizer state alive beside the new ones and cost a full copy of both (~8% of a
        # BERT-base step on CPU); the cond updates the donated buffers in place.
        new_params, new_opt_state = jax.lax.cond(finite, apply_update, lambda o: o, (state.params, state.opt_state))
        next_step = state.step + 1
        new_state = state.replace(
            step=next_step,
            params=new_params,
            opt_state=new_opt_state,
            nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
            first_nonfinite_step=jnp.where((state.first_nonfinite_step < 0) & ~finite, next_step,
                                           state.first_nonfinite_step),
        )
        metrics = {**metrics, "loss": loss, "grad_norm": grad_norm,
                   "learning_rate": schedule(state.step), "update_skipped": (~finite).astype(jnp.float32)}
        return new_state, metrics

    return train_step


def _unbox(tree):
    """The arrays of a tree of flax metadata boxes, without applying sharding constraints."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box)


def all_finite(params) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))


# --------------------------------------------------------------------------- sharded state


@dataclasses.dataclass
class StateLayout:
    """Where every array of the TrainState lives, from the model's logical axis annotations."""
    mesh: Any
    param_shardings: Any
    state_shardings: TrainState
    abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings (for restore)
    init_key: jax.Array
    dropout_key: jax.Array
    init_params: Callable[[], Any]  # -> params created directly on their shardings

    def fresh_state(self, tx, params) -> TrainState:
        replicated = sharding.replicated(self.mesh)
        put = lambda x: jax.device_put(x, replicated)
        return TrainState(
            step=put(jnp.zeros((), jnp.int32)), params=params,
            opt_state=jax.jit(tx.init, out_shardings=self.state_shardings.opt_state)(params),
            rng=put(self.dropout_key), nonfinite_steps=put(jnp.zeros((), jnp.int32)),
            first_nonfinite_step=put(jnp.full((), -1, jnp.int32)))


def _init_boxed_params(model, key):
    return model.init({"params": key, "dropout": key}, jnp.zeros(_INIT_INPUT_SHAPE, jnp.int32),
                      deterministic=True)["params"]


def param_layout(model, mesh, rules) -> tuple[Any, Any]:
    """(abstract params (ShapeDtypeStructs), their NamedShardings) of `model` on `mesh`."""
    abstract_boxed = jax.eval_shape(lambda key: _init_boxed_params(model, key), jax.random.PRNGKey(0))
    return _unbox(abstract_boxed), sharding.logical_shardings(abstract_boxed, mesh, rules)


def state_layout(model, tx, mesh, rules, seed: int) -> StateLayout:
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
    abstract_params, param_shardings = param_layout(model, mesh, rules)
    replicated = sharding.replicated(mesh)
    state_shardings = TrainState(
        step=replicated, params=param_shardings,
        opt_state=sharding.opt_state_shardings(tx, abstract_params, param_shardings, mesh),
        rng=replicated, nonfinite_steps=replicated, first_nonfinite_step=replicated)
    abstract_state = jax.eval_shape(lambda: TrainState(
        step=jnp.zeros((), jnp.int32), params=abstract_params, opt_state=tx.init(abstract_params),
        rng=dropout_key, nonfinite_steps=jnp.zeros((), jnp.int32), first_nonfinite_step=jnp.zeros((), jnp.int32)))
    abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract_state, state_shardings)
    init_params = lambda: jax.jit(lambda k: _unbox(_init_boxed_params(model, k)),
                                  out_shardings=param_shardings)(init_key)
    return StateLayout(mesh, param_shardings, state_shardings, abstract_state, init_key, dropout_key, init_params)


def jit_train_step(task, model, tx, schedule, grad_accum_steps: int, mesh, layout: StateLayout):
    """The jitted step: sharded in and out, the state donated (updated in place)."""
    batch_shard = sharding.batch_sharding(mesh, 1)  # a prefix: dim 0 split, the rest replicated
    return jax.jit(make_train_step(task, model, tx, schedule, grad_accum_steps, mesh),
                   in_shardings=(layout.state_shardings, batch_shard),
                   out_shardings=(layout.state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))


def compile_train_step(train_step, state, batch):
    """Lowers and compiles the jitted step ahead of time: (compiled step, compile seconds, facts,
    the lowered program's StableHLO text).

    The facts are what the compiled program computes with, read from the lowered StableHLO:
    the dtypes of the params it takes, the result dtypes of its matmuls (dot_general), its
    optimization barriers (remat) and PRNG calls (dropout), so a run's record shows what ran,
    not only what the config asked for."""
    start = time.perf_counter()
    lowered = train_step.lower(state, batch)
    compiled = lowered.compile()
    seconds = time.perf_counter() - start
    text = lowered.as_text()
    return compiled, seconds, compiled_step_facts(text, state.params), text


def compiled_step_facts(stablehlo_text: str, params) -> dict:
    import collections
    import re
    dots = collections.Counter()
    for line in stablehlo_text.splitlines():
        if "stablehlo.dot_general" in line:
            match = re.search(r"->\s*tensor<([^>]*)>\s*$", line.strip())
            if match:
                dots[match.group(1).split("x")[-1]] += 1
    return {"param_dtypes": sorted({str(np.dtype(x.dtype)) for x in jax.tree.leaves(params)}),
            "dot_general_result_dtypes": dict(sorted(dots.items())),
            # remat shows as optimization barriers; dropout as calls of the PRNG (threefry) kernel.
            "optimization_barriers": stablehlo_text.count("stablehlo.optimization_barrier"),
            "random_bits_calls": len(re.findall(r"call @threefry2x32", stablehlo_text))}


# --------------------------------------------------------------------------- a run's parts


@dataclasses.dataclass
class TrainSetup:
    """What the loop runs with, built from a resolved config; no file touched, no array placed."""
    config: Any  # the resolved config (run_config.resolve_config)
    bert_config: Any
    model: Any
    mesh: Any
    rules: Any  # logical axis name -> mesh axes (sharding.axis_rules)
    tx: Any
    schedule: Callable
    layout: StateLayout

    def jit_train_step(self, task):
        return jit_train_step(task, self.model, self.tx, self.schedule, int(self.config.train.grad_accum_steps),
                              self.mesh, self.layout)


def build(config, task, devices=None) -> TrainSetup:
    """The model, mesh, rules, optimizer, schedule and state layout of a resolved config."""
    from bert_jax.config import BertConfig

    tc = config.train
    bert_config = BertConfig(**config.model.to_dict())
    model = task.make_model(bert_config)
    mesh = sharding.make_mesh(config.mesh, devices)
    rules = sharding.axis_rules(config.mesh.rules)
    dp = sharding.data_parallel_size(mesh)
    micro_batch = tc.batch_size // tc.grad_accum_steps
    if micro_batch % dp:
        raise ValueError(f"config.train.batch_size / grad_accum_steps = {micro_batch} is not divisible by the "
                         f"{dp} data-parallel devices (mesh data x fsdp)")
    # num_steps=0 (evaluate only) still builds an optimizer (its state's shapes); it never steps.
    schedule_steps = optim.schedule_steps(tc.num_steps, config.optimizer.warmup_steps)
    tx = optim.make_optimizer(config.optimizer, schedule_steps)
    schedule = optim.learning_rate_schedule(float(config.optimizer.learning_rate),
                                            int(config.optimizer.warmup_steps), schedule_steps)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        layout = state_layout(model, tx, mesh, rules, int(config.seed))
    return TrainSetup(config, bert_config, model, mesh, rules, tx, schedule, layout)


def initial_params(setup: TrainSetup, pretrained) -> Any:
    """Fresh params on their shardings, with init_from's merged weights (`merge_pretrained`'s
    result, or None) in place of every leaf it has."""
    params = setup.layout.init_params()
    if pretrained is None:
        return params
    merged, used, new = pretrained  # the new heads' leaves are still abstract: take the fresh init
    params = jax.device_put(jax.tree.map(lambda m, f: f if isinstance(m, jax.ShapeDtypeStruct) else m,
                                         merged, params), setup.layout.param_shardings)
    log.info("init_from %s: %d tensors loaded, %d new (%s)", setup.config.init_from, len(used), len(new),
             ", ".join(new[:8]))
    return params
