"""The device mesh, logical-axis rules, and the shardings of params, optimizer state and batches.

The model annotates every parameter and activation with *logical* axis names (params: `vocab,
embed, heads, kv, mlp, layers`; activations: `batch, length, embed, heads, kv, mlp`). A rules
table maps those names onto the three mesh axes `data, fsdp, tensor`. Data parallelism, FSDP and
tensor parallelism differ only in the table (`config.mesh.rules`), never in code.

Rule order matters: flax assigns rules first to last and skips a rule whose mesh axis an earlier
dimension of the same array already took. `batch` comes first, so an activation
`[batch, length, embed]` gives `fsdp` to `batch` and leaves `embed` unsharded, while a parameter
`[embed, mlp]` (no batch axis) gets `embed` over `fsdp`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
# Batches are split over every axis that holds replicas of the computation.
BATCH_AXES = ("data", "fsdp")

LogicalRules = tuple[tuple[str, Any], ...]

_COMMON = (("batch", BATCH_AXES), ("length", None), ("layers", None), ("kv", None))

RULES: dict[str, LogicalRules] = {
    # Every parameter replicated; only the batch is split.
    "data_parallel": _COMMON + (
        ("vocab", None), ("embed", None), ("heads", None), ("mlp", None),
    ),
    # ZeRO-3 style: each parameter (and so its optimizer state) is split over `fsdp` along its
    # hidden dimension; the vocab dimension takes `fsdp` for arrays without an embed dimension
    # (the MLM output bias).
    "fsdp": _COMMON + (
        ("embed", "fsdp"), ("vocab", "fsdp"), ("heads", None), ("mlp", None),
    ),
    # Megatron style: attention heads, the MLP's inner dimension and the vocab split over
    # `tensor`; the hidden dimension is additionally split over `fsdp` when that axis is > 1.
    "tensor": _COMMON + (
        ("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"), ("embed", "fsdp"),
    ),
}


def axis_rules(name: str) -> LogicalRules:
    """The logical-axis rules table called `name` (`config.mesh.rules`)."""
    if name not in RULES:
        raise ValueError(
            f"config.mesh.rules: unknown sharding rules {name!r}; expected one of {sorted(RULES)}")
    return RULES[name]


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Resolves the (data, fsdp, tensor) sizes; at most one of them may be -1 (= the rest)."""
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for axis, size in sizes.items():
        if size == 0 or size < -1:
            raise ValueError(f"config.mesh.{axis}: expected a positive size or -1, found {size}")
    rest = [axis for axis, size in sizes.items() if size == -1]
    if len(rest) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1 (= the rest); found -1 for {rest}")
    known = int(np.prod([size for size in sizes.values() if size != -1]))
    if rest:
        if num_devices % known:
            raise ValueError(
                f"config.mesh: {num_devices} devices do not divide into {sizes} "
                f"(the fixed axes multiply to {known})")
        sizes[rest[0]] = num_devices // known
    shape = (sizes["data"], sizes["fsdp"], sizes["tensor"])
    if int(np.prod(shape)) != num_devices:
        raise ValueError(
            f"config.mesh: data*fsdp*tensor = {int(np.prod(shape))} but there are {num_devices} devices "
            f"(data={shape[0]}, fsdp={shape[1]}, tensor={shape[2]}); use -1 for one axis to take the rest")
    return shape


def make_mesh(mesh_config: Mapping[str, Any], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` over all (or the given) devices with Auto axes `data, fsdp, tensor`.

    `jax.make_mesh` would default to Explicit axes in jax 0.10, which linen's logical
    partitioning does not use, so the Mesh is built directly.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(int(mesh_config["data"]), int(mesh_config["fsdp"]),
                       int(mesh_config["tensor"]), len(devices))
    try:
        from jax.experimental import mesh_utils
        device_array = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
        # Topology-aware placement knows only some platforms; fall back to process-major order.
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """NamedShardings for a tree of logically-annotated (boxed) arrays or ShapeDtypeStructs.

    Unannotated leaves are replicated.
    """
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def opt_state_shardings(tx: optax.GradientTransformation, abstract_params: Any,
                        param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for `tx.init(params)`: param-shaped state (Adam moments, ...) follows its
    parameter's sharding; everything else (step counts, ...) is replicated. A masked state
    (optax.masked / multi_transform, e.g. config.optimizer.frozen_params) holds MaskedNode where
    a parameter has no state: it stays a MaskedNode."""
    abstract_state = jax.eval_shape(tx.init, abstract_params)
    is_masked = lambda x: isinstance(x, optax.MaskedNode)
    return optax.tree_map_params(
        tx,
        lambda state, sharding: state if is_masked(state) else sharding,
        abstract_state,
        param_shardings,
        transform_non_params=lambda _: replicated(mesh),
        is_leaf=is_masked,
    )


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a `[batch, ...]` array: the batch over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays from this process's share of the batch (`[local_batch, ...]` each).

    Every process passes its own rows; with one process this is simply a sharded device_put.
    """
    out = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        out[name] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
    return out
