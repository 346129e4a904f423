"""BertSum-style extractive summarisation: oracle, features, selection, ROUGE, JSONL and TFDS inputs."""

import json

import numpy as np
import pytest
from rouge_score import rouge_scorer

from bert_jax.tasks import features as features_lib
from bert_jax.tasks import summarization as summ

DOCUMENT = summ.Document(
    "doc",
    (
        "The city council met on Tuesday to discuss the new budget.",
        "Residents complained about potholes on Main Street.",
        "The mayor promised to repair every road before winter.",
        "Local schools will receive additional funding next year.",
        "The weather was pleasant throughout the meeting.",
    ),
    "The mayor promised to repair every road before winter.\nSchools will receive additional funding next year.",
)


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    return features_lib.load_tokenizer(shared_data / "vocab" / "bert-base-uncased-vocab.txt", lowercase=True)


def test_greedy_oracle_finds_the_summary_sentences():
    assert summ.greedy_oracle(DOCUMENT.sentences, DOCUMENT.summary, 3) == [2, 3]


def test_greedy_oracle_stops_when_no_sentence_helps():
    assert summ.greedy_oracle(["alpha beta gamma.", "delta epsilon."], "alpha beta gamma.", 3) == [0]


def test_rouge_matches_rouge_score_package():
    predicted = ["The mayor promised to repair roads.\nSchools get money."]
    reference = [DOCUMENT.summary]
    ours = summ.rouge_scores(predicted, reference)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = scorer.score(reference[0], predicted[0])
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert ours[name] == pytest.approx(100 * expected[name].fmeasure)


def test_features_put_cls_before_each_sentence_with_interval_segments(tokenizer):
    features = summ.build_features(tokenizer, [DOCUMENT], max_seq_length=128, oracle_size=3, what="test")
    a = features.arrays
    positions = a["cls_positions"][0][a["sentence_mask"][0] > 0]
    assert len(positions) == 5
    assert np.all(a["input_ids"][0][positions] == tokenizer.cls_id)
    # Interval segments: sentence k has token type k % 2 from its [CLS] to its [SEP].
    assert list(a["token_type_ids"][0][positions]) == [0, 1, 0, 1, 0]
    assert np.array_equal(np.flatnonzero(a["labels"][0]), [2, 3])


def test_sentences_past_the_length_limit_are_counted_and_unselectable(tokenizer, caplog):
    with caplog.at_level("INFO"):
        features = summ.build_features(tokenizer, [DOCUMENT], max_seq_length=40, oracle_size=3, what="short")
    kept = int(features.num_sentences_kept[0])
    assert 1 <= kept < 5
    assert f"dropping {5 - kept} sentences" in caplog.text
    assert features.arrays["input_ids"].shape == (1, 40)


def test_selection_with_oracle_scores_and_trigram_blocking(tokenizer):
    task = summ.SummarizationTask(tokenizer=tokenizer, train_documents=[DOCUMENT], eval_documents=[DOCUMENT], max_seq_length=128)
    batches = task.eval_batches(4)
    # Scores that rank the oracle sentences first give back the oracle summary.
    scores = [{"sentence_scores": b["labels"] * 10 + b["sentence_mask"]} for b in batches]
    assert task.summaries(scores, batches) == [[0, 2, 3]]  # top 3 (2, 3, then the first tie), in document order
    result = task.evaluate(scores, batches)
    assert result["rouge1"] > 60 and set(result) == set(summ.ROUGE_TYPES)
    # Trigram blocking skips a sentence repeating a trigram of a chosen one.
    sentences = ["the cat sat on the mat", "the cat sat quietly", "dogs run"]
    assert summ.select_sentences(np.array([3.0, 2.0, 1.0]), sentences, 2, block_trigrams=True) == [0, 2]
    assert summ.select_sentences(np.array([3.0, 2.0, 1.0]), sentences, 2, block_trigrams=False) == [0, 1]


def test_split_sentences_keeps_abbreviations():
    assert summ.split_sentences("Mr. Smith visited the U.S. Capitol. He left! Then 3 dogs ran.") == [
        "Mr. Smith visited the U.S. Capitol.",
        "He left!",
        "Then 3 dogs ran.",
    ]


def test_jsonl_reader_and_errors(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"sentences": list(DOCUMENT.sentences), "summary": "One. Two."}) + "\n")
    (document,) = summ.read_jsonl(path)
    assert document.sentences == DOCUMENT.sentences and document.summary == "One.\nTwo."
    path.write_text(json.dumps({"sentences": "not a list", "summary": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"docs.jsonl:1: 'sentences'"):
        summ.read_jsonl(path)


def test_tfds_cnn_dailymail_end_to_end(tokenizer):
    tfds = pytest.importorskip("tensorflow_datasets")
    tf = pytest.importorskip("tensorflow")
    article = " ".join(DOCUMENT.sentences)
    highlights = DOCUMENT.summary

    def as_dataset(self, split, **kwargs):
        return tf.data.Dataset.from_tensor_slices(
            {"article": [article, article], "highlights": [highlights, highlights], "id": ["a", "b"]}
        )

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        documents = summ.read_tfds("validation")
    assert len(documents) == 2 and documents[0].sentences == DOCUMENT.sentences
    task = summ.SummarizationTask(tokenizer=tokenizer, train_documents=documents, eval_documents=documents, max_seq_length=128)
    batch = next(task.train_iterator(batch_size=2, seed=0))
    assert batch["cls_positions"].shape == (2, 5) and batch["labels"].sum() == 4
