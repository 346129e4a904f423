"""Dropout with four keep/drop decisions per Threefry call (a drop-in for `nn.Dropout`).

Why: on CPU the random bits are among the dearest elementwise work of a BERT training step.
`nn.Dropout` draws one float per element through `jax.random.bernoulli`, and with the
partitionable Threefry (JAX's default) every element costs one Threefry-2x32 evaluation,
whose two 32-bit outputs are XORed into one word. Here every evaluation yields 64 bits that
are cut into four 16-bit uniforms, so the Threefry work drops by 4x. (BERT-base, seq 128,
batch 8, 2 CPU cores: 4.13 s -> 4.02 s per step, and ~3% more from the fused layout below.)

Properties kept:
- Unbiased: an element is kept with probability t / 65536, t = round((1 - rate) * 65536), and
  kept elements are scaled by 65536 / t, so E[output] = input exactly.
- Same bits under every sharding: the Threefry counters are iotas over the mask's shape, as in
  JAX's partitionable Threefry, so XLA splits the work across any mesh axis and the mask does
  not depend on the mesh.
- Same RNG plumbing as `nn.Dropout`: the key comes from the "dropout" stream, and
  `deterministic=True` or rate 0 is the identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.extend.random import threefry2x32_p

_UNIFORMS_PER_CALL = 4  # 2 output words x 2 halves of 16 bits
_SCALE = 1 << 16


def keep_threshold(rate: float) -> int:
    """t such that a 16-bit uniform u keeps its element when u < t."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    return int(round((1.0 - rate) * _SCALE))


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """Boolean mask of `shape`, True with probability keep_threshold(rate) / 65536.

    The last dimension must be a multiple of 4 (hidden sizes and sequence lengths are);
    `Dropout` falls back to `nn.Dropout`'s draw otherwise. Elements 4c .. 4c+3 along the last
    axis are the four 16-bit halves of Threefry call c.
    """
    *lead, last = shape
    if last % _UNIFORMS_PER_CALL:
        raise ValueError(f"keep_mask needs a last dimension divisible by 4, got shape {shape}")
    counter_shape = (*lead, last // _UNIFORMS_PER_CALL)
    row = int(np.prod(counter_shape[1:], dtype=np.int64)) if len(counter_shape) > 1 else 1
    if row >= 2**32:
        raise ValueError(f"dropout mask rows of {row} elements exceed the 32-bit Threefry counter")
    # Counter = (index along dim 0, flat index within the row): unique per element, and
    # built from iotas so the partitioner can split any dimension.
    hi = jax.lax.broadcasted_iota(jnp.uint32, counter_shape, 0)
    lo = jnp.zeros(counter_shape, jnp.uint32)
    stride = 1
    for dim in range(len(counter_shape) - 1, 0, -1):
        lo = lo + jax.lax.broadcasted_iota(jnp.uint32, counter_shape, dim) * jnp.uint32(stride)
        stride *= counter_shape[dim]
    if len(counter_shape) == 1:
        hi, lo = jnp.zeros(counter_shape, jnp.uint32), hi
    key_words = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    word0, word1 = threefry2x32_p.bind(key_words[0], key_words[1], hi, lo)
    # Each word is two 16-bit uniforms: [..., n] x 2 words -> [..., n, 2, 2] -> [..., 4n], so
    # elements 4c .. 4c+3 come from counter c. Only a bitcast and reshapes: XLA fuses them into
    # the consumer (a concatenate of the four halves cost a materialised u32 copy, ~3% of a step).
    uniforms = jax.lax.bitcast_convert_type(jnp.stack([word0, word1], axis=-1), jnp.uint16).reshape(shape)
    return uniforms.astype(jnp.uint32) < jnp.uint32(keep_threshold(rate))


class Dropout(nn.Module):
    """`nn.Dropout(rate)` with cheaper bits; same call signature and "dropout" RNG stream."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        key = self.make_rng("dropout")
        if x.ndim == 0 or x.shape[-1] % _UNIFORMS_PER_CALL:
            return nn.Dropout(self.rate)(x, deterministic=False, rng=key)
        keep = keep_mask(key, x.shape, self.rate)
        scale = jnp.asarray(_SCALE / keep_threshold(self.rate), x.dtype)
        return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))
