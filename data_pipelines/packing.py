"""Sequence packing: several short pretraining examples in one row of `max_seq_length` tokens.

A packed row keeps what the model needs to treat its examples as if they were separate:

    input_ids, segment_ids (token types), input_mask   [rows, length]  the examples, concatenated
    packed_segment_ids  [rows, length]  1, 2, 3, ... for the 1st, 2nd, 3rd example; 0 = padding.
                        The model's attention stays inside equal ids (huggingface/transformers#25452).
    position_ids        [rows, length]  restart at 0 at each example
    masked_lm_positions, masked_lm_ids, masked_lm_weights   [rows, max_predictions_per_seq]
                        each example's predictions, offset by where the example starts

The examples of a row do not share one next-sentence label, so packing is for training
without NSP (RoBERTa-style); `data_config` refuses packing with next_sentence_prediction=True.

Placement is first-fit over the rows of one batch, in stream order: each example goes into the
first row with room for its tokens and its predictions, and the batch is closed at the first
example that fits in no row (it opens the next batch). The plan depends only on the example
lengths in order, so it is deterministic and a resumed stream packs exactly the same rows.
"""

from __future__ import annotations

import numpy as np

PACKED_KEYS = ("input_ids", "input_mask", "segment_ids", "position_ids", "packed_segment_ids",
               "masked_lm_positions", "masked_lm_ids", "masked_lm_weights")


def example_lengths(input_mask: np.ndarray, source: str = "examples") -> np.ndarray:
    """[n] number of real tokens; checks that each row is real tokens first, then padding."""
    input_mask = np.asarray(input_mask).astype(bool)
    lengths = input_mask.sum(axis=1)
    prefix = np.arange(input_mask.shape[1])[None, :] < lengths[:, None]
    bad = np.flatnonzero((prefix != input_mask).any(axis=1))
    if bad.size:
        raise ValueError(f"{source}: input_mask of example {bad[0]} is not real tokens followed by padding: "
                         f"{input_mask[bad[0]].astype(int).tolist()}")
    return lengths


def plan_first_fit(lengths: np.ndarray, num_predictions: np.ndarray, num_rows: int,
                   max_seq_length: int, max_predictions_per_seq: int) -> np.ndarray:
    """Assigns examples, in order, to `num_rows` rows by first fit.

    Args:
      lengths: [n] tokens of each example.
      num_predictions: [n] masked-LM predictions of each example.
    Returns:
      [k] row of each of the first k examples; example k (if any) fits in no row and starts the
      next batch. k == n means every example was placed and the rows may take more.
    """
    lengths = np.asarray(lengths)
    num_predictions = np.asarray(num_predictions)
    too_long = np.flatnonzero((lengths > max_seq_length) | (num_predictions > max_predictions_per_seq))
    if too_long.size:
        i = too_long[0]
        raise ValueError(f"example {i} has {lengths[i]} tokens and {num_predictions[i]} predictions; a packed row "
                         f"holds at most {max_seq_length} tokens and {max_predictions_per_seq} predictions")
    free_tokens = np.full(num_rows, max_seq_length, dtype=np.int64)
    free_predictions = np.full(num_rows, max_predictions_per_seq, dtype=np.int64)
    rows = np.empty(len(lengths), dtype=np.int64)
    for i, (n, p) in enumerate(zip(lengths, num_predictions)):
        fits = np.flatnonzero((free_tokens >= n) & (free_predictions >= p))
        if not fits.size:
            return rows[:i]
        row = fits[0]
        free_tokens[row] -= n
        free_predictions[row] -= p
        rows[i] = row
    return rows


def pack_examples(examples: dict[str, np.ndarray], row_of: np.ndarray, num_rows: int,
                  max_seq_length: int, max_predictions_per_seq: int) -> dict[str, np.ndarray]:
    """Builds the packed rows of a plan from `plan_first_fit`.

    Args:
      examples: padded examples, `input_ids, input_mask, segment_ids` [n, L] and
        `masked_lm_positions, masked_lm_ids, masked_lm_weights` [n, P]; n >= len(row_of).
      row_of: [k] the row of each of the first k examples.
    Returns:
      dict of PACKED_KEYS arrays, [num_rows, max_seq_length] or [num_rows, max_predictions_per_seq].
    """
    k = len(row_of)
    lengths = example_lengths(examples["input_mask"][:k])
    weights = np.asarray(examples["masked_lm_weights"][:k]) > 0
    out = {key: np.zeros((num_rows, max_seq_length), np.int32)
           for key in ("input_ids", "input_mask", "segment_ids", "position_ids", "packed_segment_ids")}
    for key in ("masked_lm_positions", "masked_lm_ids"):
        out[key] = np.zeros((num_rows, max_predictions_per_seq), np.int32)
    out["masked_lm_weights"] = np.zeros((num_rows, max_predictions_per_seq), np.float32)
    token_cursor = np.zeros(num_rows, np.int64)
    prediction_cursor = np.zeros(num_rows, np.int64)
    examples_in_row = np.zeros(num_rows, np.int64)
    for i, row in enumerate(row_of):
        n, start = lengths[i], token_cursor[row]
        span = slice(start, start + n)
        examples_in_row[row] += 1
        out["input_ids"][row, span] = examples["input_ids"][i, :n]
        out["segment_ids"][row, span] = examples["segment_ids"][i, :n]
        out["input_mask"][row, span] = 1
        out["position_ids"][row, span] = np.arange(n)
        out["packed_segment_ids"][row, span] = examples_in_row[row]
        token_cursor[row] += n
        p = int(weights[i].sum())
        if p:
            pspan = slice(prediction_cursor[row], prediction_cursor[row] + p)
            out["masked_lm_positions"][row, pspan] = examples["masked_lm_positions"][i][weights[i]] + start
            out["masked_lm_ids"][row, pspan] = examples["masked_lm_ids"][i][weights[i]]
            out["masked_lm_weights"][row, pspan] = 1.0
            prediction_cursor[row] += p
    return out


def unpack_row(packed: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Splits one packed row (dict of 1-D arrays) back into its examples, unpadded.

    Each example gets `input_ids, segment_ids, position_ids` [n] and `masked_lm_positions,
    masked_lm_ids` [p] with positions relative to the example. For tests and debugging.
    """
    ids = packed["packed_segment_ids"]
    weights = packed["masked_lm_weights"] > 0
    positions = packed["masked_lm_positions"][weights]
    labels = packed["masked_lm_ids"][weights]
    examples = []
    for segment in range(1, int(ids.max(initial=0)) + 1):
        where = np.flatnonzero(ids == segment)
        start, end = where[0], where[-1] + 1
        mine = (positions >= start) & (positions < end)
        examples.append({
            "input_ids": packed["input_ids"][start:end],
            "segment_ids": packed["segment_ids"][start:end],
            "position_ids": packed["position_ids"][start:end],
            "masked_lm_positions": positions[mine] - start,
            "masked_lm_ids": labels[mine],
        })
    return examples


def packing_efficiency(packed: dict[str, np.ndarray]) -> float:
    """Fraction of the row tokens that are real tokens."""
    return float(np.mean(packed["input_mask"]))
