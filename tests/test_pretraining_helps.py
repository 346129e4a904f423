"""benchmarks/pretraining_helps.py: the label subsets, the run order and the pairing of its report
(the runs themselves are results, committed in docs/pretraining_helps/, not tests)."""

import json

import pytest
from scipy import stats

from tests.train_helpers import REPO, import_file


@pytest.fixture(scope="module")
def helps():
    return import_file(REPO / "benchmarks" / "pretraining_helps.py")


def _tsv(path, rows):
    path.write_text("sentence\tlabel\n" + "".join(f"row {i}\t{i % 2}\n" for i in range(rows)), encoding="utf-8")
    return path


def test_a_subset_keeps_the_header_and_draws_distinct_rows_by_seed(helps, tmp_path):
    source = _tsv(tmp_path / "train.tsv", 50)
    first = helps.write_subset(source, tmp_path / "a.tsv", 10, seed=0).read_text().splitlines()
    again = helps.write_subset(source, tmp_path / "b.tsv", 10, seed=0).read_text().splitlines()
    other = helps.write_subset(source, tmp_path / "c.tsv", 10, seed=1).read_text().splitlines()
    assert first[0] == "sentence\tlabel" and len(first) == 11 and len(set(first[1:])) == 10
    assert set(first[1:]) <= set(source.read_text().splitlines()[1:])
    assert first == again and first != other
    with pytest.raises(ValueError, match="asked for 51 training rows, the file has 50"):
        helps.write_subset(source, tmp_path / "d.tsv", 51, seed=0)


def test_runs_go_seed_by_seed_and_both_inits_share_each_subset(helps, tmp_path, monkeypatch):
    monkeypatch.setattr(helps, "training_file", lambda task: _tsv(tmp_path / f"{task}.tsv", 400))
    plan = helps.finetuning_stages(tmp_path, helps.pretraining_stages(tmp_path), [0, 1], [100, 300])
    keys = [(task, labels, init, seed) for task, labels, init, seed, _ in plan]
    assert keys[:6] == [("sentiment", "all", "pretrained", 0), ("sentiment", "all", "random_init", 0),
                        ("paraphrase", "all", "pretrained", 0), ("paraphrase", "all", "random_init", 0),
                        ("ner", "all", "pretrained", 0), ("ner", "all", "random_init", 0)]
    curve_seeds = [seed for _, labels, _, seed in keys if labels != "all"]
    assert curve_seeds == sorted(curve_seeds)  # every label count at seed 0 before any at seed 1
    by_key = {k: stage for k, (*_, stage) in zip(keys, plan)}
    pretrained, random_init = by_key[("paraphrase", "100", "pretrained", 1)], by_key[("paraphrase", "100", "random_init", 1)]
    assert pretrained.overrides["train_file"] == random_init.overrides["train_file"]
    assert pretrained.overrides["init_from"] == str(tmp_path / "pretrain")
    assert random_init.overrides["init_from"] == str(tmp_path / "random_init")


def test_report_pairs_by_seed_and_skips_unfinished_runs(helps, tmp_path, monkeypatch):
    monkeypatch.setattr(helps, "training_file", lambda task: _tsv(tmp_path / f"{task}.tsv", 400))
    plan = helps.finetuning_stages(tmp_path, helps.pretraining_stages(tmp_path), [0, 1, 2], [])
    accuracy = {("pretrained", 0): 0.70, ("random_init", 0): 0.60, ("pretrained", 1): 0.72,
                ("random_init", 1): 0.69, ("pretrained", 2): 0.75, ("random_init", 2): 0.74,
                ("pretrained", 3): 0.99}
    for task, _, init, seed, stage in plan:
        if task == "sentiment" and (init, seed) in accuracy and not (init == "random_init" and seed == 2):
            stage.workdir.mkdir(parents=True)
            (stage.workdir / "results.json").write_text(json.dumps({"final_metrics": {"accuracy": accuracy[init, seed]}}))
    (row,) = helps.paired_rows(helps.finished_values(plan))
    assert row["seeds"] == [0, 1]  # seed 2 has no random-init result, so it is left out of both
    assert row["wins"] == 2
    assert row["p"] == pytest.approx(stats.ttest_rel([0.70, 0.72], [0.60, 0.69], alternative="greater").pvalue)


def test_epochs_replace_the_step_budget_and_get_their_own_folder(helps, tmp_path, monkeypatch):
    from bert_jax import run_config, sweep
    from bert_jax.config import BertConfig

    monkeypatch.setattr(helps, "training_file", lambda task: _tsv(tmp_path / f"{task}.tsv", 400))
    plan = helps.finetuning_stages(tmp_path, helps.pretraining_stages(tmp_path), [0], [100], ("sentiment",), epochs=3)
    for task, labels, init, seed, stage in plan:
        assert stage.workdir == tmp_path / "finetune_3_epochs" / task / labels / init / "seed_0"
        assert stage.overrides["num_epochs"] == 3 and stage.overrides["warmup_proportion"] == 0.1
        assert "train.num_steps" not in stage.overrides and "optimizer.warmup_steps" not in stage.overrides
        # The config bert_jax.main runs (init_from left out: no checkpoint here) resolves 3 epochs.
        config = sweep.load_experiment_config(stage.config)
        config.update_from_flattened_dict({k: v for k, v in stage.overrides.items() if k != "init_from"})
        rows = 400 if labels == "all" else 100
        resolved = run_config.resolve_config(config, num_train_examples=rows, checkpoint=BertConfig())
        assert resolved.train.num_steps == -(-3 * rows // 32)
        assert resolved.optimizer.warmup_steps == int(0.1 * resolved.train.num_steps)
    default = helps.finetuning_stages(tmp_path, helps.pretraining_stages(tmp_path), [0], [], ("sentiment",))
    assert default[0][-1].overrides["train.num_steps"] == 300
    assert default[0][-1].workdir == tmp_path / "finetune/sentiment/all/pretrained/seed_0"
