"""Evaluation metrics for the fine-tuning tasks, host side, on numpy arrays and strings.

- Classification: accuracy, binary F1, Matthews correlation (GLUE's CoLA metric).
- Regression: Pearson and Spearman correlation (STS-B).
- SQuAD: exact match and token F1 as the official `evaluate-v1.1.py` / `evaluate-v2.0.py`
  compute them (answer normalisation, max over gold answers, HasAns/NoAns splits and the
  best no-answer threshold of v2.0).
- Sequence labelling: entity-level precision/recall/F1 with the chunking rules of
  conlleval (which seqeval's default mode follows), for BIO, IOB1 and IOBES tags.

Every function takes plain Python/numpy inputs and returns Python floats, so results can go
straight into results.json. Scores are fractions in [0, 1] except the SQuAD ones, which are
percentages as the official scripts print them.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Mapping, Sequence

import numpy as np


# --------------------------------------------------------------------------------------
# Classification and regression
# --------------------------------------------------------------------------------------


def _as_1d(name: str, values) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def _check_same_length(labels: np.ndarray, predictions: np.ndarray) -> None:
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ in shape")
    if labels.size == 0:
        raise ValueError("metrics need at least one example, got none")


def accuracy(labels, predictions) -> float:
    labels, predictions = _as_1d("labels", labels), _as_1d("predictions", predictions)
    _check_same_length(labels, predictions)
    return float(np.mean(labels == predictions))


def f1_binary(labels, predictions, positive=1) -> float:
    """F1 of the positive class (GLUE's MRPC/QQP F1). 0 when there is no true or predicted positive."""
    labels, predictions = _as_1d("labels", labels), _as_1d("predictions", predictions)
    _check_same_length(labels, predictions)
    true_positive = np.sum((predictions == positive) & (labels == positive))
    predicted = np.sum(predictions == positive)
    actual = np.sum(labels == positive)
    if predicted + actual == 0:
        return 0.0
    return float(2.0 * true_positive / (predicted + actual))


def matthews_corrcoef(labels, predictions) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K), the definition sklearn uses.

    0 when either side has a single class (the correlation is undefined there).
    """
    labels, predictions = _as_1d("labels", labels), _as_1d("predictions", predictions)
    _check_same_length(labels, predictions)
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    label_ids, prediction_ids = encoded[: labels.size], encoded[labels.size :]
    confusion = np.zeros((classes.size, classes.size), dtype=np.float64)
    np.add.at(confusion, (label_ids, prediction_ids), 1.0)
    true_per_class = confusion.sum(axis=1)
    predicted_per_class = confusion.sum(axis=0)
    correct = np.trace(confusion)
    total = confusion.sum()
    covariance_true_pred = correct * total - np.dot(true_per_class, predicted_per_class)
    covariance_true = total * total - np.dot(true_per_class, true_per_class)
    covariance_pred = total * total - np.dot(predicted_per_class, predicted_per_class)
    if covariance_true == 0 or covariance_pred == 0:
        return 0.0
    return float(covariance_true_pred / np.sqrt(covariance_true * covariance_pred))


def pearson(x, y) -> float:
    x, y = _as_1d("x", x).astype(np.float64), _as_1d("y", y).astype(np.float64)
    _check_same_length(x, y)
    x_centered, y_centered = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(x_centered**2) * np.sum(y_centered**2))
    if denominator == 0:
        return float("nan")  # constant input: undefined, as in scipy
    return float(np.clip(np.sum(x_centered * y_centered) / denominator, -1.0, 1.0))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks (scipy.stats.rankdata 'average')."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values in sorted order.
    new_run = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    run_id = np.cumsum(new_run) - 1
    run_starts = np.flatnonzero(new_run)
    run_ends = np.concatenate([run_starts[1:], [values.size]])
    mean_rank = (run_starts + run_ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = mean_rank[run_id]
    return ranks


def spearman(x, y) -> float:
    x, y = _as_1d("x", x).astype(np.float64), _as_1d("y", y).astype(np.float64)
    _check_same_length(x, y)
    return pearson(_average_ranks(x), _average_ranks(y))


# --------------------------------------------------------------------------------------
# SQuAD (official evaluate-v1.1.py / evaluate-v2.0.py logic)
# --------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str, version: str = "v2.0") -> float:
    """Token F1 after normalisation.

    v2.0 scores an empty side (no answer) 1 against another empty side and 0 otherwise;
    v1.1 has no such case and scores any pair without a common token 0.
    """
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if version == "v2.0" and (not prediction_tokens or not gold_tokens):
        return float(prediction_tokens == gold_tokens)
    common = collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _gold_texts(answers: Sequence[str]) -> list[str]:
    # v2.0: a question whose gold answers normalise to nothing is unanswerable, gold = [""].
    texts = [a for a in answers if normalize_answer(a)]
    return texts or [""]


def squad_v1_evaluate(gold_answers: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict:
    """evaluate-v1.1.py: mean over questions of max over gold answers, in percent.

    A question without a prediction scores 0 (the official script warns and counts it).
    """
    if not gold_answers:
        raise ValueError("squad_v1_evaluate needs at least one question")
    exact = f1 = 0.0
    for qid, answers in gold_answers.items():
        if not answers:
            raise ValueError(f"question {qid!r} has no gold answer; SQuAD v1.1 questions all have one")
        if qid not in predictions:
            continue
        exact += max(squad_exact_match(predictions[qid], a) for a in answers)
        f1 += max(squad_f1(predictions[qid], a, version="v1.1") for a in answers)
    total = len(gold_answers)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


def _raw_v2_scores(gold_answers, predictions):
    exact, f1 = {}, {}
    for qid, answers in gold_answers.items():
        golds = _gold_texts(answers)
        if qid not in predictions:
            continue
        exact[qid] = max(squad_exact_match(predictions[qid], a) for a in golds)
        f1[qid] = max(squad_f1(predictions[qid], a) for a in golds)
    return exact, f1


def _apply_no_answer_threshold(scores, na_probs, has_answer, threshold):
    return {
        qid: (float(not has_answer[qid]) if na_probs[qid] > threshold else score)
        for qid, score in scores.items()
    }


def _best_threshold(predictions, scores, na_probs, has_answer):
    """evaluate-v2.0.py find_best_thresh: sweep thresholds at the sorted na_probs."""
    num_no_answer = sum(1 for answerable in has_answer.values() if not answerable)
    current = best = float(num_no_answer)
    best_threshold = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            diff = scores[qid]
        elif predictions[qid]:
            diff = -1.0
        else:
            diff = 0.0
        current += diff
        if current > best:
            best = current
            best_threshold = na_probs[qid]
    return 100.0 * best / len(scores), best_threshold


def squad_v2_evaluate(
    gold_answers: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_threshold: float = 1.0,
) -> dict:
    """evaluate-v2.0.py: exact/f1 overall and on HasAns/NoAns, plus best_exact/best_f1.

    `predictions[qid] == ""` means "no answer". `na_probs` (the model's no-answer
    probability per question, default 0) gives the best-threshold figures; the headline
    exact/f1 count a question as "no answer" when its na_prob exceeds `na_prob_threshold`.
    """
    if not gold_answers:
        raise ValueError("squad_v2_evaluate needs at least one question")
    missing = [qid for qid in gold_answers if qid not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} questions have no prediction, e.g. {missing[:3]}")
    if na_probs is None:
        na_probs = {qid: 0.0 for qid in predictions}
    # As the official script: answerable = the question lists any gold answer.
    has_answer = {qid: bool(answers) for qid, answers in gold_answers.items()}
    exact_raw, f1_raw = _raw_v2_scores(gold_answers, predictions)
    exact = _apply_no_answer_threshold(exact_raw, na_probs, has_answer, na_prob_threshold)
    f1 = _apply_no_answer_threshold(f1_raw, na_probs, has_answer, na_prob_threshold)

    def mean(scores, qids):
        return 100.0 * sum(scores[q] for q in qids) / len(qids)

    qids = list(gold_answers)
    result = {"exact": mean(exact, qids), "f1": mean(f1, qids), "total": len(qids)}
    has_ids = [q for q in qids if has_answer[q]]
    no_ids = [q for q in qids if not has_answer[q]]
    if has_ids:
        result.update(HasAns_exact=mean(exact, has_ids), HasAns_f1=mean(f1, has_ids), HasAns_total=len(has_ids))
    if no_ids:
        result.update(NoAns_exact=mean(exact, no_ids), NoAns_f1=mean(f1, no_ids), NoAns_total=len(no_ids))
    best_exact, best_exact_threshold = _best_threshold(predictions, exact_raw, na_probs, has_answer)
    best_f1, best_f1_threshold = _best_threshold(predictions, f1_raw, na_probs, has_answer)
    result.update(
        best_exact=best_exact,
        best_exact_thresh=best_exact_threshold,
        best_f1=best_f1,
        best_f1_thresh=best_f1_threshold,
    )
    return result


# --------------------------------------------------------------------------------------
# Entity-level precision / recall / F1 (conlleval)
# --------------------------------------------------------------------------------------

_TAG_SCHEMES = ("BIO", "IOB1", "IOBES")


def _split_tag(tag: str) -> tuple[str, str]:
    if tag in ("O", ""):
        return "O", ""
    if len(tag) < 2 or tag[1] not in "-_" or tag[0] not in "BIESO":
        raise ValueError(f"tag {tag!r} is not O or <B|I|E|S>-<type>")
    return tag[0], tag[2:]


def _chunk_ends(prev_prefix, prev_type, prefix, type_) -> bool:
    # conlleval endOfChunk, applied between the previous and the current tag.
    if prev_prefix in ("E", "S"):
        return True
    if prev_prefix == "B" and prefix in ("B", "S", "O"):
        return True
    if prev_prefix == "I" and prefix in ("B", "S", "O"):
        return True
    return prev_prefix != "O" and prev_type != type_


def _chunk_starts(prev_prefix, prev_type, prefix, type_) -> bool:
    # conlleval startOfChunk.
    if prefix in ("B", "S"):
        return True
    if prev_prefix in ("E", "S", "O") and prefix in ("E", "I"):
        return True
    return prefix != "O" and prev_type != type_


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Chunks as (type, first, last) token indices, by conlleval's rules.

    One rule set covers BIO (IOB2), IOB1 and IOBES: an I- after O or after another type
    opens a chunk (IOB1, and how conlleval repairs invalid BIO), a B- always opens one.
    """
    entities = []
    prev_prefix, prev_type, start = "O", "", None
    for index, tag in enumerate(list(tags) + ["O"]):
        prefix, type_ = _split_tag(tag)
        if start is not None and _chunk_ends(prev_prefix, prev_type, prefix, type_):
            entities.append((prev_type, start, index - 1))
            start = None
        if _chunk_starts(prev_prefix, prev_type, prefix, type_) and prefix != "O":
            start = index
        prev_prefix, prev_type = prefix, type_
    return entities


def entity_scores(gold_sequences: Iterable[Sequence[str]], predicted_sequences: Iterable[Sequence[str]]) -> dict:
    """Micro-averaged entity precision/recall/F1 plus per-type F1, as conlleval counts them.

    An entity is correct when its type and exact span match. Sentences are scored
    separately, so chunks never cross sentence boundaries.
    """
    gold_sequences, predicted_sequences = list(gold_sequences), list(predicted_sequences)
    if len(gold_sequences) != len(predicted_sequences):
        raise ValueError(f"{len(gold_sequences)} gold sentences but {len(predicted_sequences)} predicted")
    correct, gold_count, predicted_count = collections.Counter(), collections.Counter(), collections.Counter()
    for index, (gold, predicted) in enumerate(zip(gold_sequences, predicted_sequences)):
        if len(gold) != len(predicted):
            raise ValueError(f"sentence {index}: {len(gold)} gold tags but {len(predicted)} predicted")
        gold_entities = set(get_entities(gold))
        predicted_entities = set(get_entities(predicted))
        for entity_type, _, _ in gold_entities:
            gold_count[entity_type] += 1
        for entity_type, _, _ in predicted_entities:
            predicted_count[entity_type] += 1
        for entity_type, _, _ in gold_entities & predicted_entities:
            correct[entity_type] += 1

    def prf(num_correct, num_predicted, num_gold):
        precision = num_correct / num_predicted if num_predicted else 0.0
        recall = num_correct / num_gold if num_gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1

    precision, recall, f1 = prf(sum(correct.values()), sum(predicted_count.values()), sum(gold_count.values()))
    result = {"precision": precision, "recall": recall, "f1": f1}
    for entity_type in sorted(set(gold_count) | set(predicted_count)):
        result[f"f1_{entity_type}"] = prf(correct[entity_type], predicted_count[entity_type], gold_count[entity_type])[2]
    return result
