"""Pretraining instances: Google's recipe, measured on the shared corpus, and the files they go to.

Statistics are measured on ~30k instances from 1.4 MB of the shared corpus (dupe_factor 10) with
fixed seeds; every tolerance is at least 3 standard deviations of the measured quantity.
"""

import hashlib
import json
import random
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import pretraining_instances as pi
from data_pipelines.text_input import read_google_documents
from data_pipelines.record_files import read_pretraining_arrays
from data_pipelines.tfrecord_io import (PRETRAINING_FEATURES, TFRecordWriter, decode_example, encode_examples,
                                        iter_tfrecord)
from data_pipelines.tokenization import load_tokenizer

UNCASED = "vocab/bert-base-uncased-vocab.txt"
FILES = ("corpus/lee_news.txt", "corpus/botchan.txt", "corpus/convention_speeches_2012.txt")


@pytest.fixture(scope="module")
def tok(shared_data):
    return load_tokenizer(str(shared_data / UNCASED), lowercase=True)


@pytest.fixture(scope="module")
def corpus(shared_data, tok):
    docs = list(read_google_documents([str(shared_data / f) for f in FILES]))
    return pi.TokenizedCorpus.from_documents(docs, tok)


def make(corpus, tok, **overrides):
    config = pi.InstanceConfig(**{"dupe_factor": 10, **overrides})
    return pi.create_all_instances(corpus, tok, config)


@pytest.fixture(scope="module")
def instances(corpus, tok):
    return make(corpus, tok)


def unmasked(ins: pi.Instances) -> np.ndarray:
    ids = ins.input_ids.copy()
    rows, cols = np.nonzero(ins.masked_lm_weights > 0)
    ids[rows, ins.masked_lm_positions[rows, cols]] = ins.masked_lm_ids[rows, cols]
    return ids


def find(haystack: np.ndarray, needle: np.ndarray, start: int = 0) -> int:
    """First token index >= start where `needle` occurs contiguously in `haystack`, or -1."""
    h, n = haystack.astype(np.int32).tobytes(), needle.astype(np.int32).tobytes()
    at = h.find(n, 4 * start)
    while at != -1 and at % 4:
        at = h.find(n, at + 1)
    return at // 4 if at != -1 else -1


def contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    return find(haystack, needle) != -1


def doc_tokens(corpus, d):
    s = corpus.sentence_starts
    ds = corpus.document_starts
    return corpus.token_ids[s[ds[d]]:s[ds[d + 1]]]


# ----------------------------------------------------------------------------- structure
def test_rows_are_cls_a_sep_b_sep_from_the_right_documents(instances, corpus, tok):
    ids = unmasked(instances)
    L = ids.shape[1]
    rng = np.random.default_rng(0)
    for r in rng.choice(len(ids), 1500, replace=False):
        n = int(instances.input_mask[r].sum())
        row, seg = ids[r, :n], instances.segment_ids[r]
        assert (instances.input_mask[r, :n] == 1).all() and (ids[r, n:] == tok.pad_id).all()
        seps = np.flatnonzero(row == tok.sep_id)
        assert row[0] == tok.cls_id and len(seps) == 2 and seps[1] == n - 1
        a, b = row[1:seps[0]], row[seps[0] + 1:n - 1]
        assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) <= L - 3
        assert (seg[:seps[0] + 1] == 0).all() and (seg[seps[0] + 1:n] == 1).all() and (seg[n:] == 0).all()
        source = doc_tokens(corpus, instances.source_document[r])
        if instances.next_sentence_labels[r] == 0:
            # Actual next: A, then B later in the same document (truncation trims ends of each).
            a_at = find(source, a)
            assert a_at != -1 and find(source, b, a_at + len(a)) != -1
        else:
            assert contains(source, a)
            assert any(contains(doc_tokens(corpus, d), b) for d in range(corpus.num_documents)
                       if d != instances.source_document[r])


def test_truncation_counts_match_googles_loop():
    rng = random.Random(0)
    for _ in range(3000):
        la, lb, m = rng.randint(1, 300), rng.randint(1, 300), rng.randint(2, 200)
        a, b = list(range(la)), list(range(lb))
        while len(a) + len(b) > m:  # google-research/bert truncate_seq_pair, coin flips aside
            trunc = a if len(a) > len(b) else b
            (trunc.pop if rng.random() < 0.5 else (lambda: trunc.pop(0)))()
        assert pi._truncate_counts(la, lb, m) == (la - len(a), lb - len(b)), (la, lb, m)


# ----------------------------------------------------------------------------- statistics
def test_masked_fraction_and_80_10_10(instances, corpus, tok):
    predicted = instances.masked_lm_weights.sum()
    real = instances.input_mask.sum()
    non_special = real - 3 * len(instances)
    google_rate = predicted / real  # Google: round(len(tokens) * 0.15), [CLS]/[SEP] counted
    print(f"{len(instances)} instances; masked/all tokens {google_rate:.4%}; "
          f"masked/non-special tokens {predicted / non_special:.4%}")
    assert abs(google_rate - 0.15) < 0.005
    # round(128 * 0.15) = 19 < 20: the max_predictions cap never binds at length 128.
    assert instances.masked_lm_weights.sum(1).max() <= 19

    rows, cols = np.nonzero(instances.masked_lm_weights > 0)
    positions = instances.masked_lm_positions[rows, cols]
    shown = instances.input_ids[rows, positions]
    original = instances.masked_lm_ids[rows, cols]
    as_mask = np.mean(shown == tok.mask_id)
    kept = np.mean(shown == original)
    random_ = 1 - as_mask - kept
    print(f"of {len(rows)} predictions: [MASK] {as_mask:.4%}, kept {kept:.4%}, random {random_:.4%}")
    assert abs(as_mask - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(random_ - 0.1) < 0.01
    # [CLS] and [SEP] are never predicted.
    assert not np.isin(original, [tok.cls_id, tok.sep_id, tok.pad_id]).any()
    assert (instances.input_ids[:, 0] == tok.cls_id).all()


def test_masked_fraction_of_non_special_tokens(corpus, tok):
    """With count_specials=False the count is taken over non-special tokens: 15% of exactly those."""
    ins = make(corpus, tok, count_specials=False, dupe_factor=4)
    rate = ins.masked_lm_weights.sum() / (ins.input_mask.sum() - 3 * len(ins))
    print(f"masked/non-special tokens (count_specials=False): {rate:.4%} over {len(ins)} instances")
    assert abs(rate - 0.15) < 0.005


def test_nsp_random_next_rate(instances):
    coin = ~instances.forced_random_next
    rate = instances.next_sentence_labels[coin].mean()
    overall = instances.next_sentence_labels.mean()
    print(f"random next: {rate:.4%} of {coin.sum()} two-or-more-sentence chunks; {overall:.4%} overall "
          f"({instances.forced_random_next.mean():.2%} single-sentence chunks are always random, as in Google)")
    assert abs(rate - 0.5) < 0.01
    assert (instances.next_sentence_labels[instances.forced_random_next] == 1).all()


def test_short_seq_prob_shortens_about_a_tenth(corpus, tok, instances):
    L = instances.input_ids.shape[1]
    lengths = instances.input_mask.sum(1)
    flat = make(corpus, tok, short_seq_prob=0.0)
    flat_lengths = flat.input_mask.sum(1)
    short = np.mean(lengths < L // 2)
    short_flat = np.mean(flat_lengths < L // 2)
    print(f"rows under {L // 2} tokens: {short:.2%} with short_seq_prob=0.1, {short_flat:.2%} with 0; "
          f"rows from short-target documents: {instances.short_target.mean():.2%}, mean length "
          f"{lengths[instances.short_target].mean():.1f} vs {lengths[~instances.short_target].mean():.1f}")
    assert not flat.short_target.any()
    assert short - short_flat > 0.05
    # Targets uniform in [2, 125] average ~64 tokens (chunks overshoot a little); full rows ~120.
    assert lengths[instances.short_target].mean() < 0.7 * lengths[~instances.short_target].mean()
    # Google draws the target once per document, and short-target documents yield more (shorter)
    # rows, so somewhat more than 10% of rows come from them.
    assert 0.08 < instances.short_target.mean() < 0.3


def test_whole_word_masking_masks_whole_words(corpus, tok):
    ins = make(corpus, tok, whole_word_masking=True, dupe_factor=2)
    continuation = tok.masking_vocab().is_continuation
    ids = unmasked(ins)
    checked = 0
    for r in range(len(ins)):
        n = int(ins.input_mask[r].sum())
        masked = np.zeros(n, bool)
        k = int(ins.masked_lm_weights[r].sum())
        masked[ins.masked_lm_positions[r, :k]] = True
        # A new word at every non-"##" token, and after [CLS]/[SEP] (truncation can cut a word so
        # that a row segment starts with "##x"; that piece is then a word of its own).
        after_special = np.concatenate([[True], np.isin(ids[r, :n - 1], [tok.cls_id, tok.sep_id])])
        word = np.cumsum(~continuation[ids[r, :n]] | after_special)
        for w in np.unique(word[masked]):
            span = word == w
            assert masked[span].all(), (r, tok.convert_ids_to_tokens(ids[r, :n][span]))
            shown = ins.input_ids[r, :n][span]
            # One 80/10/10 decision per word (google-research/bert#910): all [MASK] or none.
            assert (shown == tok.mask_id).all() or not (shown == tok.mask_id).any()
            checked += span.sum() > 1
    assert checked > 1000  # multi-piece words were actually exercised
    rate = ins.masked_lm_weights.sum() / ins.input_mask.sum()
    print(f"whole-word masking: {rate:.4%} of tokens predicted, {checked} multi-piece words checked")


def test_dupe_passes_mask_differently(tok):
    # Two-sentence documents: every actual-next instance is the whole document, identical across passes.
    docs = [[[1000 + d, 2000 + d, 3000 + d], [4000 + d, 5000 + d, 6000 + d, 7000 + d]] for d in range(400)]
    corpus = pi.TokenizedCorpus.from_id_documents(docs)
    ins = pi.create_all_instances(corpus, tok, pi.InstanceConfig(dupe_factor=2, short_seq_prob=0.0,
                                                                 masked_lm_prob=0.3))
    actual = ins.next_sentence_labels == 0
    by_doc = {}
    for r in np.flatnonzero(actual):
        by_doc.setdefault(int(ins.source_document[r]), []).append(r)
    pairs = [v for v in by_doc.values() if len(v) == 2]
    assert len(pairs) > 50
    same_tokens = [np.array_equal(unmasked(ins.take(np.array(p)))[0], unmasked(ins.take(np.array(p)))[1]) for p in pairs]
    assert all(same_tokens)
    same_mask = [np.array_equal(ins.masked_lm_positions[p[0]], ins.masked_lm_positions[p[1]]) for p in pairs]
    assert np.mean(same_mask) < 0.5


# ----------------------------------------------------------------------------- NSP-off modes
def test_full_sentences_and_doc_sentences(corpus, tok):
    full = make(corpus, tok, mode="full_sentences", dupe_factor=1, short_seq_prob=0.0)
    doc = make(corpus, tok, mode="doc_sentences", dupe_factor=1, short_seq_prob=0.0)
    for ins in (full, doc):
        assert (ins.segment_ids == 0).all() and (ins.next_sentence_labels == 0).all()
        n = ins.input_mask.sum(1)
        assert (ins.input_ids[:, 0] == tok.cls_id).all()
        ids = unmasked(ins)
        assert (ids[np.arange(len(ins)), n - 1] == tok.sep_id).all()
    seps_full = (unmasked(full) == tok.sep_id).sum(1)
    seps_doc = (unmasked(doc) == tok.sep_id).sum(1)
    assert (seps_doc == 1).all()  # never crosses a document
    assert (seps_full > 1).any()  # crosses, with a [SEP] between documents
    # Packing across documents fills rows; stopping at document ends leaves more padding.
    fill_full, fill_doc = full.input_mask.mean(), doc.input_mask.mean()
    print(f"fill: full_sentences {fill_full:.3f}, doc_sentences {fill_doc:.3f}; rows {len(full)} vs {len(doc)}")
    assert fill_full > 0.85 and fill_full > fill_doc
    # Every token of the corpus appears once per pass (whole sentences, nothing dropped) unless a
    # lone sentence was longer than a row.
    tokens_full = full.input_mask.sum() - len(full) - seps_full.sum()
    assert tokens_full <= corpus.num_tokens and tokens_full > 0.98 * corpus.num_tokens


def test_no_masking_leaves_rows_for_dynamic_masking(corpus, tok):
    ins = make(corpus, tok, static_masking=False, dupe_factor=1)
    assert (ins.masked_lm_weights == 0).all() and (ins.masked_lm_positions == 0).all()
    assert not (ins.input_ids == tok.mask_id).any()


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="mode"):
        pi.InstanceConfig(mode="nsp-off").validate()
    with pytest.raises(ValueError, match="short_seq_prob"):
        pi.InstanceConfig(short_seq_prob=1.5).validate()


# ----------------------------------------------------------------------------- files
def test_cli_output_is_deterministic_and_readable_by_tensorflow(shared_data, tmp_path):
    common = ["--input_file", f"{shared_data}/corpus/lee_news.txt", "--output_format", "tfrecord",
              "--vocab_file", str(shared_data / UNCASED), "--dupe_factor", "3", "--docs_per_partition", "200",
              "--max_seq_length", "64", "--max_predictions_per_seq", "10"]
    # In a subprocess: its workers fork, and forking the pytest process (JAX threads running) can deadlock.
    def run_cli(out_dir, workers):
        subprocess.run([sys.executable, "-m", "data_pipelines.create_pretraining_data", *common,
                        "--output_dir", str(out_dir), "--num_workers", str(workers)], check=True, capture_output=True,
                       timeout=600)
        return json.loads((out_dir / "metadata.json").read_text())["counts"]

    one = run_cli(tmp_path / "one", 1)
    two = run_cli(tmp_path / "two", 2)
    paths = sorted((tmp_path / "one").glob("*.tfrecord"))
    # 348 documents, 200 per partition -> 2 partitions x 3 dupe passes.
    assert len(paths) == 6 and one["instances"] == two["instances"] > 1000
    for p in paths:
        assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256((tmp_path / "two" / p.name).read_bytes()).digest()
    ours = read_pretraining_arrays(str(tmp_path / "one" / "*.tfrecord"))
    assert len(ours["input_ids"]) == one["instances"] and ours["input_ids"].shape[1] == 64

    tf = pytest.importorskip("tensorflow")
    # Google's run_pretraining.py input_fn feature spec.
    spec = {"input_ids": tf.io.FixedLenFeature([64], tf.int64), "input_mask": tf.io.FixedLenFeature([64], tf.int64),
            "segment_ids": tf.io.FixedLenFeature([64], tf.int64),
            "masked_lm_positions": tf.io.FixedLenFeature([10], tf.int64),
            "masked_lm_ids": tf.io.FixedLenFeature([10], tf.int64),
            "masked_lm_weights": tf.io.FixedLenFeature([10], tf.float32),
            "next_sentence_labels": tf.io.FixedLenFeature([1], tf.int64)}
    parsed = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset([str(p) for p in paths])]
    for name in PRETRAINING_FEATURES:
        np.testing.assert_array_equal(np.stack([p[name].numpy() for p in parsed]), ours[name])

    # A file written the way Google's script writes (tf.train.Example + TFRecordWriter) reads back here.
    google_file = str(tmp_path / "google.tfrecord")
    with tf.io.TFRecordWriter(google_file) as writer:
        for i in range(3):
            features = {name: (tf.train.Feature(float_list=tf.train.FloatList(value=ours[name][i].tolist()))
                               if name == "masked_lm_weights" else
                               tf.train.Feature(int64_list=tf.train.Int64List(value=ours[name][i].tolist())))
                        for name in PRETRAINING_FEATURES}
            writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    back = read_pretraining_arrays(google_file)
    for name in PRETRAINING_FEATURES:
        np.testing.assert_array_equal(back[name], ours[name][:3])


def test_example_encoding_matches_tensorflows_and_detects_corruption(tmp_path):
    """Our vectorised Example encoder against TensorFlow's own protobuf serialisation, byte for byte."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    features = {"input_ids": rng.integers(0, 2 ** 40, (50, 16)), "masked_lm_weights": rng.random((50, 4)).astype(np.float32),
                "next_sentence_labels": rng.integers(-3, 2, (50, 1)), "empty": np.zeros((50, 0), np.int64)}
    batch = encode_examples(features)
    for i in range(50):
        feature = {name: (tf.train.Feature(float_list=tf.train.FloatList(value=v[i].tolist())) if v.dtype == np.float32
                          else tf.train.Feature(int64_list=tf.train.Int64List(value=v[i].tolist())))
                   for name, v in features.items()}
        reference = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)
        assert batch[i] == reference, i
    path = tmp_path / "x.tfrecord"
    with TFRecordWriter(path) as w:
        for b in batch:
            w.write(b)
    # TensorFlow reads our framing; we read it back too.
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == batch
    back = [decode_example(r) for r in iter_tfrecord(str(path))]
    np.testing.assert_array_equal(np.stack([b["input_ids"] for b in back]), features["input_ids"])
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        list(iter_tfrecord(str(path)))
    path.write_bytes(bytes(data[:30]))
    with pytest.raises(ValueError, match="cut short|corrupt"):
        list(iter_tfrecord(str(path)))
