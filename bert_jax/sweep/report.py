"""Reads a sweep's finished runs (results.json, metrics.jsonl) and writes what they show: the
per-variant table of final metrics, the paper-shaped table beside the control, the detectable
differences, results.md/.csv, paper_table.csv and the curves. It launches nothing; scipy and
matplotlib are imported only by the functions that use them."""

from __future__ import annotations

import csv
import json
import math
import pathlib
import statistics
from typing import Any

from bert_jax import representation
from bert_jax.sweep.plan import CONTROL, PRETRAIN, Run, Stage
from bert_jax.run_files import METRICS_FILE, RESULTS_FILE


def _read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def final_metrics(stage: Stage) -> dict[str, float]:
    """{"<stage name>/<metric>": value} of a finished stage: its results.json's final_metrics,
    or, for a run without an eval split, its last logged training losses and accuracies; {}
    while the stage has no results.json."""
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


def _run_metrics(run: Run) -> dict[str, float]:
    """The final metrics of every stage of one seed's run, merged ({} before any has results)."""
    merged: dict[str, float] = {}
    for stage in run.stages:
        merged.update(final_metrics(stage))
    return merged


def _metrics_by_variant(runs: list[Run]) -> dict[str, list[dict[str, float]]]:
    """{variant: [the final metrics of every stage of one seed's run]}, runs with results only."""
    by_variant: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        merged = _run_metrics(run)
        if merged:
            by_variant.setdefault(run.variant, []).append(merged)
    return by_variant


def mean_std_cell(values: list[float]) -> str:
    """"mean ± sample std" over seeds, to 4 places; the mean alone for one seed."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)):.4f}"


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
            row[col] = mean_std_cell(values)
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


PER_SEED_HEADER = ["variant", "column", "per seed (ours)", f"{CONTROL} at the same seeds", "ahead", "paired p"]


def per_seed_table(runs: list[Run], paper: dict[str, Any]) -> tuple[list[str], list[dict[str, str]]]:
    """Per variant and paper column of ours: its numbers seed by seed, the control's at the same
    fine-tuning seeds (the same head initialisation and batch order), how many seeds it is ahead,
    and the one-sided paired t-test p that it beats the control ("" below 2 shared seeds or
    when every difference is equal)."""
    from scipy import stats
    by_seed = {(run.variant, run.seed): merged for run in runs if (merged := _run_metrics(run))}
    table = []
    for variant in dict.fromkeys(run.variant for run in runs):
        if variant == CONTROL:
            continue
        for column, spec in paper["ours"].items():
            pairs = []
            for seed in sorted(seed for name, seed in by_seed if name == variant and (CONTROL, seed) in by_seed):
                ours = _column_values([by_seed[(variant, seed)]], spec)
                theirs = _column_values([by_seed[(CONTROL, seed)]], spec)
                if ours and theirs:
                    pairs.append((ours[0], theirs[0]))
            if not pairs:
                continue
            lower_is_better = spec.startswith("exp:")
            ahead = sum((a < b) if lower_is_better else (a > b) for a, b in pairs)
            diffs = [a - b for a, b in pairs]
            p = ""
            if len(pairs) >= 2 and statistics.pstdev(diffs) > 0:
                ours, control = zip(*pairs)
                p = f"{stats.ttest_rel(ours, control, alternative='less' if lower_is_better else 'greater').pvalue:.3f}"
            table.append({"variant": variant, "column": column,
                          "per seed (ours)": ", ".join(f"{a:.2f}" for a, _ in pairs),
                          f"{CONTROL} at the same seeds": ", ".join(f"{b:.2f}" for _, b in pairs),
                          "ahead": f"{ahead}/{len(pairs)}", "paired p": p})
    return PER_SEED_HEADER, table


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
        if pooled == 0:  # e.g. a pretraining column with one pretraining per variant ("pretrain_seed")
            parts.append(f"{column}: one value per row (its seeds share one run), so no seed spread to size a difference by")
            continue
        n = statistics.mean(len(g) for g in groups)
        detectable = (stats.t.ppf(0.95, df) + stats.t.ppf(0.8, df)) * pooled * math.sqrt(2 / n)
        paper_numbers = [row[1 + index] for row in paper["rows"].values() if row[1 + index] is not None]
        found = f"{column}: detects differences >= {detectable:.2f} (pooled seed std {pooled:.2f}, {n:.0f} seeds)"
        if len(paper_numbers) < 2:  # a column of ours only: nothing of the paper's to detect
            parts.append(f"{found}; the paper reports no differences in this column")
            continue
        spread = max(paper_numbers) - min(paper_numbers)
        can = "some of" if detectable <= spread else "none of"
        parts.append(f"{found}; the paper's rows differ by up to {spread:.2f}, so {can} its differences")
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
                 detectable: str = "", per_seed: tuple[list[str], list[dict[str, str]]] | None = None) -> None:
    """results.csv and results.md; with `paper` (its spec, header, rows) also paper_table.csv,
    shown first in results.md under the paper's title and citation, then `per_seed`'s table."""
    _write_csv(workdir / "results.csv", header, table)
    lines = []
    if paper is not None:
        spec, paper_header, paper_rows = paper
        _write_csv(workdir / "paper_table.csv", paper_header, paper_rows)
        lines += [f"## {spec['title']}", "", f"Paper: {spec['citation']}", "", *_markdown(paper_header, paper_rows), ""]
        if detectable:
            lines += [detectable, ""]
        if per_seed and per_seed[1]:
            lines += [f"## Per seed, against {CONTROL} at the same fine-tuning seed (x100; paired one-sided t-test)", "",
                      *_markdown(*per_seed), ""]
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
