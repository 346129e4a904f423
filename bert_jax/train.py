"""The generic training loop: any Task (pretraining or fine-tuning) on any mesh, one or many hosts.

    results = train_and_evaluate(config, workdir)

- The mesh and the logical-axis rules come from `config.mesh`; params and optimizer state are
  created directly on their shardings; the train step is one `jax.jit` with in/out shardings and
  a donated state. One jit step = one optimizer update (micro-batches are a scan inside it).
- A workdir that holds a checkpoint resumes from the newest complete one (params, optimizer,
  step, RNG, input position), with no flag. `config.init_from` instead warm-starts the weights of
  a fresh run from a pretrained model (google-research/bert#632: not the same as resuming).
- SIGTERM saves a checkpoint at the current step and returns (exit code 0 from main).
- A non-finite loss or gradient norm never reaches the params; `config.train.nonfinite_policy`
  says whether the run halts ("halt") or skips that update and counts it ("skip").
- Outputs in the workdir: config.json (the resolved config of the newest start), model_config.json
  (the BertConfig) and a line in starts.jsonl (restored step, fields changed since the previous
  start) before step 1; metrics.jsonl and tensorboard/ (cut back to the restored step on resume);
  checkpoints/; results.json at the end. Nothing is written before every check has passed,
  init_from's weights read and fitted to the model included.
- Evaluation runs `Predictor`, the codebase's one prediction loop; GLUE's test-set predictions
  and benchmarks/mlm_eval.py run it too (`pretrained_predictor`).
- Timing: step_time_s, tokens_per_s and mfu count the train step alone (dispatch to result);
  data_wait_s, eval_s and checkpoint_s are logged beside them; compile_time_s once per start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import signal
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import flops as flops_lib
from bert_jax import optim, run_checkpoints, sharding
from bert_jax.metrics_logging import MetricsWriter, ProgressBar, eval_progress
from bert_jax.run_checkpoints import RunCheckpointer

log = logging.getLogger("bert_jax.train")

RESULTS_FILE = "results.json"
NONFINITE_POLICIES = ("halt", "skip")
# Every model in bert_jax.modeling accepts input_ids alone; param shapes do not depend on length.
_INIT_INPUT_SHAPE = (1, 8)


class NonFiniteError(FloatingPointError):
    pass


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


# --------------------------------------------------------------------------- config resolution

# BertConfig fields that belong to the run, not to a checkpoint: how the model computes and
# regularises, never what its parameters are. A run's value always wins over a checkpoint's.
RUN_MODEL_FIELDS = ("dtype", "param_dtype", "remat", "scan_layers", "attention_implementation",
                    "hidden_dropout_prob", "attention_probs_dropout_prob")
CONFIG_FILE = "config.json"  # the resolved config of the run, written before step 1
MODEL_CONFIG_FILE = "model_config.json"  # the run's BertConfig (the fields of config.model)
HEAD_FILE = "head.json"  # {"model_class", "label_names"}: the model's head, for exports
# One line per start of the run: {"start", "time", "restored_step", "process_count", "device_count",
# "changed": {dotted field: [value at the previous start, value now]}}. config.json holds the
# config of the newest start; the lines' "changed" lead back to every earlier one.
STARTS_FILE = "starts.jsonl"


def architecture_fields() -> tuple[str, ...]:
    """The BertConfig fields a checkpoint fixes: every field that is not a run field."""
    from bert_jax.config import BertConfig
    return tuple(f.name for f in dataclasses.fields(BertConfig) if f.name not in RUN_MODEL_FIELDS)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def resolve_model(model_section: dict, checkpoint=None, checkpoint_source: str = "") -> dict:
    """The run's BertConfig fields: the checkpoint's architecture plus the run's own fields.

    `model_section` is config.model as a dict; a field left None means "the checkpoint's value".
    A given architecture field that differs from the checkpoint's is an error naming both."""
    from bert_jax.config import BertConfig
    defaults = dataclasses.asdict(BertConfig())
    unknown = sorted(set(model_section) - set(defaults))
    if unknown:
        raise ValueError(f"config.model: unknown BertConfig fields {unknown}")
    resolved, conflicts = {}, []
    for name in defaults:
        given = model_section.get(name)
        if name in RUN_MODEL_FIELDS:
            resolved[name] = defaults[name] if given is None else given
            continue
        if checkpoint is None:
            if given is None:
                raise ValueError(f"config.model.{name} is empty (it means: the value of the checkpoint in "
                                 f"config.init_from), but config.init_from is empty; give --config.model.{name}=...")
            resolved[name] = given
            continue
        found = getattr(checkpoint, name)
        if given is not None and not _same(given, found):
            conflicts.append(f"config.model.{name}={given!r} but the checkpoint has {name}={found!r}")
        resolved[name] = found
    if conflicts:
        raise ValueError(f"config.init_from={checkpoint_source}: the run's model config contradicts the "
                         "checkpoint's architecture (these fields fix the parameters; leave them unset to "
                         "take the checkpoint's):\n  " + "\n  ".join(conflicts))
    BertConfig(**resolved)  # validates
    return resolved


def resolve_config(config, num_train_examples: int | None = None, checkpoint=None):
    """The config that runs: a resolved, unlocked copy of `config`; `config` is not changed.

    Facts come from outside the config: the number of training examples (from the task) and the
    checkpoint's BertConfig (from config.init_from). Derived here, and only here:
      model            resolve_model(config.model, checkpoint)
      train.num_steps  ceil(num_epochs * examples / batch_size) when the config has num_epochs > 0
                       (then train.num_steps must be unset); num_epochs=0 uses train.num_steps
      optimizer.warmup_steps  warmup_proportion * num_steps when the config has warmup_proportion >= 0
                       (then warmup_steps must be unset); < 0 uses optimizer.warmup_steps
    A user value that another field would overwrite is an error naming both fields."""
    import ml_collections
    resolved = ml_collections.ConfigDict(config.to_dict())
    source = str(config.get("init_from") or "")
    resolved.model = ml_collections.ConfigDict(resolve_model(config.model.to_dict(), checkpoint, source))
    t = resolved.train
    epochs = resolved.get("num_epochs")
    if epochs is not None and epochs > 0 and t.num_steps != 0:
        if t.num_steps is not None:
            raise ValueError(f"config.train.num_steps={t.num_steps} and config.num_epochs={epochs} both set the "
                             "number of steps; give one (--config.num_epochs=0 to train for train.num_steps)")
        if num_train_examples is None:
            raise ValueError(f"config.num_epochs={epochs}: the task reports no number of training examples "
                             "to derive train.num_steps from; set num_epochs=0 and train.num_steps")
        t.num_steps = max(1, math.ceil(epochs * num_train_examples / int(t.batch_size)))
    if t.num_steps is None:
        raise ValueError("config.train.num_steps is unset: give it, or config.num_epochs > 0")
    proportion = resolved.get("warmup_proportion")
    if proportion is not None and proportion >= 0:
        if resolved.optimizer.warmup_steps is not None:
            raise ValueError(f"config.optimizer.warmup_steps={resolved.optimizer.warmup_steps} and "
                             f"config.warmup_proportion={proportion} both set the warmup; give one "
                             "(--config.warmup_proportion=-1 to use optimizer.warmup_steps)")
        resolved.optimizer.warmup_steps = int(proportion * int(t.num_steps))
    if resolved.optimizer.warmup_steps is None:
        raise ValueError("config.optimizer.warmup_steps is unset: give it, or config.warmup_proportion >= 0")
    return resolved


def _checkpoint_config(init_from: str):
    if not init_from:
        return None
    from bert_jax.checkpoints import load_config
    return load_config(init_from)


# --------------------------------------------------------------------------- the steps


def _validate(config) -> None:
    t = config.train
    if t.nonfinite_policy not in NONFINITE_POLICIES:
        raise ValueError(f"config.train.nonfinite_policy: expected one of {NONFINITE_POLICIES}, "
                         f"found {t.nonfinite_policy!r}")
    for name in ("batch_size", "grad_accum_steps", "log_every", "eval_batch_size"):
        if int(t[name]) < 1:
            raise ValueError(f"config.train.{name}: expected >= 1, found {t[name]}")
    if t.num_steps is not None and int(t.num_steps) < 0:
        raise ValueError(f"config.train.num_steps: expected >= 0 (0: evaluate only), found {t.num_steps}")
    if t.batch_size % t.grad_accum_steps:
        raise ValueError(f"config.train.batch_size={t.batch_size} is not divisible by "
                         f"grad_accum_steps={t.grad_accum_steps}")


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


def _all_finite(params) -> jax.Array:
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


# --------------------------------------------------------------------------- the loop


class _SigtermFlag:
    """Set by SIGTERM; the loop checks it after every step (one host: a flag is enough)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() > 1:
            # Multi-host: JAX's preemption notifier (installed by jax.distributed.initialize)
            # owns SIGTERM, and `_preempted` asks it; a Python handler would replace it.
            return self
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, no preemption support
            self._previous = None
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint at the end of this step, then exiting")
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _preempted(flag: _SigtermFlag, step: int) -> bool:
    if jax.process_count() == 1:
        return flag.raised
    # Every host must agree on the step to save at: the coordination service's preemption
    # notice (it listens for SIGTERM on each host) gives one answer to all of them.
    # (A host-local flag must not decide: a host saving alone would wait forever for the others.)
    from jax.experimental import multihost_utils
    return multihost_utils.reached_preemption_sync_point(step)


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


# --------------------------------------------------------------------------- prediction


class Predictor:
    """The one prediction loop: `task.predict` (jitted) over finite global batches on a mesh.

    Each process feeds its rows of every global batch and gets the outputs of all rows back
    (replicated), so `task.evaluate` / `write_predictions` see every example. Every batch has its
    token ids checked first (`check_token_ids`, naming "eval batch i of <where>"). The trainer's
    evaluation, GLUE's test-set predictions (`tasks.glue.write_test_predictions`) and
    `benchmarks/mlm_eval.py` all run through it (`pretrained_predictor` for a loaded checkpoint)."""

    def __init__(self, task, model, mesh, rules, param_shardings, vocab_size: int):
        self.mesh, self.rules, self.vocab_size = mesh, rules, int(vocab_size)
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
    return Predictor(task, model, mesh, rules, param_shardings, bert_config.vocab_size), params


def compile_train_step(train_step, state, batch):
    """Lowers and compiles the jitted step ahead of time: (compiled step, compile seconds, facts).

    The facts are what the compiled program computes with, read from the lowered StableHLO:
    the dtypes of the params it takes, the result dtypes of its matmuls (dot_general), its
    optimization barriers (remat) and PRNG calls (dropout), so a run's record shows what ran,
    not only what the config asked for."""
    start = time.perf_counter()
    lowered = train_step.lower(state, batch)
    compiled = lowered.compile()
    seconds = time.perf_counter() - start
    return compiled, seconds, compiled_step_facts(lowered.as_text(), state.params)


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


def _eval_source(config) -> str:
    """What the eval batches are read from, for error messages."""
    for where, value in (("config.task.eval_input_files", config.task.get("eval_input_files")),
                         ("config.eval_file", config.get("eval_file"))):
        if value and not config.task.get("synthetic_data"):
            return f"{where}={value}"
    if config.task.get("synthetic_data"):
        return "the synthetic eval batches"
    return f"the eval data of task {config.task.name!r}"


def _write_json_atomic(path: epath.Path, data) -> None:
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


def _record_start(workdir: epath.Path, config_dict: dict, restored_step: int | None, process_count: int) -> None:
    """Appends this start to starts.jsonl, with the fields that differ from the previous start's
    config.json (a resume with a changed config shows, and so does a rerun of a fresh workdir)."""
    import datetime
    previous = workdir / CONFIG_FILE
    changed = config_changes(json.loads(previous.read_text(encoding="utf-8")), config_dict) if previous.is_file() else {}
    if changed:
        log.warning("this start's config differs from the previous start's in %d field(s): %s", len(changed),
                    ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    path = workdir / STARTS_FILE
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    lines = [line for line in lines if line.strip()]
    row = {"start": len(lines), "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "restored_step": restored_step, "process_count": process_count, "device_count": jax.device_count(),
           "changed": changed}
    tmp = path.with_name(path.name + ".tmp")  # rewritten whole: appends are not atomic (nor on gs://)
    tmp.write_text("".join(line + "\n" for line in [*lines, json.dumps(row, default=str)]), encoding="utf-8")
    tmp.replace(path)


class _IntervalClock:
    """Seconds spent since the last logged step, by kind: the step itself (dispatch to result),
    waiting for data, evaluating and checkpointing. Throughput is computed from `step` alone."""

    KINDS = ("step", "data_wait", "eval", "checkpoint")

    def __init__(self):
        self.reset()

    def reset(self):
        self.seconds = dict.fromkeys(self.KINDS, 0.0)
        self.steps = 0

    def add(self, kind: str, seconds: float):
        self.seconds[kind] += seconds


def train_and_evaluate(config, workdir: str | os.PathLike, task=None, devices=None, return_state: bool = False):
    """Trains `config.task` (or the given task object) in `workdir`; returns the results dict
    (and the final TrainState when `return_state`). `devices` defaults to all devices.

    Everything that can refuse the run (config, data files, vocab, checkpoint architecture, mesh)
    is checked before the workdir gets anything. `config` itself is not changed: the run uses
    `resolve_config(config, ...)`, which config.json (written before step 1) records."""
    from bert_jax.config import BertConfig
    from bert_jax.tasks import make_task

    _validate(config)
    workdir = epath.Path(workdir)  # local or gs:// (checkpoints: orbax; records: etils.epath)
    process_index, process_count = jax.process_index(), jax.process_count()
    is_main = process_index == 0

    # ---- every check before the workdir is touched
    task = make_task(config) if task is None else task
    config = resolve_config(config, getattr(task, "num_train_examples", None), _checkpoint_config(config.init_from))
    _validate(config)
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
    total_steps = int(tc.num_steps)
    # num_steps=0 (evaluate only) still builds an optimizer (its state's shapes); it never steps.
    schedule_steps = total_steps or max(1, int(config.optimizer.warmup_steps))
    tx = optim.make_optimizer(config.optimizer, schedule_steps)
    schedule = optim.learning_rate_schedule(float(config.optimizer.learning_rate),
                                            int(config.optimizer.warmup_steps), schedule_steps)
    train_iter = (task.train_iterator(int(tc.batch_size), int(config.seed), process_index, process_count)
                  if total_steps > 0 else None)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        layout = state_layout(model, tx, mesh, rules, int(config.seed))
    latest = run_checkpoints.latest_step(workdir)  # reads only: None for a fresh run
    pretrained = None
    if latest is None and config.init_from:
        # init_from's weights, read and fitted to the model (names, shapes) before the workdir
        # gets anything: a bad checkpoint is refused here. A resumed run never reads them.
        pretrained = merge_pretrained(layout.abstract_state.params, load_init_from(config.init_from),
                                      config.init_from)

    # ---- the workdir: the run's record first, then checkpoints and metrics
    workdir.mkdir(parents=True, exist_ok=True)
    if is_main:
        _record_start(workdir, config.to_dict(), latest, process_count)
        _write_json_atomic(workdir / CONFIG_FILE, config.to_dict())
        _write_json_atomic(workdir / MODEL_CONFIG_FILE, dataclasses.asdict(bert_config))
        # What an export needs beyond the weights: the transformers head class (our model classes
        # carry transformers' names) and the class names, index i = output i (bert_jax.convert).
        label_names = getattr(task, "label_names", None)
        _write_json_atomic(workdir / HEAD_FILE, {"model_class": type(model).__name__,
                                                "label_names": None if label_names is None else list(label_names)})
    checkpointer = RunCheckpointer(workdir, config.checkpoint, task.main_metric,
                                   getattr(task, "higher_is_better", True))
    # Rows after the restored step belong to steps that will run again: cut them.
    writer = MetricsWriter(workdir, enabled=is_main, tensorboard=bool(config.logging.tensorboard),
                           resume_step=latest or 0)
    if latest is None:  # the resolved config, in TensorBoard's Text tab (indented: a Markdown code block)
        writer.write_text(0, "train", "config", "".join(
            f"    {line}\n" for line in json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str).splitlines()))

    # The logical rules shard params, optimizer state and batches explicitly (in/out shardings), and,
    # installed as a context, they also turn the model's activation constraints on
    # (`nn.with_logical_constraint` at layer boundaries), so tensor parallelism keeps activations
    # split instead of leaving them to XLA's propagation.
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        param_shardings = layout.param_shardings

        meta: dict = {}
        if latest is not None:
            # ---- resume: everything from the newest complete checkpoint
            state, iterator_state, meta = checkpointer.restore(
                latest, layout.abstract_state, restart_data_order=bool(tc.restart_data_order))
            if train_iter is not None and iterator_state is not None:
                train_iter.set_state(iterator_state)
            log.info("resumed from %s at step %d", checkpointer.directory / str(latest), latest)
        else:
            params = layout.init_params()
            if pretrained is not None:
                merged, used, new = pretrained  # the new heads' leaves are still abstract: take the fresh init
                params = jax.device_put(jax.tree.map(lambda m, f: f if isinstance(m, jax.ShapeDtypeStruct) else m,
                                                     merged, params), param_shardings)
                pretrained = None
                log.info("init_from %s: %d tensors loaded, %d new (%s)", config.init_from, len(used), len(new),
                         ", ".join(new[:8]))
            state = layout.fresh_state(tx, params)

        train_step = jit_train_step(task, model, tx, schedule, int(tc.grad_accum_steps), mesh, layout)
        compiled_step, compile_time_s, step_facts, compile_logged = None, None, None, False
        predictor = Predictor(task, model, mesh, rules, param_shardings, bert_config.vocab_size)
        params_finite = jax.jit(_all_finite)

        step = int(jax.device_get(state.step))
        best = meta.get("best") or {}
        eval_metrics: dict = meta.get("last_eval") or {}
        peak, peak_source = flops_lib.peak_flops_per_device(float(config.logging.peak_flops_per_device))
        flops_per_token = None
        eval_source = _eval_source(config)
        bar = ProgressBar(total_steps, step, enabled=is_main and bool(config.logging.progress_bar))
        clock = _IntervalClock()

        def check_finite_policy():
            first = int(jax.device_get(state.first_nonfinite_step))
            if first >= 0 and tc.nonfinite_policy == "halt":
                raise NonFiniteError(
                    f"non-finite loss or gradient norm at step {first} (config.train.nonfinite_policy='halt'); "
                    f"that update was not applied and no checkpoint after step {first - 1} was written. "
                    f"Lower the learning rate, check the data, or set nonfinite_policy='skip'.")

        def evaluate() -> dict:
            start = time.perf_counter()
            predictions, batches = predictor(state.params, task.eval_batches(int(tc.eval_batch_size)), eval_source,
                                             progress=is_main and bool(config.logging.progress_bar))
            if not batches:
                return {}  # the task has no held-out data
            metrics = task.evaluate(predictions, batches)
            if is_main and hasattr(task, "write_predictions"):
                task.write_predictions(predictions, batches, workdir / "predictions")
            clock.add("eval", time.perf_counter() - start)
            return metrics

        def save(metrics=None, force=False):
            start = time.perf_counter()
            check_finite_policy()
            if not bool(jax.device_get(params_finite(state.params))):
                raise NonFiniteError(f"params are not finite at step {step}; refusing to write a checkpoint")
            meta_out = {"step": step, "best": best, "last_eval": eval_metrics, "process_count": process_count}
            checkpointer.save(step, state, train_iter.get_state(), meta_out, metrics=metrics, force=force)
            clock.add("checkpoint", time.perf_counter() - start)

        preempted = False
        with _SigtermFlag() as sigterm:
            stop_at = int(tc.stop_at_step) or total_steps
            while step < min(total_steps, stop_at):
                data_start = time.perf_counter()
                host_batch = next(train_iter)
                check_token_ids(host_batch, bert_config.vocab_size, f"step {step + 1}")
                batch = sharding.make_global_batch(host_batch, mesh)
                step_start = time.perf_counter()
                clock.add("data_wait", step_start - data_start)
                if compiled_step is None:  # compiled once per process start, timed on its own
                    compiled_step, compile_time_s, step_facts = compile_train_step(train_step, state, batch)
                    log.info("train step compiled in %.2f s: %s", compile_time_s, step_facts)
                    step_start = time.perf_counter()
                state, metrics = compiled_step(state, batch)
                jax.block_until_ready(metrics)  # the step's time ends when its results exist
                clock.add("step", time.perf_counter() - step_start)
                step += 1
                clock.steps += 1
                if flops_per_token is None:
                    seq_len = int(batch["input_ids"].shape[1])
                    predictions = int(batch["masked_lm_positions"].shape[1]) if "masked_lm_positions" in batch else 0
                    flops_per_token = flops_lib.training_flops_per_token(
                        bert_config, seq_len, predictions, nsp="next_sentence_labels" in batch)
                    tokens_per_step = int(tc.batch_size) * seq_len
                if step % tc.log_every == 0 or step == total_steps:
                    host_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    step_time = clock.seconds["step"] / clock.steps
                    tokens_per_s = tokens_per_step / step_time
                    host_metrics.update(
                        step_time_s=step_time, tokens_per_s=tokens_per_s,
                        mfu=tokens_per_s * flops_per_token / (peak * jax.device_count()),
                        data_wait_s=clock.seconds["data_wait"], eval_s=clock.seconds["eval"],
                        checkpoint_s=clock.seconds["checkpoint"],
                        nonfinite_steps=int(jax.device_get(state.nonfinite_steps)))
                    if compile_time_s is not None and not compile_logged:
                        host_metrics["compile_time_s"] = compile_time_s  # once per process start
                        compile_logged = True
                    check_finite_policy()
                    writer.write(step, "train", host_metrics)
                    bar.update(step, {"loss": host_metrics["loss"]})
                    if not bar.active and is_main:
                        log.info("step %d: %s", step, {k: round(v, 5) for k, v in host_metrics.items()})
                    clock.reset()
                saved = False
                if tc.eval_every and step % tc.eval_every == 0 and step < total_steps:
                    eval_metrics = evaluate()
                    if eval_metrics:
                        writer.write(step, "eval", eval_metrics)
                        best = _update_best(best, eval_metrics, step, task)
                    save(metrics=eval_metrics or None, force=True)
                    saved = True
                elif checkpointer.should_save(step) and step < total_steps:
                    save()
                    saved = True
                if _preempted(sigterm, step) or step == stop_at < total_steps:
                    if not saved:
                        save(force=True)
                    preempted = True
                    break
        bar.close()

        if not preempted:
            check_finite_policy()
            eval_metrics = evaluate()
            if eval_metrics:
                writer.write(step, "eval", eval_metrics)
                best = _update_best(best, eval_metrics, step, task)
            if total_steps > 0 and checkpointer.latest_step() != step:
                save(metrics=eval_metrics or None, force=True)
        checkpointer.wait_until_finished()
        checkpointer.close()
        writer.close()

    results = {
        "preempted": preempted,
        "step": step,
        "main_metric": task.main_metric,
        "higher_is_better": getattr(task, "higher_is_better", True),
        "final_metrics": eval_metrics,
        "best_metrics": best.get("metrics", {}),
        "best_step": best.get("step"),
        "nonfinite_steps_skipped": int(jax.device_get(state.nonfinite_steps)),
        "init_from": config.init_from or None,
        "peak_flops_per_device": peak,
        "peak_flops_source": peak_source,
        "compile_time_s": compile_time_s,
        "compiled_step": step_facts,
        "config": config.to_dict(),
    }
    if is_main and not preempted:
        _write_json_atomic(workdir / RESULTS_FILE, results)
    return (results, state) if return_state else results


def _update_best(best: dict, metrics: dict, step: int, task) -> dict:
    name = task.main_metric
    if name not in metrics or not math.isfinite(metrics[name]):
        return best
    higher = getattr(task, "higher_is_better", True)
    old = best.get("metrics", {}).get(name)
    if old is None or (metrics[name] > old if higher else metrics[name] < old):
        return {"step": step, "metrics": dict(metrics)}
    return best


def default_config():
    """Every field the trainer reads, at the BERT paper's values; experiments add model/task/data.

    The returned ConfigDict is meant to be completed by an experiment file and then locked
    (main.py locks it), so a misspelled override is an error."""
    import ml_collections
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init_from = ""  # a pretrained model (HF / Google TF / bert_jax dir or run workdir): weights only
    c.train = ml_collections.ConfigDict(dict(
        batch_size=256,  # global, in sequences
        num_steps=1_000_000,
        grad_accum_steps=1,  # micro-batches per optimizer update (a scan inside the jit step)
        log_every=100,
        eval_every=10_000,  # 0: only at the end
        eval_batch_size=256,
        nonfinite_policy="halt",  # "halt" | "skip"
        stop_at_step=0,  # > 0: save and exit at this step (time-sliced jobs); rerun to continue
        # Resuming on another number of processes: the non-packed input state is a global position
        # and continues exactly; a packed stream's per-process state cannot. True: start the data
        # order afresh instead of refusing (the model state is restored either way).
        restart_data_order=False,
    ))
    c.optimizer = optim.default_config()
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, rules="data_parallel"))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=10_000, keep=3, keep_best=True, async_save=True))
    c.logging = ml_collections.ConfigDict(dict(
        tensorboard=True, progress_bar=True,
        peak_flops_per_device=0.0,  # 0: the device-kind table, else a measured matmul peak
    ))
    c.distributed = ml_collections.ConfigDict(dict(
        initialize=False,  # or $BERT_JAX_DISTRIBUTED=1; empty fields -> JAX's auto-detection
        coordinator_address="", num_processes=0, process_id=-1,
        cpu_collectives="",  # "gloo" for multi-process CPU runs
    ))
    return c
