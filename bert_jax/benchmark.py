"""Times the full pretraining train step (MLM + NSP, AdamW, clipping) on synthetic batches.

    python -m bert_jax.benchmark --model mini --seq_len 128 --batch_size 32 --steps 10 [--mesh 1,1,1]

The step is the trainer's own, compiled under the trainer's mesh and logical axis rules and timed
per step from dispatch to `block_until_ready` (`bert_jax.step_timing`, which benchmarks/gpu_check.py
times through too), as the trainer times the step_time_s it logs, so both report the same tokens/s
and MFU for the same run; compile_time_s is the ahead-of-time compilation.

    python -m bert_jax.benchmark --model tiny --seq_len 128 --batch_size 32 --steps 40 --trainer

`--trainer` also runs the trainer itself on the same synthetic batches, with evaluation
and checkpoints every 10 steps and with both off (`--trainer_repeats N`: N of each, alternating),
and prints the median tokens_per_s each one logged and the gap between them (eval/checkpoint
time is logged apart, so the two should agree). Batches follow Google's pretraining features
with 20 masked predictions per sequence of 128 (scaled with the length: 0.15 * seq_len).
Prints ONE JSON line: tokens_per_s, step_time_s (median), model_flops_per_token, mfu, peak_flops
(per device) and its source, plus the settings.
"""

from __future__ import annotations

import argparse
import json
import math


# Old dashed spellings: deprecated aliases.
DEPRECATED = {"--seq-len": "--seq_len", "--batch-size": "--batch_size", "--max-predictions": "--max_predictions", "--scan-layers": "--scan_layers", "--grad-accum-steps": "--grad_accum_steps", "--peak-flops": "--peak_flops"}


def main(argv=None) -> dict:
    from bert_jax.cli_flags import HelpFormatter, rewrite_deprecated

    parser = argparse.ArgumentParser(prog="python -m bert_jax.benchmark", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--model", default="base", choices=["tiny", "mini", "small", "medium", "base", "large"])
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32, help="global batch, in sequences")
    parser.add_argument("--steps", type=int, default=10, help="timed steps, after 2 warm-up steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (the first compiles)")
    parser.add_argument("--max_predictions", type=int, default=None,
                        help="masked positions per sequence (default: 20 at 128, 80 at 512 as Google)")
    parser.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor sizes (-1 = the rest)")
    parser.add_argument("--rules", default="data_parallel", help="data_parallel | fsdp | tensor")
    parser.add_argument("--dtype", default="float32", help="compute dtype: float32 | bfloat16")
    parser.add_argument("--remat", default="none", help="none | full | minimal")
    parser.add_argument("--scan_layers", action="store_true")
    parser.add_argument("--grad_accum_steps", type=int, default=1)
    parser.add_argument("--trainer", action="store_true",
                        help="also run the trainer with eval+checkpoints on and off; print its logged tokens/s")
    parser.add_argument("--trainer_repeats", type=int, default=1,
                        help="with --trainer: runs of each variant, alternating (neither first)")
    parser.add_argument("--peak_flops", type=float, default=0.0,
                        help="peak FLOP/s per device for MFU (0: device table, else a measured fp32 matmul)")
    args = parser.parse_args(rewrite_deprecated(argv, DEPRECATED, "bert_jax.benchmark"))

    from bert_jax import step_timing
    from bert_jax.tasks.pretraining import PretrainingTask, base_config

    # Google's max_predictions_per_seq: 20 at 128, 80 at 512; else 15% of the length, rounded up.
    predictions = args.max_predictions or {128: 20, 512: 80}.get(args.seq_len, math.ceil(0.15 * args.seq_len))
    config = base_config(args.model, args.seq_len, predictions, synthetic=True)
    config.model.update(dtype=args.dtype, remat=args.remat, scan_layers=args.scan_layers)
    data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
    config.mesh.update(data=data, fsdp=fsdp, tensor=tensor, rules=args.rules)
    total_steps = args.warmup + args.steps
    config.train.update(batch_size=args.batch_size, grad_accum_steps=args.grad_accum_steps, num_steps=10 * total_steps)
    config.optimizer.warmup_steps = total_steps  # the lr value does not change the cost of a step

    step = step_timing.compile_step(config, PretrainingTask(config), args.batch_size)
    figures = step_timing.time_train_step(step, args.steps, args.warmup, args.peak_flops)
    result = {
        "model": args.model, "seq_len": args.seq_len, "batch_size": args.batch_size, "steps": args.steps,
        "masked_predictions": predictions, "dtype": args.dtype, "mesh": dict(step.run.mesh.shape), "rules": args.rules,
        "device_kind": step.run.mesh.devices.flat[0].device_kind,
        **{k: v for k, v in figures.items() if k not in ("step_times_s", "sequences_per_s")},
    }
    if args.trainer:
        result["trainer_tokens_per_s"] = _trainer_tokens_per_s(config, args, total_steps)
    print(json.dumps(result))
    return result


def _trainer_tokens_per_s(config, args, steps: int) -> dict:
    """Median logged tokens_per_s of the trainer on the same synthetic batches, with evaluation
    and checkpoints every 10 steps ("eval_and_checkpoints") and with both off ("neither"),
    alternating `--trainer_repeats` times (neither first). Each run's figure is the median over
    its logged steps after the warm-up; the result holds every run, the median of each variant's
    runs, and their relative gap (eval_and_checkpoints / neither - 1)."""
    import os
    import statistics as stats
    import tempfile

    from bert_jax import train
    from bert_jax import run_files

    variants = (("neither", 0), ("eval_and_checkpoints", 10))
    runs = []
    for _ in range(args.trainer_repeats):
        for name, every in variants:
            c = config.copy_and_resolve_references()
            c.model.update(dtype=args.dtype, remat=args.remat, scan_layers=args.scan_layers)
            c.train.update(batch_size=args.batch_size, num_steps=steps, log_every=1, eval_batch_size=args.batch_size,
                           eval_every=every, grad_accum_steps=args.grad_accum_steps)
            c.task.num_eval_batches = 2 if every else 0
            c.checkpoint.update(every_steps=every or 10 * steps, async_save=True)
            c.logging.update(tensorboard=False, progress_bar=False, peak_flops_per_device=args.peak_flops or 0.0)
            load = os.getloadavg()  # other work on the machine shows in the figures: recorded per run
            with tempfile.TemporaryDirectory() as workdir:
                train.train_and_evaluate(c, workdir)
                rows = run_files.read_metrics(workdir)
            train_rows = [r for r in rows if r["split"] == "train"]
            runs.append({"variant": name,
                         "tokens_per_s": stats.median(r["tokens_per_s"] for r in train_rows if r["step"] > args.warmup),
                         "eval_s": sum(r["eval_s"] for r in train_rows),
                         "checkpoint_s": sum(r["checkpoint_s"] for r in train_rows),
                         "evaluations": sum(r["split"] == "eval" for r in rows),
                         "loadavg_before": [round(x, 2) for x in load]})
    out = {name: stats.median(r["tokens_per_s"] for r in runs if r["variant"] == name) for name, _ in variants}
    out["gap"] = out["eval_and_checkpoints"] / out["neither"] - 1
    out["runs"] = runs
    return out


if __name__ == "__main__":
    main()
