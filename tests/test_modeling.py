"""The Flax BERT modules: parameter tree, shapes, masks, layouts, dtypes and remat.

Numerical parity with Hugging Face's PyTorch BERT lives in the checkpoint tests; here the
outside references are ARCHITECTURE.md's parameter tree, a NumPy re-implementation of the
pre-LN layer, and invariances the maths guarantees (padding, packing, scan == loop).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from bert_jax.config import BertConfig
from bert_jax.modeling import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    make_attention_mask,
    stack_layers,
    unstack_layers,
)
from bert_jax.modeling.attention import explicit_attention
from tests.tolerances import FORWARD_REL, assert_close, assert_tree_close

VOCAB = 97
# Gradients sum over the batch and the layers, so reduction order moves them more than outputs.
GRAD_REL = 1e-4


def tiny(**overrides) -> BertConfig:
    return BertConfig.preset("tiny", vocab_size=VOCAB, max_position_embeddings=64, **overrides)


def random_params(model, seed=0, scale=0.1):
    """Params with the shapes init makes, filled from NumPy: random biases and LayerNorm
    scales around 1, so zero biases / unit scales hide no bug (and nothing is compiled)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
    rng = np.random.RandomState(seed)

    def fill(path, leaf):
        noise = scale * rng.randn(*leaf.shape).astype(np.float32)
        return jnp.asarray(noise + 1.0 if path[-1].key == "scale" else noise, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(shapes))


def random_batch(batch=3, length=12, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, VOCAB, (batch, length)).astype(np.int32)
    types = rng.randint(0, 2, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    for b in range(1, batch):
        mask[b, length - 3 * b:] = 0  # rows with 0, 3, 6 padding tokens
    ids = ids * mask
    return ids, types, mask


# One jitted apply per model object, so tests that share a model share its compilations.
_MODELS = {}


def model_of(cls, **overrides):
    key = (cls, tuple(sorted(overrides.items())))
    if key not in _MODELS:
        model = cls(tiny(**overrides))
        _MODELS[key] = (model, jax.jit(model.apply, static_argnames=("deterministic",)))
    return _MODELS[key][0]


def apply(model, params, *args, **kwargs):
    for m, fn in _MODELS.values():
        if m is model:
            return fn({"params": params}, *args, **kwargs)
    return jax.jit(lambda p, *a: model.apply({"params": p}, *a, **kwargs))(params, *args)


@pytest.fixture(scope="module")
def params():
    """Random BertForPreTraining(tiny()) params (loop layout), shared by the tests."""
    return random_params(model_of(BertForPreTraining))


def init_shapes(model, length=4):
    """Param paths -> shapes without running the initialisers."""
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, length), jnp.int32))
    return paths_and_shapes(nn.meta.unbox(variables["params"]))


def paths_and_shapes(tree):
    return {"/".join(k.key for k in path): tuple(x.shape) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ------------------------------------------------------------------ parameter tree

def expected_pretraining_tree(H, L, I, V, P, T, N):
    """docs/ARCHITECTURE.md's tree, written out by hand."""
    D = H // N
    tree = {
        "bert/embeddings/word_embeddings/embedding": (V, H),
        "bert/embeddings/position_embeddings/embedding": (P, H),
        "bert/embeddings/token_type_embeddings/embedding": (T, H),
        "bert/embeddings/LayerNorm/scale": (H,),
        "bert/embeddings/LayerNorm/bias": (H,),
        "bert/pooler/dense/kernel": (H, H),
        "bert/pooler/dense/bias": (H,),
        "cls/predictions/transform/dense/kernel": (H, H),
        "cls/predictions/transform/dense/bias": (H,),
        "cls/predictions/transform/LayerNorm/scale": (H,),
        "cls/predictions/transform/LayerNorm/bias": (H,),
        "cls/predictions/output_bias": (V,),
        "cls/seq_relationship/kernel": (H, 2),
        "cls/seq_relationship/bias": (2,),
    }
    for i in range(L):
        p = f"bert/encoder/layer_{i}/"
        for name in ("query", "key", "value"):
            tree[p + f"attention/self/{name}/kernel"] = (H, N, D)
            tree[p + f"attention/self/{name}/bias"] = (N, D)
        tree[p + "attention/output/dense/kernel"] = (N, D, H)
        tree[p + "attention/output/dense/bias"] = (H,)
        tree[p + "attention/output/LayerNorm/scale"] = (H,)
        tree[p + "attention/output/LayerNorm/bias"] = (H,)
        tree[p + "intermediate/dense/kernel"] = (H, I)
        tree[p + "intermediate/dense/bias"] = (I,)
        tree[p + "output/dense/kernel"] = (I, H)
        tree[p + "output/dense/bias"] = (H,)
        tree[p + "output/LayerNorm/scale"] = (H,)
        tree[p + "output/LayerNorm/bias"] = (H,)
    return tree


def test_pretraining_param_tree_is_exactly_architecture_md():
    cfg = BertConfig.preset("tiny")
    variables = jax.eval_shape(BertForPreTraining(cfg).init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))
    assert set(variables) == {"params"}
    assert paths_and_shapes(nn.meta.unbox(variables["params"])) == expected_pretraining_tree(128, 2, 512, 30522, 512, 2, 2)
    mini = BertConfig.preset("mini", vocab_size=1000)
    assert init_shapes(BertForPreTraining(mini)) == expected_pretraining_tree(256, 4, 1024, 1000, 512, 2, 4)


def test_pre_ln_adds_only_the_final_layer_norm():
    expected = expected_pretraining_tree(128, 2, 512, VOCAB, 64, 2, 2)
    expected["bert/encoder/final_LayerNorm/scale"] = (128,)
    expected["bert/encoder/final_LayerNorm/bias"] = (128,)
    assert init_shapes(BertForPreTraining(tiny(pre_layer_norm=True))) == expected


def test_every_param_has_logical_axis_names_of_its_rank():
    model = BertForPreTraining(tiny(scan_layers=True))
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
    boxes = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert boxes and all(isinstance(b, nn.LogicallyPartitioned) for b in boxes)
    allowed = {"vocab", "embed", "heads", "kv", "mlp", "layers", None}
    for box in boxes:
        assert len(box.names) == len(box.value.shape) and set(box.names) <= allowed
    query = params["bert"]["encoder"]["layers"]["attention"]["self"]["query"]["kernel"]
    assert query.names == ("layers", "embed", "heads", "kv")
    assert params["bert"]["embeddings"]["word_embeddings"]["embedding"].names == ("vocab", "embed")
    assert params["cls"]["predictions"]["output_bias"].names == ("vocab",)


def test_initialisers_follow_google():
    cfg = BertConfig.preset("tiny", vocab_size=8000)
    params = nn.meta.unbox(jax.jit(BertForPreTraining(cfg).init)(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"])
    table = np.asarray(params["bert"]["embeddings"]["word_embeddings"]["embedding"])
    # tf.truncated_normal_initializer(0.02): N(0, 0.02^2) cut at 2 stddev, whose std is 0.02 * 0.8796.
    assert np.abs(table).max() <= 0.04 and abs(table.std() - 0.02 * 0.8796) < 2e-4
    layer = params["bert"]["encoder"]["layer_0"]
    assert np.all(np.asarray(layer["output"]["LayerNorm"]["scale"]) == 1)
    assert np.all(np.asarray(layer["intermediate"]["dense"]["bias"]) == 0)
    assert np.all(np.asarray(params["cls"]["predictions"]["output_bias"]) == 0)


# ------------------------------------------------------------------ outputs

def test_output_shapes_and_dtypes_of_all_models():
    ids, types, mask = random_batch(batch=2, length=10)
    cases = [
        (BertModel(tiny()), {"sequence_output": (2, 10, 128), "pooled_output": (2, 128)}),
        (BertForPreTraining(tiny()), {"mlm_logits": (2, 10, VOCAB), "nsp_logits": (2, 2)}),
        (BertForSequenceClassification(tiny(), num_labels=3), {"logits": (2, 3)}),
        (BertForSequenceClassification(tiny(), num_labels=1), {"logits": (2, 1)}),
        (BertForTokenClassification(tiny(), num_labels=5), {"logits": (2, 10, 5)}),
        (BertForQuestionAnswering(tiny()), {"start_logits": (2, 10), "end_logits": (2, 10)}),
    ]
    for model, shapes in cases:
        params = jax.eval_shape(model.init, jax.random.key(0), ids)["params"]
        out = jax.eval_shape(model.apply, {"params": params}, ids, types, mask)
        for name, shape in {"sequence_output": (2, 10, 128), "pooled_output": (2, 128), **shapes}.items():
            assert out[name].shape == shape, (type(model).__name__, name)
        for name in shapes:
            assert out[name].dtype == jnp.float32, (type(model).__name__, name)
    assert init_shapes(BertForSequenceClassification(tiny(), num_labels=3))["classifier/kernel"] == (128, 3)
    assert init_shapes(BertForQuestionAnswering(tiny()))["qa_outputs/kernel"] == (128, 2)


def test_task_heads_read_the_encoder_outputs(params):
    """Sequence classification = dense(pooled); token classification and QA = dense(sequence)."""
    ids, types, mask = random_batch()
    rng = np.random.RandomState(0)
    head = {"kernel": jnp.asarray(rng.randn(128, 2), jnp.float32), "bias": jnp.asarray(rng.randn(2), jnp.float32)}
    enc = apply(model_of(BertModel), params["bert"], ids, types, mask)
    pooled_ref = enc["pooled_output"] @ head["kernel"] + head["bias"]
    token_ref = enc["sequence_output"] @ head["kernel"] + head["bias"]
    for cls, head_name, check in [
        (BertForSequenceClassification, "classifier", lambda out: [(out["logits"], pooled_ref)]),
        (BertForTokenClassification, "classifier", lambda out: [(out["logits"], token_ref)]),
        (BertForQuestionAnswering, "qa_outputs",
         lambda out: [(out["start_logits"], token_ref[..., 0]), (out["end_logits"], token_ref[..., 1])]),
    ]:
        task_params = {"bert": params["bert"], head_name: head}
        model = cls(tiny())
        assert paths_and_shapes(task_params) == init_shapes(model), cls.__name__
        out = jax.jit(model.apply)({"params": task_params}, ids, types, mask)
        for got, want in check(out):
            assert got.dtype == jnp.float32
            assert_close(got, want, FORWARD_REL, err_msg=cls.__name__)


def test_masked_positions_gather_equals_full_logits_at_those_positions(params):
    model = model_of(BertForPreTraining)
    ids, types, mask = random_batch()
    full = apply(model, params, ids, types, mask)["mlm_logits"]
    positions = np.array([[0, 3, 3, 11], [1, 2, 5, 0], [4, 5, 0, 0]], np.int32)
    gathered = apply(model, params, ids, types, mask, masked_positions=positions)["mlm_logits"]
    assert gathered.shape == (3, 4, VOCAB)
    expected = np.take_along_axis(np.asarray(full), positions[:, :, None], axis=1)
    assert_close(gathered, expected, FORWARD_REL)


@pytest.mark.parametrize("overrides,packed", [
    ({}, False), ({"pre_layer_norm": True}, False), ({"scan_layers": True}, False),
    ({"remat": "full"}, False), ({}, True),
], ids=["post_ln", "pre_ln", "scan", "remat", "packed"])
def test_last_layer_at_masked_rows_only_equals_the_full_computation(overrides, packed):
    """With masked_positions the last layer computes only [CLS] and the masked rows. Outputs and
    gradients must equal the full model's, gathered afterwards (our own full path, computed
    with every position: the HF parity tests pin that one to transformers)."""
    model = BertForPreTraining(tiny(**overrides))
    params = random_params(model, seed=3)
    ids, types, mask = random_batch()
    segments = None
    if packed:  # two packed sequences per row; the per-query mask rows must be gathered too
        segments = np.where(mask == 1, 1 + (np.arange(ids.shape[1]) >= 5), 0).astype(np.int32)
    positions = np.array([[0, 3, 3, 11], [1, 2, 5, 0], [4, 5, 0, 1]], np.int32)
    take = lambda x: jnp.take_along_axis(x, positions[:, :, None], axis=1)  # noqa: E731

    def pruned(p):
        out = model.apply({"params": p}, ids, types, mask, packed_segment_ids=segments, masked_positions=positions)
        return out["mlm_logits"], out["nsp_logits"], out["pooled_output"], out["sequence_output"]

    def full(p):
        out = model.apply({"params": p}, ids, types, mask, packed_segment_ids=segments)
        return take(out["mlm_logits"]), out["nsp_logits"], out["pooled_output"], take(out["sequence_output"])

    for name, got, want in zip(("mlm", "nsp", "pooled", "rows"), jax.jit(pruned)(params), jax.jit(full)(params)):
        assert_close(got, want, FORWARD_REL, err_msg=name)
    loss = lambda fn: lambda p: sum(jnp.sum(jnp.sin(o)) for o in fn(p)[:3])  # noqa: E731
    grads = jax.jit(jax.grad(loss(pruned)))(params), jax.jit(jax.grad(loss(full)))(params)
    assert_tree_close(grads[0], grads[1], GRAD_REL)


def test_mlm_decoder_is_tied_to_the_word_embeddings(params):
    model = model_of(BertForPreTraining)
    ids, types, mask = random_batch()
    token = next(t for t in range(1, VOCAB) if t not in ids)  # only the decoder reads this row

    def logit(table):
        p = {**params, "bert": {**params["bert"], "embeddings": {
            **params["bert"]["embeddings"], "word_embeddings": {"embedding": table}}}}
        out = model.apply({"params": p}, ids, types, mask, masked_positions=np.zeros((3, 1), np.int32))
        return out["mlm_logits"][0, 0, token]

    grad = jax.jit(jax.grad(logit))(params["bert"]["embeddings"]["word_embeddings"]["embedding"])
    assert float(jnp.abs(grad[token]).max()) > 0


# ------------------------------------------------------------------ invariances

def test_padding_does_not_change_real_positions(params):
    model = model_of(BertForPreTraining)
    ids, types, mask = random_batch()
    padded = apply(model, params, ids, types, mask)
    for b in (1, 2):  # 3 and 6 padding tokens
        n = int(mask[b].sum())
        alone = apply(model, params, ids[b:b + 1, :n], types[b:b + 1, :n], mask[b:b + 1, :n])
        for name in ("sequence_output", "mlm_logits"):
            assert_close(padded[name][b, :n], alone[name][0], FORWARD_REL, err_msg=name)
        for name in ("pooled_output", "nsp_logits"):
            assert_close(padded[name][b], alone[name][0], FORWARD_REL, err_msg=name)
    # And the mask is really used: without it, row 2's real positions change.
    unmasked = apply(model, params, ids, types, np.ones_like(mask))
    assert np.abs(unmasked["sequence_output"][2, :6] - padded["sequence_output"][2, :6]).max() > 1e-3


@pytest.mark.parametrize("with_attention_mask", [True, False])
def test_packed_examples_equal_separate_runs(params, with_attention_mask):
    model = model_of(BertModel)
    rng = np.random.RandomState(1)
    a, b = rng.randint(1, VOCAB, 5).astype(np.int32), rng.randint(1, VOCAB, 7).astype(np.int32)
    ta, tb = np.array([0, 0, 0, 1, 1], np.int32), np.array([0, 0, 0, 0, 1, 1, 1], np.int32)
    row, types, positions, segments = (np.zeros((1, 16), np.int32) for _ in range(4))
    row[0, :5], row[0, 5:12] = a, b
    types[0, :5], types[0, 5:12] = ta, tb
    positions[0, :5], positions[0, 5:12] = np.arange(5), np.arange(7)  # restarted per example
    segments[0, :5], segments[0, 5:12] = 1, 2
    mask = (segments > 0).astype(np.int32) if with_attention_mask else None
    packed = apply(model, params["bert"], row, types, mask, positions, segments)["sequence_output"]
    alone_a = apply(model, params["bert"], a[None], ta[None])["sequence_output"]
    alone_b = apply(model, params["bert"], b[None], tb[None])["sequence_output"]
    assert_close(packed[0, :5], alone_a[0], FORWARD_REL)
    assert_close(packed[0, 5:12], alone_b[0], FORWARD_REL)
    assert np.all(np.isfinite(packed))  # the padding rows attend to nothing and stay finite


def test_packed_mask_is_block_diagonal_and_skips_padding():
    segments = np.array([[1, 1, 2, 2, 2, 0]], np.int32)
    mask = np.asarray(make_attention_mask(None, segments))[0, 0]
    expected = np.zeros((6, 6), bool)
    expected[:2, :2] = True
    expected[2:5, 2:5] = True
    np.testing.assert_array_equal(mask, expected)
    padding = np.asarray(make_attention_mask(np.array([[1, 1, 0]]), None))
    assert padding.shape == (1, 1, 1, 3) and padding.tolist() == [[[[True, True, False]]]]
    assert make_attention_mask(None, None) is None


def test_scan_layers_equal_the_loop_after_stack_layers(params):
    loop_model, scan_model = model_of(BertForPreTraining), model_of(BertForPreTraining, scan_layers=True)
    ids, types, mask = random_batch()
    stacked = stack_layers(params)
    scan_shapes = init_shapes(scan_model)
    assert paths_and_shapes(stacked) == scan_shapes
    assert scan_shapes["bert/encoder/layers/attention/self/query/kernel"] == (2, 128, 2, 64)
    loop_out = apply(loop_model, params, ids, types, mask)
    scan_out = apply(scan_model, stacked, ids, types, mask)
    for name in loop_out:
        assert_close(scan_out[name], loop_out[name], FORWARD_REL, err_msg=name)
    round_trip = unstack_layers(stacked)
    assert jax.tree.structure(round_trip) == jax.tree.structure(params)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(round_trip), jax.tree.leaves(params)))


def test_stack_layers_rejects_gaps():
    with pytest.raises(ValueError, match=r"layer indices \[0, 2\]"):
        stack_layers({"layer_0": {"w": jnp.ones(2)}, "layer_2": {"w": jnp.ones(2)}})


# ------------------------------------------------------------------ pre-LN against NumPy

def _np_layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _np_gelu(x):
    from scipy.special import erf
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _np_pre_ln_encoder(bert, cfg, ids, types, mask):
    """Pre-LN BERT (Xiong et al. 2020): x + f(LN(x)) per sublayer, then a final LayerNorm."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), bert)
    e = p["embeddings"]
    x = e["word_embeddings"]["embedding"][ids] + e["position_embeddings"]["embedding"][np.arange(ids.shape[1])]
    x = _np_layer_norm(x + e["token_type_embeddings"]["embedding"][types], e["LayerNorm"], cfg.layer_norm_eps)
    bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
    for i in range(cfg.num_hidden_layers):
        lp = p["encoder"][f"layer_{i}"]
        att = lp["attention"]
        h = _np_layer_norm(x, att["output"]["LayerNorm"], cfg.layer_norm_eps)
        q, k, v = (np.einsum("ble,end->blnd", h, att["self"][n]["kernel"]) + att["self"][n]["bias"]
                   for n in ("query", "key", "value"))
        logits = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(cfg.head_dim) + bias
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = np.einsum("bnqk,bknd->bqnd", probs, v)
        x = x + np.einsum("bqnd,nde->bqe", ctx, att["output"]["dense"]["kernel"]) + att["output"]["dense"]["bias"]
        h = _np_layer_norm(x, lp["output"]["LayerNorm"], cfg.layer_norm_eps)
        inner = _np_gelu(h @ lp["intermediate"]["dense"]["kernel"] + lp["intermediate"]["dense"]["bias"])
        x = x + inner @ lp["output"]["dense"]["kernel"] + lp["output"]["dense"]["bias"]
    return _np_layer_norm(x, p["encoder"]["final_LayerNorm"], cfg.layer_norm_eps)


def test_pre_ln_matches_a_numpy_reference(params):
    cfg = tiny(pre_layer_norm=True)
    rng = np.random.RandomState(2)
    final = {"scale": jnp.asarray(1 + 0.1 * rng.randn(128), jnp.float32), "bias": jnp.asarray(0.1 * rng.randn(128), jnp.float32)}
    bert = {**params["bert"], "encoder": {**params["bert"]["encoder"], "final_LayerNorm": final}}
    ids, types, mask = random_batch()
    out = jax.jit(BertModel(cfg).apply)({"params": bert}, ids, types, mask)["sequence_output"]
    ref = _np_pre_ln_encoder(bert, cfg, ids, types, mask)
    real = mask.astype(bool)
    assert_close(np.asarray(out)[real], ref[real], FORWARD_REL)
    post = apply(model_of(BertModel), params["bert"], ids, types, mask)["sequence_output"]
    assert np.abs(np.asarray(post)[real] - ref[real]).max() > 1e-2  # the knob changes the model


# ------------------------------------------------------------------ dtypes, remat, dropout

def test_bfloat16_compute_gives_float32_logits_close_to_float32(params):
    ids, types, mask = random_batch()
    ref = apply(model_of(BertForPreTraining), params, ids, types, mask)
    out = jax.jit(BertForPreTraining(tiny(dtype="bfloat16")).apply)({"params": params}, ids, types, mask)
    assert out["sequence_output"].dtype == jnp.bfloat16
    for name in ("mlm_logits", "nsp_logits"):
        assert out[name].dtype == jnp.float32
        scale = float(np.abs(ref[name]).max())
        err = float(np.abs(out[name] - ref[name]).max())
        assert err <= 0.05 * scale, (name, err, scale)


def test_bfloat16_params(params):
    model = BertForPreTraining(tiny(param_dtype="bfloat16", dtype="bfloat16"))
    ids, types, mask = random_batch()
    shapes = jax.eval_shape(model.init, jax.random.key(0), ids)["params"]
    assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.bfloat16)}
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    out = jax.jit(model.apply)({"params": bf16}, ids, types, mask)
    assert out["mlm_logits"].dtype == jnp.float32 and np.all(np.isfinite(out["mlm_logits"]))


def _loss_and_grad(model, params, dropout):
    ids, types, mask = random_batch()

    def loss(p):
        out = model.apply({"params": p}, ids, types, mask, deterministic=not dropout,
                          rngs={"dropout": jax.random.key(3)})
        return jnp.mean(out["mlm_logits"] ** 2) + jnp.mean(out["nsp_logits"] ** 2)

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("remat, scan, dropout", [("full", False, False), ("minimal", True, True)])
def test_remat_gives_identical_outputs_and_grads(params, remat, scan, dropout):
    params = stack_layers(params) if scan else params
    ref_loss, ref_grad = _loss_and_grad(BertForPreTraining(tiny(scan_layers=scan)), params, dropout)
    loss, grad = _loss_and_grad(BertForPreTraining(tiny(scan_layers=scan, remat=remat)), params, dropout)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert_tree_close(grad, ref_grad, GRAD_REL)


def test_dropout_path_without_dropout_equals_dot_product_attention():
    rng = np.random.RandomState(0)
    q, k, v = (jnp.asarray(rng.randn(2, 6, 3, 8), jnp.float32) for _ in range(3))
    mask = make_attention_mask(jnp.array([[1, 1, 1, 1, 0, 0], [1] * 6]), jnp.array([[1, 1, 2, 2, 0, 0], [1, 1, 1, 2, 2, 2]]))
    ref = jax.nn.dot_product_attention(q, k, v, mask=mask)
    assert_close(explicit_attention(q, k, v, mask), ref, FORWARD_REL)


def test_dropout_is_active_only_when_not_deterministic(params):
    model = model_of(BertModel)
    ids, types, mask = random_batch()
    eval_out = apply(model, params["bert"], ids, types, mask)["sequence_output"]
    train = jax.jit(lambda p, key: model.apply({"params": p}, ids, types, mask, deterministic=False,
                                               rngs={"dropout": key})["sequence_output"])
    a, b = train(params["bert"], jax.random.key(1)), train(params["bert"], jax.random.key(2))
    assert np.abs(a - b).max() > 1e-2 and np.abs(a - eval_out).max() > 1e-2
    np.testing.assert_array_equal(a, train(params["bert"], jax.random.key(1)))


# ------------------------------------------------------------------ input errors

def test_mismatched_input_shapes_are_named():
    model = BertModel(tiny())
    ids = jnp.ones((2, 8), jnp.int32)
    init = lambda *a, **k: jax.eval_shape(model.init, jax.random.key(0), *a, **k)  # noqa: E731
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids \(2, 8\), found \(2, 7\)"):
        init(ids, None, jnp.ones((2, 7), jnp.int32))
    with pytest.raises(ValueError, match="input_ids has length 65 but max_position_embeddings is 64"):
        init(jnp.ones((1, 65), jnp.int32))
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, length\]"):
        init(jnp.ones((8,), jnp.int32))
    with pytest.raises(ValueError, match="masked_positions must be"):
        jax.eval_shape(BertForPreTraining(tiny()).init, jax.random.key(0), ids, masked_positions=jnp.zeros((3, 2), jnp.int32))


@pytest.mark.parametrize("name", ["gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish"])
def test_hidden_act_matches_transformers(name):
    torch = pytest.importorskip("torch")
    from transformers.activations import ACT2FN

    from bert_jax.modeling.common import activation

    x = np.linspace(-6, 6, 1001, dtype=np.float32)
    expected = ACT2FN[name](torch.from_numpy(x)).numpy()
    assert_close(np.asarray(activation(name)(jnp.asarray(x))), expected, FORWARD_REL, err_msg=name)
