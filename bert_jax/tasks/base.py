"""The Task contract: what the generic trainer (`bert_jax/train.py`) knows about a task.

Pretraining and every fine-tuning task implement these methods (subclassing `Task` is optional;
the trainer only calls them). See docs/ARCHITECTURE.md, "Tasks".

Batch sizes: `train_iterator(batch_size, ...)` and `eval_batches(batch_size)` get the GLOBAL batch
size. The train iterator of process p of P yields rows [p*B/P, (p+1)*B/P) of each global batch;
`eval_batches` yields whole global batches (the same on every process) and the trainer hands each
process its rows. Parameters are initialised by calling the model with `input_ids` [1, 8] alone,
which every model in bert_jax.modeling accepts.

Tasks report facts and do not edit the config: a fine-tuning task exposes `num_train_examples`,
from which the trainer derives train.num_steps (`bert_jax.run_config.resolve_config`).
"""

from __future__ import annotations

import abc
from typing import Any, Iterable, Iterator, Protocol

import numpy as np


class BatchIterator(Protocol):
    """Yields dicts of numpy arrays (this process's rows); resumable through a JSON state."""

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...
    def __next__(self) -> dict[str, np.ndarray]: ...
    def get_state(self) -> dict: ...
    def set_state(self, state: dict) -> None: ...


class Task(abc.ABC):
    main_metric: str  # e.g. "accuracy": the trainer keeps the best checkpoint by it
    higher_is_better: bool = True
    # Fine-tuning tasks: the number of training examples (a fact; the trainer turns epochs into steps).
    num_train_examples: int | None = None

    @abc.abstractmethod
    def make_model(self, bert_config) -> Any:
        """The flax module to train."""

    @abc.abstractmethod
    def train_iterator(self, batch_size: int, seed: int, process_index: int = 0,
                       process_count: int = 1) -> BatchIterator:
        """Endless training batches: this process's share of each global batch of `batch_size`."""

    @abc.abstractmethod
    def loss_and_metrics(self, model, params, batch, dropout_rng) -> tuple[Any, dict[str, Any]]:
        """(scalar loss, {name: scalar}) on a training batch; traced under jit."""

    @abc.abstractmethod
    def predict(self, model, params, batch) -> dict[str, Any]:
        """Per-example outputs on an eval batch ({name: [batch, ...] array}); traced under jit."""

    @abc.abstractmethod
    def eval_batches(self, batch_size: int) -> Iterable[dict[str, np.ndarray]]:
        """Finite, global eval batches; the last one padded, with batch["example_weight"] 0 on padding."""

    @abc.abstractmethod
    def evaluate(self, predictions: list[dict[str, np.ndarray]], batches: list[dict[str, np.ndarray]]
                 ) -> dict[str, float]:
        """Metrics from the predictions of every eval batch (host side, numpy)."""

    def write_predictions(self, predictions, batches, path) -> None:
        """Optional: write predictions in the task's own format."""
