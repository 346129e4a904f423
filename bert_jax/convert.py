"""Convert a BERT checkpoint between formats.

    python -m bert_jax.convert --input DIR --output OUT --to {hf,google,bert_jax}

The input format (Hugging Face, Google TF, bert_jax, a bert_jax training run's workdir) is
detected. `--to hf` writes what transformers' AutoModelFor* and AutoTokenizer load with nothing
else: config.json (id2label with the run's label names), model.safetensors, tokenizer.json,
tokenizer_config.json, special_tokens_map.json and vocab.txt. `--to google` writes
google-research/bert's bert_config.json, bert_model.ckpt.* and vocab.txt.

The vocabulary and casing come from the input: a vocab.txt (or spm.model) beside it and a
Hugging Face tokenizer_config.json, or for a run workdir what the run recorded (its config, the
pretraining data's metadata.json, its init_from). --vocab_file / --do_lower_case override them.
An export that cannot write a working tokenizer fails and writes nothing, and so does the export
of a run whose model has a head no BERT format holds (a BiLSTM head or the feature-based mode:
config.task.head='bilstm', config.task.features).
"""

from __future__ import annotations

import argparse
import os
import sys

from bert_jax.checkpoints import CheckpointError, detect_format, flatten, load_pretrained, save_pretrained
from bert_jax import run_files
from bert_jax.checkpoints import hf, hf_tokenizer
from bert_jax.cli_flags import HelpFormatter, parse_bool, rewrite_deprecated
from bert_jax.config import ConfigError

PROG = "python -m bert_jax.convert"
DEPRECATED = {"--no-check-vocab": "--no_check_vocab"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--input", required=True,
                        help="checkpoint directory (HF, Google TF, bert_jax, run workdir) or TF prefix")
    parser.add_argument("--output", required=True, help="directory to write")
    parser.add_argument("--to", required=True, choices=("bert_jax", "hf", "google"), help="output format")
    parser.add_argument("--vocab_file", default=None,
                        help="vocabulary to export with the model (default: the input's)")
    parser.add_argument("--do_lower_case", type=parse_bool, default=None,
                        help="uncased (true) or cased (false) tokenisation; default: what the input "
                             "records, else true")
    parser.add_argument("--no_tokenizer", action="store_true",
                        help="--to hf without any vocabulary: write weights and config only (AutoTokenizer "
                             "cannot load such a directory correctly)")
    parser.add_argument("--no_check_vocab", action="store_true",
                        help="do not require the input's vocab.txt to have vocab_size entries (it is then not copied)")
    return parser.parse_args(rewrite_deprecated(argv, DEPRECATED, PROG))


def _export_facts(args, source_format: str) -> tuple[str | None, bool | None, list | None, str | None, list[str]]:
    """(vocab_file, lowercase, label_names, architecture, where each came from)."""
    if source_format == "run_workdir":
        info = run_files.export_info(args.input)
        return info["vocab_file"], info["lowercase"], info["label_names"], info["architecture"], info["sources"]
    input_dir = args.input if os.path.isdir(args.input) else os.path.dirname(args.input)
    vocab = run_files.vocab_beside(input_dir)
    lowercase = hf_tokenizer.read_lowercase(input_dir)
    label_names = architecture = None
    if source_format == "hf":
        import json
        with open(os.path.join(input_dir, hf.CONFIG_FILE), encoding="utf-8") as f:
            hf_config = json.load(f)
        id2label = hf_config.get("id2label")
        if isinstance(id2label, dict) and id2label:
            label_names = [id2label[str(i)] for i in range(len(id2label))]
        architecture = (hf_config.get("architectures") or [None])[0]
    sources = [f"vocab {vocab}"] if vocab else []
    return vocab, lowercase, label_names, architecture, sources


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        source_format = detect_format(args.input)
        if source_format == "run_workdir":  # before reading weights that the BERT table cannot hold
            hf.refuse_non_bert_head((run_files.read_head(args.input) or {}).get("model_class"),
                                   f"{args.input} ({run_files.HEAD_FILE})")
        config, params = load_pretrained(args.input, check_vocab=not args.no_check_vocab)
        vocab, lowercase, label_names, architecture, sources = _export_facts(args, source_format)
        if args.no_check_vocab and not args.vocab_file:
            vocab = None
        vocab = args.vocab_file or vocab
        if vocab is not None and not os.path.isfile(vocab):
            raise CheckpointError(f"vocab file {vocab} does not exist (from {', '.join(sources) or '--vocab_file'})")
        notes = []
        if args.do_lower_case is not None:
            lowercase = args.do_lower_case
        elif lowercase is None and vocab is not None:
            lowercase = True
            notes.append(f"{args.input} does not record its casing; exported as uncased (do_lower_case=true); "
                         f"pass --do_lower_case=false for a cased model")
        if args.to == "hf" and vocab is None and not args.no_tokenizer:
            raise CheckpointError(
                f"no vocabulary found for {args.input} ({source_format}): without one the Hugging Face "
                f"directory has no tokenizer and AutoTokenizer.from_pretrained would not give the model's ids. "
                f"Pass --vocab_file VOCAB (and --do_lower_case), or --no_tokenizer for weights and config only")
        if args.to == "hf":
            save_pretrained(params, config, args.output, format="hf", vocab_file=vocab,
                            lowercase=bool(lowercase) if vocab is not None else True,
                            label_names=label_names if "classifier" in params else None,
                            architecture=architecture if architecture and architecture.startswith("BertFor")
                            and ("classifier" in params or "qa_outputs" in params) else None)
        else:
            save_pretrained(params, config, args.output, format=args.to, vocab_file=vocab)
    except (CheckpointError, ConfigError, run_files.WorkdirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    n_params = sum(v.size for v in flatten(params).values())
    groups = sorted({k.split("/")[0] for k in flatten(params)})
    extras = []
    if vocab:
        extras.append(f"vocab {os.path.basename(vocab)}" + (f" (do_lower_case={lowercase})" if args.to == "hf" else ""))
    if label_names and "classifier" in params and args.to == "hf":
        extras.append(f"labels {', '.join(map(str, label_names[:6]))}{' ...' if len(label_names) > 6 else ''}")
    print(
        f"{args.input} ({source_format}) -> {args.output} ({args.to}): {n_params:,} parameters "
        f"[{', '.join(groups)}], {config.num_hidden_layers} layers, hidden {config.hidden_size}"
        + ("; " + "; ".join(extras) if extras else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
