"""Run an ablation: every variant (x seed) pretrains, then fine-tunes, in its own sub-workdir.

    python -m bert_jax.sweep experiments/ablations/nsp.py --workdir DIR [--parallel N] [--print_commands | --report_only]
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
      "pretrain_seed": 0,                                    # optional; default None
    }

By default every seed pretrains its own model, so the seed spread includes pretraining's.
"pretrain_seed": N pretrains each variant once, at seed N, and fine-tunes that checkpoint at
every seed, as the paper's random restarts do (§4.1: one pretrained checkpoint, a new data order
and classifier initialisation per restart), at 1/len(seeds) of the pretraining cost.

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

# The sweep in three modules, each one job: plan (the schema, and variants x seeds -> stages),
# launch (runs them: the only module that starts processes) and report (reads finished runs,
# writes tables and plots); cli is the command line. The names below keep
# `from bert_jax.sweep import X` and `sweep.X` working.
from bert_jax.sweep.plan import (CONTROL, GRID_FIELDS, PRETRAIN, SWEEP_KEYS, VARIANT_PARTS, Evaluation, Prepare, Run,
                                 Stage, check_sweep, evaluations, grid_sweep, load_sweep, plan_prepare, plan_runs,
                                 load_experiment_config, shell_line, variant_parts)
from bert_jax.sweep.launch import execute, run_prepare
from bert_jax.sweep.report import (ENCODER_COLUMN, beats_control, best_variant, detectable_differences, encoder_health,
                                   final_metrics, mean_std_cell, paper_table, per_seed_table, plot_curves, summarise,
                                   write_tables)
from bert_jax.sweep.cli import DEPRECATED, main

__all__ = ["CONTROL", "GRID_FIELDS", "PRETRAIN", "SWEEP_KEYS", "VARIANT_PARTS", "Evaluation", "Prepare", "Run",
           "Stage", "check_sweep", "evaluations", "grid_sweep", "load_experiment_config", "load_sweep",
           "plan_prepare", "plan_runs", "shell_line", "variant_parts", "execute", "run_prepare",
           "ENCODER_COLUMN", "beats_control", "best_variant", "detectable_differences", "encoder_health",
           "final_metrics", "mean_std_cell", "paper_table", "per_seed_table", "plot_curves", "summarise", "write_tables",
           "DEPRECATED", "main"]
