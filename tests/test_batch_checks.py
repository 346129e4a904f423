"""Per-batch range checks of masked positions, segment ids and NSP labels (bert_jax.batch_checks)."""

import numpy as np
import pytest

from bert_jax.batch_checks import check_index_ranges


def _batch(**changes):
    batch = {"input_ids": np.ones((2, 8), np.int32), "token_type_ids": np.zeros((2, 8), np.int32),
             "masked_lm_positions": np.array([[1, 7], [0, 0]], np.int32),
             "next_sentence_labels": np.array([0, 1], np.int32)}
    batch.update(changes)
    return batch


def test_a_valid_batch_passes():
    check_index_ranges(_batch(), 2, "step 1")


@pytest.mark.parametrize("field, value, message", [
    ("masked_lm_positions", np.array([[1, 8], [0, 0]]), r"step 3: batch field 'masked_lm_positions' holds 8, outside \[0, 8\)"),
    ("masked_lm_positions", np.array([[1, -1], [0, 0]]), r"holds -1, outside \[0, 8\)"),
    ("token_type_ids", np.full((2, 8), 7), r"'token_type_ids' holds 7, outside \[0, 2\) \(model.type_vocab_size=2\)"),
    ("next_sentence_labels", np.array([0, 5]), r"'next_sentence_labels' holds 5, outside \[0, 2\)"),
])
def test_out_of_range_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        check_index_ranges(_batch(**{field: value}), 2, "step 3")


def test_eval_batches_are_checked_too():
    """The Predictor (every evaluation) checks the same ranges when it knows type_vocab_size."""
    import jax
    from flax import linen as nn

    from bert_jax import sharding
    from bert_jax.predict import Predictor
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])

    class Task:
        def predict(self, model, params, batch):
            return {"x": batch["input_ids"]}
    predictor = Predictor(Task(), None, mesh, sharding.axis_rules("data_parallel"), None, 10, type_vocab_size=2)
    with pytest.raises(ValueError, match=r"eval batch 1 of dev.tsv: batch field 'token_type_ids' holds 7"):
        predictor(None, [_batch(token_type_ids=np.full((2, 8), 7))], "dev.tsv")
