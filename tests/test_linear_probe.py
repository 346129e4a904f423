"""benchmarks/linear_probe.py: its frozen features ignore padding and match their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from bert_jax.config import BertConfig
from bert_jax.modeling.models import BertModel
from tests.train_helpers import REPO, import_file
from tests.tolerances import FORWARD_REL, assert_close

probe = import_file(REPO / "benchmarks/linear_probe.py")
CONFIG = BertConfig.preset("tiny", vocab_size=50, max_position_embeddings=32)


def _params():
    params = BertModel(CONFIG).init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"]
    return nn.meta.unbox(params)  # plain arrays, as load_pretrained returns them


def _arrays(rows: list[list[int]], length: int) -> dict[str, np.ndarray]:
    ids = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": (ids != 0).astype(np.int32)}


ROWS = [[2, 7, 9, 11, 3], [2, 40, 3]]


def test_features_do_not_depend_on_padding():
    params = _params()
    short = probe.encoder_features(CONFIG, params, _arrays(ROWS, 8))
    long = probe.encoder_features(CONFIG, params, _arrays(ROWS, 20), batch_size=1)
    assert set(short) == set(probe.FEATURE_SETS)
    for name in probe.FEATURE_SETS:
        assert short[name].shape == (2, CONFIG.hidden_size)
        assert_close(short[name], long[name], FORWARD_REL, err_msg=name)


def test_mean_features_average_only_the_real_tokens():
    params = _params()
    feats = probe.encoder_features(CONFIG, params, _arrays(ROWS, 8))
    table = np.asarray(params["embeddings"]["word_embeddings"]["embedding"])
    assert_close(feats["emb_mean"][1], table[ROWS[1]].mean(axis=0), FORWARD_REL)
    # Each sentence alone, unpadded: the mean of every output row.
    alone = BertModel(CONFIG).apply({"params": params}, np.array([ROWS[0]], np.int32))["sequence_output"]
    assert_close(feats["mean"][0], np.asarray(alone)[0].mean(axis=0), FORWARD_REL)
    assert_close(feats["cls"][0], np.asarray(alone)[0, 0], FORWARD_REL)


def test_sentence_pair_files_are_refused(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("sentence1\tsentence2\tlabel\na b\tc d\t1\n")
    with pytest.raises(ValueError, match="pairs.tsv: the probe takes single sentences"):
        probe._read(str(path), tokenizer=None, max_seq_length=16)
