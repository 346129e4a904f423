"""BERT's optimizers (optax): AdamW with warmup + linear decay, LAMB, and the weight-decay mask.

Config fields (`config.optimizer`, defaults = the BERT paper / google-research/bert):
  name              "adamw" | "lamb"
  learning_rate     1e-4 (peak, reached at the end of warmup)
  warmup_steps      10_000 (linear from 0)
  b1, b2, eps       0.9, 0.999, 1e-6
  weight_decay      0.01, decoupled (AdamW), never on LayerNorm parameters or biases
  clip_global_norm  1.0 (0 disables)
  frozen_params     "" (nothing frozen): a regular expression searched in each parameter's path
                    ("bert/encoder/layer_0/attention/self/query/kernel"; the scan layout says
                    "bert/encoder/layers/..."). Matching parameters get no update, no optimizer
                    state and no weight decay, so they stay bitwise unchanged; the rest train
                    as above (clipped by their own global norm). "^bert/" freezes the encoder.
                    A pattern that matches no parameter, or every one, is an error.

Differences from Google's `AdamWeightDecayOptimizer`, on purpose: optax's Adam corrects the
moment bias (Google's does not; the difference fades within the 10k warmup steps), and the
decay runs from the peak at the end of warmup to 0 at the last step (Google's decay starts at
step 0, so its lr drops by warmup/total at the end of warmup).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import optax

# Google's `_do_use_weight_decay` excludes parameters whose name matches any of these.
NO_DECAY_PATTERN = re.compile(r"LayerNorm|layer_norm|bias")


def schedule_steps(num_steps: int, warmup_steps: int) -> int:
    """The steps a schedule spans: num_steps, or for an evaluation-only run (num_steps=0, which
    still builds an optimizer for its state's shapes) the warmup, at least 1."""
    return int(num_steps) or max(1, int(warmup_steps))


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> peak over `warmup_steps`, then linear decay (power 1.0) to 0 at `total_steps`."""
    if total_steps <= 0:
        raise ValueError(f"config.train.num_steps: expected > 0, found {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"config.optimizer.warmup_steps: expected between 0 and num_steps={total_steps}, found {warmup_steps}")
    decay = optax.polynomial_schedule(
        init_value=peak, end_value=0.0, power=1.0, transition_steps=max(total_steps - warmup_steps, 1))
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(init_value=0.0, end_value=peak, transition_steps=warmup_steps)
    return optax.join_schedules([warmup, decay], boundaries=[warmup_steps])


def param_path(path: tuple[Any, ...]) -> str:
    """'bert/encoder/layer_0/attention/output/LayerNorm/scale' from a jax key path."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def weight_decay_mask(params: Any) -> Any:
    """True where weight decay applies: every parameter except LayerNorm scales/biases and biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: NO_DECAY_PATTERN.search(param_path(path)) is None, params)


FROZEN, TRAINED = "frozen", "trained"


def compile_frozen_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"config.optimizer.frozen_params={pattern!r} is not a regular expression: {e}") from None


def frozen_labels(pattern: str):
    """params -> the same tree of "frozen" / "trained" labels (optax.multi_transform's labels)."""
    regex = compile_frozen_pattern(pattern)

    def labels(params):
        tree = jax.tree_util.tree_map_with_path(
            lambda path, _: FROZEN if regex.search(param_path(path)) else TRAINED, params)
        flat = jax.tree_util.tree_leaves_with_path(tree)
        if not flat:  # optax.tree_map_params traces init on a leafless placeholder: nothing to check
            return tree
        frozen = [param_path(p) for p, label in flat if label == FROZEN]
        if not frozen:
            raise ValueError(f"config.optimizer.frozen_params={pattern!r} matches no parameter (they are named "
                             f"like {param_path(flat[0][0])!r}); '' freezes nothing")
        if len(frozen) == len(flat):
            raise ValueError(f"config.optimizer.frozen_params={pattern!r} matches every parameter: nothing would "
                             "train")
        return tree

    return labels


def make_optimizer(optimizer_config: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
    """The optax transformation named by `config.optimizer.name`, with clipping and the schedule;
    with `frozen_params`, that transformation on the other parameters and optax.set_to_zero()
    on the frozen ones (optax.multi_transform: the frozen partition holds no state)."""
    cfg = optimizer_config
    schedule = learning_rate_schedule(float(cfg["learning_rate"]), int(cfg["warmup_steps"]), total_steps)
    common = dict(learning_rate=schedule, b1=float(cfg["b1"]), b2=float(cfg["b2"]), eps=float(cfg["eps"]),
                  weight_decay=float(cfg["weight_decay"]), mask=weight_decay_mask)
    name = cfg["name"]
    if name == "adamw":
        tx = optax.adamw(**common)
    elif name == "lamb":
        # You et al. 2020: Adam's update rescaled per layer by ||w|| / ||update|| (the trust ratio).
        tx = optax.lamb(**common)
    else:
        raise ValueError(f"config.optimizer.name: expected 'adamw' or 'lamb', found {name!r}")
    clip = float(cfg["clip_global_norm"])
    if clip < 0:
        raise ValueError(f"config.optimizer.clip_global_norm: expected >= 0 (0 disables), found {clip}")
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    frozen = str(cfg.get("frozen_params", "") or "")
    if frozen:
        tx = optax.multi_transform({TRAINED: tx, FROZEN: optax.set_to_zero()}, frozen_labels(frozen))
    return tx


def default_config():
    """The `config.optimizer` ConfigDict with BERT's values (kept in bert_jax.run_config, with every
    other default, so config files import no optax)."""
    from bert_jax.run_config import optimizer_config
    return optimizer_config()
