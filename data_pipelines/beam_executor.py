"""create_pretraining_data on Apache Beam: the local executor's steps as a pipeline.

    sources -> blocks of text -> Reshuffle -> tokenise (batches) -> (partition, document)
            -> group by partition (with every partition id, so empty ones get their shards too)
            -> one element per (partition, dupe pass) -> Reshuffle -> write shard -> metadata.json

The DoFns call `instance_shards.tokenize_block_batch` and `instance_shards.write_shard`, the
functions the local executor calls, so both write the same bytes. The number of partitions is
counted in the pipeline (a side input) from the sources' document counts. Runs on any runner:
DirectRunner here (`--direct_num_workers=2 --direct_running_mode=multi_processing`), Dataflow,
or Flink/Spark through the portable runner; paths may be gs:// on a cluster.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Sequence

from data_pipelines import instance_shards as shards
from data_pipelines import pretraining_instances as pi
from data_pipelines import text_input


def _blocks_of(source):
    stats = text_input.InputStats()
    for keyed_block in source.blocks(stats):
        yield keyed_block
    yield _STATS, stats  # the reading counts travel with the data, to the metadata


_STATS = (-1, -1)  # the key under which a source's reading counts are emitted


def _tokenize(batch, plan, num_partitions):
    stats = [block for key, block in batch if key == _STATS]
    keyed, tokenize_stats = shards.tokenize_block_batch(plan, [b for b in batch if b[0] != _STATS], num_partitions)
    for item in keyed:
        yield "doc", item
    for s in stats + [tokenize_stats]:
        yield "stats", dataclasses.asdict(s)


def _tasks(element, dupe_factor):
    partition, grouped = element
    documents = list(grouped["documents"])
    for dupe_pass in range(dupe_factor):
        yield (partition, dupe_pass), documents


def _write(element, plan, num_partitions):
    (partition, dupe_pass), documents = element
    return shards.write_shard(plan, partition, dupe_pass, num_partitions, documents)


def _finish(results, stats, plan, num_partitions):
    merged = shards.merge_stats(text_input.InputStats(**s) for s in stats)
    if not merged["documents"]:
        raise shards.empty_corpus_error([])
    return shards.write_metadata(plan, num_partitions, results, merged)


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
                 | "Read" >> beam.FlatMap(_blocks_of)
                 | "SpreadBlocks" >> beam.Reshuffle()
                 | "Batch" >> beam.BatchElements(min_batch_size=16, max_batch_size=256)
                 | "Tokenize" >> beam.FlatMap(_tokenize, plan, partitions))
    documents = (tokenized | "Docs" >> beam.Filter(lambda kv: kv[0] == "doc") | "DocItems" >> beam.Values())
    stats = (tokenized | "Stats" >> beam.Filter(lambda kv: kv[0] == "stats") | "StatItems" >> beam.Values())
    every_partition = num_partitions | "PartitionIds" >> beam.FlatMap(lambda n: [(p, None) for p in range(n)])
    results = ({"documents": documents, "ids": every_partition}
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

    from etils import epath

    options = PipelineOptions(list(pipeline_args) or ["--runner=DirectRunner"])
    print(f"beam: {len(sources)} source(s), pipeline options {list(pipeline_args)}", file=sys.stderr, flush=True)
    with beam.Pipeline(options=options) as pipeline:
        build(pipeline, plan, sources)
    metadata_path = epath.Path(plan.output_dir) / shards.METADATA_FILE
    if not metadata_path.exists():
        raise RuntimeError(f"the Beam pipeline finished without writing {metadata_path}")
    return json.loads(metadata_path.read_text())

