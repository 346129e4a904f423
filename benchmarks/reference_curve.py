"""Pretraining from raw text beside an independent Hugging Face pipeline (issue 22).

    python benchmarks/reference_curve.py --workdir W [--steps 1200] [--seeds 0,1,2]
    python benchmarks/reference_curve.py --workdir W --sides ours --plant_bug shifted_labels --seeds 0

Both sides pretrain the same BERT (no NSP, dynamic masking: RoBERTa-style) from the same raw
text, with the same token budget, schedule and optimizer, and are scored by ONE scorer on ONE
fixed masked held-out set:

- ours: `python -m data_pipelines.create_pretraining_data --mode full_sentences --no_masking`,
  then `python -m bert_jax.main --config experiments/pretrain_roberta_style.py:tiny`, which masks
  every epoch anew; a checkpoint every `--eval_every` steps, each exported with
  `save_pretrained(format="hf")`.
- the reference: transformers' `BertTokenizerFast` on the same vocab.txt, the tokens of each
  file concatenated and cut into blocks (`run_mlm.py`'s group_texts, with [CLS]/[SEP] around
  each block), `DataCollatorForLanguageModeling` (15%, 80/10/10, drawn anew every batch),
  `BertForMaskedLM`, torch AdamW with no decay on biases and LayerNorm weights, gradient
  clipping at 1.0 and `get_linear_schedule_with_warmup`. It imports nothing from bert_jax or
  data_pipelines: no tokenisation, instance or masking code of ours.
- the held-out set: the held-out file (default lee_news.txt, which no side trains on) cut into
  blocks by the reference's tokenizer and masked once by its collator under a fixed torch seed.
- the scorer: `BertForMaskedLM` in float32, mean cross-entropy over every masked token of the
  held-out set (ours is read through its HF export).

Time counts data preparation (create_pretraining_data / the reference's tokenisation, once per
side, shared by the seeds) plus start-up, compilation and the training steps; evaluations and
checkpoint saves are not counted. CPU seconds (user + system, every thread) are recorded beside wall
seconds: on a shared machine they are the fairer clock. Outputs in W: `curves.csv` (side, seed,
step, tokens, seconds, cpu_seconds, heldout_loss, load_average), `curves.png` (loss against tokens and against seconds), `summary.md` (the table
printed at the end). NSP has no reference: transformers 5 no longer ships
`TextDatasetForNextSentencePrediction`, so only the MLM pair is compared.

`--plant_bug` runs our side with a data bug planted in its masking (the library is untouched:
the benchmark wraps `data_pipelines.masking.mask_batch` in the trainer's process), to show that
the comparison catches it: `shifted_labels` (each label read one position to the right of the
token it belongs to), `mask_sep` ([SEP] may be chosen and masked).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/reference_curve.py` from a clone
    sys.path.insert(0, str(REPO))
DATA = pathlib.Path(os.environ.get("BERT_JAX_DATA", REPO.parent / "shared" / "data"))
HELDOUT_NAME = "lee_news.txt"
BUGS = ("shifted_labels", "mask_sep")
SEP_ID = 102  # [SEP] in bert-base-uncased's vocab.txt, the vocabulary both sides read

# The architecture both sides build: Google's BERT-tiny (L=2, H=128, A=2, I=512); `--dropout`
# sets both dropout rates (0.1 by default, BERT's).
ARCHITECTURE = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512,
                    max_position_embeddings=512, type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12)


def architecture(args) -> dict:
    return {**ARCHITECTURE, "hidden_dropout_prob": args.dropout, "attention_probs_dropout_prob": args.dropout}


# ---------------------------------------------------------------- the reference (transformers + torch)


def hf_tokenizer(vocab: pathlib.Path):
    from transformers import BertTokenizerFast
    # transformers 5 takes the vocabulary as `vocab=` and ignores a `vocab_file=` keyword, which
    # would leave a 5-piece vocabulary; the size check below catches that.
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    expected = sum(1 for _ in open(vocab, encoding="utf-8"))
    if tokenizer.vocab_size != expected:
        raise ValueError(f"{vocab}: the reference tokenizer has {tokenizer.vocab_size} pieces, the file {expected}")
    return tokenizer


def hf_blocks(tokenizer, files: list[pathlib.Path], seq_len: int) -> np.ndarray:
    """[blocks, seq_len] ids: each file's tokens concatenated (lines in order, documents too),
    cut into seq_len - 2 pieces wrapped in [CLS] ... [SEP]; a file's last partial piece dropped."""
    body = seq_len - 2
    blocks = []
    for path in files:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        ids = [i for piece in tokenizer(lines, add_special_tokens=False)["input_ids"] for i in piece]
        for start in range(0, len(ids) - body + 1, body):
            blocks.append([tokenizer.cls_token_id, *ids[start:start + body], tokenizer.sep_token_id])
    return np.asarray(blocks, np.int64)


def heldout_set(tokenizer, path: pathlib.Path, seq_len: int, limit: int, seed: int) -> dict[str, np.ndarray]:
    """The fixed masked held-out set: the reference's blocks of `path`, masked once by its collator."""
    import torch
    from transformers import DataCollatorForLanguageModeling

    blocks = hf_blocks(tokenizer, [path], seq_len)[:limit]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    torch.manual_seed(seed)
    batch = collator([{"input_ids": torch.tensor(row)} for row in blocks])
    return {"input_ids": batch["input_ids"].numpy(), "labels": batch["labels"].numpy()}


def score(model, heldout: dict[str, np.ndarray], batch_size: int = 64) -> float:
    """Mean cross-entropy (nats) of a transformers BertForMaskedLM over the held-out masked tokens."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(heldout["input_ids"]), batch_size):
            ids = torch.from_numpy(heldout["input_ids"][start:start + batch_size])
            labels = torch.from_numpy(heldout["labels"][start:start + batch_size])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                       ignore_index=-100, reduction="sum").item()
            count += int((labels != -100).sum())
    return total / count


def run_reference(args, seed: int, blocks: np.ndarray, tokenizer, heldout, prep_s: tuple[float, float], out: pathlib.Path) -> list[dict]:
    """Trains BertForMaskedLM the way transformers' examples do; rows of the curve."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, get_linear_schedule_with_warmup

    start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    model = BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, **architecture(args)))
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-6)
    scheduler = get_linear_schedule_with_warmup(optimizer, args.warmup, args.steps)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    order = np.random.default_rng(seed)
    queue: list[int] = []
    rows, train_s = [], prep_s[0] + (time.perf_counter() - start)
    train_cpu = prep_s[1] + (time.process_time() - cpu_start)
    for step in range(1, args.steps + 1):
        tick, cpu_tick = time.perf_counter(), time.process_time()
        if len(queue) < args.batch_size:  # a new epoch: a fresh shuffle
            queue += order.permutation(len(blocks)).tolist()
        chosen, queue = queue[:args.batch_size], queue[args.batch_size:]
        batch = collator([{"input_ids": torch.from_numpy(blocks[i])} for i in chosen])
        model.train()
        loss = model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"]),
                     labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_s += time.perf_counter() - tick
        train_cpu += time.process_time() - cpu_tick
        if step % args.eval_every == 0 or step == args.steps:
            rows.append(_row("reference", seed, step, args, train_s, train_cpu, score(model, heldout)))
            print(json.dumps(rows[-1]), flush=True)
    (out / "done").write_text(json.dumps(rows))
    return rows


# ---------------------------------------------------------------- ours (bert_jax, as a user runs it)


def prepare_ours(args, out: pathlib.Path) -> tuple[float, float]:
    """create_pretraining_data on the training files; its (wall, CPU) seconds."""
    if (out / "instances" / "metadata.json").exists():
        prep = json.loads((out / "prep.json").read_text())
        return prep["seconds"], prep["cpu_seconds"]
    tick, cpu_tick = time.perf_counter(), _children_cpu()
    subprocess.run([sys.executable, "-m", "data_pipelines.create_pretraining_data",
                    "--input_file", ",".join(str(f) for f in args.train_files), "--output_dir", str(out / "instances"),
                    "--vocab_file", str(args.vocab), "--max_seq_length", str(args.seq_len),
                    "--max_predictions_per_seq", str(max_predictions(args)),
                    "--mode", "full_sentences", "--no_masking", "--dupe_factor", "1"],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    seconds, cpu_seconds = time.perf_counter() - tick, _children_cpu() - cpu_tick
    (out / "prep.json").write_text(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds}))
    return seconds, cpu_seconds


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def max_predictions(args) -> int:
    """Masked positions per row of ours: 15% of the sequence, rounded up (RoBERTa's 77 at 512)."""
    return math.ceil(0.15 * args.seq_len)


def _ours_command(args, seed: int, workdir: pathlib.Path, instances: pathlib.Path) -> list[str]:
    overrides = {
        "data.input_files": f"{instances}/*.array_record", "data.vocab_file": args.vocab,
        "data.max_seq_length": args.seq_len, "data.max_predictions_per_seq": max_predictions(args),
        "train.batch_size": args.batch_size, "train.num_steps": args.steps, "train.log_every": args.eval_every,
        "optimizer.learning_rate": args.lr, "optimizer.warmup_steps": args.warmup, "optimizer.b2": 0.999,
        "checkpoint.every_steps": args.eval_every, "checkpoint.keep": args.steps, "checkpoint.keep_best": False,
        "checkpoint.async_save": False, "logging.progress_bar": False, "logging.tensorboard": False, "seed": seed,
        **{f"model.{k}": v for k, v in architecture(args).items()},
    }
    main = ["-m", "bert_jax.main"] if not args.plant_bug else [__file__, "--planted_main", args.plant_bug, "--"]
    return [sys.executable, *main, "--config=experiments/pretrain_roberta_style.py:tiny", f"--workdir={workdir}",
            *[f"--config.{k}={v}" for k, v in overrides.items()]]


def run_ours(args, seed: int, heldout, prep_s: tuple[float, float], out: pathlib.Path) -> list[dict]:
    """bert_jax.main in a subprocess, then every checkpoint exported to HF and scored."""
    from transformers import BertForMaskedLM

    from bert_jax import save_pretrained
    from bert_jax.checkpoints import load_config
    from bert_jax.run_checkpoints import restore_params

    workdir = out / "run"
    tick, cpu_tick = time.perf_counter(), _children_cpu()
    subprocess.run(_ours_command(args, seed, workdir, args.ours_instances), check=True, cwd=REPO,
                   stdout=open(out / "train.log", "w"), stderr=subprocess.STDOUT)
    wall, cpu = time.perf_counter() - tick, _children_cpu() - cpu_tick
    # Each train row covers the steps since the previous one: their step and data-wait seconds
    # count, its eval and checkpoint seconds do not.
    train_rows = [json.loads(line) for line in open(workdir / "metrics.jsonl") if '"train"' in line]
    step_s, previous = {}, 0
    for r in train_rows:
        step_s[r["step"]] = r["step_time_s"] * (r["step"] - previous) + r["data_wait_s"]
        previous = r["step"]
    excluded = sum(r["checkpoint_s"] + r["eval_s"] for r in train_rows)
    overhead = wall - sum(step_s.values()) - excluded  # process start-up, compilation, the final save
    # The trainer's CPU seconds are known in total only: spread over its phases as its wall time is.
    cpu_per_wall = cpu / wall
    bert_config = load_config(workdir)
    rows, elapsed, elapsed_cpu = [], prep_s[0] + overhead, prep_s[1] + overhead * cpu_per_wall
    for step in sorted(step_s):
        elapsed += step_s[step]
        elapsed_cpu += step_s[step] * cpu_per_wall
        params, _ = restore_params(workdir, step)
        export = out / "export"
        save_pretrained(params, bert_config, export, format="hf")
        model = BertForMaskedLM.from_pretrained(export)
        rows.append(_row("ours" + (f"+{args.plant_bug}" if args.plant_bug else ""), seed, step, args, elapsed,
                         elapsed_cpu, score(model, heldout)))
        print(json.dumps(rows[-1]), flush=True)
    (out / "done").write_text(json.dumps(rows))
    return rows


def planted_main(bug: str, main_argv: list[str]) -> None:
    """bert_jax.main with a data bug planted in the masking it calls (for the comparison's check)."""
    import runpy

    from data_pipelines import masking

    real = masking.mask_batch

    def buggy(input_ids, input_mask, vocab, **kwargs):
        if bug == "mask_sep":  # [SEP] becomes a candidate like any word piece
            is_special = vocab.is_special.copy()
            is_special[SEP_ID] = False
            vocab = dataclasses.replace(vocab, is_special=is_special)
        out = real(input_ids, input_mask, vocab, **kwargs)
        if bug == "shifted_labels":
            weights = out["masked_lm_weights"] > 0
            shifted = np.minimum(out["masked_lm_positions"] + 1, input_ids.shape[1] - 1)
            out["masked_lm_positions"] = np.where(weights, shifted, out["masked_lm_positions"])
        return out

    masking.mask_batch = buggy
    sys.argv = ["bert_jax.main", *main_argv]
    runpy.run_module("bert_jax.main", run_name="__main__")


# ---------------------------------------------------------------- the comparison


def _row(side, seed, step, args, seconds, cpu_seconds, loss) -> dict:
    return {"side": side, "seed": seed, "step": step, "tokens": step * args.batch_size * args.seq_len,
            "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2), "heldout_loss": round(loss, 5),
            "load_average": round(os.getloadavg()[0], 2)}


def time_to_loss(rows: list[dict], target: float, clock: str = "seconds") -> float | None:
    """`clock` (seconds or cpu_seconds) at which a run's curve first reaches `target`, linear
    between evaluations; None if it never does."""
    previous = None
    for row in rows:
        if row["heldout_loss"] <= target:
            if previous is None:
                return row[clock]
            fraction = (previous["heldout_loss"] - target) / (previous["heldout_loss"] - row["heldout_loss"])
            return previous[clock] + fraction * (row[clock] - previous[clock])
        previous = row
    return None


def summarise(runs: dict[tuple[str, int], list[dict]], unigram: float) -> list[str]:
    sides = sorted({side for side, _ in runs})
    finals = {side: [rows[-1]["heldout_loss"] for (s, _), rows in runs.items() if s == side] for side in sides}
    lines = ["| side | seeds | final held-out MLM loss (mean ± std) | per seed | seconds to the end (mean) |",
             "|---|---|---|---|---|"]
    for side in sides:
        values = finals[side]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        seconds = statistics.mean(rows[-1]["seconds"] for (s, _), rows in runs.items() if s == side)
        lines.append(f"| {side} | {len(values)} | {statistics.mean(values):.4f} ± {std:.4f} | "
                     f"{', '.join(f'{v:.4f}' for v in values)} | {seconds:.0f} |")
    lines.append(f"| unigram baseline (training frequencies, reference tokenizer) | - | {unigram:.4f} | | |")
    if "reference" in finals:
        target = statistics.mean(finals["reference"])
        for side in sides:
            if side == "reference":
                continue
            gap = statistics.mean(finals[side]) / target - 1
            lines.append(f"\n{side}: final loss {100 * gap:+.2f}% against the reference (goal: at most +2%).")
            # Time to equal loss: the highest final loss of any run of the two sides, which every run reaches.
            equal = max(finals["reference"] + finals[side])
            for clock in ("seconds", "cpu_seconds"):
                times = {s: [time_to_loss(rows, equal, clock) for (name, _), rows in runs.items() if name == s]
                         for s in (side, "reference")}
                missing = [s for s in times if any(t is None for t in times[s])]
                if missing:
                    lines.append(f"{side}: {', '.join(missing)} does not reach loss {equal:.4f} in every seed.")
                    break
                ratio = statistics.mean(times["reference"]) / statistics.mean(times[side])
                lines.append(f"{side}: {clock.replace('_', ' ')} to loss {equal:.4f} (the highest final of any run), data "
                             f"preparation included: {statistics.mean(times[side]):.0f} against "
                             f"{statistics.mean(times['reference']):.0f} for the reference ({ratio:.2f}x).")
    loads = [row["load_average"] for rows in runs.values() for row in rows]
    lines.append(f"\nLoad average (1 min) at the evaluations: {min(loads):.1f} to {max(loads):.1f} "
                 f"on {os.cpu_count()} cores; wall seconds are comparable only at equal load, CPU seconds less so.")
    return lines


def unigram_loss(blocks: np.ndarray, heldout, vocab_size: int, special: set[int]) -> float:
    """The context-free baseline on the held-out set: add-one smoothed training frequencies of the
    reference's tokens. Written here rather than calling bert_jax.tasks.unigram_baseline so that
    nothing on the reference side runs our code."""
    counts = np.bincount(blocks.ravel(), minlength=vocab_size).astype(np.float64)
    counts[list(special)] = 0
    log_p = np.log((counts + 1) / (counts.sum() + vocab_size))
    targets = heldout["labels"][heldout["labels"] != -100]
    return float(-log_p[targets].mean())


def plot(runs: dict[tuple[str, int], list[dict]], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    colors = {}
    for (side, seed), rows in sorted(runs.items()):
        color = colors.setdefault(side, f"C{len(colors)}")
        for ax, x in zip(axes, ("tokens", "seconds", "cpu_seconds")):
            ax.plot([r[x] for r in rows], [r["heldout_loss"] for r in rows], color=color, alpha=0.8,
                    label=side if seed == min(s for n, s in runs if n == side) else None)
    for ax, x in zip(axes, ("training tokens", "wall seconds (data preparation + training)",
                            "CPU seconds (data preparation + training)")):
        ax.set_xlabel(x)
        ax.set_ylabel("held-out MLM loss (nats)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--planted_main"]:
        planted_main(argv[1], argv[3:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, type=pathlib.Path)
    p.add_argument("--sides", default="ours,reference")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=120)
    p.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout, both sides")
    p.add_argument("--eval_every", type=int, default=200)
    p.add_argument("--heldout_blocks", type=int, default=512)
    p.add_argument("--plant_bug", choices=BUGS)
    p.add_argument("--vocab", type=pathlib.Path, default=DATA / "vocab" / "bert-base-uncased-vocab.txt")
    p.add_argument("--corpus", type=pathlib.Path, default=DATA / "corpus")
    args = p.parse_args(argv)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    files = sorted(args.corpus.glob("*.txt"))
    args.train_files = [f for f in files if f.name != HELDOUT_NAME]
    tokenizer = hf_tokenizer(args.vocab)
    heldout_path = work / "heldout.npz"
    if not heldout_path.exists():
        np.savez(heldout_path, **heldout_set(tokenizer, args.corpus / HELDOUT_NAME, args.seq_len, args.heldout_blocks, 1234))
    heldout = dict(np.load(heldout_path))

    runs: dict[tuple[str, int], list[dict]] = {}
    blocks, reference_prep = None, None
    for seed in [int(s) for s in args.seeds.split(",")]:
        for side in args.sides.split(","):
            name = side + (f"+{args.plant_bug}" if side == "ours" and args.plant_bug else "")
            out = work / name / f"seed_{seed}"
            if (out / "done").exists():  # finished before: reuse
                runs[(name, seed)] = json.loads((out / "done").read_text())
                continue
            out.mkdir(parents=True, exist_ok=True)
            if side == "reference":
                if blocks is None:
                    tick, cpu_tick = time.perf_counter(), time.process_time()
                    blocks = hf_blocks(tokenizer, args.train_files, args.seq_len)
                    reference_prep = (time.perf_counter() - tick, time.process_time() - cpu_tick)
                runs[(name, seed)] = run_reference(args, seed, blocks, tokenizer, heldout, reference_prep, out)
            else:
                args.ours_instances = work / "ours_data" / "instances"
                prep = prepare_ours(args, work / "ours_data")
                runs[(name, seed)] = run_ours(args, seed, heldout, prep, out)
    for previous in work.glob("*/seed_*/done"):  # other sides finished in earlier invocations
        side, seed = previous.parent.parent.name, int(previous.parent.name.split("_")[1])
        runs.setdefault((side, seed), json.loads(previous.read_text()))

    if blocks is None:
        blocks = hf_blocks(tokenizer, args.train_files, args.seq_len)
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id,
               tokenizer.unk_token_id}
    lines = summarise(runs, unigram_loss(blocks, heldout, tokenizer.vocab_size, special))
    with open(work / "curves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["side", "seed", "step", "tokens", "seconds", "cpu_seconds",
                                               "heldout_loss", "load_average"])
        writer.writeheader()
        for rows in runs.values():
            writer.writerows(rows)
    plot(runs, work / "curves.png")
    (work / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
