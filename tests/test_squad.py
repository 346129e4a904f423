"""SQuAD features and post-processing on real SQuAD examples (../shared/data/samples/squad.json)."""

import json

import numpy as np
import pytest

from bert_jax.tasks import features as features_lib
from bert_jax.tasks import squad


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
