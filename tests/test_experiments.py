"""Every experiment file, with every argument it documents, gives a complete and valid config.

No training here: each config is locked (as main.py locks it) and resolved as the trainer
resolves it (`run_config.resolve_config`, with a fine-tuning config's facts stood in: 1,000 training
examples and a BERT-base checkpoint); its model section must then build a BertConfig, its task
must be registered, its optimizer must build, its mesh rules must exist,
and a pretraining config's data section must pass the input pipeline's own validation.
Each experiment file lists its documented arguments in DOCUMENTED_ARGS.
"""

import pathlib

import pytest

from bert_jax import optim, run_config, sharding
from bert_jax.config import BertConfig
from bert_jax.tasks import TASKS
from tests.train_helpers import import_file

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENT_FILES = sorted(p for p in (REPO / "experiments").glob("*.py") if p.name != "__init__.py")
SECTIONS = ("seed", "init_from", "train", "optimizer", "mesh", "checkpoint", "logging", "distributed", "model", "task")


def _cases():
    for path in EXPERIMENT_FILES:
        args = getattr(import_file(path), "DOCUMENTED_ARGS", None)
        if args is None:
            yield pytest.param(path, None, id=f"{path.stem}:<no DOCUMENTED_ARGS>")
            continue
        for arg in args:
            yield pytest.param(path, arg, id=f"{path.stem}:{arg}")


def test_there_are_experiment_files():
    names = {p.stem for p in EXPERIMENT_FILES}
    assert {"pretrain", "quickstart", "finetune_glue", "finetune_squad", "finetune_ner", "finetune_tsv",
            "finetune_summarization"} <= names


@pytest.mark.parametrize("path,arg", list(_cases()))
def test_experiment_config_is_complete_and_valid(path, arg):
    assert arg is not None, f"{path} has no DOCUMENTED_ARGS listing the arguments its docstring documents"
    config = import_file(path).get_config(arg)
    config.lock()
    check_config(config, f"{path.name}:{arg}")


def check_config(config, label: str) -> None:
    """The checks a locked config must pass before any training (see the module docstring)."""
    missing = [name for name in SECTIONS if name not in config]
    assert not missing, f"{label} lacks config sections {missing}"
    checkpoint = BertConfig.preset("base") if "num_epochs" in config else None  # fine-tuning: from init_from
    config = run_config.resolve_config(config, num_train_examples=1000, checkpoint=checkpoint)
    BertConfig.from_dict(config.model.to_dict())  # raises on an invalid architecture
    assert config.task.name in TASKS, f"{label}: task {config.task.name!r} is not registered"
    run_config.validate(config)
    sharding.axis_rules(config.mesh.rules)
    optim.make_optimizer(config.optimizer, optim.schedule_steps(config.train.num_steps, config.optimizer.warmup_steps))

    if config.task.name == "pretraining" and not config.task.get("synthetic_data", False):
        from bert_jax.tasks.pretraining import PretrainingTask
        from data_pipelines.input_pipeline import resolve_data_config

        data = config.data.to_dict()
        # The fields a user gives on the command line (the docstrings' commands show them).
        if not (data["input_files"] or data["tfds_name"]):
            data["input_files"] = "given/on/the/command/line/*.tfrecord"
        if data["dynamic_masking"] and not data["vocab_file"]:
            data["vocab_file"] = "given/on/the/command/line/vocab.txt"
        resolve_data_config(data)
        PretrainingTask(config)  # the objective's checks of the model and data fields


ABLATION_FILES = sorted(p for p in (REPO / "experiments/ablations").glob("*.py")
                        if p.name not in ("__init__.py", "common.py"))


def _ablation_cases():
    for path in ABLATION_FILES:
        for arg in getattr(import_file(path), "DOCUMENTED_ARGS", (None,)):
            yield pytest.param(path, arg, id=f"ablations/{path.stem}:{arg}")


def _set(config, dotted: str, value, label: str) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
        assert name in node, f"{label}: override {dotted!r} names no config section {name!r}"
        node = node[name]
    assert leaf in node, f"{label}: override {dotted!r} names no config field (a typo would fail the run)"
    node[leaf] = value


@pytest.mark.parametrize("path,arg", list(_ablation_cases()))
def test_ablation_file_plans_only_valid_stages(path, arg, tmp_path, monkeypatch):
    """Every stage of every ablation file (and documented budget) is a valid config once its
    overrides are applied, as bert_jax.main would apply them: a misspelled key, a value of the
    wrong type or a contradictory combination fails here, not an hour into a sweep."""
    from bert_jax import sweep as sweep_lib

    monkeypatch.setenv("BERT_JAX_DATA", "/data")
    monkeypatch.setenv("BERT_JAX_PAPER_DATA", "gs://bucket")
    sweep = sweep_lib.load_sweep(f"{path}:{arg}" if arg else str(path))
    runs = sweep_lib.plan_runs(sweep, tmp_path)
    assert runs, f"{path.name}:{arg} plans no runs"
    seen = set()
    for run in runs:
        for stage in run.stages:
            key = (stage.config, repr(sorted(stage.overrides.items())))
            if key in seen:
                continue
            seen.add(key)
            label = f"{path.name}:{arg} {run.variant}/{stage.name}"
            config = sweep_lib.load_experiment_config(stage.config)
            config.lock()
            for dotted, value in stage.overrides.items():
                _set(config, dotted, value, label)
            check_config(config, label)
    paper = sweep.get("paper")
    if paper:  # every paper row is a variant, and ours fill at least one paper column
        assert set(paper["rows"]) <= set(sweep["variants"]) and paper["ours"], path.name
