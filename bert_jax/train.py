"""The generic training loop: any Task (pretraining or fine-tuning) on any mesh, one or many hosts.

    results = train_and_evaluate(config, workdir)

- The mesh and the logical-axis rules come from `config.mesh`; params and optimizer state are
  created directly on their shardings; the train step is one `jax.jit` with in/out shardings and
  a donated state. One jit step = one optimizer update (micro-batches are a scan inside it).
- A workdir that holds a checkpoint resumes from the newest complete one (params, optimizer,
  step, RNG, input position), with no flag. `config.init_from` instead warm-starts the weights of
  a fresh run from a pretrained model (google-research/bert#632: not the same as resuming).
- SIGTERM, or a first Ctrl-C, saves a checkpoint at the current step and returns (exit code 0
  from main); a second Ctrl-C aborts. An error in the loop first finishes the save in flight, then
  names the newest checkpoint on disk. The final save comes before the final evaluation.
- One run per workdir: process 0 holds <workdir>/run.lock (bert_jax.workdir_lock) for the run.
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

import json
import logging
import math
import os
import signal
import time

import jax
from etils import epath
from flax import linen as nn

from bert_jax import flops as flops_lib
from bert_jax import representation, run_checkpoints, sharding, train_utils
from bert_jax import run_files
from bert_jax.batch_checks import check_index_ranges
from bert_jax.metrics_logging import MetricsWriter, ProgressBar
from bert_jax.predict import Predictor, check_token_ids
from bert_jax.run_checkpoints import RunCheckpointer
from bert_jax.run_config import resolve_config, validate
from bert_jax.train_utils import checkpoint_config, compile_train_step
from bert_jax.workdir_lock import WorkdirLock

log = logging.getLogger("bert_jax.train")


class NonFiniteError(FloatingPointError):
    pass


# --------------------------------------------------------------------------- the loop


class _SigtermFlag:
    """Set by SIGTERM or a first Ctrl-C (SIGINT); the loop checks it after every step (one host: a
    flag is enough). A second Ctrl-C raises KeyboardInterrupt: the user wants out now."""

    def __init__(self):
        self.raised = False
        self._previous = None
        self._previous_int = None

    def __enter__(self):
        if jax.process_count() > 1:
            # Multi-host: JAX's preemption notifier (installed by jax.distributed.initialize)
            # owns SIGTERM, and `_preempted` asks it; a Python handler would replace it.
            return self
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._previous_int = signal.signal(signal.SIGINT, self._handle_int)
        except ValueError:  # not the main thread: no handler, no preemption support
            self._previous = self._previous_int = None
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint at the end of this step, then exiting")
        self.raised = True

    def _handle_int(self, signum, frame):
        if self.raised:
            raise KeyboardInterrupt("second Ctrl-C: aborting without saving")
        log.warning("Ctrl-C: saving a checkpoint at the end of this step, then exiting (Ctrl-C again aborts)")
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        if self._previous_int is not None:
            signal.signal(signal.SIGINT, self._previous_int)


class _FinishSaveOnError:
    """An error in the loop (a non-finite loss, a bad batch, an evaluation error) first finishes
    the async save in flight, so its checkpoint is kept rather than left as a temporary directory,
    then names the newest checkpoint on disk. A second Ctrl-C (KeyboardInterrupt) does not wait:
    orbax's commit is atomic, so older checkpoints are intact either way."""

    def __init__(self, checkpointer, step_fn):
        self.checkpointer, self.step_fn = checkpointer, step_fn

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return False
        if not issubclass(exc_type, KeyboardInterrupt):
            try:
                self.checkpointer.wait_until_finished()
            except Exception as e:  # the save itself failed: report it, raise the first error
                log.error("the checkpoint being written could not be finished: %s", e)
        try:
            newest = self.checkpointer.newest_on_disk()
        except Exception:
            newest = None
        log.error("stopped at step %d by %s; newest checkpoint on disk: %s", self.step_fn(), exc_type.__name__,
                  newest or "none" + ("" if newest else " (a rerun starts from step 0)"))
        return False


class _SkipWatch:
    """nonfinite_policy='skip': warns on every skipped step and halts after `limit` in a row (a run
    that skips every step trains nothing, and must not end as if it had)."""

    def __init__(self, limit: int, skipped_so_far: int):
        self.limit, self.seen, self.in_a_row = limit, skipped_so_far, 0

    def after_step(self, step: int, skipped_total: int) -> None:
        if skipped_total == self.seen:
            self.in_a_row = 0
            return
        self.seen, self.in_a_row = skipped_total, self.in_a_row + 1
        log.warning("step %d: non-finite loss or gradient norm, update skipped (%d in a row, %d in all; "
                    "config.train.nonfinite_policy='skip')", step, self.in_a_row, skipped_total)
        if self.in_a_row >= self.limit:
            raise NonFiniteError(
                f"{self.in_a_row} steps in a row up to step {step} had a non-finite loss or gradient norm and were "
                f"skipped (config.train.nonfinite_skip_limit={self.limit}); lower the learning rate or check the data")


def _preempted(flag: _SigtermFlag, step: int) -> bool:
    if jax.process_count() == 1:
        return flag.raised
    # Every host must agree on the step to save at: the coordination service's preemption
    # notice (it listens for SIGTERM on each host) gives one answer to all of them.
    # (A host-local flag must not decide: a host saving alone would wait forever for the others.)
    from jax.experimental import multihost_utils
    return multihost_utils.reached_preemption_sync_point(step)


def _eval_source(config) -> str:
    """What the eval batches are read from, for error messages."""
    for where, value in (("config.task.eval_input_files", config.task.get("eval_input_files")),
                         ("config.eval_file", config.get("eval_file"))):
        if value and not config.task.get("synthetic_data"):
            return f"{where}={value}"
    if config.task.get("synthetic_data"):
        return "the synthetic eval batches"
    return f"the eval data of task {config.task.name!r}"


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
    `resolve_config(config, ...)`, which config.json (written before step 1) records. Process 0
    holds the workdir's lock from just before its first write to the end (WorkdirLocked if
    another run holds it)."""
    lock = WorkdirLock(os.fspath(workdir), enabled=jax.process_index() == 0)
    try:
        return _train_and_evaluate(config, workdir, task, devices, return_state, lock)
    finally:
        lock.release()


def _train_and_evaluate(config, workdir, task, devices, return_state: bool, lock: WorkdirLock):
    from bert_jax.tasks import make_task

    validate(config)
    workdir = epath.Path(workdir)  # local or gs:// (checkpoints: orbax; records: etils.epath)
    process_index, process_count = jax.process_index(), jax.process_count()
    is_main = process_index == 0

    # ---- every check before the workdir is touched
    task = make_task(config) if task is None else task
    config = resolve_config(config, getattr(task, "num_train_examples", None), checkpoint_config(config.init_from))
    validate(config)
    tc = config.train
    total_steps = int(tc.num_steps)
    run = train_utils.build(config, task, devices)
    mesh, bert_config = run.mesh, run.bert_config
    # A fresh model evaluated only (num_steps=0, no init_from) is saved at step 0, with its
    # iterator: that is the random-init control a sweep fine-tunes (same architecture and init).
    fresh_control = total_steps == 0 and not config.init_from
    train_iter = (task.train_iterator(int(tc.batch_size), int(config.seed), process_index, process_count)
                  if total_steps > 0 or fresh_control else None)
    latest = run_checkpoints.latest_step(workdir)  # reads only: None for a fresh run
    pretrained = None
    if latest is None and config.init_from:
        # init_from's weights, read and fitted to the model (names, shapes) before the workdir
        # gets anything: a bad checkpoint is refused here. A resumed run never reads them.
        pretrained = train_utils.merge_pretrained(run.layout.abstract_state.params,
                                                  train_utils.load_init_from(config.init_from), config.init_from)

    # ---- the workdir: held by this run alone; restored from (verified, falling back past a damaged
    # step) before anything is written, then the run's record, then metrics
    lock.acquire()
    workdir.mkdir(parents=True, exist_ok=True)
    checkpointer = RunCheckpointer(workdir, config.checkpoint, task.main_metric,
                                   getattr(task, "higher_is_better", True))
    restored = None
    if latest is not None:
        with jax.set_mesh(mesh), nn.logical_axis_rules(run.rules):
            restored = checkpointer.restore_newest(run.layout.abstract_state,
                                                   restart_data_order=bool(tc.restart_data_order))
        latest = None if restored is None else restored[0]
    if is_main:
        run_files.record_run(workdir, config.to_dict(), bert_config, run.model, getattr(task, "label_names", None),
                             latest, process_count, jax.device_count())
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
    with jax.set_mesh(mesh), nn.logical_axis_rules(run.rules):
        meta: dict = {}
        if restored is not None:
            # ---- resume: everything from the newest intact checkpoint
            _, state, iterator_state, meta = restored
            restored = None
            if train_iter is not None and iterator_state is not None:
                train_iter.set_state(iterator_state)
            log.info("resumed from %s at step %d", checkpointer.directory / str(latest), latest)
        else:
            state = run.layout.fresh_state(run.tx, train_utils.initial_params(run, pretrained))
            pretrained = None

        train_step = run.jit_train_step(task)
        compiled_step, compile_time_s, step_facts, compile_logged = None, None, None, False
        predictor = Predictor(task, run.model, mesh, run.rules, run.layout.param_shardings, bert_config.vocab_size,
                              bert_config.type_vocab_size)
        params_finite = jax.jit(train_utils.all_finite)

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
            """Evaluates, writes the eval row and updates the best: the one sequence of every evaluation."""
            nonlocal best
            start = time.perf_counter()
            predictions, batches = predictor(state.params, task.eval_batches(int(tc.eval_batch_size)), eval_source,
                                             progress=is_main and bool(config.logging.progress_bar))
            if not batches:
                return {}  # the task has no held-out data
            metrics = task.evaluate(predictions, batches)
            if is_main and hasattr(task, "write_predictions"):
                task.write_predictions(predictions, batches, workdir / run_files.PREDICTIONS_DIR)
            if metrics:
                writer.write(step, "eval", metrics)
                best = _update_best(best, metrics, step, task)
                collapsed = representation.collapse_warning(metrics)
                if collapsed and is_main:
                    log.warning("step %d: %s", step, collapsed)
            clock.add("eval", time.perf_counter() - start)
            return metrics

        def save(metrics=None, force=False):
            start = time.perf_counter()
            check_finite_policy()
            if not bool(jax.device_get(params_finite(state.params))):
                raise NonFiniteError(f"params are not finite at step {step}; refusing to write a checkpoint")
            meta_out = {"step": step, "best": best, "last_eval": eval_metrics, "process_count": process_count}
            writer.flush()  # a gs:// workdir: the rows of the steps this checkpoint covers reach it first
            checkpointer.save(step, state, train_iter.get_state(), meta_out, metrics=metrics, force=force)
            clock.add("checkpoint", time.perf_counter() - start)

        preempted = False
        keep_save = _FinishSaveOnError(checkpointer, lambda: step)
        skips = _SkipWatch(int(tc.get("nonfinite_skip_limit", 10)), int(jax.device_get(state.nonfinite_steps)))
        with _SigtermFlag() as sigterm, keep_save:
            stop_at = int(tc.stop_at_step) or total_steps
            while step < min(total_steps, stop_at):
                data_start = time.perf_counter()
                host_batch = next(train_iter)
                check_token_ids(host_batch, bert_config.vocab_size, f"step {step + 1}")
                check_index_ranges(host_batch, bert_config.type_vocab_size, f"step {step + 1}")
                batch = sharding.make_global_batch(host_batch, mesh)
                step_start = time.perf_counter()
                clock.add("data_wait", step_start - data_start)
                if compiled_step is None:  # compiled once per process start, timed on its own
                    compiled_step, compile_time_s, step_facts, _ = compile_train_step(train_step, state, batch)
                    log.info("train step compiled in %.2f s: %s", compile_time_s, step_facts)
                    step_start = time.perf_counter()
                state, metrics = compiled_step(state, batch)
                jax.block_until_ready(metrics)  # the step's time ends when its results exist
                clock.add("step", time.perf_counter() - step_start)
                step += 1
                if tc.nonfinite_policy == "skip":
                    skips.after_step(step, int(jax.device_get(state.nonfinite_steps)))
                clock.steps += 1
                bar.update(step)  # every step, so the bar and its ETA move between logged steps
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
                        mfu=flops_lib.mfu(tokens_per_s, flops_per_token, peak, peak_source, jax.device_count()),
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
            with keep_save:
                check_finite_policy()
                skipped = int(jax.device_get(state.nonfinite_steps))
                if total_steps > 0 and step > 0 and skipped >= step:
                    raise NonFiniteError(f"all {step} steps had a non-finite loss or gradient norm and were skipped "
                                         f"(config.train.nonfinite_policy='skip'): nothing was trained")
                # Saved before the final evaluation, so an evaluation error never costs the trained model.
                # No metrics: keep-last-K keeps it; the final evaluation's metrics are in results.json.
                if (total_steps > 0 or fresh_control) and checkpointer.latest_step() != step:
                    save(force=True)
                eval_metrics = evaluate()
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
        run_files.write_json_atomic(workdir / run_files.RESULTS_FILE, results)
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
