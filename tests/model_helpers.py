"""Shared pieces of the model tests: random params without running an initialiser, padded batches."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn


def random_params(module, *inputs, seed=1, scale=0.05):
    """Params of `module`'s shapes (for `module.init(key, *inputs)`; default one [1, 8] row of
    ids), every one drawn at random, biases included (LSTMCell and Dense initialise them at 0),
    so that a swapped gate or a missing bias cannot hide. No init runs: the orthogonal
    initialiser's QR takes seconds to compile on CPU."""
    inputs = inputs or (jnp.zeros((1, 8), jnp.int32),)
    shapes = nn.meta.unbox(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *inputs))["params"])
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def padded_batch(lengths=(12, 7, 3), length=12, seed=0, vocab_size=60):
    """(input_ids, attention_mask) [len(lengths), length] int32: random ids >= 5 on the first
    lengths[b] positions of row b, then [PAD] (0)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab_size, size=(len(lengths), length)).astype(np.int32)
    mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return np.where(mask > 0, ids, 0).astype(np.int32), mask
