"""Model FLOPs per token for BERT training, and the peak FLOP/s that MFU divides by.

MFU = (tokens/s * training FLOPs per token) / (peak FLOP/s per device * devices), with the
model FLOPs counted as in the PaLM/MaxText convention: matmuls only, 2 FLOPs per
multiply-add, backward = 2x forward, no credit for rematerialisation.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger("bert_jax.flops")

# Dense peak FLOP/s per device (bf16 unless noted) from the vendors' spec sheets, by
# `device_kind` prefix. The CPU has no fixed number: it is measured (see `measure_matmul_peak`).
PEAK_FLOPS_BY_DEVICE_KIND = {
    "TPU v2": 45e12 / 2,  # per core: a v2 chip (2 cores) has 45 TFLOP/s
    "TPU v3": 123e12 / 2,  # per core
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # Trillium / v6e
    "TPU v6e": 918e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,  # SXM dense bf16
    "NVIDIA H200": 989e12,
}


def training_flops_per_token(bert_config: Any, seq_len: int, num_predictions: int = 0,
                             nsp: bool = False) -> float:
    """Training FLOPs (forward + backward) per input position of a BERT encoder with heads.

    Per layer and token, forward:
      Q, K, V and attention output projections  4 * 2 * H * H
      feed-forward (H -> I -> H)                 2 * 2 * H * I
      attention scores QK^T and weights x V       2 * 2 * L * H   (bidirectional: all L keys)
    With pretraining heads (`num_predictions` = P > 0 masked positions per sequence of length
    L) the last layer computes only the R = P + 1 rows the heads read ([CLS] and the masked
    positions; see BertEncoder): K and V still for all L tokens, the rest for R / L of them.
    MLM head, per masked prediction: transform dense 2 * H * H, tied decoder 2 * H * V
      -> scaled by P / L per token.
    NSP (pooler dense 2 * H * H + classifier 2 * H * 2), once per sequence -> / L per token.
    Training = 3 x forward (the backward pass costs two matmuls per forward matmul).
    """
    h, i = bert_config.hidden_size, bert_config.intermediate_size
    v, n = bert_config.vocab_size, bert_config.num_hidden_layers
    per_row = 4 * h * h + 4 * h * i + 4 * seq_len * h  # Q, output, FFN, attention
    key_value = 4 * h * h
    last_rows = min(num_predictions + 1, seq_len) if num_predictions > 0 else seq_len
    forward = (n - 1) * (per_row + key_value) + key_value + last_rows / seq_len * per_row
    forward += num_predictions / seq_len * (2 * h * h + 2 * h * v)
    if nsp:
        forward += (2 * h * h + 4 * h) / seq_len
    return 3.0 * forward


@functools.lru_cache(maxsize=None)
def measure_matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """Sustained float32 matmul FLOP/s of one device: the best of `repeats` timings of an XLA
    [size x size] matmul, measured once per process.

    For devices without a spec-sheet number (CPUs): MFU then reads as "fraction of what XLA's
    own best kernel reaches here". The best of several timings of a matmul large enough to
    dwarf dispatch keeps a busy moment at start-up from setting a low peak (a single 1024^2
    timing on a busy machine once gave MFU 1.3); a measured peak is still a lower bound of the
    device's, so `mfu` warns when it exceeds 1."""
    device = jax.local_devices()[0]
    # A one-device mesh of its own: called inside a training mesh, jit would otherwise refuse an
    # array committed to one device of it.
    with jax.set_mesh(jax.sharding.Mesh(np.array([device]), ("one",))):
        a = jax.device_put(jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), jnp.float32), device)
        matmul = jax.jit(lambda x: x @ x)
        matmul(a).block_until_ready()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(a).block_until_ready()
            best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def peak_flops_per_device(configured: float = 0.0) -> tuple[float, str]:
    """(peak FLOP/s per device, where it came from): the config value when > 0, else the
    device-kind table, else a measured float32 matmul peak."""
    if configured and configured > 0:
        return float(configured), "config"
    kind = jax.devices()[0].device_kind
    for prefix, value in PEAK_FLOPS_BY_DEVICE_KIND.items():
        if kind.startswith(prefix):
            return value, f"table:{prefix}"
    return measure_matmul_peak(), f"measured:{kind} float32 matmul"


def mfu(tokens_per_s: float, flops_per_token: float, peak: float, peak_source: str, devices: int) -> float:
    """Model FLOPs utilisation; warns, naming the peak's source, when it exceeds 1 (the peak is
    then too low: a measured peak on a busy machine, or a wrong configured one)."""
    value = tokens_per_s * flops_per_token / (peak * devices)
    if value > 1:
        log.warning("MFU %.3f > 1: the peak it divides by (%.3g FLOP/s per device, from %s) is below what "
                    "this run reached; set config.logging.peak_flops_per_device (--peak_flops) to the "
                    "device's real peak", value, peak, peak_source)
    return value
