"""benchmarks/mlm_eval.py: held-out MLM / NSP metrics, independent of batching."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from bert_jax.config import BertConfig
from bert_jax.modeling.models import BertForPreTraining
from tests.train_helpers import REPO, import_file
from tests.tolerances import FORWARD_REL, check_bound

mlm_eval = import_file(REPO / "benchmarks/mlm_eval.py")

VOCAB = 100
CONFIG = BertConfig.preset("tiny", vocab_size=VOCAB, max_position_embeddings=32)


def _instances(n=10, length=16, predictions=3, seed=0):
    rng = np.random.RandomState(seed)
    mask = np.ones((n, length), np.int32)
    mask[:, 12:] = 0
    return {
        "input_ids": rng.randint(5, VOCAB, (n, length)).astype(np.int32) * mask,
        "segment_ids": np.zeros((n, length), np.int32),
        "input_mask": mask,
        "masked_lm_positions": np.stack([rng.choice(np.arange(1, 12), predictions, replace=False) for _ in range(n)]).astype(np.int32),
        "masked_lm_ids": rng.randint(5, VOCAB, (n, predictions)).astype(np.int32),
        "masked_lm_weights": np.ones((n, predictions), np.float32),
        "next_sentence_labels": rng.randint(0, 2, (n, 1)).astype(np.int32),
    }


def _params(initializer_range=0.02):
    model = BertForPreTraining(BertConfig.preset("tiny", vocab_size=VOCAB, max_position_embeddings=32,
                                                 initializer_range=initializer_range))
    return nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"])


def test_an_untrained_model_scores_chance():
    # Near-zero logits at init: the MLM loss is ln(vocab) and the NSP loss ln(2).
    result = mlm_eval.evaluate(CONFIG, _params(initializer_range=0.001), _instances())
    assert abs(result["mlm_loss"] - math.log(VOCAB)) < 0.01
    assert abs(result["nsp_loss"] - math.log(2)) < 0.01


def test_metrics_do_not_depend_on_the_batch_size():
    params, instances = _params(initializer_range=0.5), _instances(n=11)
    whole = mlm_eval.evaluate(CONFIG, params, instances, batch_size=64)
    pieces = mlm_eval.evaluate(CONFIG, params, instances, batch_size=4)
    assert whole["mlm_loss"] > math.log(VOCAB) + 0.1  # large random weights: far from chance
    for key in ("mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"):
        check_bound(key, abs(whole[key] - pieces[key]) / max(abs(whole[key]), 1e-3), FORWARD_REL)


def test_instances_from_a_larger_vocabulary_are_refused():
    """Through evaluate (the trainer's prediction loop): the error names the instances, the
    checkpoint and the batch; the same instances within the vocab evaluate."""
    params, instances = _params(), _instances()
    assert math.isfinite(mlm_eval.evaluate(CONFIG, params, instances, batch_size=4)["mlm_loss"])
    instances["masked_lm_ids"][6, 1] = VOCAB  # row 6: the second batch of 4
    with pytest.raises(ValueError, match=r"eval batch 2 of inst/\*.tfrecord \(checkpoint ckpt\): batch field "
                                         r"'masked_lm_ids' holds token id 100, outside \[0, 100\)"):
        mlm_eval.evaluate(CONFIG, params, instances, batch_size=4, checkpoint="ckpt", instances_name="inst/*.tfrecord")


def test_an_encoder_only_checkpoint_is_refused_by_name():
    params = {"bert": _params()["bert"]}
    with pytest.raises(ValueError, match=r"checkpoint enc/ has no pretraining heads \(params 'cls/...'\)"):
        mlm_eval.evaluate(CONFIG, params, _instances(), checkpoint="enc/")


def test_the_last_batch_is_padded_with_rows_of_weight_0():
    """11 instances in batches of 4: the last batch holds 3 of them and one zero row of
    example_weight 0 (test_metrics_do_not_depend_on_the_batch_size: that row does not count)."""
    instances = _instances(n=11)
    batches = mlm_eval.instance_batches(instances, 4)
    assert [len(b["input_ids"]) for b in batches] == [4, 4, 4]
    np.testing.assert_array_equal(batches[-1]["example_weight"], [1, 1, 1, 0])
    np.testing.assert_array_equal(batches[-1]["input_ids"][:3], instances["input_ids"][8:])
    assert not batches[-1]["input_ids"][3].any()
