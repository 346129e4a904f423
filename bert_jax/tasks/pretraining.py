"""BERT pretraining as a Task: masked-LM loss over the weighted masked positions plus NSP.

Losses and softmax run in float32 whatever the compute dtype (flax#677: a bf16 log_softmax
collapses). As in google-research/bert `run_pretraining.py`:
  mlm_loss = sum_p w_p * -log p(masked_lm_ids_p) / (sum_p w_p + 1e-5)
  nsp_loss = mean over examples of -log p(next_sentence_label)
  loss     = mlm_loss + nsp_loss   (nsp_loss left out without NSP, RoBERTa-style)

`config.task.objective="next_token"` is the paper's left-to-right LM (Table 5 "LTR", GPT): the
same loss with every position t predicting token t + 1 (weight 1 where t + 1 is a real token of
the same packed segment), through the same tied output layer; its metrics are `lm_loss` and
`lm_accuracy`. It needs a causal model (`model.causal_attention=True`; a bidirectional one would
see its targets) and unmasked rows (`data.unmasked=True`). `task.next_token_predictions` > 0 trains
on that many sampled positions per row instead of all of them (the output softmax over the
vocabulary at every position is most of an LTR step on CPU); evaluation always scores them all.

NSP follows `config.data.next_sentence_prediction`; sequence length and predictions per
sequence come from `config.data` too. Config fields (`config.task`): name="pretraining",
objective ("masked_lm" as in BERT, or "next_token"), synthetic_data=False (random-token batches,
for benchmarks and trainer tests), eval_input_files ("" = no evaluation; held-out files in the
format of config.data), num_eval_batches (held-out batches per evaluation),
unigram_baseline_batches (training batches whose token frequencies make the unigram baseline;
0 or unset = no baseline).

Evaluation reports, beside the losses and accuracies: `hidden_cosine` and
`hidden_effective_rank` (bert_jax.representation: is the encoder collapsed?), and
`mlm_unigram_loss` / `mlm_unigram_accuracy`, the same held-out targets predicted from training
frequencies alone (tasks.unigram_baseline), which a model that uses context must beat.

The task's data come from a source passed in (`PretrainingTask(config, source)`): by default
`ConfigSource` (synthetic batches or config.data's files); `ArraySource` serves decoded instance
arrays, for callers without the file readers (benchmarks/gpu_check.py).
"""

from __future__ import annotations

from typing import Any, Iterable

import ml_collections
import numpy as np

from bert_jax import representation
from bert_jax.tasks import unigram_baseline
from bert_jax.tasks.base import Task

# Google's TFRecord feature names -> the model's argument names.
_MODEL_INPUTS = {
    "input_ids": "input_ids",
    "segment_ids": "token_type_ids",
    "input_mask": "attention_mask",
    "position_ids": "position_ids",
    "packed_segment_ids": "packed_segment_ids",
}


OBJECTIVES = ("masked_lm", "next_token")

# The outputs of `pretraining_statistics` (the rest of `predict`'s outputs feed other statistics).
LOSS_STATISTICS = ("mlm_nll_sum", "mlm_correct_sum", "mlm_weight_sum", "nsp_nll", "nsp_correct")
# Rows per batch read to count the unigram baseline's training frequencies.
UNIGRAM_BATCH_SIZE = 64


def next_token_targets(batch, predictions: int = 0, rng=None) -> dict[str, Any]:
    """The batch with masked_lm_* [batch, P] replaced by the next-token targets: position t
    predicts input_ids[t + 1], weighted 1 where that is a real token of t's segment. P = length - 1
    (every position, the paper's LM) unless `predictions` > 0 and `rng` is given: then each row
    predicts `predictions` of its weighted positions drawn uniformly without replacement (fewer,
    weight 0 padded, in a shorter row), an unbiased estimate of the same loss at a fraction of the
    output layer's cost."""
    import jax
    import jax.numpy as jnp

    ids = batch["input_ids"]
    batch_size, length = ids.shape
    real = batch["packed_segment_ids"] if "packed_segment_ids" in batch else batch["input_mask"]
    weights = real[:, 1:] != 0
    if "packed_segment_ids" in batch:
        weights &= real[:, 1:] == real[:, :-1]
    weights = weights.astype(jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(length - 1, dtype=jnp.int32), (batch_size, length - 1))
    targets = ids[:, 1:]
    if predictions and rng is not None and predictions < length - 1:
        # Weighted positions score in [1, 2), the rest in [0, 1): top-k takes real ones first.
        scores = jax.random.uniform(jax.random.fold_in(rng, 0x17F), weights.shape) + weights
        _, positions = jax.lax.top_k(scores, predictions)
        positions = positions.astype(jnp.int32)
        targets = jnp.take_along_axis(targets, positions, axis=1)
        weights = jnp.take_along_axis(weights, positions, axis=1)
    return {**batch, "masked_lm_positions": positions, "masked_lm_ids": targets, "masked_lm_weights": weights}


def model_inputs(batch) -> dict[str, Any]:
    return {arg: batch[name] for name, arg in _MODEL_INPUTS.items() if name in batch}


def pretraining_statistics(outputs, batch, nsp: bool) -> dict[str, Any]:
    """Per-example sums ([batch] float32 arrays) from which losses and accuracies follow."""
    import jax
    import jax.numpy as jnp

    logits = outputs["mlm_logits"].astype(jnp.float32)  # [batch, P, vocab]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    ids = batch["masked_lm_ids"].astype(jnp.int32)  # [batch, P]
    weights = batch["masked_lm_weights"].astype(jnp.float32)  # [batch, P]
    nll = -jnp.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == ids).astype(jnp.float32)
    stats = {
        "mlm_nll_sum": (nll * weights).sum(-1),
        "mlm_correct_sum": (correct * weights).sum(-1),
        "mlm_weight_sum": weights.sum(-1),
    }
    if nsp:
        nsp_logits = outputs["nsp_logits"].astype(jnp.float32)  # [batch, 2]
        labels = batch["next_sentence_labels"].astype(jnp.int32).reshape(-1)
        nsp_log_probs = jax.nn.log_softmax(nsp_logits, axis=-1)
        stats["nsp_nll"] = -jnp.take_along_axis(nsp_log_probs, labels[:, None], axis=-1)[:, 0]
        stats["nsp_correct"] = (jnp.argmax(nsp_logits, axis=-1) == labels).astype(jnp.float32)
    return stats


def losses_from_statistics(stats, example_weight, xp) -> dict[str, Any]:
    """Losses and accuracies from `pretraining_statistics` (xp = jax.numpy or numpy)."""
    w = example_weight
    mlm_weight = (stats["mlm_weight_sum"] * w).sum()
    out = {
        "mlm_loss": (stats["mlm_nll_sum"] * w).sum() / (mlm_weight + 1e-5),
        "mlm_accuracy": (stats["mlm_correct_sum"] * w).sum() / (mlm_weight + 1e-5),
    }
    loss = out["mlm_loss"]
    if "nsp_nll" in stats:
        examples = xp.maximum(w.sum(), 1.0)
        out["nsp_loss"] = (stats["nsp_nll"] * w).sum() / examples
        out["nsp_accuracy"] = (stats["nsp_correct"] * w).sum() / examples
        loss = loss + out["nsp_loss"]
    out["loss"] = loss
    return out


class SyntheticPretrainingIterator:
    """Random-token batches (data_pipelines' SyntheticBatchIterator) cut into process shares.

    Every process draws the same global batch and keeps its own rows, so the data are the same
    for any number of processes (the multi-host test compares against one process)."""

    def __init__(self, data_config, batch_size: int, vocab_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        from data_pipelines.input_pipeline import SyntheticBatchIterator
        if batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
        self._global = SyntheticBatchIterator(
            batch_size, int(data_config.max_seq_length), int(data_config.max_predictions_per_seq), vocab_size,
            seed, packing=bool(data_config.packing), next_sentence_prediction=bool(data_config.next_sentence_prediction))
        per_process = batch_size // process_count
        self.rows = slice(process_index * per_process, (process_index + 1) * per_process)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return {k: v[self.rows] for k, v in next(self._global).items()}

    def get_state(self) -> dict:
        return self._global.get_state()

    def set_state(self, state: dict) -> None:
        self._global.set_state(state)


class ConfigSource:
    """The data config.data and config.task name: synthetic batches, or the input pipeline's files."""

    def __init__(self, config):
        self.config = config

    def train_iterator(self, batch_size, seed, process_index=0, process_count=1):
        if self.config.task.synthetic_data:
            return SyntheticPretrainingIterator(self.config.data, batch_size, int(self.config.model.vocab_size),
                                                seed, process_index, process_count)
        from data_pipelines import input_pipeline
        return input_pipeline.make_pretraining_iterator(
            self.config.data, batch_size, seed, process_index, process_count)

    def eval_batches(self, batch_size, num_batches) -> list[dict]:
        """`num_batches` global held-out batches, the same at every call; [] without held-out data."""
        task = self.config.task
        if task.synthetic_data:
            # A seed no training run uses: the held-out batches differ from every training batch.
            iterator = SyntheticPretrainingIterator(self.config.data, batch_size, int(self.config.model.vocab_size),
                                                    seed=2**31 - 1)
        elif task.eval_input_files:
            from data_pipelines import input_pipeline
            eval_data = ml_collections.ConfigDict(self.config.data.to_dict())
            eval_data.input_files, eval_data.tfds_name = task.eval_input_files, ""
            eval_data.prefetch_batches = 0
            iterator = input_pipeline.make_pretraining_iterator(eval_data, batch_size, seed=0)
        else:
            return []  # no held-out data configured: no evaluation
        batches = [next(iterator) for _ in range(num_batches)]
        if hasattr(iterator, "close"):
            iterator.close()
        return batches


class ArraySource:
    """Decoded instance arrays ({feature: [examples, ...]}) in memory: no file reader needed."""

    def __init__(self, train_arrays: dict[str, np.ndarray], eval_arrays: dict[str, np.ndarray] | None = None):
        self.train_arrays, self.eval_arrays = train_arrays, eval_arrays

    def train_iterator(self, batch_size, seed, process_index=0, process_count=1):
        from bert_jax.tasks import features
        return features.ArrayBatchIterator(self.train_arrays, batch_size, seed, process_index, process_count)

    def eval_batches(self, batch_size, num_batches) -> list[dict]:
        if self.eval_arrays is None:
            return []
        from bert_jax.tasks import features
        return features.padded_batches(self.eval_arrays, batch_size)[:num_batches]


class PretrainingTask(Task):
    higher_is_better = True

    def __init__(self, config, source=None):
        """`source`: where batches come from (`ConfigSource(config)` if None; see `ArraySource`)."""
        self.config = config
        self.source = ConfigSource(config) if source is None else source
        self.nsp = bool(config.data.next_sentence_prediction)
        self.objective = config.task.get("objective", "masked_lm")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"config.task.objective={self.objective!r}: expected one of {OBJECTIVES}")
        self.next_token = self.objective == "next_token"
        unmasked = bool(config.data.get("unmasked", False))
        if self.next_token and not config.model.causal_attention:
            raise ValueError("config.task.objective='next_token' needs config.model.causal_attention=True: "
                             "a bidirectional model sees the token it is asked to predict")
        if self.next_token != unmasked and not config.task.synthetic_data:
            raise ValueError(f"config.task.objective={self.objective!r} with config.data.unmasked={unmasked}: the "
                             "next_token objective reads unmasked rows (unmasked=True) and masked_lm reads "
                             "masked ones (unmasked=False)")
        self.next_token_predictions = config.task.get("next_token_predictions", 0)
        predictions = self.next_token_predictions
        if not isinstance(predictions, int) or isinstance(predictions, bool) or predictions < 0:
            raise ValueError(f"config.task.next_token_predictions={predictions!r}: expected an int >= 0 "
                             "(0 = every position)")
        if predictions and not self.next_token:
            raise ValueError(f"config.task.next_token_predictions={predictions} takes effect only with "
                             "config.task.objective='next_token'; the masked LM predicts its masked positions")
        self.main_metric = "lm_accuracy" if self.next_token else "mlm_accuracy"

    def make_model(self, bert_config):
        from bert_jax.modeling.models import BertForPreTraining
        return BertForPreTraining(bert_config)

    def train_iterator(self, batch_size, seed, process_index=0, process_count=1):
        return self.source.train_iterator(batch_size, seed, process_index, process_count)

    def eval_batches(self, batch_size) -> Iterable[dict]:
        """`num_eval_batches` global batches of held-out data, the same at every evaluation."""
        batches = self.source.eval_batches(batch_size, int(self.config.task.num_eval_batches))
        for batch in batches:
            batch.setdefault("example_weight", np.ones(batch["input_ids"].shape[0], np.float32))
        return batches

    def _targets(self, batch, rng=None):
        """Next-token targets for the LTR objective: sampled per `task.next_token_predictions` when
        training (`rng`), every position when evaluating."""
        if not self.next_token:
            return batch
        return next_token_targets(batch, self.next_token_predictions, rng)

    def _outputs(self, model, params, batch, deterministic, dropout_rng=None):
        rngs = None if deterministic else {"dropout": dropout_rng}
        return model.apply({"params": params}, **model_inputs(batch), deterministic=deterministic,
                           masked_positions=batch["masked_lm_positions"], rngs=rngs)

    def _named(self, metrics: dict) -> dict:
        """mlm_* -> lm_* for the next-token objective (its loss is not a masked-LM loss)."""
        if not self.next_token:
            return metrics
        return {("lm_" + k[4:] if k.startswith("mlm_") else k): v for k, v in metrics.items()}

    def loss_and_metrics(self, model, params, batch, dropout_rng):
        import jax.numpy as jnp
        batch = self._targets(batch, dropout_rng)
        outputs = self._outputs(model, params, batch, deterministic=False, dropout_rng=dropout_rng)
        stats = pretraining_statistics(outputs, batch, self.nsp)
        weight = batch.get("example_weight", jnp.ones(batch["input_ids"].shape[0], jnp.float32))
        metrics = losses_from_statistics(stats, weight, jnp)
        return metrics["loss"], self._named(metrics)

    def predict(self, model, params, batch):
        """Per-example loss sums, the targets (for the unigram baseline) and the rows of the
        representation statistics. The latter need every position's final hidden state, which
        the MLM forward pass does not compute (its last layer reads only the masked rows), so
        the encoder runs a second time, alone."""
        from bert_jax.modeling.models import BertModel

        batch = self._targets(batch)
        outputs = self._outputs(model, params, batch, deterministic=True)
        encoder = BertModel(model.config).apply({"params": params["bert"]}, **model_inputs(batch), deterministic=True)
        return {**pretraining_statistics(outputs, batch, self.nsp),
                "target_ids": batch["masked_lm_ids"], "target_weights": batch["masked_lm_weights"],
                **representation.hidden_state_rows(encoder["sequence_output"], batch["input_mask"])}

    def evaluate(self, predictions, batches) -> dict[str, float]:
        loss_keys = [k for k in predictions[0] if k in LOSS_STATISTICS]
        stats = {k: np.concatenate([p[k] for p in predictions]) for k in loss_keys}
        weight = np.concatenate([b["example_weight"] for b in batches]).astype(np.float64)
        metrics = {k: float(v) for k, v in losses_from_statistics(stats, weight, np).items()}
        metrics.update(representation.statistics(predictions, weight))
        unigram_log_probs = self._unigram_log_probs()
        if unigram_log_probs is not None:
            targets = np.concatenate([p["target_ids"] for p in predictions])
            target_weights = np.concatenate([p["target_weights"] for p in predictions]) * weight[:, None]
            loss, accuracy = unigram_baseline.loss_and_accuracy(unigram_log_probs, targets, target_weights)
            metrics.update({"mlm_unigram_loss": loss, "mlm_unigram_accuracy": accuracy})
        return self._named(metrics)

    def _unigram_log_probs(self) -> np.ndarray | None:
        """Token log-frequencies of the first `task.unigram_baseline_batches` training batches
        (seed 0, the same for every run of this data), counted once; None when that is 0."""
        if not hasattr(self, "_unigram"):
            self._unigram = None
            num_batches = int(self.config.task.get("unigram_baseline_batches", 0))
            if num_batches > 0:
                iterator = self.source.train_iterator(UNIGRAM_BATCH_SIZE, seed=0)
                batches = [next(iterator) for _ in range(num_batches)]
                if hasattr(iterator, "close"):
                    iterator.close()
                counts = unigram_baseline.token_counts(batches, int(self.config.model.vocab_size),
                                                       self._special_ids())
                self._unigram = unigram_baseline.log_probs(counts)
        return self._unigram

    def _special_ids(self) -> frozenset[int]:
        vocab_file = self.config.data.get("vocab_file", "")
        if not vocab_file or self.config.task.synthetic_data:
            return frozenset()
        from data_pipelines.tokenization import load_tokenizer
        return load_tokenizer(vocab_file).special_ids


def base_config(preset: str, seq_len: int, max_predictions: int, synthetic: bool = False):
    """A whole pretraining config: the run defaults, the model preset, the data defaults at this
    length, and the task fields this module reads (experiments/pretrain.py and the benchmarks
    start from it). `synthetic`: random-token batches instead of files."""
    from bert_jax.config import BertConfig
    from bert_jax.run_config import default_config
    from data_pipelines.input_pipeline import default_data_config

    config = default_config()
    config.model = ml_collections.ConfigDict(BertConfig.preset(preset).to_dict())
    config.data = default_data_config()
    config.data.max_seq_length, config.data.max_predictions_per_seq = seq_len, max_predictions
    config.task = ml_collections.ConfigDict(dict(
        name="pretraining",
        objective="masked_lm",  # or "next_token": the left-to-right LM (with model.causal_attention)
        next_token_predictions=0,  # next_token: targets per row in training (0 = every position, the paper's LM)
        synthetic_data=synthetic,
        eval_input_files="",  # held-out ArrayRecord or TFRecord files ("" = no evaluation)
        num_eval_batches=20,
        unigram_baseline_batches=50,  # training batches counted for the context-free baseline
    ))
    return config


def make_pretraining_task(config) -> PretrainingTask:
    return PretrainingTask(config)
