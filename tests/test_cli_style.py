"""One command-line style: Google's underscore flags, old dashed spellings kept as deprecated aliases
(with a warning), defaults in --help; bert_jax.main's --print_config, experiment --help and
one-line errors for misspelled overrides; the trainer's config and scalars readable by
tensorboard's own EventAccumulator."""

import json
import subprocess
import sys

import pytest

from tests.train_helpers import CLI_OVERRIDES


def _run(args, repo_root, timeout=300):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=repo_root, timeout=timeout)


@pytest.mark.parametrize("module, underscore, dashed", [
    ("bert_jax.convert", "--no_check_vocab", "--no-check-vocab"),
    ("bert_jax.sweep", "--print_commands", "--print-commands"),
    ("bert_jax.benchmark", "--seq_len", "--seq-len"),
    ("data_pipelines.train_vocab", "--vocab_size", "--vocab-size"),
])
def test_help_shows_underscore_flags_and_defaults(module, underscore, dashed, repo_root):
    result = _run(["-m", module, "--help"], repo_root)
    assert result.returncode == 0, result.stderr
    assert underscore in result.stdout and dashed not in result.stdout
    assert "(default:" in result.stdout


def test_old_spellings_still_work_with_a_warning(tmp_path, repo_root):
    text = tmp_path / "t.txt"
    text.write_text("".join(f"the quick brown fox number {i} jumps over the lazy dog\n" for i in range(200)))
    result = _run(["-m", "data_pipelines.train_vocab", "--input", str(text), "--vocab-size", "80",
                   "--model-type", "bpe", "--no-lowercase", "--output", str(tmp_path / "spm")], repo_root)
    assert result.returncode == 0, result.stderr
    assert "--vocab-size is deprecated; use --vocab_size" in result.stderr
    assert "--no-lowercase is deprecated; use --do_lower_case=false" in result.stderr
    assert (tmp_path / "spm.model").is_file()


def test_print_config_prints_the_overridden_config_and_exits(repo_root, tmp_path):
    result = _run(["-m", "bert_jax.main", "--config=experiments/finetune_tsv.py:sentiment",
                   "--config.train.batch_size=8", "--config.optimizer.learning_rate=3e-5", "--print_config"], repo_root)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["train"]["batch_size"] == 8 and config["optimizer"]["learning_rate"] == 3e-5
    assert config["train_file"].endswith("data/quickstart/sentiment_train.tsv")
    assert not any(tmp_path.iterdir())


def test_experiment_help_lists_its_documented_arguments(repo_root):
    result = _run(["-m", "bert_jax.main", "--config=experiments/finetune_tsv.py", "--help"], repo_root)
    assert result.returncode == 0
    from experiments import finetune_tsv

    line = next(l for l in result.stdout.splitlines() if l.startswith("documented arguments"))
    for arg in finetune_tsv.DOCUMENTED_ARGS:
        assert (repr(arg) if arg == "" else arg) in line
    assert "--print_config" in result.stdout and "(default:" in result.stdout


def test_misspelled_override_is_one_short_line_with_the_suggestion(repo_root, tmp_path):
    result = _run(["-m", "bert_jax.main", "--config=experiments/finetune_tsv.py:sentiment",
                   f"--workdir={tmp_path / 'w'}", "--config.train.batch_sise=8"], repo_root)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--config.train.batch_sise: no such config field 'batch_sise'" in result.stderr
    assert "did you mean --config.train.batch_size?" in result.stderr  # the whole flag, not only the name
    assert len(result.stderr.strip().splitlines()) <= 3
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_tensorboard_reads_the_config_and_the_loss_back(repo_root, tmp_path):
    """A CLI run with TensorBoard on: tensorboard's EventAccumulator (the reader behind its UI)
    finds the loss at every logged step and the resolved config as text."""
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
    from tensorboard.util import tensor_util

    from tests.test_run_config import tensorboard_scalars

    overrides = [o for o in CLI_OVERRIDES if "tensorboard" not in o]
    result = _run(["-m", "bert_jax.main", "--config=experiments/pretrain.py:tiny,synthetic",
                   f"--workdir={tmp_path}", *overrides, "--config.train.num_steps=3",
                   "--config.checkpoint.async_save=False"], repo_root, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    train_dir = tmp_path / "tensorboard" / "train"
    assert [step for step, _ in tensorboard_scalars(train_dir, "loss")] == [1, 2, 3]
    events = EventAccumulator(str(train_dir), size_guidance={TENSORS: 0})
    events.Reload()
    assert events.summary_metadata["config"].plugin_data.plugin_name == "text"
    (config_event,) = events.Tensors("config")
    text = tensor_util.make_ndarray(config_event.tensor_proto).item().decode()
    recorded = json.loads("\n".join(line[4:] for line in text.splitlines()))
    assert recorded == json.loads((tmp_path / "config.json").read_text())
