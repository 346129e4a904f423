"""A sweep file's schema and its plan: the checks of `get_sweep()`'s dict, the fine-tuning grid,
and the expansion of variants x seeds into stages (`bert_jax.main` command lines, one sub-workdir
each). Nothing here runs anything or reads a finished run: `launch` runs the plan, `report`
tabulates it. The format is documented in bert_jax/sweep/__init__.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import os
import pathlib
import shlex
import sys
from typing import Any

from bert_jax.run_files import RESULTS_FILE

PRETRAIN = "pretrain"
CONTROL = "random_init"  # the variant a paper-table sweep must have: fine-tuned from random init
SWEEP_KEYS = {"prepare", "pretrain", "finetune", "common", "finetune_common", "evaluations", "variants", "seeds",
              "pretrain_seed", "paper"}
VARIANT_PARTS = {"pretrain", "finetune", "evaluations"}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One `bert_jax.main` invocation."""

    name: str  # "pretrain", or the evaluation's name ("finetune" when there is one)
    config: str
    workdir: pathlib.Path
    overrides: dict[str, Any]

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "bert_jax.main", f"--config={self.config}", f"--workdir={self.workdir}"]
        cmd += [f"--config.{key}={_flag_value(value)}" for key, value in self.overrides.items()]
        return cmd

    @property
    def done(self) -> bool:
        return (self.workdir / RESULTS_FILE).exists()

    @property
    def is_pretrain(self) -> bool:
        return self.name == PRETRAIN


@dataclasses.dataclass(frozen=True)
class Run:
    """A variant at one seed: its stages run in order."""

    variant: str
    seed: int
    stages: tuple[Stage, ...]


def _flag_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _import_file(path: str, kind: str):
    """Imports a Python file by path (ablation and experiment files are not packages' modules)."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_{kind}_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sweep(path: str) -> dict[str, Any]:
    """Imports an ablation file (`FILE.py` or `FILE.py:ARG`, ARG passed to get_sweep) and checks
    the fields of its `get_sweep()`."""
    file, _, arg = path.partition(":")
    module = _import_file(file, "ablation")
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{file}: an ablation file must define get_sweep()")
    sweep = module.get_sweep(arg) if arg else module.get_sweep()
    check_sweep(sweep, path)
    return sweep


def check_sweep(sweep: dict[str, Any], source: str) -> None:
    unknown = set(sweep) - SWEEP_KEYS
    if unknown:
        raise ValueError(f"{source}: get_sweep() has unknown keys {sorted(unknown)}; allowed: {sorted(SWEEP_KEYS)}")
    if sweep.get("evaluations") and (sweep.get("finetune") or sweep.get("finetune_common")):
        raise ValueError(f"{source}: give 'evaluations' or 'finetune'/'finetune_common', not both")
    if not (sweep.get("pretrain") or sweep.get("finetune") or sweep.get("evaluations")) or not sweep.get("variants"):
        raise ValueError(f"{source}: get_sweep() needs 'pretrain' and/or 'finetune' (or 'evaluations'), and a "
                         "non-empty 'variants' dict")
    for name, spec in (sweep.get("evaluations") or {}).items():
        if not isinstance(spec, dict) or "config" not in spec or set(spec) - {"config", "overrides"}:
            raise ValueError(f"{source}: evaluation {name!r} must be {{'config': 'FILE.py:ARG', 'overrides': {{...}}}}, "
                             f"found {spec!r}")
    pretrain_seed = sweep.get("pretrain_seed")
    if pretrain_seed is not None and (not isinstance(pretrain_seed, int) or isinstance(pretrain_seed, bool)):
        raise ValueError(f"{source}: 'pretrain_seed' must be an int (one pretraining per variant, shared by every "
                         f"fine-tuning seed) or None (a pretraining per seed), found {pretrain_seed!r}")
    names = [e.name for e in evaluations(sweep)]
    if PRETRAIN in names:
        raise ValueError(f"{source}: an evaluation may not be named {PRETRAIN!r} (the pretraining stage's name)")
    for variant, spec in sweep["variants"].items():
        _, _, per_evaluation = variant_parts(variant, spec, source)
        unknown = set(per_evaluation) - set(names)
        if unknown:
            raise ValueError(f"{source}: variant {variant!r} has overrides for evaluations {sorted(unknown)}; "
                             f"the evaluations are {names}")
    paper = sweep.get("paper")
    if paper:
        missing = {"title", "citation", "columns", "rows", "ours"} - set(paper)
        if missing:
            raise ValueError(f"{source}: 'paper' lacks {sorted(missing)}")
        if CONTROL not in sweep["variants"]:
            raise ValueError(
                f"{source}: a paper-table sweep needs a {CONTROL!r} variant, the control every row is read "
                "against: the same architecture and vocabulary fine-tuned from random init by the same commands "
                f"(with a pretraining stage: {{'pretrain': {{'train.num_steps': 0}}}}, which saves the fresh model)")
        for variant, row in paper["rows"].items():
            if variant not in sweep["variants"] or len(row) != 1 + len(paper["columns"]):
                raise ValueError(f"{source}: paper row {variant!r} must name a variant and hold a label plus "
                                 f"{len(paper['columns'])} numbers, found {row!r}")
        unknown = set(paper["ours"]) - set(paper["columns"])
        if unknown:
            raise ValueError(f"{source}: paper 'ours' names columns {sorted(unknown)} the paper table lacks")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A downstream task every variant is fine-tuned and scored on."""

    name: str
    config: str
    overrides: dict[str, Any]


def evaluations(sweep: dict[str, Any]) -> list[Evaluation]:
    if sweep.get("evaluations"):
        return [Evaluation(name, spec["config"], dict(spec.get("overrides") or {}))
                for name, spec in sweep["evaluations"].items()]
    if sweep.get("finetune"):
        return [Evaluation("finetune", sweep["finetune"], dict(sweep.get("finetune_common") or {}))]
    return []


def variant_parts(name: str, spec: dict[str, Any], source: str = "sweep") -> tuple[dict, dict, dict]:
    """(pretraining overrides, overrides for every fine-tuning run, {evaluation: overrides})."""
    if not isinstance(spec, dict):
        raise ValueError(f"{source}: variant {name!r} must be a dict of overrides, found {spec!r}")
    if not VARIANT_PARTS & set(spec):
        return spec, {}, {}
    unknown = set(spec) - VARIANT_PARTS
    if unknown:
        raise ValueError(f"{source}: variant {name!r} mixes parts {sorted(VARIANT_PARTS & set(spec))} with "
                         f"overrides {sorted(unknown)}; put the overrides under 'pretrain' or 'finetune'")
    return dict(spec.get("pretrain") or {}), dict(spec.get("finetune") or {}), dict(spec.get("evaluations") or {})


# config.sweep (the paper's fine-tuning grid) field -> the config field it sets.
GRID_FIELDS = {"learning_rate": "optimizer.learning_rate", "batch_size": "train.batch_size", "num_epochs": "num_epochs"}


def load_experiment_config(config_spec: str):
    """What `get_config(arg)` of the experiment file `path.py[:arg]` returns."""
    path, _, arg = config_spec.partition(":")
    module = _import_file(path, "experiment")
    return module.get_config(arg) if arg else module.get_config()


def grid_sweep(config_spec: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """A fine-tuning-only sweep over the experiment's `config.sweep` grid (the paper's recipe)."""
    config = load_experiment_config(config_spec)
    if "sweep" not in config:
        raise ValueError(f"{config_spec}: the config has no `sweep` field listing the grid to search")
    given = dict(config.sweep.items())
    unknown = set(given) - set(GRID_FIELDS)
    if unknown:
        raise ValueError(f"{config_spec}: config.sweep has fields {sorted(unknown)} that --grid cannot set; "
                         f"known: {sorted(GRID_FIELDS)}")
    grid = {key: given[key] for key in GRID_FIELDS if key in given}  # lr, batch, epochs: the paper's order
    variants = {}
    for values in itertools.product(*grid.values()):
        name = "_".join(f"{key}={value}" for key, value in zip(grid, values))
        variants[name] = {GRID_FIELDS[key]: value for key, value in zip(grid, values)}
    return {"finetune": config_spec, "finetune_common": dict(overrides), "variants": variants}


def _expand(value: Any, **placeholders: str) -> Any:
    """`{data}`/`{out}` placeholders and $ENV variables in string values."""
    if not isinstance(value, str):
        return value
    for name, replacement in placeholders.items():
        value = value.replace("{" + name + "}", replacement)
    return os.path.expandvars(value)


def _overrides(*layers: dict[str, Any], data_dir: pathlib.Path) -> dict[str, Any]:
    merged = {}
    for layer in layers:
        merged.update(layer)
    return {key: _expand(value, data=str(data_dir)) for key, value in merged.items()}


@dataclasses.dataclass(frozen=True)
class Prepare:
    """Data built once for every variant: `python -m <args>` writing into `out`; `{data}` in an
    argument names the folder of every prepare step's output, so a step can read an earlier one's."""

    name: str
    args: tuple[str, ...]
    out: pathlib.Path

    def command(self) -> list[str]:
        return [sys.executable, "-m", *(_expand(a, out=str(self.out), data=str(self.out.parent)) for a in self.args)]

    @property
    def done_marker(self) -> pathlib.Path:
        return self.out / ".sweep_done"


def plan_prepare(sweep: dict[str, Any], workdir: pathlib.Path) -> list[Prepare]:
    return [Prepare(name, tuple(args), workdir / "data" / name) for name, args in sweep.get("prepare", {}).items()]


def plan_runs(sweep: dict[str, Any], workdir: pathlib.Path, only: list[str] | None = None) -> list[Run]:
    """Expands variants x seeds into runs with one sub-workdir per stage (`only`: these variants)."""
    variants = sweep["variants"]
    unknown = sorted(set(only or ()) - set(variants))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; the sweep has {list(variants)}")
    runs = []
    data_dir = workdir / "data"
    seeds = sweep.get("seeds") or [0]
    pretrain_seed = sweep.get("pretrain_seed")  # None: every seed pretrains; an int: one pretraining per variant
    pretrain_dirs: dict[str, pathlib.Path] = {}  # equal pretraining overrides -> the one run's workdir
    for variant, spec in variants.items():
        pretrain_overrides, finetune_overrides, per_evaluation = variant_parts(variant, spec)
        for seed in seeds:
            run_dir = workdir / variant / f"seed_{seed}"
            stages = []
            if sweep.get("pretrain"):
                overrides = _overrides(sweep.get("common", {}), pretrain_overrides,
                                       {"seed": seed if pretrain_seed is None else pretrain_seed}, data_dir=data_dir)
                key = json.dumps(overrides, sort_keys=True, default=str)
                pretrain = Stage(PRETRAIN, sweep["pretrain"], pretrain_dirs.setdefault(key, run_dir / PRETRAIN),
                                 overrides)
                stages.append(pretrain)
                chained = {"init_from": str(pretrain.workdir), "seed": seed}
            else:  # a fine-tuning-only sweep: the variant's overrides go to fine-tuning
                chained = {**pretrain_overrides, "seed": seed}
            for evaluation in evaluations(sweep):
                stages.append(Stage(
                    evaluation.name, evaluation.config, run_dir / evaluation.name,
                    _overrides(evaluation.overrides, finetune_overrides, per_evaluation.get(evaluation.name, {}),
                               chained, data_dir=data_dir)))
            if only is None or variant in only:
                runs.append(Run(variant, seed, tuple(stages)))
    return runs


def shell_line(command: list[str]) -> str:
    """A command line that runs as pasted into a POSIX shell. An argument holding an environment
    variable the sweep could not expand ($BERT_JAX_DATA unset here, set on the cluster) goes in
    double quotes, so the shell that runs it expands it; everything else is quoted by shlex."""
    def quote(arg: str) -> str:
        if "$" in arg:
            return '"' + "".join("\\" + c if c in '"\\`' else c for c in arg) + '"'
        return shlex.quote(arg)
    return " ".join(quote(arg) for arg in command)
