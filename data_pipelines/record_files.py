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
from typing import Iterator

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


def iter_records(path: str) -> Iterator[bytes]:
    """Every record of one file, in order."""
    if format_of(path) == "tfrecord":
        yield from tfrecord_io.iter_tfrecord(path)
        return
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(files.local_copy(path))
    try:
        for start in range(0, reader.num_records(), 1024):
            yield from reader.read(list(range(start, min(start + 1024, reader.num_records()))))
    finally:
        reader.close()
