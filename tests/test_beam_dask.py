"""create_pretraining_data --engine beam on Apache Beam's DaskRunner, against a dask.distributed
cluster of a scheduler and 2 worker processes started as on a real cluster (tests/dask_cluster.py):
the shards are byte-identical to the local engine's and to DirectRunner's, the work ran on both
workers, and nothing stays running after the module."""

import hashlib
import json
import pathlib
import subprocess
import sys

import pytest

from tests.dask_cluster import DASK_RUNNER, DaskCluster

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 900
UNCASED = "vocab/bert-base-uncased-vocab.txt"
FILES = ("corpus/lee_news.txt", "corpus/botchan.txt", "corpus/convention_speeches_2012.txt")  # 549 documents


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    pytest.importorskip("apache_beam")
    pytest.importorskip("distributed")
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"), workers=2).start()
    yield cluster
    cluster.stop()


def _cli(*args):
    done = subprocess.run([sys.executable, "-m", "data_pipelines.create_pretraining_data", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}"
    return done


def _shards(directory: pathlib.Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("part-*"))}


@pytest.mark.slow
def test_dask_runner_on_two_worker_processes_writes_the_local_engines_bytes(dask_cluster, shared_data, tmp_path):
    # Absolute paths: the workers run elsewhere (their own directory), as on a cluster.
    common = ["--input_file", ",".join(str(shared_data / f) for f in FILES), "--vocab_file", shared_data / UNCASED,
              "--dupe_factor", "10", "--docs_per_partition", "200"]
    before = dask_cluster.task_counts()
    _cli(*common, "--output_dir", tmp_path / "dask", "--engine", "beam", "--",
         f"--runner={DASK_RUNNER}", f"--dask_client_address={dask_cluster.address}")
    after = dask_cluster.task_counts()
    assert len(after) == 2 and all(after[w] > before.get(w, 0) for w in after), (before, after)  # both worked
    _cli(*common, "--output_dir", tmp_path / "local", "--num_workers", "2")
    _cli(*common, "--output_dir", tmp_path / "direct", "--engine", "beam", "--", "--runner=DirectRunner",
         "--direct_num_workers=2", "--direct_running_mode=multi_processing")

    dask = _shards(tmp_path / "dask")
    assert len(dask) == 3 * 10  # ceil(549 / 200) = 3 partitions x 10 dupe passes
    assert dask == _shards(tmp_path / "local")
    assert dask == _shards(tmp_path / "direct")
    metadata = json.loads((tmp_path / "dask" / "metadata.json").read_text())
    assert metadata["counts"] == json.loads((tmp_path / "local" / "metadata.json").read_text())["counts"]
    assert metadata["counts"]["documents"] == 549 and metadata["files"] == sorted(dask)
    assert not (tmp_path / "dask" / "_tokenized").exists()  # the spill files are removed at the end
