"""Run checkpoints (orbax CheckpointManager): save, keep, find and restore a training run's state.

A checkpoint at step N holds
  state     the TrainState pytree (params, optimizer state, step, RNG, non-finite counters),
            saved sharded and restored onto the shardings the caller asks for;
  iterator  the input pipeline's `get_state()` of every process (JSON), so the batches after a
            restore are exactly those an uninterrupted run would have seen;
  meta      step and a few facts about the run (JSON, written by process 0);
  checksums a crc32c of every array of `state` (bert_jax.checkpoints.checksums), unless
            `verify` is off.
orbax writes into a temporary directory and renames it when complete, so `latest_step()` never
returns a half-written checkpoint: a run killed mid-save resumes from the previous one. Bytes
changed at rest (a flipped bit, a truncated or missing file) are what the checksums and the
fall-back are for: `restore_newest` skips a damaged step with a warning that names it and why,
resumes from the newest intact one, and moves the damaged ones to damaged_checkpoints/.

Config fields (`config.checkpoint`): every_steps, keep (last K), keep_best, async_save, verify.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bert_jax.checkpoints import checksums as checksums_lib
from bert_jax.checkpoints.validation import CheckpointError
from bert_jax.run_files import CHECKPOINT_DIR, DAMAGED_DIR, WorkdirError, read_json

log = logging.getLogger("bert_jax.run_checkpoints")

CHECKSUMS_ITEM = "checksums"


def gather_process_states(local_state: Mapping[str, Any]) -> list[dict]:
    """The iterator state of every process, in process order (each process passes its own)."""
    if jax.process_count() == 1:
        return [dict(local_state)]
    from jax.experimental import multihost_utils
    encoded = np.frombuffer(json.dumps(local_state).encode("utf-8"), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([encoded.size], np.int32))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:encoded.size] = encoded
    everyone = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(everyone[p, :int(lengths[p, 0])]).decode("utf-8"))
            for p in range(jax.process_count())]


# Fields of an input state that describe the process that saved it, not the place in the data.
_PER_PROCESS_INFO = ("epoch",)


def process_iterator_state(states: list[dict], process_index: int, process_count: int,
                           restart_data_order: bool = False, where: str = "the checkpoint") -> dict | None:
    """This process's input state from the states every process saved.

    Same process count: its own. Another count (elastic resume): a state that is the same on
    every saving process is a global position (the non-packed pipeline, synthetic batches) and
    continues exactly on any count; a per-process state (a packed stream) cannot continue the
    same way, which is an error unless `restart_data_order`, which returns None (the iterator
    starts its order afresh)."""
    if len(states) == process_count:
        return states[process_index]
    strip = lambda s: {k: v for k, v in s.items() if k not in _PER_PROCESS_INFO}
    if all(strip(s) == strip(states[0]) for s in states) and not states[0].get("packing", False):
        return strip(states[0])
    if restart_data_order:
        return None
    raise ValueError(
        f"{where}: the checkpoint holds the input states of {len(states)} processes, this run has "
        f"{process_count}, and the states are per process (a packed stream keeps its own position in "
        f"each process), so the data order cannot continue the same way on {process_count} processes. "
        f"Resume on {len(states)} processes, or pass --config.train.restart_data_order=True to restore "
        f"the model and optimizer and start the data order afresh (the batches then differ from an "
        f"uninterrupted run).")


def absolute(path: str | os.PathLike) -> epath.Path:
    """An absolute path for orbax: local paths resolved, gs:// (and other URLs) as given."""
    path = os.fspath(path)
    return epath.Path(path) if "://" in path else epath.Path(os.path.abspath(path))


class RunCheckpointer:
    def __init__(self, workdir: str | os.PathLike, checkpoint_config: Mapping[str, Any],
                 main_metric: str | None = None, higher_is_better: bool = True):
        cfg = checkpoint_config
        self.directory = absolute(workdir) / CHECKPOINT_DIR
        self.every_steps = int(cfg["every_steps"])
        if self.every_steps <= 0:
            raise ValueError(f"config.checkpoint.every_steps: expected > 0, found {self.every_steps}")
        keep = int(cfg["keep"])
        if keep < 1:
            raise ValueError(f"config.checkpoint.keep: expected >= 1, found {keep}")
        self.main_metric, self.higher_is_better = main_metric, higher_is_better
        self.verify = bool(cfg.get("verify", True))
        policies = [ocp.checkpoint_managers.LatestN(n=keep)]
        if cfg["keep_best"] and main_metric:
            # BestN sorts ascending and keeps the last n: reverse for lower-is-better metrics.
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda metrics: metrics[main_metric], reverse=not higher_is_better, n=1,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            # Every `every_steps` steps and nothing else: orbax's default policy also saves after the
            # first step and on its own preemption signal; the trainer forces its final and SIGTERM
            # saves itself.
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(self.every_steps),
            enable_async_checkpointing=bool(cfg["async_save"]),
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint (orbax ignores unfinished temporary directories)."""
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, step: int, state: Any, iterator_state: Mapping[str, Any], meta: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None, force: bool = False) -> bool:
        """Starts an (async) save; the state's arrays are copied off the devices before it returns,
        so the caller may donate them to the next step."""
        iterator_states = gather_process_states(iterator_state)
        items = dict(
            state=ocp.args.StandardSave(state),
            iterator=ocp.args.JsonSave({"process_states": iterator_states}),
            meta=ocp.args.JsonSave(dict(meta)),
        )
        if self.verify:  # summed now, before the caller donates the state's buffers to the next step
            items[CHECKSUMS_ITEM] = ocp.args.JsonSave(checksums_lib.tree_checksums(state))
        args = ocp.args.Composite(**items)
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        return self.manager.save(step, args=args, metrics=metrics, force=force)

    def restore(self, step: int, abstract_state: Any, restart_data_order: bool = False
                ) -> tuple[Any, dict | None, dict]:
        """(state on the shardings of `abstract_state`, this process's iterator state, meta).

        The state's arrays are resharded onto any mesh, then checked against the checksums
        saved with them (ChecksumMismatch). The iterator state follows `process_iterator_state`:
        None means "start the data order afresh"."""
        where = str(self.directory / str(step))
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            iterator=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        ))
        if self.verify:
            _verify(self.directory, step, restored["state"], where)
        iterator_state = process_iterator_state(
            restored["iterator"]["process_states"], jax.process_index(), jax.process_count(),
            restart_data_order, where=where)
        return restored["state"], iterator_state, restored["meta"]

    def restore_newest(self, abstract_state: Any, restart_data_order: bool = False
                       ) -> tuple[int, Any, dict | None, dict] | None:
        """(step, state, iterator state, meta) of the newest step that restores and verifies;
        None if there is no checkpoint.

        A newer step that fails (checksum, missing or truncated file, unreadable metadata) is
        skipped with a warning naming it and why; once an older one has restored, the failed
        ones are moved to <workdir>/damaged_checkpoints/ (so the run can save those steps
        again). If every step fails, nothing is moved (the cause may be the config, not the
        files) and CheckpointError lists each step's reason."""
        failures: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, iterator_state, meta = self.restore(step, abstract_state, restart_data_order)
            except _RESTORE_ERRORS as e:
                if isinstance(e, ValueError) and "input states of" in str(e):
                    raise  # the process count, not the files: a user decision (restart_data_order)
                reason = _one_line(e)
                failures.append((step, reason))
                log.warning("checkpoint %s is damaged or incomplete, skipped: %s", self.directory / str(step), reason)
                continue
            if failures:
                self._move_damaged([s for s, _ in failures])
                log.warning("resuming from step %d, the newest intact checkpoint (skipped: %s)", step,
                            ", ".join(str(s) for s, _ in failures))
            return step, state, iterator_state, meta
        if failures:
            raise CheckpointError(
                f"{self.directory}: no checkpoint restores: "
                + "; ".join(f"step {s}: {r}" for s, r in failures)
                + ". If the config changed since they were saved, restore it; to start afresh, move "
                  f"{self.directory} away; --config.checkpoint.verify=False skips only the checksums.")
        return None

    def _move_damaged(self, steps: list[int]) -> None:
        if jax.process_index() == 0:
            target = self.directory.parent / DAMAGED_DIR
            target.mkdir(parents=True, exist_ok=True)
            for step in steps:
                destination = target / f"{step}-{int(time.time())}"
                (self.directory / str(step)).rename(destination)
                log.warning("moved the damaged checkpoint %s to %s", self.directory / str(step), destination)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("bert_jax.run_checkpoints.move_damaged")
        self.manager.reload()

    def newest_on_disk(self) -> str | None:
        """The directory of the newest step whose commit is complete on disk now (re-listed, not
        orbax's memory of what it started), for the last message of a run that stops."""
        self.manager.reload()
        step = self.manager.latest_step()
        return None if step is None else str(self.directory / str(step))

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


# What orbax says, harmlessly, on every read-only look at a run (resume, init_from, convert):
# reading without writing, and restoring one item of several without a handler for the others.
_HARMLESS_ORBAX = ("CheckpointManagerOptions.read_only=True, setting", "Given directory is read only",
                   "was found in the checkpoint, but could not be restored")


class _DropHarmless(logging.Filter):
    def filter(self, record):
        return not any(text in record.getMessage() for text in _HARMLESS_ORBAX)


@contextlib.contextmanager
def _quiet_orbax():
    absl_logger, dropper = logging.getLogger("absl"), _DropHarmless()
    absl_logger.addFilter(dropper)
    try:
        with warnings.catch_warnings():
            # Restoring params as host numpy arrays: no sharding is wanted, so none is given.
            warnings.filterwarnings("ignore", message="Sharding info not provided when restoring")
            yield
    finally:
        absl_logger.removeFilter(dropper)


def latest_step(workdir: str | os.PathLike) -> int | None:
    """The newest complete checkpoint of a run's workdir, None if it has none; creates nothing.

    A listing, not a CheckpointManager: a manager's barriers are collectives, and processes that
    look at different moments (process 0 creates `checkpoints/` before its first barrier) would
    enter different barriers and fail with a name mismatch."""
    steps = ocp.utils.checkpoint_steps(absolute(workdir) / CHECKPOINT_DIR)
    return max(steps) if steps else None


def restore_params(directory: str | os.PathLike, step: int | None = None, verify: bool = True
                   ) -> tuple[Any, int]:
    """Only the params of a run checkpoint (host numpy arrays), for `init_from=<workdir>` and convert.

    `directory` is a run's workdir or its `checkpoints/` folder; `step` defaults to the newest
    that restores and verifies (a damaged newer one is skipped with a warning; nothing is moved:
    this reads another run's workdir). The params are checked against the saved checksums."""
    directory = absolute(directory)
    if (directory / CHECKPOINT_DIR).is_dir():
        directory = directory / CHECKPOINT_DIR
    with _quiet_orbax():
        return _restore_params(directory, step, verify)


def _restore_params(directory: epath.Path, step: int | None, verify: bool) -> tuple[Any, int]:
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
        if not steps:
            raise FileNotFoundError(f"{directory}: no complete checkpoint to take params from")
        failures = []
        for candidate in steps:
            try:
                params = _restore_params_at(manager, directory, candidate, verify)
            except _RESTORE_ERRORS as e:
                failures.append(f"step {candidate}: {_one_line(e)}")
                log.warning("checkpoint %s is damaged or incomplete, skipped: %s", directory / str(candidate),
                            _one_line(e))
                continue
            if failures:
                log.warning("%s: took the params of step %d, the newest intact checkpoint", directory, candidate)
            return params, candidate
        raise CheckpointError(f"{directory}: no checkpoint restores: " + "; ".join(failures))
    finally:
        manager.close()


def _restore_params_at(manager, directory: epath.Path, step: int, verify: bool) -> Any:
    # The state item as host numpy arrays, its structure read from the checkpoint itself (a
    # read-only manager's item_metadata is None, so there is nothing to build restore args from).
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=None, restore_args=None)))["state"]
    params = jax.tree.map(np.asarray, state["params"])
    if verify:
        _verify(directory, step, params, str(directory / str(step)), prefix="params/")
    return params


# What a damaged or incomplete step raises inside orbax / TensorStore (deleted, truncated or garbage
# files, a missing _METADATA, unreadable JSON) has no common class: TensorStore's read errors reach
# us as a bare Exception. Any error skips the step; nothing is moved unless an older step restores,
# so an error that every step shares (a changed config) is reported, not taken for damage.
_RESTORE_ERRORS = (Exception,)


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" + ("..." if len(text) > 300 else "")


def _verify(directory: epath.Path, step: int, tree: Any, where: str, prefix: str = "") -> None:
    path = directory / str(step) / CHECKSUMS_ITEM
    if not path.exists():
        log.warning("%s: saved without checksums (before they existed, or with checkpoint.verify=False): "
                    "not verified", where)
        return
    recorded = _read_checksums(path)
    start = time.perf_counter()
    checked = checksums_lib.verify_tree(tree, recorded, where, prefix=prefix)
    log.info("%s: %d arrays match their checksums (%.2f s)", where, checked, time.perf_counter() - start)


def _read_checksums(path: epath.Path) -> dict:
    # JsonSave writes the item as <item>/metadata (beside it orbax may leave commit_success.txt).
    try:
        return read_json(path / "metadata")
    except WorkdirError as e:  # a damaged checkpoint, which restore_newest falls back from
        raise CheckpointError(f"unreadable checksums: {e}") from None
