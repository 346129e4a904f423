"""The sweep runner: planning, skipping finished stages, tables and plots (no training here)."""

import json
import pathlib
import statistics

import pytest

from bert_jax import sweep as sweep_lib
from bert_jax.sweep import launch, report

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
    # --seeds and --variants narrow the plan.
    argv = [str(ablation_file), "--workdir", str(tmp_path / "w"), "--print_commands", "--seeds", "1",
            "--variants", "nsp_off"]
    assert sweep_lib.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("nsp_off/seed_1" in line for line in lines)
    with pytest.raises(SystemExit):
        sweep_lib.main(argv[:4] + ["--seeds", "one"])


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
    assert header == ["variant", "seeds", "pretrained encoder", "finetune/accuracy", "pretrain/loss"]
    row = {r["variant"]: r for r in table}["nsp_on"]
    mean, std = statistics.mean([0.70, 0.74]), statistics.stdev([0.70, 0.74])
    assert row["finetune/accuracy"] == f"{mean:.4f} ± {std:.4f}"
    assert row["seeds"] == "2"

    sweep_lib.write_tables(tmp_path / "w", header, table)
    assert (tmp_path / "w" / "results.md").read_text().count("\n") == 4
    plots = sweep_lib.plot_curves(runs, tmp_path / "w", {"finetune": "accuracy"})
    assert [p.name for p in plots] == ["pretrain_loss.png", "finetune_eval.png"]
    assert all(p.stat().st_size > 1000 for p in plots)


def test_report_only_tabulates_finished_stages_and_launches_nothing(ablation_file, tmp_path, capsys):
    """Half the runs finished: --report_only writes their table, and the unfinished stages stay
    unstarted (a launch of this file's stages would make their workdirs)."""
    workdir = tmp_path / "w"
    runs = sweep_lib.plan_runs(sweep_lib.load_sweep(str(ablation_file)), workdir)
    for run in runs[:2]:
        _fake_results(run.stages[0], {"loss": 4.0}, [(1, 9.0), (2, 4.0)])
        _fake_results(run.stages[1], {"accuracy": 0.7 + run.seed / 100}, [(1, 0.5), (2, 0.7)])
    assert sweep_lib.main([str(ablation_file), "--workdir", str(workdir), "--report_only"]) == 0
    assert not any(stage.workdir.exists() for run in runs[2:] for stage in run.stages)
    assert not (workdir / "data").exists()  # no prepare step ran either
    table = (workdir / "results.md").read_text()
    assert "| nsp_on | 2 |" in table and "nsp_off" not in table
    with pytest.raises(SystemExit):
        sweep_lib.main([str(ablation_file), "--workdir", str(tmp_path / "none"), "--report_only"])


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


def test_a_prepare_step_reads_an_earlier_steps_output(tmp_path):
    """`{data}` in a prepare step's arguments is the folder of every step's output, so the CPU
    tables' instances read the in-domain text that the step before them wrote; run for real."""
    (tmp_path / "corpus.txt").write_text("some text\n")
    sweep = {"prepare": {"first": ["zipfile", "-c", "{out}/a.zip", str(tmp_path / "corpus.txt")],
                         "second": ["zipfile", "-c", "{out}/b.zip", "{data}/first/a.zip"]},
             "pretrain": "experiments/pretrain.py:tiny", "variants": {"a": {}}}
    workdir = tmp_path / "w"
    first, second = sweep_lib.plan_prepare(sweep, workdir)
    assert second.command()[-1] == str(workdir / "data/first/a.zip")
    for step in (first, second):
        sweep_lib.run_prepare(step)
    import zipfile
    assert zipfile.ZipFile(workdir / "data/second/b.zip").namelist() == ["a.zip"]


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
    assert sweep_lib.final_metrics(stage) == {"pretrain/train_loss": 4.5, "pretrain/train_accuracy": 4.5}


MULTI = {
    "pretrain": "experiments/pretrain.py:tiny",
    "common": {"train.num_steps": 10},
    "evaluations": {
        "sentiment": {"config": "experiments/finetune_tsv.py:rotten_tomatoes", "overrides": {"num_epochs": 1}},
        "ner": {"config": "experiments/finetune_ner.py:wnut16", "overrides": {"num_epochs": 2}},
    },
    "variants": {
        "ltr": {"model.causal_attention": True},
        "ltr_bilstm": {"pretrain": {"model.causal_attention": True}, "finetune": {"task.head": "bilstm"},
                       "evaluations": {"ner": {"num_epochs": 5}}},
        "mlm": {},
        "random_init": {"pretrain": {"train.num_steps": 0}},
    },
    "seeds": [0, 1],
    "paper": {"title": "Table X", "citation": "Devlin et al. 2019, Table X", "columns": ["SST-2", "NER", "MNLI"],
              "rows": {"ltr": ["LTR & No NSP", 92.1, 90.0, 82.1], "mlm": ["BERT-BASE", 92.7, 91.0, 84.4]},
              "ours": {"SST-2": "sentiment/accuracy", "NER": "exp:ner/loss"}},
}


def test_evaluations_give_one_stage_each_and_equal_pretraining_is_shared(tmp_path):
    sweep_lib.check_sweep(MULTI, "test")
    runs = sweep_lib.plan_runs(MULTI, tmp_path)
    by = {(r.variant, r.seed): r for r in runs}
    ltr, bilstm, mlm = by[("ltr", 1)], by[("ltr_bilstm", 1)], by[("mlm", 1)]
    assert [s.name for s in ltr.stages] == ["pretrain", "sentiment", "ner"]
    # LTR + BiLSTM differs from LTR only in fine-tuning: one pretraining run, LTR's.
    assert bilstm.stages[0].workdir == ltr.stages[0].workdir == tmp_path / "ltr/seed_1/pretrain"
    assert mlm.stages[0].workdir == tmp_path / "mlm/seed_1/pretrain"
    assert by[("ltr", 0)].stages[0].workdir != ltr.stages[0].workdir  # seeds never share
    # Overrides: the evaluation's, then the variant's for all, then its per-evaluation ones.
    sentiment, ner = bilstm.stages[1:]
    assert sentiment.workdir == tmp_path / "ltr_bilstm/seed_1/sentiment"
    assert sentiment.overrides == {"num_epochs": 1, "task.head": "bilstm", "init_from": str(ltr.stages[0].workdir),
                                   "seed": 1}
    assert ner.overrides["num_epochs"] == 5 and ner.overrides["task.head"] == "bilstm"
    assert "task.head" not in ltr.stages[1].overrides
    only = sweep_lib.plan_runs(MULTI, tmp_path, only=["ltr_bilstm"])
    assert [r.variant for r in only] == ["ltr_bilstm"] * 2 and only[1].stages[0].workdir == ltr.stages[0].workdir
    with pytest.raises(ValueError, match=r"unknown variants \['nope'\]"):
        sweep_lib.plan_runs(MULTI, tmp_path, only=["nope"])


def test_pretrain_seed_pretrains_each_variant_once_for_every_fine_tuning_seed(tmp_path):
    shared = {**MULTI, "seeds": [0, 1, 2], "pretrain_seed": 7}
    sweep_lib.check_sweep(shared, "test")
    runs = sweep_lib.plan_runs(shared, tmp_path)
    for variant in ("ltr", "mlm", "random_init"):
        mine = [r for r in runs if r.variant == variant]
        pretrain = mine[0].stages[0]  # one stage for all seeds: the first seed's workdir, at seed 7
        assert all(r.stages[0] == pretrain for r in mine)
        assert pretrain.workdir == tmp_path / variant / "seed_0/pretrain" and pretrain.overrides["seed"] == 7
        finetune_seeds = [(s.overrides["seed"], s.overrides["init_from"]) for r in mine for s in r.stages[1:2]]
        assert finetune_seeds == [(0, str(pretrain.workdir)), (1, str(pretrain.workdir)), (2, str(pretrain.workdir))]
    # Without it, every seed pretrains its own model.
    per_seed = sweep_lib.plan_runs({**MULTI, "seeds": [0, 1, 2]}, tmp_path)
    assert len({r.stages[0].workdir for r in per_seed if r.variant == "mlm"}) == 3
    for bad in ("0", 1.0, True):
        with pytest.raises(ValueError, match=f"'pretrain_seed' must be an int .*found {bad!r}"):
            sweep_lib.check_sweep({**MULTI, "pretrain_seed": bad}, "test")


def test_shared_pretraining_runs_once(tmp_path):
    runs = sweep_lib.plan_runs(MULTI, tmp_path)
    shared = [r for r in runs if r.seed == 0 and r.variant in ("ltr", "ltr_bilstm")]
    for run in shared:
        for stage in run.stages[1:]:
            _fake_results(stage, {"accuracy": 0.5}, [(1, 0.5)])
    launched = []
    real_call = launch.subprocess.call

    def fake_call(cmd, **kwargs):
        launched.append(cmd)
        workdir = pathlib.Path(next(a for a in cmd if a.startswith("--workdir=")).split("=", 1)[1])
        (workdir / "results.json").write_text("{}")
        return 0

    launch.subprocess.call = fake_call
    try:
        assert [sweep_lib.execute(r) for r in shared] == ["ltr seed 0: done", "ltr_bilstm seed 0: done"]
    finally:
        launch.subprocess.call = real_call
    assert len(launched) == 1 and "--config=experiments/pretrain.py:tiny" in launched[0]


def _ci95(values):
    """Mean ± t(0.975, n-1) s / sqrt(n), t from a textbook table (n = 2 and 3)."""
    t = {2: 12.706, 3: 4.303}[len(values)]
    return statistics.mean(values), t * statistics.stdev(values) / len(values) ** 0.5


def _welch_p_greater(a, b):
    """One-sided Welch t-test p-value, written out here (t statistic, Welch-Satterthwaite df)."""
    from scipy.special import stdtr
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.mean(a) - statistics.mean(b)) / (va + vb) ** 0.5
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return 1 - stdtr(df, t)


def test_paper_table_puts_the_papers_numbers_and_the_control_beside_ours(tmp_path):
    runs = sweep_lib.plan_runs(MULTI, tmp_path)
    accuracy = {("ltr", 0): 0.70, ("ltr", 1): 0.74, ("mlm", 0): 0.80, ("mlm", 1): 0.82,
                ("random_init", 0): 0.75, ("random_init", 1): 0.76}
    for run in runs:
        if (run.variant, run.seed) not in accuracy:
            continue
        _fake_results(run.stages[1], {"accuracy": accuracy[(run.variant, run.seed)]}, [(1, 0.5)])
        _fake_results(run.stages[2], {"loss": 1.0 + run.seed + (0.5 if run.variant == "random_init" else 0)},
                      [(1, 0.5)])
    header, table = sweep_lib.paper_table(runs, MULTI["paper"])
    assert header == ["variant", "paper row", "seeds", "pretrained encoder", "SST-2 (ours)", "SST-2 vs random_init",
                      "SST-2 (paper)", "NER (ours)", "NER vs random_init", "NER (paper)", "MNLI (paper)"]
    rows = {r["variant"]: r for r in table}
    assert rows["ltr"]["paper row"] == "LTR & No NSP" and rows["ltr"]["SST-2 (paper)"] == "92.1"
    mean, half = _ci95([70.0, 74.0])
    assert rows["ltr"]["SST-2 (ours)"] == f"{mean:.2f} ± {half:.2f}"
    e, e2 = 2.718281828459045, 7.38905609893065
    mean, half = _ci95([e, e2])
    assert rows["mlm"]["NER (ours)"] == f"{mean:.2f} ± {half:.2f}"
    assert rows["ltr_bilstm"]["seeds"] == "0" and rows["ltr_bilstm"]["SST-2 (ours)"] == ""
    # Beside every row the control: mlm (81) beats random init (75.5); ltr (72) does not.
    assert rows["random_init"]["SST-2 vs random_init"] == "control"
    p_mlm = _welch_p_greater([80.0, 82.0], [75.0, 76.0])
    assert rows["mlm"]["SST-2 vs random_init"] == f"+5.50, p={p_mlm:.3f}" and p_mlm < 0.05
    p_ltr = _welch_p_greater([70.0, 74.0], [75.0, 76.0])
    assert rows["ltr"]["SST-2 vs random_init"] == f"-3.50, p={p_ltr:.3f}: does not beat"
    # A perplexity column (exp of a loss): lower is better, so mlm's lower one beats the control.
    import math
    mlm_ppl, control_ppl = [math.exp(1.0), math.exp(2.0)], [math.exp(1.5), math.exp(2.5)]
    p_ppl = _welch_p_greater(control_ppl, mlm_ppl)  # the control's perplexity above mlm's
    assert rows["mlm"]["NER vs random_init"].startswith("-") and f"p={p_ppl:.3f}" in rows["mlm"]["NER vs random_init"]
    sweep_lib.write_tables(tmp_path, *sweep_lib.summarise(runs), (MULTI["paper"], header, table),
                           sweep_lib.detectable_differences(runs, MULTI["paper"]))
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("## Table X\n\nPaper: Devlin et al. 2019, Table X\n") and "## All final metrics" in text
    assert "Detectable at this budget: SST-2: detects differences >= " in text
    assert (tmp_path / "paper_table.csv").read_text().splitlines()[0].startswith(
        "variant,paper row,seeds,pretrained encoder,SST-2 (ours),SST-2 vs random_init")


def _paired_p_greater(a, b):
    """One-sided paired t-test p-value, written out here: t of the mean difference, n - 1 df."""
    from scipy.special import stdtr
    diffs = [x - y for x, y in zip(a, b)]
    t = statistics.mean(diffs) / (statistics.stdev(diffs) / len(diffs) ** 0.5)
    return 1 - stdtr(len(diffs) - 1, t)


def test_per_seed_table_pairs_each_seed_with_the_controls_same_seed(monkeypatch, tmp_path):
    """Seed 1 of the control is weak and seed 2 strong: paired by seed, `a` is ahead at every seed
    (p < 0.05), which the unpaired means alone would not show; a seed the control lacks is left out,
    a perplexity column counts lower as ahead, and results.md carries the table."""
    runs = [sweep_lib.Run(v, s, (sweep_lib.Stage("sentiment", "c.py", pathlib.Path("/nonexistent"), {}),))
            for v in ("a", "random_init") for s in (0, 1, 2, 3)]
    values = {("a", 0): 0.62, ("a", 1): 0.53, ("a", 2): 0.81, ("a", 3): 0.90,
              ("random_init", 0): 0.60, ("random_init", 1): 0.50, ("random_init", 2): 0.79}
    paper = {"title": "T", "citation": "C", "columns": ["SST-2", "LM (ppl)"], "rows": {"a": ["A", 93.0, 4.0]},
             "ours": {"SST-2": "sentiment/accuracy", "LM (ppl)": "exp:sentiment/loss"}}
    run_of = {id(stage): run for run in runs for stage in run.stages}

    def metrics(stage):
        key = (run_of[id(stage)].variant, run_of[id(stage)].seed)
        return {"sentiment/accuracy": values[key], "sentiment/loss": 1.0 - values[key]} if key in values else {}

    monkeypatch.setattr(report, "final_metrics", metrics)
    header, table = sweep_lib.per_seed_table(runs, paper)
    assert header[:3] == ["variant", "column", "per seed (ours)"]
    accuracy, ppl = table
    assert accuracy["variant"] == "a" and accuracy["column"] == "SST-2"
    assert accuracy["per seed (ours)"] == "62.00, 53.00, 81.00"  # seed 3 has no control to pair with
    assert accuracy["random_init at the same seeds"] == "60.00, 50.00, 79.00"
    assert accuracy["ahead"] == "3/3"
    p = _paired_p_greater([62.0, 53.0, 81.0], [60.0, 50.0, 79.0])
    assert accuracy["paired p"] == f"{p:.3f}" and p < 0.05
    assert _welch_p_greater([62.0, 53.0, 81.0], [60.0, 50.0, 79.0]) > 0.3  # unpaired, the same numbers show nothing
    # exp(1 - accuracy): a lower perplexity wherever the accuracy is higher, so ahead at every seed.
    assert ppl["column"] == "LM (ppl)" and ppl["ahead"] == "3/3"
    sweep_lib.write_tables(tmp_path, *sweep_lib.summarise(runs), (paper, *sweep_lib.paper_table(runs, paper)),
                           "", (header, table))
    assert "## Per seed, against random_init at the same fine-tuning seed" in (tmp_path / "results.md").read_text()


def test_detectable_difference_follows_the_seed_spread(monkeypatch):
    """(t(0.95, df) + t(0.8, df)) * pooled std * sqrt(2 / n): with 3 rows of 2 seeds, df = 3."""
    runs = [sweep_lib.Run(v, s, (sweep_lib.Stage("sentiment", "c.py", pathlib.Path("/nonexistent"), {}),))
            for v in ("a", "b", "random_init") for s in (0, 1)]
    values = {("a", 0): 0.70, ("a", 1): 0.72, ("b", 0): 0.60, ("b", 1): 0.66, ("random_init", 0): 0.5,
              ("random_init", 1): 0.5}
    paper = {"columns": ["SST-2"], "rows": {"a": ["A", 93.0], "b": ["B", 90.0]}, "ours": {"SST-2": "sentiment/accuracy"}}
    run_of = {id(stage): run for run in runs for stage in run.stages}
    monkeypatch.setattr(report, "final_metrics", lambda stage: {
        "sentiment/accuracy": values[(run_of[id(stage)].variant, run_of[id(stage)].seed)]})
    line = sweep_lib.detectable_differences(runs, paper)
    pooled = ((2.0 ** 2 / 2 + 6.0 ** 2 / 2 + 0.0) / 3) ** 0.5  # per-row variances of (70, 72), (60, 66), (50, 50)
    expected = (2.353 + 0.978) * pooled * (2 / 2) ** 0.5  # t(0.95, 3) = 2.353, t(0.8, 3) = 0.978 (tables)
    got = float(line.split(">= ")[1].split(" ")[0])
    assert got == pytest.approx(expected, abs=0.02)
    assert "differ by up to 3.00, so none of its differences" in line


def test_a_column_the_paper_lacks_is_not_read_as_undetectable(monkeypatch):
    """Table 5's NER column is ours only (None in every paper row): its line gives what the seeds
    detect and says the paper has nothing to compare, not that its differences of 0 are missed."""
    runs = [sweep_lib.Run(v, s, (sweep_lib.Stage("ner", "c.py", pathlib.Path("/nonexistent"), {}),))
            for v in ("a", "random_init") for s in (0, 1)]
    values = {("a", 0): 0.30, ("a", 1): 0.32, ("random_init", 0): 0.2, ("random_init", 1): 0.24}
    paper = {"columns": ["NER"], "rows": {"a": ["A", None]}, "ours": {"NER": "ner/f1"}}
    run_of = {id(stage): run for run in runs for stage in run.stages}
    monkeypatch.setattr(report, "final_metrics", lambda stage: {
        "ner/f1": values[(run_of[id(stage)].variant, run_of[id(stage)].seed)]})
    line = sweep_lib.detectable_differences(runs, paper)
    assert line.startswith("Detectable at this budget: NER: detects differences >= ")
    assert line.endswith("; the paper reports no differences in this column.")
    assert "none of its differences" not in line


def test_a_column_that_every_seed_shares_has_no_detectable_difference(monkeypatch):
    """Table 6's perplexity comes from one pretraining per variant, so its seeds repeat one
    number: the line says so instead of claiming that differences >= 0 are detectable."""
    runs = [sweep_lib.Run(v, s, (sweep_lib.Stage("pretrain", "c.py", pathlib.Path("/nonexistent"), {}),))
            for v in ("a", "b", "random_init") for s in (0, 1, 2)]
    loss = {"a": 7.1, "b": 7.3, "random_init": 10.3}
    paper = {"columns": ["LM (ppl)"], "rows": {"a": ["A", 5.8], "b": ["B", 4.7]}, "ours": {"LM (ppl)": "exp:pretrain/mlm_loss"}}
    run_of = {id(stage): run for run in runs for stage in run.stages}
    monkeypatch.setattr(report, "final_metrics", lambda stage: {"pretrain/mlm_loss": loss[run_of[id(stage)].variant]})
    line = sweep_lib.detectable_differences(runs, paper)
    assert line == ("Detectable at this budget: LM (ppl): one value per row (its seeds share one run), "
                    "so no seed spread to size a difference by.")


def test_a_paper_table_without_its_control_row_is_an_error():
    variants = {k: v for k, v in MULTI["variants"].items() if k != "random_init"}
    with pytest.raises(ValueError, match="needs a 'random_init' variant"):
        sweep_lib.check_sweep({**MULTI, "variants": variants}, "f.py")


def test_a_variant_whose_encoder_collapsed_is_marked_in_both_tables(tmp_path):
    """One seed of `mlm` above the collapse threshold (the 100-step run measured 0.998) marks its
    row; `ltr` (0.35, random init's level) is ok, and so is `ltr_bilstm`, which shares its
    pretraining; a variant whose pretraining has no statistic is blank."""
    runs = sweep_lib.plan_runs(MULTI, tmp_path)
    cosine = {("mlm", 0): 0.62, ("mlm", 1): 0.998, ("ltr", 0): 0.35, ("ltr", 1): 0.31}
    for run in runs:
        if (run.variant, run.seed) in cosine:
            _fake_results(run.stages[0], {"hidden_cosine": cosine[(run.variant, run.seed)]}, [(1, 0.5)])
        _fake_results(run.stages[1], {"accuracy": 0.6}, [(1, 0.5)])
    for header, table in (sweep_lib.summarise(runs), sweep_lib.paper_table(runs, MULTI["paper"])):
        rows = {r["variant"]: r for r in table}
        assert rows["mlm"]["pretrained encoder"] == "COLLAPSED (cosine 0.998 > 0.9)"
        assert rows["ltr"]["pretrained encoder"] == "ok (cosine <= 0.350)"
        assert rows["ltr_bilstm"]["pretrained encoder"] == "ok (cosine <= 0.350)"
    mlm_seed_0 = next(run for run in runs if (run.variant, run.seed) == ("mlm", 0))
    _fake_results(mlm_seed_0.stages[0], {"loss": 3.0}, [(1, 0.5)])  # no statistic there; seed 1 still marks
    assert {r["variant"]: r for r in sweep_lib.summarise(runs)[1]}["mlm"]["pretrained encoder"].startswith("COLLAPSED")
    for run in runs:
        if run.variant == "ltr":
            _fake_results(run.stages[0], {"loss": 3.0}, [(1, 0.5)])
    assert {r["variant"]: r for r in sweep_lib.summarise(runs)[1]}["ltr"]["pretrained encoder"] == ""


@pytest.mark.parametrize("change,message", [
    ({"finetune": "x.py"}, "not both"),
    ({"evaluations": {"pretrain": {"config": "x.py"}}}, "may not be named 'pretrain'"),
    ({"evaluations": {"a": {"cfg": "x.py"}}}, "evaluation 'a' must be"),
    ({"variants": {"v": {"pretrain": {}, "model.x": 1}}}, "mixes parts"),
    ({"variants": {"v": {"evaluations": {"squad": {}}}}}, r"evaluations \['squad'\]"),
    ({"paper": {**MULTI["paper"], "rows": {"ltr": ["LTR", 1.0]}}}, "paper row 'ltr'"),
    ({"paper": {**MULTI["paper"], "ours": {"QNLI": "sentiment/accuracy"}}}, r"columns \['QNLI'\]"),
])
def test_bad_multi_task_sweeps_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        sweep_lib.check_sweep({**MULTI, **change}, "f.py")


def test_ablation_file_argument_reaches_get_sweep(tmp_path):
    path = tmp_path / "a.py"
    path.write_text("def get_sweep(budget='cpu'):\n"
                    "    return {'pretrain': 'p.py', 'common': {'budget': budget}, 'variants': {'v': {}}}\n")
    assert sweep_lib.load_sweep(str(path))["common"] == {"budget": "cpu"}
    assert sweep_lib.load_sweep(f"{path}:paper")["common"] == {"budget": "paper"}


def test_printed_commands_run_as_pasted_with_the_variables_of_the_shell_that_runs_them(tmp_path, capsys,
                                                                                        monkeypatch):
    """With $BERT_JAX_DATA unset where the commands are printed (set on the cluster), each line,
    run by bash, hands bert_jax.main the expanded path; shlex's single quotes would not."""
    import subprocess
    monkeypatch.delenv("BERT_JAX_DATA", raising=False)
    path = tmp_path / "a.py"
    path.write_text("def get_sweep():\n    return {'pretrain': 'p.py', 'variants': {'v': {'data.input_files': "
                    "'$BERT_JAX_DATA/corpus/*.txt', 'data.vocab_file': 'a b.txt'}}}\n")
    assert sweep_lib.main([str(path), "--workdir", str(tmp_path / "w"), "--print_commands"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[0]
    echoed = subprocess.run(["bash", "-c", "printf '%s\\n' " + line], capture_output=True, text=True,
                            env={"BERT_JAX_DATA": "/cluster/data", "PATH": "/usr/bin:/bin"}).stdout.splitlines()
    assert "--config.data.input_files=/cluster/data/corpus/*.txt" in echoed
    assert "--config.data.vocab_file=a b.txt" in echoed
