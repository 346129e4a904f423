"""The quickstart's new pieces, without its 5-minute run: a released checkpoint (here a local
Hugging Face directory of a small BERT built by transformers) fine-tuned by the same stage
command as the other rows, the early refusal of a missing one, and the held-out MLM
unigram baseline."""

import json
import math
import shutil

import numpy as np
import pytest

from experiments import quickstart

FAST = ["--config.num_epochs=0", "--config.warmup_proportion=-1", "--config.train.num_steps=3",
        "--config.optimizer.warmup_steps=0", "--config.logging.tensorboard=False",
        "--config.logging.peak_flops_per_device=1e11"]


@pytest.fixture(scope="module")
def released_dir(shared_data, tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128))
    path = tmp_path_factory.mktemp("released")
    model.save_pretrained(path)
    shutil.copy(shared_data / "vocab" / "bert-base-uncased-vocab.txt", path / "vocab.txt")
    (path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return path


@pytest.mark.slow
def test_released_checkpoint_gets_the_same_finetuning_stage(released_dir, tmp_path, capsys):
    vocab_args = quickstart.released_vocab_args(str(released_dir))
    assert vocab_args == ["--config.lowercase=True"]
    accuracy, steps = quickstart.finetune(tmp_path, f"released {released_dir}", str(released_dir), 0, vocab_args,
                                          extra=FAST)
    assert steps == 3 and 0.0 <= accuracy <= 1.0
    (workdir,) = [p for p in tmp_path.iterdir() if p.name.startswith("finetune_released")]
    results = json.loads((workdir / "results.json").read_text())
    assert results["init_from"] == str(released_dir)
    assert results["config"]["model"]["hidden_size"] == 32  # the released architecture, not the quickstart's
    printed = capsys.readouterr().out
    assert "bert_jax.main" in printed and f"--config.init_from={released_dir}" in printed


def test_missing_released_checkpoint_fails_before_any_stage(tmp_path):
    from bert_jax.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        quickstart.main(["--workdir", str(tmp_path / "q"), "--released", str(tmp_path / "no_such_model")])
    assert not (tmp_path / "q").exists()


def test_unigram_baseline_on_heldout_reviews(tmp_path):
    """The baseline on the quickstart's own held-out reviews, with a SentencePiece vocab trained on Austen:
    above 0, well below ln(V) (text is Zipfian), and equal to the cross-entropy computed directly
    from token counts of the training instances' text."""
    from data_pipelines import create_pretraining_data, train_vocab
    from data_pipelines.record_files import read_pretraining_arrays

    austen = tmp_path / "austen.txt"
    austen.write_text(quickstart.AUSTEN.read_text(encoding="utf-8")[:300_000], encoding="utf-8")
    spm = train_vocab.train(str(austen), 1000, "unigram", str(tmp_path / "spm"), progress=False)
    held_text = quickstart.write_heldout_text(quickstart.REPO / "data/quickstart/sentiment_dev.tsv",
                                              tmp_path / "heldout.txt")
    for text, out in ((austen, "train"), (held_text, "held")):
        create_pretraining_data.main(["--input_file", str(text), "--output_dir", str(tmp_path / out),
                                      "--vocab_file", spm, "--max_seq_length", "64", "--max_predictions_per_seq",
                                      "10", "--dupe_factor", "1", "--num_workers", "1"])
    baseline = quickstart.unigram_baseline(f"{tmp_path}/train/*.array_record", f"{tmp_path}/held/*.array_record",
                                           spm)
    assert 0 < baseline < math.log(1000) - 1.0

    # Directly: every original token of the training rows (specials excluded), add-one smoothing.
    train = read_pretraining_arrays(f"{tmp_path}/train/*.array_record")
    counts = np.zeros(1000)
    for row in range(len(train["input_ids"])):
        tokens = list(train["input_ids"][row])
        for pos, tid, w in zip(train["masked_lm_positions"][row], train["masked_lm_ids"][row],
                               train["masked_lm_weights"][row]):
            if w > 0:
                tokens[pos] = tid
        for t in tokens:
            if t > 4:  # [PAD] [UNK] [CLS] [SEP] [MASK] are ids 0-4 in train_vocab's SentencePiece models
                counts[t] += 1
    held = read_pretraining_arrays(f"{tmp_path}/held/*.array_record")
    targets = held["masked_lm_ids"][held["masked_lm_weights"] > 0]
    expected = -np.mean(np.log((counts[targets] + 1) / (counts.sum() + 1000)))
    assert baseline == pytest.approx(expected, rel=1e-9)
