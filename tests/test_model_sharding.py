"""The model under an 8-device CPU mesh (data, fsdp, tensor) with bert_jax.sharding's rules:
params are really split, and outputs equal the single-device outputs."""

import jax
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import AxisType, Mesh

from bert_jax import sharding
from tests.train_helpers import require_devices
from tests.tolerances import FORWARD_REL, assert_close
from bert_jax.config import BertConfig
from bert_jax.modeling import BertForPreTraining

# Sharded and single-device runs sum in different orders; float32 agrees to this fraction of
# each output's max |value| (tests/tolerances.py).
REL = FORWARD_REL


def _mesh(shape):
    require_devices(8)
    devices = np.asarray(jax.devices()[:8]).reshape(shape)
    return Mesh(devices, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _batch(batch=8, length=16):
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 128, (batch, length)).astype(np.int32)
    types = (np.arange(length)[None] >= length // 2).astype(np.int32).repeat(batch, 0)
    mask = np.ones((batch, length), np.int32)
    mask[1::2, 11:] = 0
    positions = rng.randint(0, length, (batch, 3)).astype(np.int32)
    return ids, types, mask, positions


@pytest.mark.parametrize(
    "rules, shape, scan",
    [("tensor", (2, 2, 2), False), ("fsdp", (1, 4, 2), True)],
)
def test_sharded_forward_equals_single_device(rules, shape, scan, capfd):
    cfg = BertConfig.preset("tiny", vocab_size=128, max_position_embeddings=32, scan_layers=scan)
    model = BertForPreTraining(cfg)
    ids, types, mask, positions = _batch()
    mesh, table = _mesh(shape), sharding.axis_rules(rules)

    with jax.set_mesh(mesh), nn.logical_axis_rules(table):
        abstract = jax.eval_shape(model.init, jax.random.key(0), ids)
        param_shardings = sharding.logical_shardings(abstract, mesh, table)
        variables = jax.jit(model.init, out_shardings=param_shardings)(jax.random.key(0), ids)
        params = nn.meta.unbox(variables)["params"]
        batch = sharding.make_global_batch({"ids": ids, "types": types, "mask": mask, "positions": positions}, mesh)
        forward = jax.jit(lambda p, b: model.apply(
            {"params": p}, b["ids"], b["types"], b["mask"], masked_positions=b["positions"]))
        sharded = forward(params, batch)

    # Params are really split: each device holds a slice of these, as the rules say.
    layer = params["bert"]["encoder"]["layers" if scan else "layer_0"]
    query, inner = layer["attention"]["self"]["query"]["kernel"], layer["intermediate"]["dense"]["kernel"]
    lead = (cfg.num_hidden_layers,) if scan else ()
    shard = lambda x: x.addressable_shards[0].data.shape  # noqa: E731
    if rules == "tensor":  # heads and mlp over tensor=2, embed over fsdp=2
        assert shard(query) == lead + (64, 1, 64)
        assert shard(inner) == lead + (64, 256)
    else:  # embed over fsdp=4, nothing over tensor
        assert shard(query) == lead + (32, 2, 64)
        assert shard(inner) == lead + (32, 512)
    split = [x for x in jax.tree.leaves(params) if shard(x) != x.shape]
    assert len(split) >= len(jax.tree.leaves(params)) // 2
    # The activation constraints are applied: outputs come back split over the batch axes.
    batch_axes = tuple(a for a in sharding.BATCH_AXES if mesh.shape[a] > 1)
    for name in ("sequence_output", "mlm_logits", "nsp_logits"):
        spec = sharded[name].sharding.spec[0]
        assert (spec if isinstance(spec, tuple) else (spec,)) == batch_axes, (name, sharded[name].sharding)
    # ... and the partitioner never had to fall back to replicating a tensor.
    assert "Involuntary full rematerialization" not in capfd.readouterr().err

    host_params = jax.device_get(params)
    single = jax.jit(lambda p: model.apply({"params": p}, ids, types, mask, masked_positions=positions))(host_params)
    assert single["mlm_logits"].sharding.num_devices == 1
    for name in ("sequence_output", "pooled_output", "mlm_logits", "nsp_logits"):
        assert_close(np.asarray(sharded[name]), np.asarray(single[name]), REL, err_msg=name)
