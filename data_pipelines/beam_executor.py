"""create_pretraining_data on Apache Beam: the local executor's steps as a pipeline.

    sources -> Reshuffle -> read + tokenise each source -> spill files (one per partition touched)
            -> group the file names by partition (with every partition id, so empty ones get
               their shards too) -> one task per (partition, dupe pass) -> Reshuffle
            -> write shard -> metadata.json

The DoFns call `instance_shards.tokenize_block_batch` and `instance_shards.write_shard`, the
functions the local executor calls, so both write the same bytes. Parallelism: sources (files,
or TFDS slices of 10,000 examples) for reading and tokenising, (partition, dupe pass) for the
shards. The spill files live in `output_dir/_tokenized/` and are removed at the end. The number of partitions is
counted in the pipeline (a side input) from the sources' document counts. Runs on any runner:
DirectRunner here (`--direct_num_workers=2 --direct_running_mode=multi_processing`), Dataflow,
or Flink/Spark through the portable runner; paths may be gs:// on a cluster.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from typing import Sequence

from etils import epath

from data_pipelines import instance_shards as shards
from data_pipelines import pretraining_instances as pi
from data_pipelines import text_input


SPILL_FLUSH_TOKENS = 16 << 20  # a source's buffered token ids written out per partition past this many


def _tokenize_source(source, plan, num_partitions):
    """Reads and tokenises one source; its documents go to spill files, one per partition it touches.

    Yields ("spill", (partition, path)) and ("stats", counts). Only file names go on to the
    shuffle: on DirectRunner, whose runner process holds every shuffle in memory, that keeps
    memory flat in the corpus size; on Dataflow it keeps the shuffle small. The names depend on
    the source number and part, so a retried step overwrites its own files.
    """
    read_stats = text_input.InputStats()
    buffered, tokens, part = collections.defaultdict(list), 0, 0
    counts = []

    def flush():
        for partition, documents in sorted(buffered.items()):
            name = f"source-{source.number:05d}-part-{part:03d}-partition-{partition:05d}.pkl"
            path = str(epath.Path(plan.output_dir) / shards.SPILL_DIR / name)
            shards.write_spill(path, documents)
            yield "spill", (partition, path)
        buffered.clear()

    for batch in shards.block_batches(source.blocks(read_stats)):
        keyed, stats = shards.tokenize_block_batch(plan, batch, num_partitions)
        counts.append(stats)
        for partition, document in keyed:
            buffered[partition].append(document)
            tokens += len(document.token_ids)
        if tokens >= SPILL_FLUSH_TOKENS:
            yield from flush()
            tokens, part = 0, part + 1
    yield from flush()
    for stats in [read_stats, *counts]:
        yield "stats", dataclasses.asdict(stats)


def _tasks(element, dupe_factor):
    partition, grouped = element
    paths = sorted(grouped["spill"])
    for dupe_pass in range(dupe_factor):
        yield partition, dupe_pass, paths


def _write(task, plan, num_partitions):
    partition, dupe_pass, paths = task
    documents = [d for path in paths for d in shards.read_spill(path)]
    return shards.write_shard(plan, partition, dupe_pass, num_partitions, documents)


def _finish(results, stats, plan, num_partitions):
    merged = shards.merge_stats(text_input.InputStats(**s) for s in stats)
    if not merged["documents"]:
        raise shards.empty_corpus_error([])
    metadata = shards.write_metadata(plan, num_partitions, results, merged)
    spill = epath.Path(plan.output_dir) / shards.SPILL_DIR
    if spill.exists():
        spill.rmtree()
    return metadata


def build(pipeline, plan: shards.ShardPlan, sources: Sequence) -> None:
    """Adds the steps to `pipeline`."""
    import apache_beam as beam

    sources = pipeline | "Sources" >> beam.Create(list(sources))
    num_partitions = (sources
                      | "Count" >> beam.Map(lambda source: source.count_documents())
                      | "Sum" >> beam.CombineGlobally(sum)
                      | "Partitions" >> beam.Map(pi.num_partitions, plan.docs_per_partition))
    partitions = beam.pvalue.AsSingleton(num_partitions)
    tokenized = (sources
                 | "SpreadSources" >> beam.Reshuffle()
                 | "Tokenize" >> beam.FlatMap(_tokenize_source, plan, partitions))
    spills = tokenized | "Spills" >> beam.Filter(lambda kv: kv[0] == "spill") | "SpillItems" >> beam.Values()
    stats = tokenized | "Stats" >> beam.Filter(lambda kv: kv[0] == "stats") | "StatItems" >> beam.Values()
    every_partition = num_partitions | "PartitionIds" >> beam.FlatMap(lambda n: [(p, None) for p in range(n)])
    results = ({"spill": spills, "ids": every_partition}
               | "Group" >> beam.CoGroupByKey()
               | "DupePasses" >> beam.FlatMap(_tasks, plan.config.dupe_factor)
               | "SpreadShards" >> beam.Reshuffle()
               | "WriteShard" >> beam.Map(_write, plan, partitions))
    _ = (pipeline
         | "One" >> beam.Create([None])
         | "Metadata" >> beam.Map(lambda _, r, s, n: _finish(r, s, plan, n), beam.pvalue.AsList(results),
                                  beam.pvalue.AsList(stats), partitions))


def run(plan: shards.ShardPlan, sources: Sequence, pipeline_args: Sequence[str]) -> dict:
    """Runs the pipeline to completion; returns the metadata it wrote."""
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise SystemExit("--engine beam needs Apache Beam: pip install -e '.[beam]'") from None
    import json

    options = PipelineOptions(list(pipeline_args) or ["--runner=DirectRunner"])
    print(f"beam: {len(sources)} source(s), pipeline options {list(pipeline_args)}", file=sys.stderr, flush=True)
    with beam.Pipeline(options=options) as pipeline:
        build(pipeline, plan, sources)
    metadata_path = epath.Path(plan.output_dir) / shards.METADATA_FILE
    if not metadata_path.exists():
        raise RuntimeError(f"the Beam pipeline finished without writing {metadata_path}")
    return json.loads(metadata_path.read_text())

