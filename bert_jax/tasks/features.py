"""Pieces every fine-tuning task shares: the tokenizer hook, the vocab check, the head options
(linear / BiLSTM, feature-based), and batching of fixed-size numpy feature arrays (a resumable
shuffled training stream, padded eval batches)."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)


def load_tokenizer(vocab_file: str | pathlib.Path, lowercase: bool = True):
    """The project tokenizer (`data_pipelines.tokenization`): WordPiece for a vocab.txt,
    SentencePiece for a `.model` file."""
    from data_pipelines.tokenization import load_tokenizer as load

    path = pathlib.Path(vocab_file)
    if not path.is_file():
        raise FileNotFoundError(f"vocab file {path} does not exist")
    return load(path, lowercase=lowercase)


def resolve_vocab_file(vocab_file: str | None, init_from: str | None) -> pathlib.Path:
    """The configured vocab, else the `vocab.txt` that sits in the checkpoint directory."""
    if vocab_file:
        return pathlib.Path(vocab_file)
    if init_from:
        from bert_jax.checkpoints import resolve_path  # a Hub id -> its snapshot directory
        init_from = resolve_path(init_from)
        for name in ("vocab.txt", "spm.model"):
            candidate = pathlib.Path(init_from) / name
            if candidate.is_file():
                return candidate
    raise ValueError(
        f"no vocab: set config.vocab_file, or init_from a directory holding vocab.txt (init_from={init_from!r})"
    )


def check_vocab(tokenizer, bert_config) -> None:
    """The tokenizer must produce exactly the ids the checkpoint's embedding table was trained on."""
    if tokenizer.vocab_size != bert_config.vocab_size:
        raise ValueError(
            f"tokenizer vocab {tokenizer.path} has {tokenizer.vocab_size} entries but the checkpoint's "
            f"vocab_size is {bert_config.vocab_size}: the vocab file does not belong to this checkpoint"
        )


HEADS = ("linear", "bilstm")
DEFAULT_BILSTM_LAYERS = 2  # the paper's Table 7: "a randomly initialized two-layer 768-dimensional BiLSTM"


@dataclasses.dataclass(frozen=True)
class HeadOptions:
    """What sits between the encoder and the logits (config.task.head, bilstm_hidden_size,
    bilstm_layers, features; see bert_jax.tasks.finetuning.head_options).

    head="linear" (BERT's): dropout + dense on the pooled output or on every token.
    head="bilstm": a randomly initialised BiLSTM between the encoder and that dense layer
      (bert_jax.modeling.BertBiLSTMFor*), `bilstm_layers` layers (None: 2) of
      `bilstm_hidden_size` units per direction (None: the encoder's hidden_size, the paper's
      768 for BERT-base).
    features (token classification only; "" = fine-tuning): one of modeling.FEATURE_MODES,
      the feature-based mode of the paper's Table 7: frozen encoder, hidden states combined,
      then the BiLSTM (head must be "bilstm") and the classifier.
    """

    head: str = "linear"
    bilstm_hidden_size: int | None = None
    bilstm_layers: int | None = None
    features: str = ""

    def __post_init__(self):
        from bert_jax.modeling.heads import FEATURE_MODES

        if self.head not in HEADS:
            raise ValueError(f"config.task.head: expected one of {HEADS}, found {self.head!r}")
        if self.head == "linear":
            given = [f"bilstm_{n}={v}" for n, v in (("hidden_size", self.bilstm_hidden_size),
                                                     ("layers", self.bilstm_layers)) if v is not None]
            if given:
                raise ValueError(f"config.task.{given[0]} is set but config.task.head='linear' has no BiLSTM; "
                                 "set config.task.head='bilstm' or leave the bilstm_* fields unset")
        for name, value in (("bilstm_hidden_size", self.bilstm_hidden_size), ("bilstm_layers", self.bilstm_layers)):
            if value is not None and int(value) < 1:
                raise ValueError(f"config.task.{name}: expected >= 1 (or unset for the default), found {value}")
        if self.features and self.features not in FEATURE_MODES:
            raise ValueError(f"config.task.features: expected '' (fine-tuning) or one of {FEATURE_MODES}, "
                             f"found {self.features!r}")
        if self.features and self.head != "bilstm":
            raise ValueError(f"config.task.features={self.features!r} (feature-based, the paper's Table 7) feeds "
                             f"a two-layer BiLSTM, but config.task.head={self.head!r}; set config.task.head='bilstm'")

    def _bilstm_sizes(self, bert_config) -> dict:
        return dict(bilstm_hidden_size=int(self.bilstm_hidden_size or bert_config.hidden_size),
                    bilstm_layers=int(self.bilstm_layers or DEFAULT_BILSTM_LAYERS))

    def sequence_model(self, bert_config, num_labels: int):
        from bert_jax.modeling import models

        if self.features:
            raise ValueError(f"config.task.features={self.features!r}: the feature-based mode is for token "
                             "classification (NER); sentence classification fine-tunes (features='')")
        if self.head == "linear":
            return models.BertForSequenceClassification(config=bert_config, num_labels=num_labels)
        return models.BertBiLSTMForSequenceClassification(config=bert_config, num_labels=num_labels,
                                                          **self._bilstm_sizes(bert_config))

    def span_model(self, bert_config):
        """The question-answering model (start and end logits per token)."""
        from bert_jax.modeling import models

        if self.features:
            raise ValueError(f"config.task.features={self.features!r}: the feature-based mode is for token "
                             "classification (NER); question answering fine-tunes (features='')")
        if self.head == "linear":
            return models.BertForQuestionAnswering(config=bert_config)
        return models.BertBiLSTMForQuestionAnswering(config=bert_config, **self._bilstm_sizes(bert_config))

    def token_model(self, bert_config, num_labels: int):
        from bert_jax.modeling import models

        if self.head == "linear":
            return models.BertForTokenClassification(config=bert_config, num_labels=num_labels)
        return models.BertBiLSTMForTokenClassification(config=bert_config, num_labels=num_labels,
                                                       features=self.features, **self._bilstm_sizes(bert_config))


def check_frozen_encoder(model, features: str, frozen_params: str) -> None:
    """A feature-based model (features != "") must have every encoder parameter (`bert/...`)
    frozen by config.optimizer.frozen_params, and nothing else (its head must train): the
    model's stop_gradient alone would leave weight decay moving the encoder."""
    if not features:
        return
    import jax
    import jax.numpy as jnp

    from bert_jax import optim

    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))["params"]
    names = [optim.param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(shapes)]
    regex = optim.compile_frozen_pattern(frozen_params) if frozen_params else None
    frozen = {n for n in names if regex is not None and regex.search(n)}
    left = [n for n in names if n.startswith("bert/") and n not in frozen]
    if left:
        raise ValueError(
            f"config.task.features={features!r} (feature-based) needs the encoder frozen, but "
            f"config.optimizer.frozen_params={frozen_params!r} leaves {len(left)} encoder parameter(s) training "
            f"(e.g. {left[0]}); set --config.optimizer.frozen_params='^bert/'")
    head_frozen = sorted(n for n in frozen if not n.startswith("bert/"))
    if head_frozen:
        raise ValueError(f"config.task.features={features!r}: config.optimizer.frozen_params={frozen_params!r} also "
                         f"freezes the head ({head_frozen[0]}, ...); freeze the encoder alone ('^bert/')")


class ArrayBatchIterator:
    """Endless shuffled batches over arrays of equal first dimension ([num_examples, ...]).

    The stream is a concatenation of per-epoch permutations (epoch e shuffled with
    `seed + e`), cut into global batches of `batch_size`; process p of P takes rows
    [p*B/P, (p+1)*B/P) of every global batch. No example is dropped at an epoch's end: a
    batch may straddle two epochs. The state is the number of batches served.
    """

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int, process_index: int = 0, process_count: int = 1):
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        sizes = {k: v.shape[0] for k, v in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"feature arrays differ in length: {sizes}")
        if batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
        self.arrays = arrays
        self.num_examples = next(iter(sizes.values()))
        if self.num_examples == 0:
            raise ValueError("no training examples")
        self.batch_size = batch_size
        self.seed = seed
        self.per_process = batch_size // process_count
        self.offset = process_index * self.per_process
        self.step = 0
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng(self.seed + epoch).permutation(self.num_examples)}
        return self._permutations[epoch]

    def _rows(self, start: int, count: int) -> np.ndarray:
        positions = np.arange(start, start + count)
        rows = np.empty(count, dtype=np.int64)
        for epoch in np.unique(positions // self.num_examples):
            chosen = positions // self.num_examples == epoch
            rows[chosen] = self._permutation(int(epoch))[positions[chosen] % self.num_examples]
        return rows

    @property
    def epoch(self) -> float:
        return self.step * self.batch_size / self.num_examples

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        rows = self._rows(self.step * self.batch_size + self.offset, self.per_process)
        self.step += 1
        batch = {k: v[rows] for k, v in self.arrays.items()}
        batch.setdefault("example_weight", np.ones(len(rows), np.float32))
        return batch

    def get_state(self) -> dict:
        return {"step": self.step, "seed": self.seed, "num_examples": self.num_examples}

    def set_state(self, state: dict) -> None:
        if state["num_examples"] != self.num_examples or state["seed"] != self.seed:
            raise ValueError(
                f"iterator state is for {state['num_examples']} examples with seed {state['seed']}, "
                f"but this run has {self.num_examples} examples with seed {self.seed}"
            )
        self.step = int(state["step"])


def padded_batches(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict]:
    """Eval batches in order; the last one padded with copies of row 0 and example_weight 0."""
    num = next(iter(arrays.values())).shape[0]
    batches = []
    for start in range(0, num, batch_size):
        rows = np.arange(start, min(start + batch_size, num))
        pad = batch_size - rows.size
        weight = np.concatenate([np.ones(rows.size, np.float32), np.zeros(pad, np.float32)])
        rows = np.concatenate([rows, np.zeros(pad, np.int64)])
        batch = {k: v[rows] for k, v in arrays.items()}
        batch["example_weight"] = weight
        if "example_index" in batch:
            batch["example_index"] = np.where(weight > 0, batch["example_index"], -1).astype(np.int32)
        batches.append(batch)
    return batches


def apply_model(model, params, batch: dict, deterministic: bool, dropout_rng=None, **extra_inputs) -> dict:
    """The fine-tuning models' forward pass on a feature batch (dropout only when not deterministic)."""
    return model.apply(
        {"params": params},
        input_ids=batch["input_ids"],  # [batch, length]
        token_type_ids=batch["token_type_ids"],
        attention_mask=batch["attention_mask"],
        deterministic=deterministic,
        rngs=None if deterministic else {"dropout": dropout_rng},
        **extra_inputs,
    )


class ArrayFeaturesTask:
    """Mixin: a task whose `train_features` / `eval_features` hold `.arrays` ({name: [examples, ...]})."""

    def train_iterator(self, batch_size, seed, process_index=0, process_count=1):
        return ArrayBatchIterator(self.train_features.arrays, batch_size, seed, process_index, process_count)

    def eval_batches(self, batch_size) -> list[dict]:
        return padded_batches(self.eval_features.arrays, batch_size)
