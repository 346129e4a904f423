"""The collapse statistics (bert_jax.representation) and the unigram baseline, against sklearn and
independent numpy computations on known inputs; and their path through pretraining evaluation."""

import collections

import numpy as np
import pytest
from sklearn.metrics.pairwise import cosine_similarity

from bert_jax import representation
from bert_jax.tasks import unigram_baseline


def _rows(hidden, mask, k=representation.SAMPLES_PER_EXAMPLE):
    import jax.numpy as jnp
    return {key: np.asarray(v) for key, v in representation.hidden_state_rows(jnp.asarray(hidden), jnp.asarray(mask), k).items()}


def _padded(rng, lengths, length=9, hidden=16):
    mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    states = rng.normal(size=(len(lengths), length, hidden)).astype(np.float32) + 0.7  # a shared offset: cosine > 0
    states[mask == 0] = 1e6  # padding rows that would dominate any statistic that reads them
    return states, mask


def test_mean_pairwise_cosine_equals_sklearns_over_real_tokens_of_weighted_examples():
    rng = np.random.default_rng(0)
    states, mask = _padded(rng, [9, 4, 1, 6])
    weight = np.array([1.0, 1.0, 1.0, 0.0])  # the last example is batch padding
    batches = [_rows(states[:2], mask[:2]), _rows(states[2:], mask[2:])]
    got = representation.statistics(batches, weight)["hidden_cosine"]

    real = np.concatenate([states[i][mask[i] == 1] for i in range(3)])  # 14 tokens
    similarity = cosine_similarity(real)
    off_diagonal = similarity[~np.eye(len(real), dtype=bool)]
    assert got == pytest.approx(off_diagonal.mean(), rel=1e-5)
    assert 0.1 < got < 0.9


def test_identical_states_have_cosine_one_and_rank_one():
    states = np.tile(np.arange(1.0, 17.0, dtype=np.float32), (2, 5, 1)) * np.array([1, 3], np.float32)[:, None, None]
    stats = representation.statistics([_rows(states, np.ones((2, 5)))], np.ones(2))
    assert stats["hidden_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert stats["hidden_effective_rank"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("rank", [1, 3, 16])
def test_effective_rank_of_equal_singular_values_is_the_rank(rank):
    rng = np.random.default_rng(rank)
    left, _ = np.linalg.qr(rng.normal(size=(64, rank)))
    right, _ = np.linalg.qr(rng.normal(size=(16, rank)))
    matrix = 5.0 * left @ right.T  # singular values: `rank` fives
    assert representation.effective_rank(matrix) == pytest.approx(rank, rel=1e-6)


def test_effective_rank_is_exp_entropy_of_normalised_singular_values():
    rng = np.random.default_rng(1)
    left, _ = np.linalg.qr(rng.normal(size=(40, 3)))
    right, _ = np.linalg.qr(rng.normal(size=(8, 3)))
    matrix = left @ np.diag([3.0, 2.0, 1.0]) @ right.T
    p = np.array([3.0, 2.0, 1.0]) / 6.0
    assert representation.effective_rank(matrix) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)


def test_samples_are_real_tokens_spread_over_each_example():
    rng = np.random.default_rng(2)
    states, mask = _padded(rng, [9, 3, 1])
    rows = _rows(states, mask, k=4)
    for i, length in enumerate([9, 3, 1]):
        real = states[i][:length]
        for sample in rows["hidden_sample"][i]:
            assert np.any(np.all(np.isclose(real, sample), axis=-1)), f"example {i}: a sample is not a real token"
    np.testing.assert_array_equal(rows["hidden_count"], [9, 3, 1])
    # 4 samples over 9 tokens: positions floor((j + 0.5) * 9 / 4) = 1, 3, 5, 7.
    np.testing.assert_allclose(rows["hidden_sample"][0], states[0][[1, 3, 5, 7]])


def test_collapse_warning_only_above_the_threshold():
    assert representation.collapse_warning({"hidden_cosine": 0.35, "hidden_effective_rank": 80.0}) is None
    assert representation.collapse_warning({"mlm_loss": 7.0}) is None
    warning = representation.collapse_warning({"hidden_cosine": 0.998, "hidden_effective_rank": 1.4})
    assert "collapsed" in warning and "0.998" in warning
    assert representation.collapse_warning({"hidden_cosine": float("nan")}) is None


def _batch(input_ids, positions, labels, weights, mask):
    return {"input_ids": np.array(input_ids), "input_mask": np.array(mask),
            "masked_lm_positions": np.array(positions), "masked_lm_ids": np.array(labels),
            "masked_lm_weights": np.array(weights, np.float32)}


def test_unigram_counts_restore_masked_tokens_and_skip_padding_and_specials():
    # vocab: 0 [PAD], 1 [CLS], 2 [SEP], 3 [MASK], 4.. words. Row 0 is "CLS 5 6 5 SEP" with 6
    # masked (shown as [MASK]) and 5 at position 3 replaced by a random 9; row 1 is padded.
    batch = _batch([[1, 5, 3, 9, 2], [1, 7, 2, 0, 0]], [[2, 3], [0, 0]], [[6, 5], [0, 0]], [[1, 1], [0, 0]],
                   [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    counts = unigram_baseline.token_counts([batch], vocab_size=10, special_ids=[0, 1, 2, 3])
    expected = collections.Counter({5: 2, 6: 1, 7: 1})
    np.testing.assert_array_equal(counts, [expected.get(i, 0) for i in range(10)])


def test_unigram_loss_and_accuracy_against_a_direct_computation():
    counts = np.array([0, 0, 0, 0, 10, 5, 1, 0], np.float64)
    log_p = unigram_baseline.log_probs(counts)
    probabilities = (counts + 1) / (16 + 8)
    np.testing.assert_allclose(np.exp(log_p), probabilities)
    targets = np.array([[4, 5, 7], [6, 4, 0]])
    weights = np.array([[1, 1, 1], [1, 0, 0]], np.float32)
    loss, accuracy = unigram_baseline.loss_and_accuracy(log_p, targets, weights)
    chosen = [4, 5, 7, 6]
    assert loss == pytest.approx(-np.mean(np.log(probabilities[chosen])))
    assert accuracy == pytest.approx(0.25)  # token 4, the most frequent, is right once in 4


def test_pretraining_evaluation_reports_the_statistics_and_the_baseline(tmp_path):
    """Through the trainer: results.json and metrics.jsonl carry the statistics."""
    import json

    from bert_jax import train
    from tests.train_helpers import tiny_config

    config = tiny_config(num_steps=2, eval_every=2)
    config.task.num_eval_batches = 2
    config.task.unigram_baseline_batches = 20
    train.train_and_evaluate(config, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    final = results["final_eval"] if "final_eval" in results else results
    flat = json.dumps(final)
    for key in ("hidden_cosine", "hidden_effective_rank", "mlm_unigram_loss", "mlm_unigram_accuracy"):
        assert key in flat, f"{key} missing from results.json: {flat[:400]}"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if any("hidden_cosine" in k for k in r)]
    assert evals, "no evaluation row with hidden_cosine in metrics.jsonl"
    unigram = [v for r in evals for k, v in r.items() if k.endswith("mlm_unigram_loss")][0]
    # Synthetic tokens are uniform over ids 999..1023: the baseline is near ln 25 (add-one
    # smoothing over the 1,024 ids adds a little).
    assert unigram == pytest.approx(np.log(1024 - 999), rel=0.02)


# The paper tables' CPU pretraining budget before issue 23 (the committed collapsed tables of
# docs/ablations/ ran it): 100 steps of a post-LN 4-layer tiny BERT at lr 1e-3, static masks.
COLLAPSING_BUDGET = {
    "model.num_hidden_layers": 4, "data.max_seq_length": 64, "data.max_predictions_per_seq": 10,
    "train.batch_size": 32, "train.num_steps": 100, "train.log_every": 10, "optimizer.learning_rate": 1e-3,
    "optimizer.warmup_steps": 10, "checkpoint.every_steps": 100, "checkpoint.keep": 1,
}


@pytest.mark.slow
def test_the_threshold_separates_the_collapsed_100_step_model_from_healthy_encoders(shared_data, tmp_path, caplog):
    """The paper tables' former CPU pretraining budget (COLLAPSING_BUDGET) on the shared corpus
    collapses: held-out cosine above the threshold (0.998 measured) and the trainer warns. The real
    pretrained all-MiniLM-L6-v2 (0.28 measured) and random init (0.21) stay far below it."""
    import json
    import logging
    import subprocess
    import sys

    from bert_jax import train
    from experiments import pretrain
    from experiments.ablations import common
    from tests.train_helpers import REPO, import_file
    from data_pipelines.record_files import read_pretraining_arrays

    vocab = shared_data / "vocab" / "bert-base-uncased-vocab.txt"
    corpus = {"train": common.TRAIN_CORPUS, "heldout": common.HELDOUT_CORPUS}
    for name, files in corpus.items():
        subprocess.run([sys.executable, "-m", "data_pipelines.create_pretraining_data",
                        "--input_file", files.replace("$BERT_JAX_DATA", str(shared_data)),
                        "--output_dir", str(tmp_path / name), "--vocab_file", str(vocab), "--max_seq_length", "64",
                        "--max_predictions_per_seq", "10", "--dupe_factor", "1"],
                       check=True, cwd=REPO, capture_output=True)
    config = pretrain.get_config("tiny")
    config.update_from_flattened_dict(COLLAPSING_BUDGET)
    config.data.input_files = str(tmp_path / "train" / "*.array_record")
    config.data.vocab_file = str(vocab)
    config.task.eval_input_files = str(tmp_path / "heldout" / "*.array_record")
    config.task.num_eval_batches = 4
    config.train.update(eval_every=100, eval_batch_size=64)
    config.logging.update(tensorboard=False, progress_bar=False)
    with caplog.at_level(logging.WARNING, logger="bert_jax.train"):
        train.train_and_evaluate(config, tmp_path / "collapsed")
    final = json.loads((tmp_path / "collapsed" / "results.json").read_text())["final_metrics"]
    assert final["hidden_cosine"] > representation.COLLAPSE_COSINE
    assert final["hidden_effective_rank"] < 16  # of 128 dimensions
    assert final["mlm_loss"] > final["mlm_unigram_loss"] - 0.1  # no better than token frequencies
    assert any("looks collapsed" in r.getMessage() for r in caplog.records)

    mlm_eval = import_file(REPO / "benchmarks" / "mlm_eval.py")
    from bert_jax import load_pretrained
    minilm_config, minilm = load_pretrained(shared_data / "models" / "all-MiniLM-L6-v2", check_vocab=False)
    heldout = read_pretraining_arrays(str(tmp_path / "heldout" / "*.array_record"), limit=256)
    healthy = mlm_eval.encoder_statistics(minilm_config, minilm, heldout, batch_size=64)
    assert healthy["hidden_cosine"] < representation.COLLAPSE_COSINE - 0.3
    assert representation.collapse_warning(healthy) is None
