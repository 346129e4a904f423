"""benchmarks/gpu_check.py --smoke on the CPU (issue 17).

The GPU check exists for the day an accelerator is lent, for a few minutes: it must not rot in
between. This runs the same script at tiny sizes with JAX_PLATFORMS=cpu in a subprocess, as a lent
machine would run it (PYTHONPATH=., no install), and checks every line it prints.
"""

import json
import math

import pytest

from tests.train_helpers import REPO, SUBPROCESS_TIMEOUT_S, subprocess_env

# The subprocess timeout is a generous bound (15 min), so that a hang fails instead of blocking.

KINDS = ("environment", "attention_numerics", "pretraining_run", "checkpoint_roundtrip", "precision_numerics",
         "train_step_speed", "attention_dropout", "max_batch", "summary")
DATA = REPO / "benchmarks" / "data" / "gpu_check"


@pytest.fixture(scope="module")
def smoke():
    result = run_script("--smoke")
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return [json.loads(line) for line in lines], result


def of(lines, kind):
    return [line for line in lines if line["kind"] == kind]


def run_script(*flags):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "benchmarks/gpu_check.py", *flags], cwd=REPO,
                          env=subprocess_env(1, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)


def test_the_time_budget_skips_measurements_with_the_reason():
    result = run_script("--smoke", "--budget_s", "0")
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["kind"] for line in lines][0] == "environment" and lines[-1]["kind"] == "summary"
    skipped = lines[1:-1]
    assert len(skipped) > 20 and all(line["skipped"].startswith("time budget:") for line in skipped)
    assert lines[-1]["lines"] == {"ok": 0, "error": 0, "skipped": len(skipped)}


def test_the_watchdog_prints_a_summary_and_exits_124():
    result = run_script("--smoke", "--hard_limit_s", "2")  # the smoke run takes far longer than 2 s
    assert result.returncode == 124, result.stderr[-4000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[-1]["kind"] == "summary" and "hard time limit" in lines[-1]["error"]


slow = pytest.mark.slow


@slow
def test_every_line_is_json_and_every_kind_is_there(smoke):
    lines, result = smoke
    for line in result.stdout.splitlines():
        assert isinstance(json.loads(line), dict), line  # nothing but JSON objects on stdout
    assert [line["kind"] for line in lines][0] == "environment" and lines[-1]["kind"] == "summary"
    assert set(line["kind"] for line in lines) == set(KINDS)
    assert all(isinstance(line["elapsed_s"], (int, float)) for line in lines)
    # On a CPU every measurement either ran or says why it did not: none may fail.
    assert [line for line in lines if "error" in line] == []
    assert lines[-1]["lines"]["error"] == 0 and lines[-1]["lines"]["ok"] >= 9


@slow
def test_cudnn_rows_are_skipped_on_cpu_with_the_reason(smoke):
    lines, _ = smoke
    cudnn = [line for line in lines if line.get("attention_implementation") == "cudnn"
             or line.get("compare") == "cudnn vs xla"]
    assert len(cudnn) >= 7  # 4 numerics rows, one speed row per shape, the recipe candidates
    for line in cudnn:
        assert "needs an NVIDIA GPU" in line["skipped"] and "'cpu'" in line["skipped"], line
    (dropout,) = of(lines, "attention_dropout")
    assert "needs an NVIDIA GPU" in dropout["rows"][2]["skipped"]
    (precision,) = of(lines, "precision_numerics")
    assert "needs an NVIDIA GPU" in precision["bfloat16_cudnn_skipped"]


@slow
def test_attention_numerics_reference_rows_on_real_padded_and_packed_text(smoke):
    lines, _ = smoke
    rows = {line["case"]: line for line in of(lines, "attention_numerics") if line["compare"].startswith("xla")}
    assert set(rows) == {"padding", "packed"}
    assert rows["padding"]["real_tokens"] < rows["padding"]["batch_size"] * rows["padding"]["seq_len"]
    assert rows["packed"]["segments"] > rows["packed"]["batch_size"]  # several examples per row
    for row in rows.values():
        # bfloat16 differs from float32, by about 1% of the output's scale, and nothing is NaN
        assert 0 < row["max_abs_diff_output"] < 0.1 * row["output_max_abs"]
        assert 0 < row["grad_rel_l2_diff"] < 0.1 and row["abs_diff_loss"] < 0.05
        assert row["nonfinite_output_anywhere"] is False


@slow
def test_real_pretraining_run_learns_and_its_checkpoint_round_trips(smoke):
    lines, _ = smoke
    cudnn_run, run = of(lines, "pretraining_run")  # cudnn first; on a CPU the xla run stands in
    assert cudnn_run["attention_implementation"] == "cudnn" and "needs an NVIDIA GPU" in cudnn_run["skipped"]
    assert run["attention_implementation"] == "xla"
    steps = [step for step, _ in run["loss_curve"]]
    assert steps == list(range(1, run["steps"] + 1))
    losses = [loss for _, loss in run["loss_curve"]]
    assert all(math.isfinite(x) for x in losses) and run["last_loss"] < run["first_loss"]
    assert run["heldout"]["mlm_loss"] > 0 and run["heldout"]["nsp_accuracy"] >= 0
    assert run["data"] == "benchmarks/data/gpu_check/train_128/*.tfrecord"
    (ckpt,) = of(lines, "checkpoint_roundtrip")
    assert ckpt["step"] == run["steps"] == ckpt["trainer_latest_step"]
    assert ckpt["same_structure"] and ckpt["same_dtypes_shapes"] and ckpt["iterator_state_roundtrip"]
    assert ckpt["max_abs_diff"] == 0.0 and ckpt["trainer_checkpoint_params_max_abs_diff"] == 0.0
    assert ckpt["restored_platform"] == ["cpu"]


@slow
def test_precision_numerics_compare_the_trained_params(smoke):
    lines, _ = smoke
    (row,) = of(lines, "precision_numerics")
    assert row["params"].startswith("trained ")
    for dtype in ("float32", "bfloat16"):
        assert math.isfinite(row[dtype]["mlm_loss"]) and math.isfinite(row[dtype]["nsp_loss"])
    assert abs(row["bfloat16_minus_float32_mlm_loss"]) < 0.1 and abs(row["bfloat16_minus_float32_nsp_loss"]) < 0.1


@slow
def test_speed_rows_measure_the_train_step(smoke):
    lines, _ = smoke
    measured = [line for line in of(lines, "train_step_speed") if "tokens_per_s" in line]
    assert {line["case"] for line in measured} == {"base@128", "large@128", "large@512"}
    for line in measured:
        assert line["tokens_per_s"] > 0 and 0 < line["mfu"] < 1 and line["peak_flops"] == 790e12
        assert line["param_dtypes"] == ["float32"] and line["cudnn_fmha_calls"] == 0
        assert line["compiled_memory"]["argument_size_bytes"] > 0
    assert sum(bool(line.get("cached")) for line in measured) == 2  # one tiny shape stands in for three
    (search,) = [line for line in of(lines, "max_batch") if "tried" in line]
    assert search["largest_batch_that_fits"] == 4 and search["cap_reached"] is True
    (dropout,) = of(lines, "attention_dropout")
    assert dropout["rows"][0]["attention_probs_dropout_prob"] == 0.1 and dropout["rows"][0]["tokens_per_s"] > 0


@slow
def test_no_tensorflow_or_grain_on_the_gpu_path(smoke):
    lines, _ = smoke
    summary = lines[-1]
    assert summary["tensorflow_imported"] is False and summary["grain_imported"] is False


def test_committed_instances_fit_the_size_limit():
    files = [p for p in DATA.rglob("*") if p.is_file()]
    assert any(p.suffix == ".tfrecord" for p in files)
    assert sum(p.stat().st_size for p in files) < 16 * 2**20
    meta = json.loads((DATA / "train_128" / "metadata.json").read_text())
    assert meta["counts"]["instances"] > 5000 and meta["config"]["max_seq_length"] == 128


def test_the_batch_search_doubles_then_bisects_and_stops_at_out_of_memory(monkeypatch):
    """max_batch's search on a pretend device where 300 sequences or more of BERT-large@512 are
    out of memory (the error text XLA gives on a GPU), and another error is not taken for one."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    tried = []

    def fake_speed(args, settings, steps=None, warmup=None):
        batch = settings["batch_size"]
        tried.append((batch, settings["attention_implementation"], settings["remat"], steps, warmup))
        if batch >= 300:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 81.2GiB.")
        return {"tokens_per_s": 512.0 * batch, "mfu": batch / 1000, "compiled_memory": {"peak_memory_bytes": batch}}

    monkeypatch.setattr(gpu_check, "speed", fake_speed)
    monkeypatch.setattr(gpu_check, "gpu_skip_reason", lambda: None)  # as on a GPU: cudnn
    args = argparse.Namespace(smoke=False, max_batch_start=128, max_batch_cap=2048, max_batch_point_s=0.0,
                              budget_s=1e9, dtype="bfloat16")
    out = gpu_check.max_batch(args, "full")
    assert [t[0] for t in tried] == [128, 256, 512, 384]  # doubling, then one bisection
    assert {t[1:] for t in tried} == {("cudnn", "full", 1, 1)}
    assert out["largest_batch_that_fits"] == 256 and out["first_batch_out_of_memory"] == 384
    assert out["mfu_at_largest"] == 0.256 and out["cap_reached"] is False and out["stopped_by_time_budget"] is False
    assert [t["fits"] for t in out["tried"]] == [True, True, False, False]
    assert (out["attention_implementation"], out["attention_probs_dropout_prob"], out["seq_len"]) == ("cudnn", 0.0, 512)

    def broken(args, settings, steps=None, warmup=None):
        raise ValueError("cuDNN does not support this mask")

    monkeypatch.setattr(gpu_check, "speed", broken)
    with pytest.raises(ValueError, match="cuDNN does not support"):  # an error line, not "does not fit"
        gpu_check.max_batch(args, "none")
