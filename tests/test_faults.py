"""The trainer's fault matrix (issue 25; docs/reliability.md has the whole table): each fault
an operator or a new user met, and its outcome: recovered, refused with a named error, or
resumed from an older step. Goal: no lost checkpoint, no silent wrong result, no deep crash,
no hang.

Faults of the pieces below the trainer are tested beside them: damaged checkpoint files
(test_checkpoint_verify), weights (test_checkpoint_inputs), corpus files (test_text_input),
TSV and CoNLL files (test_finetune_tsv, test_ner), the lock itself (test_workdir_lock), batch
ranges (test_batch_checks) and command-line errors (test_cli_errors).
"""

import json
import logging
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from bert_jax import run_checkpoints, train
from bert_jax.checkpoints.validation import CheckpointError
from bert_jax.tasks.pretraining import PretrainingTask
from bert_jax.workdir_lock import WorkdirLock, WorkdirLocked
from tests.train_helpers import SUBPROCESS_TIMEOUT_S, main_command, read_metrics, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_DEVICE = dict(devices=jax.devices()[:1])


class _BadBatchAt(PretrainingTask):
    """Synthetic pretraining whose batch `bad_step` (or every batch from it on) is edited by `edit`."""

    def __init__(self, config, bad_step, edit, every_step_from=False):
        super().__init__(config)
        self.bad_step, self.edit, self.every_step_from = bad_step, edit, every_step_from

    def train_iterator(self, *args, **kwargs):
        inner = super().train_iterator(*args, **kwargs)
        task = self

        class Edited:
            def __iter__(self):
                return self

            def __next__(self):
                batch = next(inner)
                step = inner.get_state()["synthetic_step"]
                if step == task.bad_step or (task.every_step_from and step >= task.bad_step):
                    batch = {k: np.array(v) for k, v in batch.items()}
                    task.edit(batch)
                return batch

            get_state, set_state = inner.get_state, inner.set_state

        return Edited()


def _nan_weights(batch):
    batch["masked_lm_weights"] = batch["masked_lm_weights"] * np.nan


def _steps_on_disk(workdir):
    return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


# ------------------------------------------------------------------ 1. exit paths keep finished work

_ERROR_AFTER_ASYNC_SAVE = """
import sys, jax, numpy as np
from tests.test_faults import _BadBatchAt
from tests.train_helpers import tiny_config
from bert_jax import train
config = tiny_config(num_steps=8)
config.checkpoint.update(every_steps=2, async_save=True)
def bad_id(batch):
    batch["input_ids"][0, 1] = config.model.vocab_size
train.train_and_evaluate(config, sys.argv[1], task=_BadBatchAt(config, 5, bad_id), devices=jax.devices()[:1])
"""


def test_error_in_the_loop_keeps_the_save_in_flight(tmp_path):
    """A bad batch right after an async save: the process used to exit with the save unfinished
    (only N.orbax-checkpoint-tmp left) while the message spoke of checkpoints up to N."""
    result = subprocess.run([sys.executable, "-c", _ERROR_AFTER_ASYNC_SAVE, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode != 0
    assert "step 5: batch field 'input_ids' holds token id 1024" in result.stderr
    assert _steps_on_disk(tmp_path) == ["2", "4"]
    assert f"stopped at step 4 by ValueError; newest checkpoint on disk: {tmp_path}/checkpoints/4" in result.stderr


class _EvalBreaks(PretrainingTask):
    def evaluate(self, predictions, batches):
        raise RuntimeError("the evaluation broke")


def test_final_save_comes_before_the_final_evaluation(tmp_path):
    """An evaluation error at the end no longer costs the trained model."""
    config = tiny_config(num_steps=3)
    config.task.num_eval_batches = 1
    with pytest.raises(RuntimeError, match="the evaluation broke"):
        train.train_and_evaluate(config, tmp_path, task=_EvalBreaks(config), **ONE_DEVICE)
    assert _steps_on_disk(tmp_path) == ["3"]
    _, step = run_checkpoints.restore_params(tmp_path)
    assert step == 3


def test_first_ctrl_c_saves_second_aborts():
    flag = train._SigtermFlag()
    flag._handle_int(signal.SIGINT, None)
    assert flag.raised  # the loop saves at the end of the step and returns, as on SIGTERM
    with pytest.raises(KeyboardInterrupt, match="second Ctrl-C"):
        flag._handle_int(signal.SIGINT, None)


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_0(tmp_path):
    process = subprocess.Popen(main_command(tmp_path / "run", "--config.train.num_steps=100000",
                                            "--config.checkpoint.every_steps=100000"),
                               cwd=REPO, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "step 3:" in line:
            process.send_signal(signal.SIGINT)
            break
    lines += process.stderr.readlines()
    assert process.wait(timeout=SUBPROCESS_TIMEOUT_S) == 0, "".join(lines[-20:])
    text = "".join(lines)
    assert "Ctrl-C: saving a checkpoint at the end of this step" in text
    saved = [int(s) for s in _steps_on_disk(tmp_path / "run")]
    assert len(saved) == 1 and saved[0] >= 3


# ------------------------------------------------------------------ 2. one run per workdir

def test_second_run_in_a_held_workdir_is_refused_and_writes_nothing(tmp_path):
    config = tiny_config(num_steps=2)
    with WorkdirLock(tmp_path):  # the first run (this process, another open of the lock file)
        with pytest.raises(WorkdirLocked, match=rf"{tmp_path} is in use by another run \(host .* pid {os.getpid()}"):
            train.train_and_evaluate(config, tmp_path, **ONE_DEVICE)
    assert sorted(os.listdir(tmp_path)) == ["run.lock"]
    # That a finished run releases the lock shows wherever a test runs twice in one workdir in one
    # process (the damaged-checkpoint test below): the second start would be refused.


# ------------------------------------------------------------------ 3. verified checkpoints, fall-back

def _flip_a_bit_of_the_state(workdir, step):
    root = os.path.join(workdir, "checkpoints", str(step), "state")
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f"{os.sep}d{os.sep}" in os.path.join(d, f)]
    path = max(files, key=os.path.getsize)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 1
    open(path, "wb").write(bytes(data))


def test_damaged_newest_checkpoint_resumes_from_the_older_one(tmp_path, caplog):
    config = tiny_config(num_steps=4)
    config.checkpoint.update(every_steps=2)
    train.train_and_evaluate(config, tmp_path, **ONE_DEVICE)
    assert _steps_on_disk(tmp_path) == ["2", "4"]
    _flip_a_bit_of_the_state(tmp_path, 4)
    config.train.num_steps = 6
    with caplog.at_level(logging.WARNING, "bert_jax.run_checkpoints"):
        results = train.train_and_evaluate(config, tmp_path, **ONE_DEVICE)
    assert results["step"] == 6
    assert f"{tmp_path}/checkpoints/4 is damaged or incomplete, skipped" in caplog.text
    assert "resuming from step 2, the newest intact checkpoint" in caplog.text
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]  # 3 and 4 cut, run again
    starts = [json.loads(line) for line in (tmp_path / "starts.jsonl").read_text().splitlines()]
    assert [s["restored_step"] for s in starts] == [None, 2]
    assert [p.split("-")[0] for p in os.listdir(tmp_path / "damaged_checkpoints")] == ["4"]


def test_failed_restore_writes_no_record(tmp_path):
    """config.json and starts.jsonl used to be rewritten before a damaged restore crashed."""
    config = tiny_config(num_steps=2)
    config.checkpoint.update(every_steps=2)
    train.train_and_evaluate(config, tmp_path, **ONE_DEVICE)
    _flip_a_bit_of_the_state(tmp_path, 2)
    before = {name: (tmp_path / name).read_bytes() for name in ("config.json", "starts.jsonl", "metrics.jsonl")}
    config.train.num_steps = 4
    config.seed = 1  # a changed config that would show in config.json
    with pytest.raises(CheckpointError, match=r"no checkpoint restores: step 2: ChecksumMismatch"):
        train.train_and_evaluate(config, tmp_path, **ONE_DEVICE)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


# ------------------------------------------------------------------ 4. inputs checked, non-finite skips

def test_masked_position_beyond_the_row_refused_naming_the_step(tmp_path):
    config = tiny_config(num_steps=4)

    def beyond(batch):
        batch["masked_lm_positions"][0, 0] = batch["input_ids"].shape[1]
    with pytest.raises(ValueError, match=r"step 2: batch field 'masked_lm_positions' holds 32, outside \[0, 32\)"):
        train.train_and_evaluate(config, tmp_path, task=_BadBatchAt(config, 2, beyond), **ONE_DEVICE)


def test_skip_policy_warns_each_skip_and_halts_after_k_in_a_row(tmp_path, caplog):
    config = tiny_config(num_steps=8, nonfinite_policy="skip", nonfinite_skip_limit=3)
    task = _BadBatchAt(config, 2, _nan_weights, every_step_from=True)
    with caplog.at_level(logging.WARNING, "bert_jax.train"):
        with pytest.raises(train.NonFiniteError, match=r"3 steps in a row up to step 4 .* \(config.train.nonfinite_skip_limit=3\)"):
            train.train_and_evaluate(config, tmp_path, task=task, **ONE_DEVICE)
    assert [f"step {s}: non-finite loss or gradient norm, update skipped" in caplog.text for s in (2, 3, 4)] == [True] * 3
    assert not (tmp_path / "results.json").exists()


def test_a_run_whose_every_step_was_skipped_does_not_end_as_success(tmp_path):
    config = tiny_config(num_steps=2, nonfinite_policy="skip")
    task = _BadBatchAt(config, 1, _nan_weights, every_step_from=True)
    with pytest.raises(train.NonFiniteError, match="all 2 steps had a non-finite loss .* nothing was trained"):
        train.train_and_evaluate(config, tmp_path, task=task, **ONE_DEVICE)
    assert not (tmp_path / "results.json").exists()
    assert not os.path.exists(tmp_path / "checkpoints" / "2")  # no untrained checkpoint
