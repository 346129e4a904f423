"""A run's records in a gs:// workdir, through etils.epath, against an in-memory bucket."""

import json

from bert_jax import run_files
from bert_jax.checkpoints import run_workdir
from bert_jax.config import BertConfig
from bert_jax.metrics_logging import MetricsWriter
from bert_jax.run_files import METRICS_FILE
from tests.gcs_mock import in_memory_gcs


def test_metrics_go_to_the_bucket_and_a_resume_cuts_them_back(monkeypatch):
    bucket = in_memory_gcs(monkeypatch)
    workdir = "gs://bucket/run"
    writer = MetricsWriter(workdir, tensorboard=False, resume_step=0)
    for step in range(1, 6):
        writer.write(step, "train", {"loss": 10.0 - step})
    writer.close()
    rows = [json.loads(line) for line in bucket.cat(f"{workdir}/{METRICS_FILE}").decode().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    # The run resumes from the checkpoint of step 3: rows 4 and 5 are cut, then written again.
    writer = MetricsWriter(workdir, tensorboard=False, resume_step=3)
    writer.write(4, "train", {"loss": 0.5})
    writer.close()
    rows = [json.loads(line) for line in bucket.cat(f"{workdir}/{METRICS_FILE}").decode().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 0.5)]
    assert all(path.startswith("/bucket/run/") for path in bucket.store)


def test_a_gs_run_workdir_is_recognised_and_its_model_config_read(monkeypatch):
    bucket = in_memory_gcs(monkeypatch)
    config = BertConfig.preset("tiny")
    bucket.pipe("gs://bucket/run/model_config.json", json.dumps(config.to_dict()).encode())
    bucket.makedirs("gs://bucket/run/checkpoints", exist_ok=True)
    bucket.pipe("gs://bucket/run/checkpoints/3/_CHECKPOINT_METADATA", b"{}")
    assert run_files.is_run_workdir("gs://bucket/run")
    assert run_workdir.config_source("gs://bucket/run") == "gs://bucket/run/model_config.json"
    assert run_workdir.read_config("gs://bucket/run") == config
