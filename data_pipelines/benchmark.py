"""Throughput of the data pipelines. Prints numbers; asserts nothing.

    python -m data_pipelines.benchmark                      # $BERT_JAX_DATA/corpus/*.txt
    python -m data_pipelines.benchmark --input 'corpus/*.txt' --vocab vocab.txt
    python -m data_pipelines.benchmark loader --vocab_file vocab.txt [--startup_only --num_records N]

Reports, each with wall-clock and CPU seconds:
  * tokenisation, single process: lines/s and tokens/s of `encode_ids_flat` (word-memoised Rust
    WordPiece) on every line, cold (empty word cache) and warm (second pass), and of the plain
    Rust pipeline one line at a time (`tokenize`) on a sample;
  * corpus tokenisation (`TokenizedCorpus.from_documents`), one process;
  * instance creation + masking (Google's recipe, `--dupe_factor` passes), one process:
    instances/s and tokens/s (non-padding tokens of the rows);
  * TFRecord serialisation: examples/s.

`loader` reports the trainer's input pipeline instead: batches/s and real tokens/s over Google-format
records (random ones written by `write_benchmark_records`, or --input_files) with static masks,
dynamic masking, dynamic whole-word masking and packing, or with --startup_only the time from
opening the files to the first batch (the ArrayRecord index vs the TFRecord header scan).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from data_pipelines import input_pipeline, masking, record_files, tfrecord_io
from data_pipelines import pretraining_instances as pi
from data_pipelines import text_input
from data_pipelines.tokenization import load_tokenizer


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def _line(name: str, timer: Timer, **rates) -> None:
    parts = [f"{k.replace('_', ' ')} {v / max(timer.wall, 1e-9):,.0f}/s" for k, v in rates.items()]
    print(f"{name:<44} {timer.wall:7.2f} s wall {timer.cpu:7.2f} s cpu(main)   " + "   ".join(parts))


def main(argv=None) -> None:
    """`loader ...` times the input pipeline; anything else, tokenisation and instance creation."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["loader"]:
        return loader_main(argv[1:])
    return instances_main(argv)


def instances_main(argv=None) -> None:
    data = os.environ.get("BERT_JAX_DATA", "../shared/data")
    p = argparse.ArgumentParser(prog="python -m data_pipelines.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=os.path.join(data, "corpus", "*.txt"), help="comma-separated globs")
    p.add_argument("--vocab", default=os.path.join(data, "vocab", "bert-base-uncased-vocab.txt"))
    p.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--dupe_factor", type=int, default=1)
    p.add_argument("--sample_lines", type=int, default=20_000, help="lines for the line-at-a-time Rust timing")
    args = p.parse_args(argv)

    print(f"input {args.input}; vocab {args.vocab}; {os.cpu_count()} cpu(s)")
    with Timer() as t:
        tokenizer = load_tokenizer(args.vocab, lowercase=args.lowercase)
    _line("load tokenizer", t)
    with Timer() as t:
        documents = list(text_input.read_google_documents(args.input))
    lines = [s for d in documents for s in d]
    num_bytes = sum(len(s.encode("utf-8")) for s in lines)
    _line(f"read {len(documents)} documents, {num_bytes / 1e6:.1f} MB", t, lines=len(lines))

    with Timer() as t:
        ids, _ = tokenizer.encode_ids_flat(lines)
    _line("tokenise, 1 process, cold word cache", t, lines=len(lines), tokens=len(ids), MB=num_bytes / 1e6)
    with Timer() as t:
        ids, _ = tokenizer.encode_ids_flat(lines)
    _line("tokenise, 1 process, warm word cache", t, lines=len(lines), tokens=len(ids))
    sample = lines[:: max(1, len(lines) // args.sample_lines)]
    with Timer() as t:
        sample_tokens = sum(len(tokenizer.tokenize(s)) for s in sample)
    _line(f"tokenize() line by line, {len(sample)} lines", t, lines=len(sample), tokens=sample_tokens)

    fresh = load_tokenizer(args.vocab, lowercase=args.lowercase)
    with Timer() as t:
        corpus = pi.TokenizedCorpus.from_documents(documents, fresh)
    _line("tokenise corpus, 1 process", t, lines=len(lines), tokens=corpus.num_tokens)

    config = pi.InstanceConfig(max_seq_length=args.max_seq_length, dupe_factor=args.dupe_factor)
    with Timer() as t:
        instances = pi.create_all_instances(corpus, tokenizer, config)
    _line(f"create + mask instances (dupe {args.dupe_factor}), 1 process", t, instances=len(instances),
          tokens=int(instances.input_mask.sum()))

    features = instances.features()
    n = min(len(instances), 20_000)
    with Timer() as t:
        records = tfrecord_io.encode_examples({k: v[:n] for k, v in features.items()})
    _line("serialise tf.train.Examples, 1 process", t, examples=n, MB=sum(map(len, records)) / 1e6)


def write_benchmark_records(directory: str, num_records: int, num_files: int, max_seq_length: int,
                            max_predictions_per_seq: int, vocab_file: str, output_format: str = "array_record",
                            seed: int = 0) -> str:
    """Google-format records of random tokens (lengths: 90% full, 10% short, as short_seq_prob); returns a glob."""
    vocab = masking.MaskingVocab.from_vocab_file(vocab_file)
    with open(vocab_file, encoding="utf-8") as f:
        token_ids = {line.rstrip("\r\n"): i for i, line in enumerate(f)}
    extension = record_files.FORMATS[output_format]
    chunk = 8192
    for f in range(num_files):
        rows = range(f, num_records, num_files)
        with record_files.ShardWriter(os.path.join(directory, f"bench-{f:05d}{extension}")) as writer:
            for start in range(0, len(rows), chunk):
                rng = np.random.default_rng([seed, f, start])
                n = len(rows[start:start + chunk])
                lengths = np.where(rng.random(n) < 0.1, rng.integers(8, max_seq_length, n), max_seq_length)
                ids = rng.integers(1000, vocab.vocab_size, (n, max_seq_length))
                ids[np.arange(max_seq_length)[None, :] >= lengths[:, None]] = vocab.pad_id
                ids[:, 0] = token_ids["[CLS]"]
                ids[np.arange(n), lengths // 2] = token_ids["[SEP]"]
                ids[np.arange(n), lengths - 1] = token_ids["[SEP]"]
                segments = (np.arange(max_seq_length)[None, :] > (lengths // 2)[:, None]) & (ids != vocab.pad_id)
                masked = masking.mask_batch(ids, None, vocab, rng=rng, max_predictions_per_seq=max_predictions_per_seq)
                features = {"input_ids": masked["input_ids"], "input_mask": (ids != vocab.pad_id).astype(np.int64),
                            "segment_ids": segments.astype(np.int64),
                            "masked_lm_positions": masked["masked_lm_positions"],
                            "masked_lm_ids": masked["masked_lm_ids"],
                            "masked_lm_weights": masked["masked_lm_weights"].astype(np.float32),
                            "next_sentence_labels": (np.arange(n) % 2).reshape(n, 1)}
                for record in tfrecord_io.encode_examples(features):
                    writer.write(record)
    return os.path.join(directory, f"bench-*{extension}")


def loader_main(argv=None) -> None:
    """Prints the loader's throughput: `python -m data_pipelines.benchmark loader --vocab_file V`."""
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.benchmark loader", description=loader_main.__doc__)
    parser.add_argument("--vocab_file", required=True)
    parser.add_argument("--input_files", default="", help="Google-format record files; default: write random ones")
    parser.add_argument("--format", default="array_record", choices=sorted(record_files.FORMATS),
                        help="format of the random records written when --input_files is not given")
    parser.add_argument("--startup_only", action="store_true",
                        help="print only the time from opening the files to the first batch")
    parser.add_argument("--num_records", type=int, default=20000)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--max_predictions_per_seq", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args(argv)

    import tensorflow  # noqa: F401  (imported once here, so that "index" times the index alone)

    with tempfile.TemporaryDirectory() as tmp:
        files = args.input_files or write_benchmark_records(
            tmp, args.num_records, 8, args.max_seq_length, args.max_predictions_per_seq, args.vocab_file,
            args.format)
        if args.startup_only:
            config = input_pipeline.default_data_config()
            config.update(input_files=files, max_seq_length=args.max_seq_length,
                          max_predictions_per_seq=args.max_predictions_per_seq, prefetch_batches=0)
            start = time.perf_counter()
            iterator = input_pipeline.make_pretraining_iterator(config, args.batch_size, seed=0)
            next(iterator)
            seconds = time.perf_counter() - start
            print(f"{files}: {iterator.num_examples} records, first batch of {args.batch_size} "
                  f"{seconds:.3f} s after opening (TensorFlow already imported)")
            iterator.close()
            return
        variants = {
            "static masks": {},
            "dynamic masking": {"dynamic_masking": True},
            "dynamic whole-word masking": {"dynamic_masking": True, "whole_word_masking": True},
            "packing (NSP off)": {"packing": True, "next_sentence_prediction": False},
        }
        for name, overrides in variants.items():
            config = input_pipeline.default_data_config()
            config.update(input_files=files, max_seq_length=args.max_seq_length, vocab_file=args.vocab_file,
                          max_predictions_per_seq=args.max_predictions_per_seq, prefetch_batches=0, **overrides)
            start = time.perf_counter()
            iterator = input_pipeline.make_pretraining_iterator(config, args.batch_size, seed=0)
            opened = time.perf_counter() - start
            next(iterator)
            start = time.perf_counter()
            tokens = 0
            for _ in range(args.batches):
                tokens += int(next(iterator)["input_mask"].sum())
            seconds = time.perf_counter() - start
            iterator.close()
            print(f"{name:28s} index {iterator.num_examples} records in {opened:.2f}s | "
                  f"{args.batches / seconds:7.1f} batches/s of {args.batch_size} x {args.max_seq_length} | "
                  f"{tokens / seconds / 1e6:6.2f} M real tokens/s (one thread, no prefetch)")


if __name__ == "__main__":
    main(sys.argv[1:])
