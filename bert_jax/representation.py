"""Is the encoder's representation healthy? Statistics of final hidden states, and the collapse rule.

A pretraining run can lower its loss while its encoder collapses: every hidden state points the
same way, the MLM head predicts frequent tokens whatever the context, and the model fine-tunes
worse than random init (issue 22 measured a 100-step post-LN run at lr 1e-3: cosine 0.998).
Loss alone does not show this, so pretraining evaluation reports, over the real (non-padding)
tokens of its held-out batches:

- `hidden_cosine`: the mean cosine between the final hidden states of every pair of distinct real
  tokens, across the whole held-out set. Computed exactly from the sum of unit vectors S over N
  tokens: sum over i != j of u_i . u_j = |S|^2 - N.
- `hidden_effective_rank`: RankMe (Garrido et al. 2023; Roy & Vetterli 2007), exp of the entropy
  of the normalised singular values of a fixed sample of hidden states (`SAMPLES_PER_EXAMPLE`
  tokens spread over each example's real length). 1 when all states lie on one line; at most
  min(samples, hidden size).

The jnp functions run inside the jitted prediction step and return per-example rows (so the one
prediction loop gathers them like any other output); the numpy ones reduce those rows on the host.
"""

from __future__ import annotations

import numpy as np

# Tokens per example kept for the effective rank: enough rows to span a BERT-base width (768)
# with ~100 held-out examples, small enough to gather ([examples, 8, hidden] float32).
SAMPLES_PER_EXAMPLE = 8

# A run whose held-out `hidden_cosine` exceeds this is reported as collapsed. Measured (docs/
# representation_collapse.md): random init 0.35, healthy pretrained models <= 0.6x, collapsed
# 100-step runs >= 0.99. 0.9 sits in the wide gap between them.
COLLAPSE_COSINE = 0.9


def hidden_state_rows(hidden, mask, samples_per_example: int = SAMPLES_PER_EXAMPLE) -> dict:
    """Per-example sums for the statistics, inside jit.

    hidden: [batch, length, hidden] final hidden states; mask: [batch, length], nonzero = real.
    Returns hidden_unit_sum [batch, hidden], hidden_count [batch] and hidden_sample
    [batch, samples_per_example, hidden] (rows at evenly spread real positions; all float32)."""
    import jax.numpy as jnp

    hidden = hidden.astype(jnp.float32)
    real = (mask != 0).astype(jnp.float32)  # [batch, length]
    norms = jnp.linalg.norm(hidden, axis=-1, keepdims=True)
    units = hidden / jnp.maximum(norms, 1e-12)
    length = real.sum(-1)  # [batch]
    # Real tokens are a prefix of each row (padding at the end), so evenly spread positions over
    # [0, length) are real whenever length > 0.
    spread = (jnp.arange(samples_per_example) + 0.5) / samples_per_example  # [k]
    positions = jnp.floor(spread[None, :] * length[:, None]).astype(jnp.int32)  # [batch, k]
    sample = jnp.take_along_axis(hidden, positions[..., None], axis=1)  # [batch, k, hidden]
    return {
        "hidden_unit_sum": (units * real[..., None]).sum(1),
        "hidden_count": length,
        "hidden_sample": sample * (length > 0)[:, None, None],
    }


def mean_pairwise_cosine(unit_sum: np.ndarray, count: float) -> float:
    """Mean cosine over pairs of distinct tokens, from the sum of their unit vectors [hidden]."""
    count = float(count)
    if count < 2:
        return float("nan")
    return float((np.dot(unit_sum, unit_sum) - count) / (count * (count - 1)))


def effective_rank(rows: np.ndarray) -> float:
    """RankMe of a [n, hidden] matrix: exp(entropy of its singular values / their sum)."""
    singular = np.linalg.svd(np.asarray(rows, np.float64), compute_uv=False)
    total = singular.sum()
    if total <= 0:
        return float("nan")
    p = singular / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def statistics(predictions: list[dict], example_weight: np.ndarray) -> dict[str, float]:
    """hidden_cosine and hidden_effective_rank over the examples whose weight is > 0.

    predictions: the prediction loop's per-batch outputs of `hidden_state_rows`."""
    keep = np.asarray(example_weight) > 0
    unit_sum = np.concatenate([p["hidden_unit_sum"] for p in predictions])[keep].astype(np.float64)
    count = np.concatenate([p["hidden_count"] for p in predictions])[keep].sum()
    sample = np.concatenate([p["hidden_sample"] for p in predictions])[keep]
    sample = sample.reshape(-1, sample.shape[-1])
    sample = sample[np.abs(sample).sum(-1) > 0]
    return {
        "hidden_cosine": mean_pairwise_cosine(unit_sum.sum(0), count),
        "hidden_effective_rank": effective_rank(sample),
    }


def collapse_warning(metrics: dict, threshold: float = COLLAPSE_COSINE) -> str | None:
    """A one-line warning if `metrics` (an evaluation's) show a collapsed encoder, else None."""
    cosine = metrics.get("hidden_cosine")
    if cosine is None or not cosine > threshold:
        return None
    rank = metrics.get("hidden_effective_rank")
    rank_text = f", effective rank {rank:.1f}" if rank is not None else ""
    return (f"the encoder looks collapsed: held-out hidden states have mean pairwise cosine {cosine:.3f} "
            f"(> {threshold}{rank_text}), so its tokens are nearly indistinguishable and it is likely to "
            "fine-tune worse than random init; see docs/representation_collapse.md")
