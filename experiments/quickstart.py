"""The quickstart: does pretraining help? A tiny BERT, end to end, on built-in real data.

    python experiments/quickstart.py [--workdir workdirs/quickstart]

On 2 CPU cores, in under 10 minutes, it
  1. trains a SentencePiece vocabulary on 1.8 MB of Jane Austen (data/quickstart/austen.txt),
  2. creates BERT pretraining instances from the same text (MLM + NSP, Google's recipe),
  3. pretrains a tiny BERT (2 layers, hidden 128) with MLM + NSP,
  4. fine-tunes it on Rotten Tomatoes sentiment (data/quickstart/sentiment_*.tsv),
  5. fine-tunes the same architecture from random init with the same budget,
  6. prints dev accuracy with and without pretraining and plots the pretraining loss.
Every stage is one of the project's public commands, printed before it runs, so each can be
rerun or changed on its own. A stage whose output exists is skipped on a rerun.

This file is also the experiment file of the two training stages:
  get_config("pretrain")   the tiny pretraining run (experiments/pretrain.py:tiny + the budget below)
  get_config("finetune")   sentiment fine-tuning (experiments/finetune_tsv.py:sentiment + the budget below)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python experiments/quickstart.py` from a fresh clone
    sys.path.insert(0, str(REPO))

from experiments import finetune_tsv, pretrain  # noqa: E402

CORPUS = REPO / "data/quickstart/austen.txt"
VOCAB_SIZE = 8000
DUPE_FACTOR = 5  # distinct maskings of the corpus: ~21k instances of up to 128 tokens

DOCUMENTED_ARGS = ("pretrain", "finetune")

# The budget. Pretraining gets most of the 10 minutes; both fine-tuning runs get the same one.
PRETRAIN = dict(batch_size=64, num_steps=400, learning_rate=1e-3, warmup_steps=40)
# lr 1e-3: at 1e-4 both tiny models stayed at the majority class (0.586) after 250 steps.
FINETUNE = dict(batch_size=32, num_epochs=3, learning_rate=1e-3, max_seq_length=64)


def get_config(arg: str = "pretrain"):
    if arg == "pretrain":
        config = pretrain.get_config("tiny")
        config.model.vocab_size = VOCAB_SIZE
        config.train.batch_size = PRETRAIN["batch_size"]
        config.train.num_steps = PRETRAIN["num_steps"]
        config.train.log_every = 50
        config.train.eval_every = 0
        config.optimizer.learning_rate = PRETRAIN["learning_rate"]
        config.optimizer.warmup_steps = PRETRAIN["warmup_steps"]
        config.checkpoint.every_steps = 200
        config.checkpoint.keep = 1
        return config
    if arg == "finetune":
        config = finetune_tsv.get_config("sentiment")
        config.train.batch_size = FINETUNE["batch_size"]
        config.num_epochs = FINETUNE["num_epochs"]
        config.optimizer.learning_rate = FINETUNE["learning_rate"]
        config.max_seq_length = FINETUNE["max_seq_length"]
        return config
    raise ValueError(f"experiments/quickstart.py: unknown arg {arg!r}; expected 'pretrain' or 'finetune'")


def _run(title: str, cmd: list[str], done_marker: pathlib.Path) -> None:
    print(f"\n== {title}\n$ {shlex.join(cmd)}", flush=True)
    if done_marker.exists():
        print(f"   (skipped: {done_marker} exists)", flush=True)
        return
    start = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    print(f"   ({time.time() - start:.0f} s)", flush=True)


def write_random_init(pretrain_workdir: pathlib.Path, out_dir: pathlib.Path, vocab_file: pathlib.Path) -> None:
    """The pretrained run's architecture with freshly initialised weights, as a bert_jax checkpoint."""
    import jax

    from bert_jax import save_pretrained
    from bert_jax.checkpoints import load_config
    from bert_jax.modeling.models import BertForPreTraining

    config = load_config(pretrain_workdir)
    params = BertForPreTraining(config).init(jax.random.PRNGKey(0), jax.numpy.ones((1, 8), "int32"))["params"]
    save_pretrained(jax.device_get(params), config, out_dir, format="bert_jax", vocab_file=vocab_file)


def plot_pretraining_loss(metrics_file: pathlib.Path, out_png: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("split") == "train"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("mlm_loss", "nsp_loss"):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("quickstart: tiny BERT pretraining on Austen")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="bert_jax quickstart: pretrain a tiny BERT, fine-tune, compare.")
    parser.add_argument("--workdir", default=str(REPO / "workdirs/quickstart"))
    args = parser.parse_args(argv)
    work = pathlib.Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    start = time.time()

    spm_prefix = work / "vocab/spm"
    spm_model = spm_prefix.with_suffix(".model")
    _run("1/5 train a SentencePiece vocabulary on Austen",
         [python, "-m", "data_pipelines.train_vocab", "--input", str(CORPUS), "--vocab-size", str(VOCAB_SIZE),
          "--model-type", "unigram", "--output", str(spm_prefix)], spm_model)

    instances = work / "instances"
    _run("2/5 create pretraining instances (MLM + NSP)",
         [python, "-m", "data_pipelines.create_pretraining_data", "--input_file", str(CORPUS),
          "--output_dir", str(instances), "--vocab_file", str(spm_model),
          "--max_seq_length", "128", "--dupe_factor", str(DUPE_FACTOR)], instances / "metadata.json")

    pretrain_dir = work / "pretrain"
    _run("3/5 pretrain a tiny BERT",
         [python, "-m", "bert_jax.main", f"--config={REPO / 'experiments/quickstart.py'}:pretrain",
          f"--workdir={pretrain_dir}", f"--config.data.input_files={instances}/*.tfrecord",
          f"--config.data.vocab_file={spm_model}"], pretrain_dir / "results.json")

    random_dir = work / "random_init"
    if not random_dir.exists():
        write_random_init(pretrain_dir, random_dir, spm_model)

    results = {}
    for label, init in (("pretrained", pretrain_dir), ("random init", random_dir)):
        ft_dir = work / f"finetune_{label.replace(' ', '_')}"
        _run(f"4-5/5 fine-tune on sentiment from {label}",
             [python, "-m", "bert_jax.main", f"--config={REPO / 'experiments/quickstart.py'}:finetune",
              f"--workdir={ft_dir}", f"--config.init_from={init}", f"--config.vocab_file={spm_model}"],
             ft_dir / "results.json")
        results[label] = json.loads((ft_dir / "results.json").read_text())

    plot = work / "pretraining_loss.png"
    plot_pretraining_loss(pretrain_dir / "metrics.jsonl", plot)
    dev_majority = 0.586  # data/quickstart/README.md: 58.6% of dev is positive
    print("\n| init | dev accuracy | fine-tuning steps |")
    print("|---|---|---|")
    for label, res in results.items():
        print(f"| {label} | {res['final_metrics']['accuracy']:.4f} | {res['step']} |")
    print(f"| (majority class) | {dev_majority:.4f} | - |")
    print(f"\nplot: {plot}\noutputs: {work}\ntotal: {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
