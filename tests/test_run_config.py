"""Runs a user can trust, in-process: the trainer owns config resolution (explicit values win or
are errors), records what ran before step 1, refuses bad configs before touching the workdir,
checks eval batches' token ids, evaluates only with num_steps=0, and an unfinished run's workdir
is a usable checkpoint (init_from, convert)."""

import json
import math
import pathlib

import jax
import numpy as np
import pytest

from bert_jax import run_config, train
from bert_jax.config import BertConfig
from tests.train_helpers import losses_by_step, read_metrics, tiny_config

def _tree_listing(root: pathlib.Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else None) for p in sorted(root.rglob("*"))}


# --------------------------------------------------------------------------- fine-tuning overrides


@pytest.fixture(scope="module")
def tiny_checkpoint(shared_data, tmp_path_factory):
    """A random 'tiny' BERT (hidden 128, BERT's 30,522 vocab) saved as a bert_jax checkpoint whose
    config says float32, no remat, dropout 0.1."""
    from bert_jax.checkpoints import save_pretrained
    from bert_jax.modeling.models import BertModel

    config = BertConfig.preset("tiny", vocab_size=30522, max_position_embeddings=64)
    params = BertModel(config).init(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))["params"]
    path = tmp_path_factory.mktemp("tiny_bert")
    save_pretrained({"bert": jax.device_get(params)}, config, path, format="bert_jax",
                    vocab_file=shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    return path, config


def _tsv_config(tmp_path, init_from, **model_overrides):
    from experiments import finetune_tsv

    rows = [("a fine , moving film", "1"), ("dull and lifeless", "0")] * 8
    text = "sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows)
    (tmp_path / "train.tsv").write_text(text)
    config = finetune_tsv.get_config("")
    config.lock()  # as main.py does: only existing fields can be set
    config.train_file = config.eval_file = str(tmp_path / "train.tsv")
    config.init_from = str(init_from)
    config.max_seq_length = 16
    config.num_epochs = 0
    config.train.num_steps = 2
    config.train.batch_size = config.train.eval_batch_size = 8
    config.logging.tensorboard = False
    config.logging.peak_flops_per_device = 1e11
    for name, value in model_overrides.items():
        config.model[name] = value
    return config


def test_finetune_model_overrides_survive_into_the_record_and_the_compiled_step(tiny_checkpoint, tmp_path):
    """--config.model.dtype=bfloat16, remat=full and dropout 0 against a float32/no-remat/dropout-0.1
    checkpoint: results.json, config.json and model_config.json say what the user asked, and the
    compiled step shows it: float32 params, bf16 matmuls, remat barriers, no dropout PRNG calls.
    A run without overrides is the control (f32 matmuls, no barriers, PRNG calls)."""
    path, checkpoint = tiny_checkpoint
    overrides = dict(dtype="bfloat16", remat="full", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    devices = jax.devices()[:1]
    plain = train.train_and_evaluate(_tsv_config(tmp_path, path), tmp_path / "plain", devices=devices)
    config = _tsv_config(tmp_path, path, **overrides)
    results = train.train_and_evaluate(config, tmp_path / "bf16", devices=devices)

    saved = json.loads((tmp_path / "bf16" / "results.json").read_text())
    recorded = json.loads((tmp_path / "bf16" / "config.json").read_text())
    model_config = json.loads((tmp_path / "bf16" / "model_config.json").read_text())
    for record in (saved["config"]["model"], recorded["model"], model_config):
        for name, value in overrides.items():
            assert record[name] == value, (name, record[name])
        assert record["hidden_size"] == checkpoint.hidden_size == 128  # architecture from the checkpoint
        assert record["vocab_size"] == 30522
    assert saved["config"]["train"]["num_steps"] == 2

    facts, control = results["compiled_step"], plain["compiled_step"]
    assert facts["param_dtypes"] == ["float32"] == control["param_dtypes"]
    dots = facts["dot_general_result_dtypes"]
    assert dots.get("bf16", 0) > dots.get("f32", 0), dots  # the encoder's matmuls run in bf16
    assert "bf16" not in control["dot_general_result_dtypes"]
    assert facts["optimization_barriers"] > 0 == control["optimization_barriers"]  # remat
    assert facts["random_bits_calls"] == 0 < control["random_bits_calls"]  # no dropout
    assert all(math.isfinite(v) for v in losses_by_step(tmp_path / "bf16").values())


def test_an_architecture_override_that_contradicts_the_checkpoint_is_an_error(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    config = _tsv_config(tmp_path, path, hidden_size=256, num_hidden_layers=2)
    with pytest.raises(ValueError, match=r"config.model.hidden_size=256 but the checkpoint has hidden_size=128"):
        train.train_and_evaluate(config, tmp_path / "run", devices=jax.devices()[:1])
    assert not (tmp_path / "run").exists()
    # An architecture value equal to the checkpoint's is fine, and unset fields take the checkpoint's.
    resolved = run_config.resolve_config(_tsv_config(tmp_path, path, num_hidden_layers=2), 16, BertConfig.preset("tiny"))
    assert resolved.model.num_hidden_layers == 2 and resolved.model.hidden_size == 128


def test_step_and_warmup_fields_given_twice_are_errors(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    checkpoint = BertConfig.preset("tiny")
    config = _tsv_config(tmp_path, path)
    config.num_epochs = 3  # and train.num_steps=2 from _tsv_config
    with pytest.raises(ValueError, match=r"config.train.num_steps=2 and config.num_epochs=3 both set"):
        run_config.resolve_config(config, 100, checkpoint)
    config = _tsv_config(tmp_path, path)
    config.optimizer.warmup_steps = 5
    with pytest.raises(ValueError, match=r"config.optimizer.warmup_steps=5 and config.warmup_proportion=0.1 both"):
        run_config.resolve_config(config, 100, checkpoint)
    config.warmup_proportion = -1.0
    assert run_config.resolve_config(config, 100, checkpoint).optimizer.warmup_steps == 5
    config = _tsv_config(tmp_path, path)
    config.num_epochs, config.train.num_steps = 2, None
    resolved = run_config.resolve_config(config, 100, checkpoint)
    assert resolved.train.num_steps == 25 and resolved.optimizer.warmup_steps == 2  # ceil(2*100/8), 10%
    assert config.train.num_steps is None  # the user's config is not edited


# --------------------------------------------------------------------------- fail before touching disk


def test_bad_config_exits_with_the_named_error_and_leaves_the_workdir_as_it_was(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("the user's file")
    before = _tree_listing(workdir)

    config = tiny_config()
    config.task.synthetic_data = False
    config.data.input_files = str(tmp_path / "missing" / "*.tfrecord")
    with pytest.raises(Exception, match="missing"):
        train.train_and_evaluate(config, workdir)
    assert _tree_listing(workdir) == before

    config = tiny_config(batch_size=12)
    with pytest.raises(ValueError, match="batch_size / grad_accum_steps = 12 is not divisible by the 8 data-parallel"):
        train.train_and_evaluate(config, workdir)
    assert _tree_listing(workdir) == before
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="not divisible"):
        train.train_and_evaluate(config, fresh)
    assert not fresh.exists()


def test_a_bad_init_from_is_refused_before_the_workdir_gets_anything(tmp_path):
    """init_from's weights are read (and fitted to the model) before the workdir is written: a run
    workdir whose config reads but which holds no complete checkpoint is refused by name."""
    config = tiny_config(num_steps=2)
    bad = tmp_path / "bad_init"
    (bad / "checkpoints").mkdir(parents=True)  # a run that never finished a checkpoint
    (bad / "model_config.json").write_text(json.dumps(config.model.to_dict()))
    config.init_from = str(bad)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("the user's file")
    before = _tree_listing(workdir)
    with pytest.raises(Exception, match=r"bad_init/checkpoints: no complete checkpoint to take params from"):
        train.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
    assert _tree_listing(workdir) == before
    with pytest.raises(Exception, match="no complete checkpoint"):
        train.train_and_evaluate(config, tmp_path / "fresh", devices=jax.devices()[:1])
    assert not (tmp_path / "fresh").exists()


def test_every_start_is_recorded_with_its_restored_step_and_what_changed(tmp_path):
    """starts.jsonl: one line per start, with the step it restored and the config fields that
    differ from the previous start; config.json is the newest start's config."""
    config = tiny_config(num_steps=4, stop_at_step=2)
    train.train_and_evaluate(config, tmp_path, devices=jax.devices()[:1])
    config = tiny_config(num_steps=4)
    config.optimizer.learning_rate = 5e-4  # resumed with another learning rate
    train.train_and_evaluate(config, tmp_path, devices=jax.devices()[:1])
    train.train_and_evaluate(config, tmp_path, devices=jax.devices()[:1])  # finished: evaluates only

    starts = [json.loads(line) for line in (tmp_path / "starts.jsonl").read_text().splitlines()]
    assert [(s["start"], s["restored_step"], s["process_count"]) for s in starts] == \
        [(0, None, 1), (1, 2, 1), (2, 4, 1)]
    assert starts[0]["changed"] == {}
    assert starts[1]["changed"] == {"optimizer.learning_rate": [1e-3, 5e-4], "train.stop_at_step": [2, 0]}
    assert starts[2]["changed"] == {}
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["optimizer"]["learning_rate"] == 5e-4 and recorded["train"]["stop_at_step"] == 0


def test_the_record_is_written_before_step_1(tmp_path):
    """config.json and model_config.json exist when the first step runs (checked from inside it)."""
    from bert_jax.tasks.pretraining import PretrainingTask

    config = tiny_config(num_steps=2)
    seen = {}

    class Watching(PretrainingTask):
        def train_iterator(self, *args, **kwargs):
            inner = super().train_iterator(*args, **kwargs)

            class It:
                def __next__(self):
                    seen["files"] = sorted(p.name for p in tmp_path.iterdir())
                    return next(inner)

                get_state, set_state = inner.get_state, inner.set_state
            return It()

    train.train_and_evaluate(config, tmp_path, task=Watching(config), devices=jax.devices()[:1])
    assert {"config.json", "model_config.json"} <= set(seen["files"])
    assert "results.json" not in seen["files"]
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["train"]["num_steps"] == 2 and recorded["model"]["vocab_size"] == 1024
    assert BertConfig.from_dict(json.loads((tmp_path / "model_config.json").read_text())) == \
        BertConfig(**config.model.to_dict())


# --------------------------------------------------------------------------- eval token ids


def _write_instances(path: pathlib.Path, vocab_size: int, n=16, length=32, predictions=5):
    from data_pipelines import tfrecord_io

    rng = np.random.default_rng(0)
    features = {
        "input_ids": rng.integers(5, vocab_size, (n, length)), "input_mask": np.ones((n, length), np.int64),
        "segment_ids": np.zeros((n, length), np.int64),
        "masked_lm_positions": np.tile(np.arange(1, predictions + 1), (n, 1)),
        "masked_lm_ids": rng.integers(5, vocab_size, (n, predictions)),
        "masked_lm_weights": np.ones((n, predictions), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (n, 1)),
    }
    with open(path, "wb") as f:
        for record in tfrecord_io.encode_examples(features):
            f.write(tfrecord_io.frame_record(record))


def test_eval_batches_with_ids_outside_the_vocab_are_refused_naming_the_eval_file(tmp_path):
    held_out, training = tmp_path / "held_out.tfrecord", tmp_path / "train.tfrecord"
    _write_instances(held_out, vocab_size=30522)  # made with BERT's vocab; the model has 1,024 ids
    _write_instances(training, vocab_size=1024)
    config = tiny_config(num_steps=2)
    config.task.synthetic_data = False
    config.data.input_files = str(training)
    config.task.eval_input_files = str(held_out)
    config.task.num_eval_batches = 1
    with pytest.raises(ValueError, match=rf"eval batch 1 of config.task.eval_input_files={held_out}: batch field "
                                         r"'input_ids' holds token id \d+, outside \[0, 1024\)"):
        train.train_and_evaluate(config, tmp_path / "run", devices=jax.devices()[:1])
    # The same file made with the model's vocabulary evaluates.
    _write_instances(held_out, vocab_size=1024)
    results = train.train_and_evaluate(config, tmp_path / "run_ok", devices=jax.devices()[:1])
    assert math.isfinite(results["final_metrics"]["mlm_loss"])


# --------------------------------------------------------------------------- unfinished runs, evaluate-only


def test_an_unfinished_run_is_a_checkpoint_for_init_from_convert_and_evaluate_only(tmp_path):
    from bert_jax import convert
    from bert_jax.checkpoints import load_config, load_pretrained

    source = tmp_path / "source"
    config = tiny_config(num_steps=6, stop_at_step=3)
    config.task.num_eval_batches = 1
    _, state = train.train_and_evaluate(config, source, devices=jax.devices()[:1], return_state=True)
    assert not (source / "results.json").exists()  # stopped before its end
    assert load_config(str(source)) == BertConfig(**config.model.to_dict())

    out = tmp_path / "hf"
    assert convert.main(["--input", str(source), "--output", str(out), "--to", "hf", "--no_tokenizer"]) == 0  # synthetic data: no vocab
    _, exported = load_pretrained(str(out))
    np.testing.assert_array_equal(exported["bert"]["embeddings"]["word_embeddings"]["embedding"],
                                  np.asarray(state.params["bert"]["embeddings"]["word_embeddings"]["embedding"]))

    # Evaluate only: num_steps=0 from the unfinished run's step-3 params, through the trainer.
    config = tiny_config(num_steps=0)
    config.task.num_eval_batches = 1
    config.init_from = str(source)
    results = train.train_and_evaluate(config, tmp_path / "eval", devices=jax.devices()[:1])
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["step"] == 0 and saved["init_from"] == str(source)
    assert not (tmp_path / "eval" / "checkpoints").exists() or not any((tmp_path / "eval" / "checkpoints").iterdir())
    # The same params on the same held-out batches as the source run's own evaluation would see:
    # resume the source to step 3 with num_steps=3 (evaluates at its end, no training).
    config = tiny_config(num_steps=3)
    config.task.num_eval_batches = 1
    reference = train.train_and_evaluate(config, source, devices=jax.devices()[:1])
    assert reference["step"] == 3
    for name, value in reference["final_metrics"].items():
        np.testing.assert_allclose(results["final_metrics"][name], value, rtol=1e-6, err_msg=name)

    # init_from the unfinished run's workdir warm-starts a new run.
    config = tiny_config(num_steps=2)
    config.init_from = str(tmp_path / "eval")  # no checkpoint there: refused by name
    with pytest.raises(Exception, match="checkpoint"):
        train.train_and_evaluate(config, tmp_path / "warm_bad", devices=jax.devices()[:1])
    config.init_from = str(source)
    assert train.train_and_evaluate(config, tmp_path / "warm", devices=jax.devices()[:1])["step"] == 2


def test_resume_of_a_run_cuts_the_metrics_after_the_restored_step(tmp_path):
    """Rows logged after the newest checkpoint (a hard kill after step 4, checkpoint at 2) are cut
    when the run resumes, in metrics.jsonl and in the TensorBoard files (read by tensorboard)."""
    from bert_jax.metrics_logging import MetricsWriter

    writer = MetricsWriter(tmp_path, resume_step=0)
    for step in (1, 2, 3, 4):
        writer.write(step, "train", {"loss": float(step)})
    writer.write(2, "eval", {"accuracy": 0.5})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "split": "tr')  # a line torn by the kill

    writer = MetricsWriter(tmp_path, resume_step=2)  # what the trainer passes on resume
    for step in (3, 4, 5):
        writer.write(step, "train", {"loss": 10.0 + step})
    writer.close()
    rows = read_metrics(tmp_path)
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0)]
    assert [r["step"] for r in read_metrics(tmp_path, "eval")] == [2]
    assert tensorboard_scalars(tmp_path / "tensorboard" / "train", "loss") == \
        [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0)]


def tensorboard_scalars(directory, tag):
    """(step, value) of every `tag` event as tensorboard reads the directory (no purging, so
    duplicates would show)."""
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
    from tensorboard.util import tensor_util

    # size_guidance 0: keep every event (the default samples 10 per tag).
    events = EventAccumulator(str(directory), size_guidance={TENSORS: 0}, purge_orphaned_data=False)
    events.Reload()
    return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]


def test_elastic_resume_continues_global_input_states_and_names_per_process_ones():
    from bert_jax.run_checkpoints import process_iterator_state

    # The non-packed pipeline: a global position, the same in every process (epoch aside).
    saved = [{"version": 1, "packing": False, "global_position": 64, "epoch": e} for e in (0, 1)]
    assert process_iterator_state(saved, 0, 1) == {"version": 1, "packing": False, "global_position": 64}
    assert process_iterator_state(saved, 1, 2) == saved[1]  # same count: its own
    # A packed stream keeps each process's own position: another count cannot continue it.
    packed = [{"packing": True, "position": 3, "process_index": i, "process_count": 2} for i in (0, 1)]
    with pytest.raises(ValueError, match=r"input states of 2 processes, this run has 1.*"
                                         r"--config.train.restart_data_order=True"):
        process_iterator_state(packed, 0, 1, where="ckpt/3")
    assert process_iterator_state(packed, 0, 1, restart_data_order=True) is None
