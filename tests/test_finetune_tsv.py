"""Generic TSV fine-tuning: file reading, label inference, config resolution, and a run through the
real trainer (`bert_jax.main`'s train_and_evaluate) from a small checkpoint."""

import json
import pathlib

import numpy as np
import pytest

from bert_jax.tasks import classification, finetuning, tsv
from tests.finetune_helpers import one_epoch_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_the_shared_layouts(shared_data):
    sentiment = tsv.read_examples(shared_data / "sentiment" / "rotten_tomatoes" / "dev.tsv")
    assert len(sentiment) == 1780 and sentiment[0].text_b is None
    assert tsv.infer_labels([e.label for e in sentiment]) == ["0", "1"]
    bible = tsv.read_examples(shared_data / "paraphrase" / "bible" / "dev.tsv")
    assert len(bible) == 2000 and all(e.text_b for e in bible)  # label<TAB>sentence_a<TAB>sentence_b
    # The headerless Quora sample: names through column_names.
    quora = tsv.read_examples(
        shared_data / "samples" / "quora_paraphrase.tsv", column_names=["label", "sentence_a", "sentence_b", "id"]
    )
    assert quora[0].text_a.startswith("What should I do") and quora[0].label == "1"


def test_label_inference():
    assert tsv.infer_labels(["pos", "neg", "pos"]) == ["neg", "pos"]
    assert tsv.infer_labels(["10", "2", "1"]) == ["1", "2", "10"]  # integers sort numerically
    assert tsv.infer_labels(["0.5", "3.8", "1"]) is None  # non-integer numbers: regression
    assert tsv.infer_labels(["1", "2"], task_type="regression") is None
    with pytest.raises(ValueError, match="at least two labels"):
        tsv.infer_labels(["1", "1"])
    with pytest.raises(ValueError, match="numeric labels, found 'x'"):
        tsv.infer_labels(["x", "1.5"], task_type="regression")


def test_missing_columns_and_bad_rows_are_named(tmp_path):
    path = _write(tmp_path / "a.tsv", "text\tlabel\nhello\t1\n")
    with pytest.raises(ValueError, match=r"a.tsv: no first text column; expected one of \['sentence'"):
        tsv.read_examples(path)
    path = _write(tmp_path / "b.tsv", "sentence\tlabel\nhello\t1\nbye\n")
    with pytest.raises(ValueError, match=r"b.tsv:3: expected 2 tab-separated fields"):
        tsv.read_examples(path)
    path = _write(tmp_path / "c.tsv", "sentence\tlabel\nhello\t\n")
    with pytest.raises(ValueError, match=r"c.tsv:2: empty 'label' field"):
        tsv.read_examples(path)


def test_quotes_are_ordinary_characters(tmp_path):
    path = _write(tmp_path / "q.tsv", 'sentence\tlabel\n"It\'s a "great" film\t1\n')
    (example,) = tsv.read_examples(path)
    assert example.text_a == '"It\'s a "great" film'


def test_truncation_is_longest_first_and_counted(shared_data, caplog):
    tokenizer = finetuning.features_lib.load_tokenizer(shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    examples = [
        classification.TextExample("0", "one two three four five six seven eight", "alpha beta"),
        classification.TextExample("1", "short", "pair"),
    ]
    with caplog.at_level("INFO"):
        arrays = classification.encode_examples(tokenizer, examples, max_seq_length=9, what="demo")
    assert arrays["num_truncated"] == 1 and "1 truncated to max_seq_length=9" in caplog.text
    # 9 - 3 specials = 6 tokens: the longer first segment gives up its tail, "alpha beta" stays whole.
    tokens = tokenizer.convert_ids_to_tokens(arrays["input_ids"][0])
    assert tokens == ["[CLS]", "one", "two", "three", "four", "[SEP]", "alpha", "beta", "[SEP]"]
    assert arrays["token_type_ids"][0].tolist() == [0] * 6 + [1] * 3


def test_batch_iterator_resumes_exactly_and_covers_every_example():
    arrays = {"x": np.arange(10)}
    iterator = finetuning.features_lib.ArrayBatchIterator(arrays, batch_size=4, seed=3)
    first = [next(iterator)["x"] for _ in range(5)]  # 20 rows = two full epochs
    assert sorted(np.concatenate(first[:2]).tolist() + first[2][:2].tolist()) == list(range(10))
    state = iterator.get_state()
    following = next(iterator)["x"]
    resumed = finetuning.features_lib.ArrayBatchIterator(arrays, batch_size=4, seed=3)
    resumed.set_state(json.loads(json.dumps(state)))
    assert np.array_equal(next(resumed)["x"], following)
    # Two processes split every global batch.
    halves = [finetuning.features_lib.ArrayBatchIterator(arrays, 4, 3, p, 2) for p in (0, 1)]
    fresh = finetuning.features_lib.ArrayBatchIterator(arrays, 4, 3)
    assert np.array_equal(np.concatenate([next(h)["x"] for h in halves]), next(fresh)["x"])


# ---- through the real trainer ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_uncased_checkpoint):
    return tiny_uncased_checkpoint


def _tsv_config(train_file, eval_file, init_from, **overrides):
    return one_epoch_config("finetune_tsv", "", init_from, batch_size=16, train_file=str(train_file),
                            eval_file=str(eval_file), max_seq_length=32, **overrides)


def test_vocab_must_match_the_checkpoint(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    vocab = _write(tmp_path / "vocab.txt", "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    train = _write(tmp_path / "t.tsv", "sentence\tlabel\na\t0\nb\t1\n")
    config = _tsv_config(train, train, path, vocab_file=str(vocab))
    with pytest.raises(ValueError, match="tokenizer vocab .* has 7 entries but the checkpoint's vocab_size is 30522"):
        tsv.from_config(config)


def test_string_label_tsv_trains_through_the_trainer(tiny_checkpoint, tmp_path):
    from bert_jax import train

    path, model_config = tiny_checkpoint
    rows = [("a fine , moving film", "pos"), ("dull and lifeless", "neg")] * 20
    text = "label\tsentence\n" + "".join(f"{label}\t{s}\n" for s, label in rows)  # columns in any order
    train_file = _write(tmp_path / "train.tsv", text)
    eval_file = _write(tmp_path / "dev.tsv", "label\tsentence\n" + "".join(f"{l}\t{s}\n" for s, l in rows[:6]))
    config = _tsv_config(train_file, eval_file, path)
    results = train.train_and_evaluate(config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["config"]["task"]["labels"] == "neg,pos"
    assert saved["config"]["model"]["hidden_size"] == model_config.hidden_size  # from the checkpoint
    assert saved["config"]["train"]["num_steps"] == 3  # ceil(1 epoch * 40 / 16)
    assert saved["config"]["optimizer"]["warmup_steps"] == 0  # 10% of 3 steps
    assert set(results["final_metrics"]) == {"accuracy", "f1"} and results["main_metric"] == "accuracy"
    predictions = (tmp_path / "run" / "predictions").read_text().splitlines()
    assert predictions[0] == "eval_set\tguid\tprediction\tlabel" and len(predictions) == 7
    assert {line.split("\t")[2] for line in predictions[1:]} <= {"neg", "pos"}


@pytest.mark.slow
def test_regression_tsv_trains_through_the_trainer(tiny_checkpoint, tmp_path):
    from bert_jax import train

    path, _ = tiny_checkpoint
    rows = [("a man plays a guitar", "a man is playing guitar", "4.6"), ("a cat sleeps", "stocks fell", "0.2"),
            ("two dogs run", "dogs are running", "3.9"), ("rain today", "a woman sings", "0.75")] * 4
    text = "sentence_a\tsentence_b\tlabel\n" + "".join("\t".join(r) + "\n" for r in rows)
    train_file = _write(tmp_path / "train.tsv", text)
    config = _tsv_config(train_file, train_file, path)
    results = train.train_and_evaluate(config, tmp_path / "run")
    assert results["main_metric"] == "pearson"
    assert set(results["final_metrics"]) == {"pearson", "spearman", "mse"}
    assert np.isfinite(results["final_metrics"]["mse"])
    assert json.loads((tmp_path / "run" / "results.json").read_text())["config"]["task"]["task_type"] == "regression"


def _tsv(path, rows):
    path.write_text("sentence\tlabel\n" + "".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")
    return str(path)


def test_dev_label_unseen_in_training_refused_before_step_1(tmp_path):
    """Found at build time, naming file and line, not after training at the final evaluation."""
    train = _tsv(tmp_path / "train.tsv", [("good", "pos"), ("bad", "neg")])
    dev = _tsv(tmp_path / "dev.tsv", [("fine", "pos"), ("meh", "neutral")])
    with pytest.raises(ValueError, match=r"dev.tsv:3: label 'neutral' is not one of the labels \['neg', 'pos'\]"):
        tsv.make_tsv_task(tokenizer=None, train_file=train, eval_file=dev, max_seq_length=16)
    regression_train = _tsv(tmp_path / "rtrain.tsv", [("a", "0.5"), ("b", "3.8")])
    with pytest.raises(ValueError, match=r"dev.tsv:2: label 'pos' is not a number"):
        tsv.make_tsv_task(tokenizer=None, train_file=regression_train, eval_file=dev, max_seq_length=16)


def test_control_character_in_label_and_binary_file_named(tmp_path):
    path = _tsv(tmp_path / "train.tsv", [("good", "pos"), ("bad", "n\x00eg")])
    with pytest.raises(ValueError, match=r"train.tsv:3: column 'label': label 'n\\x00eg' holds the control character U\+0000"):
        tsv.read_examples(path)
    binary = tmp_path / "binary.tsv"
    binary.write_bytes(b"sentence\tlabel\nok\t1\n\xff\xfe\x00garbage\t\x80\n")
    with pytest.raises(ValueError, match=r"binary.tsv:\d+: not UTF-8 text"):
        tsv.read_examples(binary)
