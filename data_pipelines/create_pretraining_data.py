"""Pretraining data: text -> shards of Google's features, on every core or on Apache Beam.

    python -m data_pipelines.create_pretraining_data \\
        --input_file '/data/corpus/*.txt' --output_dir /data/pretrain_128 \\
        --vocab_file vocab.txt --max_seq_length 128 --max_predictions_per_seq 20 --dupe_factor 10

    # the same recipe on Apache Beam: pipeline options after `--`
    python -m data_pipelines.create_pretraining_data --engine beam ... -- \\
        --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing

Flags keep the names of google-research/bert's script; its recipe is in
`data_pipelines.pretraining_instances`, run inside partitions of `--docs_per_partition`
documents (see there). Extra flags: `--mode nsp|full_sentences|doc_sentences`, `--no_masking`
(unmasked rows for dynamic masking at load time), `--input_format google|paragraphs|tfds`,
`--output_format array_record|tfrecord`, `--engine local|beam`.

Output: one shard per (partition, dupe pass), `part-XXXXX-of-YYYYY.array_record` (or
`.tfrecord`, which Google's run_pretraining.py reads), `recipe.json` (the flags that fix the
bytes, written first) and `metadata.json` (counts, written last). The bytes depend only on the
inputs, vocab and flags: not on the engine, nor on the number of workers. Instances are written
in the order they are made; the loader shuffles all records afresh every epoch. A killed local
run rerun with the same flags keeps its finished shards. Paths may be gs:// (etils.epath).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from data_pipelines import instance_shards as shards
from data_pipelines import pretraining_instances as pi
from data_pipelines import record_files, text_input

DOCS_PER_PARTITION = 20_000


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _HelpFormatter(prog):  # every flag's default shown, also of those without help text
    from bert_jax.cli_flags import HelpFormatter
    return HelpFormatter(prog)


def build_parser() -> argparse.ArgumentParser:
    d = pi.InstanceConfig()
    p = argparse.ArgumentParser(prog="python -m data_pipelines.create_pretraining_data", description=__doc__,
                                formatter_class=_HelpFormatter)
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
    p.add_argument("--output_format", default="array_record", choices=sorted(record_files.FORMATS),
                   help="array_record (random access, read through grain) or tfrecord (Google's run_pretraining.py)")
    p.add_argument("--docs_per_partition", type=int, default=DOCS_PER_PARTITION,
                   help="documents per partition; random next sentences come from the same partition (fixes the output)")
    p.add_argument("--docs_per_unit", type=int, default=64, help="documents per work unit (fixes the output)")
    p.add_argument("--engine", default="local", choices=("local", "beam"),
                   help="local: forked processes on this machine; beam: Apache Beam (options after --)")
    p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1, help="local engine: worker processes")
    p.add_argument("--temp_dir", default=None, help="local engine: where the tokenised spill files go")
    p.add_argument("--num_shards", type=int, default=None, help=argparse.SUPPRESS)
    return p


def config_from_args(args) -> pi.InstanceConfig:
    return pi.InstanceConfig(
        max_seq_length=args.max_seq_length, short_seq_prob=args.short_seq_prob, mode=args.mode,
        dupe_factor=args.dupe_factor, random_seed=args.random_seed, static_masking=not args.no_masking,
        masked_lm_prob=args.masked_lm_prob, max_predictions_per_seq=args.max_predictions_per_seq,
        whole_word_masking=bool(args.do_whole_word_mask)).validate()


def make_plan(args) -> shards.ShardPlan:
    return shards.ShardPlan(output_dir=args.output_dir, output_format=args.output_format,
                            config=config_from_args(args), vocab_file=args.vocab_file,
                            do_lower_case=args.do_lower_case, input_format=args.input_format,
                            docs_per_partition=args.docs_per_partition, docs_per_unit=args.docs_per_unit)


def make_sources(args) -> list:
    if args.input_format == "tfds":
        return text_input.tfds_sources(args.input_file, split=args.tfds_split, text_feature=args.tfds_text_feature,
                                       data_dir=args.tfds_data_dir)
    return text_input.file_sources(args.input_file)


def prepare(argv) -> tuple:
    """Parses and checks everything (flags, inputs, vocab, the output dir) before writing anything."""
    if "--" in argv:
        split = argv.index("--")
        argv, pipeline_args = argv[:split], argv[split + 1:]
    else:
        pipeline_args = []
    args = build_parser().parse_args(argv)
    if args.num_shards is not None:
        raise SystemExit("--num_shards was removed: the output has one shard per (partition, dupe pass); set "
                         "--docs_per_partition for smaller or larger shards")
    if pipeline_args and args.engine != "beam":
        raise SystemExit(f"pipeline options {pipeline_args} after -- need --engine beam")
    if args.num_workers < 1:
        raise SystemExit(f"--num_workers must be >= 1, got {args.num_workers}")
    if args.docs_per_partition < 1 or args.docs_per_unit < 1:
        raise SystemExit(f"--docs_per_partition and --docs_per_unit must be >= 1, got {args.docs_per_partition} "
                         f"and {args.docs_per_unit}")
    plan = make_plan(args)
    shards.check_vocab(plan)
    sources = make_sources(args)
    for source in sources:
        source.check_readable()
    if not any(source.has_text() for source in sources):
        raise shards.empty_corpus_error(sources)
    plan = dataclasses.replace(plan, inputs=shards.source_inputs(sources))
    shards.prepare_output_dir(plan)
    return args, plan, sources, pipeline_args


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Workers are forked processes; the Rust tokenizer is only called one batch at a time (no
    # thread pool to inherit), so its fork warning does not apply.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    args, plan, sources, pipeline_args = prepare(argv)
    if args.engine == "beam":
        from data_pipelines import beam_executor

        metadata = beam_executor.run(plan, sources, pipeline_args)
    else:
        from data_pipelines import local_executor

        metadata = local_executor.run(plan, sources, args.num_workers, temp_dir=args.temp_dir)
    total = time.perf_counter() - start
    counts = metadata["counts"]
    report = {**counts, "shards": len(metadata["files"]), "partitions": metadata["num_partitions"],
              **{k: metadata["input"][k] for k in ("files", "invalid_utf8_lines", "long_lines_split",
                                                   "empty_documents_skipped", "empty_files")},
              "engine": args.engine, "total_s": round(total, 3),
              "instances_per_s": round(counts["instances"] / total, 1),
              "tokens_per_s": round(counts["instance_tokens"] / total, 1)}
    for key, value in report.items():
        print(f"{key}: {value}")
    print(f"throughput: {report['instances_per_s']} instances/s, {report['tokens_per_s']} tokens/s "
          f"(non-padding tokens of the written rows), {total:.2f} s in all")
    return report


if __name__ == "__main__":
    from bert_jax.cli_flags import run_main
    run_main(main, "create_pretraining_data")
