"""Numerical parity of bert_jax's BertForPreTraining with Hugging Face's PyTorch reference.

Random-init HF models (every weight, bias and LayerNorm perturbed so that a swapped or
mis-transposed parameter cannot hide behind zeros and ones) are written three ways -
model.safetensors, an old-style pytorch_model.bin, and a google-research/bert TF checkpoint
built here with Google's variable names - then read with `load_pretrained`; our outputs must
match torch's to max |diff| <= 1e-5 * max |torch's value| per output in float32 (a bound
relative to the values' scale, so that CPU kernels summing in another order do not decide the
result; see tests/tolerances.py). The export direction (our params ->
save_pretrained(format="hf") -> transformers) is held to the same bound.

Run with `-s` to see the measured max |diff| / max |value| figures.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bert_jax import BertConfig, load_pretrained, save_pretrained  # noqa: E402
from bert_jax.checkpoints import flatten, load_config, unflatten  # noqa: E402
from bert_jax.modeling import BertForPreTraining, BertModel, stack_layers  # noqa: E402
from tests.tolerances import check_bound, scaled_diff  # noqa: E402

TOL = 1e-5  # relative to max |reference| of each output

# Two sizes, one per GELU flavour.
HF_SIZES = {
    "2x64_gelu": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                      hidden_act="gelu", vocab_size=1000, type_vocab_size=2, max_position_embeddings=64),
    "3x96_gelu_new": dict(num_hidden_layers=3, hidden_size=96, num_attention_heads=6, intermediate_size=192,
                          hidden_act="gelu_new", vocab_size=1003, type_vocab_size=3, max_position_embeddings=48),
}
OUTPUTS = ("sequence_output", "pooled_output", "mlm_logits", "nsp_logits")


def perturbed_hf_model(kwargs: dict, seed: int) -> "transformers.BertForPreTraining":
    torch.manual_seed(seed)
    config = transformers.BertConfig(**kwargs, attn_implementation="eager")
    model = transformers.BertForPreTraining(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # unique parameters: the tied decoder is perturbed once
            p.add_(0.05 * torch.randn_like(p))
    return model


def make_batch(vocab_size: int, type_vocab_size: int, seed: int = 0, lengths=(16, 11, 5), max_len: int = 16):
    """[batch, length] inputs with padding and two or three segments per sequence."""
    rng = np.random.default_rng(seed)
    batch = len(lengths)
    input_ids = rng.integers(1, vocab_size, size=(batch, max_len)).astype(np.int32)
    attention_mask = (np.arange(max_len)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    token_type_ids = np.zeros((batch, max_len), np.int32)
    for b, n in enumerate(lengths):
        bounds = np.linspace(0, n, type_vocab_size + 1).astype(int)
        for t in range(type_vocab_size):
            token_type_ids[b, bounds[t] : bounds[t + 1]] = t
    input_ids[attention_mask == 0] = 0
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


def hf_outputs(model, batch) -> dict[str, np.ndarray]:
    t = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
    with torch.no_grad():
        base = model.bert(**t)
        heads = model(**t)
    return {
        "sequence_output": base.last_hidden_state.numpy(),
        "pooled_output": base.pooler_output.numpy(),
        "mlm_logits": heads.prediction_logits.numpy(),
        "nsp_logits": heads.seq_relationship_logits.numpy(),
    }


def our_outputs(config: BertConfig, params, batch, masked_positions=None) -> dict[str, np.ndarray]:
    out = BertForPreTraining(config).apply(
        {"params": params},
        jnp.asarray(batch["input_ids"]),
        token_type_ids=jnp.asarray(batch["token_type_ids"]),
        attention_mask=jnp.asarray(batch["attention_mask"]),
        deterministic=True,
        masked_positions=None if masked_positions is None else jnp.asarray(masked_positions),
    )
    return {k: np.asarray(v) for k, v in out.items()}


def max_diffs(ours, ref, keys=OUTPUTS) -> dict[str, float]:
    """max |ours - ref| / max |ref| per output."""
    diffs = {}
    for k in keys:
        assert ours[k].shape == ref[k].shape, (k, ours[k].shape, ref[k].shape)
        assert ours[k].dtype == np.float32, (k, ours[k].dtype)
        diffs[k] = scaled_diff(ours[k], ref[k])
    return diffs


def report(label: str, diffs: dict[str, float]) -> None:
    print(f"\n[parity] {label}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))


@pytest.fixture(scope="module", params=sorted(HF_SIZES))
def reference(request, tmp_path_factory):
    """(name, torch model, its outputs on the batch, the batch, directory with model.safetensors)."""
    kwargs = HF_SIZES[request.param]
    model = perturbed_hf_model(kwargs, seed=len(request.param))
    batch = make_batch(kwargs["vocab_size"], kwargs["type_vocab_size"])
    directory = tmp_path_factory.mktemp(f"hf_{request.param}")
    model.save_pretrained(directory)
    assert os.path.isfile(directory / "model.safetensors")
    return request.param, model, hf_outputs(model, batch), batch, directory


def test_hf_safetensors_parity(reference):
    name, _, ref, batch, directory = reference
    config, params = load_pretrained(directory)
    assert config.hidden_act == HF_SIZES[name]["hidden_act"]
    diffs = max_diffs(our_outputs(config, params, batch), ref)
    report(f"{name} model.safetensors -> load_pretrained", diffs)
    check_bound(str(diffs), max(diffs.values()), TOL)


def test_masked_positions_gather_matches_hf(reference):
    """MLM logits at given positions equal HF's all-position logits gathered there."""
    name, _, ref, batch, directory = reference
    config, params = load_pretrained(directory)
    positions = np.array([[0, 3, 15], [1, 10, 0], [4, 2, 0]], np.int32)  # 0-padded, as Google's data is
    ours = our_outputs(config, params, batch, masked_positions=positions)
    gathered = np.take_along_axis(ref["mlm_logits"], positions[:, :, None], axis=1)
    diff = scaled_diff(ours["mlm_logits"], gathered)
    report(f"{name} masked_positions gather", {"mlm_logits": diff})
    assert ours["mlm_logits"].shape == (3, 3, config.vocab_size)
    check_bound("mlm_logits", diff, TOL)


def test_hf_pytorch_bin_with_legacy_names(reference, tmp_path):
    """An old-style pytorch_model.bin: LayerNorm gamma/beta, tied decoder copies, position_ids buffer."""
    name, model, ref, batch, directory = reference
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[key] = value.clone()
    assert "cls.predictions.decoder.weight" in state and "cls.predictions.decoder.bias" in state
    state["bert.embeddings.position_ids"] = torch.arange(model.config.max_position_embeddings)[None]
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    config, params = load_pretrained(tmp_path)
    diffs = max_diffs(our_outputs(config, params, batch), ref)
    report(f"{name} pytorch_model.bin (gamma/beta names)", diffs)
    check_bound(str(diffs), max(diffs.values()), TOL)


def test_hf_base_model_keys(reference, tmp_path):
    """A BertModel directory (keys without `bert.`, no heads) loads into our BertModel."""
    name, model, ref, batch, directory = reference
    model.bert.save_pretrained(tmp_path)
    config, params = load_pretrained(tmp_path)
    assert set(params) == {"bert"}
    out = BertModel(config).apply(
        {"params": params["bert"]}, *(jnp.asarray(batch[k]) for k in ("input_ids", "token_type_ids", "attention_mask"))
    )
    diffs = max_diffs({k: np.asarray(v) for k, v in out.items()}, ref, ("sequence_output", "pooled_output"))
    report(f"{name} BertModel keys", diffs)
    check_bound(str(diffs), max(diffs.values()), TOL)


# ----------------------------------------------------------------- Google TF checkpoints
def google_variables(model) -> dict[str, np.ndarray]:
    """HF state dict -> google-research/bert variable names and layouts (written out by hand,
    independently of bert_jax's rename table, from Google's modeling.py/run_pretraining.py)."""
    out = {}
    for key, value in model.state_dict().items():
        value = value.numpy()
        if key.startswith("cls.predictions.decoder."):
            continue  # tied copies
        name = key.replace(".", "/")
        parts = name.split("/")
        if "layer" in parts:  # encoder/layer/3 -> encoder/layer_3
            i = parts.index("layer")
            parts[i : i + 2] = [f"layer_{parts[i + 1]}"]
        name = "/".join(parts)
        if name.endswith("_embeddings/weight"):
            name = name[: -len("/weight")]
        elif name.endswith("LayerNorm/weight"):
            name = name[: -len("weight")] + "gamma"
        elif name.endswith("LayerNorm/bias"):
            name = name[: -len("bias")] + "beta"
        elif name == "cls/predictions/bias":
            name = "cls/predictions/output_bias"
        elif name == "cls/seq_relationship/weight":
            name = "cls/seq_relationship/output_weights"  # [2, hidden] as torch stores it
        elif name == "cls/seq_relationship/bias":
            name = "cls/seq_relationship/output_bias"
        elif name.endswith("/weight"):  # tf.layers.dense kernels are [in, out]
            name, value = name[: -len("weight")] + "kernel", value.T
        out[name] = np.ascontiguousarray(value)
    return out


def write_google_checkpoint(variables: dict[str, np.ndarray], prefix: str, with_optimizer_slots: bool) -> None:
    tf = pytest.importorskip("tensorflow")
    with tf.Graph().as_default():
        var_list = {}
        for name, value in variables.items():
            var_list[name] = tf.compat.v1.Variable(value, name=name.replace("/", "__"))
            if with_optimizer_slots:  # as a checkpoint written mid-pretraining holds them
                var_list[name + "/adam_m"] = tf.compat.v1.Variable(np.zeros_like(value), name=name.replace("/", "__") + "_m")
                var_list[name + "/adam_v"] = tf.compat.v1.Variable(np.ones_like(value), name=name.replace("/", "__") + "_v")
        if with_optimizer_slots:
            var_list["global_step"] = tf.compat.v1.Variable(np.int64(1000), name="global_step")
        saver = tf.compat.v1.train.Saver(var_list=var_list)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix, write_meta_graph=False)


def test_google_tf_checkpoint_parity(reference, tmp_path):
    tf = pytest.importorskip("tensorflow")
    name, model, ref, batch, _ = reference
    write_google_checkpoint(google_variables(model), str(tmp_path / "bert_model.ckpt"), with_optimizer_slots=True)
    names_in_file = {n for n, _ in tf.train.list_variables(str(tmp_path / "bert_model.ckpt"))}
    # Google's names, as google-research/bert's checkpoints list them.
    for expected in (
        "bert/embeddings/word_embeddings",
        "bert/embeddings/LayerNorm/gamma",
        "bert/encoder/layer_0/attention/self/query/kernel",
        "bert/encoder/layer_1/attention/output/dense/kernel",
        "bert/encoder/layer_0/intermediate/dense/kernel",
        "bert/encoder/layer_0/output/LayerNorm/beta",
        "bert/pooler/dense/kernel",
        "cls/predictions/transform/dense/kernel",
        "cls/predictions/transform/LayerNorm/gamma",
        "cls/predictions/output_bias",
        "cls/seq_relationship/output_weights",
        "cls/seq_relationship/output_bias",
        "bert/pooler/dense/kernel/adam_m",
        "global_step",
    ):
        assert expected in names_in_file, expected
    google_config = {k: v for k, v in model.config.to_dict().items() if k in (
        "attention_probs_dropout_prob", "hidden_act", "hidden_dropout_prob", "hidden_size", "initializer_range",
        "intermediate_size", "max_position_embeddings", "num_attention_heads", "num_hidden_layers",
        "type_vocab_size", "vocab_size")}
    assert len(google_config) == 11
    (tmp_path / "bert_config.json").write_text(json.dumps(google_config))
    (tmp_path / "vocab.txt").write_text("".join(f"tok{i}\n" for i in range(model.config.vocab_size)))
    config, params = load_pretrained(tmp_path)
    assert load_config(tmp_path) == config
    diffs = max_diffs(our_outputs(config, params, batch), ref)
    report(f"{name} Google TF checkpoint", diffs)
    check_bound(str(diffs), max(diffs.values()), TOL)


# ----------------------------------------------------------------- export
def perturbed_our_params(config: BertConfig, seed: int):
    """Our own init, perturbed (our init has zero biases and unit LayerNorm scales)."""
    ids = jnp.zeros((1, 8), jnp.int32)
    params = BertForPreTraining(config).init(jax.random.PRNGKey(seed), ids)["params"]
    rng = np.random.default_rng(seed)
    return unflatten({k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in _plain(params).items()})


def _plain(params):
    """Flax params (maybe with logical-partitioning boxes) -> flat numpy dict."""
    from flax import linen as nn

    return {k: np.asarray(v) for k, v in flatten(nn.meta.unbox(params)).items()}


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("size", sorted(HF_SIZES))
def test_export_to_transformers(size, scan_layers, tmp_path):
    kwargs = dict(HF_SIZES[size])
    config = BertConfig(**kwargs)
    params = perturbed_our_params(config, seed=3)
    batch = make_batch(config.vocab_size, config.type_vocab_size, seed=1)
    ours = our_outputs(config, params, batch)
    to_save = params
    if scan_layers:  # the scan layout is unstacked on the way out
        to_save = stack_layers(params)
        assert "layers" in to_save["bert"]["encoder"]
    save_pretrained(to_save, config.replace(scan_layers=scan_layers), tmp_path, format="hf")
    model, info = transformers.BertForPreTraining.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager"
    )
    assert {k: list(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys")} == {
        "missing_keys": [], "unexpected_keys": [], "mismatched_keys": []
    }, info
    diffs = max_diffs(ours, hf_outputs(model.eval(), batch))
    report(f"{size} export ({'scan' if scan_layers else 'loop'} layout) -> transformers", diffs)
    check_bound(str(diffs), max(diffs.values()), TOL)
