"""Tokenizers against the Python port of Google's tokenization.py, plus the encode contract.

The reference is `BertTokenizerLegacy` (transformers v5; `BertTokenizer` in 4.x), called through
`_tokenize(text, split_special_tokens=True)`: that is its BasicTokenizer + WordPiece without the
added-token matcher, i.e. Google's pipeline, which tokenises a literal "[MASK]" in text as text.
"""

import random
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from data_pipelines.tokenization import load_tokenizer, truncate_pair_lengths

try:
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as RefTokenizer
except ImportError:  # transformers 4.x: the slow BertTokenizer is the Python port
    from transformers import BertTokenizer as RefTokenizer

UNCASED = "vocab/bert-base-uncased-vocab.txt"
CASED = "vocab/bert-base-cased-vocab.reconstructed.txt"

CRAFTED = [
    "", " ", "\t\n", "Hello, world!", "HeLLo WoRLD", "naïve café résumé Ångström", "Crème brûlée à la mode",
    "ΟΔΟΣ ΟΔΟΣ. ΑΣ'Β Σ ΑΣ\u0301 Ἀθῆναι", "İstanbul straße ẞ ǅ ﬁne", "中文字符测试 and 日本語のテキスト 한국어",
    "𠀀𪜀𫝀 CJK extension B-E", "emoji 😀👍🏽👨‍👩‍👧 ✨", "control\x00chars\x07here\x1b[0m", "zero\u200bwidth\u200cjoin\u200dchars\ufeff",
    "soft\u00adhyphen", "nbsp\u00a0and\u2003em\u3000ideographic", "line\u2028sep\u2029para", "\ufffdreplacement\ufffd",
    "private\ue000use \U000F0000", "unassigned\u0378here", "x" * 100, "x" * 101, "é" * 101,
    "[CLS] [SEP] [MASK] [PAD] [UNK] literal", "don't won't y'all", "e-mail: a.b@c.d, $3.50 (50%)",
    "«quotes» „German“ ‘single’ — dash … ellipsis", "tab\tseparated\tvalues", "Mr. Smith's 1st-rate co-op",
    "\u0301leading combining", "a\u0300\u0301\u0302b", "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ", "Ⅻ ① ㎏ ㍿", "ﬀ ﬃ ﬄ",
]


def reference(path: str, lowercase: bool):
    return RefTokenizer(path, do_lower_case=lowercase)


def ref_tokenize(ref, text: str) -> list[str]:
    return ref._tokenize(text, split_special_tokens=True)


def corpus_lines(shared_data, every: int = 1, per_file_head: int = 0) -> list[str]:
    """Lines of the shared corpus and the sentiment TSVs (sentences only)."""
    lines = []
    for path in sorted((shared_data / "corpus").glob("*.txt")):
        text = path.read_text(encoding="utf-8").split("\n")
        lines += text[:per_file_head] + text[per_file_head::every]
    for path in sorted((shared_data / "sentiment").rglob("*.tsv")):
        rows = path.read_text(encoding="utf-8").split("\n")[1:]
        rows = [r.split("\t")[0] for r in rows]
        lines += rows[:per_file_head] + rows[per_file_head::every]
    return lines


def compare(tok, ref, lines) -> list[tuple[str, list[str], list[str]]]:
    ours = tok.tokenize_batch(lines)
    mismatches = []
    for line, mine in zip(lines, ours):
        theirs = ref_tokenize(ref, line)
        if mine != theirs:
            mismatches.append((line, mine, theirs))
    return mismatches


@pytest.fixture(scope="module")
def uncased(shared_data):
    path = str(shared_data / UNCASED)
    return load_tokenizer(path, lowercase=True), reference(path, True)


@pytest.fixture(scope="module")
def cased(shared_data):
    path = str(shared_data / CASED)
    return load_tokenizer(path, lowercase=False), reference(path, False)


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("which", ["uncased", "cased"])
def test_crafted_lines_match_reference(which, request):
    tok, ref = request.getfixturevalue(which)
    mismatches = compare(tok, ref, CRAFTED)
    assert not mismatches, mismatches[:5]


def test_corpus_sample_matches_reference(uncased, cased, shared_data):
    lines = corpus_lines(shared_data, every=97, per_file_head=150)
    assert len(lines) > 3000
    for tok, ref in (uncased, cased):
        mismatches = compare(tok, ref, lines)
        print(f"{tok.path}: compared {len(lines)} lines, {len(mismatches)} mismatches")
        assert not mismatches, mismatches[:5]


def test_every_bmp_code_point_matches_reference(uncased):
    """Each BMP character inside a word and alone: the character classes agree with Python's.

    (The slow test adds the final-sigma contexts and every astral code point.)"""
    tok, ref = uncased
    probes = [f"a{chr(cp)}b {chr(cp)}" for cp in range(0x10000) if not 0xD800 <= cp <= 0xDFFF]
    # 32 probes per line (whitespace-separated words are tokenised independently by both sides).
    lines = [" ".join(probes[i:i + 32]) for i in range(0, len(probes), 32)]
    mismatches = compare(tok, ref, lines)
    assert not mismatches, mismatches[:2]
    # Each probe on its own line where a line mismatched would pinpoint the character; none did.


@pytest.mark.slow
def test_whole_corpus_matches_reference(uncased, cased, shared_data):
    """Every line of corpus/* and the sentiment TSVs uncased; every 5th line cased."""
    lines = corpus_lines(shared_data)
    tok, ref = uncased
    mismatches = compare(tok, ref, lines)
    print(f"uncased: compared {len(lines)} lines, {len(mismatches)} mismatches")
    assert not mismatches, mismatches[:5]
    tok, ref = cased
    subset = lines[::5]
    mismatches = compare(tok, ref, subset)
    print(f"cased: compared {len(subset)} lines, {len(mismatches)} mismatches")
    assert not mismatches, mismatches[:5]


@pytest.mark.slow
def test_every_code_point_matches_reference(uncased):
    """All 1,112,064 code points inside a word and alone; the assigned ones also in final-sigma
    contexts (before, after and between capital sigmas); and the on-disk class cache is fresh."""
    from data_pipelines.tokenization import _bert_char_classes, _compute_bert_char_classes

    assert _compute_bert_char_classes() == _bert_char_classes()
    tok, ref = uncased
    probes = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        probes.append(f"a{c}b {c}")
        if unicodedata.category(c) not in ("Cn", "Co"):
            probes.append(f"\u03a3{c}\u03a3 A\u03a3{c}")
    lines = [" ".join(probes[i:i + 64]) for i in range(0, len(probes), 64)]
    mismatches = compare(tok, ref, lines)
    print(f"{len(probes)} probes over all code points: {len(mismatches)} mismatching lines")
    assert not mismatches, mismatches[:2]


# ----------------------------------------------------------------------------- encode contract
def google_truncate(a: list, b: list, max_tokens: int):
    """google-research/bert run_classifier._truncate_seq_pair, verbatim in behaviour."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        (a if len(a) > len(b) else b).pop()
    return a, b


def test_truncate_pair_lengths_matches_google_loop():
    rng = random.Random(0)
    for _ in range(2000):
        la, lb, m = rng.randint(0, 60), rng.randint(0, 60), rng.randint(0, 80)
        a, b = google_truncate(range(la), range(lb), m)
        assert truncate_pair_lengths(la, lb, m) == (len(a), len(b)), (la, lb, m)


def test_encode_pair_matches_reference_and_google_truncation(uncased):
    tok, ref = uncased
    a = "The quick brown fox jumps over the lazy dog near the riverbank."
    b = "A completely different sentence, which is somewhat longer than the first one here."
    ids_a, ids_b = ref.convert_tokens_to_ids(ref_tokenize(ref, a)), ref.convert_tokens_to_ids(ref_tokenize(ref, b))
    for max_length in (128, 24, 9, 3):
        out = tok.encode(a, b, max_length=max_length)
        ta, tb = google_truncate(ids_a, ids_b, max_length - 3)
        expected = [tok.cls_id, *ta, tok.sep_id, *tb, tok.sep_id]
        n = len(expected)
        assert all(v.dtype == np.int32 and v.shape == (max_length,) for v in out.values())
        assert out["input_ids"][:n].tolist() == expected
        assert (out["input_ids"][n:] == tok.pad_id).all()
        assert out["token_type_ids"].tolist() == [0] * (len(ta) + 2) + [1] * (len(tb) + 1) + [0] * (max_length - n)
        assert out["attention_mask"].tolist() == [1] * n + [0] * (max_length - n)
    # Untruncated, the layout equals the reference's own pair building.
    full = tok.encode(a, b, max_length=128)
    ref_ids = ref.build_inputs_with_special_tokens(ids_a, ids_b)
    assert full["input_ids"][: len(ref_ids)].tolist() == ref_ids
    single = tok.encode(a, max_length=6)
    assert single["input_ids"].tolist() == [tok.cls_id, *ids_a[:4], tok.sep_id]


def test_encode_batch_equals_encode(uncased, shared_data):
    tok, _ = uncased
    rows = (shared_data / "paraphrase/bible/dev.tsv").read_text(encoding="utf-8").split("\n")[:200]
    rows = [r.split("\t") for r in rows if r.count("\t") == 2]
    a, b = [r[1] for r in rows], [r[2] for r in rows]
    batch = tok.encode_batch(a, b, max_length=64)
    assert batch["input_ids"].shape == (len(rows), 64)
    for i in (0, 7, len(rows) - 1):
        one = tok.encode(a[i], b[i], max_length=64)
        for k in one:
            np.testing.assert_array_equal(batch[k][i], one[k])
    with pytest.raises(ValueError, match="texts_b"):
        tok.encode_batch(a, b[:-1])


def test_word_cache_is_bounded_and_exact(shared_data):
    tok = load_tokenizer(str(shared_data / UNCASED))
    tok.max_cached_words = 50
    lines = [f"word{i} shared text, {'x' * (i % 7)}" for i in range(200)]
    expected = [tok._rust.encode(line, add_special_tokens=False).ids for line in lines]
    for start in range(0, 200, 40):  # every batch overflows the cache
        assert tok.encode_ids_batch(lines[start:start + 40]) == expected[start:start + 40]
        assert len(tok._word_cache) <= 50 + 40 * 4


def test_special_ids_and_vocab(uncased):
    tok, ref = uncased
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.vocab_size == 30522 == ref.vocab_size
    assert tok.convert_tokens_to_ids(["hello", "not-a-token"]) == [ref.vocab["hello"], tok.unk_id]
    assert tok.convert_ids_to_tokens([101, 102]) == ["[CLS]", "[SEP]"]
    mv = tok.masking_vocab()
    assert mv.vocab_size == tok.vocab_size and mv.mask_id == tok.mask_id


def test_tokenize_words_matches_per_word_reference(uncased):
    """SQuAD/NER alignment: Google's run_squad tokenises each whitespace word on its own."""
    tok, ref = uncased
    words = ["Hello,", "world!", "Unaffable", "\u200b", "naïve", "e-mail", "中文"]
    ids, word_ids = tok.tokenize_words(words)
    expected_ids, expected_words = [], []
    for k, w in enumerate(words):
        sub = ref.convert_tokens_to_ids(ref_tokenize(ref, w))
        expected_ids += sub
        expected_words += [k] * len(sub)
    assert ids.tolist() == expected_ids
    assert word_ids.tolist() == expected_words


def test_offsets_point_into_the_original_text(uncased):
    tok, _ = uncased
    text = "Héllo,  WORLD! unaffable"
    spans = tok.tokenize_with_offsets(text)
    assert spans.tokens == tok.tokenize(text)
    pieces = [text[s:e] for s, e in spans.offsets]
    assert pieces[:4] == ["Héllo", ",", "WORLD", "!"]
    assert "".join(pieces[4:]) == "unaffable"
    assert spans.word_ids.tolist()[:5] == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- bad vocabularies
def test_vocab_missing_special_tokens_is_a_clear_error(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\nhello\nworld\n", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        load_tokenizer(str(path))
    assert str(path) in str(err.value) and "[SEP] [MASK]" in str(err.value)
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_tokenizer(str(tmp_path / "does-not-exist.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_tokenizer(str(empty))


# ----------------------------------------------------------------------------- SentencePiece
@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_train_vocab_sentencepiece_same_interface(model_type, tmp_path, shared_data):
    prefix = tmp_path / f"spm_{model_type}"
    cmd = [sys.executable, "-m", "data_pipelines.train_vocab", "--input",
           str(shared_data / "corpus/botchan.txt"), "--vocab-size", "2000", "--model-type", model_type,
           "--output", str(prefix)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    tok = load_tokenizer(str(prefix) + ".model", lowercase=True)
    assert tok.vocab_size == 2000
    assert [tok.tokens[i] for i in (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id)] == \
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tok.pad_id == 0 and tok.unk_id == 1
    text = "I have been a loss-maker since childhood because of my rash nature."
    pieces = tok.tokenize(text)
    assert "".join(pieces).replace("\u2581", " ").strip() == text.lower()
    # A literal special token in text is text, never the control id.
    assert tok.cls_id not in tok.encode_ids("[CLS] hello")
    out = tok.encode(text, "Another sentence.", max_length=32)
    n = int(out["attention_mask"].sum())
    assert out["input_ids"][0] == tok.cls_id and out["input_ids"][n - 1] == tok.sep_id
    assert (out["input_ids"] == tok.sep_id).sum() == 2 and out["token_type_ids"][n - 1] == 1
    ids, word_ids = tok.tokenize_words(text.split())
    assert word_ids.max() == len(text.split()) - 1 and len(ids) == len(word_ids)
    spans = tok.tokenize_with_offsets(text)
    assert spans.ids.tolist() == tok.encode_ids(text)
    assert text.lower()[spans.offsets[0][0]:spans.offsets[0][1]].strip() == "i"
    # Whole-word masking: a SentencePiece piece starting with "\u2581" starts a word, any other is a
    # continuation. The example text has both kinds (asserted, so the check cannot be vacuous).
    mv = tok.masking_vocab()
    starts = [p for p in pieces if p.startswith("\u2581") and len(p) > 1]
    continuations = [p for p in pieces if not p.startswith("\u2581")]
    assert starts and continuations, pieces
    assert not any(mv.is_continuation[tok.vocab[p]] for p in starts), starts
    assert all(mv.is_continuation[tok.vocab[p]] for p in continuations), continuations
