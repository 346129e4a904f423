"""Hugging Face BERT directories: config.json + model.safetensors (or pytorch_model.bin).

Reads both `BertModel` state dicts (`embeddings.*`, `encoder.layer.N.*`, `pooler.*`) and
`BertForPreTraining` ones (`bert.*`, `cls.predictions.*`, `cls.seq_relationship.*`), old
`LayerNorm.gamma/beta` names included. Writes `BertForPreTraining` keys that
`transformers.BertForPreTraining.from_pretrained` loads without missing or unexpected keys.
A pytorch_model.bin is read with `torch.load(weights_only=True)`: tensors only, never
arbitrary pickled code.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from bert_jax.checkpoints import hf_tokenizer, names, staging, tensors, validation
from bert_jax.checkpoints.validation import CheckpointError
from bert_jax.config import BertConfig

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS_FILE, SAFETENSORS_INDEX, TORCH_FILE, TORCH_INDEX)
VOCAB_FILE = hf_tokenizer.VOCAB_FILE


def is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and any(
        os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES
    )


# ------------------------------------------------------------------ reading raw tensors
def _shard_files(directory: str, index_name: str) -> list[str]:
    index_path = os.path.join(directory, index_name)
    with open(index_path, encoding="utf-8") as f:
        weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path} has no 'weight_map' object mapping keys to shard files")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        # A shard is a file of this checkpoint: an index must not point the loader elsewhere.
        if not isinstance(shard, str) or os.path.isabs(shard) or ".." in shard.replace("\\", "/").split("/"):
            raise CheckpointError(f"{index_path}: weight_map names shard {shard!r}, which is not a file inside "
                                  f"{directory}; expected a file name such as 'model-00001-of-00002.safetensors'")
        validation.require_file(directory, shard, "Hugging Face checkpoint")
    return [os.path.join(directory, s) for s in shards]


@contextlib.contextmanager
def _open_safetensors(files: list[str]) -> Iterator[tensors.TensorSource]:
    from safetensors import safe_open

    with contextlib.ExitStack() as stack:
        handle_of, shapes = {}, {}
        for file in files:
            handle = stack.enter_context(safe_open(file, framework="np"))
            for key in handle.keys():
                handle_of[key] = handle
                shapes[key] = tuple(handle.get_slice(key).get_shape())
        where = files[0] if len(files) == 1 else f"{os.path.dirname(files[0])} ({len(files)} safetensors shards)"
        yield tensors.TensorSource(where, shapes, lambda key: handle_of[key].get_tensor(key))


def _load_torch_state_dict(files: list[str]) -> tensors.TensorSource:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{files[0]} is a PyTorch pickle; reading it needs torch (pip install torch). Alternatively "
            f"convert the directory to model.safetensors with transformers"
        ) from None
    arrays: dict[str, np.ndarray] = {}
    for file in files:
        try:
            # weights_only=True: the unpickler only builds tensors and plain containers.
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... for bad files
            raise CheckpointError(f"cannot read {file} as a weights-only PyTorch state dict: {e}") from None
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{file} holds a {type(state).__name__}, not a state dict of tensors")
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{file}: entry {key!r} is a {type(value).__name__}, not a tensor")
            value = value.detach()
            arrays[key] = (value.float() if value.is_floating_point() else value).numpy()
    where = files[0] if len(files) == 1 else f"{os.path.dirname(files[0])} ({len(files)} PyTorch shards)"
    return tensors.TensorSource(where, {k: tuple(v.shape) for k, v in arrays.items()}, arrays.__getitem__)


@contextlib.contextmanager
def _open_weights(directory: str) -> Iterator[tensors.TensorSource]:
    present = lambda name: os.path.isfile(os.path.join(directory, name))
    if present(SAFETENSORS_FILE):
        with _open_safetensors([os.path.join(directory, SAFETENSORS_FILE)]) as source:
            yield source
    elif present(SAFETENSORS_INDEX):
        with _open_safetensors(_shard_files(directory, SAFETENSORS_INDEX)) as source:
            yield source
    elif present(TORCH_FILE):
        yield _load_torch_state_dict([os.path.join(directory, TORCH_FILE)])
    elif present(TORCH_INDEX):
        yield _load_torch_state_dict(_shard_files(directory, TORCH_INDEX))
    else:
        raise CheckpointError(
            f"Hugging Face checkpoint directory {directory} has no weights: expected one of "
            f"{', '.join(WEIGHT_FILES)}; found: {sorted(os.listdir(directory))}"
        )


# ------------------------------------------------------------------ HF key conventions
def _canonical_keys(raw_keys: list[str]) -> dict[str, str]:
    """Canonical BertForPreTraining key -> key as stored.

    BertModel files lack the `bert.` prefix; old files call LayerNorm's weight and bias
    gamma and beta.
    """
    base_model_file = not any(k.startswith("bert.") for k in raw_keys)
    canonical: dict[str, str] = {}
    for raw in raw_keys:
        key = raw
        if key.endswith("LayerNorm.gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith("LayerNorm.beta"):
            key = key[: -len("beta")] + "bias"
        if base_model_file and not key.startswith(names.HF_HEAD_PREFIXES):
            key = "bert." + key
        if key in canonical:
            raise CheckpointError(f"keys {canonical[key]!r} and {raw!r} both hold {key!r}")
        canonical[key] = raw
    return canonical


def _hf_view(source: tensors.TensorSource) -> tensors.TensorSource:
    """The file as canonical keys, with buffers and tied copies checked and dropped."""
    canonical = _canonical_keys(list(source.shapes))
    for buffer in names.HF_BUFFERS:
        canonical.pop(buffer, None)
    read = lambda key: source.read(canonical[key])
    decoder_w = canonical.pop(names.HF_TIED_DECODER_WEIGHT, None)
    if decoder_w is not None:
        words_key = "bert.embeddings.word_embeddings.weight"
        if words_key in canonical:
            tied = np.asarray(source.read(decoder_w), np.float32)
            words = np.asarray(read(words_key), np.float32)
            if tied.shape != words.shape or not np.array_equal(tied, words):
                raise CheckpointError(
                    f"{source.path}: {decoder_w!r} differs from {words_key!r}; bert_jax ties the MLM "
                    f"decoder to the word embeddings (as BERT does) and cannot hold a separate decoder"
                )
    decoder_b = canonical.pop(names.HF_TIED_DECODER_BIAS, None)
    if decoder_b is not None:
        if "cls.predictions.bias" not in canonical:
            canonical["cls.predictions.bias"] = decoder_b
        elif not np.array_equal(np.asarray(source.read(decoder_b)), np.asarray(read("cls.predictions.bias"))):
            raise CheckpointError(f"{source.path}: {decoder_b!r} differs from 'cls.predictions.bias'; they must be tied")
    shapes = {key: source.shapes[raw] for key, raw in canonical.items()}
    return tensors.TensorSource(source.path, shapes, read)


# ------------------------------------------------------------------ public
def load(directory: str, dtype=np.float32, check_vocab: bool = True) -> tuple[BertConfig, dict[str, Any]]:
    """A Hugging Face BERT directory -> (BertConfig, flat params)."""
    config_path = validation.require_file(directory, CONFIG_FILE, "Hugging Face checkpoint")
    config = BertConfig.from_json_file(config_path)
    vocab_path = os.path.join(directory, VOCAB_FILE)
    if check_vocab and os.path.isfile(vocab_path):
        config.validate_vocab(vocab_path)
    with _open_weights(directory) as raw:
        flat = tensors.import_params(_hf_view(raw), "hf", config, config_path, dtype)
    return config, flat


# Heads of bert_jax models that no transformers BertFor* class (nor Google's layout) holds: the
# trainer's head.json model class -> what it is; the top-level param groups they add.
NON_BERT_HEADS = {
    "BertBiLSTMForTokenClassification": "a BiLSTM head (config.task.head='bilstm', or the feature-based "
                                        "mode's layer mix and BiLSTM, config.task.features)",
    "BertBiLSTMForSequenceClassification": "a BiLSTM head (config.task.head='bilstm')",
    "BertBiLSTMForQuestionAnswering": "a BiLSTM head (config.task.head='bilstm')",
}
NON_BERT_PARAM_GROUPS = ("bilstm", "feature_mix")


def refuse_non_bert_head(model_class: str | None, where: str, param_groups=()) -> None:
    """CheckpointError for a model whose head no BERT export format holds (a BiLSTM head, a
    feature-based layer mix): writing the encoder alone, or beside a classifier that reads the
    BiLSTM, would not be this model. `model_class` from the trainer's head.json, or the params'
    top-level groups."""
    groups = sorted(set(param_groups) & set(NON_BERT_PARAM_GROUPS))
    if model_class in NON_BERT_HEADS:
        what = f"the model is {model_class}, with {NON_BERT_HEADS[model_class]}"
    elif groups:
        what = f"the params hold {', '.join(g + '/' for g in groups)} (bert_jax's BiLSTM head / feature-based layer mix)"
    else:
        return
    raise CheckpointError(
        f"{where}: {what}; no Hugging Face BertFor* class or Google checkpoint holds that head, and an export "
        f"without it would not be this model. Nothing was written; evaluate or predict with bert_jax from the "
        f"run workdir")


def _architecture(flat: Mapping[str, Any]) -> str:
    """The transformers class whose keys these params fill (written to config.json)."""
    has = lambda prefix: any(k.startswith(prefix) for k in flat)
    if has("cls/predictions/"):
        return "BertForPreTraining" if has("cls/seq_relationship/") else "BertForMaskedLM"
    if has("cls/seq_relationship/"):
        return "BertForNextSentencePrediction"
    if has("qa_outputs/"):
        return "BertForQuestionAnswering"
    if has("classifier/"):
        return "BertForSequenceClassification"  # BertForTokenClassification has the same keys
    return "BertModel"


def save(flat: Mapping[str, Any], config: BertConfig, directory: str, vocab_file: str | None = None,
         lowercase: bool = True, label_names: Sequence[str] | None = None,
         architecture: str | None = None) -> None:
    """Writes config.json + model.safetensors (float32, BertForPreTraining key names), and with a
    vocab the tokenizer files of `hf_tokenizer` (tokenizer.json, tokenizer_config.json,
    special_tokens_map.json, vocab.txt).

    `label_names` (class i's name at index i) go into id2label / label2id; without them a
    classifier gets transformers' LABEL_i. `architecture` overrides the transformers class
    recorded in config.json (BertForTokenClassification has the same keys as
    BertForSequenceClassification, so only the caller knows which it is).

    Everything is checked and built first, then written into a temporary directory beside
    `directory` and moved into place: a failed export (TokenizerExportError, CheckpointError)
    leaves no directory, or the one that was there. Tokenizer files in `directory` that this
    export does not write are removed, so an old tokenizer never sits beside new weights.
    """
    from safetensors.numpy import save_file

    refuse_non_bert_head(None, f"export to {directory}", {k.split("/")[0] for k in flat})
    hf_dict = config.to_hf_dict(architectures=(architecture or _architecture(flat),))
    state = tensors.export_params(flat, config, "hf")
    if "classifier.bias" in state:
        num_labels = state["classifier.bias"].shape[0]
        if label_names is None:
            # transformers sizes the classifier from id2label (default 2 labels).
            label_names = [f"LABEL_{i}" for i in range(num_labels)]
        label_names = [str(n) for n in label_names]
        if len(label_names) != num_labels:
            raise CheckpointError(
                f"label_names has {len(label_names)} names ({label_names[:5]}...) but classifier/bias has "
                f"{num_labels} outputs")
        if len(set(label_names)) != len(label_names):
            raise CheckpointError(f"label_names repeat a name: {label_names}; label2id needs distinct names")
        hf_dict["id2label"] = {str(i): n for i, n in enumerate(label_names)}
        hf_dict["label2id"] = {n: i for i, n in enumerate(label_names)}
    elif label_names is not None:
        raise CheckpointError(f"label_names given ({list(label_names)[:5]}) but the params have no classifier/")
    tokenizer_files = {}
    if vocab_file is not None:
        config.validate_vocab(vocab_file)
        tokenizer_files = hf_tokenizer.build(vocab_file, lowercase, config.vocab_size, config.max_position_embeddings)
    config_text = json.dumps(hf_dict, indent=2, sort_keys=True) + "\n"

    with staging.staged_directory(directory, stale=(*hf_tokenizer.FILES, "spm.model", *WEIGHT_FILES)) as staged:
        with open(os.path.join(staged, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(config_text)
        # transformers refuses safetensors files without format metadata.
        save_file(state, os.path.join(staged, SAFETENSORS_FILE), metadata={"format": "pt"})
        for name, text in tokenizer_files.items():
            with open(os.path.join(staged, name), "w", encoding="utf-8") as f:
                f.write(text)
