"""What every fine-tuning experiment shares: its config fields, and the checks a task makes of them.

`base_config(task_name)` gives the trainer's config (`bert_jax.run_config.default_config`) plus:

    init_from            pretrained model: HF / Google TF / bert_jax directory, or a bert_jax run workdir
                         (finished or not: its newest complete checkpoint)
    vocab_file           "" = the vocab.txt (or spm.model) beside the checkpoint
    lowercase            uncased tokenisation (lowercase + strip accents)
    max_seq_length       128
    num_epochs           3: train.num_steps = ceil(epochs * train examples / batch); 0: give train.num_steps
    warmup_proportion    0.1: optimizer.warmup_steps = 10% of the steps; < 0: give optimizer.warmup_steps
    sweep                the paper's grid: learning_rate {5e-5, 3e-5, 2e-5}, batch_size {16, 32}, num_epochs {2, 3, 4}

Experiments whose task supports them add the head fields (`add_head_fields`; NER and TSV do):

    task.head                "linear" (BERT's dense layer) | "bilstm" (a randomly initialised BiLSTM
                             between the encoder and it: the paper's Table 5 "+ BiLSTM")
    task.bilstm_hidden_size  unset = the encoder's hidden_size (units per direction)
    task.bilstm_layers       unset = 2 (the paper's Table 7)
    task.features            (token classification) "" = fine-tuning, or a layer combination of the
                             paper's Table 7 for the feature-based mode (frozen encoder: needs
                             optimizer.frozen_params='^bert/' and head='bilstm'); see features.HeadOptions

`config.model`: the architecture fields (vocab_size, hidden_size, ...) are unset, meaning "the
checkpoint's"; a value given for one must equal the checkpoint's, else the run is refused. The
run's own fields (dtype, param_dtype, remat, scan_layers, attention_implementation and the two
dropout probabilities, 0.1 as in the paper) are the config's, whatever the checkpoint says.
`train.num_steps` and `optimizer.warmup_steps` are unset too: they follow from the epochs and
the warmup proportion, and giving one of them as well is an error naming both.

The trainer does all of this (`bert_jax.run_config.resolve_config`) from facts the task reports
(`num_train_examples`) and the checkpoint's config; a task's factory only calls `resolve`
here, which checks the tokenizer and max_seq_length against the checkpoint and edits nothing.
config.json and results.json in the workdir record the values used.
"""

from __future__ import annotations

import logging
import os

import ml_collections

from bert_jax.config import BertConfig
from bert_jax.tasks import features as features_lib

log = logging.getLogger(__name__)

# Devlin et al. 2019, appendix A.3: the fine-tuning grid; the best dev result is kept.
PAPER_SWEEP = dict(learning_rate=(5e-5, 3e-5, 2e-5), batch_size=(16, 32), num_epochs=(2, 3, 4))


def base_config(task_name: str, *, max_seq_length: int = 128, learning_rate: float = 2e-5,
                batch_size: int = 32, num_epochs: int = 3) -> ml_collections.ConfigDict:
    from bert_jax.run_config import default_config

    config = default_config()
    config.init_from = ""
    config.vocab_file = ""
    config.lowercase = True
    config.max_seq_length = max_seq_length
    config.num_epochs = num_epochs
    config.warmup_proportion = 0.1
    config.sweep = ml_collections.ConfigDict({k: list(v) for k, v in PAPER_SWEEP.items()})
    config.model = model_placeholder()
    config.task = ml_collections.ConfigDict(dict(name=task_name))
    config.optimizer.learning_rate = learning_rate
    config.optimizer.weight_decay = 0.01
    config.optimizer.warmup_steps = ml_collections.FieldReference(None, field_type=int)  # from warmup_proportion
    config.train.batch_size = batch_size
    config.train.num_steps = ml_collections.FieldReference(None, field_type=int)  # from num_epochs
    config.train.eval_batch_size = 64
    config.train.log_every = 50
    config.train.eval_every = 0  # evaluate at the end of training; set N to evaluate every N steps
    config.checkpoint.every_steps = 1000
    config.checkpoint.keep = 1
    config.checkpoint.async_save = False
    config.logging.progress_bar = False
    return config


def add_head_fields(config: ml_collections.ConfigDict, features: bool = False) -> ml_collections.ConfigDict:
    """Adds config.task.head / bilstm_hidden_size / bilstm_layers (and features, for a token
    classification task) at their defaults: BERT's linear head, fine-tuning."""
    config.task.head = "linear"
    config.task.bilstm_hidden_size = ml_collections.FieldReference(None, field_type=int)  # the encoder's hidden_size
    config.task.bilstm_layers = ml_collections.FieldReference(None, field_type=int)  # 2
    if features:
        config.task.features = ""
    return config


def head_options(config) -> features_lib.HeadOptions:
    """The task's HeadOptions from the fields of `add_head_fields` (validated; absent = defaults)."""
    t = config.task
    return features_lib.HeadOptions(head=str(t.get("head", "linear")), bilstm_hidden_size=t.get("bilstm_hidden_size"),
                                    bilstm_layers=t.get("bilstm_layers"), features=str(t.get("features", "") or ""))


def model_placeholder() -> ml_collections.ConfigDict:
    """config.model for a run whose architecture comes from its checkpoint: architecture fields
    unset (typed, so --config.model.hidden_size=768 parses), the run's fields at the paper's values."""
    from bert_jax.run_config import RUN_MODEL_FIELDS

    defaults = BertConfig().to_dict()
    fields = {}
    for name, value in defaults.items():
        if name in RUN_MODEL_FIELDS:
            fields[name] = value
        else:
            fields[name] = ml_collections.FieldReference(None, field_type=type(value))
    return ml_collections.ConfigDict(fields)


def checkpoint_bert_config(init_from: str) -> BertConfig:
    """The architecture of a pretrained model (any format load_pretrained reads), without its weights."""
    from bert_jax.checkpoints import load_config

    return load_config(init_from)


def _run_vocab(init_from: str) -> str | None:
    """The vocab file of a bert_jax run given as init_from (None for other checkpoints)."""
    from bert_jax import run_files
    if not init_from or not run_files.is_run_workdir(init_from):
        return None
    return run_files.export_info(init_from)["vocab_file"]


def load_tokenizer(config):
    if not config.init_from:
        raise ValueError("config.init_from is empty: fine-tuning starts from a pretrained model "
                         "(--config.init_from=PATH, e.g. a Hugging Face directory)")
    vocab = config.vocab_file or _run_vocab(config.init_from) or None
    path = features_lib.resolve_vocab_file(vocab, config.init_from)
    log.info("tokenizer: %s (lowercase=%s)", path, config.lowercase)
    return features_lib.load_tokenizer(path, lowercase=bool(config.lowercase))


def resolve(config, tokenizer, num_train_examples: int) -> None:
    """Checks the tokenizer and max_seq_length against the checkpoint's architecture; edits
    nothing (the trainer derives the model config and the step schedule: run_config.resolve_config)."""
    bert_config = checkpoint_bert_config(config.init_from)
    features_lib.check_vocab(tokenizer, bert_config)
    if config.max_seq_length > bert_config.max_position_embeddings:
        raise ValueError(f"config.max_seq_length={config.max_seq_length} exceeds the checkpoint's "
                         f"max_position_embeddings={bert_config.max_position_embeddings}")
    log.info("fine-tuning %s from %s: %d training examples", config.task.name, config.init_from, num_train_examples)


def data_path(path: str, field: str = "a data path") -> str:
    """Expands $BERT_JAX_DATA and ~ in data paths given in experiment files."""
    if not path:
        raise ValueError(f"{field} is empty: give the file on the command line (--config.{field}=...)")
    expanded = os.path.expanduser(os.path.expandvars(path))
    if "$" in expanded:
        raise ValueError(f"{field}={path!r}: an environment variable in it is not set (BERT_JAX_DATA points at the shared data)")
    return expanded
