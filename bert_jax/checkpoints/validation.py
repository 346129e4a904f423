"""Matching a set of named tensors against the rename table, with errors a user can act on.

Every check here reports the parameter (our path and the file's key), the shape the config
asks for, the shape found, and the file. Import, export and the bert_jax format share it.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from bert_jax.checkpoints import names

# How many offending entries an error lists before it says "and N more".
_MAX_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit its config."""


def _listing(lines: list[str]) -> str:
    shown = "\n".join(f"  {line}" for line in lines[:_MAX_LISTED])
    if len(lines) > _MAX_LISTED:
        shown += f"\n  ... and {len(lines) - _MAX_LISTED} more"
    return shown


# ------------------------------------------------------------------ params trees
def unwrap_variables(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accepts either the params tree or Flax's {'params': tree} variables dict."""
    if set(params.keys()) == {"params"}:
        return params["params"]
    return params


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'bert': {'pooler': {'dense': {'kernel': x}}}} -> {'bert/pooler/dense/kernel': x}."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


# ------------------------------------------------------------------ matching
def plan(
    entries: Iterable[names.Rename],
    available: Iterable[str],
    key_of: Callable[[names.Rename], str | None],
    where: str,
    required_groups: Iterable[str] = (names.ENCODER,),
) -> list[names.Rename]:
    """The table entries a set of keys holds, raising on a missing or an unexpected key.

    A group (encoder, pooler, MLM head, ...) is all or nothing: one key of a group present
    means every key of it must be. `where` names the file or tree in messages.
    """
    available = set(available)
    entries = [e for e in entries if key_of(e) is not None]
    groups: dict[str, list[names.Rename]] = {}
    for e in entries:
        groups.setdefault(e.group, []).append(e)
    present = [g for g, es in groups.items() if g in required_groups or any(key_of(e) in available for e in es)]
    missing = [f"{key_of(e)} ({e.group})" for g in present for e in groups[g] if key_of(e) not in available]
    if missing:
        raise CheckpointError(f"{where} is missing {len(missing)} parameter(s) that the config asks for:\n{_listing(missing)}")
    used = [e for g in present for e in groups[g]]
    unexpected = sorted(available - {key_of(e) for e in used})
    if unexpected:
        hint = ""
        if any(("layer.") in k or ("layer_") in k for k in unexpected):
            hint = " (a layer index beyond the config's num_hidden_layers means the config has too few layers)"
        raise CheckpointError(
            f"{where} holds {len(unexpected)} parameter(s) that the config does not have{hint}:\n{_listing(unexpected)}"
        )
    return used


def expected_shape(entry: names.Rename, sizes: dict[str, int], in_file: str | None) -> tuple[int, ...]:
    """Our shape (in_file=None), or the raw shape in an 'hf' / 'tf' file."""
    if in_file is None:
        return names.resolve(entry.shape, sizes)
    shape = names.resolve(entry.file_shape, sizes)
    transposed = entry.hf_transposed if in_file == "hf" else entry.tf_transposed
    return shape[::-1] if transposed else shape


def num_labels_from(shapes: Mapping[str, tuple[int, ...]], key: str | None) -> int | None:
    """The label count of a classifier head, read from its bias (the config does not hold it)."""
    if key is not None and key in shapes and len(shapes[key]) == 1:
        return int(shapes[key][0])
    return None


def check_shapes(
    used: list[names.Rename],
    shapes: Mapping[str, tuple[int, ...]],
    key_of: Callable[[names.Rename], str],
    sizes: dict[str, int],
    in_file: str | None,
    where: str,
    config_source: str,
) -> None:
    bad = []
    for e in used:
        want = expected_shape(e, sizes, in_file)
        got = tuple(shapes[key_of(e)])
        if got != want:
            label = e.ours if key_of(e) == e.ours else f"{e.ours} (key {key_of(e)!r})"
            bad.append(f"{label}: config expects shape {want}, found {got}")
    if bad:
        raise CheckpointError(f"{where} does not fit the config ({config_source}):\n{_listing(bad)}")


# A layer index in our names (layer_3/), Hugging Face's (layer.3.) and Google's (layer_3/).
_LAYER_INDEX = re.compile(r"(?:^|[/.])layer[._](\d+)(?:[/.]|$)")


def check_layer_count(keys: Iterable[str], num_layers, where: str, config_source: str = "the config") -> None:
    """The config's layer count against the layers the file holds, before the rename table is
    expanded per layer (num_hidden_layers=1e9 would expand a billion entries)."""
    indices = {int(m.group(1)) for k in keys for m in [_LAYER_INDEX.search(k)] if m}
    if not indices:
        return  # not a layered file; plan() names what is missing
    found = max(indices) + 1
    if not isinstance(num_layers, int) or num_layers > found:  # fewer: plan() lists the extra layers' keys
        raise CheckpointError(
            f"{where}: {config_source} asks for num_hidden_layers={num_layers!r}, the weights hold "
            f"{found} layers (layer 0..{found - 1}); set num_hidden_layers={found} or use a matching checkpoint")


def check_finite(flat: Mapping[str, Any], where: str) -> None:
    """NaN or Inf weights load silently and train to NaN; refuse them at load, naming each."""
    bad = []
    for name, value in flat.items():
        array = np.asarray(value)
        if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
            finite = np.isfinite(array.astype(np.float32) if array.dtype.name == "bfloat16" else array)
            if not finite.all():
                bad.append(f"{name}: {int(array.size - finite.sum())} of {array.size} values are NaN or Inf")
    if bad:
        raise CheckpointError(f"{where} holds non-finite weights (pass allow_nonfinite=True to load them anyway):\n"
                              f"{_listing(bad)}")


def check_params(flat: Mapping[str, Any], config, where: str = "params", config_source: str = "the config") -> None:
    """Checks a flat params dict (our layout, unstacked) against the table and the config."""
    check_layer_count(flat.keys(), config.num_hidden_layers, where, config_source)
    entries = list(names.expand(config.num_hidden_layers))
    if not config.pre_layer_norm:
        entries = [e for e in entries if e.group != names.FINAL_LN]
    required = (names.ENCODER, names.FINAL_LN) if config.pre_layer_norm else (names.ENCODER,)
    used = plan(entries, flat.keys(), lambda e: e.ours, where, required)
    shapes = {k: tuple(np.shape(v)) for k, v in flat.items()}
    sizes = names.dims(config, num_labels_from(shapes, "classifier/bias"))
    check_shapes(used, shapes, lambda e: e.ours, sizes, None, where, config_source)


def resolve_dtype(dtype) -> np.dtype:
    """np.float32, 'float32', 'bfloat16', jnp.bfloat16 ... -> a numpy dtype."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def require_file(directory: str, filename: str, what: str) -> str:
    path = os.path.join(directory, filename)
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} directory {directory} has no {filename}; found: {sorted(os.listdir(directory))}")
    return path
