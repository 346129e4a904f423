"""BERT's optimizer: the weight-decay mask, the lr schedule, and AdamW's numerics against torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import optax
import torch

from bert_jax import optim
from tests.tolerances import assert_close, scaled_diff


def _bert_like_params():
    """Parameter names as in docs/ARCHITECTURE.md (the model's real tree is checked in test_train)."""
    z = lambda *shape: jnp.zeros(shape, jnp.float32)
    layer = {
        "attention": {
            "self": {n: {"kernel": z(8, 2, 4), "bias": z(2, 4)} for n in ("query", "key", "value")},
            "output": {"dense": {"kernel": z(2, 4, 8), "bias": z(8)},
                       "LayerNorm": {"scale": z(8), "bias": z(8)}},
        },
        "intermediate": {"dense": {"kernel": z(8, 16), "bias": z(16)}},
        "output": {"dense": {"kernel": z(16, 8), "bias": z(8)}, "LayerNorm": {"scale": z(8), "bias": z(8)}},
    }
    return {
        "bert": {
            "embeddings": {"word_embeddings": {"embedding": z(30, 8)},
                           "position_embeddings": {"embedding": z(16, 8)},
                           "token_type_embeddings": {"embedding": z(2, 8)},
                           "LayerNorm": {"scale": z(8), "bias": z(8)}},
            "encoder": {"layer_0": layer},
            "pooler": {"dense": {"kernel": z(8, 8), "bias": z(8)}},
        },
        "cls": {"predictions": {"transform": {"dense": {"kernel": z(8, 8), "bias": z(8)},
                                              "LayerNorm": {"scale": z(8), "bias": z(8)}},
                                "output_bias": z(30)},
                "seq_relationship": {"kernel": z(8, 2), "bias": z(2)}},
    }


def test_weight_decay_mask_excludes_layernorm_and_biases():
    mask = optim.weight_decay_mask(_bert_like_params())
    flat = {optim.param_path(path): value for path, value in jax.tree_util.tree_leaves_with_path(mask)}
    decayed = sorted(name for name, value in flat.items() if value)
    assert decayed == sorted([
        "bert/embeddings/word_embeddings/embedding",
        "bert/embeddings/position_embeddings/embedding",
        "bert/embeddings/token_type_embeddings/embedding",
        "bert/encoder/layer_0/attention/self/query/kernel",
        "bert/encoder/layer_0/attention/self/key/kernel",
        "bert/encoder/layer_0/attention/self/value/kernel",
        "bert/encoder/layer_0/attention/output/dense/kernel",
        "bert/encoder/layer_0/intermediate/dense/kernel",
        "bert/encoder/layer_0/output/dense/kernel",
        "bert/pooler/dense/kernel",
        "cls/predictions/transform/dense/kernel",
        "cls/seq_relationship/kernel",
    ])
    # Every LayerNorm parameter and every bias (incl. the MLM output bias) is excluded.
    for name, value in flat.items():
        if "LayerNorm" in name or name.endswith("bias"):
            assert not value, name


def test_schedule_warmup_end_and_final_step():
    schedule = optim.learning_rate_schedule(peak=1e-4, warmup_steps=100, total_steps=1000)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(50)), 0.5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(100)), 1e-4, rtol=1e-6)  # peak at the end of warmup
    np.testing.assert_allclose(float(schedule(550)), 0.5e-4, rtol=1e-6)  # linear decay
    assert float(schedule(1000)) == 0.0  # zero at the final step
    assert float(schedule(999)) == pytest.approx(1e-4 / 900, rel=1e-4)  # float32 schedule arithmetic


def test_schedule_rejects_warmup_longer_than_training():
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.learning_rate_schedule(1e-4, 2000, 1000)


def test_unknown_optimizer_name_is_an_error():
    cfg = optim.default_config()
    cfg.name = "adam"
    with pytest.raises(ValueError, match="config.optimizer.name"):
        optim.make_optimizer(cfg, 100_000)


def test_adamw_matches_torch_with_decay_masked_off_layernorm():
    """Three steps of our AdamW (clipping off, constant lr after warmup 0) against torch.optim.AdamW
    with two param groups: weight_decay=0.01 for the kernel and 0 for the LayerNorm scale."""
    rng = np.random.default_rng(0)
    kernel0, scale0 = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)
    grads = [(rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32))
             for _ in range(3)]
    cfg = optim.default_config()
    cfg.learning_rate, cfg.warmup_steps, cfg.clip_global_norm = 1e-2, 0, 0.0
    # A long schedule: the lr stays within 3e-6 relative of the peak over the 3 steps.
    tx = optim.make_optimizer(cfg, total_steps=10_000_000)
    params = {"dense": {"kernel": jnp.asarray(kernel0)}, "LayerNorm": {"scale": jnp.asarray(scale0)}}
    state = tx.init(params)
    for g_kernel, g_scale in grads:
        updates, state = tx.update({"dense": {"kernel": g_kernel}, "LayerNorm": {"scale": g_scale}}, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)

    kernel, scale = torch.tensor(kernel0, requires_grad=True), torch.tensor(scale0, requires_grad=True)
    reference = torch.optim.AdamW([{"params": [kernel], "weight_decay": 0.01},
                                   {"params": [scale], "weight_decay": 0.0}],
                                  lr=1e-2, betas=(0.9, 0.999), eps=1e-6)
    for g_kernel, g_scale in grads:
        kernel.grad, scale.grad = torch.tensor(g_kernel), torch.tensor(g_scale)
        reference.step()
    assert_close(params["dense"]["kernel"], kernel.detach().numpy(), 1e-5)
    assert_close(params["LayerNorm"]["scale"], scale.detach().numpy(), 1e-5)


def _torch_adamw_run(params0, grads, lr, warmup, total, clip):
    """torch.optim.AdamW (decay 0.01 on the kernel, 0 on the LayerNorm scale) with
    clip_grad_norm_ over both tensors and a LambdaLR of linear warmup then linear decay to 0."""
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params0.items()}
    opt = torch.optim.AdamW([{"params": [tensors["kernel"]], "weight_decay": 0.01},
                             {"params": [tensors["scale"]], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999), eps=1e-6)
    factor = lambda k: k / warmup if k < warmup else max(0.0, (total - k) / (total - warmup))  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    for g in grads:
        for k, t in tensors.items():
            t.grad = torch.tensor(g[k])
        if clip:
            torch.nn.utils.clip_grad_norm_(list(tensors.values()), clip)
        opt.step()
        schedule.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


def test_clipping_and_schedule_of_make_optimizer_match_torch():
    """make_optimizer with BERT's clip_global_norm=1.0 and a 3-step warmup, over 6 steps whose
    gradient norms go above and below 1 (Adam is invariant to one constant gradient scale, not to
    a varying one, so clipping changes the result), against torch's AdamW + clip_grad_norm_(1.0)
    + the same schedule. The unclipped torch run is far outside the tolerance, so the check
    sees whether clipping happens."""
    rng = np.random.default_rng(1)
    params0 = {"kernel": rng.normal(size=(4, 3)).astype(np.float32), "scale": rng.normal(size=(3,)).astype(np.float32)}
    grads = []
    for norm in (5.0, 0.3, 20.0, 0.5, 3.0, 0.1):
        g = {k: rng.normal(size=v.shape) for k, v in params0.items()}
        total = np.sqrt(sum(np.sum(x ** 2) for x in g.values()))
        grads.append({k: (x * norm / total).astype(np.float32) for k, x in g.items()})
    cfg = optim.default_config()
    assert cfg.clip_global_norm == 1.0
    cfg.learning_rate, cfg.warmup_steps = 1e-2, 3
    tx = optim.make_optimizer(cfg, total_steps=10)
    params = {"dense": {"kernel": jnp.asarray(params0["kernel"])}, "LayerNorm": {"scale": jnp.asarray(params0["scale"])}}
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update({"dense": {"kernel": g["kernel"]}, "LayerNorm": {"scale": g["scale"]}}, state, params)
        params = optax.apply_updates(params, updates)
    ours = {"kernel": np.asarray(params["dense"]["kernel"]), "scale": np.asarray(params["LayerNorm"]["scale"])}
    clipped = _torch_adamw_run(params0, grads, 1e-2, 3, 10, clip=1.0)
    unclipped = _torch_adamw_run(params0, grads, 1e-2, 3, 10, clip=0.0)
    moved = {k: ours[k] - params0[k] for k in ours}
    # The change from the start, relative to its size (~0.03): float32 rounding of params of size
    # ~1 alone is ~1e-5 of it (measured 8.9e-6), so 1e-4; the unclipped run is 0.5 away.
    for k in ours:
        assert_close(moved[k], clipped[k] - params0[k], 1e-4, err_msg=k)
    assert max(scaled_diff(moved[k], unclipped[k] - params0[k]) for k in ours) > 1e-2


def test_lamb_applies_the_trust_ratio_with_the_same_mask():
    cfg = optim.default_config()
    cfg.name, cfg.warmup_steps, cfg.clip_global_norm = "lamb", 0, 0.0
    tx = optim.make_optimizer(cfg, total_steps=1000)
    params = {"dense": {"kernel": jnp.full((4, 4), 2.0)}, "LayerNorm": {"bias": jnp.zeros((4,))}}
    state = tx.init(params)
    grads = {"dense": {"kernel": jnp.full((4, 4), 0.5)}, "LayerNorm": {"bias": jnp.full((4,), 0.5)}}
    updates, _ = tx.update(grads, state, params)
    # Adam's first normalised step is sign(g) = 1; weight decay adds 0.01 * w for the kernel only.
    # The trust ratio rescales the kernel's update to ||w|| / ||update|| = 2 / (1 + 0.02): a step
    # of lr * 2 per element. The bias has ||w|| = 0, so its trust ratio is 1: a step of lr.
    lr = float(optim.learning_rate_schedule(1e-4, 0, 1000)(0))
    np.testing.assert_allclose(np.asarray(updates["dense"]["kernel"]), -lr * 2.0, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(updates["LayerNorm"]["bias"]), -lr * 1.0, rtol=1e-4)


def test_mask_on_the_real_model_tree():
    """On BertForPreTraining's own params (both layer layouts): exactly the LayerNorm params and
    the biases are excluded."""
    from bert_jax.config import BertConfig
    from bert_jax.modeling.models import BertForPreTraining

    for scan in (False, True):
        model = BertForPreTraining(BertConfig.preset("tiny", scan_layers=scan))
        boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
        is_box = lambda x: hasattr(x, "unbox")
        params = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, boxed, is_leaf=is_box)
        mask = optim.weight_decay_mask(params)
        flat = {optim.param_path(p): v for p, v in jax.tree_util.tree_leaves_with_path(
            mask, is_leaf=lambda x: isinstance(x, bool))}
        assert flat, "no params"
        for name, decayed in flat.items():
            excluded = "LayerNorm" in name or name.split("/")[-1] in ("bias", "output_bias")
            assert decayed == (not excluded), name
        decayed = sorted(name for name, v in flat.items() if v)
        assert len(decayed) == 6 + 6 * (1 if scan else 2)  # 3 embeddings, pooler, MLM transform, NSP + 6 kernels per layer


# ---- config.optimizer.frozen_params ---------------------------------------------------------


def _flat(tree):
    return {optim.param_path(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _split(params, prefix="bert"):
    return {k: v for k, v in params.items() if k == prefix}, {k: v for k, v in params.items() if k != prefix}


def test_frozen_params_stay_bitwise_and_the_rest_train_as_if_alone():
    """frozen_params='^bert/' over 4 AdamW steps (decay 0.01, clipping at 1.0, non-zero gradients
    everywhere): the bert/ leaves are bitwise their start, and the other leaves follow exactly
    what make_optimizer without frozen_params does to them alone (their own clipping norm)."""
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), _bert_like_params())
    grads = [jax.tree.map(lambda x: jnp.asarray(5 * rng.normal(size=x.shape), jnp.float32), params) for _ in range(4)]
    cfg = optim.default_config()
    cfg.warmup_steps, cfg.learning_rate = 1, 1e-2
    plain = optim.make_optimizer(cfg, total_steps=10)
    cfg.frozen_params = "^bert/"
    tx = optim.make_optimizer(cfg, total_steps=10)
    _, head = _split(params)
    state, head_state = tx.init(params), plain.init(head)
    start = jax.tree.map(np.array, params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        head_updates, head_state = plain.update(_split(g)[1], head_state, head)
        head = optax.apply_updates(head, head_updates)
    for name, value in _flat(params).items():
        if name.startswith("bert/"):
            assert np.array_equal(np.asarray(value), _flat(start)[name]), name
        else:
            assert np.array_equal(np.asarray(value), np.asarray(_flat(head)[name])), name
            assert not np.array_equal(np.asarray(value), _flat(start)[name]), name


def test_frozen_params_have_no_optimizer_state():
    cfg = optim.default_config()
    cfg.frozen_params, cfg.warmup_steps = r"^bert/(embeddings|encoder)/", 1
    params = _bert_like_params()
    state = optim.make_optimizer(cfg, total_steps=10).init(params)
    # Adam's moments: one pair per trained parameter and none for a frozen one.
    moments = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
               if isinstance(s, optax.ScaleByAdamState)]
    assert len(moments) == 1
    frozen = [n for n in _flat(params) if n.startswith(("bert/embeddings/", "bert/encoder/"))]
    trained = sorted(n for n in _flat(params) if n not in frozen)
    assert frozen and trained
    for field in (moments[0].mu, moments[0].nu):
        assert sorted(_flat(field)) == trained  # MaskedNode leaves of frozen params hold no array
    held = sum(x.size for x in jax.tree.leaves(state))
    assert held == 2 * sum(_flat(params)[n].size for n in trained) + 2  # mu, nu + Adam's and the schedule's counts


def test_frozen_params_errors_name_the_field():
    cfg = optim.default_config()
    cfg.warmup_steps = 1
    params = _bert_like_params()
    for pattern, message in (("^bert/(", r"frozen_params='\^bert/\(' is not a regular expression"),
                             ("^encoder/", r"frozen_params='\^encoder/' matches no parameter .* 'bert/"),
                             (".", r"frozen_params='.' matches every parameter: nothing would train")):
        cfg.frozen_params = pattern
        with pytest.raises(ValueError, match=message):
            optim.make_optimizer(cfg, total_steps=10).init(params)
    assert optim.default_config().frozen_params == ""  # BERT's default: nothing frozen
