"""Left-to-right (causal) attention, `BertConfig.causal_attention` (the paper's Table 5 "LTR" rows).

Checked against two things outside the code under test: Hugging Face's PyTorch BertModel with
`is_decoder=True` (its causal self-attention), and the defining property that the output at
position t does not depend on the tokens after t.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from bert_jax import BertConfig, load_pretrained
from bert_jax.config import ConfigError
from bert_jax.modeling import BertForPreTraining, BertModel, stack_layers
from tests.tolerances import check_bound, scaled_diff

SMALL = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=97,
             max_position_embeddings=32)


def _init(config: BertConfig, seed: int = 0):
    from flax import linen as nn
    return nn.meta.unbox(BertModel(config).init(jax.random.PRNGKey(seed), jnp.ones((1, 8), jnp.int32))["params"])


def _sequence(config, params, input_ids, attention_mask=None, output_positions=None):
    out = BertModel(config).apply({"params": params}, jnp.asarray(input_ids),
                                  attention_mask=None if attention_mask is None else jnp.asarray(attention_mask),
                                  output_positions=None if output_positions is None else jnp.asarray(output_positions))
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("scan_layers", [False, True])
def test_outputs_before_t_ignore_the_tokens_after_t(scan_layers):
    config = BertConfig(**SMALL, causal_attention=True, scan_layers=scan_layers)
    params = _init(config)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 97, size=(2, 12)).astype(np.int32)
    base = _sequence(config, params, ids)["sequence_output"]
    for t in (0, 5, 10):
        changed = ids.copy()
        changed[:, t + 1:] = rng.integers(1, 97, size=changed[:, t + 1:].shape)
        out = _sequence(config, params, changed)["sequence_output"]
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
        assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 1e-3  # the later rows do see the change


def test_a_bidirectional_model_sees_the_future():
    """The control: the same change moves position 0 of a plain BERT, so the test above can fail."""
    config = BertConfig(**SMALL)
    params = _init(config)
    ids = np.arange(1, 13, dtype=np.int32)[None]
    changed = ids.copy()
    changed[:, 6:] = 3
    before = _sequence(config, params, ids)["sequence_output"][:, 0]
    after = _sequence(config, params, changed)["sequence_output"][:, 0]
    assert np.abs(after - before).max() > 1e-3


def test_pooler_reads_the_last_real_token_and_positions_path_agrees():
    config = BertConfig(**SMALL, causal_attention=True)
    params = _init(config)
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 97, size=(3, 10)).astype(np.int32)
    mask = (np.arange(10)[None] < np.array([[10], [7], [3]])).astype(np.int32)
    out = _sequence(config, params, ids, mask)
    # The pooler is tanh(dense(row)) of each sequence's last real row.
    dense = params["pooler"]["dense"]
    last = out["sequence_output"][np.arange(3), [9, 6, 2]]
    expected = np.tanh(last @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"]))
    np.testing.assert_allclose(out["pooled_output"], expected, rtol=1e-5, atol=1e-6)
    # Padding after the last real token changes nothing before it.
    garbage = ids.copy()
    garbage[mask == 0] = 5
    np.testing.assert_allclose(_sequence(config, params, garbage, mask)["pooled_output"], out["pooled_output"],
                               rtol=0, atol=1e-6)
    # The last layer computing only some rows (the pretraining heads' path) gives the same rows.
    positions = np.array([[1, 4], [0, 6], [2, 2]], np.int32)
    partial = _sequence(config, params, ids, mask, output_positions=positions)
    np.testing.assert_allclose(partial["sequence_output"],
                               np.take_along_axis(out["sequence_output"], positions[:, :, None], axis=1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(partial["pooled_output"], out["pooled_output"], rtol=1e-5, atol=1e-5)
    # The scan layout runs the same model.
    scanned = _sequence(config.replace(scan_layers=True), stack_layers(params), ids, mask)
    np.testing.assert_allclose(scanned["sequence_output"], out["sequence_output"], rtol=1e-5, atol=1e-5)


def test_sequence_output_matches_hf_decoder_attention(tmp_path):
    """HF's BertModel with is_decoder=True runs causal self-attention: our causal model on the
    same weights gives its sequence output and MLM logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tests.test_parity_hf import hf_outputs, make_batch, perturbed_hf_model

    kwargs = dict(SMALL, hidden_act="gelu", type_vocab_size=2)
    model = perturbed_hf_model(kwargs, seed=3)
    model.save_pretrained(tmp_path)
    batch = make_batch(kwargs["vocab_size"], 2, lengths=(16, 11, 5), max_len=16)
    model.config.is_decoder = True
    for module in model.modules():  # every attention layer reads its config's flag at call time
        if hasattr(module, "is_decoder"):
            module.is_decoder = True
    reference = hf_outputs(model, batch)

    loaded_config, params = load_pretrained(tmp_path)
    config = loaded_config.replace(causal_attention=True)
    out = BertForPreTraining(config).apply(
        {"params": params}, jnp.asarray(batch["input_ids"]), token_type_ids=jnp.asarray(batch["token_type_ids"]),
        attention_mask=jnp.asarray(batch["attention_mask"]))
    real = batch["attention_mask"].astype(bool)  # HF's padded rows attend differently; only real rows count
    for key in ("sequence_output", "mlm_logits"):
        ours, ref = np.asarray(out[key])[real], reference[key][real]
        check_bound(f"causal {key}", scaled_diff(ours, ref), 1e-5)
    # And it differs from the bidirectional model on the same weights (the comparison can fail).
    bidirectional = BertModel(loaded_config).apply(
        {"params": params["bert"]}, jnp.asarray(batch["input_ids"]),
        token_type_ids=jnp.asarray(batch["token_type_ids"]), attention_mask=jnp.asarray(batch["attention_mask"]))
    assert scaled_diff(np.asarray(bidirectional["sequence_output"])[real], reference["sequence_output"][real]) > 1e-2


def test_causal_models_are_not_exported_as_bert():
    config = BertConfig(**SMALL, causal_attention=True)
    with pytest.raises(ConfigError, match="causal_attention=True"):
        config.to_hf_dict()
    with pytest.raises(ConfigError, match="causal_attention=True"):
        config.to_google_dict()
    with pytest.raises(ConfigError, match="causal_attention must be true or false"):
        BertConfig(**SMALL, causal_attention=1)
