"""TFRecord files of `tf.train.Example`s, written and read without importing TensorFlow.

Importing TensorFlow costs seconds per process, which would dominate the instance-creation
command. The two formats are small and stable, so they are implemented here:

* TFRecord framing: `uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)`
  (little endian; crc32c from `google-crc32c`). This is the one implementation of it: the writer,
  the sequential reader and the offset index that the input pipeline's random access uses.
* `tf.train.Example` / `Features` / `Feature` messages: declared below from the field numbers of
  tensorflow/core/example/{example,feature}.proto in a private protobuf descriptor pool (so it
  never clashes with TensorFlow's own registration), then parsed/serialised by protobuf's C
  implementation.

Files written here are read by `tf.data.TFRecordDataset` + `tf.io.parse_single_example`, and files
written by TensorFlow (e.g. Google's create_pretraining_data.py) are read here (tests check both).

Google's pretraining features: int64 `input_ids, input_mask, segment_ids, masked_lm_positions,
masked_lm_ids, next_sentence_labels`, float `masked_lm_weights`.
"""

from __future__ import annotations

import functools
import os
import struct
from typing import Iterator, Mapping

import numpy as np
from etils import epath

PRETRAINING_INT_FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions",
                            "masked_lm_ids", "next_sentence_labels")
PRETRAINING_FLOAT_FEATURES = ("masked_lm_weights",)
PRETRAINING_FEATURES = PRETRAINING_INT_FEATURES + PRETRAINING_FLOAT_FEATURES


# ----------------------------------------------------------------------------- protobuf messages
@functools.lru_cache(maxsize=1)
def example_class():
    """The `tf.train.Example` message class, built from a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="bert_jax/tf_example.proto", package="tensorflow",
                                              syntax="proto3")

    def message(name, fields, nested=()):
        m = file.message_type.add(name=name)
        for nm in nested:
            m.nested_type.add().CopyFrom(nm)
        for field_name, number, ftype, label, type_name, packed in fields:
            fd = m.field.add(name=field_name, number=number, type=ftype, label=label)
            if type_name:
                fd.type_name = type_name
            if packed:
                fd.options.packed = True
        return m

    rep, opt = f.LABEL_REPEATED, f.LABEL_OPTIONAL
    message("BytesList", [("value", 1, f.TYPE_BYTES, rep, None, False)])
    message("FloatList", [("value", 1, f.TYPE_FLOAT, rep, None, True)])
    message("Int64List", [("value", 1, f.TYPE_INT64, rep, None, True)])
    feature = message("Feature", [("bytes_list", 1, f.TYPE_MESSAGE, opt, ".tensorflow.BytesList", False),
                                  ("float_list", 2, f.TYPE_MESSAGE, opt, ".tensorflow.FloatList", False),
                                  ("int64_list", 3, f.TYPE_MESSAGE, opt, ".tensorflow.Int64List", False)])
    feature.oneof_decl.add(name="kind")
    for fd in feature.field:
        fd.oneof_index = 0
    entry = descriptor_pb2.DescriptorProto(name="FeatureEntry", options=descriptor_pb2.MessageOptions(map_entry=True))
    entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=f.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    message("Features", [("feature", 1, f.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", False)],
            nested=[entry])
    message("Example", [("features", 1, f.TYPE_MESSAGE, opt, ".tensorflow.Features", False)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def encode_example(features: Mapping[str, np.ndarray]) -> bytes:
    """Serialises a dict of 1-D arrays: integer arrays as int64_list, floating ones as float_list."""
    example = example_class()()
    fmap = example.features.feature
    for name, values in features.items():
        values = np.asarray(values).reshape(-1)
        if np.issubdtype(values.dtype, np.floating):
            fmap[name].float_list.value.extend(values.tolist())
        elif np.issubdtype(values.dtype, np.integer) or values.dtype == bool:
            fmap[name].int64_list.value.extend(values.astype(np.int64).tolist())
        else:
            raise TypeError(f"feature {name!r}: expected integer or float values, got dtype {values.dtype}")
    return example.SerializeToString(deterministic=True)


@functools.lru_cache(maxsize=4096)
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _packed_varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varint bytes of a [N, k] int array, row by row: (all bytes [total] uint8, row starts [N + 1])."""
    v = values.astype(np.int64).astype(np.uint64)  # negatives become 10-byte two's complement, as protobuf
    top = int(v.max()) if v.size else 0
    num_groups = max(1, (top.bit_length() + 6) // 7)
    width = np.ones(v.shape, np.int64)
    for g in range(1, num_groups):
        width += v >= np.uint64(1 << (7 * g))
    groups = np.empty(v.shape + (num_groups,), np.uint8)
    for g in range(num_groups):
        byte = (v >> np.uint64(7 * g)) & np.uint64(0x7F)
        if g < num_groups - 1:
            byte |= np.where(width > g + 1, np.uint64(0x80), np.uint64(0))
        groups[..., g] = byte
    data = groups[np.arange(num_groups) < width[..., None]]
    starts = np.zeros(len(v) + 1, np.int64)
    np.cumsum(width.sum(axis=1), out=starts[1:])
    return data, starts


def encode_examples(features: Mapping[str, np.ndarray]) -> list[bytes]:
    """Serialises N Examples at once from [N, k] arrays (vectorised; same bytes as `encode_example`).

    Integer arrays become packed int64_lists, floating ones packed float_lists, with the features
    in sorted name order, as protobuf's deterministic serialisation writes a map.
    """
    names = sorted(features)
    arrays = {n: np.asarray(features[n]) for n in names}
    arrays = {n: a.reshape(len(a), -1) for n, a in arrays.items()}
    sizes = {len(a) for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"encode_examples: features have different numbers of rows: "
                         f"{ {n: len(a) for n, a in arrays.items()} }")
    num = sizes.pop()
    per_feature = []  # per name: list of N byte strings (the whole map entry)
    for name in names:
        a = arrays[name]
        key = name.encode("utf-8")
        key_part = b"\x0a" + _varint(len(key)) + key
        if np.issubdtype(a.dtype, np.floating):
            payload = a.astype("<f4").tobytes()
            step = 4 * a.shape[1]
            bodies = [payload[i * step:(i + 1) * step] for i in range(num)]
            list_tag = b"\x12"
        elif np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
            data, starts = _packed_varints(a)
            raw = data.tobytes()
            bodies = [raw[starts[i]:starts[i + 1]] for i in range(num)]
            list_tag = b"\x1a"
        else:
            raise TypeError(f"feature {name!r}: expected integer or float values, got dtype {a.dtype}")
        entries = []
        for body in bodies:
            if body:
                inner = b"\x0a" + _varint(len(body)) + body
            else:
                inner = b""
            feature = list_tag + _varint(len(inner)) + inner
            entry = key_part + b"\x12" + _varint(len(feature)) + feature
            entries.append(b"\x0a" + _varint(len(entry)) + entry)
        per_feature.append(entries)
    out = []
    for i in range(num):
        body = b"".join(entries[i] for entries in per_feature)
        out.append(b"\x0a" + _varint(len(body)) + body)
    return out


def decode_example(data: bytes, int_dtype=np.int64) -> dict[str, np.ndarray]:
    """Parses one serialised Example into numpy arrays (int64_list -> int_dtype, float_list -> float32)."""
    example = example_class()()
    example.ParseFromString(data)
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "int64_list":
            out[name] = np.asarray(feature.int64_list.value, dtype=int_dtype)
        elif kind == "float_list":
            out[name] = np.asarray(feature.float_list.value, dtype=np.float32)
        elif kind == "bytes_list":
            out[name] = np.asarray(feature.bytes_list.value, dtype=object)
        else:
            out[name] = np.zeros(0, np.float32)
    return out


# ----------------------------------------------------------------------------- TFRecord framing
_HEADER = struct.Struct("<QI")  # data length, masked crc32c of those 8 bytes


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: crc32c, rotated right by 15 bits, plus 0xA282EAD8."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(record: bytes) -> bytes:
    """One record as it lies in a TFRecord file."""
    header = struct.pack("<Q", len(record))
    return header + struct.pack("<I", masked_crc32c(header)) + record + struct.pack("<I", masked_crc32c(record))


class TFRecordWriter:
    """Appends records to a TFRecord file (uncompressed); any epath path (local, gs://, ...)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._file = epath.Path(self.path).open("wb")

    def write(self, record: bytes) -> None:
        self._file.write(frame_record(record))

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def iter_tfrecord(path: str | os.PathLike, verify: bool = True) -> Iterator[bytes]:
    """The records of one uncompressed TFRecord file; a corrupt or cut file is an error naming it."""
    path = os.fspath(path)
    with epath.Path(path).open("rb") as f:
        index = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise ValueError(f"{path}: record {index} is cut short (header of {len(header)} bytes, expected 12)")
            length, length_crc = _HEADER.unpack(header)
            if verify and length_crc != masked_crc32c(header[:8]):
                raise ValueError(f"{path}: record {index} has a corrupt length header (crc mismatch)")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise ValueError(f"{path}: record {index} is cut short (expected {length} bytes of data)")
            if verify and struct.unpack("<I", footer)[0] != masked_crc32c(data):
                raise ValueError(f"{path}: record {index} has corrupt data (crc mismatch)")
            yield data
            index += 1


def record_offsets(path: str) -> tuple[np.ndarray, np.ndarray]:
    """([n] data offsets, [n] data lengths) of the records of one TFRecord file.

    A scan of the 12-byte headers (no parsing); the length checksums are verified here, the
    data checksums at every read. This is the start-up cost that ArrayRecord files avoid.
    """
    offsets, lengths = [], []
    with epath.Path(path).open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        position = 0
        while position < size:
            if position + 12 > size:
                raise ValueError(f"{path}: truncated TFRecord header at byte {position} (file size {size})")
            f.seek(position)
            header = f.read(12)
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise ValueError(f"{path}: record {len(offsets)} (byte {position}) has a corrupt length header "
                                 "(crc mismatch): not a TFRecord file, or a damaged one")
            if position + 16 + length > size:
                raise ValueError(f"{path}: truncated TFRecord at byte {position}: the header announces {length} "
                                 f"bytes, the file ends {size - position - 12} bytes later")
            offsets.append(position + 12)
            lengths.append(length)
            position += 16 + length
    return np.array(offsets, np.int64), np.array(lengths, np.int64)


def read_record_at(file, offset: int, length: int, where: str) -> bytes:
    """The data of one record whose offset and length came from `record_offsets`, checksum verified."""
    file.seek(offset)
    raw = file.read(length + 4)
    record = raw[:length]
    if len(raw) < length + 4 or masked_crc32c(record) != struct.unpack("<I", raw[length:])[0]:
        raise ValueError(f"{where} has corrupt data (crc mismatch)")
    return record
