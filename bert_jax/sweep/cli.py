"""`python -m bert_jax.sweep`: plans a sweep (plan), prints its command lines or runs them
(launch), then writes its tables and plots (report)."""

from __future__ import annotations

import argparse
import concurrent.futures
import pathlib

from bert_jax.sweep.launch import execute, run_prepare
from bert_jax.sweep.plan import grid_sweep, load_sweep, plan_prepare, plan_runs, shell_line
from bert_jax.sweep.report import (_main_metrics, best_variant, detectable_differences, paper_table, per_seed_table,
                                   plot_curves, summarise, write_tables)

DEPRECATED = {"--print-commands": "--print_commands"}  # old spelling: a deprecated alias


def main(argv: list[str] | None = None) -> int:
    from bert_jax import sweep as package  # its docstring documents the sweep file and this CLI
    from bert_jax.cli_flags import HelpFormatter, rewrite_deprecated

    parser = argparse.ArgumentParser(prog="python -m bert_jax.sweep", description=package.__doc__,
                                     formatter_class=HelpFormatter)
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
    parser.add_argument("--report_only", action="store_true",
                        help="launch nothing: tabulate and plot the stages that have finished so far")
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

    failed = False
    if args.report_only:
        if not workdir.is_dir():
            parser.error(f"--report_only: {workdir} does not exist; there is nothing to tabulate")
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        for step in prepare:
            run_prepare(step)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            for status in pool.map(execute, runs):
                print(status, flush=True)
                failed |= "FAILED" in status

    header, table = summarise(runs)
    paper = sweep.get("paper")
    write_tables(workdir, header, table, (paper, *paper_table(runs, paper)) if paper else None,
                 detectable_differences(runs, paper) if paper else "", per_seed_table(runs, paper) if paper else None)
    main_metrics = _main_metrics(runs)
    plots = plot_curves(runs, workdir, main_metrics)
    print((workdir / "results.md").read_text(encoding="utf-8"))
    for name in main_metrics:
        best = best_variant(runs, name)
        if best:
            print(f"best on dev ({name}): {best[0]} ({best[1]} = {best[2]:.4f})")
    print("wrote", workdir / "results.md", workdir / "results.csv", *plots)
    return 1 if failed else 0
