"""Convert a BERT checkpoint between formats.

    python -m bert_jax.convert --input DIR --output OUT --to {bert_jax,hf}

The input format (Hugging Face, Google TF, bert_jax) is detected. A vocab.txt next to the
input is copied along. `--to hf` gives a directory that transformers' `from_pretrained` reads.
"""

from __future__ import annotations

import argparse
import os
import sys

from bert_jax.checkpoints import CheckpointError, detect_format, flatten, load_pretrained, save_pretrained
from bert_jax.config import ConfigError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bert_jax.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="checkpoint directory (HF, Google TF, bert_jax) or TF prefix")
    parser.add_argument("--output", required=True, help="directory to write")
    parser.add_argument("--to", required=True, choices=("bert_jax", "hf"), help="output format")
    parser.add_argument(
        "--no-check-vocab",
        action="store_true",
        help="do not require the input's vocab.txt to have vocab_size entries (it is then not copied)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        source_format = detect_format(args.input)
        config, params = load_pretrained(args.input, check_vocab=not args.no_check_vocab)
        input_dir = args.input if os.path.isdir(args.input) else os.path.dirname(args.input)
        vocab = os.path.join(input_dir, "vocab.txt")
        vocab = vocab if os.path.isfile(vocab) and not args.no_check_vocab else None
        save_pretrained(params, config, args.output, format=args.to, vocab_file=vocab)
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n_params = sum(v.size for v in flatten(params).values())
    groups = sorted({k.split("/")[0] for k in flatten(params)})
    print(
        f"{args.input} ({source_format}) -> {args.output} ({args.to}): {n_params:,} parameters "
        f"[{', '.join(groups)}], {config.num_hidden_layers} layers, hidden {config.hidden_size}"
        + (", vocab.txt copied" if vocab else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
