"""Loss goes down: BERT-tiny pretraining on real text (the shared corpus) through the whole stack,
create_pretraining_data -> input pipeline -> trainer, evaluated on held-out documents."""

import collections
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from tests.train_helpers import REPO, SUBPROCESS_TIMEOUT_S, read_metrics, subprocess_env

VOCAB_SIZE = 30522


def _split_documents(paths, train_path, eval_path):
    """Every 5th document (blank-line separated) goes to the held-out file (~360 instances: enough
    distinct ones for the NSP test below)."""
    documents = []
    for path in paths:
        documents += [d for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    train_path.write_text("\n\n".join(d for i, d in enumerate(documents) if i % 5) + "\n", encoding="utf-8")
    eval_path.write_text("\n\n".join(d for i, d in enumerate(documents) if i % 5 == 0) + "\n", encoding="utf-8")


def _create(text, output_dir, vocab, dupe_factor):
    subprocess.run([sys.executable, "-m", "data_pipelines.create_pretraining_data", "--input_file", str(text),
                    "--output_dir", str(output_dir), "--vocab_file", str(vocab), "--max_seq_length", "128",
                    "--max_predictions_per_seq", "20", "--dupe_factor", str(dupe_factor),
                    "--num_workers", "2"], cwd=REPO, env=subprocess_env(1), check=True, capture_output=True,
                   timeout=SUBPROCESS_TIMEOUT_S)


def _read_instances(pattern):
    """(masked token ids at real masked positions, next-sentence labels) of every instance."""
    from data_pipelines import input_pipeline
    config = input_pipeline.default_data_config()
    config.input_files, config.shuffle, config.prefetch_batches = pattern, False, 0
    iterator = input_pipeline.make_pretraining_iterator(config, 32, seed=0)
    ids, nsp = [], []
    count = len(iterator._source)
    for _ in range(math.ceil(count / 32)):
        batch = next(iterator)
        ids.append(batch["masked_lm_ids"][batch["masked_lm_weights"] > 0])
        nsp.append(batch["next_sentence_labels"].reshape(-1))
    return np.concatenate(ids), np.concatenate(nsp)[:count]


def _masked_ids(pattern):
    return _read_instances(pattern)[0]


@pytest.mark.slow
def test_tiny_bert_pretraining_loss_goes_down(shared_data, tmp_path):
    corpus = shared_data / "corpus"
    vocab = shared_data / "vocab" / "bert-base-uncased-vocab.txt"
    _split_documents([corpus / "botchan.txt", corpus / "lee_news.txt"], tmp_path / "train.txt", tmp_path / "eval.txt")
    _create(tmp_path / "train.txt", tmp_path / "train", vocab, dupe_factor=2)
    _create(tmp_path / "eval.txt", tmp_path / "eval", vocab, dupe_factor=1)

    # Evaluate on distinct held-out instances only (the eval iterator would cycle past the end).
    _, nsp_labels = _read_instances(str(tmp_path / "eval" / "*.array_record"))
    eval_batches = nsp_labels.size // 32
    assert eval_batches >= 10, nsp_labels.size

    workdir = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "bert_jax.main", "--config=experiments/pretrain.py:tiny", f"--workdir={workdir}",
         f"--config.data.input_files={tmp_path / 'train' / '*.array_record'}",
         f"--config.task.eval_input_files={tmp_path / 'eval' / '*.array_record'}", f"--config.task.num_eval_batches={eval_batches}",
         "--config.train.batch_size=32", "--config.train.eval_batch_size=32", "--config.train.num_steps=300",
         "--config.train.log_every=10", "--config.optimizer.warmup_steps=30", "--config.optimizer.learning_rate=1e-3",
         # No dropout: a 300-step run learns faster without it; the paper's 0.1 is for long runs.
         "--config.model.hidden_dropout_prob=0.0", "--config.model.attention_probs_dropout_prob=0.0",
         "--config.logging.tensorboard=False"],
        cwd=REPO, env=subprocess_env(1), check=True, capture_output=True, timeout=SUBPROCESS_TIMEOUT_S)

    train = read_metrics(workdir)
    (evaluation,) = read_metrics(workdir, "eval")
    # Untrained, the MLM loss is that of a uniform guess over the vocabulary.
    assert abs(train[0]["mlm_loss"] - math.log(VOCAB_SIZE)) < 0.3, train[0]
    assert evaluation["mlm_loss"] < math.log(VOCAB_SIZE) - 3.0, evaluation
    # Unigram baseline: always predict the most frequent masked token of the training data.
    train_ids, eval_ids = _masked_ids(str(tmp_path / "train" / "*.array_record")), _masked_ids(
        str(tmp_path / "eval" / "*.array_record"))
    most_frequent = collections.Counter(train_ids.tolist()).most_common(1)[0][0]
    unigram_accuracy = float((eval_ids == most_frequent).mean())
    print(f"initial mlm_loss {train[0]['mlm_loss']:.3f} (ln V = {math.log(VOCAB_SIZE):.3f}); held-out after "
          f"{train[-1]['step']} steps: {evaluation}; unigram baseline accuracy {unigram_accuracy:.4f}")
    # Measured here: 0.0716 against a baseline of 0.0539 (held-out mlm_loss 7.13 from 10.15).
    assert evaluation["mlm_accuracy"] > unigram_accuracy, (evaluation, unigram_accuracy)
    # NSP: the old check (accuracy > 0.55) passed for a model that always guesses the majority
    # label, since the held-out labels are not balanced (Google's recipe forces a random next
    # segment when a document has one sentence left). Measured against that baseline with a
    # one-sided binomial test, this 300-step run does not show NSP learning: 191/320 = 0.597
    # against a majority rate of 0.586, p = 0.37. So no NSP claim is asserted here; the NSP head
    # and loss are checked against Hugging Face's in tests/test_trajectory_hf.py.
    scored = eval_batches * 32
    majority = max(nsp_labels.mean(), 1 - nsp_labels.mean())
    correct = round(evaluation["nsp_accuracy"] * scored)
    p_value = scipy.stats.binomtest(correct, scored, majority, alternative="greater").pvalue
    print(f"NSP: {correct}/{scored} = {evaluation['nsp_accuracy']:.4f} against a majority rate of "
          f"{majority:.4f} ({nsp_labels.size} held-out instances): one-sided binomial p = {p_value:.2e}")
