"""The context-free baseline a masked LM must beat: every target predicted by its training frequency.

A collapsed or under-trained encoder sits at this baseline (it predicts `,` `the` `.` whatever the
context), so pretraining evaluation reports its loss and accuracy beside the model's. The
frequencies are those of the original tokens of training rows (masked positions restored;
special tokens not counted), add-one smoothed over the vocabulary. Inputs are numpy arrays in the
pretraining batch layout: input_ids, input_mask [rows, length]; masked_lm_positions,
masked_lm_ids, masked_lm_weights [rows, P].
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def original_tokens(batch: dict) -> np.ndarray:
    """The real tokens of `batch` as they were before masking (a flat int array)."""
    ids = np.array(batch["input_ids"], copy=True)
    rows, cols = np.nonzero(np.asarray(batch["masked_lm_weights"]) > 0)
    ids[rows, batch["masked_lm_positions"][rows, cols]] = batch["masked_lm_ids"][rows, cols]
    return ids[np.asarray(batch["input_mask"]) != 0]


def token_counts(batches: Iterable[dict], vocab_size: int, special_ids: Iterable[int] = ()) -> np.ndarray:
    """[vocab_size] counts of the original tokens of `batches`, special tokens set to 0."""
    counts = np.zeros(vocab_size, np.float64)
    for batch in batches:
        counts += np.bincount(original_tokens(batch), minlength=vocab_size)[:vocab_size]
    counts[list(special_ids)] = 0
    return counts


def log_probs(counts: np.ndarray) -> np.ndarray:
    """Add-one smoothed log frequencies [vocab]."""
    return np.log((counts + 1.0) / (counts.sum() + counts.size))


def loss_and_accuracy(log_p: np.ndarray, target_ids: np.ndarray, target_weights: np.ndarray) -> tuple[float, float]:
    """(weighted mean cross-entropy in nats, weighted accuracy of always predicting the most
    frequent token) of the unigram model on targets [rows, P]."""
    weights = np.asarray(target_weights, np.float64)
    total = weights.sum()
    if total <= 0:
        return float("nan"), float("nan")
    nll = -(log_p[target_ids] * weights).sum() / total
    accuracy = ((target_ids == int(np.argmax(log_p))) * weights).sum() / total
    return float(nll), float(accuracy)
