"""A pretraining run (async checkpoints) SIGKILLed twice at random steps between checkpoints and
rerun ends bitwise equal to the straight run, with one metrics row per step in metrics.jsonl and
in the TensorBoard scalars (read back with tensorboard's EventAccumulator, no purging)."""

import random
import signal
import subprocess
import time

import numpy as np
import pytest

from bert_jax import run_checkpoints
from tests.test_run_config import tensorboard_scalars
from tests.train_helpers import REPO, losses_by_step, main_command, read_metrics, run_main, subprocess_env

WAIT_S = 600  # a hung child fails the test instead of blocking CI
STEPS, EVERY = 30, 7
COMMON = [f"--config.train.num_steps={STEPS}", f"--config.checkpoint.every_steps={EVERY}",
          "--config.checkpoint.async_save=True", "--config.logging.tensorboard=True"]


def _params(workdir):
    params, step = run_checkpoints.restore_params(workdir)
    return {run_checkpoints.jax.tree_util.keystr(p): v
            for p, v in run_checkpoints.jax.tree_util.tree_leaves_with_path(params)}, step


def _kill_at(workdir, step):
    """Starts the run and SIGKILLs it once metrics.jsonl shows `step` (a hard kill: no save)."""
    process = subprocess.Popen(main_command(workdir, *COMMON), cwd=REPO, env=subprocess_env(1),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + WAIT_S
    try:
        metrics = workdir / "metrics.jsonl"
        while True:
            assert time.monotonic() < deadline, "the run did not reach the step in time"
            assert process.poll() is None, process.stderr.read()[-3000:]
            if metrics.exists() and any(r["step"] >= step for r in read_metrics(workdir)):
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=60)


@pytest.mark.slow
def test_two_hard_kills_between_checkpoints_resume_bitwise_with_one_row_per_step(tmp_path):
    run_main(tmp_path / "straight", *COMMON)
    workdir = tmp_path / "killed"
    rng = random.Random(14)
    # Steps strictly between checkpoints (7, 14, 21, 28): each kill loses steps that must rerun.
    first = rng.choice([s for s in range(9, 14)])
    second = rng.choice([s for s in range(16, 21)])
    _kill_at(workdir, first)
    _kill_at(workdir, second)
    run_main(workdir, *COMMON)

    straight, resumed = losses_by_step(tmp_path / "straight"), losses_by_step(workdir)
    assert [r["step"] for r in read_metrics(workdir)] == list(range(1, STEPS + 1))  # once each
    assert resumed == straight  # bitwise: the same floats
    for split_dir, tag in ((workdir / "tensorboard" / "train", "loss"),):
        scalars = tensorboard_scalars(split_dir, tag)
        assert [s for s, _ in scalars] == list(range(1, STEPS + 1))
        assert [v for _, v in scalars] == [np.float32(straight[s]) for s in range(1, STEPS + 1)]
    (params_a, step_a), (params_b, step_b) = _params(tmp_path / "straight"), _params(workdir)
    assert step_a == step_b == STEPS
    for name, value in params_a.items():
        assert np.array_equal(value, params_b[name]), name
