"""Record files of serialised `tf.train.Example`s: ArrayRecord (default) or TFRecord, by extension.

* ArrayRecord (`.array_record`): random access from the file's own footer index, so a reader
  opens 10^6 records without a scan; read for training by grain's `ArrayRecordDataSource`, as
  MaxText does. Written with `group_size:1` (each record its own chunk), the setting grain
  recommends for random access.
* TFRecord (`.tfrecord`): Google's `run_pretraining.py` reads it; see `tfrecord_io`.

Shards are written under a temporary name and renamed when complete, so a killed run never
leaves a file that looks finished.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterable, Iterator, Optional

import numpy as np
from etils import epath

from data_pipelines import files, tfrecord_io

FORMATS = {"array_record": ".array_record", "tfrecord": ".tfrecord"}
ARRAY_RECORD_OPTIONS = "group_size:1"
TEMP_SUFFIX = ".incomplete"


def format_of(path: str) -> str:
    """"array_record" or "tfrecord" from the file name; anything else is an error naming the file."""
    for name, extension in FORMATS.items():
        if os.fspath(path).endswith(extension):
            return name
    raise ValueError(f"{path}: not a record file this project reads; expected a name ending in "
                     f"{' or '.join(FORMATS.values())}")


def check_format(output_format: str) -> str:
    if output_format not in FORMATS:
        raise ValueError(f"output_format must be one of {sorted(FORMATS)}, got {output_format!r}")
    return output_format


class ShardWriter:
    """Writes records to `path` (local or remote), visible under that name only once closed cleanly.

    ArrayRecord's writer needs a local file, so a remote shard is written to the local temp dir
    and copied up; a local one is written beside its final name. On an exception the partial
    file is deleted.
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.format = format_of(self.path)
        self._local_dir = tempfile.mkdtemp(prefix="bert_jax_shard_") if files.is_remote(self.path) else None
        self._temp = (os.path.join(self._local_dir, os.path.basename(self.path)) if self._local_dir
                      else self.path + TEMP_SUFFIX)
        if self.format == "array_record":
            from array_record.python.array_record_module import ArrayRecordWriter

            self._writer = ArrayRecordWriter(self._temp, ARRAY_RECORD_OPTIONS)
        else:
            self._writer = tfrecord_io.TFRecordWriter(self._temp)
        self.count = 0

    def write(self, record: bytes) -> None:
        self._writer.write(record)
        self.count += 1

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer.close()
        try:
            if exc_type is not None:
                return
            if self._local_dir:
                files.copy(self._temp, self.path + TEMP_SUFFIX)
                epath.Path(self.path + TEMP_SUFFIX).rename(self.path)
            else:
                os.replace(self._temp, self.path)
        finally:
            if self._local_dir:
                shutil.rmtree(self._local_dir, ignore_errors=True)
            elif exc_type is not None and os.path.exists(self._temp):
                os.remove(self._temp)


class ShardReadError(ValueError):
    """A shard that cannot be read; the message names the file (and the record where known)."""


def shard_error(path: str, error: Exception, record: Optional[int] = None) -> ShardReadError:
    """`error` re-worded to name the shard: array_record's own messages ("Corrupted Riegeli/records
    file: chunk header hash mismatch") name no file, and a run reads hundreds of shards."""
    where = f"{path}" + (f": record {record}" if record is not None else "")
    return ShardReadError(f"{where}: cannot read this {format_of(path)} shard, damaged or cut short? "
                          f"({type(error).__name__}: {error})")


def open_array_record(path: str):
    """An `ArrayRecordReader` on one file whose footer index was read; else a `ShardReadError`.

    A cut file opens without an exception, reports 0 records and `ok() == False`: it would read
    as an empty shard, so it is refused here."""
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        reader = ArrayRecordReader(files.local_copy(path))
        if not reader.ok():
            reader.read([0])  # raises riegeli's own account of the damage
            raise RuntimeError("the footer index cannot be read")
    except ShardReadError:
        raise
    except Exception as error:  # riegeli's RuntimeError names no file
        raise shard_error(path, error) from error
    return reader


def array_record_count(path: str) -> int:
    """Number of records of one ArrayRecord file, from its footer index (no scan)."""
    reader = open_array_record(path)
    try:
        return reader.num_records()
    finally:
        reader.close()


def first_unreadable(read_one, indices: Iterable[int]) -> Optional[int]:
    """The first of `indices` whose `read_one(index)` raises, or None: after a batched read failed,
    this finds the record to name (the error path only, so one read per record is affordable)."""
    for index in indices:
        try:
            read_one(index)
        except Exception:
            return index
    return None


def iter_records(path: str) -> Iterator[bytes]:
    """Every record of one file, in order; a damaged file is a `ShardReadError` naming it."""
    if format_of(path) == "tfrecord":
        yield from tfrecord_io.iter_tfrecord(path)  # names the file and record itself
        return
    reader = open_array_record(path)
    try:
        total = reader.num_records()
        for start in range(0, total, 1024):
            indices = list(range(start, min(start + 1024, total)))
            try:
                records = reader.read(indices)
            except Exception as error:
                record = first_unreadable(lambda i: reader.read([i]), indices)
                raise shard_error(path, error, record=record) from error
            yield from records
    finally:
        reader.close()


def read_pretraining_arrays(patterns: str | Iterable[str], limit: Optional[int] = None) -> dict[str, np.ndarray]:
    """Google-format pretraining files (ArrayRecord or TFRecord) stacked into [n, ...] arrays (int32 / float32).

    At most `limit` examples, in file-name order, record by record."""
    rows = []
    for path in files.expand_paths(patterns):
        if limit is not None and len(rows) >= limit:
            break
        for number, record in enumerate(iter_records(path)):
            if limit is not None and len(rows) >= limit:
                break
            try:
                rows.append(tfrecord_io.decode_example(record, int_dtype=np.int32))
            except Exception as error:  # protobuf's DecodeError names neither file nor record
                raise shard_error(path, error, record=number) from error
    if not rows:
        raise ValueError(f"no examples in {patterns!r}")
    missing = [k for k in tfrecord_io.PRETRAINING_FEATURES if k not in rows[0]]
    if missing:
        raise ValueError(f"{patterns!r}: examples lack the pretraining feature(s) {missing}")
    return {k: np.stack([r[k] for r in rows]) for k in tfrecord_io.PRETRAINING_FEATURES}
