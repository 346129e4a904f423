"""The pretraining input pipeline: numpy batches for the trainer, deterministic and resumable.

    it = make_pretraining_iterator(data_config, global_batch_size=256, seed=0,
                                   process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)              # dict of numpy arrays, this process's 256 // process_count rows
    state = it.get_state()        # JSON-serialisable; save it with the training checkpoint
    it.set_state(state)           # the next batches are exactly those of an uninterrupted run

Why grain's index sampling, not tf.data. Exact mid-epoch resume is easy when the order of the
examples is a pure function of (seed, position in the stream): the state is then one integer.
grain's `MapDataset.range(n).seed(s).shuffle().repeat()` is exactly that: its index_shuffle
is a keyed bijection of [0, n) computed per index (4 rounds, O(1) memory, n < 2**32), with the
key seed + epoch so every epoch has a new order; any position is random access, and slicing
`[process_index::process_count]` shards it over hosts. tf.data can resume only by saving its
iterator as a TF checkpoint (shuffle buffers included, not JSON, tied to the graph), and a
`shuffle(buffer)` mixes only nearby records. So the data is read by random access:
* Google-format ArrayRecord files (create_pretraining_data's default): grain's
  `ArrayRecordDataSource`, random access from each file's own index, so opening is instant
  whatever the record count (no scan); a batch is one batched read + one `tf.io.parse_example`.
* Google-format TFRecord files: an offset index of every record is built at start (a scan of the
  12-byte record headers, `tfrecord_io.record_offsets`; minutes per process at 10^8 records), then
  a batch is a seek + read per record + one `tf.io.parse_example`. Record checksums are verified;
  a damaged record is reported by file and record number.
* TFDS datasets by name, through `tfds.data_source` (array_record files, random access).
Files may be local or remote (etils.epath: gs://, ...). grain's ArrayRecord reader opens local
files, so on a cluster mount the bucket (gcsfuse, as MaxText does) or copy the shards first.
Everything after reading (dynamic masking, packing) is a numpy function of the examples and
their (epoch, record index), so it resumes exactly too. Only grain's index order is used: batches
are read, masked and packed a whole batch at a time in numpy (one parse call, one masking call),
which grain's per-element map/iterator chain would not do, and the state stays one integer. A background thread prefetches batches
into a bounded queue; the state counts only the batches already returned by `next`.

Sharding. Global stream position g holds record `order[g]`. Process p reads positions
p, p + P, p + 2P, ... only, and its k-th batch holds its positions k*b .. k*b + b - 1
(b = global_batch_size / P). The union of the processes' k-th batches is therefore the k-th
global batch of a single-process run, and no two processes read the same position. Without
packing every process is at the same position, so the state is the same everywhere (and it
carries the global position, so a run may resume on another number of processes with the same
global batch size). With packing a batch consumes a variable number of examples, so each process
has its own state: save every process's `get_state()` and give each its own back.

Two-phase sequence length (BERT: 90% of steps at 128, then 10% at 512). Instances are written
once per length (`create_pretraining_data --max_seq_length 128/512`), and `input_files` may hold
`{max_seq_length}`, e.g. `data/seq{max_seq_length}/*.tfrecord`. Phase 2 is then the same
experiment with `--config.data.max_seq_length=512 --config.data.max_predictions_per_seq=80`,
started from the phase-1 checkpoint. Files written for another length are refused at start,
with the file, the feature, the expected and the found length.

Data config fields (`default_data_config()`; defaults are the BERT paper's values):
  input_files              glob(s) of Google-format ArrayRecord or TFRecord files, comma-separated;
                           may hold {max_seq_length}
  tfds_name                or a TFDS dataset by name (array_record), with the same features
  tfds_split, tfds_data_dir
  max_seq_length           128 (phase 1) or 512 (phase 2)
  max_predictions_per_seq  20 at 128, 80 at 512; the width of the masked_lm_* features
  next_sentence_prediction True; False for RoBERTa-style training (required by packing)
  dynamic_masking          False = the masks in the files (static, Google); True = a new mask
                           every epoch, a function of (seed, epoch, record index) (RoBERTa)
  unmasked                 False; True = the tokens as written, with no masked positions, for
                           an objective that makes its own targets (the left-to-right LM); the
                           files must be written unmasked (create_pretraining_data --no_masking)
  masked_lm_prob           0.15 (0.3 for MosaicBERT); dynamic masking only
  mask_token_prob, random_token_prob   0.8, 0.1; dynamic masking only
  whole_word_masking       False; dynamic masking only (needs vocab_file)
  mask_count_includes_specials  True = Google's count of predictions, round(len(tokens) * p)
                           with [CLS]/[SEP]; False = p times the non-special tokens
  vocab_file               vocab.txt or SentencePiece .model: [MASK], specials, "##" continuations
  packing                  False; True packs short examples into rows (`packing.py`)
  shuffle                  True: a new permutation of all records every epoch
  prefetch_batches         2: batches prepared ahead in a background thread (0 = none)

Batches use Google's feature names: input_ids, input_mask, segment_ids [b, L] int32;
masked_lm_positions, masked_lm_ids [b, P] int32, masked_lm_weights [b, P] float32;
next_sentence_labels [b] int32 (not with packing); position_ids, packed_segment_ids [b, L]
int32 (only with packing).
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from typing import Any, Callable, Optional

import ml_collections
import numpy as np

from etils import epath

from data_pipelines import files as files_lib
from data_pipelines import masking, packing, record_files, tfrecord_io

STATE_VERSION = 1


def default_data_config() -> ml_collections.ConfigDict:
    """The pretraining data fields, with the BERT paper's values."""
    return ml_collections.ConfigDict({
        "input_files": "",
        "tfds_name": "",
        "tfds_split": "train",
        "tfds_data_dir": "",
        "max_seq_length": 128,
        "max_predictions_per_seq": 20,
        "next_sentence_prediction": True,
        "dynamic_masking": False,
        "unmasked": False,
        "masked_lm_prob": masking.MASKED_LM_PROB,
        "mask_token_prob": masking.MASK_TOKEN_PROB,
        "random_token_prob": masking.RANDOM_TOKEN_PROB,
        "whole_word_masking": False,
        "mask_count_includes_specials": True,
        "vocab_file": "",
        "packing": False,
        "shuffle": True,
        "prefetch_batches": 2,
    })


def resolve_data_config(data_config: Any) -> ml_collections.ConfigDict:
    """Fills defaults and refuses unknown (misspelled) fields and contradictory settings."""
    config = default_data_config()
    given = dict(data_config.items()) if data_config is not None else {}
    unknown = sorted(set(given) - set(config))
    if unknown:
        raise ValueError(f"data config has unknown field(s) {unknown}; known fields: {sorted(config)}")
    for key, value in given.items():
        config[key] = value
    if bool(config.input_files) == bool(config.tfds_name):
        raise ValueError("data config needs exactly one of input_files (TFRecord globs) or tfds_name; got "
                         f"input_files={config.input_files!r}, tfds_name={config.tfds_name!r}")
    if config.packing and config.next_sentence_prediction:
        raise ValueError("packing=True puts several examples in one row, which then has no single "
                         "next_sentence_label: set next_sentence_prediction=False (RoBERTa-style) or packing=False")
    if config.unmasked and config.dynamic_masking:
        raise ValueError("unmasked=True reads the tokens with no masks, dynamic_masking=True masks them at load "
                         "time: set one of them")
    if not config.dynamic_masking:
        defaults = default_data_config()
        changed = [k for k in ("masked_lm_prob", "mask_token_prob", "random_token_prob", "whole_word_masking",
                               "mask_count_includes_specials") if config[k] != defaults[k]]
        if changed:
            raise ValueError(f"{changed} take effect only with dynamic_masking=True; static masks come from the "
                             "files (set them in create_pretraining_data instead)")
    elif not config.vocab_file:
        raise ValueError("dynamic_masking=True needs vocab_file (for the [MASK] id, the special tokens and words)")
    masking.validate_masking_args(config.masked_lm_prob, config.max_predictions_per_seq,
                                  config.mask_token_prob, config.random_token_prob)
    return config


# ----------------------------------------------------------------------------- reading
def feature_lengths(max_seq_length: int, max_predictions_per_seq: int) -> dict[str, tuple[int, str]]:
    """Google's TFRecord features: name -> (length, what sets that length)."""
    seq = (max_seq_length, "max_seq_length")
    pred = (max_predictions_per_seq, "max_predictions_per_seq")
    return {"input_ids": seq, "input_mask": seq, "segment_ids": seq, "masked_lm_positions": pred,
            "masked_lm_ids": pred, "masked_lm_weights": pred, "next_sentence_labels": (1, "one label")}


FLOAT_FEATURES = ("masked_lm_weights",)


def expand_input_files(pattern: str, max_seq_length: int) -> list[str]:
    """Files matching comma-separated globs (local or gs://); `{max_seq_length}` is filled in."""
    return files_lib.expand_paths(str(pattern).format(max_seq_length=max_seq_length), what="input_files")


class _TFRecordReader:
    """Raw records of TFRecord files by global index, from an offset index built by a header scan."""

    def __init__(self, paths: list[str]):
        index = [tfrecord_io.record_offsets(p) for p in paths]
        self.paths = paths
        self._offsets = [o for o, _ in index]
        self._sizes = [s for _, s in index]
        self.counts = [len(o) for o in self._offsets]
        self._files: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _file(self, f: int):
        with self._lock:
            if f not in self._files:
                self._files[f] = epath.Path(self.paths[f]).open("rb")
            return self._files[f]

    def read(self, indices: np.ndarray, file_of: np.ndarray, record_of: np.ndarray) -> list[bytes]:
        del indices  # located by (file, record)
        out = []
        for f, k in zip(file_of.tolist(), record_of.tolist()):
            handle = self._file(f)
            with self._lock:  # seek + read on a shared handle
                out.append(tfrecord_io.read_record_at(handle, int(self._offsets[f][k]), int(self._sizes[f][k]),
                                                      f"{self.paths[f]}: record {k}"))
        return out

    def close(self):
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()


class _ArrayRecordReader:
    """Raw records of ArrayRecord files through grain's ArrayRecordDataSource: each file's own
    index gives random access, so opening costs the same for 10^3 or 10^9 records."""

    def __init__(self, paths: list[str]):
        import grain

        self.paths = paths
        self._source = grain.sources.ArrayRecordDataSource([files_lib.local_copy(p) for p in paths])
        self.counts = self._per_file_counts()

    def _per_file_counts(self) -> list[int]:
        from array_record.python.array_record_module import ArrayRecordReader

        counts = []
        for path in self.paths:
            reader = ArrayRecordReader(files_lib.local_copy(path))
            counts.append(reader.num_records())
            reader.close()
        return counts

    def read(self, indices: np.ndarray, file_of: np.ndarray, record_of: np.ndarray) -> list[bytes]:
        del file_of, record_of  # grain indexes the files' records globally, in the same order
        return self._source.__getitems__(indices.tolist())

    def close(self):
        pass


class ExampleFileSource:
    """Random access to the tf.train.Example records of Google-format ArrayRecord or TFRecord files."""

    def __init__(self, files: list[str], max_seq_length: int, max_predictions_per_seq: int):
        import tensorflow as tf

        self._tf = tf
        self.files = list(files)
        formats = {record_files.format_of(f) for f in self.files}
        if len(formats) > 1:
            raise ValueError(f"input_files mixes {' and '.join(sorted(formats))} files ({self.files[:3]}...); "
                             "give one format")
        self.format = formats.pop()
        self._reader = (_ArrayRecordReader if self.format == "array_record" else _TFRecordReader)(self.files)
        self.lengths = feature_lengths(max_seq_length, max_predictions_per_seq)
        self._starts = np.concatenate([[0], np.cumsum(self._reader.counts)]).astype(np.int64)
        self.name = f"input_files {self.files[0]}" + (f" and {len(self.files) - 1} more" if len(self.files) > 1 else "")
        if self._starts[-1] == 0:
            raise ValueError(f"input_files: the {len(self.files)} file(s) hold no records: {self.files[:3]}")
        self._spec = {name: tf.io.FixedLenFeature([n], tf.float32 if name in FLOAT_FEATURES else tf.int64)
                      for name, (n, _) in self.lengths.items()}
        # Fail at start, not at step 10,000: check one record of every file (e.g. the phase's length).
        for i, start in enumerate(self._starts[:-1]):
            if self._starts[i + 1] > start:
                self.read(np.array([start]))

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[str, int]:
        """(file, record number inside it) of a global record index."""
        file_index = int(np.searchsorted(self._starts, index, side="right") - 1)
        return self.files[file_index], int(index - self._starts[file_index])

    def close(self):
        self._reader.close()

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Parsed features of the given records: [n, length] arrays (int32, weights float32)."""
        indices = np.asarray(indices, np.int64)
        file_of = np.searchsorted(self._starts, indices, side="right") - 1
        serialized = self._reader.read(indices, file_of, indices - self._starts[file_of])
        try:
            parsed = self._tf.io.parse_example(serialized, self._spec)
        except self._tf.errors.InvalidArgumentError as error:
            for i, record in zip(indices, serialized):
                self._diagnose(int(i), record)
            raise ValueError(f"records {[self.locate(int(i)) for i in indices[:4]]}...: {error.message}") from None
        out = {name: value.numpy() for name, value in parsed.items()}
        for name in out:
            out[name] = out[name].astype(np.float32 if name in FLOAT_FEATURES else np.int32)
        out["next_sentence_labels"] = out["next_sentence_labels"][:, 0]
        return out

    def _diagnose(self, index: int, record: bytes) -> None:
        """Raises a ValueError naming the file, record and feature that do not parse."""
        path, number = self.locate(index)
        try:
            example = self._tf.train.Example.FromString(record)
        except Exception as error:  # a damaged record: protobuf's own error type varies
            raise ValueError(f"{path}: record {number} is not a tf.train.Example ({error})") from None
        features = example.features.feature
        for name, (expected, why) in self.lengths.items():
            if name not in features:
                raise ValueError(f"{path}: record {number} lacks feature {name!r} (has {sorted(features)})")
            kind = features[name].WhichOneof("kind")
            wanted = "float_list" if name in FLOAT_FEATURES else "int64_list"
            if kind != wanted:
                raise ValueError(f"{path}: record {number}: feature {name!r} is a {kind}, expected a {wanted}")
            found = len(getattr(features[name], kind).value)
            if found != expected:
                raise ValueError(f"{path}: record {number}: feature {name!r} has {found} values, expected "
                                 f"{expected} ({why}); were these files written for another max_seq_length "
                                 "or max_predictions_per_seq (phase)?")


class TFDSSource:
    """Random access to a TFDS dataset (array_record) whose examples hold Google's features."""

    def __init__(self, name: str, split: str, data_dir: Optional[str], max_seq_length: int,
                 max_predictions_per_seq: int):
        import tensorflow_datasets as tfds

        self.name = f"TFDS dataset {name}[{split}]"
        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir or None)
        except Exception as error:
            raise ValueError(f"{self.name} (data_dir={data_dir!r}) cannot be opened for random access: "
                             f"{error}. It must be prepared with file_format='array_record'.") from error
        self.lengths = feature_lengths(max_seq_length, max_predictions_per_seq)
        if len(self._source) == 0:
            raise ValueError(f"{self.name} is empty")
        self.read(np.array([0]))

    def __len__(self) -> int:
        return len(self._source)

    def close(self):
        pass

    def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        keys = [int(i) for i in indices]
        getitems = getattr(self._source, "__getitems__", None)  # one batched read from array_record
        records = getitems(keys) if getitems else [self._source[i] for i in keys]
        out = {}
        for name, (expected, why) in self.lengths.items():
            values = []
            for i, record in zip(indices, records):
                if name not in record:
                    raise ValueError(f"{self.name}: example {i} lacks feature {name!r} "
                                     f"(has {sorted(record)})")
                value = np.asarray(record[name]).reshape(-1)
                if value.shape[0] != expected:
                    raise ValueError(f"{self.name}: example {i}: feature {name!r} has "
                                     f"{value.shape[0]} values, expected {expected} ({why})")
                values.append(value)
            out[name] = np.stack(values).astype(np.float32 if name in FLOAT_FEATURES else np.int32)
        out["next_sentence_labels"] = out["next_sentence_labels"][:, 0]
        return out


# ----------------------------------------------------------------------------- transforms
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


# ----------------------------------------------------------------------------- iterators
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


def make_pretraining_iterator(data_config, global_batch_size: int, seed: int, process_index: int = 0,
                              process_count: int = 1) -> PretrainingBatchIterator:
    """The iterator the trainer calls; `data_config` fields are listed in the module docstring.

    Args:
      data_config: ml_collections.ConfigDict (or dict) with fields of `default_data_config()`;
        missing fields take the defaults, unknown fields are an error.
      global_batch_size: rows per step over all processes; this process yields
        global_batch_size // process_count rows.
      seed: the data order and the dynamic masks are a function of it.
      process_index, process_count: `jax.process_index()`, `jax.process_count()`.
    """
    config = resolve_data_config(data_config)
    if config.input_files:
        files = expand_input_files(config.input_files, config.max_seq_length)
        source = ExampleFileSource(files, config.max_seq_length, config.max_predictions_per_seq)
    else:
        source = TFDSSource(config.tfds_name, config.tfds_split, config.tfds_data_dir,
                            config.max_seq_length, config.max_predictions_per_seq)
    try:
        return PretrainingBatchIterator(source, config, global_batch_size, seed, process_index, process_count)
    except Exception:
        source.close()
        raise


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


# ----------------------------------------------------------------------------- benchmark
def write_benchmark_records(directory: str, num_records: int, num_files: int, max_seq_length: int,
                            max_predictions_per_seq: int, vocab_file: str, output_format: str = "array_record",
                            seed: int = 0) -> str:
    """Google-format records of random tokens (lengths: 90% full, 10% short, as short_seq_prob); returns a glob."""
    vocab = masking.MaskingVocab.from_vocab_file(vocab_file)
    with open(vocab_file, encoding="utf-8") as f:
        token_ids = {line.rstrip("\r\n"): i for i, line in enumerate(f)}
    extension = record_files.FORMATS[output_format]
    chunk = 8192
    for f in range(num_files):
        rows = range(f, num_records, num_files)
        with record_files.ShardWriter(os.path.join(directory, f"bench-{f:05d}{extension}")) as writer:
            for start in range(0, len(rows), chunk):
                rng = np.random.default_rng([seed, f, start])
                n = len(rows[start:start + chunk])
                lengths = np.where(rng.random(n) < 0.1, rng.integers(8, max_seq_length, n), max_seq_length)
                ids = rng.integers(1000, vocab.vocab_size, (n, max_seq_length))
                ids[np.arange(max_seq_length)[None, :] >= lengths[:, None]] = vocab.pad_id
                ids[:, 0] = token_ids["[CLS]"]
                ids[np.arange(n), lengths // 2] = token_ids["[SEP]"]
                ids[np.arange(n), lengths - 1] = token_ids["[SEP]"]
                segments = (np.arange(max_seq_length)[None, :] > (lengths // 2)[:, None]) & (ids != vocab.pad_id)
                masked = masking.mask_batch(ids, None, vocab, rng=rng, max_predictions_per_seq=max_predictions_per_seq)
                features = {"input_ids": masked["input_ids"], "input_mask": (ids != vocab.pad_id).astype(np.int64),
                            "segment_ids": segments.astype(np.int64),
                            "masked_lm_positions": masked["masked_lm_positions"],
                            "masked_lm_ids": masked["masked_lm_ids"],
                            "masked_lm_weights": masked["masked_lm_weights"].astype(np.float32),
                            "next_sentence_labels": (np.arange(n) % 2).reshape(n, 1)}
                for record in tfrecord_io.encode_examples(features):
                    writer.write(record)
    return os.path.join(directory, f"bench-*{extension}")


def main(argv=None) -> None:
    """Prints the loader's throughput: `python -m data_pipelines.input_pipeline --vocab_file V`."""
    import argparse
    import tempfile
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--vocab_file", required=True)
    parser.add_argument("--input_files", default="", help="Google-format record files; default: write random ones")
    parser.add_argument("--format", default="array_record", choices=sorted(record_files.FORMATS),
                        help="format of the random records written when --input_files is not given")
    parser.add_argument("--startup_only", action="store_true",
                        help="print only the time from opening the files to the first batch")
    parser.add_argument("--num_records", type=int, default=20000)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--max_predictions_per_seq", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args(argv)

    import tensorflow  # noqa: F401  (imported once here, so that "index" times the index alone)

    with tempfile.TemporaryDirectory() as tmp:
        files = args.input_files or write_benchmark_records(
            tmp, args.num_records, 8, args.max_seq_length, args.max_predictions_per_seq, args.vocab_file,
            args.format)
        if args.startup_only:
            config = default_data_config()
            config.update(input_files=files, max_seq_length=args.max_seq_length,
                          max_predictions_per_seq=args.max_predictions_per_seq, prefetch_batches=0)
            start = time.perf_counter()
            iterator = make_pretraining_iterator(config, args.batch_size, seed=0)
            next(iterator)
            seconds = time.perf_counter() - start
            print(f"{files}: {iterator.num_examples} records, first batch of {args.batch_size} "
                  f"{seconds:.3f} s after opening (TensorFlow already imported)")
            iterator.close()
            return
        variants = {
            "static masks": {},
            "dynamic masking": {"dynamic_masking": True},
            "dynamic whole-word masking": {"dynamic_masking": True, "whole_word_masking": True},
            "packing (NSP off)": {"packing": True, "next_sentence_prediction": False},
        }
        for name, overrides in variants.items():
            config = default_data_config()
            config.update(input_files=files, max_seq_length=args.max_seq_length, vocab_file=args.vocab_file,
                          max_predictions_per_seq=args.max_predictions_per_seq, prefetch_batches=0, **overrides)
            start = time.perf_counter()
            iterator = make_pretraining_iterator(config, args.batch_size, seed=0)
            opened = time.perf_counter() - start
            next(iterator)
            start = time.perf_counter()
            tokens = 0
            for _ in range(args.batches):
                tokens += int(next(iterator)["input_mask"].sum())
            seconds = time.perf_counter() - start
            iterator.close()
            print(f"{name:28s} index {iterator.num_examples} records in {opened:.2f}s | "
                  f"{args.batches / seconds:7.1f} batches/s of {args.batch_size} x {args.max_seq_length} | "
                  f"{tokens / seconds / 1e6:6.2f} M real tokens/s (one thread, no prefetch)")


if __name__ == "__main__":
    main()
