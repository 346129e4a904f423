"""NER: CoNLL reading, first-sub-token alignment, long-sentence splitting, TFDS conll2003."""

import logging

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


def _parse_conll(path):
    """(words, tags) per sentence, read here: `token<TAB>tag` lines, blank lines between."""
    sentences, words, tags = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        if not line.strip():
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        word, tag = line.split("\t")
        words.append(word)
        tags.append(tag)
    return sentences


def test_imperfect_predictions_on_split_tweets_are_scored_as_seqeval_scores_them(tokenizer, shared_data, tmp_path):
    """WNUT-16 dev at max_seq_length 16 (most tweets cut into several sequences). Every word is
    given a predicted tag (gold 90% of the time, a random tag otherwise) on its first sub-token;
    every other position holds noise the task must ignore. The task's entity F1, and seqeval's on
    the written prediction file, must equal seqeval's on the tags given here."""
    import seqeval.metrics

    root = shared_data / "ner" / "wnut16"
    gold = _parse_conll(root / "dev.conll")
    task = ner.NerTask(tokenizer=tokenizer, train_sentences=ner.read_conll(root / "train.conll"),
                       eval_sentences=ner.read_conll(root / "dev.conll"), max_seq_length=16)
    features = task.eval_features
    arrays = features.arrays
    assert features.sentence_index.size > 2 * len(gold)
    rng = np.random.default_rng(0)
    wanted = [[t if rng.random() < 0.9 else str(rng.choice(task.labels)) for t in tags] for _, tags in gold]
    label_ids = rng.integers(0, task.num_labels, size=arrays["input_ids"].shape).astype(np.int32)
    # word_index must name, for each word, the position of its first sub-token (checked against
    # the tokenizer here), once over all of a sentence's sequences.
    seen = [set() for _ in gold]
    for row in range(arrays["input_ids"].shape[0]):
        s = int(features.sentence_index[row])
        token_ids, word_ids = tokenizer.tokenize_words(gold[s][0])
        first = {int(w): int(t) for t, w in reversed(list(zip(token_ids, word_ids)))}
        positions = np.flatnonzero(features.word_index[row] >= 0)
        words = features.word_index[row][positions]
        assert np.all(np.diff(words) > 0)
        for position, w in zip(positions, words):
            assert arrays["input_ids"][row, position] == first[int(w)]
            assert int(w) not in seen[s]
            seen[s].add(int(w))
            label_ids[row, position] = task.labels.index(wanted[s][w])
    for s, (words, _) in enumerate(gold):
        no_piece = set(range(len(words))) - seen[s]
        for w in no_piece:  # a word with no sub-token is predicted O
            wanted[s][w] = "O"
    batches = task.eval_batches(32)
    predictions = [{"label_ids": label_ids[b["sequence_index"]]} for b in batches]
    reported = task.evaluate(predictions, batches)
    gold_tags = [tags for _, tags in gold]
    expected = {"f1": seqeval.metrics.f1_score(gold_tags, wanted), "precision": seqeval.metrics.precision_score(gold_tags, wanted),
                "recall": seqeval.metrics.recall_score(gold_tags, wanted)}
    assert {k: reported[k] for k in expected} == pytest.approx(expected)
    assert 0.2 < expected["f1"] < 0.9
    task.write_predictions(predictions, batches, tmp_path / "predictions")
    written = [line.split("\t") for line in (tmp_path / "predictions").read_text(encoding="utf-8").splitlines()]
    sentences, current = [], []
    for fields in written + [[""]]:
        if fields == [""]:
            if current:
                sentences.append(current)
            current = []
        else:
            current.append(fields)
    assert [[w for w, _, _ in s] for s in sentences] == [words for words, _ in gold]
    assert [[g for _, g, _ in s] for s in sentences] == gold_tags
    from_file = [[p for _, _, p in s] for s in sentences]
    assert seqeval.metrics.f1_score(gold_tags, from_file) == pytest.approx(reported["f1"])


def test_control_character_in_tag_and_binary_file_named(tmp_path):
    path = tmp_path / "x.conll"
    path.write_text("EU\tB-ORG\nrejects\tB-PE\x00R\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"x.conll:2: tag: label 'B-PE\\x00R' holds the control character U\+0000"):
        ner.read_conll(path)
    path.write_bytes(b"EU\tB-ORG\n\xff\xfe\tO\n")
    with pytest.raises(ValueError, match=r"x.conll:\d+: not UTF-8 text"):
        ner.read_conll(path)


def test_eval_tags_unseen_in_training_warned_when_the_task_is_built(caplog):
    train = [ner.TaggedSentence("train:1", ("EU", "rejects"), ("B-ORG", "O"))]
    dev = [ner.TaggedSentence("dev.conll:4", ("Paris",), ("B-LOC",))]
    with caplog.at_level(logging.WARNING, "bert_jax.tasks.ner"):
        ner.NerTask(tokenizer=None, train_sentences=train, eval_sentences=dev, max_seq_length=8)
    assert "1 tags unseen in training (['B-LOC']), e.g. 'B-LOC' in sentence dev.conll:4" in caplog.text
