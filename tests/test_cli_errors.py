"""User errors end a tool with one line naming the culprit and exit code 2 (BERT_JAX_DEBUG=1 for
the traceback); a misspelled or misplaced --config field gets its full flag suggested; --help
shows every default."""

import argparse
import os
import pathlib
import subprocess
import sys

import pytest

from bert_jax import cli_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
PATHS = ["optimizer.learning_rate", "sweep.learning_rate", "train.batch_size", "checkpoint.every_steps",
         "checkpoint.keep", "seed"]


@pytest.mark.parametrize("field, suggestion", [
    ("learning_rate", "did you mean --config.optimizer.learning_rate or --config.sweep.learning_rate?"),
    ("trian.batch_size", "did you mean --config.train.batch_size?"),
    ("checkpoint.evry_steps", "did you mean --config.checkpoint.every_steps?"),
    ("optimizer.lerning_rate", "did you mean --config.optimizer.learning_rate?"),
    ("train.batch_size", None),
    ("zzz", None),
])
def test_suggestion_names_the_whole_flag(field, suggestion):
    assert cli_flags.suggest_config_flag(field, PATHS) == suggestion


def test_config_paths_of_nested_config():
    import ml_collections
    config = ml_collections.ConfigDict({"seed": 0, "train": {"batch_size": 8, "inner": {"x": 1}}})
    assert cli_flags.config_paths(config) == ["seed", "train.batch_size", "train.inner.x"]


def test_run_main_one_line_exit_2_and_debug_traceback(capsys, monkeypatch):
    def bad():
        raise ValueError("data.tsv:3: label 'x'\nis not one of ['a']")
    monkeypatch.delenv(cli_flags.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli_flags.run_main(bad, "tool")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tool: error: data.tsv:3: label 'x' is not one of ['a']")
    monkeypatch.setenv(cli_flags.DEBUG_ENV, "1")
    with pytest.raises(ValueError):
        cli_flags.run_main(bad, "tool")

    def bug():
        raise TypeError("a bug keeps its traceback")
    monkeypatch.delenv(cli_flags.DEBUG_ENV)
    with pytest.raises(TypeError):
        cli_flags.run_main(bug, "tool")


def test_help_shows_defaults_of_flags_without_help_text():
    parser = argparse.ArgumentParser(formatter_class=cli_flags.HelpFormatter)
    parser.add_argument("--tfds_split", default="train")
    parser.add_argument("--output_dir", required=True)
    text = parser.format_help()
    assert "default: train" in text and "default: None" not in text


def test_binary_corpus_refused_in_one_line_before_writing(tmp_path):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(os.urandom(5000))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    env = {k: v for k, v in os.environ.items() if k != cli_flags.DEBUG_ENV}
    result = subprocess.run([sys.executable, "-m", "data_pipelines.create_pretraining_data", "--input_file",
                             str(garbage), "--output_dir", str(tmp_path / "out"), "--vocab_file", str(vocab)],
                            cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"input file {garbage}: " in result.stderr and "are not UTF-8 text" in result.stderr
    assert not (tmp_path / "out").exists()


def test_trainer_cli_second_start_is_one_line_exit_2(tmp_path):
    """The lock held by another process (here: this test): bert_jax.main names the holder in one
    line, exit 2, and writes nothing into the workdir."""
    from bert_jax.workdir_lock import WorkdirLock
    from tests.train_helpers import SUBPROCESS_TIMEOUT_S, main_command
    env = {k: v for k, v in os.environ.items() if k != cli_flags.DEBUG_ENV}
    with WorkdirLock(tmp_path / "run"):
        result = subprocess.run(main_command(tmp_path / "run", "--config.train.num_steps=2"), cwd=REPO,
                                capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("bert_jax.main: error:")]
    assert len(errors) == 1 and f"is in use by another run (host" in errors[0] and f"pid {os.getpid()}," in errors[0]
    assert sorted(os.listdir(tmp_path / "run")) == ["run.lock"]


def test_final_summary_line():
    from bert_jax.main import final_summary
    assert final_summary({"step": 30, "final_metrics": {"accuracy": 0.8125, "f1": 0.5}, "best_step": 30}) == \
        "finished at step 30: final metrics accuracy=0.8125, f1=0.5"
    assert final_summary({"step": 30, "final_metrics": {}, "best_step": None}).endswith("none (no eval data)")
    assert final_summary({"step": 30, "final_metrics": {"accuracy": 0.5}, "main_metric": "accuracy", "best_step": 10,
                          "best_metrics": {"accuracy": 0.75}}).endswith("; best accuracy at step 10: accuracy=0.75")
