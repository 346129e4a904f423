"""Does pretraining help at CPU scale? The CPU recipe's encoder against random init (issue 23).

    python benchmarks/pretraining_helps.py --workdir workdirs/cpu [--parallel 2]

Every stage is skipped when its output exists, so a killed run continues where it stopped:
1. data: the tasks' unlabelled training text (data_pipelines/in_domain_text.py); the shared corpus
   without lee_news, plus that text, as 64-token rows of running text with no masks (masked at
   load time); lee_news as held-out rows with static masks (the collapse statistics and the
   held-out MLM loss);
2. pretraining: `experiments/pretrain.py:cpu`, and its random-init control: the same config at
   0 steps, i.e. the very weights the pretraining started from;
3. fine-tuning: each task by its recipe in experiments/ablations/common.CPU_EVALUATIONS (the
   paper tables' CPU fine-tuning), from each init, at every seed; sentiment and paraphrase also
   on 100, 300 and 1,000 training rows (a fresh subset per seed, the same one for both inits);
4. report: per task and label count, mean and std over seeds and the paired one-sided t-test
   that pretrained beats random init (scipy), in `report.md`, with `label_curves.png` and every
   run's number in `runs.csv`. `--report_only` tabulates what has finished so far.

`--epochs N` fine-tunes for N epochs with 10% warmup (the paper's §4.1 length is 3) instead of
the tables' step budget: its runs, report, runs.csv and plot carry `_N_epochs` in their names.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import pathlib
import statistics
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bert_jax import run_files, sweep  # noqa: E402
from experiments.ablations import common  # noqa: E402

PRETRAINED, RANDOM_INIT = "pretrained", "random_init"
TASKS = ("sentiment", "paraphrase", "ner")
CURVE_TASKS = ("sentiment", "paraphrase")  # label-count curves (TSV tasks)
METRICS = {key.split("/")[0]: key for key in common.STAND_INS["cpu"].values()}  # {"sentiment": "sentiment/accuracy", ...}
ALL = "all"


def data_steps(work: pathlib.Path) -> list[sweep.Prepare]:
    """The tasks' unlabelled text (the paper tables' step), then the instance sets, built once by
    data_pipelines.create_pretraining_data."""
    train_text = f"{common.TRAIN_CORPUS},{work / 'in_domain' / 'in_domain.txt'}"
    rows = ("--mode", "full_sentences")
    return [
        sweep.Prepare("in_domain", tuple(common.CPU_PREPARE["in_domain"]), work / "in_domain"),
        sweep.Prepare("instances", tuple(common.create_instances(*rows, "--no_masking", corpus=train_text,
                                                                 max_seq_length=common.CPU_SEQ_LENGTH)), work / "instances"),
        sweep.Prepare("heldout", tuple(common.create_instances(*rows, corpus=common.HELDOUT_CORPUS,
                                                               max_seq_length=common.CPU_SEQ_LENGTH)), work / "heldout"),
    ]


def pretraining_stages(work: pathlib.Path) -> dict[str, sweep.Stage]:
    overrides = {
        "data.input_files": str(work / "instances/*.array_record"),
        "task.eval_input_files": str(work / "heldout/*.array_record"),
        "data.vocab_file": os.path.expandvars(common.VOCAB),
    }
    control = common.RANDOM_INIT_CONTROL[sweep.CONTROL]["pretrain"]
    return {
        PRETRAINED: sweep.Stage(sweep.PRETRAIN, "experiments/pretrain.py:cpu", work / "pretrain", overrides),
        RANDOM_INIT: sweep.Stage(sweep.PRETRAIN, "experiments/pretrain.py:cpu", work / "random_init",
                                 {**overrides, **control}),
    }


def training_file(task: str) -> pathlib.Path:
    """The full training TSV of a curve task, as its experiment preset names it."""
    from experiments.finetune_tsv import PRESETS

    return pathlib.Path(os.path.expandvars(PRESETS[common.CPU_EVALUATIONS[task]["config"].split(":")[1]][0]))


def write_subset(source: pathlib.Path, out: pathlib.Path, rows: int, seed: int) -> pathlib.Path:
    """The header and `rows` data lines of a TSV drawn without replacement by `seed`, in file order."""
    import numpy as np

    if out.exists():
        return out
    header, *lines = [line for line in source.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]
    if rows > len(lines):
        raise ValueError(f"{source}: asked for {rows} training rows, the file has {len(lines)}")
    chosen = sorted(np.random.default_rng(seed).choice(len(lines), size=rows, replace=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(header + "".join(lines[i] for i in chosen), encoding="utf-8")
    tmp.rename(out)
    return out


# Keys of the tables' step budget that a fine-tuning length in epochs replaces.
_STEP_BUDGET_KEYS = ("num_epochs", "train.num_steps", "warmup_proportion", "optimizer.warmup_steps")


def finetuning_overrides(task: str, epochs: int) -> dict:
    """The task's CPU fine-tuning overrides; with `epochs` > 0 its step budget is replaced by the
    paper's length in epochs (§4.1: 3) with warmup over the first 10% of the steps."""
    overrides = dict(common.CPU_EVALUATIONS[task]["overrides"])
    if epochs:
        overrides = {key: value for key, value in overrides.items() if key not in _STEP_BUDGET_KEYS}
        overrides.update({"num_epochs": epochs, "warmup_proportion": 0.1})
    return overrides


def protocol_suffix(epochs: int) -> str:
    """The one name of a fine-tuning protocol in its folder, report, runs.csv and plot: "" for the
    tables' step budget, "_N_epochs" otherwise, so each protocol has its own files."""
    return f"_{epochs}_epochs" if epochs else ""


def finetune_dir(work: pathlib.Path, epochs: int) -> pathlib.Path:
    return work / f"finetune{protocol_suffix(epochs)}"


def finetuning_stages(work: pathlib.Path, inits: dict[str, sweep.Stage], seeds: list[int], label_counts: list[int],
                      tasks: tuple[str, ...] = TASKS, epochs: int = 0) -> list[tuple[str, str, str, int, sweep.Stage]]:
    """(task, label count, init, seed, stage) in the order they run: the all-label runs of every
    task, then the curves, each seed by seed, so a run stopped early has whole seeds of each."""
    plan = [entry for seed in seeds for task in tasks for entry in _stages_of(work, inits, task, ALL, seed, epochs)]
    plan += [entry for seed in seeds for labels in label_counts for task in CURVE_TASKS if task in tasks
             for entry in _stages_of(work, inits, task, str(labels), seed, epochs)]
    return plan


def _stages_of(work: pathlib.Path, inits: dict[str, sweep.Stage], task: str, labels: str, seed: int, epochs: int):
    evaluation = common.CPU_EVALUATIONS[task]
    extra = {}
    if labels != ALL:
        subset = work / "subsets" / f"{task}_{labels}_seed{seed}.tsv"
        extra["train_file"] = str(write_subset(training_file(task), subset, int(labels), seed))
    for init, pretraining in inits.items():
        overrides = {**finetuning_overrides(task, epochs), **extra, "init_from": str(pretraining.workdir), "seed": seed}
        workdir = finetune_dir(work, epochs) / task / labels / init / f"seed_{seed}"
        yield task, labels, init, seed, sweep.Stage(task, evaluation["config"], workdir, overrides)


def finished_values(plan) -> list[tuple[str, str, str, int, float]]:
    """(task, labels, init, seed, the task's metric) of every finished fine-tuning run, read once."""
    values = []
    for task, labels, init, seed, stage in plan:
        value = sweep.final_metrics(stage).get(METRICS[task])
        if value is not None:
            values.append((task, labels, init, seed, value))
    return values


def write_runs_csv(values, out: pathlib.Path) -> None:
    """One line per finished fine-tuning run: the numbers every table row is computed from."""
    import csv

    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "labels", "init", "seed", "metric", "value"])
        for task, labels, init, seed, value in values:
            writer.writerow([task, labels, init, seed, METRICS[task].split("/")[1], f"{value:.6f}"])


def _run_stage(stage: sweep.Stage) -> str:
    return sweep.execute(sweep.Run(stage.workdir.name, 0, (stage,)))


def paired_rows(values) -> list[dict]:
    """Per (task, label count): both inits' metric per seed where both finished (`finished_values`),
    and the test."""
    from scipy import stats

    by_row: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    for task, labels, init, seed, metric in values:
        by_row.setdefault((task, labels), {}).setdefault(seed, {})[init] = metric
    rows = []
    for (task, labels), by_seed in by_row.items():
        seeds = sorted(s for s, v in by_seed.items() if len(v) == 2)
        if not seeds:
            continue
        pre = [by_seed[s][PRETRAINED] for s in seeds]
        rand = [by_seed[s][RANDOM_INIT] for s in seeds]
        diffs = [a - b for a, b in zip(pre, rand)]
        p = float("nan")
        if len(seeds) > 1 and statistics.pstdev(diffs) > 0:
            p = float(stats.ttest_rel(pre, rand, alternative="greater").pvalue)
        rows.append(dict(task=task, labels=labels, metric=METRICS[task].split("/")[1], seeds=seeds, pretrained=pre,
                         random_init=rand, wins=sum(d > 0 for d in diffs), p=p))
    return rows


def pretraining_facts(inits: dict[str, sweep.Stage]) -> list[str]:
    lines = ["| init | held-out MLM loss | unigram baseline | MLM accuracy | hidden_cosine | effective rank | pretraining wall time |",
             "|---|---|---|---|---|---|---|"]
    for init, stage in inits.items():
        results_file = stage.workdir / run_files.RESULTS_FILE
        if not results_file.exists():
            continue
        metrics = run_files.read_results(stage.workdir)["final_metrics"]
        starts = (stage.workdir / run_files.STARTS_FILE).read_text(encoding="utf-8").splitlines()
        start = json.loads(starts[0])["time"]
        seconds = results_file.stat().st_mtime - datetime.datetime.fromisoformat(start).timestamp()
        lines.append(f"| {init} | {metrics['mlm_loss']:.4f} | {metrics['mlm_unigram_loss']:.4f} | "
                     f"{metrics['mlm_accuracy']:.4f} | {metrics['hidden_cosine']:.4f} | "
                     f"{metrics['hidden_effective_rank']:.1f} | {seconds / 60:.1f} min |")
    return lines


def report(rows: list[dict]) -> list[str]:
    lines = ["| task | training labels | metric | pretrained | random init | difference | pretrained ahead | "
             "paired one-sided p | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        diff = statistics.mean(row["pretrained"]) - statistics.mean(row["random_init"])
        verdict = "" if row["p"] < 0.05 else " (does not beat)"
        lines.append(f"| {row['task']} | {row['labels']} | {row['metric']} | {sweep.mean_std_cell(row['pretrained'])} | "
                     f"{sweep.mean_std_cell(row['random_init'])} | {diff:+.4f} | {row['wins']}/{len(row['seeds'])} | "
                     f"{row['p']:.4f}{verdict} | {','.join(map(str, row['seeds']))} |")
    return lines


def plot_curves(rows: list[dict], out: pathlib.Path, label_counts: dict[str, int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_TASKS), figsize=(5 * len(CURVE_TASKS), 3.8))
    for ax, task in zip(axes, CURVE_TASKS):
        task_rows = sorted((r for r in rows if r["task"] == task),
                           key=lambda r: label_counts[task] if r["labels"] == ALL else int(r["labels"]))
        x = [label_counts[task] if r["labels"] == ALL else int(r["labels"]) for r in task_rows]
        for init in (PRETRAINED, RANDOM_INIT):
            means = [statistics.mean(r[init]) for r in task_rows]
            stds = [statistics.stdev(r[init]) if len(r[init]) > 1 else 0.0 for r in task_rows]
            ax.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=init)
        ax.set_xscale("log")
        ax.set_xlabel("training labels")
        ax.set_ylabel(f"dev {task_rows[0]['metric'] if task_rows else ''} (mean ± std over seeds)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, type=pathlib.Path)
    parser.add_argument("--seeds", default="0,1,2,3,4", help="fine-tuning seeds")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"fine-tuning tasks, any of {TASKS}")
    parser.add_argument("--label_counts", default="100,300,1000", help="training-set sizes of the curves ('' = none)")
    parser.add_argument("--parallel", type=int, default=2, help="fine-tuning runs at once")
    parser.add_argument("--epochs", type=int, default=0,
                        help="fine-tune for this many epochs (warmup 10%%) instead of the paper tables' CPU step "
                             "budget; runs go to finetune_<N>_epochs/, the report to report_<N>_epochs.md")
    parser.add_argument("--report_only", action="store_true", help="tabulate what has finished; run nothing")
    args = parser.parse_args(argv)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:  # before any stage runs: a typo must not surface after an hour of pretraining
        parser.error(f"unknown tasks {unknown}; expected any of {TASKS}")
    if not os.environ.get("BERT_JAX_DATA"):
        parser.error("set BERT_JAX_DATA to the shared data folder (the corpus, vocab and task files)")
    work = args.workdir.resolve()
    # Stage configs are repo-relative paths (as in the sweeps): run from the root, data made absolute.
    os.environ["BERT_JAX_DATA"] = str(pathlib.Path(os.environ["BERT_JAX_DATA"]).resolve())
    os.chdir(REPO)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    label_counts = [int(n) for n in args.label_counts.split(",") if n.strip()]
    inits = pretraining_stages(work)
    if not args.report_only:
        work.mkdir(parents=True, exist_ok=True)
        for step in data_steps(work):
            sweep.run_prepare(step)
        for init, stage in inits.items():
            print(_run_stage(stage), flush=True)
    plan = finetuning_stages(work, inits, seeds, label_counts, tasks, args.epochs)
    if not args.report_only:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            for status in pool.map(_run_stage, [stage for *_, stage in plan]):
                print(status, flush=True)
    values = finished_values(plan)
    rows = paired_rows(values)
    suffix = protocol_suffix(args.epochs)
    write_runs_csv(values, work / f"runs{suffix}.csv")
    protocol = f", fine-tuned for {args.epochs} epochs" if args.epochs else ""
    lines = [f"# Pretrained (experiments/pretrain.py:cpu) against random init{protocol}", "",
             *pretraining_facts(inits), "", *report(rows), ""]
    (work / f"report{suffix}.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    if label_counts and any(r["task"] in CURVE_TASKS for r in rows):
        from bert_jax.tasks import tsv

        sizes = {task: len(tsv.read_rows(training_file(task))) for task in CURVE_TASKS}
        plot_curves(rows, work / f"label_curves{suffix}.png", sizes)
        print("wrote", work / f"label_curves{suffix}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
