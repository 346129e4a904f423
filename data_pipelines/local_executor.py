"""create_pretraining_data on one machine: forked worker processes, streaming, resumable.

1. Count the documents of every source (fixes the number of partitions).
2. Read the sources in order on the main process; workers tokenise batches of documents; the
   main process appends each tokenised document to its partition's spill file on local disk.
   At most 2 batches per worker are in flight, so memory does not grow with the corpus.
3. Workers make the shards, one (partition, dupe pass) at a time: load the partition's spill
   file, run the recipe a work unit at a time, write under a temporary name, rename.
   Shards already complete from an earlier run with the same flags are kept.

Peak memory: one partition's token ids per worker, plus one work unit's rows; not the corpus.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import sys
import tempfile
import time
from typing import Callable, Sequence

from data_pipelines import instance_shards as shards
from data_pipelines import pretraining_instances as pi
from data_pipelines import text_input

def _count(source) -> int:
    return source.count_documents()


def _tokenize(plan, num_partitions, batch):
    return shards.tokenize_block_batch(plan, batch, num_partitions)


def _spill_path(spill_dir: str, partition: int) -> str:
    return os.path.join(spill_dir, f"partition-{partition:05d}.pkl")


def _append_to_spill(spill_dir: str, keyed: list) -> None:
    by_partition = collections.defaultdict(list)
    for partition, document in keyed:
        by_partition[partition].append(document)
    for partition, documents in by_partition.items():
        shards.write_spill(_spill_path(spill_dir, partition), documents, append=True)


def _shard(plan, partition, dupe_pass, num_partitions, spill_dir):
    return shards.write_shard(plan, partition, dupe_pass, num_partitions,
                              shards.read_spill(_spill_path(spill_dir, partition)),
                              skip_existing=True)


class _Inline:
    """The Pool calls used here, run in this process (num_workers=1)."""

    def map(self, fn, items):
        return [fn(x) for x in items]

    def apply_async(self, fn, args):
        result = fn(*args)
        return type("Done", (), {"get": lambda self: result})()


def _star(args):
    fn, rest = args
    return fn(*rest)


class _Progress:
    def __init__(self, total: int, log: Callable[[str], None], every_s: float = 2.0):
        self.total, self.log, self.every_s = total, log, every_s
        self.start = self.last = time.perf_counter()
        self.done = self.instances = 0

    def update(self, result: dict) -> None:
        self.done += 1
        self.instances += result["instances"]
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate = self.instances / max(now - self.start, 1e-9)
            eta = (now - self.start) / self.done * (self.total - self.done)
            self.log(f"shards {self.done}/{self.total}  {self.instances:,} instances  {rate:,.0f} instances/s  "
                     f"ETA {eta:.0f} s")


def run(plan: shards.ShardPlan, sources: Sequence, num_workers: int, temp_dir: str | None = None,
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> dict:
    """Writes every shard of `plan` and metadata.json; returns the metadata."""
    shards.load_tokenizer(plan.vocab_file, plan.do_lower_case)  # before forking: the workers inherit it
    pool = multiprocessing.get_context("fork").Pool(num_workers) if num_workers > 1 else _Inline()
    try:
        num_documents = sum(pool.map(_count, sources))
        num_partitions = pi.num_partitions(num_documents, plan.docs_per_partition)
        log(f"{num_documents:,} documents in {len(sources)} source(s) -> {num_partitions} partition(s) of up to "
            f"{plan.docs_per_partition:,} documents; {num_partitions * plan.config.dupe_factor} shards")
        with tempfile.TemporaryDirectory(prefix="bert_jax_spill_", dir=temp_dir) as spill_dir:
            read_stats = text_input.InputStats()
            parts, pending = [], collections.deque()
            blocks = (block for source in sources for block in source.blocks(read_stats))
            for batch in shards.block_batches(blocks):
                pending.append(pool.apply_async(_tokenize, (plan, num_partitions, batch)))
                if len(pending) >= 2 * max(num_workers, 1):
                    keyed, stats = pending.popleft().get()
                    _append_to_spill(spill_dir, keyed)
                    parts.append(stats)
            while pending:
                keyed, stats = pending.popleft().get()
                _append_to_spill(spill_dir, keyed)
                parts.append(stats)
            stats = shards.merge_stats([read_stats, *parts])
            text_input.InputStats(**stats).warn(source=",".join(s.name for s in sources[:3]))
            if not stats["documents"]:
                raise shards.empty_corpus_error(sources)
            log(f"tokenised {stats['documents']:,} documents, {stats['sentences']:,} sentences")

            tasks = [(_shard, (plan, p, d, num_partitions, spill_dir))
                     for p in range(num_partitions) for d in range(plan.config.dupe_factor)]
            progress = _Progress(len(tasks), log)
            results = []
            iterator = (pool.imap_unordered(_star, tasks) if num_workers > 1
                        else (fn(*args) for fn, args in tasks))
            for result in iterator:
                progress.update(result)
                results.append(result)
    finally:
        if num_workers > 1:
            pool.close()
            pool.join()
    return shards.write_metadata(plan, num_partitions, results, stats)
