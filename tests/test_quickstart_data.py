"""The quickstart's built-in pretraining text: what it holds, and how the 35min budget joins it.

`data/quickstart/reviews_unlabeled.txt` must be the training split's review text and nothing
else: dev text in the pretraining corpus would leak the evaluation into the pretrained model.
"""

import pathlib

from experiments import quickstart

REPO = pathlib.Path(__file__).resolve().parents[1]
REVIEWS = REPO / "data/quickstart/reviews_unlabeled.txt"
DOCUMENT_SIZE = 8  # snippets per document (a blank line after every 8th)


def _sentences(tsv: pathlib.Path) -> list[str]:
    lines = tsv.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "sentence\tlabel", f"{tsv}: unexpected header {lines[0]!r}"
    return [line.split("\t")[0] for line in lines[1:]]


def test_reviews_are_the_training_split_text_in_order(shared_data):
    source = _sentences(shared_data / "sentiment/rotten_tomatoes/train.tsv")
    lines = REVIEWS.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", "the file ends with a newline"
    expected = []
    for i, sentence in enumerate(source):
        expected.append(sentence)
        if i % DOCUMENT_SIZE == DOCUMENT_SIZE - 1:
            expected.append("")
    assert lines[:-1] == expected


def test_reviews_hold_no_dev_text_beyond_the_sources_own_duplicates(shared_data):
    source_train = set(_sentences(shared_data / "sentiment/rotten_tomatoes/train.tsv"))
    source_dev = set(_sentences(shared_data / "sentiment/rotten_tomatoes/dev.tsv"))
    reviews = {line for line in REVIEWS.read_text(encoding="utf-8").splitlines() if line}
    quickstart_dev = set(_sentences(REPO / "data/quickstart/sentiment_dev.tsv"))
    assert quickstart_dev == source_dev
    # Pang & Lee's data has a snippet in both splits; anything more would be our leak.
    assert reviews & quickstart_dev == source_train & source_dev
    assert len(source_train & source_dev) <= 1


def test_reviews_cover_the_quickstart_training_labels_text():
    reviews = {line for line in REVIEWS.read_text(encoding="utf-8").splitlines() if line}
    train = _sentences(REPO / "data/quickstart/sentiment_train.tsv")
    assert len(train) == 4000 and set(train) <= reviews


def test_write_corpus_puts_a_document_break_between_files(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("First sentence.\nSecond sentence.\n", encoding="utf-8")
    b.write_text("Third sentence.\n", encoding="utf-8")
    out = quickstart.write_corpus((a, b), tmp_path / "corpus.txt")
    assert out.read_text(encoding="utf-8") == "First sentence.\nSecond sentence.\n\nThird sentence.\n"
    assert quickstart.write_corpus((a,), tmp_path / "single.txt") == a  # one file is used in place
