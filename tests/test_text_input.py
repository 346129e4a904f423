"""Reading pretraining text: Google's format, raw paragraphs, TFDS; damaged input is counted, not fatal."""

import logging

import numpy as np
import pytest

from data_pipelines import pretraining_instances as pi
from data_pipelines.text_input import (MAX_LINE_CHARS, InputStats, read_google_documents, read_paragraph_documents,
                                       read_tfds_documents, split_sentences)
from data_pipelines.tokenization import load_tokenizer


def test_shared_corpus_counts_match_its_stats_file(shared_data):
    rows = [r.split("\t") for r in (shared_data / "corpus/stats.tsv").read_text().split("\n")[1:] if r]
    expected = {name: (int(d), int(s)) for name, d, s, *_ in rows}
    for name in ("janeaustenr", "botchan", "lee_news"):
        stats = InputStats()
        docs = list(read_google_documents(str(shared_data / f"corpus/{name}.txt"), stats=stats))
        assert (len(docs), sum(map(len, docs))) == expected[name]
        assert stats.invalid_utf8_lines == stats.long_lines_split == stats.empty_documents_skipped == 0


def test_invalid_utf8_is_replaced_and_counted(tmp_path, caplog):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"A good sentence.\nBad \xff\xfe bytes \xc3( here.\nLast of doc one.\n\nDoc two \xe2\x82.\n")
    stats = InputStats()
    with caplog.at_level(logging.WARNING):
        docs = list(read_google_documents(str(path), stats=stats))
    assert stats.invalid_utf8_lines == 2
    assert docs == [["A good sentence.", "Bad \ufffd\ufffd bytes \ufffd( here.", "Last of doc one."], ["Doc two \ufffd."]]
    assert "2 line(s) held invalid UTF-8" in caplog.text
    # The replacement character disappears in tokenisation (Google's _clean_text drops U+FFFD).


def test_empty_file_is_a_clear_error_alone_and_a_counted_warning_among_others(tmp_path, caplog):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.txt"
    blank.write_bytes(b"\n  \n\t\n")
    with pytest.raises(ValueError, match="no text in the input file.*empty.txt"):
        list(read_google_documents(str(empty)))
    with pytest.raises(ValueError, match="blank.txt"):
        list(read_google_documents(str(blank)))
    good = tmp_path / "good.txt"
    good.write_text("One.\nTwo.\n\n\n\nThree.\n", encoding="utf-8")
    stats = InputStats()
    with caplog.at_level(logging.WARNING):
        docs = list(read_google_documents([str(empty), str(good), str(blank)], stats=stats))
    assert docs == [["One.", "Two."], ["Three."]]
    assert stats.empty_files == [str(empty), str(blank)]
    assert stats.empty_documents_skipped == 2  # the two extra blank lines between the documents
    assert "2 empty file(s) skipped" in caplog.text and "skipped 2 empty document(s)" in caplog.text
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        list(read_google_documents(str(tmp_path / "nothing-here*.txt")))


def test_a_one_megabyte_line_is_split_counted_and_tokenised(tmp_path, shared_data, caplog):
    words = (shared_data / "corpus/botchan.txt").read_text(encoding="utf-8").split()
    huge = " ".join(words * (1_000_000 // len(" ".join(words)) + 1))[:1_000_000]
    path = tmp_path / "huge.txt"
    path.write_text("Short first sentence.\n" + huge + "\nShort last sentence.\n\nSecond document here.\n",
                    encoding="utf-8")
    stats = InputStats()
    with caplog.at_level(logging.WARNING):
        docs = list(read_google_documents(str(path), stats=stats))
    assert stats.long_lines_split == 1 and "1 line(s) longer than the line limit" in caplog.text
    pieces = docs[0][1:-1]
    assert all(len(p) <= MAX_LINE_CHARS for p in pieces) and len(pieces) >= 1_000_000 // MAX_LINE_CHARS
    assert " ".join(pieces) == huge.strip()  # cut at spaces only, nothing lost
    tok = load_tokenizer(str(shared_data / "vocab/bert-base-uncased-vocab.txt"))
    corpus = pi.TokenizedCorpus.from_documents(docs, tok)
    ins = pi.create_all_instances(corpus, tok, pi.InstanceConfig(dupe_factor=1))
    assert len(ins) > 0 and ins.input_mask.sum(1).max() <= 128


def test_sentence_splitter_and_paragraph_documents(tmp_path):
    text = ("Mr. Smith went to Washington. He met Dr. Jones at 3 p.m. yesterday! Did it cost $3.50? "
            "Yes, e.g. the U.S. Army paid.")
    assert split_sentences(text) == ["Mr. Smith went to Washington.", "He met Dr. Jones at 3 p.m. yesterday!",
                                     "Did it cost $3.50?", "Yes, e.g. the U.S. Army paid."]
    assert split_sentences("   \n ") == []
    path = tmp_path / "raw.txt"
    path.write_text("First paragraph. It has two sentences.\nSecond paragraph.\n\nAnother document.\n", encoding="utf-8")
    docs = list(read_paragraph_documents(str(path)))
    assert docs == [["First paragraph.", "It has two sentences.", "Second paragraph."], ["Another document."]]


def test_tfds_text_dataset_by_name():
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    articles = [
        "Anarchism is a political philosophy. It is sceptical of authority.\n\nHistory section here.",
        "",  # an empty article: skipped and counted
        "Albedo is the fraction of sunlight that is diffusely reflected by a body.",
    ]

    def as_dataset(*args, **kwargs):
        texts = [a.encode("utf-8") for a in articles] + [b"Broken \xff byte. Second sentence."]
        return tf.data.Dataset.from_tensor_slices({"text": texts, "title": [b"t"] * len(texts)})

    stats = InputStats()
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        docs = list(read_tfds_documents("wikipedia/20230601.en", split="train", stats=stats))
        with pytest.raises(ValueError, match="no feature 'body'"):
            list(read_tfds_documents("wikipedia/20230601.en", text_feature="body"))
    assert docs == [["Anarchism is a political philosophy.", "It is sceptical of authority.", "History section here."],
                    ["Albedo is the fraction of sunlight that is diffusely reflected by a body."],
                    ["Broken \ufffd byte.", "Second sentence."]]
    assert stats.empty_documents_skipped == 1 and stats.invalid_utf8_lines == 1


def test_each_invalid_utf8_warning_names_its_own_file(tmp_path, caplog):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("Fine text.\n")
    bad.write_bytes(b"Bad \xff here.\nFine.\n")
    stats = InputStats()
    with caplog.at_level(logging.WARNING):
        list(read_google_documents(f"{good},{bad}", stats=stats))
    assert stats.invalid_utf8_files == [[str(bad), 1]]
    assert f"{bad}: 1 line(s) held invalid UTF-8" in caplog.text and f"{good}:" not in caplog.text


def test_utf16_and_binary_files_refused_before_reading(tmp_path):
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("A sentence in UTF-16.\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"utf16.txt is UTF-16-LE text \(byte-order mark FF FE\); convert it to UTF-8"):
        list(read_google_documents(str(utf16)))
    binary = tmp_path / "garbage.bin"
    binary.write_bytes(np.random.default_rng(0).bytes(200_000))
    with pytest.raises(ValueError, match=r"garbage.bin: \d+ of the \d+ lines in its first 200,000 bytes are not UTF-8"):
        list(read_google_documents(str(binary)))
    # A few damaged lines among text are repaired, not refused.
    mostly_text = tmp_path / "mostly.txt"
    mostly_text.write_bytes(b"Good line.\n" * 10 + b"Bad \xff.\n")
    assert len(list(read_google_documents(str(mostly_text)))) == 1
