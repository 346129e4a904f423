"""A dask.distributed cluster on 127.0.0.1 as on a real one: a `dask scheduler` process and worker
processes (`dask worker`, no nanny, one thread each), each started by its own command, talking
TCP. The scheduler binds port 0 and writes its address into a scheduler file (a port in use
never fails the run); `stop()` ends the workers, then the scheduler (nothing is left running).
The workers run in their own empty directory: a relative path that only the client can see
fails there, as it would on a cluster.

    cluster = DaskCluster(tmp_path, workers=2).start()
    ... --runner=apache_beam.runners.dask.dask_runner.DaskRunner --dask_client_address={cluster.address}
    cluster.worker_pids, cluster.stop()
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"  # Beam 2.77 registers no short name


class DaskCluster:
    def __init__(self, root: pathlib.Path, workers: int = 2):
        self.root, self.num_workers = pathlib.Path(root), workers
        self.scheduler, self.workers = None, []

    def _spawn(self, args, log_name):
        log = open(self.root / log_name, "ab")
        try:
            return subprocess.Popen([sys.executable, "-m", *args], cwd=self.workdir, stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            log.close()

    def start(self, timeout_s: float = 120) -> "DaskCluster":
        self.workdir = self.root / "cwd"
        self.workdir.mkdir(parents=True, exist_ok=True)
        scheduler_file = self.root / "scheduler.json"
        scheduler_file.unlink(missing_ok=True)
        try:
            self.scheduler = self._spawn(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                          "--no-dashboard", "--scheduler-file", str(scheduler_file)], "scheduler.log")
            deadline = time.monotonic() + timeout_s
            while not scheduler_file.exists():
                if self.scheduler.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dask scheduler did not start: {(self.root / 'scheduler.log').read_text()[-2000:]}")
                time.sleep(0.2)
            time.sleep(0.2)  # the file is written whole, but give the writer its close
            self.tcp_address = json.loads(scheduler_file.read_text())["address"]  # tcp://127.0.0.1:PORT
            self.address = self.tcp_address[len("tcp://"):]  # what Beam's --dask_client_address takes
            for i in range(self.num_workers):
                self.workers.append(self._spawn(
                    ["distributed.cli.dask_worker", self.tcp_address, "--nthreads", "1", "--no-nanny",
                     "--no-dashboard", "--memory-limit", "0", "--name", f"worker-{i}",
                     "--local-directory", str(self.root / f"worker-{i}")], f"worker-{i}.log"))
            from distributed import Client
            with Client(self.tcp_address, timeout=timeout_s) as client:
                client.wait_for_workers(self.num_workers, timeout=timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def task_counts(self) -> dict[str, int]:
        """Tasks each worker has run so far (its state machine's transition count)."""
        from distributed import Client
        with Client(self.tcp_address, timeout=60) as client:
            return client.run(lambda dask_worker: dask_worker.state.transition_counter)

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [*self.workers, self.scheduler]:
            if process is None:
                continue
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        self.workers, self.scheduler = [], None
