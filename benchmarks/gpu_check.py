"""One prepared GPU check (issue 17): numerics, bf16 train-step speed, two short real runs.

On a lent machine with one NVIDIA H200 (JAX 0.11.2 installed there, no internet, no pip install
of this project: it runs from the source tree), from the repository root:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
        benchmarks/data/gpu_check/wheels/*.whl && \
    PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py 2>$OUT/gpu_check.err \
        | tee $OUT/gpu_check.jsonl          # device tool: timeout_s=450

(the two wheels are ml_collections and google-crc32c, which that machine lacks; see
benchmarks/data/gpu_check/README.md). On a CPU the same script at tiny sizes (tests/test_gpu_check.py
runs it; 49 s of CPU time, 1 min 47 s wall on the 2 shared cores here at a load of ~10):

    JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/gpu_check.py --smoke

Prints ONE JSON line per measurement on stdout (everything else goes to stderr). Every line has
`kind`, `elapsed_s` (since the script started) and either its results, or `error` (the
measurement raised; the others still run; `oom` is true when it was out of device memory), or
`skipped` (a reason: no GPU for cuDNN, or the time budget). The kinds (plan() orders the lines:
the BERT-large@512 candidates and the real runs first, reference rows and other shapes later):

  environment           jax/jaxlib versions, backend, device kind, memory_stats keys, missing modules
  attention_numerics    attention_implementation "cudnn" vs "xla", same params and batch (real text:
                        padded rows, and packed rows of several examples), compute dtype bfloat16 and
                        float32: max |diff| of the encoder output on real tokens, of the loss and of
                        the gradients; plus the reference row "xla bfloat16 vs xla float32"
  pretraining_run       BERT-mini, 200 steps on the committed real instances, bf16 compute, cuDNN
                        attention (a second line runs it with XLA attention only if that one fails):
                        the loss curve, held-out MLM/NSP loss, tokens/s; through bert_jax.train
  checkpoint_roundtrip  the trained TrainState saved and restored on the device with
                        bert_jax.run_checkpoints (orbax); max |diff| of every leaf, seconds
  precision_numerics    the same (trained) params evaluated in float32 and in bfloat16 compute
                        (and bfloat16 + cudnn on a GPU) on held-out real text: MLM and NSP loss
  train_step_speed      the full pretraining step (bert_jax.train's jit step, MLM + NSP, AdamW,
                        clipping, donated state), bf16 compute and float32 params, for BERT-base@128,
                        BERT-large@128 and @512, each attention implementation, with and without
                        scan and remat: tokens_per_s, step_time_s, mfu (against --peak_tflops),
                        compiled memory (XLA's memory_analysis), device peak memory
                        (memory_stats), cudnn_fmha_calls (fused-attention calls in the compiled step)
  attention_dropout     BERT-large@512: the paper's attention dropout 0.1 with XLA attention against
                        0 with XLA and 0 with cuDNN fused attention (MosaicBERT / Cramming)
  max_batch             BERT-large@512: the largest batch that fits (doubling, then one bisection,
                        out-of-memory caught), with remat none and full
  summary               counts of ok / error / skipped lines, the best BERT-large@512 MFU row,
                        whether TensorFlow or grain was imported (they should not be)

cuDNN fused attention takes no dropout: a cudnn row always has attention_probs_dropout_prob=0
(BertConfig refuses cudnn with attention dropout > 0); an xla row has the paper's 0.1 unless said.

Time: measurements start only while `--budget_s` (default 330 s) has room for their estimated
cost (guesses for an H200, in plan() below); a watchdog ends the process at `--hard_limit_s`
(default 420 s, exit code 124) after printing a summary line, so the command stays under 7 minutes
and 15 minutes of device time leave room for a shorter rerun (`--only KINDS`).

--smoke: tiny BERT, 10 real training steps, float32 speed rows, one tiny shape standing in for the
three (later rows "cached"), one train-step configuration compiled (the remat/scan variants, the
dropout-0 XLA row and the remat=full batch search say "skipped"), cudnn rows skipped on a CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time
import traceback

START = time.perf_counter()
ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data" / "gpu_check"
TRAIN_FILES = str(DATA / "train_128" / "*.tfrecord")
HELDOUT_FILES = str(DATA / "heldout_128" / "*.tfrecord")

KINDS = ("environment", "attention_numerics", "pretraining_run", "checkpoint_roundtrip", "precision_numerics",
         "train_step_speed", "attention_dropout", "max_batch", "summary")

# The three shapes of the issue: (preset, seq_len, masked predictions, batch) on a GPU. --smoke stands
# one tiny shape in for all three (each compile costs seconds on a CPU): rows after the first come
# from the cache of measured settings, marked "cached": true.
SHAPES = {"base@128": ("base", 128, 20, 256), "large@128": ("large", 128, 20, 256),
          "large@512": ("large", 512, 80, 64)}
SMOKE_SHAPES = {case: ("tiny", 32, 5, 4) for case in SHAPES}

SMOKE_VARIANT = ("--smoke compiles one train step configuration (remat none, scanned layers, the paper's "
                 "attention dropout): each more costs seconds on a CPU")

_STDOUT = sys.stdout
_LINES: list[dict] = []
_EMIT_LOCK = threading.Lock()


def emit(kind: str, **fields) -> dict:
    """Prints one JSON line on the real stdout (numbers that are not finite become strings)."""
    line = {"kind": kind, **fields, "elapsed_s": round(time.perf_counter() - START, 2)}
    text = json.dumps(_jsonable(line))
    with _EMIT_LOCK:
        _LINES.append(line)
        _STDOUT.write(text + "\n")
        _STDOUT.flush()
    return line


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:  # numpy / jax scalars
        return _jsonable(x.item())
    return x


def is_oom(error: BaseException) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def error_fields(error: BaseException) -> dict:
    text = f"{type(error).__name__}: {error}".strip()
    fields = {"error": text[:800], "oom": is_oom(error)}
    if not fields["oom"]:
        fields["traceback_tail"] = traceback.format_exc().strip().splitlines()[-6:]
    return fields


class Budget:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - START)


def measure(kind: str, settings: dict, fn, budget: Budget, estimate_s: float = 0.0) -> dict:
    """Runs fn() -> dict of results and prints its line; an exception becomes an "error" line."""
    if budget.left() < estimate_s:
        return emit(kind, **settings, skipped=f"time budget: {budget.left():.0f} s left of --budget_s, this "
                                              f"measurement is estimated at {estimate_s:.0f} s")
    try:
        result = fn()
    except Exception as error:  # one failure must not lose the other measurements
        result = error_fields(error)
    finally:
        gc.collect()
    return emit(kind, **{**settings, **result})


def gpu_skip_reason() -> str | None:
    import jax
    if jax.default_backend() != "gpu":
        return (f"cuDNN fused attention needs an NVIDIA GPU; this backend is {jax.default_backend()!r} "
                f"({jax.devices()[0].device_kind})")
    return None


def device_memory() -> dict | None:
    """The first device's allocator statistics (None where the backend has none, e.g. CPU)."""
    import jax
    stats = jax.local_devices()[0].memory_stats()
    if not stats:
        return None
    keys = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit", "largest_alloc_size")
    return {k: int(stats[k]) for k in keys if k in stats}


def compiled_memory(compiled) -> dict | None:
    """XLA's memory analysis of one compiled program (bytes), or None where unavailable."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    names = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
             "generated_code_size_in_bytes", "peak_memory_in_bytes")
    return {n.replace("_in_bytes", "_bytes"): int(getattr(m, n)) for n in names if hasattr(m, n)}


# ------------------------------------------------------------------------------------------ data


_ARRAYS: dict = {}


def instance_arrays(which: str, limit: int | None = None) -> dict:
    """The committed instances as [n, ...] numpy arrays, decoded by data_pipelines.tfrecord_io
    (protobuf; no TensorFlow, no grain)."""
    from data_pipelines import record_files
    key = (which, limit)
    if key not in _ARRAYS:
        _ARRAYS[key] = record_files.read_pretraining_arrays(TRAIN_FILES if which == "train" else HELDOUT_FILES,
                                                            limit=limit)
    return _ARRAYS[key]


def padded_real_batch(rows: int) -> dict:
    """`rows` held-out instances, those with the most padding first (real text, Google's features)."""
    arrays = instance_arrays("heldout")
    order = _shortest_first(arrays)[:rows]
    return {k: v[order] for k, v in arrays.items()}


def packed_real_batch(rows: int) -> dict:
    """`rows` rows packed (data_pipelines.packing, first fit) from the shortest held-out instances."""
    from data_pipelines import packing
    arrays = instance_arrays("heldout")
    order = _shortest_first(arrays)
    examples = {k: v[order] for k, v in arrays.items()}
    seq_len, predictions = arrays["input_ids"].shape[1], arrays["masked_lm_ids"].shape[1]
    lengths = packing.example_lengths(examples["input_mask"])
    num_predictions = (examples["masked_lm_weights"] > 0).sum(axis=1)
    plan = packing.plan_first_fit(lengths, num_predictions, rows, seq_len, predictions)
    return packing.pack_examples(examples, plan, rows, seq_len, predictions)


def _shortest_first(arrays: dict):
    import numpy as np
    return np.argsort(arrays["input_mask"].sum(axis=1), kind="stable")


# ------------------------------------------------------------------------------------------ configs


def experiment_config(preset: str, seq_len: int, predictions: int, synthetic: bool = True):
    """experiments/pretrain.py's config (the paper's hyperparameters) at one shape."""
    from experiments import pretrain
    config = pretrain.get_config(f"{preset},synthetic" if synthetic else preset)
    config.data.max_seq_length, config.data.max_predictions_per_seq = seq_len, predictions
    return config


def model_fields(attention: str, attention_dropout: float | None = None, **extra) -> dict:
    """BertConfig run fields: cudnn always with attention dropout 0 (it has none), xla with the
    paper's 0.1 unless `attention_dropout` says otherwise."""
    if attention_dropout is None:
        attention_dropout = 0.0 if attention == "cudnn" else 0.1
    return dict(attention_implementation=attention, attention_probs_dropout_prob=attention_dropout, **extra)


# ------------------------------------------------------------------------------------------ numerics


def attention_numerics(args, case: str, dtype: str, compare: str) -> dict:
    """`compare` = "cudnn vs xla" (same dtype) or "xla bfloat16 vs xla float32"; all dropout off."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import linen as nn

    from bert_jax.config import BertConfig
    from bert_jax.tasks.pretraining import (PretrainingTask, losses_from_statistics, model_inputs,
                                            pretraining_statistics)

    if compare == "cudnn vs xla" and gpu_skip_reason():
        return {"skipped": gpu_skip_reason()}
    preset, rows = ("tiny", 4) if args.smoke else ("base", 16)
    batch = padded_real_batch(rows) if case == "padding" else packed_real_batch(rows)
    seq_len, predictions = batch["input_ids"].shape[1], batch["masked_lm_ids"].shape[1]
    config = experiment_config(preset, seq_len, predictions)
    config.data.next_sentence_prediction = case == "padding"  # packed rows have no NSP label
    task = PretrainingTask(config)
    # Scanned layers: a shorter compile; the attention kernel is the same in every layer.
    base = BertConfig(**{**config.model.to_dict(), "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                         "scan_layers": True})

    def variant(implementation, compute_dtype):
        cfg = base.replace(attention_implementation=implementation, dtype=compute_dtype)
        return task.make_model(cfg)

    reference_model = variant("xla", "float32")
    params = jax.jit(lambda k: reference_model.init({"params": k}, jnp.zeros((1, 8), jnp.int32))["params"])(
        jax.random.PRNGKey(0))
    params = nn.meta.unbox(params)
    device_batch = jax.tree.map(jnp.asarray, batch)
    real = (batch["packed_segment_ids"] if case == "packed" else batch["input_mask"]) != 0

    def run(model):
        def loss(p):
            # One forward pass for the encoder output and the loss (the task's own loss formula on
            # the MLM logits gathered at the masked positions), so one compile per variant.
            out = model.apply({"params": p}, **model_inputs(device_batch), deterministic=True)
            positions = device_batch["masked_lm_positions"][..., None].astype(jnp.int32)
            heads = {"mlm_logits": jnp.take_along_axis(out["mlm_logits"], positions, axis=1),
                     "nsp_logits": out["nsp_logits"]}
            stats = pretraining_statistics(heads, device_batch, task.nsp)
            weight = jnp.ones(device_batch["input_ids"].shape[0], jnp.float32)
            value = losses_from_statistics(stats, weight, jnp)["loss"]
            return value, out["sequence_output"].astype(jnp.float32)

        (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return np.asarray(out), float(value), jax.tree.map(lambda g: np.asarray(g, np.float32), grads)

    if compare == "cudnn vs xla":
        a, b = run(variant("cudnn", dtype)), run(variant("xla", dtype))
    else:
        a, b = run(variant("xla", "bfloat16")), run(reference_model)
    reference = b if compare != "cudnn vs xla" or dtype == "float32" else run(reference_model)

    def grad_diffs(ga, gb):
        la, lb = jax.tree.leaves(ga), jax.tree.leaves(gb)
        max_abs = max(float(np.max(np.abs(x - y))) for x, y in zip(la, lb))
        diff = math.sqrt(sum(float(np.sum((x - y) ** 2)) for x, y in zip(la, lb)))
        norm = math.sqrt(sum(float(np.sum(y ** 2)) for y in lb))
        return max_abs, diff / max(norm, 1e-30)

    grad_max, grad_rel = grad_diffs(a[2], b[2])
    grad_max_ref, grad_rel_ref = grad_diffs(a[2], reference[2])
    return {
        "model": preset, "seq_len": int(seq_len), "batch_size": int(rows), "real_tokens": int(real.sum()),
        "segments": int(batch["packed_segment_ids"].max(axis=1).sum()) if case == "packed" else int(rows),
        "max_abs_diff_output": float(np.max(np.abs(a[0] - b[0])[real])),
        "max_abs_diff_output_vs_xla_float32": float(np.max(np.abs(a[0] - reference[0])[real])),
        "output_max_abs": float(np.max(np.abs(b[0])[real])),
        "nonfinite_output_anywhere": bool(not np.isfinite(a[0]).all()),
        "loss": a[1], "loss_reference": b[1], "abs_diff_loss": abs(a[1] - b[1]),
        "grad_max_abs_diff": grad_max, "grad_rel_l2_diff": grad_rel,
        "grad_max_abs_diff_vs_xla_float32": grad_max_ref, "grad_rel_l2_diff_vs_xla_float32": grad_rel_ref,
    }


# ------------------------------------------------------------------------------------------ real runs


def array_pretraining_task(config, train_arrays: dict, eval_arrays: dict):
    """bert_jax's PretrainingTask on decoded instance arrays (an ArraySource) instead of the grain +
    tf.io input pipeline, which needs TensorFlow and grain, two packages the lent GPU machine lacks."""
    from bert_jax.tasks.pretraining import ArraySource, PretrainingTask
    return PretrainingTask(config, ArraySource(train_arrays, eval_arrays))


_TRAINED: dict = {}


def pretraining_run(args, attention: str) -> dict:
    import jax

    from bert_jax import train
    from bert_jax import run_files

    preset = "tiny" if args.smoke else "mini"
    steps, batch_size = (10, 8) if args.smoke else (args.mini_steps, 128)
    train_arrays = instance_arrays("train", limit=512 if args.smoke else None)
    eval_arrays = instance_arrays("heldout", limit=64 if args.smoke else None)
    if attention == "cudnn" and gpu_skip_reason():
        return {"skipped": gpu_skip_reason()}
    config = experiment_config(preset, 128, 20, synthetic=False)
    config.data.input_files = TRAIN_FILES  # recorded in config.json; the task reads the decoded arrays
    config.task.eval_input_files = HELDOUT_FILES
    config.task.num_eval_batches = 2 if args.smoke else len(eval_arrays["input_ids"]) // batch_size
    config.model.update(dtype=args.dtype, param_dtype="float32",
                        **model_fields(attention, attention_dropout=0.0))
    config.train.update(batch_size=batch_size, num_steps=steps, log_every=1 if args.smoke else 5,
                        eval_every=0, eval_batch_size=batch_size)
    # 200 steps: a higher peak than the paper's 1e-4 so the curve shows learning.
    config.optimizer.update(learning_rate=1e-3, warmup_steps=max(1, steps // 10))
    config.checkpoint.update(every_steps=max(1, steps // 2), keep=2, async_save=True)
    config.logging.update(tensorboard=False, progress_bar=False, peak_flops_per_device=args.peak_tflops * 1e12)
    task = array_pretraining_task(config, train_arrays, eval_arrays)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="gpu_check_run_"))
    results, state = train.train_and_evaluate(config, str(workdir), task=task, return_state=True)
    rows = run_files.read_metrics(workdir)
    train_rows = [r for r in rows if r["split"] == "train"]
    _TRAINED.update(state=state, config=config, workdir=workdir, task=task, eval_arrays=eval_arrays)
    final = results["final_metrics"]
    later = [r for r in train_rows if r["step"] > 1] or train_rows
    return {
        "model": preset, "steps": steps, "batch_size": batch_size, "seq_len": 128,
        "train_instances": int(len(train_arrays["input_ids"])), "heldout_instances": int(len(eval_arrays["input_ids"])),
        "data": str(pathlib.Path(TRAIN_FILES).relative_to(ROOT)),
        "attention_implementation": config.model.attention_implementation, "dtype": args.dtype,
        "loss_curve": [[r["step"], round(r["loss"], 4)] for r in train_rows],
        "mlm_loss_curve": [[r["step"], round(r["mlm_loss"], 4)] for r in train_rows],
        "first_loss": train_rows[0]["loss"], "last_loss": train_rows[-1]["loss"],
        "heldout": {k: final[k] for k in ("mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy") if k in final},
        "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in later),
        "step_time_s_median": statistics.median(r["step_time_s"] for r in later),
        "mfu_median": statistics.median(r["mfu"] for r in later),
        "compile_time_s": results["compile_time_s"], "compiled_step": results["compiled_step"],
        "checkpoint_s_total": sum(r.get("checkpoint_s", 0.0) for r in train_rows),
        "nonfinite_steps_skipped": results["nonfinite_steps_skipped"],
        "device_kind": jax.devices()[0].device_kind,
    }


def checkpoint_roundtrip(args) -> dict:
    """The trained TrainState through bert_jax.run_checkpoints (orbax): save, wait, restore onto
    the same shardings, compare every leaf; and the trainer's own last checkpoint."""
    import jax
    import numpy as np

    from bert_jax import run_checkpoints

    if "state" not in _TRAINED:
        raise RuntimeError("no trained state: the pretraining_run measurement failed or was skipped")
    state, config, workdir = _TRAINED["state"], _TRAINED["config"], _TRAINED["workdir"]
    step = int(jax.device_get(state.step))
    trainer_checkpointer = run_checkpoints.RunCheckpointer(workdir, config.checkpoint)
    trainer_latest = trainer_checkpointer.latest_step()
    trainer_checkpointer.close()
    params_from_trainer, _ = run_checkpoints.restore_params(workdir)

    directory = pathlib.Path(tempfile.mkdtemp(prefix="gpu_check_ckpt_"))
    checkpointer = run_checkpoints.RunCheckpointer(directory, dict(every_steps=1, keep=1, keep_best=False,
                                                                   async_save=True))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    start = time.perf_counter()
    checkpointer.save(step, state, {"gpu_check": True}, {"step": step}, force=True)
    started = time.perf_counter() - start
    checkpointer.wait_until_finished()
    saved = time.perf_counter() - start
    start = time.perf_counter()
    restored, iterator_state, meta = checkpointer.restore(step, abstract)
    jax.block_until_ready(restored)
    restore_s = time.perf_counter() - start
    checkpointer.close()

    pairs = list(zip(jax.tree.leaves(state), jax.tree.leaves(restored)))
    max_diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if a.size else 0.0
                   for a, b in pairs)
    trainer_diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                       for a, b in zip(jax.tree.leaves(jax.device_get(state.params)),
                                       jax.tree.leaves(params_from_trainer)))
    nbytes = sum(int(a.size) * a.dtype.itemsize for a, _ in pairs)
    return {
        "step": step, "leaves": len(pairs), "state_bytes": nbytes,
        "same_structure": jax.tree.structure(state) == jax.tree.structure(restored),
        "same_dtypes_shapes": all(a.dtype == b.dtype and a.shape == b.shape for a, b in pairs),
        "max_abs_diff": max_diff, "restored_platform": sorted({d.platform for a in jax.tree.leaves(restored)
                                                              for d in a.devices()}),
        "save_dispatch_s": started, "save_s": saved, "restore_s": restore_s,
        "iterator_state_roundtrip": iterator_state == {"gpu_check": True}, "meta": meta,
        "trainer_latest_step": trainer_latest, "trainer_checkpoint_params_max_abs_diff": trainer_diff,
    }


def precision_numerics(args) -> dict:
    """float32 vs bfloat16 compute (float32 params) on held-out real text, through
    PretrainingTask.predict / evaluate: MLM and NSP loss and accuracy."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from bert_jax.config import BertConfig
    from bert_jax.tasks import features

    if "state" in _TRAINED:
        params, config, task = _TRAINED["state"].params, _TRAINED["config"], _TRAINED["task"]
        eval_arrays, source = _TRAINED["eval_arrays"], f"trained {int(jax.device_get(_TRAINED['state'].step))} steps (pretraining_run)"
    else:  # the run failed: still compare, on a fresh init
        config = experiment_config("tiny" if args.smoke else "mini", 128, 20, synthetic=False)
        eval_arrays = instance_arrays("heldout", limit=64 if args.smoke else None)
        task = array_pretraining_task(config, eval_arrays, eval_arrays)
        model = task.make_model(BertConfig(**config.model.to_dict()))
        params = nn.meta.unbox(model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 8), jnp.int32))["params"])
        source = "fresh init (pretraining_run did not leave a trained state)"
    batches = features.padded_batches(eval_arrays, 8 if args.smoke else 64)
    base = BertConfig(**config.model.to_dict())
    out = {"params": source, "heldout_instances": int(len(eval_arrays["input_ids"])),
           "model_layers": base.num_hidden_layers, "hidden_size": base.hidden_size}
    variants = [("float32", "xla"), ("bfloat16", "xla")]
    if gpu_skip_reason() is None:
        variants.append(("bfloat16", "cudnn"))
    else:
        out["bfloat16_cudnn_skipped"] = gpu_skip_reason()
    for dtype, implementation in variants:
        model = task.make_model(base.replace(dtype=dtype, **model_fields(implementation, attention_dropout=0.0)))
        predict = jax.jit(lambda p, b, m=model: task.predict(m, p, b))
        predictions = [jax.tree.map(lambda x: jax.device_get(x), predict(params, jax.tree.map(jnp.asarray, b)))
                       for b in batches]
        name = dtype if implementation == "xla" else f"{dtype}_cudnn"
        out[name] = task.evaluate(predictions, batches)
    for name in [n for n in ("bfloat16", "bfloat16_cudnn") if n in out]:
        for metric in ("mlm_loss", "nsp_loss"):
            out[f"{name}_minus_float32_{metric}"] = out[name][metric] - out["float32"][metric]
    return out


# ------------------------------------------------------------------------------------------ speed


_SPEED: dict = {}


def time_train_step(args, preset: str, seq_len: int, predictions: int, batch_size: int, fields: dict,
                    steps: int, warmup: int) -> dict:
    """bert_jax.step_timing's measurement (the trainer's jit step under its mesh and rules, on
    synthetic batches, compiled ahead of time, timed dispatch to block_until_ready), with the
    model run fields given, plus what the GPU check reads off the compiled program."""
    import jax

    from bert_jax import step_timing
    from bert_jax.tasks.pretraining import PretrainingTask

    config = experiment_config(preset, seq_len, predictions)
    config.model.update(dtype=args.dtype, param_dtype="float32", **fields)
    total_steps = warmup + steps
    config.train.update(batch_size=batch_size, grad_accum_steps=1, num_steps=10 * total_steps)
    config.optimizer.warmup_steps = total_steps  # the lr value does not change the cost of a step
    memory_before = device_memory()
    step = step_timing.compile_step(config, PretrainingTask(config), batch_size)
    figures = step_timing.time_train_step(step, steps, warmup, args.peak_tflops * 1e12)
    fmha_calls = step.compiled.as_text().count("__cudnn$fmha")
    memory_after = device_memory()
    memory = compiled_memory(step.compiled)
    facts = step.facts
    del step
    gc.collect()
    jax.clear_caches()

    device_peak = None
    if memory_after and "peak_bytes_in_use" in memory_after:
        # The allocator's peak is over the whole process: it is this row's own only if it grew here.
        grew = memory_before is None or memory_after["peak_bytes_in_use"] > memory_before.get("peak_bytes_in_use", 0)
        device_peak = {"peak_bytes_in_use": memory_after["peak_bytes_in_use"], "set_by_this_row": grew,
                       "bytes_limit": memory_after.get("bytes_limit")}
    return {
        **{k: v for k, v in figures.items() if k != "step_times_s"},
        "compiled_memory": memory, "device_memory": device_peak, "cudnn_fmha_calls": fmha_calls,
        "dot_general_result_dtypes": facts["dot_general_result_dtypes"], "param_dtypes": facts["param_dtypes"],
        "optimization_barriers": facts["optimization_barriers"],
        "device_kind": jax.devices()[0].device_kind,
    }


def speed_settings(args, case: str, attention: str, remat: str, scan: bool, attention_dropout=None,
                   batch_size=None) -> dict:
    preset, seq_len, predictions, default_batch = (SMOKE_SHAPES if args.smoke else SHAPES)[case]
    fields = model_fields(attention, attention_dropout, remat=remat, scan_layers=scan)
    return {"case": case, "model": preset, "seq_len": seq_len, "masked_predictions": predictions,
            "batch_size": batch_size or default_batch, "dtype": args.dtype, "param_dtype": "float32", **fields}


def speed(args, settings: dict, steps: int | None = None, warmup: int | None = None) -> dict:
    """time_train_step at `settings` (a speed_settings dict), measured once per settings and steps."""
    steps, warmup = steps or args.steps, warmup or args.warmup
    reason = gpu_skip_reason() if settings["attention_implementation"] == "cudnn" else None
    if reason:
        return {"skipped": reason}
    measured = {k: v for k, v in settings.items() if k != "case"}  # what the step computes, not its label
    key = json.dumps({**measured, "steps": steps, "warmup": warmup}, sort_keys=True)
    if key in _SPEED:
        return {**_SPEED[key], "cached": True}
    fields = {k: settings[k] for k in ("attention_implementation", "attention_probs_dropout_prob",
                                       "remat", "scan_layers")}
    _SPEED[key] = time_train_step(args, settings["model"], settings["seq_len"], settings["masked_predictions"],
                                  settings["batch_size"], fields, steps=steps, warmup=warmup)
    return dict(_SPEED[key])


def attention_dropout_comparison(args) -> dict:
    rows = []
    for attention, dropout in (("xla", 0.1), ("xla", 0.0), ("cudnn", 0.0)):
        settings = speed_settings(args, "large@512", attention, "none", True, attention_dropout=dropout)
        try:
            fresh = args.smoke and attention == "xla" and dropout == 0.0  # the one row not in the cache
            result = {"skipped": SMOKE_VARIANT} if fresh else speed(args, settings)
        except Exception as error:
            result = error_fields(error)
        rows.append({"attention_implementation": attention, "attention_probs_dropout_prob": dropout,
                     **{k: result[k] for k in ("tokens_per_s", "step_time_s", "mfu", "cudnn_fmha_calls",
                                               "skipped", "error") if k in result}})
    out = {"case": "large@512", "rows": rows}
    paper, fused = rows[0].get("tokens_per_s"), rows[2].get("tokens_per_s")
    if paper and fused:
        out["speedup_cudnn_dropout0_over_xla_dropout01"] = fused / paper
    if paper and rows[1].get("tokens_per_s"):
        out["speedup_xla_dropout0_over_xla_dropout01"] = rows[1]["tokens_per_s"] / paper
    return out


def max_batch(args, remat: str) -> dict:
    """Doubling from --max_batch_start until out of memory or --max_batch_cap, then one bisection
    between the largest batch that ran and the first that did not."""
    attention = "xla" if gpu_skip_reason() else "cudnn"
    tried, largest, first_oom = [], None, None

    def attempt(batch_size):
        settings = speed_settings(args, "large@512", attention, remat, True, batch_size=batch_size)
        start = time.perf_counter()
        try:
            # One untimed and one timed step per size on a GPU; --smoke takes the speed rows' steps,
            # so its one size comes from their cache.
            result = speed(args, settings, *((None, None) if args.smoke else (1, 1)))
            tried.append({"batch_size": batch_size, "fits": True, "tokens_per_s": result["tokens_per_s"],
                          "mfu": result["mfu"], "seconds": time.perf_counter() - start,
                          "compiled_peak_bytes": (result["compiled_memory"] or {}).get("peak_memory_bytes")})
            return True
        except Exception as error:
            gc.collect()
            if not is_oom(error):
                raise
            tried.append({"batch_size": batch_size, "fits": False, "seconds": time.perf_counter() - start,
                          "error": str(error).splitlines()[0][:200]})
            return False

    batch = args.max_batch_start
    budget = Budget(args.budget_s)
    while batch <= args.max_batch_cap and budget.left() > args.max_batch_point_s:
        if attempt(batch):
            largest = batch
            batch *= 2
        else:
            first_oom = batch
            break
    if largest and first_oom and first_oom - largest > 8 and budget.left() > args.max_batch_point_s:
        middle = (largest + first_oom) // 2 // 8 * 8
        if attempt(middle):
            largest = middle
        else:
            first_oom = middle
    settings = speed_settings(args, "large@512", attention, remat, True)
    best = max((t for t in tried if t["fits"]), key=lambda t: t["batch_size"], default=None)
    return {**{k: settings[k] for k in ("model", "seq_len", "attention_implementation",
                                        "attention_probs_dropout_prob", "remat", "scan_layers")},
            "largest_batch_that_fits": largest, "first_batch_out_of_memory": first_oom,
            "cap_reached": first_oom is None and largest is not None and largest * 2 > args.max_batch_cap,
            "stopped_by_time_budget": first_oom is None and (largest or 0) * 2 <= args.max_batch_cap,
            "tokens_per_s_at_largest": best and best["tokens_per_s"], "mfu_at_largest": best and best["mfu"],
            "tried": tried}


# ------------------------------------------------------------------------------------------ the plan


def environment() -> dict:
    import importlib.util

    import jax
    import jaxlib
    out = {"python": sys.version.split()[0], "jax": jax.__version__, "jaxlib": jaxlib.__version__,
           "backend": jax.default_backend(), "devices": jax.device_count(),
           "device_kind": jax.devices()[0].device_kind, "memory_stats_keys": sorted((jax.devices()[0].memory_stats() or {}))[:40],
           "XLA_PYTHON_CLIENT_MEM_FRACTION": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    needed = ("flax", "optax", "orbax.checkpoint", "numpy", "etils", "ml_collections", "google_crc32c",
              "google.protobuf", "absl", "yaml")
    out["missing_modules"] = [m for m in needed if importlib.util.find_spec(m.split(".")[0]) is None]
    for name in ("flax", "optax", "orbax.checkpoint"):
        try:
            module = __import__(name, fromlist=["_"])
            out[name.replace(".", "_")] = getattr(module, "__version__", "?")
        except ImportError:
            pass
    return out


def plan(args) -> list[tuple]:
    """(kind, settings, fn, estimated seconds on an H200), most important first: the time budget
    skips what does not fit, so the BERT-large@512 recipe candidates and the real runs come before
    the other shapes and the reference rows. The estimates are guesses (no H200 was lent yet)."""
    steps = []

    def numerics_step(case, dtype, compare, estimate):
        return ("attention_numerics", {"case": case, "dtype": dtype, "compare": compare},
                lambda: attention_numerics(args, case, dtype, compare), estimate)

    def speed_step(case, attention, remat, scan, estimate):
        settings = speed_settings(args, case, attention, remat, scan)
        variant = remat != "none" or not scan
        if args.smoke and variant and attention == "xla":  # the same step, other run fields: one more compile
            return ("train_step_speed", settings, lambda: {"skipped": SMOKE_VARIANT}, 0)
        return ("train_step_speed", settings, lambda: speed(args, settings), estimate)

    def run_step(attention):
        def run():
            if attention == "xla" and "state" in _TRAINED:
                return {"skipped": "the cudnn run above succeeded; this xla run is its stand-in only when it fails"}
            return pretraining_run(args, attention)
        return ("pretraining_run", {"attention_implementation": attention}, run, 40)

    # 1. cuDNN against XLA in bf16 (the dtype it trains in), and BERT-large@512 with each.
    steps += [numerics_step(case, "bfloat16", "cudnn vs xla", 25) for case in ("padding", "packed")]
    steps += [speed_step("large@512", attention, "none", True, 35) for attention in ("cudnn", "xla")]
    # 2. The two real runs (the xla run only if the cudnn one failed), then bf16 vs float32 loss.
    steps += [run_step("cudnn"), run_step("xla")]
    steps.append(("checkpoint_roundtrip", {}, lambda: checkpoint_roundtrip(args), 10))
    steps.append(("precision_numerics", {}, lambda: precision_numerics(args), 15))
    # 3. The GPU recipe's other candidates at BERT-large@512, dropout, the largest batch.
    steps.append(speed_step("large@512", "cudnn", "full", True, 40))
    steps.append(speed_step("large@512", "cudnn", "none", False, 70))
    steps.append(("attention_dropout", {"case": "large@512"}, lambda: attention_dropout_comparison(args), 35))
    for remat in ("none", "full"):
        search = (lambda: {"skipped": SMOKE_VARIANT}) if args.smoke and remat != "none" else (
            lambda r=remat: max_batch(args, r))
        steps.append(("max_batch", {"case": "large@512", "remat": remat}, search, 3 * args.max_batch_point_s))
    # 4. The other shapes, each attention implementation; the remaining reference rows.
    for case, estimate in (("base@128", 20), ("large@128", 30)):
        steps += [speed_step(case, attention, "none", True, estimate) for attention in ("cudnn", "xla")]
    steps += [numerics_step(case, "bfloat16", "xla bfloat16 vs xla float32", 15) for case in ("padding", "packed")]
    steps += [numerics_step(case, "float32", "cudnn vs xla", 20) for case in ("padding", "packed")]
    # 5. The remaining remat / scan variants, while time is left.
    steps.append(speed_step("large@512", "xla", "full", True, 40))
    steps.append(speed_step("large@512", "xla", "none", False, 70))
    if not args.smoke:
        for attention in ("cudnn", "xla"):
            steps.append(speed_step("large@512", attention, "full", False, 70))
            for case in ("base@128", "large@128"):
                steps.append(speed_step(case, attention, "full", True, 30))
                steps.append(speed_step(case, attention, "none", False, 60))
    return steps


def summary(args) -> dict:
    counts = {"ok": 0, "error": 0, "skipped": 0}
    for line in _LINES:
        if line["kind"] in ("environment", "summary"):
            continue
        counts["error" if "error" in line else "skipped" if "skipped" in line else "ok"] += 1
    large = [l for l in _LINES if l["kind"] == "train_step_speed" and l.get("case") == "large@512" and "mfu" in l]
    best = max(large, key=lambda l: l["mfu"], default=None)
    keys = ("attention_implementation", "attention_probs_dropout_prob", "remat", "scan_layers", "batch_size",
            "mfu", "tokens_per_s")
    return {"lines": counts, "smoke": args.smoke, "budget_s": args.budget_s,
            "best_large_512": best and {k: best[k] for k in keys},
            "tensorflow_imported": "tensorflow" in sys.modules, "grain_imported": "grain" in sys.modules}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU (tests/test_gpu_check.py)")
    parser.add_argument("--peak_tflops", type=float, default=790.0,
                        help="peak bf16 TFLOP/s per device for MFU (790: measured on the lent H200)")
    parser.add_argument("--budget_s", type=float, default=330.0,
                        help="start no measurement that would not fit in this many seconds since start")
    parser.add_argument("--hard_limit_s", type=float, default=420.0,
                        help="print a summary and exit (code 124) at this many seconds, whatever runs")
    parser.add_argument("--dtype", default=None,
                        help="compute dtype of the speed rows and the BERT-mini run (params stay float32); "
                             "default bfloat16, float32 with --smoke (half the CPU compile time)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per speed row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per speed row")
    parser.add_argument("--mini_steps", type=int, default=200, help="steps of the BERT-mini run")
    parser.add_argument("--max_batch_start", type=int, default=128)
    parser.add_argument("--max_batch_cap", type=int, default=2048)
    parser.add_argument("--max_batch_point_s", type=float, default=30.0,
                        help="estimated seconds per tried batch size (the search stops when less is left)")
    parser.add_argument("--only", default="", help="comma-separated kinds to run (default: all)")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("float32" if args.smoke else "bfloat16")
    if args.smoke:
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
        batch = SMOKE_SHAPES["large@512"][3]
        args.max_batch_start, args.max_batch_cap, args.max_batch_point_s = batch, batch, 0.0

    sys.stdout = sys.stderr  # libraries' prints must not mix with the JSON lines
    if args.smoke:  # a CPU dry run: XLA:CPU's LLVM passes are most of its compile time (-30%)
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0",
                                            "--xla_llvm_disable_expensive_passes=true"]).strip()
    # Let a batch search use most of the GPU (JAX's default preallocates 75%); set before jax loads.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    def hard_stop():
        emit("summary", **summary(args), error=f"hard time limit: stopped at --hard_limit_s={args.hard_limit_s}")
        os._exit(124)

    watchdog = threading.Timer(max(1.0, args.hard_limit_s - (time.perf_counter() - START)), hard_stop)
    watchdog.daemon = True
    watchdog.start()

    budget = Budget(args.budget_s)
    measure("environment", {}, environment, budget)
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    unknown = only - set(KINDS)
    if unknown:
        parser.error(f"--only: unknown kinds {sorted(unknown)}; kinds: {', '.join(KINDS)}")
    for kind, settings, fn, estimate in plan(args):
        if only and kind not in only:
            continue
        measure(kind, settings, fn, budget, 0.0 if args.smoke else estimate)
    watchdog.cancel()
    emit("summary", **summary(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
