"""Export to google-research/bert's TF checkpoint layout: read back by TensorFlow's own
`tf.train.load_checkpoint` under Google's variable names and shapes (as modeling.py creates them),
and by our importer to identical outputs."""

import json

import jax
import numpy as np
import pytest

from bert_jax import convert
from bert_jax.checkpoints import load_pretrained, save_pretrained
from bert_jax.config import BertConfig
from bert_jax.modeling.models import BertForPreTraining, BertForSequenceClassification

tf = pytest.importorskip("tensorflow")

CONFIG = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=24, max_position_embeddings=32, type_vocab_size=2)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(35)]

# Google's modeling.py / run_pretraining.py / run_classifier.py variables and their TF shapes,
# written out by hand from those files (H=16, I=24, V=40, P=32).
GOOGLE_SHAPES = {
    "bert/embeddings/word_embeddings": [40, 16],
    "bert/embeddings/position_embeddings": [32, 16],
    "bert/embeddings/token_type_embeddings": [2, 16],
    "bert/embeddings/LayerNorm/gamma": [16],
    "bert/embeddings/LayerNorm/beta": [16],
    "bert/encoder/layer_1/attention/self/query/kernel": [16, 16],
    "bert/encoder/layer_1/attention/self/query/bias": [16],
    "bert/encoder/layer_1/attention/self/key/kernel": [16, 16],
    "bert/encoder/layer_1/attention/self/value/kernel": [16, 16],
    "bert/encoder/layer_1/attention/output/dense/kernel": [16, 16],
    "bert/encoder/layer_1/attention/output/LayerNorm/gamma": [16],
    "bert/encoder/layer_1/intermediate/dense/kernel": [16, 24],
    "bert/encoder/layer_1/output/dense/kernel": [24, 16],
    "bert/encoder/layer_1/output/LayerNorm/beta": [16],
    "bert/pooler/dense/kernel": [16, 16],
    "cls/predictions/transform/dense/kernel": [16, 16],
    "cls/predictions/transform/LayerNorm/gamma": [16],
    "cls/predictions/output_bias": [40],
    "cls/seq_relationship/output_weights": [2, 16],
    "cls/seq_relationship/output_bias": [2],
}


def _params(model, seed=0):
    from flax import linen as nn

    params = nn.meta.unbox(model.init(jax.random.PRNGKey(seed), np.zeros((1, 8), np.int32))["params"])
    rng = np.random.default_rng(seed)  # off the init values, so a swapped tensor shows
    return jax.tree_util.tree_map(lambda v: np.asarray(v) + 0.05 * rng.standard_normal(v.shape).astype(np.float32),
                                  jax.device_get(params))


def _inputs():
    rng = np.random.default_rng(1)
    return dict(input_ids=rng.integers(5, 40, (2, 12)).astype(np.int32),
                token_type_ids=np.repeat([[0] * 6 + [1] * 6], 2, 0).astype(np.int32),
                attention_mask=np.array([[1] * 12, [1] * 9 + [0] * 3], np.int32))


def test_google_export_reads_back_in_tensorflow_and_in_bert_jax(tmp_path):
    model = BertForPreTraining(CONFIG)
    params = _params(model)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    out = tmp_path / "google"
    save_pretrained(params, CONFIG, out, format="google", vocab_file=tmp_path / "vocab.txt")
    assert sorted(p.name for p in out.iterdir()) == [
        "bert_config.json", "bert_model.ckpt.data-00000-of-00001", "bert_model.ckpt.index", "vocab.txt"]
    assert json.loads((out / "bert_config.json").read_text()) == {
        "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 16,
        "initializer_range": 0.02, "intermediate_size": 24, "max_position_embeddings": 32,
        "num_attention_heads": 4, "num_hidden_layers": 2, "type_vocab_size": 2, "vocab_size": 40}

    reader = tf.train.load_checkpoint(str(out / "bert_model.ckpt"))
    shapes = reader.get_variable_to_shape_map()
    for name, shape in GOOGLE_SHAPES.items():
        assert shapes.get(name) == shape, name
    assert len(shapes) == 5 + 2 * 16 + 2 + 4 + 1 + 2  # embeddings, 16 per layer, pooler, MLM, NSP
    # The same numbers, in Google's layout: kernels [in, out], NSP output_weights [2, H].
    p = params["bert"]
    np.testing.assert_array_equal(reader.get_tensor("bert/embeddings/word_embeddings"),
                                  p["embeddings"]["word_embeddings"]["embedding"])
    np.testing.assert_array_equal(reader.get_tensor("bert/encoder/layer_1/attention/self/query/kernel"),
                                  p["encoder"]["layer_1"]["attention"]["self"]["query"]["kernel"].reshape(16, 16))
    np.testing.assert_array_equal(reader.get_tensor("bert/encoder/layer_0/attention/output/dense/kernel"),
                                  p["encoder"]["layer_0"]["attention"]["output"]["dense"]["kernel"].reshape(16, 16))
    np.testing.assert_array_equal(reader.get_tensor("cls/seq_relationship/output_weights"),
                                  params["cls"]["seq_relationship"]["kernel"].T)

    config, loaded = load_pretrained(str(out))
    assert config == CONFIG
    ours, back = model.apply({"params": params}, **_inputs()), model.apply({"params": loaded}, **_inputs())
    for key in ("mlm_logits", "nsp_logits"):
        np.testing.assert_array_equal(np.asarray(back[key]), np.asarray(ours[key]), err_msg=key)


def test_convert_to_google_carries_a_classifier_and_the_vocab(tmp_path, capsys):
    model = BertForSequenceClassification(CONFIG, num_labels=3)
    params = _params(model, seed=2)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    save_pretrained(params, CONFIG, tmp_path / "native", format="bert_jax", vocab_file=tmp_path / "vocab.txt")
    assert convert.main(["--input", str(tmp_path / "native"), "--output", str(tmp_path / "g"), "--to", "google"]) == 0
    assert "(google)" in capsys.readouterr().out
    reader = tf.train.load_checkpoint(str(tmp_path / "g" / "bert_model.ckpt"))
    assert reader.get_variable_to_shape_map()["output_weights"] == [3, 16]  # run_classifier.py's head
    assert (tmp_path / "g" / "vocab.txt").read_text() == (tmp_path / "vocab.txt").read_text()
    _, loaded = load_pretrained(str(tmp_path / "g"))
    ours, back = model.apply({"params": params}, **_inputs()), model.apply({"params": loaded}, **_inputs())
    np.testing.assert_array_equal(np.asarray(back["logits"]), np.asarray(ours["logits"]))


def test_pre_layer_norm_model_is_refused_and_nothing_is_written(tmp_path):
    config = BertConfig(**{**CONFIG.to_dict(), "pre_layer_norm": True})
    params = _params(BertForPreTraining(config))
    with pytest.raises(Exception, match="pre_layer_norm"):
        save_pretrained(params, config, tmp_path / "g", format="google")
    assert not (tmp_path / "g").exists()
