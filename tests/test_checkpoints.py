"""Checkpoint formats: the rename table against the model's own tree, exact bert_jax round
trips, fine-tuning heads exported to transformers, the convert CLI, and the errors a user
sees for a checkpoint that does not fit its config or is incomplete."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import linen as nn

from bert_jax import BertConfig, load_pretrained, save_pretrained
from bert_jax.checkpoints import CheckpointError, detect_format, flatten, load_config, unflatten
from bert_jax.checkpoints.validation import check_params
from bert_jax.config import ConfigError
from tests.tolerances import FORWARD_REL, check_bound, scaled_diff
from bert_jax import convert
from bert_jax.modeling import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    stack_layers,
)

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=20, type_vocab_size=2)


def init_params(model: nn.Module, seed: int = 0, perturb: float = 0.05) -> dict:
    ids = jnp.zeros((1, 8), jnp.int32)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(seed), ids)["params"])
    rng = np.random.default_rng(seed)
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    return unflatten({k: (v + perturb * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in flat.items()})


def write_vocab(path: pathlib.Path, n: int) -> pathlib.Path:
    path.write_text("".join(f"tok{i}\n" for i in range(n)))
    return path


@pytest.fixture
def hf_dir(tmp_path):
    """A BertForPreTraining directory written by transformers itself."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(transformers.BertConfig(**TINY))
    directory = tmp_path / "hf"
    model.save_pretrained(directory)
    return directory


def _rewrite_safetensors(directory: pathlib.Path, edit) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


# ----------------------------------------------------------------- the table vs the model
MODELS = {
    "pretraining": lambda c: BertForPreTraining(c),
    "sequence_classification": lambda c: BertForSequenceClassification(c, num_labels=3),
    "token_classification": lambda c: BertForTokenClassification(c, num_labels=5),
    "question_answering": lambda c: BertForQuestionAnswering(c),
}


@pytest.mark.parametrize("pre_layer_norm", [False, True], ids=["post_ln", "pre_ln"])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_rename_table_covers_the_model_tree_exactly(model_name, pre_layer_norm):
    """Every parameter the Flax model creates is in the table with the table's shape, and vice
    versa (check_params rejects missing, unexpected and mis-shaped entries)."""
    config = BertConfig(**TINY, pre_layer_norm=pre_layer_norm)
    ids = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(MODELS[model_name](config).init(jax.random.PRNGKey(0), ids)["params"]))
    flat = flatten(shapes)
    check_params(flat, config)
    assert ("bert/encoder/final_LayerNorm/scale" in flat) == pre_layer_norm
    with pytest.raises(CheckpointError, match="does not have"):
        check_params({**flat, "bert/encoder/layer_2/output/dense/bias": flat["bert/pooler/dense/bias"]}, config)


# ----------------------------------------------------------------- bert_jax format
@pytest.mark.parametrize("variant", ["float32", "bfloat16_params", "pre_ln_scanned"])
def test_bert_jax_format_round_trip_is_exact(variant, tmp_path):
    overrides = {"float32": {}, "bfloat16_params": {"param_dtype": "bfloat16"},
                 "pre_ln_scanned": {"pre_layer_norm": True, "scan_layers": True}}[variant]
    config = BertConfig(**TINY, **overrides)
    params = init_params(BertForPreTraining(config.replace(scan_layers=False)))
    if variant == "bfloat16_params":
        assert flatten(params)["bert/pooler/dense/kernel"].dtype == jnp.bfloat16
    to_save = stack_layers(params) if config.scan_layers else params
    save_pretrained(to_save, config, tmp_path, format="bert_jax", vocab_file=write_vocab(tmp_path / "v.txt", 99))
    assert sorted(os.listdir(tmp_path)) == ["bert_jax_config.json", "params.safetensors", "v.txt", "vocab.txt"]
    assert detect_format(tmp_path) == "bert_jax"
    loaded_config, loaded = load_pretrained(tmp_path, dtype=None)
    assert loaded_config == config == load_config(tmp_path)
    want, got = flatten(params), flatten(loaded)
    assert sorted(want) == sorted(got)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)
    # The default dtype is float32 (exact widening of bf16).
    _, as_f32 = load_pretrained(tmp_path)
    assert {v.dtype for v in flatten(as_f32).values()} == {np.dtype(np.float32)}


def test_pre_layer_norm_cannot_be_exported_to_hf(tmp_path):
    config = BertConfig(**TINY, pre_layer_norm=True)
    with pytest.raises(ConfigError, match="pre_layer_norm"):
        save_pretrained(init_params(BertForPreTraining(config)), config, tmp_path, format="hf")


# ----------------------------------------------------------------- fine-tuning heads -> transformers
@pytest.mark.parametrize(
    "ours, theirs, num_labels",
    [
        (BertForSequenceClassification, "BertForSequenceClassification", 3),
        (BertForTokenClassification, "BertForTokenClassification", 5),
        (BertForQuestionAnswering, "BertForQuestionAnswering", None),
    ],
    ids=["sequence", "token", "qa"],
)
def test_fine_tuning_heads_export_to_transformers(ours, theirs, num_labels, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = BertConfig(**TINY)
    model = ours(config) if num_labels is None else ours(config, num_labels=num_labels)
    params = init_params(model, seed=4)
    save_pretrained(params, config, tmp_path, format="hf")
    reference, info = getattr(transformers, theirs).from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager"
    )
    # HF builds token classification and QA on BertModel(add_pooling_layer=False); our models
    # (like Google's) always carry the pooler, so HF skips exactly those two unused weights.
    unused_pooler = set() if theirs == "BertForSequenceClassification" else {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert set(info["unexpected_keys"]) == unused_pooler, info
    ids = np.array([[5, 6, 7, 8, 9, 0], [10, 11, 12, 0, 0, 0]], np.int32)
    mask = (ids > 0).astype(np.int32)
    out = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    with torch.no_grad():
        ref = reference.eval()(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())
    names = ("start_logits", "end_logits") if num_labels is None else ("logits",)
    for name in names:
        diff = scaled_diff(np.asarray(out[name]), getattr(ref, name).numpy())
        print(f"\n[parity] {theirs} export: {name} max|diff| / max|value| {diff:.2e}")
        check_bound(name, diff, FORWARD_REL)
    # ... and back: the HF directory loads as the same params.
    _, reloaded = load_pretrained(tmp_path)
    for k, v in flatten(params).items():
        np.testing.assert_allclose(flatten(reloaded)[k], v, rtol=0, atol=0, err_msg=k)


# ----------------------------------------------------------------- errors
def test_shape_mismatch_names_parameter_both_shapes_and_file(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    config["intermediate_size"] = 40
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        load_pretrained(hf_dir)
    message = str(err.value)
    assert str(hf_dir / "model.safetensors") in message
    assert str(hf_dir / "config.json") in message
    assert "bert/encoder/layer_0/intermediate/dense/kernel" in message
    assert "'bert.encoder.layer.0.intermediate.dense.weight'" in message
    assert "config expects shape (40, 32), found (37, 32)" in message


def test_missing_config_json(hf_dir):
    os.remove(hf_dir / "config.json")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(hf_dir)
    assert str(hf_dir) in str(err.value) and "config.json" in str(err.value)
    assert "model.safetensors" in str(err.value)  # what it found


def test_missing_weights_file(hf_dir):
    os.remove(hf_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"has no weights: expected one of model\.safetensors"):
        load_pretrained(hf_dir)


def test_missing_path():
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained("/nonexistent/checkpoint")


def test_missing_key_is_named(hf_dir):
    _rewrite_safetensors(hf_dir, lambda t: t.pop("bert.encoder.layer.1.attention.self.value.bias"))
    with pytest.raises(CheckpointError, match=r"missing 1 parameter.*\n.*bert\.encoder\.layer\.1\.attention\.self\.value\.bias"):
        load_pretrained(hf_dir)


def test_partial_head_is_missing_keys(hf_dir):
    """A head is all or nothing: an NSP bias without its weight is an error, not a silent skip."""
    _rewrite_safetensors(hf_dir, lambda t: t.pop("cls.seq_relationship.weight"))
    with pytest.raises(CheckpointError, match=r"cls\.seq_relationship\.weight \(nsp head\)"):
        load_pretrained(hf_dir)


def test_headless_checkpoint_loads_without_heads(hf_dir):
    _rewrite_safetensors(hf_dir, lambda t: [t.pop(k) for k in list(t) if k.startswith("cls.")])
    _, params = load_pretrained(hf_dir)
    assert set(params) == {"bert"}


def test_requested_dtype(hf_dir):
    import ml_dtypes

    config, f32 = load_pretrained(hf_dir)
    assert load_config(hf_dir) == config
    _, bf16 = load_pretrained(hf_dir, dtype="bfloat16")
    for k, v in flatten(f32).items():
        assert v.dtype == np.float32
        assert flatten(bf16)[k].dtype == ml_dtypes.bfloat16, k
        np.testing.assert_array_equal(flatten(bf16)[k], v.astype(ml_dtypes.bfloat16), err_msg=k)


def test_unexpected_key_is_named(hf_dir):
    def add_layer(t):
        t["bert.encoder.layer.2.output.dense.bias"] = np.zeros(32, np.float32)

    _rewrite_safetensors(hf_dir, add_layer)
    with pytest.raises(CheckpointError, match=r"does not have.*num_hidden_layers.*\n.*bert\.encoder\.layer\.2\.output\.dense\.bias"):
        load_pretrained(hf_dir)


def test_untied_decoder_is_refused(hf_dir):
    def untie(t):
        t["cls.predictions.decoder.weight"] = t["bert.embeddings.word_embeddings.weight"] + 1.0

    _rewrite_safetensors(hf_dir, untie)
    with pytest.raises(CheckpointError, match="ties the MLM decoder"):
        load_pretrained(hf_dir)


def test_vocab_size_mismatch(hf_dir):
    write_vocab(hf_dir / "vocab.txt", 98)
    with pytest.raises(ConfigError, match=r"vocab\.txt has 98 entries but BertConfig\.vocab_size is 99"):
        load_pretrained(hf_dir)
    config, _ = load_pretrained(hf_dir, check_vocab=False)
    assert config.vocab_size == 99
    write_vocab(hf_dir / "vocab.txt", 99)
    load_pretrained(hf_dir)


def test_pytorch_bin_without_torch_gives_clear_error(hf_dir, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torch.save(load_file(hf_dir / "model.safetensors"), bin_dir / "pytorch_model.bin")
    (bin_dir / "config.json").write_text((hf_dir / "config.json").read_text())
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin is a PyTorch pickle; reading it needs torch"):
        load_pretrained(bin_dir)


class _Payload:
    """A pickle that would create a file when unpickled by a full (unsafe) unpickler."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pytorch_bin_with_code_is_refused_and_not_run(hf_dir, tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"bert.embeddings.word_embeddings.weight": _Payload(str(marker))}, evil / "pytorch_model.bin")
    (evil / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="weights-only"):
        load_pretrained(evil)
    assert not marker.exists()


def test_google_dir_without_bert_config(tmp_path):
    tf = pytest.importorskip("tensorflow")
    with tf.Graph().as_default():
        v = tf.compat.v1.Variable(np.zeros(3, np.float32), name="x")
        saver = tf.compat.v1.train.Saver({"bert/pooler/dense/bias": v})
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(tmp_path / "bert_model.ckpt"), write_meta_graph=False)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path)
    assert str(tmp_path) in str(err.value) and "bert_config.json" in str(err.value)
    # With a config, but a vocab.txt of the wrong size next to it:
    BertConfig(**TINY).to_json_file(tmp_path / "bert_config.json", format="google")
    write_vocab(tmp_path / "vocab.txt", 100)
    with pytest.raises(ConfigError, match=r"vocab\.txt has 100 entries but BertConfig\.vocab_size is 99"):
        load_pretrained(tmp_path)
    # ... and with the right vocab, the one-variable checkpoint is named as incomplete.
    write_vocab(tmp_path / "vocab.txt", 99)
    with pytest.raises(CheckpointError, match=r"bert_model\.ckpt is missing .*\n.*bert/embeddings/word_embeddings"):
        load_pretrained(tmp_path)


def test_unknown_directory_lists_expected_layouts(tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path)
    for expected in ("bert_jax_config.json", "config.json", "model.safetensors", "bert_config.json", "weights.npz"):
        assert expected in str(err.value)


# ----------------------------------------------------------------- convert CLI
def test_convert_cli_hf_to_bert_jax_to_hf(hf_dir, tmp_path, capsys):
    from safetensors.numpy import load_file

    # A BERT vocab has its special tokens (the HF export builds a tokenizer from it).
    (hf_dir / "vocab.txt").write_text("".join(f"{t}\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
                                      + "".join(f"tok{i}\n" for i in range(94)))
    native_dir, back_dir = tmp_path / "native", tmp_path / "back"
    assert convert.main(["--input", str(hf_dir), "--output", str(native_dir), "--to", "bert_jax"]) == 0
    assert "(hf) -> " in capsys.readouterr().out
    assert detect_format(native_dir) == "bert_jax"
    assert convert.main(["--input", str(native_dir), "--output", str(back_dir), "--to", "hf"]) == 0
    original, back = load_file(hf_dir / "model.safetensors"), load_file(back_dir / "model.safetensors")
    assert sorted(back) == sorted(original)  # transformers writes no tied decoder copies either
    for key in original:
        np.testing.assert_array_equal(back[key], original[key], err_msg=key)
    assert (back_dir / "vocab.txt").read_text() == (hf_dir / "vocab.txt").read_text()
    assert json.loads((back_dir / "config.json").read_text())["architectures"] == ["BertForPreTraining"]


def test_top_level_import_is_light(repo_root):
    """`import bert_jax` and reading an HF checkpoint's names pull in neither jax, torch nor TF."""
    code = (
        "import sys, bert_jax; from bert_jax import load_pretrained, BertConfig; "
        "heavy = [m for m in ('jax', 'torch', 'tensorflow', 'flax') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, timeout=600)
    assert result.returncode == 0, result.stderr


def test_convert_cli_subprocess_reports_errors(tmp_path, repo_root):
    ok = subprocess.run([sys.executable, "-m", "bert_jax.convert", "--help"], capture_output=True, text=True, cwd=repo_root,
                        timeout=600)
    assert ok.returncode == 0 and "--to {bert_jax,hf,google}" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "bert_jax.convert", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"),
         "--to", "hf"],
        capture_output=True, text=True, cwd=repo_root, timeout=600,
    )
    assert bad.returncode == 1 and "does not exist" in bad.stderr


# ----------------------------------------------------------------- training run workdirs
@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_run_workdir_loads_params_of_newest_checkpoint(scan_layers, tmp_path):
    """A workdir written by the trainer's RunCheckpointer (orbax) + results.json's config.model."""
    from bert_jax.run_checkpoints import RunCheckpointer

    config = BertConfig(**TINY, scan_layers=scan_layers)
    old, new = (init_params(BertForPreTraining(config.replace(scan_layers=False)), seed=s) for s in (1, 2))
    checkpointer = RunCheckpointer(tmp_path, {"every_steps": 1, "keep": 2, "keep_best": False, "async_save": False})
    for step, params in ((10, old), (20, new)):
        stored = stack_layers(params) if scan_layers else params
        state = {"params": stored, "step": np.int32(step), "opt_state": {"mu": stored}}
        checkpointer.save(step, state, {"position": step}, {"step": step}, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()
    with pytest.raises(CheckpointError, match="none of model_config.json, config.json, results.json"):
        load_pretrained(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"config": {"model": config.to_dict()}}))
    assert detect_format(tmp_path) == "run_workdir"
    loaded_config, loaded = load_pretrained(tmp_path)
    assert loaded_config == config == load_config(tmp_path)
    assert "layer_1" in loaded["bert"]["encoder"]  # always the unstacked layout
    for k, v in flatten(new).items():
        np.testing.assert_array_equal(flatten(loaded)[k], v, err_msg=k)
