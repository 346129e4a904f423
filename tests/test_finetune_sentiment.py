"""A real fine-tuning result in CI: the pretrained all-MiniLM-L6-v2 encoder fine-tuned on Rotten
Tomatoes sentiment (the repo's 4,000-example quickstart sample) for 120 steps, scored on the full
1,780-example dev split (majority class: 58.6%).

Measured with exactly this command on the 2-core dev machine: 80.00% dev accuracy (4.0 CPU-minutes).
The test asserts >= 78%, a margin for XLA numerics on other CPUs; the full-length run (all 9,731
training examples, 1 epoch, lr 5e-5, seq 64) reached 83.0% (see the issue note).

It runs the documented command line in a subprocess (one JAX device, as a user runs it):

    python -m bert_jax.main --config experiments/finetune_tsv.py:sentiment --workdir W \
        --config.init_from=$BERT_JAX_DATA/models/all-MiniLM-L6-v2 --config.max_seq_length=48 \
        --config.num_epochs=0 --config.train.num_steps=120 --config.optimizer.learning_rate=1e-4

120 steps of batch 32 (3,840 examples, ~1 epoch), 10% warmup then linear decay, max_seq_length 48
(160 of 4,000 training and 67 of 1,780 dev snippets are cut, counted in the log). lr 1e-4 is above the paper's grid: this
shortened run needs it to pass 80% in CI's budget (the same run at 5e-5 for 160 steps: 79.9%).
"""

import json
import os
import subprocess
import sys

import pytest

MIN_DEV_ACCURACY = 0.78


@pytest.mark.slow
def test_minilm_sentiment_dev_accuracy(shared_data, repo_root, tmp_path):
    model = shared_data / "models" / "all-MiniLM-L6-v2"
    if not (model / "model.safetensors").is_file():
        pytest.skip(f"{model} is missing")
    workdir = tmp_path / "sentiment"
    command = [
        sys.executable, "-m", "bert_jax.main",
        "--config", str(repo_root / "experiments" / "finetune_tsv.py") + ":sentiment",
        "--workdir", str(workdir),
        f"--config.init_from={model}",
        "--config.max_seq_length=48",
        "--config.num_epochs=0",
        "--config.train.num_steps=120",
        "--config.optimizer.learning_rate=1e-4",
        "--config.logging.tensorboard=False",
        "--config.logging.peak_flops_per_device=1e11",  # skip the MFU matmul benchmark
    ]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as the documented command
    completed = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=1800)
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["step"] == 120 and results["init_from"] == str(model)
    accuracy = results["final_metrics"]["accuracy"]
    assert accuracy >= MIN_DEV_ACCURACY, f"dev accuracy {accuracy:.4f} < {MIN_DEV_ACCURACY}"
    dev_rows = (workdir / "predictions").read_text().splitlines()
    assert len(dev_rows) == 1 + 1780
