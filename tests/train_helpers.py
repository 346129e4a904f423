"""Shared pieces of the trainer tests: a tiny BERT pretraining config and metrics readers."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def import_file(path: pathlib.Path):
    """A Python file that is not part of an installed package (experiment files, benchmarks/)."""
    spec = importlib.util.spec_from_file_location(f"_file_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(**train_overrides):
    """BertForPreTraining 'tiny' (2 layers, hidden 128) with a 1k vocab on synthetic batches."""
    from experiments import pretrain
    config = pretrain.get_config("tiny,synthetic")
    config.model.vocab_size = 1024
    config.data.max_seq_length = 32
    config.data.max_predictions_per_seq = 5
    config.data.prefetch_batches = 0
    config.train.update(batch_size=16, num_steps=5, log_every=1, eval_every=0, eval_batch_size=16)
    config.train.update(train_overrides)
    config.task.num_eval_batches = 0  # no eval unless a test asks: one compilation less
    config.optimizer.warmup_steps = 2
    config.optimizer.learning_rate = 1e-3
    config.checkpoint.update(every_steps=1000, async_save=False)
    config.logging.update(tensorboard=False, progress_bar=False, peak_flops_per_device=1e12)
    return config


CLI_OVERRIDES = [
    "--config.model.vocab_size=1024", "--config.data.max_seq_length=32",
    "--config.data.max_predictions_per_seq=5", "--config.data.prefetch_batches=0",
    "--config.train.batch_size=16", "--config.train.log_every=1", "--config.train.eval_every=0",
    "--config.train.eval_batch_size=16", "--config.task.num_eval_batches=0",
    "--config.optimizer.warmup_steps=2", "--config.optimizer.learning_rate=1e-3",
    "--config.logging.tensorboard=False", "--config.logging.progress_bar=False",
    "--config.logging.peak_flops_per_device=1e12",
]


def main_command(workdir, *overrides):
    return [sys.executable, "-m", "bert_jax.main", "--config=experiments/pretrain.py:tiny,synthetic",
            f"--workdir={workdir}", *CLI_OVERRIDES, *overrides]


# A generous bound on one bert_jax.main / pipeline subprocess: a hung child fails the test
# instead of hanging CI.
SUBPROCESS_TIMEOUT_S = 900


def require_devices(n: int = 8):
    """Fail (never skip) when the 8 host devices of tests/conftest.py are missing: a skipped
    sharding test would leave the suite green without testing sharding."""
    import jax
    if jax.device_count() < n:
        import pytest
        pytest.fail(f"needs {n} devices; found {jax.device_count()} ({jax.devices()[0].platform}). "
                    f"tests/conftest.py appends --xla_force_host_platform_device_count=8 to XLA_FLAGS "
                    f"(now {os.environ.get('XLA_FLAGS')!r}); on an accelerator host set JAX_PLATFORMS=cpu")


def subprocess_env(devices: int = 1, **extra):
    env = dict(os.environ)
    # Keep the caller's other XLA flags (the portability runs set some), replace the device count.
    kept = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_main(workdir, *overrides, devices=1, check=True):
    result = subprocess.run(main_command(workdir, *overrides), cwd=REPO, env=subprocess_env(devices),
                            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    if check and result.returncode != 0:
        raise AssertionError(f"bert_jax.main failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def read_metrics(workdir, split="train"):
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if json.loads(line)["split"] == split]


def losses_by_step(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir)}
