"""Random pretraining batches with the real keys, shapes and dtypes, for benchmarks (no files)."""

from __future__ import annotations

import numpy as np


class SyntheticBatchIterator:
    """Random pretraining batches with the real keys, shapes and dtypes, for benchmarks.

    Batch k is a function of (seed, k), so it is deterministic and resumable like the real one.
    """

    def __init__(self, batch_size: int, max_seq_length: int = 128, max_predictions_per_seq: int = 20,
                 vocab_size: int = 30522, seed: int = 0, packing: bool = False,
                 next_sentence_prediction: bool = True):
        self.batch_size, self.max_seq_length = batch_size, max_seq_length
        self.max_predictions_per_seq, self.vocab_size = max_predictions_per_seq, vocab_size
        self._seed, self._packing, self._nsp = int(seed), packing, next_sentence_prediction
        self._step = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self._seed, self._step])
        self._step += 1
        b, length, p = self.batch_size, self.max_seq_length, self.max_predictions_per_seq
        low = 999 if self.vocab_size > 999 else 5  # past [PAD], [unused*] and the specials of BERT's vocab
        positions = np.sort(np.argsort(rng.random((b, length - 1)), axis=1)[:, :p] + 1, axis=1)
        batch = {
            "input_ids": rng.integers(low, self.vocab_size, (b, length), dtype=np.int32),
            "input_mask": np.ones((b, length), np.int32),
            "segment_ids": (np.arange(length)[None, :] >= length // 2).astype(np.int32).repeat(b, 0),
            "masked_lm_positions": positions.astype(np.int32),
            "masked_lm_ids": rng.integers(low, self.vocab_size, (b, p), dtype=np.int32),
            "masked_lm_weights": np.ones((b, p), np.float32),
        }
        if self._packing:
            half = length // 2
            batch["position_ids"] = np.tile(np.arange(length) % half, (b, 1)).astype(np.int32)
            batch["packed_segment_ids"] = np.tile(1 + np.arange(length) // half, (b, 1)).astype(np.int32)
        elif self._nsp:
            batch["next_sentence_labels"] = rng.integers(0, 2, b, dtype=np.int32)
        return batch

    def get_state(self) -> dict:
        return {"synthetic_step": self._step, "seed": self._seed}

    def set_state(self, state: dict) -> None:
        if state.get("seed") != self._seed:
            raise ValueError(f"synthetic state has seed {state.get('seed')}, this iterator {self._seed}")
        self._step = int(state["synthetic_step"])

    def close(self) -> None:
        pass
