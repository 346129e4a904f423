"""What every fine-tuning experiment shares: its config fields and their resolution at start-up.

`base_config(task_name)` gives the trainer's config (`bert_jax.train.default_config`) plus:

    init_from            pretrained model: HF / Google TF / bert_jax directory, or a bert_jax run workdir
    vocab_file           "" = the vocab.txt (or spm.model) beside the checkpoint
    lowercase            uncased tokenisation (lowercase + strip accents)
    max_seq_length       128
    num_epochs           3: sets train.num_steps = ceil(epochs * train examples / batch); 0 keeps num_steps
    warmup_proportion    0.1: optimizer.warmup_steps = 10% of the steps, then linear decay; < 0 keeps warmup_steps
    dropout_rate         0.1 on hidden states and attention probabilities (the paper's value)
    sweep                the paper's grid: learning_rate {5e-5, 3e-5, 2e-5}, batch_size {16, 32}, num_epochs {2, 3, 4}

`resolve(config, num_train_examples)`, called by each task's factory when the trainer builds the
task (before it reads `config.model` and `config.train.num_steps`), fills `config.model` with
the checkpoint's architecture, and the schedule from the epochs; results.json then records
the values used. The tokenizer's vocab size is checked against the checkpoint's vocab_size.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib

import ml_collections

from bert_jax.config import BertConfig
from bert_jax.tasks import features as features_lib

log = logging.getLogger(__name__)

# Devlin et al. 2019, appendix A.3: the fine-tuning grid; the best dev result is kept.
PAPER_SWEEP = dict(learning_rate=(5e-5, 3e-5, 2e-5), batch_size=(16, 32), num_epochs=(2, 3, 4))


def base_config(task_name: str, *, max_seq_length: int = 128, learning_rate: float = 2e-5,
                batch_size: int = 32, num_epochs: int = 3) -> ml_collections.ConfigDict:
    from bert_jax.train import default_config

    config = default_config()
    config.init_from = ""
    config.vocab_file = ""
    config.lowercase = True
    config.max_seq_length = max_seq_length
    config.num_epochs = num_epochs
    config.warmup_proportion = 0.1
    config.dropout_rate = 0.1
    config.sweep = ml_collections.ConfigDict({k: list(v) for k, v in PAPER_SWEEP.items()})
    # Filled from the checkpoint by resolve(); these base values only reserve the fields.
    config.model = ml_collections.ConfigDict(BertConfig.preset("base").to_dict())
    config.task = ml_collections.ConfigDict(dict(name=task_name))
    config.optimizer.learning_rate = learning_rate
    config.optimizer.weight_decay = 0.01
    config.train.batch_size = batch_size
    config.train.eval_batch_size = 64
    config.train.log_every = 50
    config.train.eval_every = 0  # evaluate at the end of training; set N to evaluate every N steps
    config.checkpoint.every_steps = 1000
    config.checkpoint.keep = 1
    config.checkpoint.async_save = False
    config.logging.progress_bar = False
    return config


def checkpoint_bert_config(init_from: str) -> BertConfig:
    """The architecture of a pretrained model (any format load_pretrained reads), without its weights."""
    from bert_jax.checkpoints import load_config

    return load_config(init_from)


def _run_vocab(init_from: str) -> str | None:
    """The vocab file a bert_jax pretraining run used, from its results.json."""
    results = pathlib.Path(init_from) / "results.json"
    if results.is_file():
        data = json.loads(results.read_text()).get("config", {}).get("data", {})
        return data.get("vocab_file") or None
    return None


def load_tokenizer(config):
    if not config.init_from:
        raise ValueError("config.init_from is empty: fine-tuning starts from a pretrained model "
                         "(--config.init_from=PATH, e.g. a Hugging Face directory)")
    vocab = config.vocab_file or _run_vocab(config.init_from) or None
    path = features_lib.resolve_vocab_file(vocab, config.init_from)
    log.info("tokenizer: %s (lowercase=%s)", path, config.lowercase)
    return features_lib.load_tokenizer(path, lowercase=bool(config.lowercase))


def resolve(config, tokenizer, num_train_examples: int) -> None:
    """Fills config.model from the checkpoint and the step schedule from the epochs (in place)."""
    bert_config = checkpoint_bert_config(config.init_from)
    bert_config = bert_config.replace(
        hidden_dropout_prob=float(config.dropout_rate), attention_probs_dropout_prob=float(config.dropout_rate)
    )
    features_lib.check_vocab(tokenizer, bert_config)
    if config.max_seq_length > bert_config.max_position_embeddings:
        raise ValueError(f"config.max_seq_length={config.max_seq_length} exceeds the checkpoint's "
                         f"max_position_embeddings={bert_config.max_position_embeddings}")
    config.model.update(bert_config.to_dict())
    if config.num_epochs > 0:
        steps = max(1, math.ceil(config.num_epochs * num_train_examples / config.train.batch_size))
        config.train.num_steps = steps
    if config.warmup_proportion >= 0:
        config.optimizer.warmup_steps = int(config.warmup_proportion * config.train.num_steps)
    log.info(
        "fine-tuning %s from %s: %d training examples, batch %d, %d steps (%s epochs), warmup %d, lr %g",
        config.task.name, config.init_from, num_train_examples, config.train.batch_size, config.train.num_steps,
        config.num_epochs, config.optimizer.warmup_steps, config.optimizer.learning_rate,
    )


def data_path(path: str, field: str = "a data path") -> str:
    """Expands $BERT_JAX_DATA and ~ in data paths given in experiment files."""
    if not path:
        raise ValueError(f"{field} is empty: give the file on the command line (--config.{field}=...)")
    expanded = os.path.expanduser(os.path.expandvars(path))
    if "$" in expanded:
        raise ValueError(f"{field}={path!r}: an environment variable in it is not set (BERT_JAX_DATA points at the shared data)")
    return expanded
