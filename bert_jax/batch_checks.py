"""Range checks of a host batch's index fields, beside `predict.check_token_ids`.

An index out of range does not fail inside jit: a gather clamps it or reads a row of garbage,
and the run shows only a NaN, under a hint to lower the learning rate. Checked on the host,
per batch, naming the step, the field, the value and the range the model accepts.
"""

from __future__ import annotations

import numpy as np


def _check(batch: dict, name: str, low: int, high: int, where: str, why: str) -> None:
    values = batch.get(name)
    if values is None or np.size(values) == 0:
        return
    values = np.asarray(values)
    found_low, found_high = int(values.min()), int(values.max())
    if found_low < low or found_high >= high:
        bad = found_low if found_low < low else found_high
        raise ValueError(f"{where}: batch field {name!r} holds {bad}, outside [{low}, {high}) ({why})")


def check_index_ranges(batch: dict, type_vocab_size: int, where: str) -> None:
    """masked_lm_positions within the sequence, segment ids below type_vocab_size, NSP labels 0/1."""
    input_ids = batch.get("input_ids")
    if input_ids is not None and np.ndim(input_ids) == 2:
        _check(batch, "masked_lm_positions", 0, int(np.shape(input_ids)[1]), where,
               "a masked position must index the row's tokens; the data's max_seq_length differs?")
    _check(batch, "token_type_ids", 0, type_vocab_size, where,
           f"model.type_vocab_size={type_vocab_size}")
    _check(batch, "next_sentence_labels", 0, 2, where, "0 = is next, 1 = random next")
