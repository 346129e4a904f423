"""Pieces every BERT module shares: dtypes, initialisers with logical axis names, activations."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from bert_jax.config import BertConfig

# Activation-sharding names at layer boundaries ([batch, length, embed]).
BATCH_LENGTH_EMBED = ("batch", "length", "embed")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(config: BertConfig) -> jnp.dtype:
    return _DTYPES[config.dtype]


def param_dtype(config: BertConfig) -> jnp.dtype:
    return _DTYPES[config.param_dtype]


def weight_init(config: BertConfig, axes: Sequence[str | None]) -> Callable:
    """Google's create_initializer: truncated normal (at 2 stddev), stddev initializer_range."""
    return nn.with_logical_partitioning(jax.nn.initializers.truncated_normal(config.initializer_range), tuple(axes))


def zeros_init(axes: Sequence[str | None]) -> Callable:
    return nn.with_logical_partitioning(jax.nn.initializers.zeros, tuple(axes))


def ones_init(axes: Sequence[str | None]) -> Callable:
    return nn.with_logical_partitioning(jax.nn.initializers.ones, tuple(axes))


def layer_norm(config: BertConfig, name: str = "LayerNorm") -> nn.LayerNorm:
    # Two-pass variance (use_fast_variance=False) as PyTorch computes it; E[x^2]-E[x]^2 loses
    # digits when the mean is large. Statistics are computed in float32 whatever the dtype.
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=compute_dtype(config),
        param_dtype=param_dtype(config),
        use_fast_variance=False,
        scale_init=ones_init(("embed",)),
        bias_init=zeros_init(("embed",)),
        name=name,
    )


class DenseGeneral(nn.Module):
    """x[..., *in] @ kernel[*in, *features] + bias[*features], params "kernel" and "bias".

    Our own instead of nn.DenseGeneral: that one initialises a multi-axis kernel flat and
    reshapes it, which under a mesh applies the 3-name logical constraint to the 2-D array.
    """

    features: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]  # logical names of kernel dims (in dims, then features)
    initializer_range: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = len(self.kernel_axes) - len(self.features)
        kernel_shape = tuple(x.shape[x.ndim - n_in:]) + tuple(self.features)
        init = jax.nn.initializers.truncated_normal(self.initializer_range)
        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.kernel_axes), kernel_shape, self.param_dtype)
        bias = self.param("bias", zeros_init(self.kernel_axes[n_in:]), tuple(self.features), self.param_dtype)
        x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
        # As one 2-D matmul on reshaped (bitcast) operands: for [embed, heads, head_dim] kernels
        # XLA:CPU then skips the transposed kernel copies of a 3-D dot_general (~2% of a
        # BERT-base step on CPU).
        lead = x.shape[:x.ndim - n_in]
        fan_in, fan_out = int(np.prod(kernel.shape[:n_in])), int(np.prod(self.features))
        y = x.reshape(*lead, fan_in) @ kernel.reshape(fan_in, fan_out)
        return y.reshape(*lead, *self.features) + bias


def gather_positions(sequence: jax.Array, positions: jax.Array) -> jax.Array:
    """sequence [batch, length, ...], positions [batch, P] -> [batch, P, ...].

    Google's gather_indexes (flattened offsets) as one take_along_axis.
    """
    index = positions.astype(jnp.int32).reshape(*positions.shape, *([1] * (sequence.ndim - 2)))
    return jnp.take_along_axis(sequence, index, axis=1)


def dense(
    config: BertConfig,
    features: int | tuple[int, ...],
    kernel_axes: Sequence[str | None],
    name: str,
    dtype: jnp.dtype | None = None,
) -> DenseGeneral:
    """A DenseGeneral with Google's initialisers and logical axis names on kernel and bias.

    The kernel contracts the last len(kernel_axes) - len(features) dims of the input.
    """
    return DenseGeneral(
        features=(features,) if isinstance(features, int) else tuple(features),
        kernel_axes=tuple(kernel_axes),
        initializer_range=config.initializer_range,
        dtype=compute_dtype(config) if dtype is None else dtype,
        param_dtype=param_dtype(config),
        name=name,
    )


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """hidden_act -> function, with Hugging Face's meanings ("gelu" is the exact erf form)."""
    if name in ("gelu", "gelu_python"):
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_tanh", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu
    if name in ("silu", "swish"):
        return jax.nn.silu
    raise ValueError(f"unsupported hidden_act {name!r}")
