"""SQuAD, NER and summarisation through the real trainer from a small random checkpoint: the
experiment files, the registry, config resolution, the jit'ed loss/predict and host-side metrics."""

import json

import pytest

from tests import squad_official
from tests.finetune_helpers import one_epoch_config


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_uncased_checkpoint):
    return tiny_uncased_checkpoint[0]


@pytest.mark.slow
def test_squad_json_through_the_trainer(tiny_checkpoint, shared_data, tmp_path):
    from bert_jax import train

    sample = shared_data / "samples" / "squad.json"
    config = one_epoch_config("finetune_squad", "v1.1", tiny_checkpoint, train_file=str(sample),
                              eval_file=str(sample), max_seq_length=128, **{"task.doc_stride": 64})
    results = train.train_and_evaluate(config, tmp_path / "run")
    assert results["main_metric"] == "f1" and set(results["final_metrics"]) == {"exact_match", "f1"}
    predictions = json.loads((tmp_path / "run" / "predictions.json").read_text())
    assert len(predictions) == 5 and all(isinstance(v, str) and v for v in predictions.values())
    assert (tmp_path / "run" / "nbest_predictions.json").exists()
    # The file, read back with the official evaluation, gives the reported figures.
    official = squad_official.evaluate_v1(json.loads(sample.read_text()), predictions)
    assert official == pytest.approx(results["final_metrics"])


@pytest.mark.slow
def test_conll_ner_through_the_trainer(tiny_checkpoint, shared_data, tmp_path):
    from bert_jax import train

    dev = shared_data / "ner" / "wnut16" / "dev.conll"
    config = one_epoch_config("finetune_ner", "", tiny_checkpoint, train_file=str(dev), eval_file=str(dev),
                              max_seq_length=32, num_epochs=0, **{"train.num_steps": 4})
    results = train.train_and_evaluate(config, tmp_path / "run")
    assert results["main_metric"] == "f1"
    assert {"precision", "recall", "f1", "token_accuracy"} <= set(results["final_metrics"])
    lines = (tmp_path / "run" / "predictions").read_text().split("\n\n")
    assert len([block for block in lines if block.strip()]) == 291  # every dev tweet, every word


@pytest.mark.slow
def test_jsonl_summarization_through_the_trainer(tiny_checkpoint, tmp_path):
    from bert_jax import train

    documents = [
        {"sentences": ["The council met on Tuesday.", "Roads will be repaired.", "It rained.", "Schools get money."],
         "summary": "Roads will be repaired. Schools get more money."},
        {"sentences": ["A storm hit the coast.", "Thousands lost power.", "A dog barked.", "Crews worked all night."],
         "summary": "A storm left thousands without power."},
    ] * 4
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in documents))
    config = one_epoch_config("finetune_summarization", "", tiny_checkpoint, train_file=str(path),
                              eval_file=str(path), max_seq_length=64)
    results = train.train_and_evaluate(config, tmp_path / "run")
    assert results["main_metric"] == "rouge2"
    assert set(results["final_metrics"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions").read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["selected"]) == 3 for r in rows)


@pytest.mark.slow
def test_glue_tsv_run_then_test_submission(tiny_checkpoint, tmp_path):
    """A GLUE run from GLUE's own TSV files, then the server files from its best checkpoint."""
    from bert_jax import train
    from bert_jax.tasks import glue

    data = tmp_path / "SST-2"
    data.mkdir()
    rows = [("a gorgeous , witty , seductive movie .", 1), ("the plot is nothing but boilerplate .", 0)] * 8
    (data / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows))
    (data / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows[:4]))
    (data / "test.tsv").write_text("index\tsentence\n" + "".join(f"{i}\t{s}\n" for i, (s, _) in enumerate(rows[:5])))
    config = one_epoch_config("finetune_glue", "sst2", tiny_checkpoint, max_seq_length=32, **{"task.data_dir": str(data)})
    results = train.train_and_evaluate(config, tmp_path / "run")
    assert results["main_metric"] == "accuracy" and set(results["final_metrics"]) == {"accuracy"}
    (path,) = glue.write_test_predictions(tmp_path / "run")
    lines = path.read_text().splitlines()
    assert path.name == "SST-2.tsv" and lines[0] == "index\tprediction" and len(lines) == 6
    assert [line.split("\t")[0] for line in lines[1:]] == ["0", "1", "2", "3", "4"]
    assert {line.split("\t")[1] for line in lines[1:]} <= {"0", "1"}
