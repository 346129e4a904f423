"""Float comparisons whose tolerance scales with the values compared.

A fixed absolute tolerance on values of magnitude ~30 (MLM logits) passes on one CPU and fails
on another: float32 reduction order moves the result by ~1e-6 of its *scale*, and which order
XLA picks depends on the CPU's kernels. So every comparison here bounds

    max |actual - desired|  <=  rel * max |desired|

(the error relative to the largest value compared, per array), which is the same on every CPU
model and every XLA kernel choice for the same maths.

Set BERT_JAX_TOL_LOG=path to append one line per comparison (test, label, used fraction of the
bound) and find what comes closest to its bound under other XLA flags; see
`python -m tests.tolerances path` for the summary.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

# float32 forward passes of the tiny models: reduction order moves results ~1e-7..2e-6 of their
# scale (measured on two CPU kernel sets, see tests/test_modeling.py); 1e-5 leaves a margin.
FORWARD_REL = 1e-5


def scaled_diff(actual, desired) -> float:
    """max |actual - desired| / max |desired| (0 when both are all zero)."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    diff = float(np.max(np.abs(actual - desired))) if actual.size else 0.0
    scale = float(np.max(np.abs(desired))) if desired.size else 0.0
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def _log(label: str, value: float, bound: float) -> None:
    path = os.environ.get("BERT_JAX_TOL_LOG")
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
    with open(path, "a") as f:
        f.write(json.dumps({"test": test, "label": label, "value": value, "bound": bound,
                            "used": value / bound if bound else float("inf")}) + "\n")


def assert_close(actual, desired, rel: float = FORWARD_REL, err_msg: str = "") -> float:
    """Asserts max |actual - desired| <= rel * max |desired|; returns the scaled difference."""
    value = scaled_diff(actual, desired)
    _log(err_msg, value, rel)
    assert value <= rel, (f"{err_msg}: max|diff| / max|desired| = {value:.3e} > {rel:.1e} "
                          f"(max|desired| = {float(np.max(np.abs(np.asarray(desired)))):.4g})")
    return value


def assert_tree_close(actual, desired, rel: float, floor: float = 1e-3) -> float:
    """Leaf by leaf, max |a - d| <= rel * max(max |d_leaf|, floor * max |d_tree|).

    For gradient trees: a leaf whose true gradient is 0 (the attention key bias: softmax is
    invariant to a shift shared by every key) holds only rounding noise from the rest of the
    tree, ~1e-8 of the tree's scale, so its own max cannot be its scale. `floor` bounds how far
    below the tree's scale a leaf's scale is taken to be."""
    import jax

    leaves_a = jax.tree_util.tree_leaves_with_path(actual)
    leaves_d = jax.tree.leaves(desired)
    assert len(leaves_a) == len(leaves_d)
    tree_scale = max(float(np.max(np.abs(np.asarray(d)))) for d in leaves_d)
    worst = 0.0
    for (path, a), d in zip(leaves_a, leaves_d):
        a, d = np.asarray(a, np.float64), np.asarray(d, np.float64)
        assert a.shape == d.shape, (jax.tree_util.keystr(path), a.shape, d.shape)
        scale = max(float(np.max(np.abs(d))), floor * tree_scale)
        value = float(np.max(np.abs(a - d))) / scale if scale else float(np.max(np.abs(a - d)) > 0) * float("inf")
        label = jax.tree_util.keystr(path)
        _log(label, value, rel)
        assert value <= rel, f"{label}: max|diff| / scale = {value:.3e} > {rel:.1e} (scale {scale:.4g})"
        worst = max(worst, value)
    return worst


def check_bound(label: str, value: float, rel: float) -> None:
    """For figures measured elsewhere (e.g. a dict of scaled diffs): logs and asserts value <= rel."""
    _log(label, value, rel)
    assert value <= rel, f"{label}: {value:.3e} > {rel:.1e}"


if __name__ == "__main__":  # summary of a BERT_JAX_TOL_LOG file: closest to the bound first
    rows = [json.loads(line) for line in open(sys.argv[1])]
    worst = {}
    for r in rows:
        key = (r["test"], r["label"])
        if key not in worst or r["used"] > worst[key]["used"]:
            worst[key] = r
    for r in sorted(worst.values(), key=lambda r: -r["used"])[: int(sys.argv[2]) if len(sys.argv) > 2 else 30]:
        print(f"{r['used']:8.3f}  {r['value']:.2e} / {r['bound']:.0e}  {r['test']}  {r['label']}")
