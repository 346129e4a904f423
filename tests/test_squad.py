"""SQuAD features and post-processing on real SQuAD examples (../shared/data/samples/squad.json)."""

import json

import numpy as np
import pytest

from bert_jax.tasks import features as features_lib
from bert_jax.tasks import squad
from tests import squad_official


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    return features_lib.load_tokenizer(shared_data / "vocab" / "bert-base-uncased-vocab.txt", lowercase=True)


@pytest.fixture(scope="module")
def examples(shared_data):
    return squad.read_squad_json(shared_data / "samples" / "squad.json")


def _gold_logits(examples, features):
    """Logits that put all mass on the first gold answer's sub-tokens, in every window holding them."""
    num_features, length = features.max_context.shape
    start_logits = np.zeros((num_features, length), np.float32)
    end_logits = np.zeros((num_features, length), np.float32)
    for f, ex_index in enumerate(features.example_index):
        example = examples[ex_index]
        if not example.answers:
            start_logits[f, 0] = end_logits[f, 0] = 10.0  # no answer: [CLS]
            continue
        start_char = example.answer_starts[0]
        end_char = start_char + len(example.answers[0])
        spans = features.char_spans[f]
        inside = spans[:, 0] >= 0
        overlapping = np.flatnonzero(inside & (spans[:, 1] > start_char) & (spans[:, 0] < end_char))
        if overlapping.size:
            start_logits[f, overlapping[0]] = 10.0
            end_logits[f, overlapping[-1]] = 10.0
    return start_logits, end_logits


def test_reads_the_official_json(examples):
    assert len(examples) == 5
    first = examples[0]
    assert first.qid == "5733be284776f41900661182"
    assert first.answers == ("Saint Bernadette Soubirous",)
    assert first.context[first.answer_starts[0] :].startswith("Saint Bernadette Soubirous")


@pytest.mark.parametrize("max_seq_length,doc_stride", [(384, 128), (64, 16)])
def test_gold_logits_round_trip_to_exact_match_100(tokenizer, examples, max_seq_length, doc_stride):
    features = squad.build_features(
        tokenizer, examples, max_seq_length=max_seq_length, doc_stride=doc_stride, max_query_length=32, is_training=False
    )
    start_logits, end_logits = _gold_logits(examples, features)
    predictions = squad.postprocess(examples, features, start_logits, end_logits)
    for example in examples:
        assert predictions[example.qid].text == example.answers[0]
    result = squad.evaluate_predictions(examples, predictions, version_2=False)
    assert result == {"exact_match": 100.0, "f1": 100.0}


def test_long_context_is_split_into_overlapping_windows(tokenizer, examples):
    features = squad.build_features(tokenizer, examples, max_seq_length=64, doc_stride=16, max_query_length=32, is_training=False)
    context_tokens = len(tokenizer.encode_ids(examples[0].context))
    windows_of_first = int(np.sum(features.example_index == 0))
    question_tokens = len(tokenizer.encode_ids(examples[0].question))
    max_doc = 64 - question_tokens - 3
    # run_squad.py: windows start every doc_stride tokens until one reaches the end.
    expected = 1 + int(np.ceil(max(0, context_tokens - max_doc) / 16))
    assert windows_of_first == expected > 2
    # Every context character span is scored in exactly one window (the max-context one).
    first = features.example_index == 0
    scored_starts = features.char_spans[first][features.max_context[first]][:, 0]
    assert len(scored_starts) == len(set(scored_starts.tolist())) == context_tokens
    # Nothing longer than max_seq_length; [CLS] first, two [SEP]s.
    ids = features.arrays["input_ids"]
    assert ids.shape[1] == 64 and np.all(ids[:, 0] == 101)
    assert np.all(np.sum(ids == 102, axis=1) == 2)


def test_training_targets_point_at_the_answer(tokenizer, examples):
    features = squad.build_features(tokenizer, examples, max_seq_length=64, doc_stride=16, max_query_length=32, is_training=True)
    arrays = features.arrays
    found = set()
    for f in range(arrays["input_ids"].shape[0]):
        start, end = arrays["start_positions"][f], arrays["end_positions"][f]
        example = examples[features.example_index[f]]
        if start == 0:
            assert end == 0
            continue
        text = example.context[features.char_spans[f, start, 0] : features.char_spans[f, end, 1]]
        assert text == example.answers[0]
        found.add(example.qid)
    assert found == {e.qid for e in examples}  # every answer lands in some window


def test_question_truncation_is_counted(tokenizer, examples, caplog):
    features = squad.build_features(tokenizer, examples, max_seq_length=128, doc_stride=32, max_query_length=5, is_training=False)
    assert features.num_truncated_questions == 5
    assert all(np.sum(row[1:] == 102) == 2 for row in features.arrays["input_ids"])


def test_v2_null_answer_and_threshold(tokenizer, examples):
    # Make the first question unanswerable (v2.0 style) and check the null logic.
    unanswerable = squad.SquadExample(
        qid="noans", question=examples[0].question, context=examples[0].context, answers=(), answer_starts=(), is_impossible=True
    )
    v2_examples = [unanswerable, *examples[1:]]
    features = squad.build_features(tokenizer, v2_examples, max_seq_length=384, doc_stride=128, max_query_length=64, is_training=False)
    start_logits, end_logits = _gold_logits(v2_examples, features)
    predictions = squad.postprocess(v2_examples, features, start_logits, end_logits, version_2_with_negative=True)
    assert predictions["noans"].text == ""
    result = squad.evaluate_predictions(v2_examples, predictions, version_2=True)
    assert result["exact"] == 100.0 and result["NoAns_exact"] == 100.0 and result["HasAns_f1"] == 100.0
    # A very high threshold forbids "no answer": the null question now gets a span and EM drops by 1/5.
    predictions = squad.postprocess(
        v2_examples, features, start_logits, end_logits, version_2_with_negative=True, null_score_diff_threshold=1e9
    )
    assert predictions["noans"].text != ""
    assert squad.evaluate_predictions(v2_examples, predictions, version_2=True)["exact"] == pytest.approx(80.0)


def test_postprocess_respects_max_answer_length_and_order(tokenizer, examples):
    features = squad.build_features(tokenizer, examples[:1], is_training=False)
    length = features.max_context.shape[1]
    start_logits = np.zeros((1, length), np.float32)
    end_logits = np.zeros((1, length), np.float32)
    doc_positions = np.flatnonzero(features.char_spans[0, :, 0] >= 0)
    start_logits[0, doc_positions[0]] = 5.0
    end_logits[0, doc_positions[40]] = 6.0  # 41 tokens: longer than max_answer_length 30
    end_logits[0, doc_positions[2]] = 4.0
    prediction = squad.postprocess(examples[:1], features, start_logits, end_logits)[examples[0].qid]
    spans = features.char_spans[0]
    assert prediction.text == examples[0].context[spans[doc_positions[0], 0] : spans[doc_positions[2], 1]]
    assert prediction.nbest[0]["score"] == pytest.approx(9.0)
    assert sum(c["probability"] for c in prediction.nbest) == pytest.approx(1.0)


def test_bad_json_names_the_problem(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "x", "qas": [{"id": "q", "question": "?", "answers": [{"text": "x"}]}]}]}]}))
    with pytest.raises(ValueError, match="bad.json.*answer_start"):
        squad.read_squad_json(path)


def test_tfds_squad_v11_end_to_end(tokenizer, examples):
    """TFDS squad/v1.1 (mocked with the real sample rows in TFDS's feature layout) through the task."""
    tfds = pytest.importorskip("tensorflow_datasets")
    tf = pytest.importorskip("tensorflow")

    def as_dataset(self, split, **kwargs):
        def rows():
            for e in examples:
                yield {
                    "id": e.qid, "title": "t", "context": e.context, "question": e.question,
                    "answers": {"text": list(e.answers), "answer_start": np.asarray(e.answer_starts, np.int32)},
                }

        signature = {
            "id": tf.TensorSpec([], tf.string), "title": tf.TensorSpec([], tf.string),
            "context": tf.TensorSpec([], tf.string), "question": tf.TensorSpec([], tf.string),
            "answers": {"text": tf.TensorSpec([None], tf.string), "answer_start": tf.TensorSpec([None], tf.int32)},
        }
        return tf.data.Dataset.from_generator(rows, output_signature=signature)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        train = squad.read_tfds("v1.1", "train")
        evaluation = squad.read_tfds("v1.1", "validation")
    assert [(e.qid, e.answers, e.answer_starts) for e in evaluation] == [(e.qid, e.answers, e.answer_starts) for e in examples]
    task = squad.SquadTask(tokenizer=tokenizer, train_examples=train, eval_examples=evaluation, max_seq_length=128, doc_stride=64)
    batch = next(task.train_iterator(batch_size=4, seed=0))
    assert batch["start_positions"].shape == (4,) and batch["input_ids"].shape == (4, 128)
    batches = task.eval_batches(4)
    start, end = _gold_logits(evaluation, task.eval_features)
    predictions = [{"start_logits": start[b["feature_index"]], "end_logits": end[b["feature_index"]]} for b in batches]
    assert task.evaluate(predictions, batches) == {"exact_match": 100.0, "f1": 100.0}


# ---- imperfect predictions, the written files and the official evaluation ------------------------


def _v2_dataset(shared_data) -> dict:
    """The real questions, each also asked of the other paragraph, where it has no answer."""
    dataset = json.loads((shared_data / "samples" / "squad.json").read_text())
    paragraphs = [p for article in dataset["data"] for p in article["paragraphs"]]
    assert len(paragraphs) == 2
    extra = []
    for i, paragraph in enumerate(paragraphs):
        other = paragraphs[1 - i]
        extra.append({"context": other["context"], "qas": [
            {"id": f"{qa['id']}_other", "question": qa["question"], "answers": [], "is_impossible": True}
            for qa in paragraph["qas"]]})
    return {"version": "v2.0", "data": [{"title": "v2", "paragraphs": paragraphs + extra}]}


def _task_outputs(task, start_logits, end_logits, batch_size=3):
    """(predictions, batches) as the trainer hands them to evaluate/write_predictions."""
    batches = task.eval_batches(batch_size)
    predictions = [{"start_logits": start_logits[b["feature_index"]], "end_logits": end_logits[b["feature_index"]]}
                   for b in batches]
    return predictions, batches


def _mixed_logits(examples, features, seed, gold_every=2):
    """Gold logits for every `gold_every`-th example, noise for the rest: imperfect predictions."""
    gold_start, gold_end = _gold_logits(examples, features)
    rng = np.random.default_rng(seed)
    start = rng.normal(size=gold_start.shape).astype(np.float32) * 3
    end = rng.normal(size=gold_end.shape).astype(np.float32) * 3
    use_gold = (features.example_index % gold_every) == 0
    start[use_gold], end[use_gold] = gold_start[use_gold] + start[use_gold] / 10, gold_end[use_gold] + end[use_gold] / 10
    return start, end


def test_v1_predictions_json_read_back_gives_the_reported_metrics(tokenizer, shared_data, tmp_path):
    path = shared_data / "samples" / "squad.json"
    examples = squad.read_squad_json(path)
    task = squad.SquadTask(tokenizer=tokenizer, train_examples=examples, eval_examples=examples,
                           max_seq_length=64, doc_stride=16, max_query_length=32)
    start, end = _mixed_logits(examples, task.eval_features, seed=0)
    predictions, batches = _task_outputs(task, start, end)
    reported = task.evaluate(predictions, batches)
    task.write_predictions(predictions, batches, tmp_path / "predictions")  # the trainer's call
    written = json.loads((tmp_path / "predictions.json").read_text())
    assert sorted(written) == sorted(e.qid for e in examples)
    assert (tmp_path / "nbest_predictions.json").exists() and not (tmp_path / "null_odds.json").exists()
    official = squad_official.evaluate_v1(json.loads(path.read_text()), written)
    assert reported == pytest.approx(official)
    assert 0 < official["exact_match"] < 100 and official["f1"] > official["exact_match"]  # partial credit seen


def test_v2_files_read_back_give_every_reported_official_figure(tokenizer, shared_data, tmp_path):
    dataset = _v2_dataset(shared_data)
    (tmp_path / "dev-v2.json").write_text(json.dumps(dataset))
    examples = squad.read_squad_json(tmp_path / "dev-v2.json")
    assert len(examples) == 10 and sum(not e.answers for e in examples) == 5
    task = squad.SquadTask(tokenizer=tokenizer, train_examples=examples, eval_examples=examples,
                           version_2_with_negative=True, max_seq_length=96, doc_stride=32, max_query_length=32)
    start, end = _mixed_logits(examples, task.eval_features, seed=3, gold_every=3)
    predictions, batches = _task_outputs(task, start, end)
    reported = task.evaluate(predictions, batches)
    task.write_predictions(predictions, batches, tmp_path / "predictions")
    written = json.loads((tmp_path / "predictions.json").read_text())
    null_odds = json.loads((tmp_path / "null_odds.json").read_text())
    # evaluate-v2.0.py dev-v2.json predictions.json [--na-prob-file null_odds.json]
    official = squad_official.evaluate_v2(dataset, written)
    with_odds = squad_official.evaluate_v2(dataset, written, null_odds)
    best_keys = ("best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh")
    official.update({k: with_odds[k] for k in best_keys})
    assert {k: reported[k] for k in official} == pytest.approx(official)
    if max(null_odds.values()) <= 1.0 or all(not written[q] for q, o in null_odds.items() if o > 1.0):
        assert {k: with_odds[k] for k in ("exact", "f1")} == pytest.approx({k: reported[k] for k in ("exact", "f1")})
    # The figures are not trivial: some answers right, some wrong, "no answer" predicted for some.
    assert 0 < official["HasAns_f1"] < 100 and 0 < official["NoAns_exact"] < 100
    assert any(v == "" for v in written.values()) and any(v for v in written.values())


def test_span_best_f1_thresh_is_the_best_null_score_diff_threshold(tokenizer, shared_data, tmp_path):
    """Brute force: postprocess at every candidate threshold, score each with the official v2.0
    F1 (no na-prob file) and take the best; the task's span sweep must name that F1 and a
    threshold that reproduces it."""
    dataset = _v2_dataset(shared_data)
    (tmp_path / "dev-v2.json").write_text(json.dumps(dataset))
    examples = squad.read_squad_json(tmp_path / "dev-v2.json")
    features = squad.build_features(tokenizer, examples, max_seq_length=96, doc_stride=32, max_query_length=32,
                                    is_training=False)
    # Every answerable question gets its gold span (score ~20); for half of them the null score
    # is ~21 (null odds ~+1), for the other half ~0. The unanswerable ones get noise spans and a
    # null score of ~26 (odds ~+10). So the answers cut at threshold 0 miss half the answerable
    # questions, and the best threshold lies above 0, where only the span sweep can see it.
    start, end = _mixed_logits(examples, features, seed=5, gold_every=1)
    answerable = np.array([bool(examples[i].answers) for i in features.example_index])
    start[~answerable], end[~answerable] = (np.random.default_rng(6).normal(size=start[~answerable].shape) * 3,
                                            np.random.default_rng(7).normal(size=end[~answerable].shape) * 3)
    start[~answerable, 0] = end[~answerable, 0] = 13.0
    half = answerable & (features.example_index % 2 == 0)
    start[half, 0] = end[half, 0] = 10.5
    at_zero = squad.postprocess(examples, features, start, end, version_2_with_negative=True)
    reported = squad.evaluate_predictions(examples, at_zero, version_2=True)
    diffs = sorted({p.score_diff for p in at_zero.values()})

    def official_f1(threshold):
        answers = squad.postprocess(examples, features, start, end, version_2_with_negative=True,
                                    null_score_diff_threshold=threshold)
        return squad_official.evaluate_v2(dataset, {q: p.text for q, p in answers.items()})["f1"]

    by_threshold = {t: official_f1(t) for t in [diffs[0] - 1.0, *diffs]}
    best = max(by_threshold.values())
    assert reported["span_best_f1"] == pytest.approx(best)
    assert official_f1(reported["span_best_f1_thresh"]) == pytest.approx(best)
    assert best > official_f1(0.0) and reported["span_best_f1_thresh"] > 0  # 0 is not the best threshold
    assert reported["f1"] == pytest.approx(official_f1(0.0))
