"""Weights checked at load, before anything is allocated or trained: non-finite values, a layer
count the files cannot hold, and shard files outside the checkpoint folder."""

import json
import time

import numpy as np
import pytest

from bert_jax import load_pretrained
from bert_jax.checkpoints import CheckpointError
from tests.test_checkpoints import _rewrite_safetensors, hf_dir  # noqa: F401 (fixture)


def test_nan_or_inf_weights_refused_unless_allowed(hf_dir):  # noqa: F811
    def poison(tensors):
        key = next(k for k in tensors if k.endswith("attention.self.query.weight"))
        tensors[key][0, 0] = np.nan
        tensors[key][1, 1] = np.inf
    _rewrite_safetensors(hf_dir, poison)
    with pytest.raises(CheckpointError, match=r"holds non-finite weights .*\n  bert/encoder/layer_0/attention/self/"
                                              r"query/kernel: 2 of \d+ values are NaN or Inf"):
        load_pretrained(hf_dir)
    _, params = load_pretrained(hf_dir, allow_nonfinite=True)
    assert np.isnan(params["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]).any()


def test_layer_count_the_files_cannot_hold_refused_at_once(hf_dir):  # noqa: F811
    config = json.loads((hf_dir / "config.json").read_text())
    config["num_hidden_layers"] = 10**9
    (hf_dir / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"num_hidden_layers=1000000000, the weights hold 2 layers"):
        load_pretrained(hf_dir)
    assert time.perf_counter() - start < 30  # it used to expand a billion table rows


def test_index_pointing_outside_the_folder_refused(hf_dir, tmp_path):  # noqa: F811
    outside = tmp_path / "elsewhere.safetensors"
    (hf_dir / "model.safetensors").rename(outside)
    for shard in (str(outside), "../elsewhere.safetensors"):
        (hf_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"bert.x": shard}}))
        with pytest.raises(CheckpointError, match=r"weight_map names shard .* not a file inside"):
            load_pretrained(hf_dir)


def test_export_follows_the_umask(tmp_path):
    import os
    import stat

    from bert_jax import BertConfig, save_pretrained
    from bert_jax.modeling import BertForPreTraining
    from tests.test_checkpoints import TINY, init_params
    config = BertConfig(**TINY)
    previous = os.umask(0o022)
    try:
        save_pretrained(init_params(BertForPreTraining(config)), config, tmp_path / "hf", format="hf")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "hf").st_mode) == 0o755
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in (tmp_path / "hf").iterdir()} == {0o644}
