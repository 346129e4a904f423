"""Pretraining data: text -> sharded TFRecords of Google's features, on every core.

    python -m data_pipelines.create_pretraining_data \\
        --input_file '/data/corpus/*.txt' --output_dir /data/pretrain_128 \\
        --vocab_file vocab.txt --max_seq_length 128 --max_predictions_per_seq 20 \\
        --dupe_factor 10 --num_shards 16 --num_workers 8

Flags keep the names of google-research/bert's script; its recipe is in
`data_pipelines.pretraining_instances`. Extra flags: `--mode nsp|full_sentences|doc_sentences`,
`--no_masking` (unmasked rows for dynamic masking at load time), `--input_format google|paragraphs|tfds`.

Phases: read (text_input) -> tokenise (Rust/SentencePiece threads, all cores) -> create and mask
instances (forked worker processes over units of documents) -> global shuffle -> write shards
(worker processes, one shard each; instance i goes to shard i % num_shards as in Google's
round-robin writer). Output files `part-XXXXX-of-YYYYY.tfrecord` and `metadata.json` (the
config and counts). The bytes written depend only on the inputs, vocab and flags, never on
--num_workers. The last lines printed are the throughput numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from data_pipelines import pretraining_instances as pi
from data_pipelines import text_input
from data_pipelines.tfrecord_io import TFRecordWriter, encode_examples

WRITE_CHUNK = 4096  # rows serialised per vectorised call


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    d = pi.InstanceConfig()
    p = argparse.ArgumentParser(prog="python -m data_pipelines.create_pretraining_data",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_file", required=True,
                   help="comma-separated globs of text files, or a TFDS name with --input_format tfds")
    p.add_argument("--input_format", default="google", choices=("google", "paragraphs", "tfds"))
    p.add_argument("--tfds_split", default="train")
    p.add_argument("--tfds_text_feature", default="text")
    p.add_argument("--tfds_data_dir", default=None)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--vocab_file", required=True, help="Google vocab.txt or SentencePiece .model")
    p.add_argument("--do_lower_case", type=_bool, default=True)
    p.add_argument("--do_whole_word_mask", type=_bool, default=d.whole_word_masking, nargs="?", const=True)
    p.add_argument("--max_seq_length", type=int, default=d.max_seq_length)
    p.add_argument("--max_predictions_per_seq", type=int, default=d.max_predictions_per_seq)
    p.add_argument("--random_seed", type=int, default=d.random_seed)
    p.add_argument("--dupe_factor", type=int, default=d.dupe_factor)
    p.add_argument("--masked_lm_prob", type=float, default=d.masked_lm_prob)
    p.add_argument("--short_seq_prob", type=float, default=d.short_seq_prob)
    p.add_argument("--mode", default=d.mode, choices=pi.MODES)
    p.add_argument("--no_masking", action="store_true", help="write unmasked rows (dynamic masking later)")
    p.add_argument("--num_shards", type=int, default=1)
    p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--docs_per_unit", type=int, default=64, help="documents per work unit (fixes the output)")
    return p


def config_from_args(args) -> pi.InstanceConfig:
    return pi.InstanceConfig(
        max_seq_length=args.max_seq_length, short_seq_prob=args.short_seq_prob, mode=args.mode,
        dupe_factor=args.dupe_factor, random_seed=args.random_seed, static_masking=not args.no_masking,
        masked_lm_prob=args.masked_lm_prob, max_predictions_per_seq=args.max_predictions_per_seq,
        whole_word_masking=bool(args.do_whole_word_mask)).validate()


def shard_paths(output_dir: str, num_shards: int) -> list[str]:
    return [os.path.join(output_dir, f"part-{k:05d}-of-{num_shards:05d}.tfrecord") for k in range(num_shards)]


_SHARDS: dict = {}  # set before forking the writers


def _write_shard(k: int) -> int:
    features, paths = _SHARDS["features"], _SHARDS["paths"]
    rows = np.arange(k, len(features["input_ids"]), len(paths))
    with TFRecordWriter(paths[k]) as writer:
        for start in range(0, len(rows), WRITE_CHUNK):
            index = rows[start:start + WRITE_CHUNK]
            for record in encode_examples({name: a[index] for name, a in features.items()}):
                writer.write(record)
    return len(rows)


def write_shards(instances: pi.Instances, output_dir: str, num_shards: int, num_workers: int) -> list[str]:
    os.makedirs(output_dir, exist_ok=True)
    paths = shard_paths(output_dir, num_shards)
    _SHARDS.update(features=instances.features(), paths=paths)
    try:
        pi.map_units(_write_shard, list(range(num_shards)), num_workers)
    finally:
        _SHARDS.clear()
    return paths


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.num_shards < 1:
        raise SystemExit(f"--num_shards must be >= 1, got {args.num_shards}")
    config = config_from_args(args)
    # Workers are forked processes; the Rust tokenizer is only called one text at a time (no
    # thread pool to inherit), so its fork warning does not apply.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from data_pipelines.tokenization import load_tokenizer

    timings = {}
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(args.vocab_file, lowercase=args.do_lower_case)
    stats = text_input.InputStats()
    if args.input_format == "tfds":
        documents = text_input.read_tfds_documents(args.input_file, split=args.tfds_split,
                                                   text_feature=args.tfds_text_feature,
                                                   data_dir=args.tfds_data_dir, stats=stats)
    else:
        documents = text_input.read_documents(args.input_file, args.input_format, stats=stats)
    corpus = pi.tokenize_corpus(list(documents), tokenizer, num_workers=args.num_workers)
    timings["read_and_tokenize_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    instances = pi.create_all_instances(corpus, tokenizer, config, num_workers=args.num_workers,
                                        docs_per_unit=args.docs_per_unit)
    timings["create_instances_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    paths = write_shards(instances, args.output_dir, args.num_shards, args.num_workers)
    timings["write_s"] = time.perf_counter() - t2
    total = time.perf_counter() - t0

    instance_tokens = int(instances.input_mask.sum())
    report = {
        "input_files": stats.files, "documents": corpus.num_documents, "sentences": corpus.num_sentences,
        "input_tokens": corpus.num_tokens, "instances": len(instances), "instance_tokens": instance_tokens,
        "invalid_utf8_lines": stats.invalid_utf8_lines, "long_lines_split": stats.long_lines_split,
        "empty_documents_skipped": stats.empty_documents_skipped, "empty_files": stats.empty_files,
        "num_workers": args.num_workers, **{k: round(v, 3) for k, v in timings.items()},
        "total_s": round(total, 3), "instances_per_s": round(len(instances) / total, 1),
        "tokens_per_s": round(instance_tokens / total, 1),
        "input_tokens_per_s": round(corpus.num_tokens / total, 1),
    }
    with open(os.path.join(args.output_dir, "metadata.json"), "w", encoding="utf-8") as f:
        json.dump({"config": dataclasses.asdict(config), "vocab_file": os.path.abspath(args.vocab_file),
                   "do_lower_case": args.do_lower_case, "files": [os.path.basename(p) for p in paths],
                   "counts": {k: report[k] for k in ("documents", "sentences", "input_tokens", "instances",
                                                      "instance_tokens")}},
                  f, indent=2)
    for key, value in report.items():
        print(f"{key}: {value}")
    print(f"throughput: {report['instances_per_s']} instances/s, {report['tokens_per_s']} tokens/s "
          f"(non-padding tokens of the written rows), {report['input_tokens_per_s']} input tokens/s, "
          f"{total:.2f} s in all")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
