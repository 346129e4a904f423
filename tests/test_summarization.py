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


def _f1_by_hand(overlap, candidate, reference):
    p, r = overlap / candidate, overlap / reference
    return 2 * p * r / (p + r)


def test_rouge_figures_computed_by_hand():
    """ROUGE-N F1 = F1 of clipped n-gram overlap; ROUGE-L = F1 of the longest common subsequence;
    ROUGE-Lsum = the union LCS over reference lines. Words chosen so that lower-casing and the
    Porter stemmer change nothing; counted by hand, not by rouge-score."""
    reference = "the cat sat on the mat\nthe dog ran"  # 9 tokens
    predicted = "the cat lay on the mat\nthe cat ran fast"  # 10 tokens: precision != recall
    ours = summ.rouge_scores([predicted], [reference])
    # unigrams, clipped overlap: the 3 + cat 1 + on 1 + mat 1 + ran 1 = 7.
    assert ours["rouge1"] == pytest.approx(100 * _f1_by_hand(7, 10, 9))
    # bigrams (rouge1/2/L read the summary as one text, across the line break):
    # ref: the-cat cat-sat sat-on on-the the-mat mat-the the-dog dog-ran (8)
    # pred: the-cat cat-lay lay-on on-the the-mat mat-the the-cat cat-ran ran-fast (9);
    # clipped overlap: the-cat 1, on-the, the-mat, mat-the = 4.
    assert ours["rouge2"] == pytest.approx(100 * _f1_by_hand(4, 9, 8))
    # LCS of the whole texts: the cat on the mat the ran = 7 tokens.
    assert ours["rougeL"] == pytest.approx(100 * _f1_by_hand(7, 10, 9))
    # Lsum: reference line 1 against each prediction line, union of the LCS hits: the cat on
    # the mat = 5; line 2 "the dog ran": {the} from line 1, {the, ran} from line 2 -> 2; 7 in all.
    assert ours["rougeLsum"] == pytest.approx(100 * _f1_by_hand(7, 10, 9))
    # Mean over documents, not a pooled count.
    two = summ.rouge_scores([predicted, "nothing matches"], [reference, "at all here"])
    assert two["rouge1"] == pytest.approx(ours["rouge1"] / 2)


def _news_documents(shared_data, count, lead=2, max_sentences=8, seed=0):
    """Real news articles (the shared corpus's lee_news.txt, one sentence per line), each with its
    first `lead` sentences as the reference summary, the sentences shuffled (so that picking the
    summary means reading the sentences, not their positions)."""
    rng = np.random.default_rng(seed)
    text = (shared_data / "corpus" / "lee_news.txt").read_text(encoding="utf-8")
    documents = []
    for i, block in enumerate(text.split("\n\n")):
        sentences = [s for s in block.splitlines() if s.strip()]
        if not lead + 2 <= len(sentences) <= max_sentences:
            continue
        order = rng.permutation(len(sentences))
        documents.append(summ.Document(f"lee_news:{i}", tuple(sentences[j] for j in order), "\n".join(sentences[:lead])))
        if len(documents) == count:
            break
    assert len(documents) == count
    return documents


def _score_batches(task, scores_of_document, batch_size=4):
    batches = task.eval_batches(batch_size)
    predictions = [{"sentence_scores": np.stack([scores_of_document(int(d), b["sentence_mask"].shape[1])
                                                 for d in b["document_index"]]).astype(np.float32)} for b in batches]
    return predictions, batches


def test_reported_rouge_equals_rouge_score_on_the_written_summaries(tokenizer, shared_data, tmp_path):
    """Random sentence scores on real news articles: the task's reported ROUGE must equal the
    mean of rouge-score's F1, computed here from the written prediction file against the
    references built here."""
    documents = _news_documents(shared_data, 12)
    task = summ.SummarizationTask(tokenizer=tokenizer, train_documents=documents, eval_documents=documents,
                                  max_seq_length=256, summary_size=2)
    rng = np.random.default_rng(1)
    predictions, batches = _score_batches(task, lambda d, n: rng.normal(size=n))
    reported = task.evaluate(predictions, batches)
    task.write_predictions(predictions, batches, tmp_path / "predictions")
    rows = [json.loads(line) for line in (tmp_path / "predictions").read_text().splitlines()]
    assert [r["guid"] for r in rows] == [d.guid for d in documents]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    per_document = [scorer.score(d.summary, "\n".join(r["summary"])) for d, r in zip(documents, rows)]
    for r, d in zip(rows, documents):
        assert r["summary"] == [d.sentences[i] for i in r["selected"]] and len(r["selected"]) == 2
    expected = {name: 100 * np.mean([s[name].fmeasure for s in per_document])
                for name in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    assert reported == pytest.approx(expected)
    assert 10 < expected["rouge2"] < 90  # imperfect: some right sentences, some wrong


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
