"""The pretraining BatchIterator over a random-access source: grain's index order, dynamic
masking glue, packing, a prefetch thread, and a state of one integer (see `input_pipeline`)."""

from __future__ import annotations

import queue
import threading
import weakref
from typing import Any, Callable, Optional

import ml_collections
import numpy as np

from data_pipelines import masking, packing

STATE_VERSION = 1


def unmask(features: dict[str, np.ndarray]) -> np.ndarray:
    """[n, L] the original ids: the files' masked_lm_ids put back at masked_lm_positions."""
    ids = features["input_ids"].copy()
    rows, cols = np.nonzero(features["masked_lm_weights"] > 0)
    ids[rows, features["masked_lm_positions"][rows, cols]] = features["masked_lm_ids"][rows, cols]
    return ids


def make_dynamic_masker(config: ml_collections.ConfigDict, seed: int) -> Callable:
    """features, epochs [n], records [n] -> features re-masked by (seed, epoch, record)."""
    vocab = masking.MaskingVocab.from_vocab_file(config.vocab_file)

    def remask(features, epochs, records):
        keys = masking.example_keys(seed, epochs, records)
        masked = masking.mask_batch(
            unmask(features), features["input_mask"], vocab, row_keys=keys,
            masked_lm_prob=config.masked_lm_prob, max_predictions_per_seq=config.max_predictions_per_seq,
            whole_word_masking=config.whole_word_masking, mask_token_prob=config.mask_token_prob,
            random_token_prob=config.random_token_prob, count_specials=config.mask_count_includes_specials)
        return {**features, **masked}

    return remask


class _Prefetcher:
    """Runs produce(position) -> (batch, next_position) ahead in a thread, into a bounded queue.

    The thread holds the iterator only weakly, so an iterator dropped without close() is
    collected and its thread ends."""

    def __init__(self, produce: Callable, position: Any, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(weakref.WeakMethod(produce), position),
                                        daemon=True, name="bert_jax-input-prefetch")
        self._thread.start()

    def _run(self, produce_ref, position):
        while not self._stop.is_set():
            produce = produce_ref()
            if produce is None:  # the iterator is gone
                return
            try:
                item = produce(position)
                position = item[1]
            except BaseException as error:  # handed to the consumer, raised there
                item = error
            del produce
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def get(self):
        if self._error is not None:  # the producer has stopped; keep failing the same way
            raise self._error
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._error = item
            raise item
        return item

    def stop(self):
        self._stop.set()
        if threading.current_thread() is not self._thread:  # the thread may drop the last reference
            self._thread.join()


class PretrainingBatchIterator:
    """The BatchIterator of docs/ARCHITECTURE.md over a random-access source (see the module docstring)."""

    def __init__(self, source, config: ml_collections.ConfigDict, global_batch_size: int, seed: int,
                 process_index: int, process_count: int):
        import grain

        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
        if global_batch_size % process_count:
            raise ValueError(f"global batch size {global_batch_size} is not divisible by process_count {process_count}")
        self._source = source
        self._config = config
        self._seed = int(seed)
        self._process_index, self._process_count = process_index, process_count
        self._global_batch_size = global_batch_size
        self.batch_size = global_batch_size // process_count
        self.num_examples = len(source)
        order = grain.MapDataset.range(self.num_examples)
        if config.shuffle:
            order = order.seed(self._seed).shuffle()  # grain reshuffles every epoch of the repeat
        self._order = order.repeat(None)[process_index::process_count]
        self._masker = make_dynamic_masker(config, self._seed) if config.dynamic_masking else None
        if self._masker is None:
            # Unmasked rows (create_pretraining_data --no_masking) would train on an MLM loss of 0;
            # masked rows read as `unmasked` would feed [MASK] tokens to an LM as its input.
            probe = source.read(np.arange(min(16, self.num_examples)))
            if config.unmasked and (probe["masked_lm_weights"] > 0).any():
                raise ValueError(f"{getattr(source, 'name', 'input')}: data.unmasked=True, but the records have "
                                 "static masks ([MASK] and random tokens in input_ids): write them with "
                                 "create_pretraining_data --no_masking")
            if not config.unmasked and not (probe["masked_lm_weights"] > 0).any():
                raise ValueError(f"{getattr(source, 'name', 'input')}: the first {len(probe['input_ids'])} records "
                                 "have no masked positions (written unmasked, for dynamic masking): set "
                                 "dynamic_masking=True and vocab_file, or write the files with static masks "
                                 "(or set unmasked=True for the left-to-right LM objective)")
        self._position = 0  # of this process's stream: examples handed out in yielded batches
        self._cache: Optional[tuple[int, dict[str, np.ndarray]]] = None  # packing look-ahead
        self._prefetcher: Optional[_Prefetcher] = None

    # -- reading
    def _read(self, start: int, count: int) -> dict[str, np.ndarray]:
        """`count` examples of this process's stream from `start`, masked if dynamic."""
        positions = np.arange(start, start + count)
        records = np.array([self._order[int(j)] for j in positions], dtype=np.int64)
        features = self._source.read(records)
        if self._masker is not None:
            epochs = (self._process_index + self._process_count * positions) // self.num_examples
            features = self._masker(features, epochs.astype(np.uint64), records.astype(np.uint64))
        return features

    def _produce(self, start: int) -> tuple[dict[str, np.ndarray], int]:
        if not self._config.packing:
            batch = self._read(start, self.batch_size)
            if not self._config.next_sentence_prediction:
                batch.pop("next_sentence_labels")
            return batch, start + self.batch_size
        return self._produce_packed(start)

    def _produce_packed(self, start: int) -> tuple[dict[str, np.ndarray], int]:
        c = self._config
        if self._cache is not None and self._cache[0] == start:
            buffer = self._cache[1]
        else:
            buffer = self._read(start, self.batch_size)
        while True:
            lengths = packing.example_lengths(buffer["input_mask"], source=f"examples from position {start}")
            predictions = (buffer["masked_lm_weights"] > 0).sum(axis=1)
            rows = packing.plan_first_fit(lengths, predictions, self.batch_size, c.max_seq_length,
                                          c.max_predictions_per_seq)
            if len(rows) < len(lengths):
                break
            more = self._read(start + len(lengths), self.batch_size)
            buffer = {k: np.concatenate([buffer[k], more[k]]) for k in buffer}
        used = len(rows)
        batch = packing.pack_examples(buffer, rows, self.batch_size, c.max_seq_length, c.max_predictions_per_seq)
        self._cache = (start + used, {k: v[used:] for k, v in buffer.items()})
        return batch, start + used

    # -- the BatchIterator protocol
    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        depth = int(self._config.prefetch_batches)
        if depth <= 0:
            batch, self._position = self._produce(self._position)
            return batch
        if self._prefetcher is None:
            self._prefetcher = _Prefetcher(self._produce, self._position, depth)
        batch, self._position = self._prefetcher.get()
        return batch

    def get_state(self) -> dict:
        """JSON-serialisable position after the batches returned so far (not the prefetched ones)."""
        state = {"version": STATE_VERSION, "seed": self._seed, "num_examples": self.num_examples,
                 "global_batch_size": self._global_batch_size, "packing": bool(self._config.packing),
                 "epoch": (self._process_index + self._process_count * self._position) // self.num_examples}
        if self._config.packing:
            state.update(position=self._position, process_index=self._process_index,
                         process_count=self._process_count)
        else:
            state["global_position"] = self._position * self._process_count
        return state

    def set_state(self, state: dict) -> None:
        """Continues after the batches that `state` (from get_state) had seen."""
        expected = {"version": STATE_VERSION, "seed": self._seed, "num_examples": self.num_examples,
                    "global_batch_size": self._global_batch_size, "packing": bool(self._config.packing)}
        for key, value in expected.items():
            if state.get(key) != value:
                raise ValueError(f"input pipeline state has {key}={state.get(key)!r} but this iterator has {value!r}; "
                                 "it was saved by a different data setup and would not resume exactly")
        if self._config.packing:
            where = (state.get("process_index"), state.get("process_count"))
            if where != (self._process_index, self._process_count):
                raise ValueError(f"a packed stream's state belongs to one process: this is process "
                                 f"{self._process_index} of {self._process_count}, the state is of process "
                                 f"{where[0]} of {where[1]}. Save and restore every process's own state.")
            position = int(state["position"])
        else:
            global_position = int(state["global_position"])
            if global_position % self._process_count:
                raise ValueError(f"global position {global_position} cannot be split over {self._process_count} processes")
            position = global_position // self._process_count
        self._stop_prefetch()
        self._position = position

    def _stop_prefetch(self):
        if self._prefetcher is not None:
            self._prefetcher.stop()
            self._prefetcher = None
        self._cache = None

    def close(self) -> None:
        """Stops the prefetch thread and closes the files."""
        self._stop_prefetch()
        self._source.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # half-built (__init__ raised) or at interpreter exit
            pass
