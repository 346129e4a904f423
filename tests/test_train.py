"""The trainer in-process on 8 CPU devices: parallel schemes agree, gradient accumulation,
the NaN guard, init_from, and resuming past a half-written checkpoint."""

import json
import math

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from bert_jax import optim, predict, run_checkpoints, train, train_utils
from bert_jax.tasks.pretraining import PretrainingTask
from tests.tolerances import assert_tree_close
from tests.train_helpers import losses_by_step, read_metrics, require_devices, tiny_config

# Params after a few steps, relative to each leaf's max |value| (floored at 1e-3 of the largest
# param; biases start at 0): the schemes and accumulation only reorder float32 sums.
PARAM_REL = 1e-4



def needs_8_devices(test):
    """Fails (does not skip) the test when the 8 host devices are missing."""
    import functools

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        require_devices(8)
        return test(*args, **kwargs)
    return wrapper


def _flat_params(state):
    return {optim.param_path(p): v for p, v in jax.tree_util.tree_leaves_with_path(state.params)}


@pytest.mark.slow
@needs_8_devices
def test_parallel_schemes_match_one_device(tmp_path):
    """5 steps (dropout on) under data 8x1, FSDP 2x4 and tensor 4x2 give the losses and params of
    1 device, to float32 reduction-order tolerance: the schemes only reorder sums."""
    runs = {
        "one_device": (dict(data=1, fsdp=1, tensor=1, rules="data_parallel"), jax.devices()[:1]),
        "data_8": (dict(data=8, fsdp=1, tensor=1, rules="data_parallel"), None),
        "fsdp_2x4": (dict(data=2, fsdp=4, tensor=1, rules="fsdp"), None),
        "tensor_4x2": (dict(data=4, fsdp=1, tensor=2, rules="tensor"), None),
    }
    losses, params, states = {}, {}, {}
    for name, (mesh, devices) in runs.items():
        config = tiny_config()
        config.mesh.update(mesh)
        _, state = train.train_and_evaluate(config, tmp_path / name, devices=devices, return_state=True)
        losses[name] = losses_by_step(tmp_path / name)
        params[name] = {k: np.asarray(v) for k, v in _flat_params(state).items()}
        states[name] = state
    assert sorted(losses["one_device"]) == [1, 2, 3, 4, 5]
    for name in runs:
        np.testing.assert_allclose([losses[name][s] for s in range(1, 6)],
                                   [losses["one_device"][s] for s in range(1, 6)], rtol=2e-5, err_msg=name)
        assert sorted(params[name]) == sorted(params["one_device"]), name
        assert_tree_close(params[name], params["one_device"], PARAM_REL)
    # The params really are split as the rules say.
    query = "bert/encoder/layer_0/attention/self/query/kernel"  # [embed, heads, kv]
    intermediate = "bert/encoder/layer_0/intermediate/dense/kernel"  # [embed, mlp]
    data8, fsdp, tensor = (_flat_params(states[n]) for n in ("data_8", "fsdp_2x4", "tensor_4x2"))
    assert data8[query].sharding.spec == P(None, None, None)
    assert fsdp[query].sharding.spec == P("fsdp", None, None)
    assert fsdp[query].addressable_shards[0].data.shape == (128 // 4, 2, 64)
    assert tensor[query].sharding.spec[1] == "tensor"  # embed -> fsdp too, a no-op at fsdp=1
    assert tensor[query].addressable_shards[0].data.shape == (128, 1, 64)
    assert tensor[intermediate].addressable_shards[0].data.shape == (128, 512 // 2)
    # Adam's moments follow their parameters.
    adam = states["fsdp_2x4"].opt_state[1][0]
    assert adam.mu["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"].sharding.spec == \
        P("fsdp", None, None)


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    """2 micro-batches of 8 = one batch of 16 (dropout off; every example has 5 masked tokens,
    so the mean of the micro-batch means is the batch mean)."""
    results = {}
    for accum in (1, 2):
        config = tiny_config(num_steps=3, grad_accum_steps=accum)
        config.model.hidden_dropout_prob = config.model.attention_probs_dropout_prob = 0.0
        config.mesh.update(data=1)
        _, state = train.train_and_evaluate(config, tmp_path / f"accum_{accum}", devices=jax.devices()[:1],
                                            return_state=True)
        results[accum] = (losses_by_step(tmp_path / f"accum_{accum}"), _flat_params(state))
    for step in (1, 2, 3):
        np.testing.assert_allclose(results[2][0][step], results[1][0][step], rtol=1e-5)
    assert_tree_close({k: np.asarray(v) for k, v in results[2][1].items()},
                      {k: np.asarray(v) for k, v in results[1][1].items()}, PARAM_REL)


class _NaNAtStep(PretrainingTask):
    """Pretraining whose batch number `bad_step` (1-based) has NaN masked_lm_weights."""

    def __init__(self, config, bad_step):
        super().__init__(config)
        self.bad_step = bad_step

    def train_iterator(self, *args, **kwargs):
        inner = super().train_iterator(*args, **kwargs)
        task = self

        class Poisoned:
            def __iter__(self):
                return self

            def __next__(self):
                batch = next(inner)
                if inner.get_state()["synthetic_step"] == task.bad_step:
                    batch["masked_lm_weights"] = batch["masked_lm_weights"] * np.nan
                return batch

            get_state, set_state = inner.get_state, inner.set_state

        return Poisoned()


def test_nan_guard_halt_names_the_step_and_writes_no_bad_checkpoint(tmp_path):
    config = tiny_config(num_steps=6, nonfinite_policy="halt")
    config.checkpoint.every_steps = 1
    with pytest.raises(train.NonFiniteError, match="non-finite loss or gradient norm at step 3"):
        train.train_and_evaluate(config, tmp_path, task=_NaNAtStep(config, bad_step=3), devices=jax.devices()[:1])
    # Checkpoints of steps 1 and 2 only; each one's params are finite.
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [1, 2]
    params, _ = run_checkpoints.restore_params(tmp_path, step=2)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    assert not (tmp_path / "results.json").exists()


def test_nan_guard_skip_leaves_params_unchanged_and_counts(tmp_path):
    config = tiny_config(num_steps=4, nonfinite_policy="skip")
    results, state = train.train_and_evaluate(config, tmp_path, task=_NaNAtStep(config, bad_step=3),
                                              devices=jax.devices()[:1], return_state=True)
    assert results["nonfinite_steps_skipped"] == 1
    metrics = {r["step"]: r for r in read_metrics(tmp_path)}
    assert [metrics[s]["update_skipped"] for s in (1, 2, 3, 4)] == [0.0, 0.0, 1.0, 0.0]
    assert metrics[3]["loss"] == "nan"
    assert math.isfinite(metrics[4]["loss"])
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    assert json.loads((tmp_path / "results.json").read_text())["nonfinite_steps_skipped"] == 1


class _IdOutOfVocabAtStep(_NaNAtStep):
    """Pretraining whose batch number `bad_step` holds an input id == vocab_size."""

    def train_iterator(self, *args, **kwargs):
        inner = PretrainingTask.train_iterator(self, *args, **kwargs)
        vocab, bad_step = self.config.model.vocab_size, self.bad_step

        class OutOfVocab:
            def __iter__(self):
                return self

            def __next__(self):
                batch = next(inner)
                if inner.get_state()["synthetic_step"] == bad_step:
                    batch["input_ids"] = batch["input_ids"].copy()
                    batch["input_ids"][0, 1] = vocab
                return batch

            get_state, set_state = inner.get_state, inner.set_state

        return OutOfVocab()


def test_token_id_outside_the_vocab_is_refused_naming_step_and_id(tmp_path):
    config = tiny_config(num_steps=4)
    vocab = config.model.vocab_size
    with pytest.raises(ValueError, match=rf"step 2: batch field 'input_ids' holds token id {vocab}, outside \[0, {vocab}\)"):
        train.train_and_evaluate(config, tmp_path, task=_IdOutOfVocabAtStep(config, bad_step=2), devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="'masked_lm_ids' holds token id -1"):
        predict.check_token_ids({"masked_lm_ids": np.array([[3, -1]])}, vocab, "step 7")
    predict.check_token_ids({"input_ids": np.array([[0, vocab - 1]]), "masked_lm_ids": np.zeros((1, 0), int)}, vocab, "step 1")


def test_resume_skips_a_half_written_checkpoint(tmp_path):
    config = tiny_config(num_steps=4, stop_at_step=2)
    train.train_and_evaluate(config, tmp_path, devices=jax.devices()[:1])
    # A save of step 3 that died midway: orbax's temporary directory, with garbage in it.
    broken = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1234567"
    broken.mkdir()
    (broken / "state").write_text("half written")
    assert run_checkpoints.RunCheckpointer(tmp_path, config.checkpoint).latest_step() == 2
    config.train.stop_at_step = 0
    results = train.train_and_evaluate(config, tmp_path, devices=jax.devices()[:1])
    assert results["step"] == 4
    steps = [r["step"] for r in read_metrics(tmp_path)]
    assert steps == [1, 2, 3, 4]  # resumed at 2: steps 3 and 4 ran once


def test_init_from_takes_the_weights_not_the_run_state(tmp_path):
    """A new run (its own step 0, optimizer, schedule) started from a finished run's params."""
    source = tiny_config(num_steps=3)
    _, source_state = train.train_and_evaluate(source, tmp_path / "source", devices=jax.devices()[:1],
                                               return_state=True)
    config = tiny_config(num_steps=1)
    config.init_from = str(tmp_path / "source")
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 0.0, 0  # no update: params stay as loaded
    results, state = train.train_and_evaluate(config, tmp_path / "warm", devices=jax.devices()[:1],
                                              return_state=True)
    assert results["init_from"] == str(tmp_path / "source") and results["step"] == 1
    for key, value in _flat_params(source_state).items():
        np.testing.assert_array_equal(np.asarray(_flat_params(state)[key]), np.asarray(value), err_msg=key)


def test_merge_pretrained_keeps_new_heads_and_rejects_wrong_shapes():
    fresh = {"bert": {"pooler": {"dense": {"kernel": np.zeros((4, 4), np.float32)}}},
             "classifier": {"kernel": np.zeros((4, 2), np.float32)}}
    loaded = {"bert": {"pooler": {"dense": {"kernel": np.ones((4, 4), np.float32)}}},
              "cls": {"seq_relationship": {"kernel": np.ones((4, 2), np.float32)}}}
    merged, used, new = train_utils.merge_pretrained(fresh, loaded, "ckpt")
    assert used == ["bert/pooler/dense/kernel"] and new == ["classifier/kernel"]
    np.testing.assert_array_equal(merged["bert"]["pooler"]["dense"]["kernel"], 1.0)
    np.testing.assert_array_equal(merged["classifier"]["kernel"], 0.0)
    loaded["bert"]["pooler"]["dense"]["kernel"] = np.ones((8, 4), np.float32)
    with pytest.raises(ValueError, match=r"bert/pooler/dense/kernel: model expects \(4, 4\), ckpt has \(8, 4\)"):
        train_utils.merge_pretrained(fresh, loaded, "ckpt")


def test_bad_config_values_are_named():
    config = tiny_config(nonfinite_policy="ignore")
    with pytest.raises(ValueError, match="config.train.nonfinite_policy"):
        train.train_and_evaluate(config, "/tmp/unused")
    config = tiny_config(batch_size=12)
    with pytest.raises(ValueError, match="not divisible by the 8 data-parallel devices"):
        train.train_and_evaluate(config, "/tmp/unused_2")


@pytest.mark.slow
def test_bf16_compute_keeps_float32_master_weights_with_remat_and_scan(tmp_path):
    config = tiny_config(num_steps=2)
    config.model.update(dtype="bfloat16", param_dtype="float32", remat="full", scan_layers=True)
    results, state = train.train_and_evaluate(config, tmp_path, devices=jax.devices()[:1], return_state=True)
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
    assert "layers" in state.params["bert"]["encoder"]  # the scanned layout
    losses = losses_by_step(tmp_path)
    assert all(math.isfinite(losses[s]) for s in (1, 2))
    assert abs(losses[1] - math.log(1024) - math.log(2)) < 0.5  # MLM ~ ln(vocab) + NSP ~ ln 2 at init
