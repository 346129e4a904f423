"""A checkpoint's architecture and vocabulary with freshly initialised weights: the random-init
control that a pretrained model is read against (the sweep's `random_init` row, the quickstart).

    python -m bert_jax.random_init --like CHECKPOINT --out DIR [--seed 0]

CHECKPOINT is anything `load_pretrained` reads (a run's workdir, a Hugging Face, Google or
bert_jax directory); DIR becomes a bert_jax checkpoint of BertForPreTraining (pretraining heads
included) with the same config.json and vocabulary, initialised as the trainer initialises a
fresh model.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys


def vocab_of(checkpoint: str | os.PathLike) -> str | None:
    """The vocabulary a checkpoint was made with: a run's recorded vocab, else the file beside it."""
    from bert_jax import run_files

    checkpoint = os.fspath(checkpoint)
    if run_files.is_run_workdir(checkpoint):
        return run_files.export_info(checkpoint)["vocab_file"]
    return run_files.vocab_beside(checkpoint)


def write_random_init(like: str | os.PathLike, out: str | os.PathLike, seed: int = 0,
                      vocab_file: str | os.PathLike | None = None) -> None:
    """Writes `like`'s architecture with fresh weights (PRNGKey(seed)) and its vocab to `out`."""
    import jax
    import jax.numpy as jnp

    from bert_jax import save_pretrained
    from bert_jax.checkpoints import load_config
    from bert_jax.modeling.models import BertForPreTraining

    config = load_config(like)
    vocab_file = vocab_file or vocab_of(like)
    if vocab_file is None:
        raise FileNotFoundError(f"{like}: no vocabulary recorded or beside it; give vocab_file")
    params = BertForPreTraining(config).init(jax.random.PRNGKey(seed), jnp.ones((1, 8), jnp.int32))["params"]
    save_pretrained(jax.device_get(params), config, out, format="bert_jax", vocab_file=vocab_file)


def main(argv=None) -> int:
    from bert_jax.cli_flags import HelpFormatter, run_main

    parser = argparse.ArgumentParser(prog="python -m bert_jax.random_init", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--like", required=True, help="the checkpoint whose architecture and vocab to copy")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return run_main(lambda: write_random_init(args.like, args.out, args.seed) or 0, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
