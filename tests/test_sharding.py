"""Mesh construction, rules tables, and the shardings they give to params, optimizer state, batches."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax.sharding import AxisType, PartitionSpec as P

from bert_jax import sharding
from tests.train_helpers import require_devices


class _Projection(nn.Module):
    """A stand-in with BERT's logical names: an [embed, mlp] kernel, an [mlp] bias, a LayerNorm."""

    @nn.compact
    def __call__(self, x):  # [batch, embed] -> [batch, mlp]
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.normal(), ("embed", "mlp")), (16, 32))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)), (32,))
        return nn.LayerNorm()(x) @ kernel + bias


def test_mesh_shape_fills_the_rest():
    assert sharding.mesh_shape(-1, 1, 1, 8) == (8, 1, 1)
    assert sharding.mesh_shape(2, -1, 1, 8) == (2, 4, 1)
    assert sharding.mesh_shape(4, 1, 2, 8) == (4, 1, 2)


@pytest.mark.parametrize("sizes, message", [
    ((-1, -1, 1), "at most one axis"),
    ((3, 1, 1), "data\\*fsdp\\*tensor = 3 but there are 8 devices"),
    ((-1, 3, 1), "do not divide"),
    ((0, 1, 1), "config.mesh.data"),
])
def test_mesh_shape_errors_name_the_field(sizes, message):
    with pytest.raises(ValueError, match=message):
        sharding.mesh_shape(*sizes, 8)


def test_unknown_rules_name_is_an_error():
    with pytest.raises(ValueError, match="config.mesh.rules"):
        sharding.axis_rules("zero3")


def test_mesh_has_auto_axes_over_all_devices():
    mesh = sharding.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": len(jax.devices()) // 4, "tensor": 2}
    assert all(t == AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("rules, kernel_spec, bias_spec", [
    ("data_parallel", P(None, None), P(None)),
    ("fsdp", P("fsdp", None), P(None)),
    ("tensor", P("fsdp", "tensor"), P("tensor")),
])
def test_rules_tables_shard_params_and_optimizer_state(rules, kernel_spec, bias_spec):
    require_devices(8)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = _Projection()
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((4, 16)))
    shardings = sharding.logical_shardings(abstract, mesh, sharding.axis_rules(rules))["params"]
    assert shardings["kernel"].spec == kernel_spec
    assert shardings["bias"].spec == bias_spec
    assert shardings["LayerNorm_0"]["scale"].spec == P()  # unannotated -> replicated

    params = nn.meta.unbox(abstract)["params"]
    tx = optax.adamw(1e-3)
    state_shardings = sharding.opt_state_shardings(tx, params, shardings, mesh)
    adam_state = state_shardings[0]
    assert adam_state.mu["kernel"].spec == kernel_spec
    assert adam_state.nu["bias"].spec == bias_spec
    assert adam_state.count.spec == P()


def test_activation_batch_takes_fsdp_before_embed():
    # An activation [batch, length, embed] under FSDP: batch over (data, fsdp), embed unsplit.
    rules = sharding.axis_rules("fsdp")
    assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P(("data", "fsdp"), None, None)
    assert nn.logical_to_mesh_axes(("embed", "mlp"), rules) == P("fsdp", None)


def test_global_batch_is_split_over_data_and_fsdp():
    require_devices(8)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    local = {"input_ids": np.arange(8 * 3, dtype=np.int32).reshape(8, 3)}
    batch = sharding.make_global_batch(local, mesh)
    assert batch["input_ids"].sharding.spec == P(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(batch["input_ids"]), local["input_ids"])
    # Each of the 4 batch shards holds 2 rows, replicated over the 2 tensor devices.
    assert {s.data.shape for s in batch["input_ids"].addressable_shards} == {(2, 3)}
