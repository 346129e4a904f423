"""Run an ablation: every variant (x seed) pretrains, then fine-tunes, in its own sub-workdir.

    python -m bert_jax.sweep experiments/ablations/nsp.py --workdir DIR [--parallel N] [--print_commands]
    python -m bert_jax.sweep experiments/ablations/paper_table8.py:paper --workdir DIR --variants a,b
    python -m bert_jax.sweep --grid experiments/finetune_glue.py:mrpc --workdir DIR --set init_from=PATH

The second form passes an argument to the file's `get_sweep(arg)` (the paper-table files take a
budget, "cpu" or "paper") and runs only the named variants. The third searches the fine-tuning
grid of the experiment's `config.sweep` (the paper's lr {5e-5, 3e-5, 2e-5} x batch {16, 32} x
epochs {2, 3, 4}) and names the best dev result.

An ablation file defines `get_sweep()` returning a dict:

    {
      "prepare": {"instances": ["data_pipelines.create_pretraining_data", "--output_dir", "{out}", ...]},
      "pretrain": "experiments/pretrain.py:tiny",          # --config of the pretraining stage
      "finetune": "experiments/finetune_tsv.py:sentiment",  # optional second stage, init_from = stage 1
      "common": {"train.num_steps": 300, ...},              # overrides for every variant (pretrain stage)
      "finetune_common": {...},                              # overrides for every fine-tuning run
      "variants": {"nsp_on": {...overrides...}, "nsp_off": {...}},
      "seeds": [0, 1],                                       # optional; default [0]
    }

Several downstream tasks instead of one: "evaluations" replaces "finetune"/"finetune_common",
one fine-tuning stage (and one table column) each:

      "evaluations": {"sentiment": {"config": "experiments/finetune_tsv.py:rotten_tomatoes",
                                    "overrides": {...}}, "ner": {...}},

A variant is either a dict of pretraining overrides, or {"pretrain": {...}, "finetune": {...},
"evaluations": {name: {...}}} with overrides for its fine-tuning runs too (all of them, or one
evaluation's). Variants whose pretraining overrides are equal share one pretraining run (the
first one's workdir), e.g. "LTR" and "LTR + BiLSTM", which differ only in fine-tuning.

"paper" (optional) puts the paper's numbers beside ours in a table of the paper's shape:

      "paper": {"title": ..., "citation": ..., "columns": ["MRPC", "SST-2", ...],
                "rows": {variant: ["the paper's row label", 86.7, 92.7, ...]},
                "ours": {"SST-2": "sentiment/accuracy", "LM (ppl)": "exp:pretrain/mlm_loss"}}

"ours" names, for a paper column, the column of our metrics table that stands in for it (shown
x100, as the paper's percentages; "exp:" shows exp of a loss, a perplexity).

`prepare` lists data to build once for all variants: each entry is `python -m <args>`, with
`{out}` replaced by `DIR/data/<name>`; overrides may name that data as `{data}/<name>/...`.
Environment variables in commands and overrides (`$BERT_JAX_DATA`) are expanded.

Each stage is `python -m bert_jax.main --config C --workdir W --config.k=v ...` in a subprocess,
so a variant crashing never takes the sweep down, and the same command lines can be printed
for a cluster scheduler instead. A stage whose workdir already holds `results.json` is
skipped, so rerunning a killed sweep continues where it stopped.

Outputs in --workdir: `results.md` and `results.csv` (one row per variant, mean ± std over
seeds), with "paper": `paper_table.csv` and the paper-shaped table first in results.md;
`pretrain_loss.png` and `<evaluation>_eval.png` (one line per variant and seed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import threading
from typing import Any

from bert_jax import representation
from bert_jax.workdir import METRICS_FILE, RESULTS_FILE

PRETRAIN = "pretrain"
CONTROL = "random_init"  # the variant a paper-table sweep must have: fine-tuned from random init
SWEEP_KEYS = {"prepare", "pretrain", "finetune", "common", "finetune_common", "evaluations", "variants", "seeds",
              "paper"}
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


def _load_experiment_config(config_spec: str):
    path, _, arg = config_spec.partition(":")
    module = _import_file(path, "experiment")
    return module.get_config(arg) if arg else module.get_config()


def grid_sweep(config_spec: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """A fine-tuning-only sweep over the experiment's `config.sweep` grid (the paper's recipe)."""
    config = _load_experiment_config(config_spec)
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
    """Data built once for every variant: `python -m <args>` writing into `out`."""

    name: str
    args: tuple[str, ...]
    out: pathlib.Path

    def command(self) -> list[str]:
        return [sys.executable, "-m", *(_expand(a, out=str(self.out)) for a in self.args)]

    @property
    def done_marker(self) -> pathlib.Path:
        return self.out / ".sweep_done"


def plan_prepare(sweep: dict[str, Any], workdir: pathlib.Path) -> list[Prepare]:
    return [Prepare(name, tuple(args), workdir / "data" / name) for name, args in sweep.get("prepare", {}).items()]


def run_prepare(step: Prepare) -> None:
    if step.done_marker.exists():
        return
    step.out.mkdir(parents=True, exist_ok=True)
    print(f"preparing {step.name}: {' '.join(step.command())}", flush=True)
    with open(step.out.parent / f"{step.name}.log", "w", encoding="utf-8") as log:
        code = subprocess.call(step.command(), stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"prepare step {step.name!r} failed (exit {code}); see {log.name}")
    step.done_marker.write_text("ok\n", encoding="utf-8")


def plan_runs(sweep: dict[str, Any], workdir: pathlib.Path, only: list[str] | None = None) -> list[Run]:
    """Expands variants x seeds into runs with one sub-workdir per stage (`only`: these variants)."""
    variants = sweep["variants"]
    unknown = sorted(set(only or ()) - set(variants))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; the sweep has {list(variants)}")
    runs = []
    data_dir = workdir / "data"
    seeds = sweep.get("seeds") or [0]
    pretrain_dirs: dict[str, pathlib.Path] = {}  # equal pretraining overrides -> the one run's workdir
    for variant, spec in variants.items():
        pretrain_overrides, finetune_overrides, per_evaluation = variant_parts(variant, spec)
        for seed in seeds:
            run_dir = workdir / variant / f"seed_{seed}"
            stages = []
            if sweep.get("pretrain"):
                overrides = _overrides(sweep.get("common", {}), pretrain_overrides, {"seed": seed}, data_dir=data_dir)
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


_stage_locks: dict[pathlib.Path, threading.Lock] = {}
_stage_locks_guard = threading.Lock()


def _stage_lock(stage: Stage) -> threading.Lock:
    """One lock per stage workdir: two variants sharing a pretraining run never both start it."""
    with _stage_locks_guard:
        return _stage_locks.setdefault(stage.workdir, threading.Lock())


def execute(run: Run) -> str:
    """Runs the stages of one run in order; returns a one-line status."""
    for stage in run.stages:
        with _stage_lock(stage):
            if stage.done:
                continue
            stage.workdir.mkdir(parents=True, exist_ok=True)
            log_path = stage.workdir / "stdout.log"
            with open(log_path, "w", encoding="utf-8") as log:
                code = subprocess.call(stage.command(), stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            return f"{run.variant} seed {run.seed}: {stage.name} FAILED (exit {code}); see {log_path}"
    return f"{run.variant} seed {run.seed}: done"


def shell_line(command: list[str]) -> str:
    """A command line that runs as pasted into a POSIX shell. An argument holding an environment
    variable the sweep could not expand ($BERT_JAX_DATA unset here, set on the cluster) goes in
    double quotes, so the shell that runs it expands it; everything else is quoted by shlex."""
    def quote(arg: str) -> str:
        if "$" in arg:
            return '"' + "".join("\\" + c if c in '"\\`' else c for c in arg) + '"'
        return shlex.quote(arg)
    return " ".join(quote(arg) for arg in command)


def _read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _final_metrics(stage: Stage) -> dict[str, float]:
    path = stage.workdir / RESULTS_FILE
    if not path.exists():
        return {}
    results = json.loads(path.read_text(encoding="utf-8"))
    metrics = results.get("final_metrics") or {}
    if not metrics:  # a run without an eval split: its last logged training losses and accuracies
        train_rows = [r for r in _read_jsonl(stage.workdir / METRICS_FILE) if r.get("split") == "train"]
        last = train_rows[-1] if train_rows else {}
        metrics = {f"train_{k}": v for k, v in last.items() if k.endswith(("loss", "accuracy"))}
    return {f"{stage.name}/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _metrics_by_variant(runs: list[Run]) -> dict[str, list[dict[str, float]]]:
    """{variant: [the final metrics of every stage of one seed's run]}, runs with results only."""
    by_variant: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        merged = {}
        for stage in run.stages:
            merged.update(_final_metrics(stage))
        if merged:
            by_variant.setdefault(run.variant, []).append(merged)
    return by_variant


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


ENCODER_COLUMN = "pretrained encoder"


def encoder_health(rows: list[dict[str, float]]) -> str:
    """The ENCODER_COLUMN cell of a variant: "COLLAPSED" when any seed's held-out hidden-state
    cosine (a pretraining stage's `hidden_cosine`) is above bert_jax.representation's threshold,
    so a reader never takes a collapsed encoder's row for a budget effect; "" without the statistic."""
    cosines = [v for row in rows for k, v in row.items() if k.endswith("/hidden_cosine") and not math.isnan(v)]
    if not cosines:
        return ""
    worst = max(cosines)
    if worst > representation.COLLAPSE_COSINE:
        return f"COLLAPSED (cosine {worst:.3f} > {representation.COLLAPSE_COSINE})"
    return f"ok (cosine <= {worst:.3f})"


def summarise(runs: list[Run]) -> tuple[list[str], list[dict[str, str]]]:
    """One row per variant: mean ± std over seeds of every final metric, and ENCODER_COLUMN."""
    by_variant = _metrics_by_variant(runs)
    columns = sorted({k for rows in by_variant.values() for row in rows for k in row})
    table = []
    for variant, rows in by_variant.items():
        row = {"variant": variant, "seeds": str(len(rows)), ENCODER_COLUMN: encoder_health(rows)}
        for col in columns:
            values = [r[col] for r in rows if col in r]
            if not values:
                row[col] = ""
                continue
            mean, std = _mean_std(values)
            row[col] = f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"
        table.append(row)
    return ["variant", "seeds", ENCODER_COLUMN, *columns], table


def _column_values(rows: list[dict[str, float]], spec: str) -> list[float]:
    """One paper column's numbers of ours, per seed: x100, or exp of a loss (spec "exp:KEY")."""
    exp = spec.startswith("exp:")
    key = spec[4:] if exp else spec
    return [math.exp(r[key]) if exp else 100.0 * r[key] for r in rows if key in r]


def _ci95(values: list[float]) -> float | None:
    """Half-width of the 95% confidence interval of the mean (Student's t), None for one value."""
    from scipy import stats
    if len(values) < 2:
        return None
    return float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def beats_control(values: list[float], control: list[float], lower_is_better: bool) -> float | None:
    """One-sided Welch t-test p-value that `values` are better than `control` (None: too few seeds)."""
    from scipy import stats
    if len(values) < 2 or len(control) < 2:
        return None
    if statistics.pstdev(values) == 0 and statistics.pstdev(control) == 0:  # t is undefined; compare means
        better = statistics.mean(values) < statistics.mean(control) if lower_is_better else \
            statistics.mean(values) > statistics.mean(control)
        return 0.0 if better else 1.0
    alternative = "less" if lower_is_better else "greater"
    return float(stats.ttest_ind(values, control, equal_var=False, alternative=alternative).pvalue)


def paper_table(runs: list[Run], paper: dict[str, Any]) -> tuple[list[str], list[dict[str, str]]]:
    """The paper's table with ours beside it: per paper column that one of ours stands in for,
    "<column> (ours)" (mean ± 95% CI over seeds, x100, or exp of a loss, i.e. a perplexity),
    "<column> vs control" (the difference from the CONTROL row's mean and the one-sided Welch
    p-value that the row beats it; "does not beat" unless p < 0.05) and "<column> (paper)"."""
    by_variant = _metrics_by_variant(runs)
    header = ["variant", "paper row", "seeds", ENCODER_COLUMN]
    for column in paper["columns"]:
        if column in paper["ours"]:
            header += [f"{column} (ours)", f"{column} vs {CONTROL}"]
        header.append(f"{column} (paper)")
    control_rows = by_variant.get(CONTROL, [])
    table = []
    for variant in dict.fromkeys(run.variant for run in runs):
        label, *numbers = paper["rows"].get(variant, ["", *[None] * len(paper["columns"])])
        if variant == CONTROL and not label:
            label = "(control: the same architecture and vocabulary from random init)"
        rows = by_variant.get(variant, [])
        row = {"variant": variant, "paper row": label, "seeds": str(len(rows)), ENCODER_COLUMN: encoder_health(rows)}
        for column, number in zip(paper["columns"], numbers):
            row[f"{column} (paper)"] = "" if number is None else f"{number}"
            if column not in paper["ours"]:
                continue
            spec = paper["ours"][column]
            values, control = _column_values(rows, spec), _column_values(control_rows, spec)
            if not values:
                row[f"{column} (ours)"] = row[f"{column} vs {CONTROL}"] = ""
                continue
            mean, ci = statistics.mean(values), _ci95(values)
            row[f"{column} (ours)"] = f"{mean:.2f}" if ci is None else f"{mean:.2f} ± {ci:.2f}"
            if variant == CONTROL or not control:
                row[f"{column} vs {CONTROL}"] = "control" if variant == CONTROL else ""
                continue
            p = beats_control(values, control, lower_is_better=spec.startswith("exp:"))
            verdict = "" if p is None else f", p={p:.3f}" + ("" if p < 0.05 else ": does not beat")
            row[f"{column} vs {CONTROL}"] = f"{mean - statistics.mean(control):+.2f}{verdict}"
        table.append(row)
    return header, table


def detectable_differences(runs: list[Run], paper: dict[str, Any]) -> str:
    """One line: per column of ours, the smallest difference between two rows that this many seeds
    detect (one-sided alpha 0.05, power 0.8, at the measured pooled seed std) against the largest
    difference between the paper's rows in that column."""
    from scipy import stats
    by_variant = _metrics_by_variant(runs)
    parts = []
    for index, column in enumerate(paper["columns"]):
        if column not in paper["ours"]:
            continue
        groups = [v for v in (_column_values(rows, paper["ours"][column]) for rows in by_variant.values()) if len(v) > 1]
        if not groups:
            parts.append(f"{column}: needs >= 2 seeds per row")
            continue
        df = sum(len(g) - 1 for g in groups)
        pooled = math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups) / df)
        n = statistics.mean(len(g) for g in groups)
        detectable = (stats.t.ppf(0.95, df) + stats.t.ppf(0.8, df)) * pooled * math.sqrt(2 / n)
        paper_numbers = [row[1 + index] for row in paper["rows"].values() if row[1 + index] is not None]
        spread = max(paper_numbers) - min(paper_numbers) if len(paper_numbers) > 1 else 0.0
        can = "some of" if detectable <= spread else "none of"
        parts.append(f"{column}: detects differences >= {detectable:.2f} (pooled seed std {pooled:.2f}, "
                     f"{n:.0f} seeds); the paper's rows differ by up to {spread:.2f}, so {can} its differences")
    return "Detectable at this budget: " + "; ".join(parts) + "."


def _markdown(header: list[str], table: list[dict[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row.get(col, "") for col in header) + " |" for row in table]


def _write_csv(path: pathlib.Path, header: list[str], table: list[dict[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(table)


def write_tables(workdir: pathlib.Path, header: list[str], table: list[dict[str, str]],
                 paper: tuple[dict[str, Any], list[str], list[dict[str, str]]] | None = None,
                 detectable: str = "") -> None:
    """results.csv and results.md; with `paper` (its spec, header, rows) also paper_table.csv,
    shown first in results.md under the paper's title and citation."""
    _write_csv(workdir / "results.csv", header, table)
    lines = []
    if paper is not None:
        spec, paper_header, paper_rows = paper
        _write_csv(workdir / "paper_table.csv", paper_header, paper_rows)
        lines += [f"## {spec['title']}", "", f"Paper: {spec['citation']}", "", *_markdown(paper_header, paper_rows), ""]
        if detectable:
            lines += [detectable, ""]
        lines += ["## All final metrics", ""]
    lines += _markdown(header, table)
    (workdir / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _curve(stage: Stage, split: str, metric: str) -> tuple[list[int], list[float]]:
    points = [
        (r["step"], r[metric])
        for r in _read_jsonl(stage.workdir / METRICS_FILE)
        if r.get("split") == split and metric in r and r[metric] is not None
    ]
    return [p[0] for p in points], [float(p[1]) for p in points]


def plot_curves(runs: list[Run], workdir: pathlib.Path, eval_metrics: dict[str, str]) -> list[pathlib.Path]:
    """Training loss of the pretraining stage, and per evaluation ({stage name: its main metric})
    the eval metric of its fine-tuning runs, one line per variant and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    specs = [(PRETRAIN, "train", "loss", "pretrain_loss.png")]
    specs += [(name, "eval", metric, f"{name}_eval.png") for name, metric in eval_metrics.items()]
    for stage_name, split, metric, filename in specs:
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = False
        for run in runs:
            for stage in run.stages:
                if stage.name != stage_name:
                    continue
                steps, values = _curve(stage, split, metric)
                if steps:
                    ax.plot(steps, values, label=f"{run.variant} (seed {run.seed})", marker="." if len(steps) < 20 else None)
                    drawn = True
        if drawn:
            ax.set_xlabel("step")
            ax.set_ylabel(f"{split} {metric}")
            ax.set_title(f"{stage_name}: {split} {metric}")
            ax.legend(fontsize="small")
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(workdir / filename, dpi=120)
            written.append(workdir / filename)
        plt.close(fig)
    return written


def best_variant(runs: list[Run], stage_name: str = "finetune") -> tuple[str, str, float] | None:
    """(variant, metric, value) of the best result of one evaluation by the task's main metric."""
    best = None
    for run in runs:
        for stage in run.stages:
            path = stage.workdir / RESULTS_FILE
            if stage.name != stage_name or not path.exists():
                continue
            results = json.loads(path.read_text(encoding="utf-8"))
            metric = results.get("main_metric")
            value = (results.get("final_metrics") or {}).get(metric)
            if value is None:
                continue
            sign = 1.0 if results.get("higher_is_better", True) else -1.0
            if best is None or sign * value > best[0]:
                best = (sign * value, (run.variant, metric, float(value)))
    return best[1] if best else None


def _main_metrics(runs: list[Run]) -> dict[str, str]:
    """{evaluation stage name: its task's main metric, as its results.json names it}."""
    found: dict[str, str] = {}
    for run in runs:
        for stage in run.stages:
            path = stage.workdir / RESULTS_FILE
            if not stage.is_pretrain and stage.name not in found and path.exists():
                metric = json.loads(path.read_text(encoding="utf-8")).get("main_metric")
                if metric:
                    found[stage.name] = metric
    return found


DEPRECATED = {"--print-commands": "--print_commands"}  # old spelling: a deprecated alias


def main(argv: list[str] | None = None) -> int:
    from bert_jax.cli_flags import HelpFormatter, rewrite_deprecated

    parser = argparse.ArgumentParser(prog="python -m bert_jax.sweep", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("ablation", nargs="?",
                        help="path of an ablation file defining get_sweep(), optionally FILE.py:ARG for get_sweep(ARG)")
    parser.add_argument("--grid", metavar="FILE.py:ARG",
                        help="instead of an ablation file: search the experiment's config.sweep grid (fine-tuning)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="with --grid: a config override for every run (e.g. init_from=PATH)")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--variants", default="", metavar="A,B",
                        help="run (and tabulate) only these variants; default: all")
    parser.add_argument("--seeds", default="", metavar="0,1",
                        help="run these seeds instead of the file's (e.g. one seed for a first look); default: the file's")
    parser.add_argument("--parallel", type=int, default=1, help="variants run at once")
    parser.add_argument("--print_commands", action="store_true", help="print the command lines and exit")
    args = parser.parse_args(rewrite_deprecated(argv, DEPRECATED, "bert_jax.sweep"))
    if bool(args.ablation) == bool(args.grid):
        parser.error("give either an ablation file or --grid FILE.py:ARG")
    if args.set and not args.grid:
        parser.error("--set goes with --grid (an ablation file holds its own overrides)")

    if args.grid:
        pairs = [item.split("=", 1) for item in args.set]
        bad = [item for item, pair in zip(args.set, pairs) if len(pair) != 2]
        if bad:
            parser.error(f"--set expects KEY=VALUE, got {bad}")
        sweep = grid_sweep(args.grid, dict(pairs))
    else:
        sweep = load_sweep(args.ablation)
    if args.seeds:
        try:
            sweep["seeds"] = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
        except ValueError:
            parser.error(f"--seeds expects integers separated by commas, got {args.seeds!r}")
    workdir = pathlib.Path(args.workdir).resolve()
    only = [v.strip() for v in args.variants.split(",") if v.strip()] or None
    try:
        runs = plan_runs(sweep, workdir, only)
    except ValueError as e:
        parser.error(str(e))

    prepare = plan_prepare(sweep, workdir)

    if args.print_commands:
        for step in prepare:
            print(shell_line(step.command()))
        for run in runs:
            for stage in run.stages:
                print(shell_line(stage.command()))
        return 0

    workdir.mkdir(parents=True, exist_ok=True)
    for step in prepare:
        run_prepare(step)
    failed = False
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        for status in pool.map(execute, runs):
            print(status, flush=True)
            failed |= "FAILED" in status

    header, table = summarise(runs)
    paper = sweep.get("paper")
    write_tables(workdir, header, table, (paper, *paper_table(runs, paper)) if paper else None,
                 detectable_differences(runs, paper) if paper else "")
    main_metrics = _main_metrics(runs)
    plots = plot_curves(runs, workdir, main_metrics)
    print((workdir / "results.md").read_text(encoding="utf-8"))
    for name in main_metrics:
        best = best_variant(runs, name)
        if best:
            print(f"best on dev ({name}): {best[0]} ({best[1]} = {best[2]:.4f})")
    print("wrote", workdir / "results.md", workdir / "results.csv", *plots)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
