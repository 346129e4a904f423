"""BERT pretraining instances: google-research/bert's create_pretraining_data.py recipe, on ids.

A corpus is tokenised once into one flat id array (`TokenizedCorpus`). Sentences of a document
are contiguous in it, so every segment of an instance is a (start, end) span and an instance is
a handful of integers until its row is filled. Masking is `data_pipelines.masking.mask_batch`,
run once over all rows of a work unit.

Mode "nsp" (the paper; Google's `create_instances_from_document`), per document:
  * `max_num_tokens = max_seq_length - 3`; with probability `short_seq_prob` the document's target
    length is uniform in [2, max_num_tokens] instead (drawn once per document, as Google does, so
    every chunk of that document aims short).
  * Sentences are collected into a chunk until it reaches the target or the document ends.
    Segment A is the chunk's first `a_end` sentences, `a_end` uniform in [1, n - 1] (1 if n = 1).
  * B is a random continuation from another document (up to 10 tries to avoid this one; it starts
    at a uniformly random sentence and takes sentences until it reaches target - len(A)) with
    probability `random_next_prob` = 0.5, and always when the chunk has one sentence; the chunk's
    unused sentences then go back to the document. Otherwise B is the rest of the chunk.
  * While len(A) + len(B) > max_num_tokens, one token leaves the longer segment (B on ties), from
    its front or back with probability 1/2. (Computed in closed form: the removals per segment are
    Google's exactly; the front/back split of k removals is Binomial(k, 1/2), as Google's coin flips.)
  * `[CLS] A [SEP] B [SEP]`, segment ids 0 for [CLS] A [SEP], 1 for B [SEP];
    next_sentence_labels 1 = random next (Google's `is_random_next`).

Modes for NSP-off ablations (RoBERTa, Liu et al. 2019, section 4.2); segment ids are all 0 and
next_sentence_labels 0:
  * "full_sentences": contiguous whole sentences, crossing into the next document (in the
    shuffled document order) with an extra [SEP] between documents, up to max_seq_length - 2.
  * "doc_sentences": the same without crossing documents (rows may end short at a document end).
  A sentence is added only when it fits; a lone sentence longer than the row is cut at its end.
  `short_seq_prob` applies per row here (set it to 0 for RoBERTa's setting).

Partitions (what lets the recipe run on a corpus of any size, on any number of machines).
Google's script draws the random next sentence from the whole corpus, so every worker would
need all of it in memory. Here documents are grouped into partitions and the recipe runs inside
each one, drawing random next sentences from another document of the same partition, as
NVIDIA's LDDL does:
  * a document's key is (source number, document number in that source): the file's position
    in the expanded --input_file list and the document's position in the file (or 0 and the
    example index for a TFDS split);
  * num_partitions = ceil(documents / docs_per_partition), and a document's partition is
    blake2b(key) mod num_partitions. A hash of the key, not of the text or of a position in the
    stream, so the rule needs no global order (each Beam worker computes it alone), spreads
    neighbouring (same-topic) documents over partitions, and gives the same partitions however
    many workers read the input;
  * inside a partition documents are sorted by key, then shuffled by (seed, partition) (Google
    shuffles all documents once before the dupe passes);
  * the work unit (docs_per_unit documents of that order, one dupe pass) seeds its Generator
    with (seed, dupe pass, unit, partition).
With 10^4+ documents per partition a random document of the partition is as good a "random
next" as one of the whole corpus; the NSP statistics (50% random next) are unchanged. For
partition 0 the seeds equal those of the unpartitioned recipe ([seed, d, u] and [seed, 0x5EED]:
numpy's SeedSequence pads its entropy with zeros), so a corpus smaller than one partition gives
exactly the instances of running the recipe over the whole corpus.

No shuffle at write time. Instances are written in the order they are made, one shard per
(partition, dupe pass). The loader draws a fresh permutation of all records every epoch
(grain's index shuffle, pretraining_iterator.py), so a write-time shuffle would cost a pass over all
instances in one place and change nothing the trainer sees.

Randomness: one numpy Generator per work unit, seeded as above, so the output does not depend
on how many processes or machines run the units (the unit's scalar draws come from a Python
`random.Random` seeded from that Generator; its masking from the Generator itself).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np

MODES = ("nsp", "full_sentences", "doc_sentences")


@dataclasses.dataclass(frozen=True)
class InstanceConfig:
    """How instances are made. Defaults are the paper's / Google's script's."""

    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    mode: str = "nsp"  # "nsp" | "full_sentences" | "doc_sentences"
    random_next_prob: float = 0.5
    dupe_factor: int = 10
    random_seed: int = 12345
    static_masking: bool = True  # False: write unmasked rows for dynamic masking at load time
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    whole_word_masking: bool = False
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    count_specials: bool = True  # Google counts [CLS]/[SEP] in len(tokens) for num_to_predict

    def validate(self) -> "InstanceConfig":
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.max_seq_length < 5:
            raise ValueError(f"max_seq_length must be >= 5 ([CLS] a [SEP] b [SEP]), got {self.max_seq_length}")
        for name in ("short_seq_prob", "random_next_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.dupe_factor < 1:
            raise ValueError(f"dupe_factor must be >= 1, got {self.dupe_factor}")
        from data_pipelines.masking import validate_masking_args

        validate_masking_args(self.masked_lm_prob, self.max_predictions_per_seq,
                              self.mask_token_prob, self.random_token_prob)
        return self


# ----------------------------------------------------------------------------- the corpus
@dataclasses.dataclass
class TokenizedCorpus:
    """All documents as one flat id array.

    token_ids: [num_tokens] int32.
    sentence_starts: [num_sentences + 1] int64, sentence i is token_ids[s[i]:s[i+1]] (never empty).
    document_starts: [num_documents + 1] int64, document d is sentences d[d]..d[d+1]-1 (never empty).
    """

    token_ids: np.ndarray
    sentence_starts: np.ndarray
    document_starts: np.ndarray

    def starts_as_lists(self) -> tuple[list[int], list[int]]:
        """sentence_starts and document_starts as Python lists (fast scalar access), cached."""
        cached = self.__dict__.get("_lists")
        if cached is None:
            cached = self.__dict__["_lists"] = (self.sentence_starts.tolist(), self.document_starts.tolist())
        return cached

    @property
    def num_documents(self) -> int:
        return len(self.document_starts) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_starts) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def document(self, d: int) -> list[np.ndarray]:
        """Sentences of document d as id arrays (for inspection and tests)."""
        s0, s1 = self.document_starts[d], self.document_starts[d + 1]
        return [self.token_ids[self.sentence_starts[i]:self.sentence_starts[i + 1]] for i in range(s0, s1)]

    @classmethod
    def from_id_documents(cls, documents: Iterable[Sequence[Sequence[int]]]) -> "TokenizedCorpus":
        """From documents of tokenised sentences; empty sentences and documents are dropped (as Google)."""
        parts = []
        for d, doc in enumerate(documents):
            kept = [np.asarray(s, np.int32) for s in doc if len(s)]
            if kept:
                parts.append(TokenizedDocument((0, d), np.array([len(s) for s in kept], np.int32),
                                               np.concatenate(kept)))
        return cls.from_tokenized_documents(parts)

    @classmethod
    def from_documents(cls, documents: Iterable[list[str]], tokenizer,
                       batch_documents: int = 512) -> "TokenizedCorpus":
        """Tokenises documents of sentence strings, many sentences per call.

        Sentences without tokens and documents without sentences are dropped, as Google does.
        """
        parts, batch = [], []
        for d, doc in enumerate(documents):
            batch.append(((0, d), doc))
            if len(batch) >= batch_documents:
                parts += tokenize_documents(batch, tokenizer)
                batch = []
        parts += tokenize_documents(batch, tokenizer)
        return cls.from_tokenized_documents(parts)

    @classmethod
    def from_tokenized_documents(cls, documents: Sequence["TokenizedDocument"]) -> "TokenizedCorpus":
        """The documents in the order given (see `tokenize_documents`)."""
        if not documents:
            return cls(np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(1, np.int64))
        return cls._from_lengths(np.concatenate([d.token_ids for d in documents]),
                                 np.concatenate([d.sentence_lengths for d in documents]),
                                 [len(d.sentence_lengths) for d in documents])

    @classmethod
    def _from_lengths(cls, token_ids, sentence_lengths, doc_sizes) -> "TokenizedCorpus":
        sentence_starts = np.zeros(len(sentence_lengths) + 1, np.int64)
        np.cumsum(sentence_lengths, out=sentence_starts[1:])
        document_starts = np.zeros(len(doc_sizes) + 1, np.int64)
        np.cumsum(doc_sizes, out=document_starts[1:])
        return cls(token_ids, sentence_starts, document_starts)



DocumentKey = tuple[int, int]  # (source number, document number in the source)


class TokenizedDocument(NamedTuple):
    """One document after tokenisation: what travels between the steps of either executor."""

    key: DocumentKey
    sentence_lengths: np.ndarray  # [num_sentences] int32, all > 0
    token_ids: np.ndarray  # [sum(sentence_lengths)] int32


def tokenize_documents(documents: Sequence[tuple[DocumentKey, list[str]]], tokenizer) -> list[TokenizedDocument]:
    """(key, sentences) pairs -> TokenizedDocuments, in one tokenizer call.

    Sentences without tokens and documents without sentences are dropped, as Google does.
    """
    texts = [s for _, sentences in documents for s in sentences]
    if not texts:
        return []
    ids, lengths = tokenizer.encode_ids_flat(texts)
    ids, lengths = np.asarray(ids, np.int32), np.asarray(lengths, np.int64)
    starts = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=starts[1:])
    out, i = [], 0
    for key, sentences in documents:
        n = len(sentences)
        doc_lengths = lengths[i:i + n]
        if doc_lengths.any():
            out.append(TokenizedDocument((int(key[0]), int(key[1])), doc_lengths[doc_lengths > 0].astype(np.int32),
                                         ids[starts[i]:starts[i + n]].copy()))
        i += n
    return out


# ----------------------------------------------------------------------------- partitions
def num_partitions(num_documents: int, docs_per_partition: int) -> int:
    if docs_per_partition < 1:
        raise ValueError(f"docs_per_partition must be >= 1, got {docs_per_partition}")
    return max(1, math.ceil(num_documents / docs_per_partition))


def partition_of(key: DocumentKey, partitions: int) -> int:
    """The partition of a document: a stable hash of its key (see the module docstring)."""
    digest = hashlib.blake2b(f"{key[0]}:{key[1]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % partitions


def partition_corpus(documents: Iterable[TokenizedDocument]) -> TokenizedCorpus:
    """A partition's documents sorted by key: the same corpus whatever order they arrived in."""
    return TokenizedCorpus.from_tokenized_documents(sorted(documents, key=lambda d: d.key))


# ----------------------------------------------------------------------------- instances
@dataclasses.dataclass
class Instances:
    """A batch of instances with Google's feature names ([N, max_seq_length] / [N, P] / [N]).

    `forced_random_next`, `short_target` and `source_document` are bookkeeping for statistics and
    tests (not written to files): the chunk had a single sentence (so B had to be random), the row
    aimed at a short length, and the document of segment A (of the row's first piece).
    """

    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    masked_lm_positions: np.ndarray
    masked_lm_ids: np.ndarray
    masked_lm_weights: np.ndarray
    next_sentence_labels: np.ndarray
    forced_random_next: np.ndarray
    short_target: np.ndarray
    source_document: np.ndarray

    FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
                "masked_lm_weights", "next_sentence_labels")

    def __len__(self) -> int:
        return len(self.input_ids)

    def features(self) -> dict[str, np.ndarray]:
        """The seven Google features; next_sentence_labels as [N, 1]."""
        out = {k: getattr(self, k) for k in self.FEATURES}
        out["next_sentence_labels"] = out["next_sentence_labels"].reshape(-1, 1)
        return out

    def take(self, index: np.ndarray) -> "Instances":
        return Instances(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    @classmethod
    def concatenate(cls, parts: Sequence["Instances"]) -> "Instances":
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                      for f in dataclasses.fields(cls)})


def _truncate_counts(len_a: int, len_b: int, max_num_tokens: int) -> tuple[int, int]:
    """How many tokens Google's `truncate_seq_pair` removes from A and from B."""
    excess = len_a + len_b - max_num_tokens
    if excess <= 0:
        return 0, 0
    gap = min(abs(len_a - len_b), excess)
    rest = excess - gap  # once equal, removals alternate, B first (ties truncate B)
    cut_a = (gap if len_a > len_b else 0) + rest // 2
    return cut_a, excess - cut_a


def _coin_flips(rng: random.Random, k: int) -> int:
    """Heads among k fair coin flips: Binomial(k, 1/2), exactly."""
    return bin(rng.getrandbits(k)).count("1") if k else 0


def _nsp_spans(corpus: TokenizedCorpus, doc: int, config: InstanceConfig, rng: random.Random,
               out: list) -> None:
    """Appends ([(start, end, segment_id), ...], is_random_next, forced, short, doc) per instance."""
    ss, ds = corpus.starts_as_lists()
    first, last = ds[doc], ds[doc + 1]  # sentence range [first, last)
    max_num_tokens = config.max_seq_length - 3
    target = max_num_tokens
    short = rng.random() < config.short_seq_prob
    if short:
        target = rng.randint(2, max_num_tokens)
    num_documents = corpus.num_documents
    chunk_start, current_length, i = first, 0, first
    while i < last:
        current_length += ss[i + 1] - ss[i]
        if i == last - 1 or current_length >= target:
            n = i + 1 - chunk_start
            a_end = 1 if n == 1 else rng.randint(1, n - 1)
            a0, a1 = ss[chunk_start], ss[chunk_start + a_end]
            forced = n == 1
            is_random = forced or rng.random() < config.random_next_prob
            if is_random:
                target_b = target - (a1 - a0)
                for _ in range(10):
                    other = rng.randint(0, num_documents - 1)
                    if other != doc:
                        break
                r_first, r_last = ds[other], ds[other + 1]
                j = rng.randint(r_first, r_last - 1)
                b0 = ss[j]
                while True:
                    b1 = ss[j + 1]
                    if b1 - b0 >= target_b or j == r_last - 1:
                        break
                    j += 1
                i -= n - a_end  # the unused sentences go back
            else:
                b0, b1 = a1, ss[i + 1]
            cut_a, cut_b = _truncate_counts(a1 - a0, b1 - b0, max_num_tokens)
            front_a, front_b = _coin_flips(rng, cut_a), _coin_flips(rng, cut_b)
            spans = [(a0 + front_a, a1 - (cut_a - front_a), 0), (b0 + front_b, b1 - (cut_b - front_b), 1)]
            out.append((spans, is_random, forced, short, doc))
            chunk_start, current_length = i + 1, 0
        i += 1


def _packed_spans(corpus: TokenizedCorpus, docs: Sequence[int], config: InstanceConfig,
                  rng: random.Random, out: list) -> None:
    """FULL-SENTENCES / DOC-SENTENCES rows over `docs` in order."""
    ss, ds = corpus.starts_as_lists()
    max_tokens = config.max_seq_length - 2
    cross = config.mode == "full_sentences"

    def new_target():
        if rng.random() < config.short_seq_prob:
            return rng.randint(2, max_tokens), True
        return max_tokens, False

    row: list[list[int]] = []  # [start, end] per document piece
    row_doc = -1  # document of the row's first piece
    used = 0  # tokens in the row, separators between pieces included
    target, short = new_target()

    def emit():
        nonlocal row, used, target, short
        if row:
            # A lone over-long sentence: keep its beginning.
            if used > max_tokens:
                row[-1][1] -= used - max_tokens
            out.append(([(a, b, 0) for a, b in row], False, False, short, row_doc))
        row, used = [], 0
        target, short = new_target()

    for doc in docs:
        new_doc = True
        for i in range(ds[doc], ds[doc + 1]):
            start, end = ss[i], ss[i + 1]
            cost = (end - start) + (1 if (row and new_doc) else 0)
            if row and used + cost > target:
                emit()
                cost = end - start
            if row and not new_doc:
                row[-1][1] = end  # contiguous with the previous sentence of this document
            else:
                if not row:
                    row_doc = doc
                row.append([start, end])
            used += cost
            new_doc = False
        if not cross:
            emit()
    emit()


def _fill_rows(corpus: TokenizedCorpus, spans_list: list, cls_id: int, sep_id: int, pad_id: int,
               max_seq_length: int):
    n = len(spans_list)
    input_ids = np.full((n, max_seq_length), pad_id, np.int32)
    segment_ids = np.zeros((n, max_seq_length), np.int32)
    input_mask = np.zeros((n, max_seq_length), np.int32)
    tokens = corpus.token_ids
    for r, spans in enumerate(spans_list):
        row, seg = input_ids[r], segment_ids[r]
        row[0] = cls_id
        pos = 1
        for start, end, segment in spans:
            length = end - start
            row[pos:pos + length] = tokens[start:end]
            row[pos + length] = sep_id
            seg[pos:pos + length + 1] = segment
            pos += length + 1
        input_mask[r, :pos] = 1
    return input_ids, input_mask, segment_ids


def create_instances(corpus: TokenizedCorpus, documents: Sequence[int], config: InstanceConfig,
                     rng: np.random.Generator, masking_vocab, special_ids: dict[str, int]) -> Instances:
    """Instances of `documents` (indices into `corpus`, in the order given), masked unless told not.

    Args:
      corpus: the whole tokenised corpus (random next sentences come from any of its documents).
      documents: the documents this call turns into instances.
      config: the recipe.
      rng: the randomness of this call.
      masking_vocab: a `data_pipelines.masking.MaskingVocab` (tokenizer.masking_vocab()).
      special_ids: {"cls": id, "sep": id, "pad": id}.
    """
    entries: list = []
    # Scalar draws (Google's script is all scalar draws) from Python's Mersenne Twister, which is
    # several times faster per call than a numpy Generator; masking draws arrays from `rng`.
    scalar_rng = random.Random(int(rng.integers(1 << 62)))
    corpus.starts_as_lists()
    if config.mode == "nsp":
        if corpus.num_documents < 2:
            raise ValueError("NSP needs at least 2 documents to draw random next sentences from; "
                             f"the corpus has {corpus.num_documents}")
        for doc in documents:
            _nsp_spans(corpus, int(doc), config, scalar_rng, entries)
    else:
        _packed_spans(corpus, [int(d) for d in documents], config, scalar_rng, entries)
    input_ids, input_mask, segment_ids = _fill_rows(
        corpus, [e[0] for e in entries], special_ids["cls"], special_ids["sep"], special_ids["pad"],
        config.max_seq_length)
    n, p = len(entries), config.max_predictions_per_seq
    if config.static_masking and n:
        from data_pipelines.masking import mask_batch

        masked = mask_batch(input_ids, input_mask, masking_vocab, rng=rng,
                            masked_lm_prob=config.masked_lm_prob,
                            max_predictions_per_seq=config.max_predictions_per_seq,
                            whole_word_masking=config.whole_word_masking,
                            mask_token_prob=config.mask_token_prob,
                            random_token_prob=config.random_token_prob,
                            count_specials=config.count_specials)
        input_ids = masked["input_ids"]
        positions, ids, weights = masked["masked_lm_positions"], masked["masked_lm_ids"], masked["masked_lm_weights"]
    else:
        positions, ids = np.zeros((n, p), np.int32), np.zeros((n, p), np.int32)
        weights = np.zeros((n, p), np.float32)
    return Instances(
        input_ids=input_ids, input_mask=input_mask, segment_ids=segment_ids,
        masked_lm_positions=positions.astype(np.int32), masked_lm_ids=ids.astype(np.int32),
        masked_lm_weights=weights.astype(np.float32),
        next_sentence_labels=np.array([e[1] for e in entries], np.int32).reshape(n),
        forced_random_next=np.array([e[2] for e in entries], bool).reshape(n),
        short_target=np.array([e[3] for e in entries], bool).reshape(n),
        source_document=np.array([e[4] for e in entries], np.int32).reshape(n))


def unit_rng(seed: int, dupe_pass: int, unit: int, partition: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, dupe_pass, unit, partition])


def document_order(num_documents: int, seed: int, partition: int = 0) -> np.ndarray:
    """A partition's shuffled document order (Google shuffles all documents once before the dupe passes)."""
    return np.random.default_rng([seed, 0x5EED, partition]).permutation(num_documents)


def partition_instances(corpus: TokenizedCorpus, partition: int, dupe_pass: int, config: InstanceConfig,
                        masking_vocab, special_ids: dict[str, int], docs_per_unit: int = 64) -> Iterator[Instances]:
    """One dupe pass over one partition, a work unit at a time (memory: one unit's rows).

    Args:
      corpus: the partition's documents (`partition_corpus`); random next sentences come from them.
      partition, dupe_pass: which shard this is; with `config.random_seed` they fix the randomness.
      masking_vocab: `tokenizer.masking_vocab()`; special_ids: {"cls", "sep", "pad"} ids.
      docs_per_unit: documents per work unit (part of the recipe: it fixes the output).
    """
    if docs_per_unit < 1:
        raise ValueError(f"docs_per_unit must be >= 1, got {docs_per_unit}")
    if corpus.num_documents == 0:
        return
    if config.mode == "nsp" and corpus.num_documents < 2:
        raise ValueError(f"partition {partition} holds {corpus.num_documents} document: NSP draws the random next "
                         "sentence from another document of the same partition. Use a larger --docs_per_partition "
                         "(or fewer, larger documents)")
    order = document_order(corpus.num_documents, config.random_seed, partition)
    corpus.starts_as_lists()
    for unit, start in enumerate(range(0, corpus.num_documents, docs_per_unit)):
        rng = unit_rng(config.random_seed, dupe_pass, unit, partition)
        yield create_instances(corpus, order[start:start + docs_per_unit], config, rng, masking_vocab, special_ids)


def special_ids_of(tokenizer) -> dict[str, int]:
    return {"cls": tokenizer.cls_id, "sep": tokenizer.sep_id, "pad": tokenizer.pad_id}


def create_all_instances(corpus: TokenizedCorpus, tokenizer, config: InstanceConfig,
                         docs_per_unit: int = 64) -> Instances:
    """Every dupe pass of a corpus taken as one partition, in memory (for small corpora and tests).

    The same instances as `create_pretraining_data` writes for a corpus below --docs_per_partition,
    in the order of its shards.
    """
    config.validate()
    vocab, specials = tokenizer.masking_vocab(), special_ids_of(tokenizer)
    parts = [instances for dupe_pass in range(config.dupe_factor)
             for instances in partition_instances(corpus, 0, dupe_pass, config, vocab, specials, docs_per_unit)]
    if not parts:
        raise ValueError("the corpus holds no documents")
    return Instances.concatenate(parts)
