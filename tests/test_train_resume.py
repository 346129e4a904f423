"""The trainer as a user runs it (`python -m bert_jax.main` subprocesses): exact resume after a
process exit, SIGTERM preemption, and config errors."""

import signal
import subprocess
import time

import numpy as np
import pytest

from bert_jax import run_checkpoints
from tests.train_helpers import REPO, losses_by_step, main_command, read_metrics, run_main, subprocess_env

WAIT_S = 600  # a hung child fails the test instead of blocking CI


def _params(workdir):
    params, step = run_checkpoints.restore_params(workdir)
    return {run_checkpoints.jax.tree_util.keystr(p): v
            for p, v in run_checkpoints.jax.tree_util.tree_leaves_with_path(params)}, step


@pytest.mark.slow
def test_resume_after_process_exit_is_bitwise_exact(tmp_path):
    """20 steps in one process == 10 steps, exit, a new process resuming to 20: the losses of
    steps 11-20 and the final params are bitwise equal (same programs on the same device, the
    same batches from the restored input position, the same RNG from the restored key)."""
    common = ["--config.train.num_steps=20", "--config.checkpoint.every_steps=10"]
    run_main(tmp_path / "straight", *common)
    run_main(tmp_path / "resumed", *common, "--config.train.stop_at_step=10")
    assert not (tmp_path / "resumed" / "results.json").exists()
    assert sorted(losses_by_step(tmp_path / "resumed")) == list(range(1, 11))
    run_main(tmp_path / "resumed", *common)  # the same command again: resumes by itself

    straight, resumed = losses_by_step(tmp_path / "straight"), losses_by_step(tmp_path / "resumed")
    assert [r["step"] for r in read_metrics(tmp_path / "resumed")] == list(range(1, 21))
    assert [resumed[s] for s in range(11, 21)] == [straight[s] for s in range(11, 21)]
    (params_a, step_a), (params_b, step_b) = _params(tmp_path / "straight"), _params(tmp_path / "resumed")
    assert step_a == step_b == 20
    for name, value in params_a.items():
        assert np.array_equal(value, params_b[name]), name


@pytest.mark.slow
def test_sigterm_saves_a_complete_checkpoint_and_exits_0(tmp_path):
    workdir = tmp_path / "run"
    process = subprocess.Popen(main_command(workdir, "--config.train.num_steps=100000"), cwd=REPO,
                               env=subprocess_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + WAIT_S
    try:
        metrics = workdir / "metrics.jsonl"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert time.monotonic() < deadline, "the run did not start in time"
            assert process.poll() is None, process.stderr.read()[-3000:]
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-3000:]
    saved = run_checkpoints.RunCheckpointer(workdir, {"every_steps": 1, "keep": 1, "keep_best": False,
                                                      "async_save": False}).latest_step()
    last_logged = read_metrics(workdir)[-1]["step"]
    assert saved is not None and saved == last_logged >= 3
    assert not (workdir / "results.json").exists()

    # The same command resumes at the saved step (here stopping 2 steps later).
    run_main(workdir, "--config.train.num_steps=100000", f"--config.train.stop_at_step={saved + 2}")
    assert [r["step"] for r in read_metrics(workdir)][-3:] == [saved, saved + 1, saved + 2]


def test_misspelled_config_key_is_an_error(tmp_path):
    result = run_main(tmp_path, "--config.train.num_stepz=3", check=False)
    assert result.returncode != 0
    assert "num_stepz" in result.stderr and "did you mean --config.train.num_steps?" in result.stderr
