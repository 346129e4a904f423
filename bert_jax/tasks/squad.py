"""SQuAD v1.1 and v2.0: span extraction from TFDS `squad/v1.1`, `squad/v2.0` or the official JSON.

Features follow google-research/bert `run_squad.py`:
- `[CLS] question [SEP] context-window [SEP]`, question truncated to `max_query_length`
  sub-tokens (counted in the log);
- a context longer than `max_seq_length - len(question) - 3` sub-tokens is covered by
  windows that start every `doc_stride` sub-tokens (the last one ends at the context's end);
- each context token is scored only in the window where it has the most context on both
  sides (`min(left, right) + 0.01 * window_length`);
- training: the target is the sub-token span of the first gold answer, or `[CLS]` (0, 0)
  when the window does not hold it or the question has no answer (v2.0).

One difference from run_squad.py, on purpose: sub-tokens carry character offsets into the
context (the tokenizer's `tokenize_with_offsets`), so the answer span is found from the gold
character span and the predicted text is cut straight out of the original context. That
replaces run_squad.py's whitespace tokens, `_improve_answer_span` and `get_final_text`
(a heuristic alignment of lower-cased text back to the original) with an exact mapping.

Post-processing: the `n_best_size` best starts and ends of each window, spans inside the
context, starting at a max-context token, `end >= start` and at most `max_answer_length`
tokens; ranked by `start_logit + end_logit` over all windows of the question. v2.0 compares
the best span with the null score (`[CLS]` start + end, minimum over windows) and answers
"" when `null - best > null_score_diff_threshold`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import pathlib
from typing import Sequence

import numpy as np
from etils import epath

from bert_jax import metrics as metrics_lib
from bert_jax.tasks import features as features_lib
from bert_jax.tasks.base import Task

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SquadExample:
    qid: str
    question: str
    context: str
    answers: tuple[str, ...]  # gold texts; empty for an unanswerable (v2.0) question
    answer_starts: tuple[int, ...]  # character offsets into `context`
    is_impossible: bool = False


# ---- reading -----------------------------------------------------------------------------------


def read_squad_json(path: str | pathlib.Path) -> list[SquadExample]:
    """The official SQuAD JSON (v1.1 or v2.0: `is_impossible` is read when present)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SQuAD file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if "data" not in data:
        raise ValueError(f"{path}: not a SQuAD file (no top-level 'data' list)")
    examples = []
    for a, article in enumerate(data["data"]):
        for p, paragraph in enumerate(article["paragraphs"]):
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                where = f"{path}: data[{a}].paragraphs[{p}] question {qa.get('id')!r}"
                answers = qa.get("answers", [])
                impossible = bool(qa.get("is_impossible", False))
                if impossible and answers:
                    raise ValueError(f"{where}: is_impossible but lists answers")
                for answer in answers:
                    if not isinstance(answer.get("answer_start"), int) or "text" not in answer:
                        raise ValueError(f"{where}: an answer needs 'text' and an integer 'answer_start', got {answer}")
                examples.append(
                    SquadExample(
                        qid=qa["id"],
                        question=qa["question"],
                        context=context,
                        answers=tuple(x["text"] for x in answers),
                        answer_starts=tuple(x["answer_start"] for x in answers),
                        is_impossible=impossible,
                    )
                )
    return examples


def read_tfds(version: str, split: str, data_dir: str | None = None) -> list[SquadExample]:
    """TFDS `squad/v1.1` or `squad/v2.0`; `split` is "train" or "validation"."""
    import tensorflow_datasets as tfds

    dataset = tfds.load(f"squad/{version}", split=split, data_dir=data_dir)
    examples = []
    for row in tfds.as_numpy(dataset):
        answers = row["answers"]
        examples.append(
            SquadExample(
                qid=row["id"].decode("utf-8"),
                question=row["question"].decode("utf-8"),
                context=row["context"].decode("utf-8"),
                answers=tuple(t.decode("utf-8") for t in answers["text"]),
                answer_starts=tuple(int(s) for s in answers["answer_start"]),
                is_impossible=bool(row.get("is_impossible", False)),
            )
        )
    return examples


# ---- features ----------------------------------------------------------------------------------


@dataclasses.dataclass
class SquadFeatures:
    """Arrays [num_features, max_seq_length] plus host-side maps for post-processing."""

    arrays: dict[str, np.ndarray]  # input_ids, token_type_ids, attention_mask, feature_index (+ targets)
    example_index: np.ndarray  # [num_features] which example a window belongs to
    char_spans: np.ndarray  # [num_features, length, 2] context characters of each position; -1 outside the context
    max_context: np.ndarray  # [num_features, length] bool: position scored in this window
    num_truncated_questions: int = 0
    num_skipped: int = 0  # training examples whose gold span is not in the context


def _answer_token_span(offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int] | None:
    """First and last sub-token overlapping characters [start_char, end_char), or None."""
    overlapping = np.flatnonzero((offsets[:, 1] > start_char) & (offsets[:, 0] < end_char))
    if overlapping.size == 0:
        return None
    return int(overlapping[0]), int(overlapping[-1])


def _doc_windows(num_tokens: int, max_tokens: int, stride: int) -> list[tuple[int, int]]:
    windows, start = [], 0
    while True:
        length = min(num_tokens - start, max_tokens)
        windows.append((start, length))
        if start + length >= num_tokens:
            return windows
        start += min(length, stride)


def _is_max_context(windows, window_index: int, position: int) -> bool:
    best_score, best_window = None, None
    for index, (start, length) in enumerate(windows):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_window = score, index
    return best_window == window_index


def build_features(
    tokenizer,
    examples: Sequence[SquadExample],
    *,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    is_training: bool,
) -> SquadFeatures:
    if max_seq_length - max_query_length - 3 <= 0:
        raise ValueError(f"max_seq_length {max_seq_length} leaves no room for context after max_query_length {max_query_length}")
    question_ids = tokenizer.encode_ids_batch([e.question for e in examples]) if examples else []
    context_spans = {}  # SQuAD asks several questions about each paragraph: tokenise it once

    rows = collections.defaultdict(list)
    example_index, char_spans, max_context = [], [], []
    num_truncated = num_skipped = 0
    for ex_index, (example, q_ids) in enumerate(zip(examples, question_ids)):
        if len(q_ids) > max_query_length:
            q_ids = q_ids[:max_query_length]
            num_truncated += 1
        if example.context not in context_spans:
            context_spans[example.context] = tokenizer.tokenize_with_offsets(example.context)
        doc_ids = context_spans[example.context].ids
        doc_offsets = context_spans[example.context].offsets
        answer_span = None
        if is_training and not example.is_impossible:
            if not example.answers:
                raise ValueError(f"question {example.qid!r} has no answer and is not marked is_impossible")
            start_char = example.answer_starts[0]
            end_char = start_char + len(example.answers[0])
            answer_span = _answer_token_span(doc_offsets, start_char, end_char)
            if example.context[start_char:end_char] != example.answers[0] or answer_span is None:
                num_skipped += 1  # as run_squad.py: a gold span that is not in the context cannot be learnt
                continue
        max_doc_tokens = max_seq_length - len(q_ids) - 3
        windows = _doc_windows(len(doc_ids), max_doc_tokens, doc_stride)
        for window_index, (start, length) in enumerate(windows):
            doc_offset = len(q_ids) + 2  # position of the first context token
            ids = np.full(max_seq_length, tokenizer.pad_id, np.int32)
            types = np.zeros(max_seq_length, np.int32)
            mask = np.zeros(max_seq_length, np.int32)
            spans = np.full((max_seq_length, 2), -1, np.int32)
            scored = np.zeros(max_seq_length, bool)
            sequence = [tokenizer.cls_id, *q_ids, tokenizer.sep_id, *doc_ids[start : start + length], tokenizer.sep_id]
            ids[: len(sequence)] = sequence
            types[doc_offset : len(sequence)] = 1
            mask[: len(sequence)] = 1
            spans[doc_offset : doc_offset + length] = doc_offsets[start : start + length]
            for i in range(length):
                scored[doc_offset + i] = _is_max_context(windows, window_index, start + i)
            rows["input_ids"].append(ids)
            rows["token_type_ids"].append(types)
            rows["attention_mask"].append(mask)
            if is_training:
                target = (0, 0)
                if answer_span is not None and start <= answer_span[0] and answer_span[1] < start + length:
                    target = (answer_span[0] - start + doc_offset, answer_span[1] - start + doc_offset)
                rows["start_positions"].append(target[0])
                rows["end_positions"].append(target[1])
            example_index.append(ex_index)
            char_spans.append(spans)
            max_context.append(scored)
    if not example_index:
        raise ValueError("no SQuAD features: every example was skipped")
    arrays = {k: np.asarray(v, dtype=np.int32) for k, v in rows.items()}
    arrays["feature_index"] = np.arange(len(example_index), dtype=np.int32)
    log.info(
        "SQuAD %s: %d examples -> %d windows (max_seq_length=%d, doc_stride=%d); %d questions truncated to %d "
        "sub-tokens; %d training examples skipped (gold span not in the context)",
        "train" if is_training else "eval", len(examples), len(example_index), max_seq_length, doc_stride,
        num_truncated, max_query_length, num_skipped,
    )
    return SquadFeatures(
        arrays=arrays,
        example_index=np.asarray(example_index, np.int32),
        char_spans=np.stack(char_spans),
        max_context=np.stack(max_context),
        num_truncated_questions=num_truncated,
        num_skipped=num_skipped,
    )


# ---- post-processing ---------------------------------------------------------------------------


@dataclasses.dataclass
class QuestionPrediction:
    text: str  # "" = no answer (v2.0)
    best_span_text: str  # best non-null span, whatever the threshold says
    score_diff: float  # null score - best span score (v2.0's "null odds")
    nbest: list[dict]


def postprocess(
    examples: Sequence[SquadExample],
    features: SquadFeatures,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> dict[str, QuestionPrediction]:
    """start/end_logits: [num_features, length], in feature order."""
    by_example = collections.defaultdict(list)
    for feature_index, ex_index in enumerate(features.example_index):
        by_example[int(ex_index)].append(feature_index)
    results = {}
    for ex_index, example in enumerate(examples):
        candidates = []  # (score, start_char, end_char, start_logit, end_logit)
        null_score = None
        for f in by_example.get(ex_index, []):
            starts, ends = start_logits[f], end_logits[f]
            spans, scored = features.char_spans[f], features.max_context[f]
            feature_null = float(starts[0] + ends[0])
            if null_score is None or feature_null < null_score:
                null_score = feature_null
            top_starts = np.argsort(-starts, kind="stable")[:n_best_size]
            top_ends = np.argsort(-ends, kind="stable")[:n_best_size]
            for s in top_starts:
                if spans[s, 0] < 0 or not scored[s]:
                    continue
                for e in top_ends:
                    if spans[e, 0] < 0 or e < s or e - s + 1 > max_answer_length:
                        continue
                    candidates.append((float(starts[s] + ends[e]), int(spans[s, 0]), int(spans[e, 1]), float(starts[s]), float(ends[e])))
        candidates.sort(key=lambda c: -c[0])
        nbest, seen = [], set()
        for score, start_char, end_char, start_logit, end_logit in candidates:
            text = example.context[start_char:end_char]
            if text in seen:
                continue
            seen.add(text)
            nbest.append({"text": text, "start_logit": start_logit, "end_logit": end_logit, "score": score})
            if len(nbest) == n_best_size:
                break
        best_text = nbest[0]["text"] if nbest else ""
        best_score = nbest[0]["score"] if nbest else float("-inf")
        score_diff = (null_score if null_score is not None else 0.0) - best_score
        if version_2_with_negative:
            nbest.append({"text": "", "start_logit": None, "end_logit": None, "score": null_score})
            nbest.sort(key=lambda c: -c["score"])
            nbest = nbest[:n_best_size]
            text = "" if (not np.isfinite(best_score) or score_diff > null_score_diff_threshold) else best_text
        else:
            text = best_text
        scores = np.asarray([c["score"] for c in nbest], dtype=np.float64)
        probabilities = np.exp(scores - scores.max()) if scores.size else scores
        probabilities = probabilities / probabilities.sum() if scores.size else probabilities
        for c, prob in zip(nbest, probabilities):
            c["probability"] = float(prob)
        results[example.qid] = QuestionPrediction(text=text, best_span_text=best_text, score_diff=float(score_diff), nbest=nbest)
    return results


def evaluate_predictions(examples: Sequence[SquadExample], predictions: dict[str, QuestionPrediction], version_2: bool) -> dict:
    """The official metrics of the files `SquadTask.write_predictions` writes.

    v1.1: `evaluate-v1.1.py dev.json predictions.json`.
    v2.0: exact, f1 and the HasAns_/NoAns_ figures are `evaluate-v2.0.py dev.json
    predictions.json` (the answers as written, after null_score_diff_threshold);
    best_exact, best_f1 and their `_thresh` are what the same script adds with
    `--na-prob-file null_odds.json` (its sweep over the written answers: it cannot look above
    the threshold they were cut at; with that flag the script also scores every question whose
    null odds exceed 1.0 as "no answer" in its headline figures, which equal ours whenever
    null_score_diff_threshold <= 1). `span_best_exact`, `span_best_f1` and their `_thresh` run
    the same sweep over every question's best non-null span (as if written with an infinite
    threshold), so `span_best_f1_thresh` is the null_score_diff_threshold that maximises F1.
    """
    gold = {e.qid: list(e.answers) for e in examples}
    answers = {qid: p.text for qid, p in predictions.items()}
    if not version_2:
        return metrics_lib.squad_v1_evaluate(gold, answers)
    null_odds = {qid: p.score_diff for qid, p in predictions.items()}
    result = metrics_lib.squad_v2_evaluate(gold, answers)
    best_keys = ("best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh")
    with_odds = metrics_lib.squad_v2_evaluate(gold, answers, na_probs=null_odds)
    result.update({key: with_odds[key] for key in best_keys})
    swept = metrics_lib.squad_v2_evaluate(
        gold, {qid: p.best_span_text for qid, p in predictions.items()}, na_probs=null_odds)
    result.update({f"span_{key}": swept[key] for key in best_keys})
    return result


# ---- the task ----------------------------------------------------------------------------------


class SquadTask(features_lib.ArrayFeaturesTask, Task):
    higher_is_better = True

    def __init__(
        self,
        *,
        tokenizer,
        train_examples: Sequence[SquadExample],
        eval_examples: Sequence[SquadExample],
        version_2_with_negative: bool = False,
        max_seq_length: int = 384,
        doc_stride: int = 128,
        max_query_length: int = 64,
        n_best_size: int = 20,
        max_answer_length: int = 30,
        null_score_diff_threshold: float = 0.0,
        head=None,
    ):
        self.tokenizer = tokenizer
        self.head = features_lib.HeadOptions() if head is None else head  # on the encoder: BERT's dense(2)
        self.train_examples = list(train_examples)
        self.eval_examples = list(eval_examples)
        self.version_2 = version_2_with_negative
        self.main_metric = "f1"
        self.feature_options = dict(max_seq_length=max_seq_length, doc_stride=doc_stride, max_query_length=max_query_length)
        self.postprocess_options = dict(
            n_best_size=n_best_size,
            max_answer_length=max_answer_length,
            version_2_with_negative=version_2_with_negative,
            null_score_diff_threshold=null_score_diff_threshold,
        )
        self._train_features = None
        self._eval_features = None

    @property
    def train_features(self) -> SquadFeatures:
        if self._train_features is None:
            self._train_features = build_features(self.tokenizer, self.train_examples, is_training=True, **self.feature_options)
        return self._train_features

    @property
    def eval_features(self) -> SquadFeatures:
        if self._eval_features is None:
            self._eval_features = build_features(self.tokenizer, self.eval_examples, is_training=False, **self.feature_options)
        return self._eval_features

    @property
    def num_train_examples(self) -> int:
        return int(self.train_features.arrays["input_ids"].shape[0])  # windows, as run_squad.py counts steps

    def make_model(self, bert_config):
        features_lib.check_vocab(self.tokenizer, bert_config)
        return self.head.span_model(bert_config)

    def _logits(self, model, params, batch, deterministic, dropout_rng=None):
        outputs = features_lib.apply_model(model, params, batch, deterministic, dropout_rng)
        return outputs["start_logits"].astype("float32"), outputs["end_logits"].astype("float32")  # [batch, length]

    def loss_and_metrics(self, model, params, batch, dropout_rng):
        import jax.numpy as jnp
        import optax

        start_logits, end_logits = self._logits(model, params, batch, False, dropout_rng)
        weights = batch["example_weight"]
        denominator = jnp.maximum(weights.sum(), 1.0)
        start_loss = optax.softmax_cross_entropy_with_integer_labels(start_logits, batch["start_positions"])
        end_loss = optax.softmax_cross_entropy_with_integer_labels(end_logits, batch["end_positions"])
        loss = (((start_loss + end_loss) / 2) * weights).sum() / denominator
        return loss, {"loss": loss}

    def predict(self, model, params, batch):
        start_logits, end_logits = self._logits(model, params, batch, True)
        return {"start_logits": start_logits, "end_logits": end_logits}

    def _question_predictions(self, predictions, batches) -> dict[str, QuestionPrediction]:
        features = self.eval_features
        length = features.char_spans.shape[1]
        start_logits = np.zeros((features.example_index.size, length), np.float32)
        end_logits = np.zeros_like(start_logits)
        for p, batch in zip(predictions, batches):
            real = np.asarray(batch["example_weight"]) > 0
            rows = np.asarray(batch["feature_index"])[real]
            start_logits[rows] = np.asarray(p["start_logits"])[real]
            end_logits[rows] = np.asarray(p["end_logits"])[real]
        return postprocess(self.eval_examples, features, start_logits, end_logits, **self.postprocess_options)

    def evaluate(self, predictions, batches) -> dict:
        answers = self._question_predictions(predictions, list(batches))
        return {k: float(v) for k, v in evaluate_predictions(self.eval_examples, answers, self.version_2).items()}

    def write_predictions(self, predictions, batches, path) -> None:
        """Google run_squad.py's files, in the directory of `path`: `predictions.json` ({qid:
        answer text, "" for no answer}) as the official evaluate-v1.1.py / evaluate-v2.0.py read
        it, `nbest_predictions.json`, and for v2.0 `null_odds.json` ({qid: null score - best
        span score}, the v2.0 script's --na-prob-file). A `path` ending in .json names the
        predictions file itself."""
        path = epath.Path(path)  # local or in a gs:// workdir
        if path.suffix != ".json":
            path = path.with_name("predictions.json")
        answers = self._question_predictions(predictions, list(batches))
        path.write_text(json.dumps({q: p.text for q, p in answers.items()}, indent=1), encoding="utf-8")
        nbest_path = path.with_name("nbest_predictions.json")
        nbest_path.write_text(json.dumps({q: p.nbest for q, p in answers.items()}), encoding="utf-8")
        if self.version_2:
            odds_path = path.with_name("null_odds.json")
            odds_path.write_text(json.dumps({q: p.score_diff for q, p in answers.items()}, indent=1), encoding="utf-8")


def from_config(config) -> SquadTask:
    """The task of experiments/finetune_squad.py (registry name "squad")."""
    from bert_jax.tasks import finetuning

    head = finetuning.head_options(config)  # bad head fields fail before any file is read
    tokenizer = finetuning.load_tokenizer(config)
    t = config.task
    if t.version not in ("v1.1", "v2.0"):
        raise ValueError(f"config.task.version: expected v1.1 or v2.0, found {t.version!r}")
    if bool(config.train_file) != bool(config.eval_file):
        raise ValueError("give both train_file and eval_file (official SQuAD JSON), or neither for TFDS")
    if config.train_file:
        train = read_squad_json(finetuning.data_path(config.train_file, "train_file"))
        evaluation = read_squad_json(finetuning.data_path(config.eval_file, "eval_file"))
    else:
        train = read_tfds(t.version, "train", t.tfds_data_dir or None)
        evaluation = read_tfds(t.version, "validation", t.tfds_data_dir or None)
    task = SquadTask(
        tokenizer=tokenizer,
        train_examples=train,
        eval_examples=evaluation,
        version_2_with_negative=t.version == "v2.0",
        max_seq_length=int(config.max_seq_length),
        doc_stride=int(t.doc_stride),
        max_query_length=int(t.max_query_length),
        n_best_size=int(t.n_best_size),
        max_answer_length=int(t.max_answer_length),
        null_score_diff_threshold=float(t.null_score_diff_threshold),
        head=head,
    )
    finetuning.resolve(config, tokenizer, task.num_train_examples)
    return task
