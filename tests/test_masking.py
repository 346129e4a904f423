"""Masking statistics measured on real sentences of the shared corpus, tokenised with the
`tokenizers` library's WordPiece (not our tokenizer, so this test stands on its own)."""

import numpy as np
import pytest

from data_pipelines import input_pipeline
from data_pipelines.masking import MaskingVocab, example_keys, mask_batch, num_to_predict

CLS, SEP, PAD, MASK = 101, 102, 0, 103
LENGTH = 128


@pytest.fixture(scope="module")
def vocab_path(shared_data):
    return shared_data / "vocab" / "bert-base-uncased-vocab.txt"


@pytest.fixture(scope="module")
def vocab(vocab_path):
    return MaskingVocab.from_vocab_file(vocab_path)


@pytest.fixture(scope="module")
def corpus_rows(shared_data, vocab_path):
    """[rows, 128] `[CLS] A [SEP] B [SEP]` rows of real text; every 4th row is short and padded."""
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(str(vocab_path), lowercase=True)
    lines = []
    for name in ("enwiki_sample.txt", "janeaustenr.txt", "lee_news.txt", "mobydick.txt"):
        with open(shared_data / "corpus" / name, encoding="utf-8") as f:
            file_lines = [line.strip() for line in f if line.strip()]
        lines += file_lines[:3000]
    stream = [i for enc in tokenizer.encode_batch(lines, add_special_tokens=False) for i in enc.ids]
    rng = np.random.default_rng(0)
    rows, cursor = [], 0
    while cursor + LENGTH < len(stream) and len(rows) < 4000:
        body = LENGTH - 3 if len(rows) % 4 else int(rng.integers(8, LENGTH - 3))
        half = body // 2
        a, b = stream[cursor:cursor + half], stream[cursor + half:cursor + body]
        cursor += body
        row = [CLS] + a + [SEP] + b + [SEP]
        rows.append(row + [PAD] * (LENGTH - len(row)))
    return np.array(rows, dtype=np.int32)


def _words(row, vocab):
    """Lists of positions, one per whole word among the maskable tokens of `row`."""
    words = []
    for i, token_id in enumerate(row):
        if vocab.is_special[token_id]:
            continue
        if vocab.is_continuation[token_id] and words and words[-1][-1] == i - 1:
            words[-1].append(i)
        else:
            words.append([i])
    return words


def _mask_rows(rows, vocab, vocab_path, how, count_specials=True, **recipe):
    """The rows masked by one of the two paths that run (see HOWS)."""
    if how == "static":  # the call pretraining_instances makes when create_pretraining_data writes masks
        return mask_batch(rows, rows != PAD, vocab, rng=np.random.default_rng(1234), count_specials=count_specials,
                          **recipe)
    # dynamic: the input pipeline's own masker, given rows as read from files written unmasked
    config = input_pipeline.resolve_data_config(dict(
        input_files="unread", dynamic_masking=True, vocab_file=str(vocab_path),
        mask_count_includes_specials=count_specials, **recipe))
    remask = input_pipeline.make_dynamic_masker(config, seed=1234)
    n, p = len(rows), config.max_predictions_per_seq
    unmasked = {"input_ids": rows, "input_mask": (rows != PAD).astype(np.int32),
                "masked_lm_positions": np.zeros((n, p), np.int32), "masked_lm_ids": np.zeros((n, p), np.int32),
                "masked_lm_weights": np.zeros((n, p), np.float32)}
    return remask(unmasked, np.zeros(n, np.uint64), np.arange(n, dtype=np.uint64))


def _statistics(rows, out):
    maskable = (rows != PAD) & (rows != CLS) & (rows != SEP)
    weights = out["masked_lm_weights"]
    positions = out["masked_lm_positions"]
    picked = np.zeros_like(maskable)
    for r in range(len(rows)):
        picked[r, positions[r][weights[r] > 0]] = True
    original = rows[picked]
    now = out["input_ids"][picked]
    return {
        "rate": picked.sum() / maskable.sum(),
        "mask": np.mean(now == MASK),
        "kept": np.mean(now == original),
        "random": np.mean((now != MASK) & (now != original)),
        "picked": picked,
        "maskable": maskable,
    }


HOWS = ["static", "dynamic"]  # a numpy Generator (create_pretraining_data) or per-example keys (the loader)


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("rate,max_predictions,count_specials", [
    (0.15, 20, True),    # BERT: Google's count, len(tokens) with [CLS]/[SEP]
    (0.30, 40, False),   # MosaicBERT: 30% of the non-special tokens
    (0.15, 20, False),
])
def test_masking_rate_and_80_10_10_on_corpus(corpus_rows, vocab, vocab_path, how, rate, max_predictions, count_specials):
    out = _mask_rows(corpus_rows, vocab, vocab_path, how, masked_lm_prob=rate, max_predictions_per_seq=max_predictions,
                     count_specials=count_specials)
    stats = _statistics(corpus_rows, out)
    print(f"{how} p={rate} count_specials={count_specials}: rate {stats['rate']:.4f} "
          f"mask {stats['mask']:.4f} kept {stats['kept']:.4f} random {stats['random']:.4f} "
          f"over {stats['picked'].sum()} predictions")
    assert abs(stats["rate"] - rate) < 0.005, stats["rate"]
    assert abs(stats["mask"] - 0.8) < 0.01, stats["mask"]
    assert abs(stats["kept"] - 0.1) < 0.01, stats["kept"]
    assert abs(stats["random"] - 0.1) < 0.01, stats["random"]
    # Specials and padding are never picked, and never changed.
    assert not (stats["picked"] & ~stats["maskable"]).any()
    unpicked = ~stats["picked"]
    np.testing.assert_array_equal(out["input_ids"][unpicked], corpus_rows[unpicked])
    # Labels are the original ids; positions sorted; padding has weight 0 and id 0.
    w = out["masked_lm_weights"] > 0
    labels = np.take_along_axis(corpus_rows, out["masked_lm_positions"], axis=1)
    np.testing.assert_array_equal(out["masked_lm_ids"][w], labels[w])
    assert (out["masked_lm_ids"][~w] == 0).all() and (out["masked_lm_positions"][~w] == 0).all()
    for r in range(0, len(corpus_rows), 97):
        p = out["masked_lm_positions"][r][w[r]]
        assert (np.diff(p) > 0).all()


@pytest.mark.parametrize("how", HOWS)
def test_prediction_count_is_googles(corpus_rows, vocab, vocab_path, how):
    out = _mask_rows(corpus_rows, vocab, vocab_path, how)
    real = (corpus_rows != PAD).sum(axis=1)
    expected = np.minimum(num_to_predict(real, 0.15, 20), ((corpus_rows != PAD) & ~vocab.is_special[corpus_rows]).sum(1))
    np.testing.assert_array_equal(out["masked_lm_weights"].sum(axis=1), expected)
    # Google: min(max_predictions, max(1, round(len(tokens) * p))), round half to even.
    assert num_to_predict(128, 0.15, 20) == 19 and num_to_predict(128, 0.3, 20) == 20
    assert num_to_predict(3, 0.15, 20) == 1 and num_to_predict(30, 0.15, 20) == 4  # 4.5 -> 4
    # Google's count at 30% overshoots the non-special rate (38 of 125 in a full row).
    out = _mask_rows(corpus_rows, vocab, vocab_path, how, masked_lm_prob=0.3, max_predictions_per_seq=40)
    np.testing.assert_array_equal(out["masked_lm_weights"].sum(axis=1), np.minimum(
        num_to_predict(real, 0.3, 40), ((corpus_rows != PAD) & ~vocab.is_special[corpus_rows]).sum(1)))
    # count_specials=False counts only the candidates.
    out = _mask_rows(corpus_rows, vocab, vocab_path, how, count_specials=False)
    candidates = ((corpus_rows != PAD) & ~vocab.is_special[corpus_rows]).sum(1)
    np.testing.assert_array_equal(out["masked_lm_weights"].sum(axis=1), num_to_predict(candidates, 0.15, 20))


@pytest.mark.parametrize("how", HOWS)
def test_whole_word_masking_takes_whole_words_with_one_decision(corpus_rows, vocab, vocab_path, how):
    out = _mask_rows(corpus_rows, vocab, vocab_path, how, whole_word_masking=True)
    stats = _statistics(corpus_rows, out)
    # Skipping words that do not fit costs a little, but the rate stays close.
    assert abs(stats["rate"] - 0.15) < 0.005, stats["rate"]
    assert abs(stats["mask"] - 0.8) < 0.01 and abs(stats["kept"] - 0.1) < 0.01
    multi_piece_words = mixed_decisions = 0
    for r, row in enumerate(corpus_rows[:1500]):  # the word-by-word check is Python: half the rows suffice
        for word in _words(row, vocab):
            picked = stats["picked"][r, word]
            assert picked.all() or not picked.any(), (r, word, picked)  # never partly masked
            if picked.all() and len(word) > 1:
                multi_piece_words += 1
                now, before = out["input_ids"][r, word], row[word]
                kinds = {"mask" if n == MASK else "kept" if n == b else "random" for n, b in zip(now, before)}
                mixed_decisions += len(kinds) > 1
    print(f"{how}: {multi_piece_words} multi-piece words masked, {mixed_decisions} with mixed outcomes")
    assert multi_piece_words > 300, multi_piece_words
    # Deciding per sub-token (Google's whole-word masking, google-research/bert#910) mixes the
    # outcome in ~1/3 of these words; one decision per word leaves only the 2-in-30522 chance that
    # a random id equals [MASK] or the original.
    assert mixed_decisions <= 2, (mixed_decisions, multi_piece_words)


def test_whole_word_masking_with_explicit_word_ids(vocab):
    rows = np.array([[CLS, 2000, 2001, 2002, 2003, 2004, 2005, SEP, PAD]] * 200, dtype=np.int32)
    word_ids = np.array([-1, 0, 0, 0, 1, 1, 2, -1, -1])
    for randomness in ({"rng": np.random.default_rng(0)}, {"row_keys": example_keys(0, 0, np.arange(200))}):
        out = mask_batch(rows, None, vocab, whole_word_masking=True, masked_lm_prob=0.5,
                         word_ids=np.broadcast_to(word_ids, rows.shape), **randomness)
        for r in range(200):
            chosen = set(out["masked_lm_positions"][r][out["masked_lm_weights"][r] > 0].tolist())
            for word in ({1, 2, 3}, {4, 5}, {6}):
                assert word <= chosen or not (word & chosen)


def test_keyed_masking_is_a_function_of_the_example_not_the_batch(corpus_rows, vocab):
    rows = corpus_rows[:64]
    keys = example_keys(7, 3, np.arange(100, 164))
    for wwm in (False, True):
        whole = mask_batch(rows, None, vocab, row_keys=keys, whole_word_masking=wwm)
        again = mask_batch(rows, None, vocab, row_keys=keys, whole_word_masking=wwm)
        perm = np.random.default_rng(0).permutation(64)
        shuffled = mask_batch(rows[perm], None, vocab, row_keys=keys[perm], whole_word_masking=wwm)
        for k in whole:
            np.testing.assert_array_equal(whole[k], again[k])
            np.testing.assert_array_equal(whole[k][perm], shuffled[k])
    # Another epoch (or seed) gives another mask.
    other_epoch = mask_batch(rows, None, vocab, row_keys=example_keys(7, 4, np.arange(100, 164)))
    assert (other_epoch["masked_lm_positions"] != whole["masked_lm_positions"]).mean() > 0.5


def test_random_replacement_covers_the_whole_vocabulary(vocab):
    rows = np.full((2000, 64), 2000, dtype=np.int32)
    rows[:, 0], rows[:, -1] = CLS, SEP
    out = mask_batch(rows, None, vocab, rng=np.random.default_rng(0), mask_token_prob=0.0,
                     random_token_prob=1.0, masked_lm_prob=0.5, max_predictions_per_seq=40)
    replaced = out["input_ids"][out["input_ids"] != rows]
    # Google draws from the whole vocab: uniform over [0, 30522), specials included.
    assert replaced.size > 60000
    assert abs(replaced.mean() - (vocab.vocab_size - 1) / 2) < 0.01 * vocab.vocab_size
    assert (replaced < 1000).mean() == pytest.approx(1000 / vocab.vocab_size, abs=0.005)


def test_vocab_errors_and_sentencepiece_continuations(tmp_path):
    bad = tmp_path / "vocab.txt"
    bad.write_text("[PAD]\n[UNK]\n[CLS]\nhello\n##lo\n")
    with pytest.raises(ValueError, match=r"vocab.txt.*\['\[SEP\]', '\[MASK\]'\]"):
        MaskingVocab.from_vocab_file(bad)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        MaskingVocab.from_vocab_file(tmp_path / "nope.txt")
    sp = MaskingVocab.from_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "\u2581the", "re", "\u2581a"],
                                  scheme="sentencepiece")
    assert sp.is_continuation.tolist() == [False] * 5 + [False, True, False]
    assert sp.is_special.tolist() == [True, False, True, True] + [False] * 4


def test_bad_arguments_are_named(vocab):
    row = np.array([[CLS, 2000, SEP]])
    with pytest.raises(ValueError, match="masked_lm_prob"):
        mask_batch(row, None, vocab, rng=np.random.default_rng(0), masked_lm_prob=0.0)
    with pytest.raises(ValueError, match="outside"):
        mask_batch(np.array([[CLS, 40000, SEP]]), None, vocab, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="exactly one"):
        mask_batch(row, None, vocab)
