"""Each fine-tuning family shown to learn on real data, through the real trainer (in-process, one
device), from the pretrained all-MiniLM-L6-v2 encoder in $BERT_JAX_DATA/models:

- NER on WNUT-16 (train 1,636 tweets; dev 291): dev entity F1 above a measured floor, far above
  the all-O baseline (F1 0); the reported F1 equals seqeval's on the written prediction file.
- SQuAD v1.1 on the real examples of samples/squad.json, and v2.0 with each question also asked of
  the other paragraph (no answer there): the training set is fitted to EM = F1 = 100, scored
  from the written predictions.json (and null_odds.json) by the official evaluation.
- Extractive summarisation on real news articles (lee_news, sentences shuffled, lead-2 as the
  reference): a small training set is fitted (ROUGE-2 far above picking sentences at random),
  and rouge-score on the written summaries equals the reported ROUGE.
- Sentence pairs: the Bible paraphrase task (same verse in two translations or not), dev
  accuracy above a measured floor (majority class 50%).

The floors, wall times and commands are in each test's docstring; all are `slow`.
"""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest

from tests import squad_official


@pytest.fixture(scope="module")
def minilm(shared_data):
    model = shared_data / "models" / "all-MiniLM-L6-v2"
    assert (model / "model.safetensors").is_file(), f"{model} is missing"
    return model


def _run(config, workdir):
    """The trainer in-process on one device; returns (results, wall seconds)."""
    import jax

    from bert_jax import train

    config.logging.update(tensorboard=False, progress_bar=False, peak_flops_per_device=1e11)
    config.checkpoint.update(every_steps=100_000, async_save=False)
    start = time.perf_counter()
    results = train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
    wall = time.perf_counter() - start
    print(f"\n[learning] {workdir.name}: {results['final_metrics']} after {results['step']} steps, {wall:.0f} s")
    return results, wall


# ------------------------------------------------------------------------------------------ NER

NER_MIN_F1 = 0.05


@pytest.mark.slow
def test_ner_wnut16_from_minilm(minilm, shared_data, tmp_path):
    """3 epochs (162 steps of 32) at lr 3e-4, max_seq_length 48. Measured on the 2-core machine
    (load ~6): dev entity F1 0.0968 (P 0.096, R 0.097; person 0.159), token accuracy 0.956, 185 s.
    The same at 2 epochs, lr 1e-4, length 64 predicted all O (F1 0). WNUT-16 is hard (BERT-base
    reaches ~0.45 with full training); this shows learning, not a competitive score. The floor is
    half the measured F1; the all-O baseline is 0."""
    import seqeval.metrics

    from experiments import finetune_ner

    config = finetune_ner.get_config("wnut16")
    config.init_from = str(minilm)
    config.max_seq_length = 48
    config.num_epochs = 3
    config.optimizer.learning_rate = 3e-4
    results, _ = _run(config, tmp_path / "ner")
    f1 = results["final_metrics"]["f1"]
    # The written predictions (word, gold, predicted per line), scored by seqeval.
    sentences, current = [], []
    for line in (tmp_path / "ner" / "predictions").read_text(encoding="utf-8").splitlines() + [""]:
        if not line:
            if current:
                sentences.append(current)
            current = []
        else:
            current.append(line.split("\t"))
    assert len(sentences) == 291
    gold = [[g for _, g, _ in s] for s in sentences]
    predicted = [[p for _, _, p in s] for s in sentences]
    assert seqeval.metrics.f1_score(gold, predicted) == pytest.approx(f1)
    assert seqeval.metrics.f1_score(gold, [["O"] * len(s) for s in gold]) == 0.0
    assert f1 >= NER_MIN_F1, f"dev entity F1 {f1:.4f} < {NER_MIN_F1}"


# ---------------------------------------------------------------------------------------- SQuAD

def _v2_dataset(squad_json):
    dataset = json.loads(squad_json.read_text())
    paragraphs = [p for article in dataset["data"] for p in article["paragraphs"]]
    extra = [{"context": paragraphs[1 - i]["context"], "qas": [
        {"id": f"{qa['id']}_other", "question": qa["question"], "answers": [], "is_impossible": True}
        for qa in p["qas"]]} for i, p in enumerate(paragraphs)]
    return {"version": "v2.0", "data": [{"title": "v2", "paragraphs": paragraphs + extra}]}


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v1.1", "v2.0"])
def test_squad_fits_the_real_examples(minilm, shared_data, tmp_path, version):
    """The 5 real questions (v2.0: plus the same 5 asked of the other paragraph, unanswerable)
    fitted to training EM = F1 = 100 (v2.0 at the default null threshold 0), scored from the
    written files by the official evaluation. Measured (load ~6): v1.1 100/100 in 48-63 s; v2.0
    100/100 (HasAns and NoAns 100) in 102-133 s."""
    from experiments import finetune_squad

    dataset_path = shared_data / "samples" / "squad.json"
    if version == "v2.0":
        dataset = _v2_dataset(dataset_path)
        dataset_path = tmp_path / "train-v2.json"
        dataset_path.write_text(json.dumps(dataset))
    dataset = json.loads(dataset_path.read_text())
    config = finetune_squad.get_config(version)
    config.init_from = str(minilm)
    config.train_file = config.eval_file = str(dataset_path)
    # v1.1 (5 questions) fits in 40 steps at length 128; v2.0 (10, half unanswerable) did not
    # (EM 60 at 40 steps) and is given 60 steps at length 192 (measured: EM = F1 = 100).
    v1 = version == "v1.1"
    config.max_seq_length = 128 if v1 else 192
    config.task.doc_stride = 48 if v1 else 64
    config.num_epochs = 0
    config.train.num_steps = 40 if v1 else 60
    config.train.batch_size = 8
    config.optimizer.learning_rate = 3e-4 if v1 else 2e-4
    config.optimizer.weight_decay = 0.0
    results, _ = _run(config, tmp_path / "squad")
    predictions = json.loads((tmp_path / "squad" / "predictions.json").read_text())
    if version == "v1.1":
        official = squad_official.evaluate_v1(dataset, predictions)
        assert official == pytest.approx({k: results["final_metrics"][k] for k in official})
        assert official == {"exact_match": 100.0, "f1": 100.0}, predictions
    else:
        official = squad_official.evaluate_v2(dataset, predictions)
        assert {k: results["final_metrics"][k] for k in ("exact", "f1")} == pytest.approx(
            {k: official[k] for k in ("exact", "f1")})
        assert official["HasAns_exact"] == 100.0 and official["NoAns_exact"] == 100.0, predictions
        null_odds = json.loads((tmp_path / "squad" / "null_odds.json").read_text())
        assert all(null_odds[q] > 0 for q in predictions if q.endswith("_other"))


# -------------------------------------------------------------------------------- summarisation

SUMMARY_MIN_ROUGE2 = 70.0


def _news_jsonl(shared_data, path, count, lead=2, max_sentences=8, seed=0):
    rng = np.random.default_rng(seed)
    text = (shared_data / "corpus" / "lee_news.txt").read_text(encoding="utf-8")
    rows = []
    for block in text.split("\n\n"):
        sentences = [s for s in block.splitlines() if s.strip()]
        if not lead + 2 <= len(sentences) <= max_sentences:
            continue
        order = rng.permutation(len(sentences))
        rows.append({"sentences": [sentences[j] for j in order], "summary": "\n".join(sentences[:lead])})
        if len(rows) == count:
            break
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


@pytest.mark.slow
def test_summarization_fits_news_articles(minilm, shared_data, tmp_path):
    """16 real news articles, sentences shuffled, the two lead sentences as the reference: the
    model must find them by content. 100 steps of 8 (50 epochs) at lr 3e-4, length 256. Measured
    (load ~6): training-set ROUGE-2 79.8 (R1 84.0, RL 65.6, RLsum 83.6) in 295 s, against 38.2 for
    random picks and 95.6 for the oracle labels (the ceiling: a reference bigram spans its line
    break); 60 steps at lr 2e-4 reached 56.4. rouge-score on the written summaries equals the
    reported ROUGE."""
    from rouge_score import rouge_scorer

    from experiments import finetune_summarization

    rows = _news_jsonl(shared_data, tmp_path / "news.jsonl", 16)
    config = finetune_summarization.get_config("")
    config.init_from = str(minilm)
    config.train_file = config.eval_file = str(tmp_path / "news.jsonl")
    config.max_seq_length = 256
    config.task.summary_size = config.task.oracle_size = 2
    config.num_epochs = 0
    config.train.num_steps = 100
    config.train.batch_size = 8
    config.optimizer.learning_rate = 3e-4
    results, _ = _run(config, tmp_path / "summ")
    written = [json.loads(line) for line in (tmp_path / "summ" / "predictions").read_text().splitlines()]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = [scorer.score(r["summary"], "\n".join(w["summary"])) for r, w in zip(rows, written)]
    expected = {k: 100 * np.mean([s[k].fmeasure for s in scores]) for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    assert {k: results["final_metrics"][k] for k in expected} == pytest.approx(expected)
    # Random picks of 2 of the sentences, as a baseline (mean over 20 draws).
    rng = np.random.default_rng(1)
    random_rouge2 = 100 * np.mean([scorer.score(r["summary"], "\n".join(
        r["sentences"][i] for i in sorted(rng.choice(len(r["sentences"]), 2, replace=False))))["rouge2"].fmeasure
        for _ in range(20) for r in rows])
    print(f"[learning] summarisation: ROUGE-2 {expected['rouge2']:.1f} against random picks {random_rouge2:.1f}")
    assert expected["rouge2"] >= SUMMARY_MIN_ROUGE2 > random_rouge2 + 20


# ------------------------------------------------------------------------------------ paraphrase

PARAPHRASE_MIN_ACCURACY = 0.95


@pytest.mark.slow
def test_bible_paraphrase_from_minilm(minilm, shared_data, tmp_path):
    """2,000 of the 20,000 Bible training pairs, one epoch (63 steps of 32) at lr 1e-4, length 96;
    scored on the full 2,000-pair dev split (majority class 50.8%). Measured (load ~6): dev
    accuracy 0.9845 (F1 0.985) in 185 s; the floor 0.95 leaves a margin. The written predictions
    file, read back against the dev file's labels, gives the reported accuracy."""
    from experiments import finetune_tsv

    source = shared_data / "paraphrase" / "bible"
    lines = (source / "train.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(lines[:2001]) + "\n", encoding="utf-8")
    config = finetune_tsv.get_config("bible")
    config.init_from = str(minilm)
    config.train_file = str(tmp_path / "train.tsv")
    config.max_seq_length = 96
    config.num_epochs = 1
    config.optimizer.learning_rate = 1e-4
    results, _ = _run(config, tmp_path / "bible")
    accuracy = results["final_metrics"]["accuracy"]
    dev = list(csv.DictReader((source / "dev.tsv").open(encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = list(csv.DictReader((tmp_path / "bible" / "predictions").open(encoding="utf-8"), delimiter="\t"))
    assert len(rows) == len(dev) == 2000
    assert [r["label"] for r in rows] == [d["label"] for d in dev]  # in the dev file's order
    majority = max(np.mean([r["label"] == "1" for r in dev]), np.mean([r["label"] == "0" for r in dev]))
    from_file = np.mean([r["prediction"] == d["label"] for r, d in zip(rows, dev)])
    assert from_file == pytest.approx(accuracy)
    print(f"[learning] bible paraphrase: dev accuracy {accuracy:.4f} (majority {majority:.4f})")
    assert accuracy >= PARAPHRASE_MIN_ACCURACY > majority + 0.2
