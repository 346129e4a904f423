"""The sweep runner: planning, skipping finished stages, tables and plots (no training here)."""

import json
import statistics

import pytest

from bert_jax import sweep as sweep_lib

ABLATION = '''
def get_sweep():
    return {
        "pretrain": "experiments/pretrain.py:tiny",
        "finetune": "experiments/finetune_tsv.py",
        "common": {"train.num_steps": 10},
        "variants": {"nsp_on": {"task.use_nsp": True}, "nsp_off": {"task.use_nsp": False}},
        "seeds": [0, 1],
    }
'''


@pytest.fixture
def ablation_file(tmp_path):
    path = tmp_path / "ablation.py"
    path.write_text(ABLATION)
    return path


def _fake_results(stage, metrics, curve):
    stage.workdir.mkdir(parents=True, exist_ok=True)
    (stage.workdir / "results.json").write_text(json.dumps({"final_metrics": metrics, "main_metric": "accuracy"}))
    with open(stage.workdir / "metrics.jsonl", "w") as f:
        for step, value in curve:
            f.write(json.dumps({"step": step, "split": "train", "loss": value, "accuracy": value}) + "\n")
            f.write(json.dumps({"step": step, "split": "eval", "accuracy": value}) + "\n")


def test_plan_expands_variants_times_seeds_and_chains_init_from(ablation_file, tmp_path):
    runs = sweep_lib.plan_runs(sweep_lib.load_sweep(str(ablation_file)), tmp_path / "w")
    assert [(r.variant, r.seed) for r in runs] == [("nsp_on", 0), ("nsp_on", 1), ("nsp_off", 0), ("nsp_off", 1)]
    pretrain, finetune = runs[2].stages
    assert pretrain.overrides == {"train.num_steps": 10, "task.use_nsp": False, "seed": 0}
    assert finetune.overrides["init_from"] == str(pretrain.workdir)
    cmd = pretrain.command()
    assert cmd[1:4] == ["-m", "bert_jax.main", "--config=experiments/pretrain.py:tiny"]
    assert "--config.task.use_nsp=False" in cmd


def test_print_commands_lists_every_stage(ablation_file, tmp_path, capsys):
    assert sweep_lib.main([str(ablation_file), "--workdir", str(tmp_path / "w"), "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and all("bert_jax.main" in line for line in lines)
    assert not (tmp_path / "w").exists()


def test_finished_stages_are_skipped_and_table_has_mean_and_std(ablation_file, tmp_path):
    runs = sweep_lib.plan_runs(sweep_lib.load_sweep(str(ablation_file)), tmp_path / "w")
    accuracies = {("nsp_on", 0): 0.70, ("nsp_on", 1): 0.74, ("nsp_off", 0): 0.60, ("nsp_off", 1): 0.66}
    for run in runs:
        acc = accuracies[(run.variant, run.seed)]
        _fake_results(run.stages[0], {"loss": 5.0 - acc}, [(1, 9.0), (2, 5.0 - acc)])
        _fake_results(run.stages[1], {"accuracy": acc}, [(1, 0.5), (2, acc)])
    # Every stage is finished, so nothing may be launched (a launch would fail: no such config).
    assert all(sweep_lib.execute(run).endswith("done") for run in runs)

    header, table = sweep_lib.summarise(runs)
    assert header == ["variant", "seeds", "finetune/accuracy", "pretrain/loss"]
    row = {r["variant"]: r for r in table}["nsp_on"]
    mean, std = statistics.mean([0.70, 0.74]), statistics.stdev([0.70, 0.74])
    assert row["finetune/accuracy"] == f"{mean:.4f} ± {std:.4f}"
    assert row["seeds"] == "2"

    sweep_lib.write_tables(tmp_path / "w", header, table)
    assert (tmp_path / "w" / "results.md").read_text().count("\n") == 4
    plots = sweep_lib.plot_curves(runs, tmp_path / "w", "accuracy")
    assert [p.name for p in plots] == ["pretrain_loss.png", "finetune_eval.png"]
    assert all(p.stat().st_size > 1000 for p in plots)


def test_failed_stage_is_reported_and_later_stages_not_run(tmp_path):
    stage = sweep_lib.Stage("pretrain", "no/such/config.py", tmp_path / "p", {})
    after = sweep_lib.Stage("finetune", "no/such/config.py", tmp_path / "f", {})
    status = sweep_lib.execute(sweep_lib.Run("v", 0, (stage, after)))
    assert "pretrain FAILED" in status
    assert not after.workdir.exists()


def test_bad_ablation_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def get_sweep():\n    return {'pretrain': 'x', 'variants': {'a': {}}, 'varaints': {}}\n")
    with pytest.raises(ValueError, match="unknown keys \\['varaints'\\]"):
        sweep_lib.load_sweep(str(path))


def test_prepare_runs_once_and_overrides_name_its_output(tmp_path, monkeypatch):
    monkeypatch.setenv("CORPUS_DIR", str(tmp_path))
    (tmp_path / "corpus.txt").write_text("some text\n")
    sweep = {
        # `python -m zipfile -c OUT FILE` stands in for a data-building command.
        "prepare": {"archive": ["zipfile", "-c", "{out}/corpus.zip", "$CORPUS_DIR/corpus.txt"]},
        "pretrain": "experiments/pretrain.py:tiny",
        "variants": {"a": {"data.input_files": "{data}/archive/*.zip"}},
    }
    workdir = tmp_path / "w"
    (step,) = sweep_lib.plan_prepare(sweep, workdir)
    assert step.command()[-2:] == [str(workdir / "data/archive/corpus.zip"), str(tmp_path / "corpus.txt")]
    sweep_lib.run_prepare(step)
    archive = workdir / "data/archive/corpus.zip"
    assert archive.is_file()
    archive.unlink()
    sweep_lib.run_prepare(step)  # done before: not run again
    assert not archive.exists()
    (run,) = sweep_lib.plan_runs(sweep, workdir)
    assert run.stages[0].overrides["data.input_files"] == f"{workdir}/data/archive/*.zip"


def test_grid_mode_expands_the_papers_finetuning_grid(repo_root, tmp_path, capsys):
    spec = f"{repo_root}/experiments/finetune_tsv.py:sentiment"
    sweep = sweep_lib.grid_sweep(spec, {"init_from": "/ckpt"})
    assert len(sweep["variants"]) == 3 * 2 * 3  # lr x batch x epochs, Devlin et al. appendix A.3
    assert sweep["variants"]["learning_rate=5e-05_batch_size=16_num_epochs=2"] == {
        "optimizer.learning_rate": 5e-05, "train.batch_size": 16, "num_epochs": 2}
    runs = sweep_lib.plan_runs(sweep, tmp_path)
    assert all([s.name for s in run.stages] == ["finetune"] for run in runs)
    assert runs[0].stages[0].overrides["init_from"] == "/ckpt"

    assert sweep_lib.main(["--grid", spec, "--set", "init_from=/ckpt", "--workdir", str(tmp_path), "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 18 and all("--config.init_from=/ckpt" in line for line in lines)


def test_best_variant_follows_the_direction_of_the_main_metric(tmp_path):
    sweep = {"finetune": "x.py", "variants": {"a": {}, "b": {}, "c": {}}}
    runs = sweep_lib.plan_runs(sweep, tmp_path)
    for run, value in zip(runs, (0.5, 0.9, 0.7)):
        stage = run.stages[0]
        stage.workdir.mkdir(parents=True)
        (stage.workdir / "results.json").write_text(json.dumps(
            {"main_metric": "loss", "higher_is_better": False, "final_metrics": {"loss": value}}))
    assert sweep_lib.best_variant(runs) == ("a", "loss", 0.5)


def test_a_stage_without_eval_reports_its_last_training_losses(tmp_path):
    stage = sweep_lib.Stage("pretrain", "x.py", tmp_path, {})
    _fake_results(stage, {}, [(1, 9.0), (2, 4.5)])
    assert sweep_lib._final_metrics(stage) == {"pretrain/train_loss": 4.5, "pretrain/train_accuracy": 4.5}
