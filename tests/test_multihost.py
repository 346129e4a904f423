"""Two JAX processes on 127.0.0.1 (4 CPU devices each, gloo collectives) train like one 8-device
process: each process feeds only its rows of the global batch, evaluation gathers every
process's predictions, a run saved by 2 processes resumes on 1 (elastic), and SIGTERM to a
multi-process run saves one checkpoint that every process agrees on.

Every subprocess wait has a timeout: a hung start fails the test instead of blocking CI."""

import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from bert_jax import run_checkpoints
from tests.train_helpers import REPO, losses_by_step, main_command, read_metrics, run_main, subprocess_env

WAIT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, *overrides):
    port = _free_port()
    return [
        subprocess.Popen(
            main_command(workdir, *overrides, "--config.distributed.initialize=True",
                         f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                         "--config.distributed.num_processes=2", f"--config.distributed.process_id={rank}",
                         "--config.distributed.cpu_collectives=gloo"),
            cwd=REPO, env=subprocess_env(4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]


def _wait(processes, timeout=WAIT_S):
    """Waits for every process (one deadline for all); kills them all when it passes."""
    deadline = time.monotonic() + timeout
    errors = []
    try:
        for p in processes:
            errors.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[1])
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
        for p in processes:
            p.communicate(timeout=60)
        pytest.fail(f"a process of the multi-process run did not finish within {timeout} s")
    for rank, (p, err) in enumerate(zip(processes, errors)):
        assert p.returncode == 0, f"process {rank}:\n{err[-4000:]}"


def _eval_rows(workdir):
    return {r["step"]: r for r in read_metrics(workdir, "eval")}


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume_on_one_process(tmp_path):
    """1 x 8 devices straight for 6 steps (eval at 3 and 6) == 2 x 4 devices to step 3 (eval at 3),
    then the same workdir resumed by 1 process x 8 devices to step 6."""
    steps = ["--config.train.num_steps=6", "--config.mesh.data=-1", "--config.train.eval_every=3",
             "--config.task.num_eval_batches=2"]
    run_main(tmp_path / "single", *steps, devices=8)

    workdir = tmp_path / "multi"
    _wait(_launch(workdir, *steps, "--config.train.stop_at_step=3"))
    assert sorted(losses_by_step(workdir)) == [1, 2, 3]  # written once, by process 0
    meta_states = run_checkpoints.RunCheckpointer(workdir, {"every_steps": 1, "keep": 3, "keep_best": False,
                                                            "async_save": False}).latest_step()
    assert meta_states == 3
    run_main(workdir, *steps, devices=8)  # elastic: 2 processes -> 1

    single, multi = losses_by_step(tmp_path / "single"), losses_by_step(workdir)
    assert sorted(multi) == list(range(1, 7))
    # The same global computation; the cross-process all-reduce may sum in another order.
    np.testing.assert_allclose([multi[s] for s in range(1, 7)], [single[s] for s in range(1, 7)], rtol=1e-5)
    single_eval, multi_eval = _eval_rows(tmp_path / "single"), _eval_rows(workdir)
    assert sorted(single_eval) == sorted(multi_eval) == [3, 6]
    for step in (3, 6):  # step 3: predictions gathered from 2 processes; step 6: after the resume
        for name in ("mlm_loss", "mlm_accuracy", "nsp_loss", "loss"):
            np.testing.assert_allclose(multi_eval[step][name], single_eval[step][name], rtol=1e-5,
                                       err_msg=f"eval {name} at step {step}")


@pytest.mark.slow
def test_sigterm_to_a_multi_process_run_saves_one_agreed_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    processes = _launch(workdir, "--config.train.num_steps=100000")
    deadline = time.monotonic() + WAIT_S
    try:
        metrics = workdir / "metrics.jsonl"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert time.monotonic() < deadline, "the multi-process run did not start in time"
            for p in processes:
                assert p.poll() is None, p.stderr.read()[-3000:]
            time.sleep(0.2)
        for p in processes:
            p.send_signal(signal.SIGTERM)
        _wait(processes)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    saved = run_checkpoints.RunCheckpointer(workdir, {"every_steps": 1, "keep": 1, "keep_best": False,
                                                      "async_save": False}).latest_step()
    last_logged = read_metrics(workdir)[-1]["step"]
    assert saved is not None and saved == last_logged >= 3
    assert not (workdir / "results.json").exists()
    # The same workdir continues on one process with 8 devices.
    run_main(workdir, "--config.train.num_steps=100000", f"--config.train.stop_at_step={saved + 2}", devices=8)
    assert [r["step"] for r in read_metrics(workdir)][-3:] == [saved, saved + 1, saved + 2]
