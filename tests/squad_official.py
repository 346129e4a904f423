"""The official SQuAD evaluation (evaluate-v1.1.py and evaluate-v2.0.py), written here from its
published definition, independently of bert_jax.metrics, to check the task's figures and its
prediction files against.

What the official scripts define (Rajpurkar et al. 2016, 2018; the scripts shipped with the
datasets):
- Normalisation: lower case; remove every ASCII punctuation character; replace the words
  "a", "an", "the" (between word boundaries) by a space; split on whitespace and join with single spaces.
- Exact match: the normalised strings are equal.
- F1: bag-of-tokens F1 of the normalised token lists. v2.0: when either list is empty the
  score is 1 if both are empty, else 0. v1.1 has no such rule (no common token -> 0).
- v1.1: per question the max over its gold answers; the mean over all questions in the
  dataset, x100; a question without a prediction scores 0.
- v2.0: gold answers are the answer texts that normalise to something non-empty, or [""]
  when none does; a question "has an answer" when its `answers` list is non-empty. With a
  no-answer probability file, a question whose probability exceeds 1.0 (the default
  --na-prob-thresh) is scored as a "no answer" prediction. best_exact / best_f1 sweep a
  threshold over the sorted no-answer probabilities: start from "every question answered
  null" (score = number of unanswerable questions); answering a question adds its raw score
  when it has an answer, and -1 (a non-empty prediction) or 0 (an empty one) when it has none;
  the best running score and the probability at which it was reached are reported.
"""

from __future__ import annotations

import collections
import re
import string


_PUNCT = set(string.punctuation)
_ARTICLE = re.compile(r"\b(?:a|an|the)\b")  # a word-boundary match, as the scripts define it


def _normalise(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLE.sub(" ", text).split())


def _tokens(text: str) -> list[str]:
    return _normalise(text).split() if text else []


def exact(prediction: str, gold: str) -> int:
    return int(_normalise(prediction) == _normalise(gold))


def f1(prediction: str, gold: str, v2: bool) -> float:
    p, g = _tokens(prediction), _tokens(gold)
    if v2 and (not p or not g):
        return float(p == g)
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def _questions(dataset: dict):
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            yield from paragraph["qas"]


def evaluate_v1(dataset: dict, predictions: dict[str, str]) -> dict:
    em = total_f1 = 0.0
    count = 0
    for qa in _questions(dataset):
        count += 1
        if qa["id"] not in predictions:
            continue
        golds = [a["text"] for a in qa["answers"]]
        pred = predictions[qa["id"]]
        em += max(exact(pred, g) for g in golds)
        total_f1 += max(f1(pred, g, v2=False) for g in golds)
    return {"exact_match": 100.0 * em / count, "f1": 100.0 * total_f1 / count}


def evaluate_v2(dataset: dict, predictions: dict[str, str], na_probs: dict[str, float] | None = None,
                na_prob_thresh: float = 1.0) -> dict:
    qas = list(_questions(dataset))
    if na_probs is None:
        na_probs = {qa["id"]: 0.0 for qa in qas}
    has_ans = {qa["id"]: bool(qa["answers"]) for qa in qas}
    raw_em, raw_f1 = {}, {}
    for qa in qas:
        golds = [a["text"] for a in qa["answers"] if _normalise(a["text"])] or [""]
        pred = predictions[qa["id"]]
        raw_em[qa["id"]] = max(exact(pred, g) for g in golds)
        raw_f1[qa["id"]] = max(f1(pred, g, v2=True) for g in golds)

    def thresholded(raw):
        return {q: (float(not has_ans[q]) if na_probs[q] > na_prob_thresh else s) for q, s in raw.items()}

    em, f = thresholded(raw_em), thresholded(raw_f1)
    out = {"exact": 100.0 * sum(em.values()) / len(em), "f1": 100.0 * sum(f.values()) / len(f), "total": len(em)}
    for name, want in (("HasAns", True), ("NoAns", False)):
        ids = [q for q in em if has_ans[q] == want]
        if ids:
            out[f"{name}_exact"] = 100.0 * sum(em[q] for q in ids) / len(ids)
            out[f"{name}_f1"] = 100.0 * sum(f[q] for q in ids) / len(ids)
            out[f"{name}_total"] = len(ids)

    def best(raw):
        score = best_score = float(sum(1 for q in raw if not has_ans[q]))
        best_thresh = 0.0
        for q in sorted(na_probs, key=lambda k: na_probs[k]):
            if q not in raw:
                continue
            score += raw[q] if has_ans[q] else (-1.0 if predictions[q] else 0.0)
            if score > best_score:
                best_score, best_thresh = score, na_probs[q]
        return 100.0 * best_score / len(raw), best_thresh

    out["best_exact"], out["best_exact_thresh"] = best(raw_em)
    out["best_f1"], out["best_f1_thresh"] = best(raw_f1)
    return out
