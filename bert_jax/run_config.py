"""The run's config: every field the trainer reads, at the BERT paper's values, and its resolution.

    config = default_config()                       # experiments add model / task / data
    resolved = resolve_config(config, num_train_examples, checkpoint_bert_config)

Imports only ml_collections and the config dataclasses (big_vision's configs import nothing
else), so experiment files and tasks read the defaults without importing jax or the trainer.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from bert_jax.config import BertConfig

NONFINITE_POLICIES = ("halt", "skip")

# BertConfig fields that belong to the run, not to a checkpoint: how the model computes and
# regularises, never what its parameters are. A run's value always wins over a checkpoint's.
RUN_MODEL_FIELDS = ("dtype", "param_dtype", "remat", "scan_layers", "attention_implementation",
                    "hidden_dropout_prob", "attention_probs_dropout_prob")


def architecture_fields() -> tuple[str, ...]:
    """The BertConfig fields a checkpoint fixes: every field that is not a run field."""
    return tuple(f.name for f in dataclasses.fields(BertConfig) if f.name not in RUN_MODEL_FIELDS)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def resolve_model(model_section: dict, checkpoint=None, checkpoint_source: str = "") -> dict:
    """The run's BertConfig fields: the checkpoint's architecture plus the run's own fields.

    `model_section` is config.model as a dict; a field left None means "the checkpoint's value".
    A given architecture field that differs from the checkpoint's is an error naming both."""
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


def validate(config) -> None:
    t = config.train
    if t.nonfinite_policy not in NONFINITE_POLICIES:
        raise ValueError(f"config.train.nonfinite_policy: expected one of {NONFINITE_POLICIES}, "
                         f"found {t.nonfinite_policy!r}")
    for name in ("batch_size", "grad_accum_steps", "log_every", "eval_batch_size"):
        if int(t[name]) < 1:
            raise ValueError(f"config.train.{name}: expected >= 1, found {t[name]}")
    if t.num_steps is not None and int(t.num_steps) < 0:
        raise ValueError(f"config.train.num_steps: expected >= 0 (0: evaluate only), found {t.num_steps}")
    if int(t.get("nonfinite_skip_limit", 1)) < 1:
        raise ValueError(f"config.train.nonfinite_skip_limit: expected >= 1, found {t.nonfinite_skip_limit}")
    if t.batch_size % t.grad_accum_steps:
        raise ValueError(f"config.train.batch_size={t.batch_size} is not divisible by "
                         f"grad_accum_steps={t.grad_accum_steps}")


def default_config():
    """Every field the trainer reads, at the BERT paper's values; experiments add model/task/data.

    The returned ConfigDict is meant to be completed by an experiment file and then locked
    (main.py locks it), so a misspelled override is an error."""
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
        # "skip": each skipped step is warned; this many skipped in a row halt the run (data or lr is broken).
        nonfinite_skip_limit=10,
        stop_at_step=0,  # > 0: save and exit at this step (time-sliced jobs); rerun to continue
        # Resuming on another number of processes: the non-packed input state is a global position
        # and continues exactly; a packed stream's per-process state cannot. True: start the data
        # order afresh instead of refusing (the model state is restored either way).
        restart_data_order=False,
    ))
    c.optimizer = optimizer_config()
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, rules="data_parallel"))
    # verify: a crc32c of every array at save, checked at restore (a damaged step falls back to an older one).
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=10_000, keep=3, keep_best=True, async_save=True,
                                                  verify=True))
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


def optimizer_config():
    """The `config.optimizer` ConfigDict with BERT's values (fields: bert_jax/optim.py)."""
    return ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-4, warmup_steps=10_000, b1=0.9, b2=0.999, eps=1e-6,
        weight_decay=0.01, clip_global_norm=1.0, frozen_params=""))
