"""Two JAX processes on 127.0.0.1 (4 CPU devices each, gloo collectives) train like one 8-device
process: each process feeds only its rows of the global batch."""

import socket
import subprocess

import numpy as np
import pytest

from tests.train_helpers import REPO, losses_by_step, main_command, run_main, subprocess_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_8_devices(tmp_path):
    steps = ["--config.train.num_steps=4", "--config.mesh.data=-1"]
    run_main(tmp_path / "single", *steps, devices=8)

    port = _free_port()
    workdir = tmp_path / "multi"
    processes = [
        subprocess.Popen(
            main_command(workdir, *steps, "--config.distributed.initialize=True",
                         f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                         "--config.distributed.num_processes=2", f"--config.distributed.process_id={rank}",
                         "--config.distributed.cpu_collectives=gloo"),
            cwd=REPO, env=subprocess_env(4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    errors = [p.communicate()[1] for p in processes]
    for rank, (p, err) in enumerate(zip(processes, errors)):
        assert p.returncode == 0, f"process {rank}:\n{err[-4000:]}"

    single, multi = losses_by_step(tmp_path / "single"), losses_by_step(workdir)
    assert sorted(multi) == [1, 2, 3, 4]  # written once, by process 0
    # The same global computation; the cross-process all-reduce may sum in another order.
    np.testing.assert_allclose([multi[s] for s in range(1, 5)], [single[s] for s in range(1, 5)], rtol=1e-5)
