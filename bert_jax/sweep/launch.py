"""Runs a sweep's plan: the prepare steps, then each run's stages in order, every one a
`bert_jax.main` subprocess logging to its workdir's stdout.log. The only module of the sweep that
starts processes."""

from __future__ import annotations

import pathlib
import subprocess
import threading

from bert_jax.sweep.plan import Prepare, Run, Stage


def run_prepare(step: Prepare) -> None:
    if step.done_marker.exists():
        return
    step.out.mkdir(parents=True, exist_ok=True)
    print(f"preparing {step.name}: {' '.join(step.command())}", flush=True)
    with open(step.out.parent / f"{step.name}.log", "w", encoding="utf-8") as log:
        code = subprocess.call(step.command(), stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"prepare step {step.name!r} failed (exit {code}); see {log.name}")
    step.done_marker.write_text("ok\n", encoding="utf-8")


_stage_locks: dict[pathlib.Path, threading.Lock] = {}
_stage_locks_guard = threading.Lock()


def _stage_lock(stage: Stage) -> threading.Lock:
    """One lock per stage workdir: two variants sharing a pretraining run never both start it."""
    with _stage_locks_guard:
        return _stage_locks.setdefault(stage.workdir, threading.Lock())


def execute(run: Run) -> str:
    """Runs the stages of one run in order; returns a one-line status."""
    for stage in run.stages:
        with _stage_lock(stage):
            if stage.done:
                continue
            stage.workdir.mkdir(parents=True, exist_ok=True)
            log_path = stage.workdir / "stdout.log"
            with open(log_path, "w", encoding="utf-8") as log:
                code = subprocess.call(stage.command(), stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            return f"{run.variant} seed {run.seed}: {stage.name} FAILED (exit {code}); see {log_path}"
    return f"{run.variant} seed {run.seed}: done"
