"""The feature-based mode (the paper's Table 7, ELMo-style) and the hidden states it reads.

- BertModel(output_hidden_states=True) equals Hugging Face's BertModel(output_hidden_states=True)
  layer by layer, in the loop and the scan layouts (and pre-LN: loop == scan, last == output);
- each layer combination equals the same combination computed here by hand from the hidden
  states, and the feature model's logits are that combination fed to its BiLSTM and classifier;
- no gradient reaches the encoder; through the real trainer a frozen encoder's params are
  bitwise the checkpoint's after training, the head's changed, and the optimizer holds no
  moments for the encoder;
- the errors of the mode name their fields.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from bert_jax.config import BertConfig
from bert_jax.modeling import FEATURE_MODES, BertBiLSTMForTokenClassification, BertModel, LayerFeatures, stack_layers
from bert_jax.tasks import features as features_lib
from tests.finetune_helpers import WORDS, short_run, word_checkpoint, write_conll, write_vocab
from tests.model_helpers import padded_batch, random_params
from tests.tolerances import assert_close

CONFIG = BertConfig.preset("tiny", vocab_size=60, max_position_embeddings=32, hidden_size=32, num_attention_heads=2,
                           intermediate_size=64, num_hidden_layers=4)


def _hidden_states(config, params, ids, mask):
    fn = jax.jit(lambda p: BertModel(config).apply({"params": p}, ids, attention_mask=mask, output_hidden_states=True))
    return fn(params)


# ---- hidden states ----------------------------------------------------------------------------


def test_hidden_states_equal_transformers_in_both_layouts(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from bert_jax import load_pretrained

    torch.manual_seed(0)
    hf_config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                        intermediate_size=64, max_position_embeddings=32, attn_implementation="eager")
    hf_model = transformers.BertModel(hf_config).eval()
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf_model.save_pretrained(tmp_path)
    config, params = load_pretrained(tmp_path)
    ids, mask = padded_batch()
    with torch.no_grad():
        reference = hf_model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                             output_hidden_states=True).hidden_states
    assert len(reference) == 4
    loop = _hidden_states(config, params["bert"], ids, mask)
    scan = _hidden_states(dataclasses.replace(config, scan_layers=True), stack_layers(params["bert"]), ids, mask)
    for name, out in (("loop", loop), ("scan", scan)):
        assert out["hidden_states"].shape == (4, 3, 12, 32)
        for i, want in enumerate(reference):
            real = mask > 0
            assert_close(np.asarray(out["hidden_states"][i])[real], want.numpy()[real], err_msg=f"{name} hidden {i}")
        np.testing.assert_array_equal(out["hidden_states"][-1], out["sequence_output"])


def test_pre_layer_norm_hidden_states_agree_across_layouts():
    config = dataclasses.replace(CONFIG, pre_layer_norm=True)
    params = nn.meta.unbox(BertModel(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    ids, mask = padded_batch()
    loop = _hidden_states(config, params, ids, mask)
    scan = _hidden_states(dataclasses.replace(config, scan_layers=True), stack_layers(params), ids, mask)
    assert_close(scan["hidden_states"], loop["hidden_states"], err_msg="scan vs loop")
    np.testing.assert_array_equal(loop["hidden_states"][-1], loop["sequence_output"])  # after final_LayerNorm
    with pytest.raises(ValueError, match="output_hidden_states needs every position"):
        BertModel(config).apply({"params": params}, ids, attention_mask=mask, output_hidden_states=True,
                                output_positions=jnp.zeros((3, 2), jnp.int32))


# ---- the layer combinations ---------------------------------------------------------------------


def _by_hand(mode, hidden, weights=None, gamma=None):
    h = np.asarray(hidden, np.float64)
    if mode == "embeddings":
        return h[0]
    if mode == "second_to_last":
        return h[-2]
    if mode == "last":
        return h[-1]
    if mode == "concat_last_four":
        return np.concatenate([h[-4], h[-3], h[-2], h[-1]], axis=-1)
    chosen = h[-4:] if mode == "sum_last_four" else h
    w = np.exp(weights - np.max(weights))
    w = w / w.sum()
    return gamma * sum(w[j] * chosen[j] for j in range(len(chosen)))


@pytest.mark.parametrize("mode", FEATURE_MODES)
def test_each_combination_equals_the_hand_computed_one(mode):
    rng = np.random.default_rng(3)
    hidden = rng.normal(size=(5, 2, 6, 8)).astype(np.float32)  # 4 layers + embeddings
    module = LayerFeatures(mode)
    params = module.init(jax.random.PRNGKey(0), hidden).get("params", {})
    weights = gamma = None
    if mode in ("sum_last_four", "sum_all"):
        assert params["weights"].shape == ((4,) if mode == "sum_last_four" else (5,))
        weights, gamma = rng.normal(size=params["weights"].shape), 1.7
        params = {"weights": jnp.asarray(weights, jnp.float32), "gamma": jnp.float32(gamma)}
    else:
        assert not params  # nothing to learn
    got = module.apply({"params": params}, hidden)
    assert got.dtype == jnp.float32
    assert_close(got, _by_hand(mode, hidden, weights, gamma), err_msg=mode)


def test_last_four_needs_three_layers():
    with pytest.raises(ValueError, match=r"features='concat_last_four' needs 4 hidden states .* the model has 2 layer"):
        LayerFeatures("concat_last_four").init(jax.random.PRNGKey(0), jnp.zeros((3, 1, 4, 8)))


@pytest.mark.parametrize("mode", ["concat_last_four", "sum_all"])
def test_feature_model_feeds_the_combination_to_its_bilstm(mode):
    """logits = classifier(BiLSTM(combination of BertModel's hidden states)), each piece applied
    alone here with the model's own params; with dropout on (deterministic=False, CONFIG's 0.1)
    the encoder still runs without it, so the mixed features are the same."""
    from bert_jax.modeling import BiLSTM
    from bert_jax.modeling.recurrent import lengths_from_mask

    model = BertBiLSTMForTokenClassification(CONFIG, num_labels=4, bilstm_hidden_size=6, features=mode)
    params = random_params(model)
    ids, mask = padded_batch()
    logits = jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=mask)["logits"])(params)
    hidden = _hidden_states(CONFIG, params["bert"], ids, mask)["hidden_states"]
    mix = params.get("feature_mix")
    features = _by_hand(mode, hidden, None if mix is None else np.asarray(mix["weights"], np.float64),
                        None if mix is None else float(mix["gamma"]))
    seq, _ = BiLSTM(6, 2).apply({"params": params["bilstm"]}, jnp.asarray(features, jnp.float32), lengths_from_mask(mask))
    want = np.asarray(seq) @ np.asarray(params["classifier"]["kernel"]) + np.asarray(params["classifier"]["bias"])
    real = mask > 0
    assert_close(np.asarray(logits)[real], want[real], err_msg=mode)
    # Training (dropout on): the features are still those of the encoder without dropout.
    _, captured = model.apply({"params": params}, ids, attention_mask=mask, deterministic=False,
                              rngs={"dropout": jax.random.PRNGKey(3)}, mutable=["intermediates"],
                              capture_intermediates=lambda m, _: isinstance(m, LayerFeatures))
    (mixed,) = captured["intermediates"]["feature_mix"]["__call__"]
    assert_close(mixed, features, err_msg=f"{mode}, training")


def test_no_gradient_reaches_the_encoder_in_feature_mode():
    ids, mask = padded_batch()
    for features in ("sum_last_four", ""):
        model = BertBiLSTMForTokenClassification(CONFIG, num_labels=4, bilstm_hidden_size=6, features=features)
        params = random_params(model)
        loss = lambda p: jnp.sum(model.apply({"params": p}, ids, attention_mask=mask, deterministic=False,
                                             rngs={"dropout": jax.random.PRNGKey(1)})["logits"] ** 2)
        grads = jax.jit(jax.grad(loss))(params)
        flat = {k: float(jnp.max(jnp.abs(v))) for k, v in
                {"/".join(str(getattr(q, "key", q)) for q in p): v for p, v in jax.tree_util.tree_leaves_with_path(grads)}.items()}
        encoder = [v for k, v in flat.items() if k.startswith("bert/")]
        head = [v for k, v in flat.items() if not k.startswith("bert/") and not k.endswith("bias")]
        assert all(v > 0 for v in head), features
        if features:
            assert max(encoder) == 0.0  # stop_gradient: the encoder gets exactly zero
        else:
            assert sum(v > 0 for v in encoder) > len(encoder) // 2  # fine-tuning trains the encoder


# ---- through the trainer --------------------------------------------------------------------


def _leaves(tree):
    from bert_jax import optim
    return {optim.param_path(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
def test_frozen_encoder_is_bitwise_unchanged_after_training(tmp_path):
    """A feature-based NER run (sum_last_four, scan layout, weight decay 0.01, lr 1e-3) of 4 steps
    through train_and_evaluate: the encoder's params equal the checkpoint's bit for bit, every
    head param changed, and Adam's moments exist for the head's params only."""
    import optax

    from bert_jax import load_pretrained, train
    from experiments import finetune_ner

    checkpoint, _ = word_checkpoint(tmp_path, num_hidden_layers=3)
    config = short_run(finetune_ner.get_config(",features=sum_last_four"), checkpoint, steps=4)
    config.train_file = config.eval_file = str(write_conll(tmp_path / "train.conll"))
    config.task.bilstm_hidden_size = 8
    config.model.scan_layers = True
    assert config.optimizer.frozen_params == "^bert/" and config.optimizer.weight_decay == 0.01
    results, state = train.train_and_evaluate(config, tmp_path / "run", devices=jax.devices()[:1], return_state=True)
    assert "f1" in results["final_metrics"]
    assert json.loads((tmp_path / "run" / "head.json").read_text())["model_class"] == "BertBiLSTMForTokenClassification"

    _, loaded = load_pretrained(checkpoint)
    start = _leaves({"bert": stack_layers(loaded["bert"])})
    final = _leaves(state.params)
    encoder = [k for k in final if k.startswith("bert/")]
    assert sorted(encoder) == sorted(start) and any("/encoder/layers/" in k for k in encoder)
    for name in encoder:
        assert final[name].tobytes() == start[name].astype(final[name].dtype).tobytes(), name
    # The head's params moved from the trainer's init (model.init with the run's init key).
    from bert_jax.tasks import make_task
    resolved = BertConfig(**json.loads((tmp_path / "run" / "model_config.json").read_text()))
    init_key = jax.random.split(jax.random.PRNGKey(int(config.seed)))[0]
    init = _leaves(nn.meta.unbox(make_task(config).make_model(resolved).init(
        {"params": init_key, "dropout": init_key}, jnp.zeros((1, 8), jnp.int32), deterministic=True)["params"]))
    head = [k for k in final if not k.startswith("bert/")]
    assert {k.split("/")[0] for k in head} == {"bilstm", "classifier", "feature_mix"}
    for name in head:
        assert final[name].shape == init[name].shape and not np.array_equal(final[name], init[name]), name
    adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]
    assert len(adam) == 1
    assert sorted(_leaves(adam[0].mu)) == sorted(_leaves(adam[0].nu)) == sorted(head)


# ---- errors ---------------------------------------------------------------------------------


def test_feature_mode_without_a_frozen_encoder_is_an_error(tmp_path):
    from bert_jax.tasks import ner
    from experiments import finetune_ner

    config = finetune_ner.get_config(",features=last")
    config.optimizer.frozen_params = ""
    with pytest.raises(ValueError, match=r"config.task.features='last' .* config.optimizer.frozen_params is empty"):
        ner.from_config(config)

    vocab = features_lib.load_tokenizer(write_vocab(tmp_path / "vocab.txt"))
    sentences = ner.read_conll(write_conll(tmp_path / "t.conll", n=2))
    cfg = BertConfig.preset("tiny", vocab_size=5 + len(WORDS), num_hidden_layers=2)
    head = features_lib.HeadOptions(head="bilstm", features="last")
    for pattern, message in (
        ("^bert/encoder/", r"config.task.features='last' .* config.optimizer.frozen_params='\^bert/encoder/' leaves "
                           r"\d+ encoder parameter\(s\) training \(e.g. bert/embeddings/"),
        ("^(bert|classifier)/", r"also freezes the head \(classifier/bias"),
    ):
        task = ner.NerTask(tokenizer=vocab, train_sentences=sentences, eval_sentences=sentences, head=head,
                           frozen_params=pattern)
        with pytest.raises(ValueError, match=message):
            task.make_model(cfg)
    task = ner.NerTask(tokenizer=vocab, train_sentences=sentences, eval_sentences=sentences, head=head,
                       frozen_params="^bert/")
    assert task.make_model(cfg).features == "last"
