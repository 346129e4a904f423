"""Sentence and sentence-pair classification/regression: the machinery GLUE, TSV and sentiment share.

Inputs are `TextExample`s; features follow BERT: `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`,
token types 0 for `[CLS] a [SEP]` and 1 for `b [SEP]`, padded to `max_seq_length`.

Truncation rule (google-research/bert `_truncate_seq_pair`, in the tokenizer's `build_pair`):
while the pair is too long, drop the last token of the longer side (of `b` on a tie); a single
sentence loses its tail.
Every truncated example is counted and logged, none is dropped.

Batches (numpy, [batch, length] int32 unless noted):
    input_ids, token_type_ids, attention_mask, label ([batch] int32, or float32 for
    regression), example_weight ([batch] float32; 0 on eval padding), example_index ([batch]
    int32 into the eval examples; -1 on padding), eval_set ([batch] int32: which eval set).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from etils import epath

from bert_jax import metrics as metrics_lib
from bert_jax.tasks import features as features_lib
from bert_jax.tasks.base import Task

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TextExample:
    guid: str  # where it came from, e.g. "train.tsv:12" or a TFDS idx; used in prediction files
    text_a: str
    text_b: str | None = None
    label: str | float | None = None  # None: unlabelled (test split)


def encode_examples(
    tokenizer, examples: Sequence[TextExample], max_seq_length: int, what: str
) -> dict[str, np.ndarray]:
    """Tokenises and packs examples into [num_examples, max_seq_length] int32 arrays.

    Packing and truncation are the tokenizer's `build_pair` (Google's rule); this counts the
    examples it had to cut.
    """
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length must be >= 3 to hold [CLS] a [SEP] b [SEP], got {max_seq_length}")
    ids_a = tokenizer.encode_ids_batch([e.text_a for e in examples])
    texts_b = [e.text_b for e in examples if e.text_b is not None]
    ids_b = iter(tokenizer.encode_ids_batch(texts_b) if texts_b else [])
    rows, num_truncated = [], 0
    for example, tokens_a in zip(examples, ids_a):
        tokens_b = next(ids_b) if example.text_b is not None else None
        used = len(tokens_a) + (len(tokens_b) + 3 if tokens_b is not None else 2)
        num_truncated += used > max_seq_length
        rows.append(tokenizer.build_pair(tokens_a, tokens_b, max_seq_length))
    log.info(
        "%s: %d examples, %d truncated to max_seq_length=%d (longest segment first)",
        what, len(examples), num_truncated, max_seq_length,
    )
    keys = ("input_ids", "token_type_ids", "attention_mask")
    arrays = {k: np.stack([r[k] for r in rows]) if rows else np.zeros((0, max_seq_length), np.int32) for k in keys}
    arrays["num_truncated"] = num_truncated
    return arrays


# ---- metrics per task --------------------------------------------------------------------

MetricFn = Callable[[np.ndarray, np.ndarray], dict]


def accuracy_metrics(labels, predictions) -> dict:
    return {"accuracy": metrics_lib.accuracy(labels, predictions)}


def accuracy_and_f1_metrics(labels, predictions) -> dict:
    return {"accuracy": metrics_lib.accuracy(labels, predictions), "f1": metrics_lib.f1_binary(labels, predictions)}


def mcc_metrics(labels, predictions) -> dict:
    return {"mcc": metrics_lib.matthews_corrcoef(labels, predictions), "accuracy": metrics_lib.accuracy(labels, predictions)}


def correlation_metrics(labels, predictions) -> dict:
    return {
        "pearson": metrics_lib.pearson(predictions, labels),
        "spearman": metrics_lib.spearman(predictions, labels),
        "mse": float(np.mean((np.asarray(predictions) - np.asarray(labels)) ** 2)),
    }


# ---- the task ------------------------------------------------------------------------------


class SequenceClassificationTask(Task):
    """Classification (label_names given) or regression (label_names None) over text (pairs).

    `eval_sets` maps a name to examples; with more than one set (MNLI matched/mismatched)
    every metric is reported per set as `<metric>_<name>`. `head` (features.HeadOptions, default
    BERT's linear head) chooses the model: `finetuning.head_options(config)` reads it from
    config.task.head / bilstm_hidden_size / bilstm_layers.
    """

    higher_is_better = True

    def __init__(
        self,
        *,
        name: str,
        tokenizer,
        train_examples: Sequence[TextExample],
        eval_sets: Mapping[str, Sequence[TextExample]],
        label_names: Sequence[str] | None,
        max_seq_length: int,
        metric_fn: MetricFn,
        main_metric: str,
        head: features_lib.HeadOptions | None = None,
    ):
        self.name = name
        self.head = features_lib.HeadOptions() if head is None else head
        if self.head.features:
            raise ValueError(f"config.task.features={self.head.features!r}: the feature-based mode is for token "
                             f"classification (NER); {name} fine-tunes (features='')")
        self.tokenizer = tokenizer
        self.label_names = None if label_names is None else [str(n) for n in label_names]
        self.is_regression = label_names is None
        self.max_seq_length = max_seq_length
        self.metric_fn = metric_fn
        self.main_metric = main_metric
        self.train_examples = list(train_examples)
        self.eval_sets = {k: list(v) for k, v in eval_sets.items()}
        self._train_features = None
        self._eval_features = None
        self.truncation_counts: dict[str, int] = {}

    # -- labels
    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    def _label_array(self, examples: Sequence[TextExample], what: str) -> np.ndarray:
        if self.is_regression:
            values = []
            for e in examples:
                try:
                    values.append(float(e.label))
                except (TypeError, ValueError):
                    raise ValueError(f"{what}: example {e.guid} has label {e.label!r}; expected a number (regression)") from None
            return np.asarray(values, dtype=np.float32)
        index = {n: i for i, n in enumerate(self.label_names)}
        labels = []
        for e in examples:
            key = str(e.label)
            if key not in index:
                raise ValueError(f"{what}: example {e.guid} has label {e.label!r}; expected one of {self.label_names}")
            labels.append(index[key])
        return np.asarray(labels, dtype=np.int32)

    # -- features
    def _features(self, examples, what, labelled=True) -> dict[str, np.ndarray]:
        encoded = encode_examples(self.tokenizer, examples, self.max_seq_length, what)
        self.truncation_counts[what] = encoded.pop("num_truncated")
        if labelled:
            encoded["label"] = self._label_array(examples, what)
        return encoded

    @property
    def train_features(self) -> dict[str, np.ndarray]:
        if self._train_features is None:
            if not self.train_examples:
                raise ValueError(f"{self.name}: the training set is empty")
            self._train_features = self._features(self.train_examples, f"{self.name} train")
        return self._train_features

    @property
    def num_train_examples(self) -> int:
        return len(self.train_examples)

    @property
    def eval_features(self) -> dict[str, np.ndarray]:
        if self._eval_features is None:
            parts = []
            for set_id, (set_name, examples) in enumerate(self.eval_sets.items()):
                if not examples:
                    raise ValueError(f"{self.name}: eval set {set_name!r} is empty")
                part = self._features(examples, f"{self.name} eval {set_name}".rstrip())
                part["eval_set"] = np.full(len(examples), set_id, np.int32)
                part["example_index"] = np.arange(len(examples), dtype=np.int32)
                parts.append(part)
            self._eval_features = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self._eval_features

    # -- the Task contract
    def make_model(self, bert_config):
        features_lib.check_vocab(self.tokenizer, bert_config)
        return self.head.sequence_model(bert_config, self.num_labels)

    def train_iterator(self, batch_size, seed, process_index=0, process_count=1):
        return features_lib.ArrayBatchIterator(self.train_features, batch_size, seed, process_index, process_count)

    def eval_batches(self, batch_size) -> Iterable[dict]:
        return features_lib.padded_batches(self.eval_features, batch_size)

    def _logits(self, model, params, batch, deterministic, dropout_rng=None):
        outputs = features_lib.apply_model(model, params, batch, deterministic, dropout_rng)
        return outputs["logits"].astype("float32")  # [batch, num_labels]

    def loss_and_metrics(self, model, params, batch, dropout_rng):
        import jax.numpy as jnp
        import optax

        logits = self._logits(model, params, batch, deterministic=False, dropout_rng=dropout_rng)
        weights = batch.get("example_weight", jnp.ones(logits.shape[0], jnp.float32))
        denominator = jnp.maximum(weights.sum(), 1.0)
        if self.is_regression:
            per_example = (logits[:, 0] - batch["label"]) ** 2
            loss = (per_example * weights).sum() / denominator
            return loss, {"loss": loss, "mse": loss}
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        loss = (per_example * weights).sum() / denominator
        accuracy = ((logits.argmax(-1) == batch["label"]) * weights).sum() / denominator
        return loss, {"loss": loss, "accuracy": accuracy}

    def predict(self, model, params, batch):
        logits = self._logits(model, params, batch, deterministic=True)
        if self.is_regression:
            return {"score": logits[:, 0]}
        return {"logits": logits}

    def _gather(self, predictions, batches):
        """Host side: concatenates predictions and drops padding. -> (outputs, eval_set, index)."""
        keys = ("score",) if self.is_regression else ("logits",)
        out = {k: np.concatenate([np.asarray(p[k]) for p in predictions]) for k in keys}
        batches = list(batches)
        real = np.concatenate([np.asarray(b["example_weight"]) > 0 for b in batches])
        eval_set = np.concatenate([np.asarray(b["eval_set"]) for b in batches])[real]
        index = np.concatenate([np.asarray(b["example_index"]) for b in batches])[real]
        out = {k: v[real] for k, v in out.items()}
        return out, eval_set, index

    def predicted_values(self, outputs) -> np.ndarray:
        return outputs["score"] if self.is_regression else outputs["logits"].argmax(-1)

    def evaluate(self, predictions, batches) -> dict:
        outputs, eval_set, index = self._gather(predictions, batches)
        predicted = self.predicted_values(outputs)
        result = {}
        for set_id, (set_name, examples) in enumerate(self.eval_sets.items()):
            chosen = eval_set == set_id
            labels = self._label_array(examples, set_name)[index[chosen]]
            scores = self.metric_fn(labels, predicted[chosen])
            suffix = f"_{set_name}" if len(self.eval_sets) > 1 else ""
            result.update({f"{k}{suffix}": float(v) for k, v in scores.items()})
        return result

    def prediction_rows(self, predictions, batches):
        """(eval set name, example, predicted label name or score) per real eval example."""
        outputs, eval_set, index = self._gather(predictions, batches)
        predicted = self.predicted_values(outputs)
        set_names = list(self.eval_sets)
        for set_id, i, value in zip(eval_set, index, predicted):
            set_name = set_names[set_id]
            shown = float(value) if self.is_regression else self.label_names[int(value)]
            yield set_name, self.eval_sets[set_name][i], shown

    def write_predictions(self, predictions, batches, path) -> None:
        f = io.StringIO()  # written whole through etils.epath: `path` may be in a gs:// workdir
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["eval_set", "guid", "prediction", "label"])
        for set_name, example, shown in self.prediction_rows(predictions, batches):
            writer.writerow([set_name, example.guid, shown, "" if example.label is None else example.label])
        epath.Path(path).write_text(f.getvalue(), encoding="utf-8")
