"""Random-access sources of Google-format pretraining examples: record files or a TFDS dataset.

A source has `len(source)`, `read(indices [n]) -> {feature: [n, width] array}` (int32, weights
float32, `next_sentence_labels` [n]), a `name` for messages, and `close()`. Reads are checked
against the phase's lengths (`feature_lengths`), and every error names the file and record.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import numpy as np
from etils import epath

from data_pipelines import files as files_lib
from data_pipelines import record_files, tfrecord_io


def feature_lengths(max_seq_length: int, max_predictions_per_seq: int) -> dict[str, tuple[int, str]]:
    """Google's TFRecord features: name -> (length, what sets that length)."""
    seq = (max_seq_length, "max_seq_length")
    pred = (max_predictions_per_seq, "max_predictions_per_seq")
    return {"input_ids": seq, "input_mask": seq, "segment_ids": seq, "masked_lm_positions": pred,
            "masked_lm_ids": pred, "masked_lm_weights": pred, "next_sentence_labels": (1, "one label")}


FLOAT_FEATURES = tfrecord_io.PRETRAINING_FLOAT_FEATURES


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
        # Counted (and checked) one file at a time first: grain's own error on a damaged
        # file names none of them.
        self.counts = [record_files.array_record_count(p) for p in paths]
        self._source = grain.sources.ArrayRecordDataSource([files_lib.local_copy(p) for p in paths])

    def read(self, indices: np.ndarray, file_of: np.ndarray, record_of: np.ndarray) -> list[bytes]:
        try:  # grain indexes the files' records globally, in the same order
            return self._source.__getitems__(indices.tolist())
        except Exception as error:  # riegeli's message names no file: find the record that fails
            bad = record_files.first_unreadable(lambda i: self._source.__getitems__([int(indices[i])]),
                                                range(len(indices)))
            if bad is None:
                raise
            raise record_files.shard_error(self.paths[file_of[bad]], error, int(record_of[bad])) from error

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
        try:
            records = getitems(keys) if getitems else [self._source[i] for i in keys]
        except Exception as error:  # tfds's array_record files: riegeli's message names none
            raise ValueError(f"{self.name}: examples {keys[:4]}{'...' if len(keys) > 4 else ''} cannot be read "
                             f"({type(error).__name__}: {error})") from error
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


def open_source(config):
    """The source a resolved data config names: its `input_files` or its TFDS dataset."""
    if config.input_files:
        paths = expand_input_files(config.input_files, config.max_seq_length)
        return ExampleFileSource(paths, config.max_seq_length, config.max_predictions_per_seq)
    return TFDSSource(config.tfds_name, config.tfds_split, config.tfds_data_dir,
                      config.max_seq_length, config.max_predictions_per_seq)
