"""Metrics against outside references: sklearn, scipy, seqeval and hand-computed SQuAD cases."""

import numpy as np
import pytest
import scipy.stats
import seqeval.metrics
import sklearn.metrics

from bert_jax import metrics


def _random_label_pairs(num_classes, size, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size)
    # Predictions correlated with the labels, so the scores are away from 0.
    predictions = np.where(rng.random(size) < 0.7, labels, rng.integers(0, num_classes, size))
    return labels, predictions


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_classification_metrics_match_sklearn(seed, num_classes):
    labels, predictions = _random_label_pairs(num_classes, 97, seed)
    assert metrics.accuracy(labels, predictions) == pytest.approx(sklearn.metrics.accuracy_score(labels, predictions))
    assert metrics.matthews_corrcoef(labels, predictions) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(labels, predictions), abs=1e-12
    )
    if num_classes == 2:
        assert metrics.f1_binary(labels, predictions) == pytest.approx(sklearn.metrics.f1_score(labels, predictions))


@pytest.mark.parametrize(
    "labels,predictions",
    [
        ([1, 1, 1, 1], [1, 1, 1, 1]),  # one class on both sides: MCC undefined -> 0
        ([0, 1, 0, 1], [1, 1, 1, 1]),  # constant prediction
        ([0, 0, 0, 0], [0, 0, 0, 0]),  # no positive anywhere: F1 = 0
        ([0, 1, 0, 1], [1, 0, 1, 0]),  # all wrong: MCC = -1
        ([1], [1]),
    ],
)
def test_classification_edge_cases_match_sklearn(labels, predictions):
    assert metrics.accuracy(labels, predictions) == sklearn.metrics.accuracy_score(labels, predictions)
    assert metrics.matthews_corrcoef(labels, predictions) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(labels, predictions)
    )
    assert metrics.f1_binary(labels, predictions) == pytest.approx(
        sklearn.metrics.f1_score(labels, predictions, zero_division=0.0)
    )


def test_classification_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="at least one"):
        metrics.accuracy([], [])


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    gold = rng.uniform(0, 5, 200)
    predicted = gold + rng.normal(0, 1.5, 200)
    assert metrics.pearson(predicted, gold) == pytest.approx(scipy.stats.pearsonr(predicted, gold)[0], abs=1e-12)
    assert metrics.spearman(predicted, gold) == pytest.approx(scipy.stats.spearmanr(predicted, gold)[0], abs=1e-12)


def test_spearman_with_ties_matches_scipy():
    # STS-B gold scores are on a coarse grid, so ties are the rule.
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 6, 300).astype(float)
    predicted = np.round(gold + rng.normal(0, 1, 300))
    assert metrics.spearman(predicted, gold) == pytest.approx(scipy.stats.spearmanr(predicted, gold)[0], abs=1e-12)


# ---- SQuAD: hand-computed against the published algorithm (evaluate-v1.1.py / v2.0.py) ----


@pytest.mark.parametrize(
    "text,normalised",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  a  cat, AN owl and the dog. ", "cat owl and dog"),
        ("theatre", "theatre"),  # articles only as whole words
        ("Saint-Denis", "saintdenis"),  # punctuation removed, not replaced by a space
    ],
)
def test_normalize_answer(text, normalised):
    assert metrics.normalize_answer(text) == normalised


def test_squad_f1_hand_computed():
    # pred tokens: [denver, broncos, won]; gold: [broncos]: P = 1/3, R = 1 -> F1 = 0.5
    assert metrics.squad_f1("Denver Broncos won", "the Broncos") == pytest.approx(0.5)
    # repeated tokens count with multiplicity: pred [a1 a1 b], gold [a1 b b] -> common 2, P=R=2/3
    assert metrics.squad_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert metrics.squad_f1("", "") == 1.0  # v2.0: no answer vs no answer
    assert metrics.squad_f1("something", "") == 0.0
    assert metrics.squad_f1("", "", version="v1.1") == 0.0


def test_squad_v1_evaluate_hand_computed():
    gold = {"q1": ["Denver Broncos", "the Broncos"], "q2": ["1858"], "q3": ["Saint Bernadette Soubirous"]}
    predictions = {"q1": "Broncos", "q2": "in 1858", "q3": "Bernadette"}
    # q1: EM 1 vs "the Broncos"; q2: EM 0, F1 = 2*(1/2*1)/(1.5) = 2/3; q3: P 1, R 1/3 -> F1 0.5
    result = metrics.squad_v1_evaluate(gold, predictions)
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0.5) / 3)


def test_squad_v1_missing_prediction_scores_zero():
    result = metrics.squad_v1_evaluate({"q1": ["a b"], "q2": ["c"]}, {"q1": "a b"})
    assert result == {"exact_match": 50.0, "f1": 50.0}


def test_squad_v2_evaluate_hand_computed():
    gold = {"a": ["Paris"], "b": ["blue sky"], "c": [], "d": []}
    predictions = {"a": "Paris", "b": "sky", "c": "", "d": "Rome"}
    na_probs = {"a": 0.1, "b": 0.7, "c": 0.9, "d": 0.4}
    result = metrics.squad_v2_evaluate(gold, predictions, na_probs)
    # raw: a EM1 F1 1; b EM0 F1 2/3; c (no-answer, predicted none) 1/1; d (no-answer, answered) 0/0
    assert result["exact"] == pytest.approx(100 * 2 / 4)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 4)
    assert result["HasAns_exact"] == pytest.approx(50.0)
    assert result["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert result["NoAns_exact"] == pytest.approx(50.0)
    assert result["HasAns_total"] == 2 and result["NoAns_total"] == 2 and result["total"] == 4
    # Threshold sweep in na_prob order a(0.1) d(0.4) b(0.7) c(0.9), starting from 2 (the no-answer count):
    # a +1 -> 3 (thresh 0.1); d answered but unanswerable -1 -> 2; b +0 (EM) -> 2; c +0 -> 2. best EM 3/4.
    assert result["best_exact"] == pytest.approx(75.0) and result["best_exact_thresh"] == pytest.approx(0.1)
    # F1: a +1 -> 3; d -1 -> 2; b +2/3 -> 2.667; c 0. best 3 at 0.1.
    assert result["best_f1"] == pytest.approx(75.0) and result["best_f1_thresh"] == pytest.approx(0.1)


def test_squad_v2_threshold_turns_answers_into_no_answer():
    gold = {"a": ["Paris"], "c": []}
    predictions = {"a": "Paris", "c": "Rome"}
    na_probs = {"a": 0.2, "c": 0.8}
    # With threshold 0.5, c (na_prob 0.8) counts as "no answer", which is right for c.
    result = metrics.squad_v2_evaluate(gold, predictions, na_probs, na_prob_threshold=0.5)
    assert result["exact"] == 100.0 and result["NoAns_exact"] == 100.0
    # The default threshold 1.0 keeps the wrong answer.
    assert metrics.squad_v2_evaluate(gold, predictions, na_probs)["exact"] == 50.0


def test_squad_v2_gold_that_normalises_to_nothing_means_no_answer():
    # evaluate-v2.0.py keeps only gold texts with a non-empty normalisation, else [""].
    result = metrics.squad_v2_evaluate({"q": ["the"]}, {"q": ""})
    assert result["exact"] == 100.0


# ---- entity F1 against seqeval (conlleval's counting) ----

TYPES = ["PER", "LOC", "geo-loc"]


def _random_tags(rng, length, scheme):
    tags = []
    for _ in range(length):
        r = rng.random()
        entity_type = TYPES[rng.integers(len(TYPES))]
        if r < 0.4:
            tags.append("O")
        elif r < 0.7:
            tags.append(("B-" if scheme == "BIO" else "I-") + entity_type)
        else:
            tags.append(("I-" if scheme == "BIO" else "B-") + entity_type if rng.random() < 0.8 else "I-" + entity_type)
    return tags


@pytest.mark.parametrize("scheme", ["BIO", "IOB1"])
@pytest.mark.parametrize("seed", range(4))
def test_entity_scores_match_seqeval(scheme, seed):
    rng = np.random.default_rng(seed)
    gold = [_random_tags(rng, int(rng.integers(1, 15)), scheme) for _ in range(60)]
    predicted = []
    for sentence in gold:  # corrupt about a quarter of the tags
        predicted.append([t if rng.random() < 0.75 else _random_tags(rng, 1, scheme)[0] for t in sentence])
    ours = metrics.entity_scores(gold, predicted)
    assert ours["precision"] == pytest.approx(seqeval.metrics.precision_score(gold, predicted))
    assert ours["recall"] == pytest.approx(seqeval.metrics.recall_score(gold, predicted))
    assert ours["f1"] == pytest.approx(seqeval.metrics.f1_score(gold, predicted))
    report = seqeval.metrics.classification_report(gold, predicted, output_dict=True)
    for entity_type in TYPES:
        if entity_type in report:
            assert ours[f"f1_{entity_type}"] == pytest.approx(report[entity_type]["f1-score"])


def test_entity_chunks_by_conlleval_rules():
    # IOB1: I- opens a chunk, B- only separates two adjacent chunks of one type.
    assert metrics.get_entities(["I-PER", "I-PER", "B-PER", "O", "I-LOC"]) == [
        ("PER", 0, 1),
        ("PER", 2, 2),
        ("LOC", 4, 4),
    ]
    # BIO with a type change inside: conlleval splits it.
    assert metrics.get_entities(["B-PER", "I-LOC", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 2)]
    with pytest.raises(ValueError, match="not O or"):
        metrics.get_entities(["PER"])
