"""BertConfig: presets, Google / Hugging Face JSON round trips, and the errors users see."""

import json

import pytest

from bert_jax.config import PRESETS, BertConfig, ConfigError

# google-research/bert's bert_config.json for BERT-Base, Uncased (as released).
GOOGLE_BASE = {
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "type_vocab_size": 2,
    "vocab_size": 30522,
}


@pytest.mark.parametrize(
    "name, layers, hidden, heads",
    [("tiny", 2, 128, 2), ("mini", 4, 256, 4), ("small", 4, 512, 8), ("medium", 8, 512, 8),
     ("base", 12, 768, 12), ("large", 24, 1024, 16)],
)
def test_presets_match_googles_released_sizes(name, layers, hidden, heads):
    cfg = BertConfig.preset(name)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (layers, hidden, heads)
    assert cfg.intermediate_size == 4 * hidden
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.type_vocab_size) == (30522, 512, 2)
    assert cfg.layer_norm_eps == 1e-12 and cfg.hidden_act == "gelu"


def test_paper_defaults_of_the_knobs():
    cfg = BertConfig.preset("base")
    assert cfg.pre_layer_norm is False and cfg.scan_layers is False and cfg.remat == "none"
    assert cfg.dtype == "float32" and cfg.param_dtype == "float32"
    assert (cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob, cfg.initializer_range) == (0.1, 0.1, 0.02)


def test_preset_overrides_and_unknown_preset():
    cfg = BertConfig.preset("mini", vocab_size=100, scan_layers=True)
    assert cfg.vocab_size == 100 and cfg.scan_layers and cfg.hidden_size == 256
    with pytest.raises(ConfigError, match="unknown BertConfig preset 'huge'.*tiny, mini"):
        BertConfig.preset("huge")
    assert set(PRESETS) == {"tiny", "mini", "small", "medium", "base", "large"}


def test_google_bert_config_json_round_trip(tmp_path):
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(GOOGLE_BASE))
    cfg = BertConfig.from_json_file(path)
    assert cfg == BertConfig.preset("base")
    out = tmp_path / "out.json"
    cfg.to_json_file(out, format="google")
    assert json.loads(out.read_text()) == GOOGLE_BASE


def test_hf_config_json_round_trip_through_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                 intermediate_size=96, hidden_act="gelu_new", layer_norm_eps=1e-7)
    hf.save_pretrained(tmp_path / "hf")  # real HF file: model_type, transformers_version, dtype, ...
    cfg = BertConfig.from_json_file(tmp_path / "hf" / "config.json")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 3, 4)
    assert (cfg.intermediate_size, cfg.hidden_act, cfg.layer_norm_eps) == (96, "gelu_new", 1e-7)
    assert cfg.dtype == "float32"  # HF's torch "dtype" is not our compute dtype

    (tmp_path / "ours").mkdir()
    cfg.to_json_file(tmp_path / "ours" / "config.json", format="hf")
    back = transformers.BertConfig.from_pretrained(tmp_path / "ours")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "layer_norm_eps", "vocab_size", "max_position_embeddings", "type_vocab_size"):
        assert getattr(back, key) == getattr(hf, key), key
    assert BertConfig.from_json_file(tmp_path / "ours" / "config.json") == cfg


def test_real_hf_config_of_minilm(shared_data):
    cfg = BertConfig.from_json_file(shared_data / "models/all-MiniLM-L6-v2/config.json")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (6, 384, 12, 1536)
    cfg.validate_vocab(shared_data / "models/all-MiniLM-L6-v2/vocab.txt")


def test_bert_jax_format_keeps_the_knobs(tmp_path):
    cfg = BertConfig.preset("tiny", pre_layer_norm=True, scan_layers=True, remat="full",
                            dtype="bfloat16", param_dtype="bfloat16", hidden_act="relu")
    cfg.to_json_file(tmp_path / "c.json")
    assert BertConfig.from_json_file(tmp_path / "c.json") == cfg
    assert BertConfig.from_dict(cfg.to_dict()) == cfg


def test_pre_ln_cannot_be_exported_as_plain_bert(tmp_path):
    with pytest.raises(ConfigError, match="pre_layer_norm"):
        BertConfig.preset("tiny", pre_layer_norm=True).to_json_file(tmp_path / "c.json", format="hf")


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps({**GOOGLE_BASE, "num_hiden_layers": 3}))
    with pytest.raises(ConfigError) as e:
        BertConfig.from_json_file(path)
    msg = str(e.value)
    assert "'num_hiden_layers'" in msg and str(path) in msg and "num_hidden_layers" in msg


def test_hf_options_that_change_the_architecture_are_refused():
    with pytest.raises(ConfigError, match="position_embedding_type='relative_key'"):
        BertConfig.from_dict({**GOOGLE_BASE, "model_type": "bert", "position_embedding_type": "relative_key"})
    with pytest.raises(ConfigError, match="is_decoder=True"):
        BertConfig.from_dict({**GOOGLE_BASE, "is_decoder": True})


def test_heads_must_divide_hidden_size():
    with pytest.raises(ConfigError, match="hidden_size=768 is not divisible by num_attention_heads=10"):
        BertConfig.preset("base", num_attention_heads=10)


@pytest.mark.parametrize(
    "field, value, expected",
    [("hidden_act", "gleu", "hidden_act='gleu'.*gelu_new"),
     ("dtype", "float64", "dtype='float64'.*bfloat16"),
     ("param_dtype", "int8", "param_dtype='int8'"),
     ("remat", "some", "remat='some'.*minimal"),
     ("num_hidden_layers", 0, "num_hidden_layers must be a positive integer, found 0"),
     ("hidden_dropout_prob", 1.5, "hidden_dropout_prob must be a probability"),
     ("pre_layer_norm", "yes", "pre_layer_norm must be true or false")],
)
def test_bad_values_give_clear_errors(field, value, expected):
    with pytest.raises(ConfigError, match=expected):
        BertConfig.preset("tiny", **{field: value})


def test_all_hidden_acts_accepted():
    for act in ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish"):
        assert BertConfig.preset("tiny", hidden_act=act).hidden_act == act


def test_vocab_file_must_match_vocab_size(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(f"tok{i}\n" for i in range(10)))
    BertConfig.preset("tiny", vocab_size=10).validate_vocab(vocab)
    with pytest.raises(ConfigError) as e:
        BertConfig.preset("tiny", vocab_size=12).validate_vocab(vocab)
    assert str(vocab) in str(e.value) and "10 entries" in str(e.value) and "vocab_size is 12" in str(e.value)


def test_real_vocab_file(shared_data):
    BertConfig.preset("base").validate_vocab(shared_data / "vocab/bert-base-uncased-vocab.txt")
    with pytest.raises(ConfigError, match="30522 entries but BertConfig.vocab_size is 28996"):
        BertConfig.preset("base", vocab_size=28996).validate_vocab(shared_data / "vocab/bert-base-uncased-vocab.txt")


def test_bad_json_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        BertConfig.from_json_file(path)


def test_config_is_frozen_and_hashable():
    cfg = BertConfig.preset("tiny")
    with pytest.raises(Exception):
        cfg.hidden_size = 3
    assert hash(cfg) == hash(BertConfig.preset("tiny"))


def test_google_multilingual_config_with_unused_pooler_keys(tmp_path):
    # As released with multi_cased_L-12_H-768_A-12 (vocab 119547).
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps({**GOOGLE_BASE, "vocab_size": 119547, "directionality": "bidi", "pooler_fc_size": 768,
                                "pooler_num_attention_heads": 12, "pooler_num_fc_layers": 3,
                                "pooler_size_per_head": 128, "pooler_type": "first_token_transform"}))
    assert BertConfig.from_json_file(path) == BertConfig.preset("base", vocab_size=119547)


def test_validate_vocab_reads_sentencepiece_models(tmp_path):
    import sentencepiece

    from bert_jax.config import BertConfig, ConfigError

    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"sentence number {i} with some words in it" for i in range(200)) + "\n")
    sentencepiece.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "spm"), vocab_size=40,
                                             model_type="unigram", minloglevel=2)
    BertConfig.preset("tiny", vocab_size=40).validate_vocab(tmp_path / "spm.model")
    with pytest.raises(ConfigError, match="has 40 entries but BertConfig.vocab_size is 30522"):
        BertConfig.preset("tiny").validate_vocab(tmp_path / "spm.model")


# ------------------------------------------------------------------ cuDNN attention and dropout
# cuDNN's fused attention has no dropout. A config asking for both must fail, naming the two
# fields and the two valid choices, and never silently run XLA attention instead (issue 17).


@pytest.mark.parametrize("make", [
    lambda: BertConfig.preset("tiny", attention_implementation="cudnn"),  # the paper's 0.1 by default
    lambda: BertConfig.preset("tiny", attention_implementation="cudnn", attention_probs_dropout_prob=0.05),
    lambda: BertConfig.preset("tiny", attention_probs_dropout_prob=0.0, attention_implementation="cudnn")
    .replace(attention_probs_dropout_prob=0.1),
    lambda: BertConfig.from_dict({**GOOGLE_BASE, "attention_implementation": "cudnn"}, source="run.json"),
], ids=["preset default dropout", "explicit 0.05", "replace", "from_dict"])
def test_cudnn_with_attention_dropout_is_an_error_naming_both_choices(make):
    with pytest.raises(ConfigError) as e:
        make()
    message = str(e.value)
    assert "attention_implementation='cudnn'" in message
    assert "attention_probs_dropout_prob=" in message
    assert "attention_probs_dropout_prob=0.0 with attention_implementation='cudnn'" in message
    assert "attention_implementation='xla' with attention_probs_dropout_prob=" in message


def test_the_two_valid_attention_choices():
    fused = BertConfig.preset("base", attention_implementation="cudnn", attention_probs_dropout_prob=0.0)
    paper = BertConfig.preset("base", attention_implementation="xla", attention_probs_dropout_prob=0.1)
    assert (fused.attention_implementation, fused.attention_probs_dropout_prob) == ("cudnn", 0.0)
    assert (paper.attention_implementation, paper.attention_probs_dropout_prob) == ("xla", 0.1)
    # hidden dropout is not attention dropout: cudnn keeps the paper's 0.1 there
    assert fused.hidden_dropout_prob == 0.1


def test_released_checkpoint_configs_still_load_and_can_switch_to_cudnn_explicitly(tmp_path):
    """Google / HF configs carry attention_probs_dropout_prob=0.1 and no attention_implementation:
    they load as before (xla); switching to cudnn takes both fields."""
    (tmp_path / "bert_config.json").write_text(json.dumps(GOOGLE_BASE))
    hf = {**GOOGLE_BASE, "model_type": "bert", "architectures": ["BertForMaskedLM"], "transformers_version": "5.0.0"}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    for name in ("bert_config.json", "config.json"):
        cfg = BertConfig.from_json_file(tmp_path / name)
        assert (cfg.attention_implementation, cfg.attention_probs_dropout_prob) == ("xla", 0.1)
        with pytest.raises(ConfigError, match="attention_probs_dropout_prob=0.1"):
            cfg.replace(attention_implementation="cudnn")
        assert cfg.replace(attention_implementation="cudnn", attention_probs_dropout_prob=0.0).attention_implementation == "cudnn"


def test_run_config_resolution_refuses_cudnn_with_the_default_attention_dropout():
    """The trainer's resolve_model fills an unset run field with BertConfig's default (0.1), so a
    fine-tuning run that asks for cudnn alone is refused before it starts, and with dropout 0 it runs."""
    from bert_jax import run_config

    checkpoint = BertConfig.from_dict(GOOGLE_BASE)
    model = {name: None for name in BertConfig().to_dict()}
    with pytest.raises(ConfigError, match="attention_implementation='cudnn'.*attention_probs_dropout_prob=0.1"):
        run_config.resolve_model({**model, "attention_implementation": "cudnn"}, checkpoint, "ckpt")
    resolved = run_config.resolve_model({**model, "attention_implementation": "cudnn", "attention_probs_dropout_prob": 0.0},
                                   checkpoint, "ckpt")
    assert (resolved["attention_implementation"], resolved["attention_probs_dropout_prob"]) == ("cudnn", 0.0)
    assert run_config.resolve_model(model, checkpoint, "ckpt")["attention_implementation"] == "xla"


@pytest.mark.parametrize("implementation, dropout, expected", [
    ("cudnn", 0.0, ["cudnn"]),  # training: the fused kernel asked for, not an einsum fallback
    ("xla", 0.0, ["xla"]),
    ("xla", 0.1, []),  # the paper's attention dropout: explicit einsums with dropout
])
def test_training_runs_the_attention_the_config_names(monkeypatch, implementation, dropout, expected):
    """Records the implementation BertSelfAttention passes to jax.nn.dot_product_attention in a
    training forward pass (deterministic=False), and runs XLA's kernel in its place (CPU)."""
    import jax
    import jax.numpy as jnp

    from bert_jax.modeling.models import BertModel

    real = jax.nn.dot_product_attention
    seen = []

    def recording(*args, implementation=None, **kwargs):
        seen.append(implementation)
        return real(*args, implementation=None, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
    cfg = BertConfig.preset("tiny", num_hidden_layers=1, attention_implementation=implementation,
                            attention_probs_dropout_prob=dropout)
    model = BertModel(cfg)
    ids = jnp.ones((2, 8), jnp.int32)
    mask = jnp.array([[1] * 8, [1] * 5 + [0] * 3], jnp.int32)
    params = model.init(jax.random.PRNGKey(0), ids, attention_mask=mask)["params"]
    seen.clear()
    out = model.apply({"params": params}, ids, attention_mask=mask, deterministic=False,
                      rngs={"dropout": jax.random.PRNGKey(1)})
    assert jnp.isfinite(out["sequence_output"]).all()
    assert seen == expected
