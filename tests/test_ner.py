"""NER: CoNLL reading, first-sub-token alignment, long-sentence splitting, TFDS conll2003."""

import numpy as np
import pytest

from bert_jax.tasks import features as features_lib
from bert_jax.tasks import ner


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    return features_lib.load_tokenizer(shared_data / "vocab" / "bert-base-uncased-vocab.txt", lowercase=True)


def _gold_predictions(task, batches):
    """What a perfect model would predict: the gold label at every labelled position."""
    return [{"label_ids": b["label_ids"]} for b in batches]


def test_reads_wnut16(shared_data):
    train = ner.read_conll(shared_data / "ner" / "wnut16" / "train.conll")
    dev = ner.read_conll(shared_data / "ner" / "wnut16" / "dev.conll")
    assert (len(train), len(dev)) == (1636, 291)  # as the data README counts them
    labels = ner.label_list(train)
    assert labels[0] == "O" and len(labels) == 21  # O + B/I for 10 types
    assert all(len(s.words) == len(s.tags) for s in train)


def test_first_sub_token_carries_the_label(tokenizer, tmp_path):
    path = tmp_path / "tiny.conll"
    # "unaffable" -> una ##ffa ##ble; "Soubirous" is several pieces too.
    path.write_text("Saint\tB-person\nBernadette\tI-person\nSoubirous\tI-person\nwas\tO\nunaffable\tO\n\n")
    sentences = ner.read_conll(path)
    labels = ner.label_list(sentences)
    features = ner.build_features(tokenizer, sentences, labels, max_seq_length=32, what="tiny")
    row = features.arrays
    _, word_ids = tokenizer.tokenize_words(sentences[0].words)
    first_positions = 1 + np.flatnonzero(np.r_[True, word_ids[1:] != word_ids[:-1]])
    assert np.array_equal(np.flatnonzero(row["label_weights"][0]), first_positions)
    assert [labels[i] for i in row["label_ids"][0][first_positions]] == list(sentences[0].tags)
    # Non-first sub-tokens have weight 0 and are not mapped to a word.
    continuation = 1 + np.flatnonzero(np.r_[False, word_ids[1:] == word_ids[:-1]])
    assert continuation.size > 0 and np.all(row["label_weights"][0][continuation] == 0)
    assert np.all(features.word_index[0][continuation] == -1)
    assert row["input_ids"][0][0] == 101 and row["input_ids"][0][len(word_ids) + 1] == 102


def test_long_sentences_split_at_word_boundaries_and_round_trip(tokenizer, shared_data):
    dev = ner.read_conll(shared_data / "ner" / "wnut16" / "dev.conll")
    train = ner.read_conll(shared_data / "ner" / "wnut16" / "train.conll")
    task = ner.NerTask(tokenizer=tokenizer, train_sentences=train, eval_sentences=dev, max_seq_length=16)
    features = task.eval_features
    assert features.sentence_index.size > len(dev)  # many tweets need several 16-token sequences
    batches = task.eval_batches(32)
    predictions = _gold_predictions(task, batches)
    result = task.evaluate(predictions, batches)
    # Every word is recovered, so gold predictions score perfectly (tags unseen in training aside).
    assert result["f1"] == pytest.approx(1.0)
    assert result["token_accuracy"] == pytest.approx(1.0)


def test_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("Paris\tB-LOC\nis\n")
    with pytest.raises(ValueError, match=r"bad.conll:2"):
        ner.read_conll(path)
    path.write_text("Paris\tLOC\n")
    with pytest.raises(ValueError, match=r"bad.conll:1: tag 'LOC'"):
        ner.read_conll(path)


def test_conll2003_space_separated_with_docstart(tmp_path):
    path = tmp_path / "eng.train"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\n\n")
    (sentence,) = ner.read_conll(path)
    assert sentence.words == ("EU", "rejects", "German") and sentence.tags == ("I-ORG", "O", "I-MISC")


def test_tfds_conll2003_end_to_end(tokenizer):
    tfds = pytest.importorskip("tensorflow_datasets")
    tf = pytest.importorskip("tensorflow")
    sentences = [
        (["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
        (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
        (["BRUSSELS", "1996-08-22"], ["B-LOC", "O"]),
    ]

    def as_dataset(self, split, **kwargs):
        names = self.info.features["ner"].feature.names
        rows = {
            "tokens": tf.ragged.constant([s[0] for s in sentences]),
            "pos": tf.ragged.constant([[0] * len(s[0]) for s in sentences], dtype=tf.int64),
            "chunks": tf.ragged.constant([[0] * len(s[0]) for s in sentences], dtype=tf.int64),
            "ner": tf.ragged.constant([[names.index(t) for t in s[1]] for s in sentences], dtype=tf.int64),
        }
        return tf.data.Dataset.from_tensor_slices(rows).map(lambda r: {k: v.to_tensor() if hasattr(v, "to_tensor") else v for k, v in r.items()})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        train = ner.read_tfds("train")
        dev = ner.read_tfds("dev")
    assert [s.words for s in train] == [tuple(s[0]) for s in sentences]
    assert [s.tags for s in dev] == [tuple(s[1]) for s in sentences]
    task = ner.NerTask(tokenizer=tokenizer, train_sentences=train, eval_sentences=dev, max_seq_length=16)
    batches = task.eval_batches(2)
    assert task.evaluate(_gold_predictions(task, batches), batches)["f1"] == 1.0
    batch = next(task.train_iterator(batch_size=2, seed=0))
    assert batch["input_ids"].shape == (2, 16) and batch["label_weights"].sum() > 0
