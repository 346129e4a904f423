"""Shared pieces of the fine-tuning tests: random-init checkpoints on disk, run configs cut to a few
steps, and a tiny vocabulary and CoNLL corpus that need no shared data."""

import pathlib

import jax
import jax.numpy as jnp
from flax import linen as nn

from bert_jax.config import BertConfig


def save_random_checkpoint(path: pathlib.Path, config: BertConfig, vocab_file) -> pathlib.Path:
    """A randomly initialised BertModel (`bert/` params) in bert_jax's checkpoint format."""
    from bert_jax.checkpoints import save_pretrained
    from bert_jax.modeling import BertModel

    params = nn.meta.unbox(BertModel(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    save_pretrained({"bert": jax.device_get(params)}, config, path, format="bert_jax", vocab_file=vocab_file)
    return path


def set_fields(config, **dotted):
    """config["a"]["b"] = v for every a.b=v (keyword names cannot hold dots: pass **{"a.b": v})."""
    for key, value in dotted.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def one_epoch_config(experiment: str, arg: str, init_from, batch_size: int = 8, **dotted):
    """`experiments/<experiment>.py`'s config for `arg`, set for one quick epoch from `init_from`:
    no TensorBoard, and a stated peak FLOP/s so the trainer skips its matmul benchmark (MFU is not
    tested here); then the `dotted` fields."""
    import importlib

    config = importlib.import_module(f"experiments.{experiment}").get_config(arg)
    config.init_from = str(init_from)
    config.num_epochs = 1
    config.train.batch_size = config.train.eval_batch_size = batch_size
    config.logging.tensorboard = False
    config.logging.peak_flops_per_device = 1e11
    return set_fields(config, **dotted)


def short_run(config, init_from, steps=3):
    """An experiment's config for `steps` steps of 8 rows of 16 tokens, no warmup proportion."""
    config.init_from = str(init_from)
    config.max_seq_length = 16
    config.num_epochs = 0
    config.train.num_steps = steps
    config.warmup_proportion = -1
    config.optimizer.warmup_steps = 1
    config.train.batch_size = 8
    config.train.eval_batch_size = 8
    config.train.log_every = 1
    config.logging.update(tensorboard=False, progress_bar=False, peak_flops_per_device=1e11)
    config.checkpoint.async_save = False
    return config


# ---- a 21-entry vocabulary and data in it ---------------------------------------------------

WORDS = ["good", "bad", "film", "dull", "fine", "moving", "plot", "the", "a", "paris", "london", "is", "visit",
         "we", "rain", "sun"]


def write_vocab(path: pathlib.Path) -> pathlib.Path:
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8")
    return path


def word_checkpoint(root: pathlib.Path, num_hidden_layers: int = 2) -> tuple[pathlib.Path, BertConfig]:
    """A random-init BERT with the 21-entry vocab of `write_vocab` (no shared data)."""
    config = BertConfig.preset("tiny", vocab_size=5 + len(WORDS), max_position_embeddings=32, hidden_size=32,
                               num_attention_heads=2, intermediate_size=64, num_hidden_layers=num_hidden_layers)
    return save_random_checkpoint(root / "checkpoint", config, write_vocab(root / "vocab.txt")), config


def write_conll(path: pathlib.Path, n: int = 16) -> pathlib.Path:
    """n sentences of WORDS, "paris" and "london" tagged B-loc."""
    import numpy as np

    rng = np.random.default_rng(0)
    lines = []
    for _ in range(n):
        for word in rng.choice(WORDS, size=int(rng.integers(3, 8))):
            lines.append(f"{word}\t{'B-loc' if word in ('paris', 'london') else 'O'}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
