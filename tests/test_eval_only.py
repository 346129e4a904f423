"""Evaluate-only paths run the trainer's prediction loop (predict.Predictor): GLUE's test-set
submission files from a finished run's checkpoint, checked against the model applied here."""

import csv
import importlib

import jax
import numpy as np
import pytest

from bert_jax.config import BertConfig


@pytest.fixture(scope="module")
def tiny_checkpoint(shared_data, tmp_path_factory):
    from bert_jax.checkpoints import save_pretrained
    from bert_jax.modeling.models import BertModel

    # Large random weights: the scores differ from row to row, so a row given another's score shows.
    config = BertConfig.preset("tiny", vocab_size=30522, max_position_embeddings=64, initializer_range=0.5)
    params = BertModel(config).init(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))["params"]
    path = tmp_path_factory.mktemp("tiny_bert")
    save_pretrained({"bert": jax.device_get(params)}, config, path, format="bert_jax",
                    vocab_file=shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    return path


PAIRS = [("a man is playing a guitar .", "a man plays the guitar ."),
         ("a woman is slicing an onion .", "a dog runs in the park ."),
         ("the cat sat on the mat .", "a cat is sitting on a mat ."),
         ("stocks fell sharply on monday .", "the market dropped on monday ."),
         ("a child is riding a horse .", "the sky is blue today ."),
         ("two men are playing chess .", "two people play a board game .")]


def test_glue_test_predictions_are_the_checkpoints_own(tiny_checkpoint, tmp_path):
    """STS-B (scores, so every row shows): STS-B.tsv from write_test_predictions holds, for each
    test row, the score the chosen checkpoint's model gives it (applied here with flax, batch by
    batch), for the best step by default and for the step asked for; 11 test rows in batches of
    8 on 8 devices, so the padded rows are dropped."""
    from bert_jax import run_checkpoints, train
    from bert_jax.tasks import glue

    data = tmp_path / "STS-B"
    data.mkdir()
    header = "index\tsentence1\tsentence2\tscore\n"
    rows = [(a, b, f"{(i * 1.7) % 5:.1f}") for i, (a, b) in enumerate(PAIRS * 3)]
    (data / "train.tsv").write_text(header + "".join(f"{i}\t{a}\t{b}\t{s}\n" for i, (a, b, s) in enumerate(rows)))
    (data / "dev.tsv").write_text(header + "".join(f"{i}\t{a}\t{b}\t{s}\n" for i, (a, b, s) in enumerate(rows[:8])))
    test_rows = (PAIRS * 2)[:11]
    (data / "test.tsv").write_text("index\tsentence1\tsentence2\n" + "".join(
        f"{100 + i}\t{a}\t{b}\n" for i, (a, b) in enumerate(test_rows)))

    config = importlib.import_module("experiments.finetune_glue").get_config("stsb")
    config.init_from = str(tiny_checkpoint)
    config.task.data_dir = str(data)
    config.max_seq_length = 32
    config.num_epochs, config.warmup_proportion = 0, -1
    config.train.update(num_steps=2, batch_size=8, eval_batch_size=8, eval_every=1)
    config.optimizer.update(warmup_steps=0, learning_rate=1e-3)
    config.checkpoint.keep = 2  # both steps stay
    config.logging.update(tensorboard=False, progress_bar=False, peak_flops_per_device=1e11)
    results = train.train_and_evaluate(config, tmp_path / "run")
    best = results["best_step"]
    assert best in (1, 2)

    def written(path):
        lines = list(csv.reader(path.open(encoding="utf-8"), delimiter="\t"))
        assert lines[0] == ["index", "prediction"]
        return {int(i): float(s) for i, s in lines[1:]}

    def expected(step):
        """The checkpoint's model applied to the test batches here, padding rows dropped."""
        task = glue.from_config(config).test_task()
        model = task.make_model(BertConfig(**results["config"]["model"]))  # the model that ran
        params, used = run_checkpoints.restore_params(tmp_path / "run", step)
        assert used == step
        out = {}
        for batch in task.eval_batches(8):
            scores = model.apply({"params": params}, input_ids=batch["input_ids"],
                                 token_type_ids=batch["token_type_ids"], attention_mask=batch["attention_mask"],
                                 deterministic=True)["logits"][:, 0]
            for weight, i, score in zip(batch["example_weight"], batch["example_index"], np.asarray(scores)):
                if weight > 0:
                    out[100 + int(i)] = float(score)
        return out

    (path,) = glue.write_test_predictions(tmp_path / "run")
    assert path == tmp_path / "run" / "glue_submission" / "STS-B.tsv"
    got = written(path)
    assert sorted(got) == list(range(100, 111))
    want = expected(best)
    assert got == pytest.approx(want, abs=1.5e-3)  # the file holds 3 decimals
    assert np.ptp(list(want.values())) > 0.1  # rows differ: a row given another's score would show
    other = 3 - best
    (path,) = glue.write_test_predictions(tmp_path / "run", tmp_path / "other", step=other)
    assert written(path) == pytest.approx(expected(other), abs=1.5e-3)
    assert max(abs(written(path)[i] - got[i]) for i in got) > 0.01  # the two steps differ: the step is used
