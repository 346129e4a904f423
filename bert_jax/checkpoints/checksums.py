"""A crc32c of every array of a checkpoint, recorded at save time and checked after restore.

orbax's atomic commit guards against a save cut short, not against bytes changed at rest: a
flipped low bit in a TensorStore chunk restores without error (one leaf off by 1e30, or NaN).
The checksum is over the array's own bytes (C order, its dtype), so it does not depend on the
storage format, the chunking or the mesh the array is restored onto.

Arrays split across processes (multi-host, not fully addressable) are not summed: no one
process holds their bytes. They are recorded as unchecked and `verify` says so.
"""

from __future__ import annotations

from typing import Any, Mapping

import google_crc32c
import numpy as np

from bert_jax.checkpoints.validation import CheckpointError

_CHUNK = 1 << 24  # bytes hashed per call: bounds the extra host memory to 16 MiB per array


class ChecksumMismatch(CheckpointError):
    """A restored array's bytes differ from the ones saved."""


def leaf_name(path) -> str:
    """'params/bert/encoder/layer_0/...' for a jax key path (dataclass fields, dict keys, indices)."""
    parts = []
    for key in path:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _host_array(leaf) -> np.ndarray | None:
    if getattr(leaf, "is_fully_addressable", True) is False:
        return None
    return np.ascontiguousarray(np.asarray(leaf))


def crc32c(array: np.ndarray) -> str:
    flat = array.reshape(-1).view(np.uint8)
    crc = 0
    for start in range(0, flat.size, _CHUNK):
        crc = google_crc32c.extend(crc, flat[start:start + _CHUNK].tobytes())
    return f"{crc:08x}"


def tree_checksums(tree: Any) -> dict[str, dict]:
    """{leaf name: {"crc32c", "dtype", "shape"}} of every array leaf; None for one split across
    processes. Call it on the state being saved, before its buffers are donated."""
    import jax
    out: dict[str, dict | None] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        array = _host_array(leaf)
        out[leaf_name(path)] = None if array is None else {
            "crc32c": crc32c(array), "dtype": str(array.dtype), "shape": list(array.shape)}
    return out


def verify_tree(tree: Any, recorded: Mapping[str, dict | None], where: str, prefix: str = "") -> int:
    """Checks every leaf of `tree` against the saved checksums; returns how many were checked.
    `tree` may be a subtree (the params only: prefix "params/").
    Raises ChecksumMismatch naming the leaves whose bytes, dtype or shape differ, or that have no record."""
    import jax
    bad, checked = [], 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = prefix + leaf_name(path)
        if name not in recorded:
            bad.append(f"{name}: not in the saved checksums")
            continue
        saved = recorded[name]
        array = None if saved is None else _host_array(leaf)
        if array is None:
            continue  # split across processes at save or at restore: not summed
        found = {"crc32c": crc32c(array), "dtype": str(array.dtype), "shape": list(array.shape)}
        if found != dict(saved):
            diff = ", ".join(f"{k} {saved.get(k)} saved, {found[k]} read" for k in found if found[k] != saved.get(k))
            bad.append(f"{name}: {diff}")
        checked += 1
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ChecksumMismatch(f"{where}: {len(bad)} array(s) differ from the checksums recorded at save time: "
                               + "; ".join(bad[:3]) + more)
    return checked
