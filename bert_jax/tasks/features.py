"""Pieces every fine-tuning task shares: the tokenizer hook, the vocab check, and batching of
fixed-size numpy feature arrays (a resumable shuffled training stream, padded eval batches)."""

from __future__ import annotations

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
