"""Throughput of tokenisation and instance creation on real text. Prints numbers; asserts nothing.

    python -m data_pipelines.benchmark                      # $BERT_JAX_DATA/corpus/*.txt
    python -m data_pipelines.benchmark --input 'corpus/*.txt' --vocab vocab.txt

Reports, each with wall-clock and CPU seconds:
  * tokenisation, single process: lines/s and tokens/s of `encode_ids_flat` (word-memoised Rust
    WordPiece) on every line, cold (empty word cache) and warm (second pass), and of the plain
    Rust pipeline one line at a time (`tokenize`) on a sample;
  * corpus tokenisation (`TokenizedCorpus.from_documents`), one process;
  * instance creation + masking (Google's recipe, `--dupe_factor` passes), one process:
    instances/s and tokens/s (non-padding tokens of the rows);
  * TFRecord serialisation: examples/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from data_pipelines import pretraining_instances as pi
from data_pipelines import text_input
from data_pipelines.tfrecord_io import encode_examples
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
        records = encode_examples({k: v[:n] for k, v in features.items()})
    _line("serialise tf.train.Examples, 1 process", t, examples=n, MB=sum(map(len, records)) / 1e6)


if __name__ == "__main__":
    main(sys.argv[1:])
