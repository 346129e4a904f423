"""Run checkpoints (orbax CheckpointManager): save, keep, find and restore a training run's state.

A checkpoint at step N holds
  state     the TrainState pytree (params, optimizer state, step, RNG, non-finite counters),
            saved sharded and restored onto the shardings the caller asks for;
  iterator  the input pipeline's `get_state()` of every process (JSON), so the batches after a
            restore are exactly those an uninterrupted run would have seen;
  meta      step and a few facts about the run (JSON, written by process 0).
orbax writes into a temporary directory and renames it when complete, so `latest_step()` never
returns a half-written checkpoint: a run killed mid-save resumes from the previous one.

Config fields (`config.checkpoint`): every_steps, keep (last K), keep_best, async_save.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

CHECKPOINT_DIR = "checkpoints"


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
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            iterator=ocp.args.JsonSave({"process_states": iterator_states}),
            meta=ocp.args.JsonSave(dict(meta)),
        )
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        return self.manager.save(step, args=args, metrics=metrics, force=force)

    def restore(self, step: int, abstract_state: Any, restart_data_order: bool = False
                ) -> tuple[Any, dict | None, dict]:
        """(state on the shardings of `abstract_state`, this process's iterator state, meta).

        The state's arrays are resharded onto any mesh. The iterator state follows
        `process_iterator_state`: None means "start the data order afresh"."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            iterator=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        ))
        iterator_state = process_iterator_state(
            restored["iterator"]["process_states"], jax.process_index(), jax.process_count(),
            restart_data_order, where=str(self.directory / str(step)))
        return restored["state"], iterator_state, restored["meta"]

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def latest_step(workdir: str | os.PathLike) -> int | None:
    """The newest complete checkpoint of a run's workdir, None if it has none; creates nothing."""
    directory = absolute(workdir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return None
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        return manager.latest_step()
    finally:
        manager.close()


def restore_params(directory: str | os.PathLike, step: int | None = None) -> tuple[Any, int]:
    """Only the params of a run checkpoint (host numpy arrays), for `init_from=<workdir>`.

    `directory` is a run's workdir or its `checkpoints/` folder; `step` defaults to the newest.
    """
    directory = absolute(directory)
    if (directory / CHECKPOINT_DIR).is_dir():
        directory = directory / CHECKPOINT_DIR
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{directory}: no complete checkpoint to take params from")
    # Restore the state item as host numpy arrays without needing its exact structure.
    metadata = manager.item_metadata(step)["state"]
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=None, restore_args=restore_args)))["state"]
    manager.close()
    return jax.tree.map(np.asarray, state["params"]), step
