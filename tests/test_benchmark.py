"""The FLOP count behind MFU (against XLA's own count of the compiled step) and the benchmark CLI."""

import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from bert_jax import flops
from bert_jax.config import BertConfig
from bert_jax.modeling.models import BertForPreTraining
from tests.train_helpers import REPO, SUBPROCESS_TIMEOUT_S, require_devices, subprocess_env


@pytest.mark.parametrize("preset", ["tiny", "mini"])
def test_training_flops_match_xla_cost_analysis(preset):
    """Our matmul-only count is what XLA counts for the compiled forward+backward minus the
    elementwise work (softmax, GELU, LayerNorm): between 95% and 100% of XLA's number."""
    config = BertConfig.preset(preset, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForPreTraining(config)
    batch, length, predictions = 2, 128, 20
    ids = jnp.zeros((batch, length), jnp.int32)
    positions = jnp.tile(jnp.arange(1, predictions + 1), (batch, 1))
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids)["params"])
    is_box = lambda x: hasattr(x, "unbox")
    params = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, boxed, is_leaf=is_box)

    def loss(p):  # a real cross-entropy: a plain sum would let XLA turn the decoder's backward into a reduce
        out = model.apply({"params": p}, ids, masked_positions=positions)
        return (jax.nn.log_softmax(out["mlm_logits"])[..., 7].sum()
                + jax.nn.log_softmax(out["nsp_logits"])[:, 0].sum())

    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    xla_per_token = compiled.cost_analysis()["flops"] / (batch * length)
    ours = flops.training_flops_per_token(config, length, predictions, nsp=True)
    assert 0.95 * xla_per_token < ours <= xla_per_token, (ours, xla_per_token)


def test_flops_formula_for_bert_base_by_hand():
    # BERT-base, seq 128, 20 predictions: 11 layers x (8*768^2 + 4*768*3072 + 4*128*768) per token;
    # the last layer K, V (4*768^2) for every token and the rest for [CLS] + 20 rows (21/128);
    # MLM head 20/128 x (2*768^2 + 2*768*30522), NSP (2*768^2 + 4*768)/128; x3 for training.
    full_layer = 8 * 768**2 + 4 * 768 * 3072 + 4 * 128 * 768
    last_layer = 4 * 768**2 + 21 / 128 * (4 * 768**2 + 4 * 768 * 3072 + 4 * 128 * 768)
    expected = 3 * (11 * full_layer + last_layer
                    + 20 / 128 * (2 * 768**2 + 2 * 768 * 30522) + (2 * 768**2 + 4 * 768) / 128)
    assert flops.training_flops_per_token(BertConfig.preset("base"), 128, 20, nsp=True) == pytest.approx(expected)
    # Without heads every layer computes every row.
    assert flops.training_flops_per_token(BertConfig.preset("base"), 128) == pytest.approx(3 * 12 * full_layer)


def _xla_training_flops_per_token(config, batch, length, predictions):
    """XLA's own FLOP count of the compiled forward+backward, per token."""
    model = BertForPreTraining(config)
    ids = jnp.zeros((batch, length), jnp.int32)
    positions = jnp.tile(jnp.arange(1, predictions + 1), (batch, 1))
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids)["params"])
    is_box = lambda x: hasattr(x, "unbox")  # noqa: E731
    params = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, boxed, is_leaf=is_box)

    def loss(p):
        out = model.apply({"params": p}, ids, masked_positions=positions)
        return jax.nn.log_softmax(out["mlm_logits"])[..., 7].sum() + jax.nn.log_softmax(out["nsp_logits"])[:, 0].sum()

    return jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()["flops"] / (batch * length)


def test_benchmark_figures_from_a_known_clock_and_xla_flops(monkeypatch):
    """The benchmark on the 8 host devices with a clock whose readings are known: the timed
    steps take 0.2, 0.3 and 0.25 s, after a warm-up step that took 100 s. tokens/s, step time and MFU
    must follow from those durations, the global batch, the device count, and a FLOP count
    within 95-100% of XLA's for the same model and shapes."""
    import types

    from bert_jax import benchmark, step_timing

    # The clock's readings in call order: the warm-up step's start (its end is not read), then
    # start and end of each timed step. Step 1 ends at 100.2 after starting at 100.0, etc.
    readings = iter([0.0, 100.0, 100.2, 100.2, 100.5, 100.5, 100.75])
    calls = [0]

    def perf_counter():
        calls[0] += 1
        return next(readings)

    monkeypatch.setattr(step_timing, "time", types.SimpleNamespace(perf_counter=perf_counter))
    require_devices(8)
    out = benchmark.main(["--model", "tiny", "--seq-len", "32", "--batch-size", "16", "--steps", "3",
                          "--warmup", "1", "--peak-flops", "1e11"])
    assert calls[0] == 7 and out["devices"] == 8 and out["mesh"]["data"] == 8
    assert out["masked_predictions"] == 5  # ceil(0.15 * 32)
    assert out["step_time_s"] == pytest.approx(0.25) and out["step_time_min_s"] == pytest.approx(0.2)
    assert out["tokens_per_s"] == pytest.approx(16 * 32 / 0.25)  # global batch x length / median step
    xla = _xla_training_flops_per_token(BertConfig.preset("tiny", hidden_dropout_prob=0.0,
                                                          attention_probs_dropout_prob=0.0), 16, 32, 5)
    assert 0.95 * xla < out["model_flops_per_token"] <= xla, (out["model_flops_per_token"], xla)
    assert out["mfu"] == pytest.approx(16 * 32 / 0.25 * out["model_flops_per_token"] / (1e11 * 8))
    assert out["peak_flops"] == 1e11 and out["peak_flops_source"] == "config"


def test_benchmark_cli_prints_one_json_line():
    result = subprocess.run(
        [sys.executable, "-m", "bert_jax.benchmark", "--model", "tiny", "--seq-len", "32", "--batch-size", "4",
         "--steps", "2", "--warmup", "1", "--peak-flops", "1e11"],
        cwd=REPO, env=subprocess_env(1), capture_output=True, text=True, check=True, timeout=SUBPROCESS_TIMEOUT_S)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["devices"] == 1 and out["final_loss"] > 0 and out["tokens_per_s"] > 0


@pytest.fixture(scope="module")
def tensor_parallel_step():
    """The timed step of a tiny model on 8 host devices, 4-way data x 2-way tensor parallel."""
    from bert_jax import step_timing
    from bert_jax.tasks.pretraining import PretrainingTask, base_config

    require_devices(8)
    config = base_config("tiny", 32, 5, synthetic=True)
    config.mesh.update(data=4, fsdp=1, tensor=2, rules="tensor")
    config.train.update(batch_size=8, num_steps=10)
    config.optimizer.warmup_steps = 1
    return step_timing.compile_step(config, PretrainingTask(config), batch_size=8)


def test_the_timed_step_keeps_the_trainers_activation_sharding(tensor_parallel_step):
    """Compiled under the trainer's logical axis rules, the model's `with_logical_constraint`s
    become sharding constraints that split activations over the tensor axis (attention heads,
    feed-forward units). Without the rules flax maps every logical axis to "replicated", and no
    constraint in the lowered program names the tensor axis."""
    constraints = [line for line in tensor_parallel_step.stablehlo.splitlines() if "sdy.sharding_constraint" in line]
    on_tensor = [line for line in constraints if '{"tensor"}' in line]
    assert on_tensor, f"no sharding constraint names the tensor axis among {len(constraints)}: {constraints[:3]}"


def test_step_times_agree_with_an_outside_clock(tensor_parallel_step):
    """The steps are the timed call's whole work (peak given: no matmul probe), so the call's
    wall time, read here, bounds the step times and their tokens/s: a tokens/s off by 10x
    either way, or step times that do not sum to most of the call, fail."""
    from bert_jax import step_timing

    steps = 6
    start = time.perf_counter()
    out = step_timing.time_train_step(tensor_parallel_step, steps=steps, warmup=0, peak_flops=1e11)
    wall = time.perf_counter() - start
    assert len(out["step_times_s"]) == steps
    assert 0.5 * wall < sum(out["step_times_s"]) <= wall
    outside_tokens_per_s = steps * 8 * 32 / wall
    assert outside_tokens_per_s / 3 < out["tokens_per_s"] < 3 * outside_tokens_per_s
    assert out["devices"] == 8


def test_an_mfu_above_one_warns_naming_the_peak_source(caplog):
    with caplog.at_level("WARNING", logger="bert_jax.flops"):
        assert flops.mfu(1000.0, 1e9, 1e11, "measured:cpu float32 matmul", 2) == pytest.approx(5.0)
    assert "measured:cpu float32 matmul" in caplog.text and "MFU 5.000 > 1" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="bert_jax.flops"):
        flops.mfu(10.0, 1e9, 1e11, "config", 2)
    assert caplog.text == ""


def test_matmul_peak_can_be_measured_inside_a_training_mesh():
    # The trainer asks for the peak inside its mesh context; jit there used to refuse the
    # one-device probe array ("incompatible devices").
    import jax
    import numpy as np

    from bert_jax import flops as flops_lib

    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    with jax.set_mesh(mesh):
        assert flops_lib.measure_matmul_peak(size=128, repeats=2) > 0


@pytest.mark.slow
def test_trainer_comparison_alternates_the_variants_and_only_one_evaluates_and_saves():
    """--trainer: the runs alternate (neither first), the eval_and_checkpoints runs evaluate (at
    step 10 and at the end) and save, the others never; gap = ratio - 1."""
    import argparse

    from bert_jax import benchmark
    from bert_jax.tasks.pretraining import base_config

    config = base_config("tiny", 32, 5, synthetic=True)
    config.model.vocab_size = 1024
    config.optimizer.warmup_steps = 2  # main() sets it to its step count
    args = argparse.Namespace(dtype="float32", remat="none", scan_layers=False, batch_size=8, grad_accum_steps=1,
                              peak_flops=1e12, warmup=2, trainer_repeats=2)
    out = benchmark._trainer_tokens_per_s(config, args, steps=12)
    runs = out["runs"]
    assert [r["variant"] for r in runs] == ["neither", "eval_and_checkpoints"] * 2
    for r in runs:
        on = r["variant"] == "eval_and_checkpoints"
        assert r["evaluations"] == (2 if on else 0)
        assert (r["eval_s"] > 0) == on
        # Only eval_and_checkpoints saves inside the timed steps (no save after step 1 either:
        # run_checkpoints saves every every_steps steps and nowhere else).
        assert (r["checkpoint_s"] > 0) == on
        assert r["tokens_per_s"] > 0 and len(r["loadavg_before"]) == 3
    assert out["gap"] == pytest.approx(out["eval_and_checkpoints"] / out["neither"] - 1)
