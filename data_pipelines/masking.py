"""Masked-LM masking as in google-research/bert `create_pretraining_data.py`, on token ids.

One implementation, `mask_batch(input_ids, input_mask, vocab, ...)`, masks a `[batch, length]`
array at once, vectorised in numpy. Both paths call it; only the source of randomness differs:

* static masking, when `create_pretraining_data` writes instances (`pretraining_instances`):
  `rng=`, a `numpy.random.Generator`;
* dynamic masking at load time (RoBERTa; the input pipeline's iterator): `row_keys=`, one 64-bit
  key per row (`example_keys`), so that the mask of an example depends only on (seed, epoch,
  example index), never on how examples were batched, sharded or resumed.

The recipe (paper defaults):

1. Candidates are the real tokens other than [CLS], [SEP] and [PAD]. With whole-word masking a
   candidate is a whole word: a sub-token that continues a word ("##ing" in WordPiece, a piece
   without the leading "▁" in SentencePiece) joins the token before it.
2. `num_to_predict = min(max_predictions_per_seq, max(1, round(length * masked_lm_prob)))`.
   By default `length` counts every real token, [CLS] and [SEP] included, as Google does
   (`len(tokens)`): a full 128-token row with three specials gets 19 predictions over 125
   candidates (15.2%; at 30% it is 38/125 = 30.4%). With `count_specials=False`, `length` is the
   number of candidates, so the masked fraction of non-special tokens is `masked_lm_prob` itself
   (what Hugging Face's collator, used by MosaicBERT at 30%, does in expectation).
   `round` is round-half-to-even, like Python 3's `round`.
3. Candidates are visited in a uniformly random order; a word is taken if it still fits in
   `num_to_predict` and skipped otherwise (so whole-word masking may predict a few fewer).
4. Each taken position becomes [MASK] with `mask_token_prob` (0.8), a random id with
   `random_token_prob` (0.1), and stays unchanged otherwise (0.1). The random id is drawn
   uniformly from the WHOLE vocabulary, specials and the original token included, exactly as
   Google's `vocab_words[rng.randint(0, len(vocab_words) - 1)]` does.

Outputs use Google's feature names and padding: `masked_lm_positions` sorted ascending and padded
with 0, `masked_lm_ids` padded with 0, `masked_lm_weights` 1.0 for real predictions, 0.0 for padding.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

# Paper values (Devlin et al. 2019, section 3.1 and appendix A.1).
MASKED_LM_PROB = 0.15
MASK_TOKEN_PROB = 0.8
RANDOM_TOKEN_PROB = 0.1
MAX_PREDICTIONS_PER_SEQ = 20

# Tokens never chosen for prediction.
NEVER_MASKED_TOKENS = ("[CLS]", "[SEP]", "[PAD]")
MASK_TOKEN = "[MASK]"
SENTENCEPIECE_WORD_START = "\u2581"  # "▁"


@dataclasses.dataclass(frozen=True, eq=False)
class MaskingVocab:
    """What masking needs to know about a vocabulary.

    Attributes:
      vocab_size: number of ids; random replacements are drawn from [0, vocab_size).
      mask_id: id of [MASK].
      pad_id: id of [PAD] (padding when no input_mask is given).
      is_special: [vocab_size] bool, True for ids never chosen ([CLS], [SEP], [PAD]).
      is_continuation: [vocab_size] bool, True for sub-tokens that continue the previous word
        (used only by whole-word masking).
    """

    vocab_size: int
    mask_id: int
    pad_id: int
    is_special: np.ndarray
    is_continuation: np.ndarray

    @classmethod
    def from_tokens(
        cls,
        tokens: Sequence[str],
        *,
        scheme: str = "wordpiece",
        source: str = "<tokens>",
    ) -> "MaskingVocab":
        """Builds it from the token list (index = id).

        Args:
          tokens: every token of the vocabulary, in id order.
          scheme: "wordpiece" (continuations start with "##") or "sentencepiece" (word starts
            carry "▁"; every other non-special piece continues a word).
          source: a name for error messages (the vocab file).
        """
        index = {}
        for i, token in enumerate(tokens):
            index.setdefault(token, i)
        missing = [t for t in NEVER_MASKED_TOKENS + (MASK_TOKEN,) if t not in index]
        if missing:
            raise ValueError(
                f"{source}: vocabulary of {len(tokens)} tokens lacks the special token(s) "
                f"{missing}; masking needs {list(NEVER_MASKED_TOKENS + (MASK_TOKEN,))}")
        specials = np.zeros(len(tokens), dtype=bool)
        specials[[index[t] for t in NEVER_MASKED_TOKENS]] = True
        if scheme == "wordpiece":
            continuation = np.array([t.startswith("##") for t in tokens], dtype=bool)
        elif scheme == "sentencepiece":
            bracketed = np.array([t.startswith("[") and t.endswith("]") and len(t) > 2 for t in tokens])
            continuation = np.array([not t.startswith(SENTENCEPIECE_WORD_START) for t in tokens], dtype=bool)
            continuation &= ~bracketed
        else:
            raise ValueError(f"{source}: scheme must be 'wordpiece' or 'sentencepiece', got {scheme!r}")
        return cls(vocab_size=len(tokens), mask_id=index[MASK_TOKEN], pad_id=index["[PAD]"],
                   is_special=specials, is_continuation=continuation)

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike) -> "MaskingVocab":
        """Reads a Google `vocab.txt` (one token per line) or a SentencePiece `.model`."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"vocab file {path!r} does not exist")
        if path.endswith(".model"):
            import sentencepiece as spm

            processor = spm.SentencePieceProcessor(model_file=path)
            tokens = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
            return cls.from_tokens(tokens, scheme="sentencepiece", source=path)
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\r\n") for line in f]
        while tokens and not tokens[-1]:
            tokens.pop()
        return cls.from_tokens(tokens, scheme="wordpiece", source=path)


def validate_masking_args(masked_lm_prob: float, max_predictions_per_seq: int,
                          mask_token_prob: float, random_token_prob: float) -> None:
    if not 0.0 < masked_lm_prob <= 1.0:
        raise ValueError(f"masked_lm_prob must be in (0, 1], got {masked_lm_prob}")
    if max_predictions_per_seq < 1:
        raise ValueError(f"max_predictions_per_seq must be >= 1, got {max_predictions_per_seq}")
    if mask_token_prob < 0 or random_token_prob < 0 or mask_token_prob + random_token_prob > 1.0 + 1e-12:
        raise ValueError(
            "mask_token_prob and random_token_prob must be >= 0 with a sum <= 1, got "
            f"{mask_token_prob} and {random_token_prob}")


def num_to_predict(num_real_tokens: np.ndarray | int, masked_lm_prob: float,
                   max_predictions_per_seq: int) -> np.ndarray:
    """Google's count: min(max_predictions, max(1, round(len(tokens) * masked_lm_prob)))."""
    # np.rint rounds half to even, as Python 3's round() in Google's script.
    count = np.rint(np.asarray(num_real_tokens, dtype=np.float64) * masked_lm_prob).astype(np.int64)
    return np.minimum(max_predictions_per_seq, np.maximum(1, count))


def _word_starts(ids: np.ndarray, maskable: np.ndarray, vocab: MaskingVocab,
                 whole_word_masking: bool, word_ids: Optional[np.ndarray]) -> np.ndarray:
    """[..., length] bool: True where a candidate (a word, or a token without WWM) begins."""
    if not whole_word_masking:
        return maskable.copy()
    prev_maskable = np.zeros_like(maskable)
    prev_maskable[..., 1:] = maskable[..., :-1]
    if word_ids is not None:
        word_ids = np.asarray(word_ids)
        same_as_prev = np.zeros_like(maskable)
        same_as_prev[..., 1:] = word_ids[..., 1:] == word_ids[..., :-1]
        continues = same_as_prev & (word_ids >= 0)
    else:
        continues = vocab.is_continuation[ids]
    # A continuation joins the previous token only when that one is itself a candidate: Google
    # attaches "##x" to the last candidate even across [SEP]; we start a new word there instead.
    return maskable & ~(continues & prev_maskable)


# ---------------------------------------------------------------- counter-based randomness
# splitmix64 (Steele, Lea & Flood 2014): the i-th draw of a stream seeded with key k is
# mix(k + i * golden). Vectorised in numpy, it gives every (example, position) its own
# reproducible uniform number without creating one Generator per row.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NUM_STREAMS = 3  # candidate order, 80/10/10 decision, random id


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64)
        z = x ^ (x >> np.uint64(30))
        z = z * np.uint64(0xBF58476D1CE4E5B9)
        z = z ^ (z >> np.uint64(27))
        z = z * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def example_keys(seed: int, epoch: np.ndarray | int, example_index: np.ndarray | int) -> np.ndarray:
    """64-bit keys from (seed, epoch, example index), broadcast over arrays, for `mask_batch`."""
    with np.errstate(over="ignore"):
        base = _splitmix64(np.uint64(seed % (1 << 64)) + _GOLDEN)
        epoch = np.asarray(epoch, dtype=np.uint64)
        index = np.asarray(example_index, dtype=np.uint64)
        return _splitmix64(_splitmix64(base ^ (epoch + _GOLDEN)) ^ (index * _GOLDEN + np.uint64(1)))


def _keyed_uniform(row_keys: np.ndarray, length: int, stream: int) -> np.ndarray:
    """[batch, length] float64 in [0, 1), a pure function of (row key, position, stream)."""
    with np.errstate(over="ignore"):
        counter = (np.arange(length, dtype=np.uint64) * np.uint64(_NUM_STREAMS)
                   + np.uint64(stream + 1)) * _GOLDEN
        bits = _splitmix64(row_keys.astype(np.uint64)[:, None] + counter[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def mask_batch(
    input_ids: np.ndarray,
    input_mask: Optional[np.ndarray],
    vocab: MaskingVocab,
    *,
    rng: Optional[np.random.Generator] = None,
    row_keys: Optional[np.ndarray] = None,
    masked_lm_prob: float = MASKED_LM_PROB,
    max_predictions_per_seq: int = MAX_PREDICTIONS_PER_SEQ,
    whole_word_masking: bool = False,
    mask_token_prob: float = MASK_TOKEN_PROB,
    random_token_prob: float = RANDOM_TOKEN_PROB,
    word_ids: Optional[np.ndarray] = None,
    count_specials: bool = True,
) -> dict[str, np.ndarray]:
    """Masks a whole batch at once, Google's recipe (see the module docstring).

    Args:
      input_ids: [batch, length] int ids.
      input_mask: [batch, length] 1 for real tokens, 0 for padding; None = `input_ids != [PAD]`.
      vocab: special ids, [MASK] id, vocab size and word continuations.
      rng: a Generator to draw from, or
      row_keys: [batch] uint64, one key per example (`example_keys(seed, epoch, index)`); the mask
        of a row is then a pure function of its key and ids. Give exactly one of the two.
      masked_lm_prob, max_predictions_per_seq, mask_token_prob, random_token_prob: the recipe.
      whole_word_masking: choose whole words; the 80/10/10 decision is made once per word.
      word_ids: optional [batch, length] ints, equal for sub-tokens of one word (-1 for none);
        replaces the vocabulary's "##" rule for whole-word masking.
      count_specials: True = Google's count (`len(tokens)` with [CLS]/[SEP]); False = count only
        the candidates (see the module docstring).

    Returns:
      dict of `input_ids` [batch, length] int32, `masked_lm_positions` [batch, P] int32,
      `masked_lm_ids` [batch, P] int32, `masked_lm_weights` [batch, P] float32.
    """
    validate_masking_args(masked_lm_prob, max_predictions_per_seq, mask_token_prob, random_token_prob)
    if (rng is None) == (row_keys is None):
        raise ValueError("mask_batch needs exactly one of rng (a numpy Generator) or row_keys ([batch] uint64)")
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"mask_batch takes [batch, length] input_ids, got shape {ids.shape}")
    batch, length = ids.shape
    if ids.size and (ids.min() < 0 or ids.max() >= vocab.vocab_size):
        raise ValueError(f"input_ids hold ids outside [0, {vocab.vocab_size}): min {ids.min()}, max {ids.max()}")
    real = (ids != vocab.pad_id) if input_mask is None else np.asarray(input_mask).astype(bool)
    if real.shape != ids.shape:
        raise ValueError(f"input_mask has shape {real.shape}, input_ids {ids.shape}")
    if row_keys is not None:
        row_keys = np.asarray(row_keys, dtype=np.uint64)
        if row_keys.shape != (batch,):
            raise ValueError(f"row_keys must have shape [{batch}], got {row_keys.shape}")
        u_order, u_decision, u_token = (_keyed_uniform(row_keys, length, s) for s in range(_NUM_STREAMS))
    else:
        u_order, u_decision, u_token = (rng.random((batch, length)) for _ in range(_NUM_STREAMS))

    maskable = real & ~vocab.is_special[ids]
    starts = _word_starts(ids, maskable, vocab, whole_word_masking, word_ids)
    positions = np.arange(length)
    # start_of[b, l]: where the candidate that covers (b, l) begins.
    start_of = np.maximum.accumulate(np.where(starts, positions, 0), axis=1)
    counted = (real if count_specials else maskable).sum(axis=1)
    target = num_to_predict(counted, masked_lm_prob, max_predictions_per_seq)  # [batch]

    # Visit candidates (word starts) in a random order: sort their uniforms, non-starts last.
    order = np.argsort(np.where(starts, u_order, np.inf), axis=1, kind="stable")
    num_words = starts.sum(axis=1)
    if whole_word_masking:
        # word size at its start position = number of maskable tokens whose start_of is there.
        flat = (np.arange(batch)[:, None] * length + start_of)[maskable]
        size_at = np.bincount(flat, minlength=batch * length).reshape(batch, length)
        sizes = np.take_along_axis(size_at, order, axis=1)
        taken = np.zeros((batch, length), dtype=bool)  # in visiting order
        count = np.zeros(batch, dtype=np.int64)
        for j in range(int(num_words.max(initial=0))):
            active = count < target
            if not active.any():
                break
            fits = active & (j < num_words) & (count + sizes[:, j] <= target)
            taken[:, j] = fits
            count += np.where(fits, sizes[:, j], 0)
    else:
        taken = np.arange(length)[None, :] < np.minimum(target, num_words)[:, None]
    chosen_start = np.zeros((batch, length), dtype=bool)
    np.put_along_axis(chosen_start, order, taken, axis=1)
    selected = maskable & np.take_along_axis(chosen_start, start_of, axis=1)

    # One 80/10/10 decision per candidate, read at its start (google-research/bert#910: Google's
    # whole-word masking decided per sub-token, leaving words partly masked).
    decision = np.take_along_axis(u_decision, start_of, axis=1)
    random_ids = np.minimum((u_token * vocab.vocab_size).astype(np.int64), vocab.vocab_size - 1)
    out = ids.astype(np.int32, copy=True)
    use_mask = selected & (decision < mask_token_prob)
    use_random = selected & (decision >= mask_token_prob) & (decision < mask_token_prob + random_token_prob)
    out[use_mask] = vocab.mask_id
    out[use_random] = random_ids[use_random]

    # Gather selected positions in ascending order, padded with 0.
    width = max_predictions_per_seq
    by_position = np.argsort(~selected, axis=1, kind="stable")
    if length < width:
        by_position = np.pad(by_position, ((0, 0), (0, width - length)))
    by_position = by_position[:, :width]
    num_selected = selected.sum(axis=1)
    valid = np.arange(width)[None, :] < num_selected[:, None]
    masked_positions = np.where(valid, by_position, 0).astype(np.int32)
    masked_ids = np.where(valid, np.take_along_axis(ids, masked_positions, axis=1), 0).astype(np.int32)
    return {"input_ids": out, "masked_lm_positions": masked_positions,
            "masked_lm_ids": masked_ids, "masked_lm_weights": valid.astype(np.float32)}
