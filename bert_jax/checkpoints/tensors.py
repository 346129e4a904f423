"""Table-driven import and export between a file's named tensors and our params layout.

A reader (Hugging Face, Google TF) only has to present its file as a `TensorSource`: key
names, their shapes, and a way to read one tensor. Renaming, transposing, head reshapes
and every consistency check happen here, once, driven by `names.TABLE`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from bert_jax.checkpoints import names, validation


@dataclasses.dataclass
class TensorSource:
    path: str  # the file, for messages
    shapes: dict[str, tuple[int, ...]]  # key -> shape as stored
    read: Callable[[str], np.ndarray]  # key -> array as stored


def _key_fn(fmt: str) -> Callable[[names.Rename], str | None]:
    if fmt == "hf":
        return lambda e: e.hf
    if fmt == "tf":
        return lambda e: e.tf
    raise ValueError(f"unknown file format {fmt!r}; expected 'hf' or 'tf'")


def import_params(source: TensorSource, fmt: str, config, config_source: str, dtype=np.float32) -> dict[str, np.ndarray]:
    """File tensors -> flat {our '/'-path: array}, unstacked, in `dtype`."""
    key_of = _key_fn(fmt)
    validation.check_layer_count(source.shapes.keys(), config.num_hidden_layers, source.path, config_source)
    entries = [e for e in names.expand(config.num_hidden_layers) if key_of(e) is not None]
    used = validation.plan(entries, source.shapes.keys(), key_of, source.path)
    label_key = next(key_of(e) for e in entries if e.ours == "classifier/bias")
    sizes = names.dims(config, validation.num_labels_from(source.shapes, label_key))
    validation.check_shapes(used, source.shapes, key_of, sizes, fmt, source.path, config_source)
    dtype = validation.resolve_dtype(dtype)
    flat = {}
    for e in used:
        array = np.asarray(source.read(key_of(e)))
        if not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
            raise validation.CheckpointError(
                f"{source.path}: {key_of(e)!r} holds {array.dtype} values; a weight must be floating point"
            )
        # Widen first so that a bf16/fp16 file converts exactly, then cast to the target.
        array = array.astype(np.float32)
        if (e.hf_transposed if fmt == "hf" else e.tf_transposed):
            array = array.T
        flat[e.ours] = np.ascontiguousarray(array.reshape(names.resolve(e.shape, sizes))).astype(dtype)
    return flat


def export_params(flat: Mapping[str, Any], config, fmt: str, where: str = "params") -> dict[str, np.ndarray]:
    """Flat {our path: array} (checked against the config) -> {file key: float32 array}."""
    validation.check_params(flat, config, where)
    key_of = _key_fn(fmt)
    sizes = names.dims(config, validation.num_labels_from({k: np.shape(v) for k, v in flat.items()}, "classifier/bias"))
    by_path = {e.ours: e for e in names.expand(config.num_hidden_layers)}
    out = {}
    for path, value in flat.items():
        e = by_path[path]
        if key_of(e) is None:
            fmt_name = {"hf": "Hugging Face", "tf": "Google TF"}[fmt]
            raise validation.CheckpointError(
                f"{where}: {path} ({e.group}) has no counterpart in the {fmt_name} BERT format; "
                f"save this model with format='bert_jax'"
            )
        array = np.asarray(value).astype(np.float32).reshape(names.resolve(e.file_shape, sizes))
        if (e.hf_transposed if fmt == "hf" else e.tf_transposed):
            array = array.T
        out[key_of(e)] = np.ascontiguousarray(array)
    return out
