"""The BiLSTM (bert_jax.modeling.recurrent) and the BiLSTM heads on BERT (the paper's Table 5 "+ BiLSTM").

- the flax BiLSTM equals a plain numpy LSTM written here (the standard i/f/g/o equations, on
  flax's LSTMCell parameters) on padded rows, in both directions and through two layers;
- padding never reaches the real positions (BiLSTM alone, and the whole models, whose lengths
  come from the attention mask);
- the sequence classifier reads concat(forward state at the last real token, backward state
  at the first), checked against the numpy LSTM on BERT's sequence output;
- TSV and NER runs with head=bilstm through the real trainer; their exports are refused;
- every new option error names its field.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.config import BertConfig
from bert_jax.modeling import (BertBiLSTMForQuestionAnswering, BertBiLSTMForSequenceClassification,
                               BertBiLSTMForTokenClassification, BiLSTM)
from bert_jax.tasks import features as features_lib
from tests.finetune_helpers import short_run, word_checkpoint, write_conll
from tests.model_helpers import padded_batch, random_params
from tests.tolerances import assert_close

CONFIG = BertConfig.preset("tiny", vocab_size=60, max_position_embeddings=32, hidden_size=32,
                           num_attention_heads=2, intermediate_size=64)


# ---- a plain numpy LSTM: i, f, g, o gates; c' = f c + i g; h' = o tanh(c') --------------------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _numpy_lstm(cell_params, xs):
    """xs [T, in] -> hs [T, hidden], running left to right from zero state."""
    p = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in cell_params.items()}
    hidden = p["hi"]["kernel"].shape[0]
    h, c = np.zeros(hidden), np.zeros(hidden)
    out = []
    for x in np.asarray(xs, np.float64):
        gate = lambda g: x @ p[f"i{g}"]["kernel"] + h @ p[f"h{g}"]["kernel"] + p[f"h{g}"]["bias"]
        i, f, g, o = _sigmoid(gate("i")), _sigmoid(gate("f")), np.tanh(gate("g")), _sigmoid(gate("o"))
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out)


def _numpy_bilstm(params, x, length):
    """One row: x [L, in], its first `length` positions real -> (outputs [length, 2H], final [2H])."""
    x = np.asarray(x, np.float64)[:length]
    for i in range(len(params)):
        layer = params[f"layer_{i}"]
        forward = _numpy_lstm(layer["forward_rnn"]["cell"], x)
        backward = _numpy_lstm(layer["backward_rnn"]["cell"], x[::-1])[::-1]
        x = np.concatenate([forward, backward], axis=-1)
    return x, np.concatenate([forward[-1], backward[0]])


LENGTHS = np.array([7, 4, 1])


def test_bilstm_equals_a_numpy_lstm_both_directions_two_layers_with_padding():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 5)).astype(np.float32)
    module = BiLSTM(hidden_size=4, num_layers=2)
    params = random_params(module, x, jnp.asarray(LENGTHS), scale=0.3)
    outputs, final = jax.jit(module.apply)({"params": params}, x, jnp.asarray(LENGTHS))
    assert outputs.shape == (3, 7, 8) and final.shape == (3, 8)
    for b, n in enumerate(LENGTHS):
        want_outputs, want_final = _numpy_bilstm(jax.device_get(params), x[b], n)
        np.testing.assert_allclose(outputs[b, :n], want_outputs, atol=2e-6, err_msg=f"row {b} outputs")
        np.testing.assert_allclose(final[b], want_final, atol=2e-6, err_msg=f"row {b} final states")


def test_bilstm_padding_never_reaches_real_positions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 7, 5)).astype(np.float32)
    module = BiLSTM(hidden_size=4, num_layers=2)
    params = random_params(module, x, jnp.asarray(LENGTHS), scale=0.3)
    apply = jax.jit(module.apply)
    outputs, final = apply({"params": params}, x, jnp.asarray(LENGTHS))
    for b, n in enumerate(LENGTHS):
        alone_outputs, alone_final = apply({"params": params}, x[b:b + 1, :n], jnp.asarray([n]))
        np.testing.assert_allclose(outputs[b, :n], alone_outputs[0], atol=1e-6)
        np.testing.assert_allclose(final[b], alone_final[0], atol=1e-6)
        # Garbage in the padding changes nothing on the real positions.
        noisy = x.copy()
        noisy[b, n:] = 100.0
        noisy_outputs, noisy_final = apply({"params": params}, noisy, jnp.asarray(LENGTHS))
        np.testing.assert_array_equal(noisy_outputs[b, :n], outputs[b, :n])
        np.testing.assert_array_equal(noisy_final[b], final[b])


# ---- the heads on BERT ---------------------------------------------------------------------


@pytest.mark.parametrize("model_cls", [BertBiLSTMForTokenClassification, BertBiLSTMForSequenceClassification])
def test_bert_bilstm_heads_ignore_padding(model_cls):
    model = model_cls(CONFIG, num_labels=3, bilstm_hidden_size=6, bilstm_layers=2)
    params = random_params(model)
    lengths = (12, 5)  # the loops below take them from here, not from the mask they test
    ids, mask = padded_batch(lengths=lengths)
    logits_of = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, attention_mask=mask)["logits"])
    logits = logits_of(params, ids, mask)
    for b, n in enumerate(lengths):
        alone = logits_of(params, ids[b:b + 1, :n], mask[b:b + 1, :n])[0]
        if model_cls is BertBiLSTMForTokenClassification:
            assert_close(logits[b, :n], alone, err_msg=f"token logits, row {b}")
        else:
            assert_close(logits[b], alone, err_msg=f"sequence logits, row {b}")


def test_sequence_head_reads_the_final_states_of_both_directions():
    """logits = classifier(concat(h_forward[last real token], h_backward[0])) of a numpy BiLSTM
    over the model's own sequence_output."""
    model = BertBiLSTMForSequenceClassification(CONFIG, num_labels=3, bilstm_hidden_size=5, bilstm_layers=2)
    params = random_params(model)
    lengths = (12, 7, 3)
    ids, mask = padded_batch(lengths=lengths, seed=3)
    out = jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=mask))(params)
    host = jax.device_get(params)
    kernel, bias = np.asarray(host["classifier"]["kernel"], np.float64), np.asarray(host["classifier"]["bias"])
    for b, n in enumerate(lengths):
        _, final = _numpy_bilstm(host["bilstm"], np.asarray(out["sequence_output"][b]), n)
        assert_close(out["logits"][b], final @ kernel + bias, err_msg=f"row {b}")


def test_span_head_is_dense_of_the_bilstm_outputs_and_ignores_padding():
    """SQuAD with the BiLSTM head (Table 5's "+ BiLSTM"): start/end logits = dense(2) of a numpy
    BiLSTM's per-token outputs over the model's own sequence_output; padding changes nothing."""
    model = BertBiLSTMForQuestionAnswering(CONFIG, bilstm_hidden_size=5, bilstm_layers=2)
    params = random_params(model)
    lengths = (12, 7)
    ids, mask = padded_batch(seed=4, lengths=lengths)
    apply = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, attention_mask=mask))
    out = apply(params, ids, mask)
    host = jax.device_get(params)
    kernel, bias = np.asarray(host["classifier"]["kernel"], np.float64), np.asarray(host["classifier"]["bias"])
    for b, n in enumerate(lengths):
        outputs, _ = _numpy_bilstm(host["bilstm"], np.asarray(out["sequence_output"][b]), n)
        want = outputs[:n] @ kernel + bias
        assert_close(out["start_logits"][b, :n], want[:, 0], err_msg=f"start, row {b}")
        assert_close(out["end_logits"][b, :n], want[:, 1], err_msg=f"end, row {b}")
        alone = apply(params, ids[b:b + 1, :n], mask[b:b + 1, :n])
        assert_close(out["start_logits"][b, :n], alone["start_logits"][0], err_msg=f"padded row {b}")
    assert features_lib.HeadOptions(head="bilstm").span_model(CONFIG).__class__ is BertBiLSTMForQuestionAnswering
    with pytest.raises(ValueError, match="question answering fine-tunes"):
        features_lib.HeadOptions(head="bilstm", features="last").span_model(CONFIG)


def test_token_head_trains_the_encoder_too():
    """Fine-tuning with the BiLSTM head (Table 5): gradients reach every encoder layer."""
    model = BertBiLSTMForTokenClassification(CONFIG, num_labels=3, bilstm_hidden_size=6)
    params = random_params(model)
    ids, mask = padded_batch()
    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, ids, attention_mask=mask)["logits"] ** 2)))(
        params)
    for name in ("bert/embeddings/word_embeddings/embedding", "bert/encoder/layer_0/attention/self/query/kernel",
                 "bert/encoder/layer_1/output/dense/kernel", "bilstm/layer_1/backward_rnn/cell/ii/kernel"):
        node = grads
        for part in name.split("/"):
            node = node[part]
        assert float(jnp.max(jnp.abs(node))) > 0, name


# ---- options and their errors ----------------------------------------------------------------


def test_head_options_build_the_models_and_refuse_bad_values():
    cfg = BertConfig.preset("tiny", vocab_size=60)
    assert type(features_lib.HeadOptions().sequence_model(cfg, 2)).__name__ == "BertForSequenceClassification"
    assert type(features_lib.HeadOptions().token_model(cfg, 2)).__name__ == "BertForTokenClassification"
    model = features_lib.HeadOptions(head="bilstm").sequence_model(cfg, 2)
    assert (type(model).__name__, model.bilstm_hidden_size, model.bilstm_layers) == (
        "BertBiLSTMForSequenceClassification", cfg.hidden_size, 2)  # defaults: the encoder's width, 2 layers
    model = features_lib.HeadOptions(head="bilstm", bilstm_hidden_size=7, bilstm_layers=1).token_model(cfg, 3)
    assert (model.bilstm_hidden_size, model.bilstm_layers, model.features) == (7, 1, "")
    with pytest.raises(ValueError, match=r"config.task.head: expected one of \('linear', 'bilstm'\), found 'lstm'"):
        features_lib.HeadOptions(head="lstm")
    with pytest.raises(ValueError, match=r"config.task.bilstm_layers=1 is set but config.task.head='linear'"):
        features_lib.HeadOptions(bilstm_layers=1)
    with pytest.raises(ValueError, match=r"config.task.bilstm_hidden_size: expected >= 1"):
        features_lib.HeadOptions(head="bilstm", bilstm_hidden_size=0)
    with pytest.raises(ValueError, match=r"config.task.features='last' .* config.task.head='linear'"):
        features_lib.HeadOptions(features="last")
    with pytest.raises(ValueError, match=r"config.task.features: expected '' \(fine-tuning\) or one of"):
        features_lib.HeadOptions(head="bilstm", features="first")
    with pytest.raises(ValueError, match=r"feature-based mode is for token classification"):
        features_lib.HeadOptions(head="bilstm", features="last").sequence_model(cfg, 2)


def test_experiment_args_set_plain_fields():
    from experiments import finetune_ner, finetune_tsv
    from bert_jax.tasks import finetuning

    config = finetune_tsv.get_config("bible,head=bilstm")
    assert config.task.head == "bilstm" and config.train_file.endswith("paraphrase/bible/train.tsv")
    assert finetuning.head_options(finetune_tsv.get_config("sentiment")) == features_lib.HeadOptions()
    config = finetune_ner.get_config("wnut16,features=concat_last_four")
    assert (config.task.head, config.task.features, config.optimizer.frozen_params) == (
        "bilstm", "concat_last_four", "^bert/")
    assert finetune_ner.get_config("wnut16").task.features == "" and finetune_ner.get_config("").task.head == "linear"
    for module in (finetune_ner, finetune_tsv):
        for arg in module.DOCUMENTED_ARGS:  # every documented arg gives valid head options
            finetuning.head_options(module.get_config(arg))
    with pytest.raises(ValueError, match=r"unknown option 'head=lstm'"):
        finetune_tsv.get_config("sentiment,head=lstm")
    with pytest.raises(ValueError, match=r"features='first'; expected one of"):
        finetune_ner.get_config("wnut16,features=first")
    with pytest.raises(ValueError, match=r"unknown option 'layers=3'"):
        finetune_ner.get_config("wnut16,layers=3")


# ---- through the trainer, and the export refusal --------------------------------------------

@pytest.mark.slow
def test_tsv_and_ner_with_a_bilstm_head_train_and_refuse_export(tmp_path, capsys):
    from bert_jax import convert, train
    from experiments import finetune_ner, finetune_tsv

    checkpoint, _ = word_checkpoint(tmp_path)
    rows = [("a good moving film", "pos"), ("the dull plot", "neg"), ("a fine film", "pos"), ("bad", "neg")] * 4
    tsv = tmp_path / "train.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in rows), encoding="utf-8")
    config = short_run(finetune_tsv.get_config("sentiment,head=bilstm"), checkpoint)
    config.train_file = config.eval_file = str(tsv)
    config.task.bilstm_hidden_size = 8
    results, state = train.train_and_evaluate(config, tmp_path / "tsv", devices=jax.devices()[:1], return_state=True)
    assert set(results["final_metrics"]) == {"accuracy", "f1"}
    assert state.params["bilstm"]["layer_1"]["forward_rnn"]["cell"]["ii"]["kernel"].shape == (16, 8)
    assert state.params["classifier"]["kernel"].shape == (16, 2)  # concat(forward, backward) -> 2 labels
    head = json.loads((tmp_path / "tsv" / "head.json").read_text())
    assert head["model_class"] == "BertBiLSTMForSequenceClassification"

    config = short_run(finetune_ner.get_config(",head=bilstm"), checkpoint)
    config.train_file = config.eval_file = str(write_conll(tmp_path / "train.conll"))
    config.task.bilstm_layers = 1
    results = train.train_and_evaluate(config, tmp_path / "ner", devices=jax.devices()[:1])
    assert "f1" in results["final_metrics"]
    assert json.loads((tmp_path / "ner" / "head.json").read_text())["model_class"] == "BertBiLSTMForTokenClassification"

    for run in ("tsv", "ner"):
        for to in ("hf", "google", "bert_jax"):
            out = tmp_path / f"{run}_{to}"
            assert convert.main(["--input", str(tmp_path / run), "--output", str(out), "--to", to]) == 1
            err = capsys.readouterr().err
            assert "a BiLSTM head" in err and "Nothing was written" in err, err
            assert not out.exists()


def test_save_pretrained_refuses_bilstm_params(tmp_path):
    from bert_jax.checkpoints import CheckpointError, save_pretrained

    model = BertBiLSTMForTokenClassification(CONFIG, num_labels=3, bilstm_hidden_size=4)
    params = jax.device_get(random_params(model))
    with pytest.raises(CheckpointError, match=r"the params hold bilstm/ .* no Hugging Face BertFor\* class"):
        save_pretrained(params, CONFIG, tmp_path / "out", format="hf")
    assert not (tmp_path / "out").exists()
