"""BERT tokenizers with one interface: WordPiece (a Google `vocab.txt`) or SentencePiece (`.model`).

    tok = load_tokenizer("vocab.txt", lowercase=True)     # or load_tokenizer("spm.model")
    tok.tokenize("Hello, world!")                          # ['hello', ',', 'world', '!']
    tok.encode("text a", "text b", max_length=128)         # dict of int32 [128] arrays
    tok.encode_batch(texts_a, texts_b, max_length=128)     # dict of int32 [batch, 128] arrays
    tok.tokenize_words(["Hello", "world!"])                # ids and word_ids (SQuAD / NER alignment)
    tok.tokenize_with_offsets("Hello, world!")             # tokens, ids, char offsets, word ids

WordPiece runs in the Rust `tokenizers` library and reproduces, token for token, the Python port
of Google's `tokenization.py` (`transformers`' slow `BertTokenizer`, `BertTokenizerLegacy` in
transformers v5). `tokenizers`' own `BertNormalizer`/`BertPreTokenizer` do not quite: Rust's
Unicode tables differ from Python's `unicodedata` (unassigned code points, some CJK Extension
ranges, newer punctuation), and Rust lowercases Greek capital sigma without Python's final-sigma
rule. So every character class is built here from Python's `unicodedata`, the same tables the
reference uses, and handed to the Rust pipeline as regular expressions:

    normalizer: drop control chars (category C*, except \\t \\n \\r) and U+FFFD; whitespace
                (space, \\t \\n \\r, Zs) -> " "; NFC;  uncased only: final sigma, lowercase,
                NFD, drop Mn (accents)
    pre-tokenizer: split on whitespace (str.split's set); isolate CJK ideographs and punctuation
    model: greedy longest-match-first WordPiece, "##" continuations, [UNK] for a word over
           `max_input_chars_per_word` (100, as the reference) characters

Deliberate differences from Google's original `tokenization.py`, all inherited from the reference:
NFC normalisation, unassigned/private-use characters removed as control characters, and a
100-character word limit (Google's default is 200; pass `max_input_chars_per_word=200` for it).
Text that spells a special token ("[MASK]") is tokenised as plain text (`[`, `mask`, `]`), as
Google does; special tokens only enter through `encode`.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import os
import re
import unicodedata
from itertools import chain
from typing import Iterable, Optional, Sequence

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Google's max_seq_length default for fine-tuning.
DEFAULT_MAX_LENGTH = 128


# ----------------------------------------------------------------------------- character classes
_NUM_CODE_POINTS = 0x110000
_SURROGATES = (0xD800, 0xDFFF)


def _regex_class(mask: np.ndarray) -> str:
    """A regex character class `[...]` of the code points where the [0x110000] bool `mask` holds."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    esc = lambda cp: "\\x{%X}" % cp  # noqa: E731 (Oniguruma syntax, as `tokenizers.Regex` uses)
    parts = []
    for a, b in zip(edges[0::2], edges[1::2] - 1):
        parts.append(esc(a) if a == b else f"{esc(a)}-{esc(b)}")
    return "[" + "".join(parts) + "]"


def _final_sigma_probe(template: str, index: int) -> np.ndarray:
    """[0x110000] bool: does Python's lower() give a final sigma at `index` of template % char?

    All code points are probed in one lower() call over one long string; "\\x00" (neither cased
    nor case-ignorable) separates the probes, so each is lowercased in its own context.
    """
    chars = [chr(cp) if cp and not _SURROGATES[0] <= cp <= _SURROGATES[1] else "0" for cp in range(_NUM_CODE_POINTS)]
    probes = "\x00".join(template.replace("X", c) for c in chars).lower().split("\x00")
    return np.fromiter((p[index] == "\u03c2" for p in probes), bool, count=_NUM_CODE_POINTS)


# Bump when `_compute_bert_char_classes` changes, so stale cache files are not used.
_CHAR_CLASSES_VERSION = 1


@functools.lru_cache(maxsize=1)
def _bert_char_classes() -> dict[str, str]:
    """The character classes, computed once per Python/Unicode version and cached on disk.

    Computing them scans all 1.1M code points (about a second); the result depends only on the
    Python build's unicodedata, so it is kept in $XDG_CACHE_HOME/bert_jax (or ~/.cache/bert_jax).
    An unwritable cache directory only costs the recomputation.
    """
    import json
    import sys

    key = (f"bert_char_classes-v{_CHAR_CLASSES_VERSION}-unicode{unicodedata.unidata_version}"
           f"-py{sys.version_info.major}.{sys.version_info.minor}.json")
    cache_dir = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bert_jax")
    path = os.path.join(cache_dir, key)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    classes = _compute_bert_char_classes()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(classes, f)
        os.replace(tmp, path)
    except OSError:
        pass
    return classes


def _compute_bert_char_classes() -> dict[str, str]:
    """Regex classes from Python's unicodedata, matching the reference tokenizer's predicates."""
    codes = {}
    category = np.fromiter((codes.setdefault(unicodedata.category(chr(cp)), len(codes))
                            for cp in range(_NUM_CODE_POINTS)), np.int16, count=_NUM_CODE_POINTS)
    is_cat = lambda *names: np.isin(category, [codes[n] for n in names if n in codes])  # noqa: E731
    cp = np.arange(_NUM_CODE_POINTS)
    other = is_cat("Cc", "Cf", "Cn", "Co", "Cs")
    zs = is_cat("Zs")
    tab_nl_cr = np.isin(cp, [9, 10, 13])
    isspace = np.fromiter((chr(c).isspace() for c in range(_NUM_CODE_POINTS)), bool, count=_NUM_CODE_POINTS)
    ascii_punct = (((33 <= cp) & (cp <= 47)) | ((58 <= cp) & (cp <= 64)) | ((91 <= cp) & (cp <= 96))
                   | ((123 <= cp) & (cp <= 126)))
    punct = ascii_punct | is_cat("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po")
    cjk = np.zeros(_NUM_CODE_POINTS, bool)
    for a, b in _CJK_RANGES:
        cjk[a:b + 1] = True
    # Python's lower() maps capital sigma to final sigma when a cased letter precedes it and none
    # follows, skipping case-ignorable characters on both sides. Python has no API for the two
    # properties, so they are read off lower() itself:
    #   "A" X "Σ" ends in ς  <=>  X is case-ignorable or cased
    #   "AΣ" X   has ς       <=>  X is case-ignorable or not cased
    # so case-ignorable = both, and cased-but-not-ignorable = not the second (for the final-sigma
    # rule the casedness of an ignorable character never matters).
    probe_before = _final_sigma_probe("AX\u03a3", -1)
    probe_after = _final_sigma_probe("A\u03a3X", 1)
    ignorable = probe_before & probe_after
    cased = ~probe_after
    ignorable[0] = cased[0] = False  # "\x00" stood in for itself
    ignorable_class, cased_class = _regex_class(ignorable), _regex_class(cased)
    removed = (other & ~tab_nl_cr) | (cp == 0xFFFD)
    return {
        # `_clean_text`: drop U+0000, U+FFFD and control chars (category C*, but not \t \n \r)...
        "control": _regex_class(removed),
        # ... and turn whitespace (space, \t \n \r, Zs) into " ".
        "whitespace": _regex_class(tab_nl_cr | (cp == 32) | zs),
        # `whitespace_tokenize` is str.split(): it also splits at U+2028/U+2029, which survive cleaning.
        "split_space": _regex_class(isspace),
        # The same set minus what cleaning removes: whitespace tokens are tokenised independently.
        "word_boundary": _regex_class((isspace | zs) & ~removed),
        "mark_nonspacing": _regex_class(is_cat("Mn")),
        "punctuation": _regex_class(punct),
        "cjk": _regex_class(cjk),
        "final_sigma": f"(?<={cased_class}{ignorable_class}*)\u03a3(?!{ignorable_class}*{cased_class})",
    }


def _python_class(regex_class: str) -> str:
    """The same class in Python `re` syntax."""
    return re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: "\\U%08x" % int(m.group(1), 16), regex_class)


# Google's `_is_chinese_char` ranges (the CJK Unified Ideographs blocks).
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


# ----------------------------------------------------------------------------- shared helpers
@dataclasses.dataclass(frozen=True)
class TokenSpans:
    """A text's tokens with their positions.

    tokens: [n] str; ids: [n] int32; offsets: [n, 2] int32 (start, end) character offsets into
    the original text; word_ids: [n] int32, index of the word (pre-tokenizer piece for WordPiece:
    whitespace- and punctuation-separated; whitespace-separated for SentencePiece).
    """

    tokens: list[str]
    ids: np.ndarray
    offsets: np.ndarray
    word_ids: np.ndarray


def truncate_pair_lengths(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """Lengths after Google's run_classifier `_truncate_seq_pair`.

    It pops the last token of the longer segment (B on ties) until the pair fits; this computes
    the result without the loop.
    """
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return len_a, len_b
    gap = min(abs(len_a - len_b), excess)
    rest = excess - gap  # removed alternately once equal, B first
    cut_a = (gap if len_a > len_b else 0) + rest // 2
    cut_b = excess - cut_a
    return len_a - cut_a, len_b - cut_b


def read_vocab_file(path: str) -> list[str]:
    """Tokens of a Google vocab.txt in id order (one per line; trailing blank lines ignored)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocab file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        tokens = [line.rstrip("\n").rstrip("\r") for line in f]
    while tokens and not tokens[-1]:
        tokens.pop()
    if not tokens:
        raise ValueError(f"vocab file {path!r} is empty")
    return tokens


def _check_specials(path: str, present: Iterable[str]) -> None:
    present = set(present)
    missing = [t for t in SPECIAL_TOKENS if t not in present]
    if missing:
        raise ValueError(
            f"vocab {path!r} lacks the special token(s) {' '.join(missing)}; a BERT vocabulary "
            f"must contain all of {' '.join(SPECIAL_TOKENS)}")


# ----------------------------------------------------------------------------- the interface
class Tokenizer(abc.ABC):
    """What every tokenizer offers. Subclasses fill `tokens`, `vocab` and implement the hooks."""

    scheme: str  # "wordpiece" | "sentencepiece" (how a sub-token continues a word)
    path: str
    lowercase: bool
    tokens: list[str]  # id -> token
    vocab: dict[str, int]  # token -> id

    def _init_specials(self) -> None:
        _check_specials(self.path, self.vocab)
        self.pad_id = self.vocab["[PAD]"]
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.mask_id = self.vocab["[MASK]"]
        self.special_ids = frozenset((self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id))

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    # -- hooks
    @abc.abstractmethod
    def tokenize(self, text: str) -> list[str]:
        """Sub-word tokens of `text` (no special tokens)."""

    @abc.abstractmethod
    def encode_ids_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids (no special tokens) of each text; parallel in native code."""

    @abc.abstractmethod
    def tokenize_with_offsets(self, text: str) -> TokenSpans:
        """Tokens, ids, character offsets into `text` and word ids."""

    @abc.abstractmethod
    def tokenize_words(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokenises pre-split words, each on its own (Google's run_squad `tokenize(word)`).

        Returns ids [n] int32 and word_ids [n] int32 (index into `words` of each sub-token). A
        word that yields no token (only control characters, say) has no entry.
        """

    # -- shared
    def encode_ids(self, text: str) -> list[int]:
        return self.encode_ids_batch([text])[0]

    def encode_ids_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids concatenated ([total] int32) and each text's length ([n] int64)."""
        ids = self.encode_ids_batch(texts)
        lengths = np.fromiter(map(len, ids), np.int64, count=len(ids))
        return np.fromiter(chain.from_iterable(ids), np.int32, count=int(lengths.sum())), lengths

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        return [self.vocab.get(t, self.unk_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[int(i)] for i in ids]

    def masking_vocab(self):
        """The `data_pipelines.masking.MaskingVocab` of this vocabulary."""
        from data_pipelines.masking import MaskingVocab

        return MaskingVocab.from_tokens(self.tokens, scheme=self.scheme, source=self.path)

    def build_pair(self, ids_a: Sequence[int], ids_b: Optional[Sequence[int]],
                   max_length: int) -> dict[str, np.ndarray]:
        """`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, truncated and padded to `max_length`.

        Truncation is Google's run_classifier: a single segment keeps its first max_length - 2
        tokens; a pair drops tokens from the end of the longer segment first.
        """
        if ids_b is None:
            if max_length < 2:
                raise ValueError(f"max_length must be >= 2 for [CLS] A [SEP], got {max_length}")
            ids_a = list(ids_a)[: max_length - 2]
            body = [self.cls_id, *ids_a, self.sep_id]
            types = [0] * len(body)
        else:
            if max_length < 3:
                raise ValueError(f"max_length must be >= 3 for [CLS] A [SEP] B [SEP], got {max_length}")
            la, lb = truncate_pair_lengths(len(ids_a), len(ids_b), max_length - 3)
            body = [self.cls_id, *list(ids_a)[:la], self.sep_id, *list(ids_b)[:lb], self.sep_id]
            types = [0] * (la + 2) + [1] * (lb + 1)
        n = len(body)
        input_ids = np.full(max_length, self.pad_id, np.int32)
        input_ids[:n] = body
        token_type_ids = np.zeros(max_length, np.int32)
        token_type_ids[:n] = types
        attention_mask = np.zeros(max_length, np.int32)
        attention_mask[:n] = 1
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}

    def encode(self, text_a: str, text_b: Optional[str] = None,
               max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, np.ndarray]:
        """One example: dict of int32 [max_length] `input_ids`, `token_type_ids`, `attention_mask`."""
        texts = [text_a] if text_b is None else [text_a, text_b]
        ids = self.encode_ids_batch(texts)
        return self.build_pair(ids[0], None if text_b is None else ids[1], max_length)

    def encode_batch(self, texts_a: Sequence[str], texts_b: Optional[Sequence[str]] = None,
                     max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, np.ndarray]:
        """Many examples at once: dict of int32 [batch, max_length] arrays (tokenised in parallel)."""
        texts_a = list(texts_a)
        if texts_b is not None:
            texts_b = list(texts_b)
            if len(texts_b) != len(texts_a):
                raise ValueError(f"encode_batch: {len(texts_a)} texts_a but {len(texts_b)} texts_b")
        ids = self.encode_ids_batch(texts_a + (texts_b or []))
        n = len(texts_a)
        rows = [self.build_pair(ids[i], None if texts_b is None else ids[n + i], max_length) for i in range(n)]
        if not rows:
            return {k: np.zeros((0, max_length), np.int32) for k in ("input_ids", "token_type_ids", "attention_mask")}
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


# ----------------------------------------------------------------------------- WordPiece
class WordPieceTokenizer(Tokenizer):
    """Google's BERT tokenizer (basic tokenisation + WordPiece) from a vocab.txt, in Rust."""

    scheme = "wordpiece"

    def __init__(self, vocab_file: str | os.PathLike, lowercase: bool = True,
                 max_input_chars_per_word: int = 100):
        from tokenizers import Regex, Tokenizer as RustTokenizer, models, normalizers, pre_tokenizers

        self.path = os.fspath(vocab_file)
        self.lowercase = lowercase
        self.tokens = read_vocab_file(self.path)
        # A repeated token maps to its last line, as Google's and the reference's load_vocab do.
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        self._init_specials()

        classes = _bert_char_classes()
        steps = [normalizers.Replace(Regex(classes["control"]), ""),
                 normalizers.Replace(Regex(classes["whitespace"]), " "),
                 normalizers.NFC()]
        if lowercase:  # the reference strips accents exactly when it lowercases
            steps += [normalizers.Replace(Regex(classes["final_sigma"]), "\u03c2"),
                      normalizers.Lowercase(), normalizers.NFD(),
                      normalizers.Replace(Regex(classes["mark_nonspacing"]), "")]
        rust = RustTokenizer(models.WordPiece(self.vocab, unk_token="[UNK]",
                                              max_input_chars_per_word=max_input_chars_per_word))
        rust.normalizer = normalizers.Sequence(steps)
        self._word_boundary = re.compile(_python_class(classes["word_boundary"]) + "+")
        # Whitespace that str.split() splits at but `_clean_text` deletes (controls: \x0b \x0c \x1c-\x1f \x85).
        self._deleted_space = re.compile(
            "[" + "".join(chr(c) for c in range(0x3001)  # no code point above U+3000 is whitespace
                         if chr(c).isspace() and not self._word_boundary.match(chr(c))) + "]")
        self._word_cache: dict[str, tuple[int, ...]] = {}
        self.max_cached_words = 2_000_000
        rust.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(classes["split_space"] + "+"), "removed"),
            pre_tokenizers.Split(Regex(classes["cjk"]), "isolated"),
            pre_tokenizers.Split(Regex(classes["punctuation"]), "isolated"),
        ])
        self._rust = rust

    def tokenize(self, text: str) -> list[str]:
        return self._rust.encode(text, add_special_tokens=False).tokens

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[str]]:
        tokens = self.tokens
        return [[tokens[i] for i in ids] for ids in self.encode_ids_batch(texts)]

    def encode_ids_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, memoised per whitespace-separated word.

        Google's pipeline tokenises every whitespace-separated word on its own (cleaning, NFC,
        lowercasing with its final-sigma context, accent stripping, punctuation and CJK splits all
        stay inside a word), so a text's ids are the concatenation of its words' ids. Natural text
        repeats words (Zipf), so each distinct word goes through the Rust pipeline once and the rest
        is a dictionary lookup; this is several times faster than tokenising every line in Rust.
        """
        words_per_text = self._split_words(texts)
        get = self._cached_word_ids(words_per_text)
        return [list(chain.from_iterable(map(get, words))) for words in words_per_text]

    def encode_ids_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids concatenated ([total] int32) and each text's length ([n] int64)."""
        words_per_text = self._split_words(texts)
        get = self._cached_word_ids(words_per_text)
        # Every loop below runs in C (map/chain/fromiter); this is the corpus-tokenising hot path.
        per_word = list(map(get, chain.from_iterable(words_per_text)))
        word_lengths = np.fromiter(map(len, per_word), np.int64, count=len(per_word))
        ids = np.fromiter(chain.from_iterable(per_word), np.int32, count=int(word_lengths.sum()))
        words_in_text = np.fromiter(map(len, words_per_text), np.int64, count=len(words_per_text))
        ends = np.concatenate([[0], np.cumsum(word_lengths)])[np.cumsum(words_in_text)]
        lengths = np.diff(np.concatenate([[0], ends]))
        return ids, lengths

    def _split_words(self, texts: Sequence[str]) -> list[list[str]]:
        # str.split() (C speed) splits at exactly the right places unless a text holds one of the
        # few whitespace characters that cleaning deletes (they must join, not split, words).
        odd = self._deleted_space.search
        split = self._word_boundary.split
        return [split(t) if odd(t) else t.split() for t in texts]

    def _cached_word_ids(self, words_per_text: list[list[str]]):
        cache = self._word_cache
        missing = set(chain.from_iterable(words_per_text)).difference(cache)
        if missing:
            if len(cache) + len(missing) > self.max_cached_words:
                # Bounded memory: start over, keeping (only) this batch's words.
                cache.clear()
                missing = set(chain.from_iterable(words_per_text))
            self._tokenize_words_into(list(missing), cache)
        return cache.__getitem__

    def _tokenize_words_into(self, words: list[str], cache: dict) -> None:
        # Many words per native call, as pre-tokenised input: each word is normalised and split on
        # its own, and `word_ids` says which word every token came from.
        step = 4000
        for start in range(0, len(words), step):
            group = words[start:start + step]
            encoding = self._rust.encode(group, is_pretokenized=True, add_special_tokens=False)
            per_word: list[list[int]] = [[] for _ in group]
            for token_id, k in zip(encoding.ids, encoding.word_ids):
                per_word[k].append(token_id)
            for w, token_ids in zip(group, per_word):
                cache[w] = tuple(token_ids)

    def tokenize_with_offsets(self, text: str) -> TokenSpans:
        enc = self._rust.encode(text, add_special_tokens=False)
        return TokenSpans(tokens=list(enc.tokens), ids=np.asarray(enc.ids, np.int32),
                          offsets=np.asarray(enc.offsets, np.int32).reshape(-1, 2),
                          word_ids=np.asarray(enc.word_ids, np.int32))

    def tokenize_words(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if not words:
            return np.zeros(0, np.int32), np.zeros(0, np.int32)
        enc = self._rust.encode(list(words), is_pretokenized=True, add_special_tokens=False)
        # With pre-tokenised input, `word_ids` index the input words (punctuation splits inside a
        # word keep its index).
        return np.asarray(enc.ids, np.int32), np.asarray(enc.word_ids, np.int32)


# ----------------------------------------------------------------------------- SentencePiece
class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model trained by `data_pipelines.train_vocab` (specials reserved).

    `lowercase=True` lowercases text (Python's str.lower) before SentencePiece; train_vocab
    lowercases its training text the same way unless given --no-lowercase.
    """

    scheme = "sentencepiece"

    def __init__(self, model_file: str | os.PathLike, lowercase: bool = True):
        import sentencepiece as spm

        self.path = os.fspath(model_file)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"SentencePiece model {self.path!r} does not exist")
        self.lowercase = lowercase
        self._sp = spm.SentencePieceProcessor(model_file=self.path)
        self.tokens = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
        self.vocab = {}
        for i, t in enumerate(self.tokens):
            self.vocab.setdefault(t, i)
        self._init_specials()
        self._threads = os.cpu_count() or 1

    def _prepare(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    def tokenize(self, text: str) -> list[str]:
        return self._sp.encode(self._prepare(text), out_type=str)

    def encode_ids_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode([self._prepare(t) for t in texts], out_type=int, num_threads=self._threads)

    def tokenize_with_offsets(self, text: str) -> TokenSpans:
        """Offsets index `text` after lowercasing (the same string unless lower() changed its length)."""
        prepared = self._prepare(text)
        proto = self._sp.encode(prepared, return_type="proto")
        # SentencePiece reports byte offsets; map them to character offsets.
        char_at_byte = np.zeros(len(prepared.encode("utf-8")) + 1, np.int32)
        pos = 0
        for i, ch in enumerate(prepared):
            n = len(ch.encode("utf-8"))
            char_at_byte[pos:pos + n] = i
            pos += n
        char_at_byte[pos] = len(prepared)
        pieces = list(proto.pieces)
        offsets = np.array([[char_at_byte[p.begin], char_at_byte[p.end]] for p in pieces], np.int32).reshape(-1, 2)
        starts = np.array([p.piece.startswith("\u2581") for p in pieces], bool)
        word_ids = np.cumsum(starts).astype(np.int32) - 1
        return TokenSpans(tokens=[p.piece for p in pieces], ids=np.array([p.id for p in pieces], np.int32),
                          offsets=offsets, word_ids=np.maximum(word_ids, 0))

    def tokenize_words(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        per_word = self.encode_ids_batch(list(words))
        ids = [i for w in per_word for i in w]
        word_ids = [k for k, w in enumerate(per_word) for _ in w]
        return np.asarray(ids, np.int32), np.asarray(word_ids, np.int32)


def load_tokenizer(path: str | os.PathLike, lowercase: bool = True, **kwargs) -> Tokenizer:
    """A WordPiece tokenizer for a vocab.txt, or a SentencePiece one for a `.model` file.

    Args:
      path: Google `vocab.txt` (one token per line) or SentencePiece `.model`.
      lowercase: uncased model (lowercase + strip accents for WordPiece; lowercase for SentencePiece).
      kwargs: `max_input_chars_per_word` for WordPiece.
    """
    path = os.fspath(path)
    if path.endswith(".model"):
        return SentencePieceTokenizer(path, lowercase=lowercase)
    return WordPieceTokenizer(path, lowercase=lowercase, **kwargs)
