"""The random-init control of the paper tables: an evaluation-only run of a fresh model saves it,
and `bert_jax.random_init` copies a real checkpoint's architecture and vocabulary with fresh weights."""

import json

import numpy as np
import pytest


def test_a_fresh_evaluation_only_run_saves_the_initial_model_for_fine_tuning(tmp_path):
    from bert_jax import load_pretrained, train
    from bert_jax.run_checkpoints import latest_step
    from tests.train_helpers import tiny_config

    train.train_and_evaluate(tiny_config(num_steps=0, eval_every=0), tmp_path / "control")
    assert latest_step(tmp_path / "control") == 0
    config, params = load_pretrained(tmp_path / "control", check_vocab=False)
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (2, 128, 1024)
    # BERT's initialiser: truncated normal of std initializer_range (0.02), i.e. a std of
    # 0.02 * 0.8796 after truncation at two standard deviations (scipy.stats.truncnorm).
    from scipy.stats import truncnorm
    words = np.asarray(params["bert"]["embeddings"]["word_embeddings"]["embedding"])
    assert words.std() == pytest.approx(0.02 * truncnorm(-2, 2).std(), rel=0.05)


def test_an_evaluation_only_run_from_init_from_saves_nothing(tmp_path):
    from bert_jax import train
    from bert_jax.run_checkpoints import latest_step
    from tests.train_helpers import tiny_config

    train.train_and_evaluate(tiny_config(num_steps=2), tmp_path / "trained")
    config = tiny_config(num_steps=0)
    config.init_from = str(tmp_path / "trained")
    train.train_and_evaluate(config, tmp_path / "eval_only")
    assert latest_step(tmp_path / "eval_only") is None


def test_random_init_copies_minilms_architecture_and_vocab_with_fresh_weights(shared_data, tmp_path):
    from bert_jax import load_pretrained, random_init

    minilm = shared_data / "models" / "all-MiniLM-L6-v2"
    random_init.main(["--like", str(minilm), "--out", str(tmp_path / "control")])
    config, params = load_pretrained(tmp_path / "control")
    hf_config = json.loads((minilm / "config.json").read_text())
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.vocab_size) == (
        hf_config["num_hidden_layers"], hf_config["hidden_size"], hf_config["num_attention_heads"],
        hf_config["vocab_size"])
    assert (tmp_path / "control" / "vocab.txt").read_bytes() == (minilm / "vocab.txt").read_bytes()
    _, trained = load_pretrained(minilm)
    fresh = np.asarray(params["bert"]["embeddings"]["word_embeddings"]["embedding"])
    real = np.asarray(trained["bert"]["embeddings"]["word_embeddings"]["embedding"])
    assert fresh.shape == real.shape and not np.allclose(fresh, real)
    assert "cls" in params  # pretraining heads too: the control is a whole BertForPreTraining
