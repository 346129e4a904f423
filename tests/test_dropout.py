"""bert_jax.modeling.dropout: measured keep rates, independence of the four 16-bit draws per
Threefry call, unbiasedness, and the same mask under every sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec
from scipy import stats

from bert_jax.modeling.dropout import Dropout, keep_mask, keep_threshold
from tests.train_helpers import require_devices

SHAPE = (16, 12, 64, 128)  # [batch, heads, query, key]: 1.57M draws


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_keep_rate_matches_the_binomial(rate):
    mask = np.asarray(jax.jit(keep_mask, static_argnums=(1, 2))(jax.random.PRNGKey(1), SHAPE, rate))
    p = keep_threshold(rate) / 65536
    assert abs(p - (1 - rate)) < 1e-5
    result = stats.binomtest(int(mask.sum()), mask.size, p)
    assert result.pvalue > 1e-4, (mask.mean(), p)
    # Each of the four draws of a Threefry call (elements 4c .. 4c+3) on its own too.
    for draw in np.moveaxis(mask.reshape(*SHAPE[:-1], -1, 4), -1, 0):
        assert stats.binomtest(int(draw.sum()), draw.size, p).pvalue > 1e-4


def test_the_four_draws_of_one_threefry_call_are_independent():
    mask = np.asarray(keep_mask(jax.random.PRNGKey(2), SHAPE, 0.5))
    quarters = list(np.moveaxis(mask.reshape(-1, 4), -1, 0))  # row c: the four draws of call c
    for a in range(4):
        for b in range(a + 1, 4):
            table = np.array([[np.sum(~quarters[a] & ~quarters[b]), np.sum(~quarters[a] & quarters[b])],
                              [np.sum(quarters[a] & ~quarters[b]), np.sum(quarters[a] & quarters[b])]])
            assert stats.chi2_contingency(table).pvalue > 1e-4, (a, b, table)


def test_neighbouring_rows_and_keys_differ():
    key = jax.random.PRNGKey(3)
    mask = np.asarray(keep_mask(key, (4, 256), 0.5))
    assert not np.array_equal(mask[0], mask[1])  # the row index is part of the counter
    assert np.array_equal(mask, np.asarray(keep_mask(key, (4, 256), 0.5)))
    assert not np.array_equal(mask, np.asarray(keep_mask(jax.random.PRNGKey(4), (4, 256), 0.5)))
    # A 1-D shape and typed keys work too.
    one_d = np.asarray(keep_mask(jax.random.key(3), (1024,), 0.25))
    assert stats.binomtest(int(one_d.sum()), one_d.size, keep_threshold(0.25) / 65536).pvalue > 1e-4


def test_output_is_unbiased_and_scaled_exactly():
    x = jnp.ones(SHAPE, jnp.float32)
    y = np.asarray(Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(5)}))
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 65536 / keep_threshold(0.1), rtol=1e-7)
    # mean of y: 1 in expectation; the bound is 5 standard errors of the Bernoulli draw.
    p = keep_threshold(0.1) / 65536
    assert abs(y.mean() - 1.0) < 5 * np.sqrt((1 - p) / p / y.size)


def test_deterministic_or_zero_rate_is_identity_and_odd_widths_fall_back():
    x = jnp.arange(24.0).reshape(2, 12)
    rngs = {"dropout": jax.random.PRNGKey(0)}
    assert np.array_equal(Dropout(0.1).apply({}, x, deterministic=True), x)
    assert np.array_equal(Dropout(0.0).apply({}, x, deterministic=False, rngs=rngs), x)
    odd = Dropout(0.5).apply({}, jnp.ones((4000, 3)), deterministic=False, rngs=rngs)  # flax's draw
    assert stats.binomtest(int((np.asarray(odd) != 0).sum()), odd.size, 0.5).pvalue > 1e-4
    with pytest.raises(ValueError, match="rate must be in"):
        keep_threshold(1.0)


def test_same_mask_under_every_sharding():
    require_devices(8)
    key = jax.random.PRNGKey(6)
    shape = (8, 4, 16, 32)
    single = np.asarray(keep_mask(key, shape, 0.1))
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    for spec in (PartitionSpec("data"), PartitionSpec(None, "model"), PartitionSpec("data", None, None, "model")):
        sharding = NamedSharding(mesh, spec)
        sharded = jax.jit(lambda k: keep_mask(k, shape, 0.1), out_shardings=sharding)(key)
        assert sharded.sharding == sharding
        assert np.array_equal(np.asarray(sharded), single), spec


def test_dropout_module_draws_from_the_dropout_stream():
    class Two(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Dropout(0.5)(x, deterministic=False), Dropout(0.5)(x, deterministic=False)

    x = jnp.ones((8, 64))
    a, b = Two().apply({}, x, rngs={"dropout": jax.random.PRNGKey(0)})
    assert not np.array_equal(np.asarray(a), np.asarray(b))  # each module folds in its own name
    a2, _ = Two().apply({}, x, rngs={"dropout": jax.random.PRNGKey(0)})
    assert np.array_equal(np.asarray(a), np.asarray(a2))
