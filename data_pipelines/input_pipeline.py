"""The pretraining input pipeline: numpy batches for the trainer, deterministic and resumable.

    it = make_pretraining_iterator(data_config, global_batch_size=256, seed=0,
                                   process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)              # dict of numpy arrays, this process's 256 // process_count rows
    state = it.get_state()        # JSON-serialisable; save it with the training checkpoint
    it.set_state(state)           # the next batches are exactly those of an uninterrupted run

Why grain's index sampling, not tf.data. Exact mid-epoch resume is easy when the order of the
examples is a pure function of (seed, position in the stream): the state is then one integer.
grain's `MapDataset.range(n).seed(s).shuffle().repeat()` is exactly that: its index_shuffle
is a keyed bijection of [0, n) computed per index (4 rounds, O(1) memory, n < 2**32), with the
key seed + epoch so every epoch has a new order; any position is random access, and slicing
`[process_index::process_count]` shards it over hosts. tf.data can resume only by saving its
iterator as a TF checkpoint (shuffle buffers included, not JSON, tied to the graph), and a
`shuffle(buffer)` mixes only nearby records. So the data is read by random access:
* Google-format ArrayRecord files (create_pretraining_data's default): grain's
  `ArrayRecordDataSource`, random access from each file's own index, so opening is instant
  whatever the record count (no scan); a batch is one batched read + one `tf.io.parse_example`.
* Google-format TFRecord files: an offset index of every record is built at start (a scan of the
  12-byte record headers, `tfrecord_io.record_offsets`; minutes per process at 10^8 records), then
  a batch is a seek + read per record + one `tf.io.parse_example`. Record checksums are verified;
  a damaged record is reported by file and record number.
* TFDS datasets by name, through `tfds.data_source` (array_record files, random access).
Files may be local or remote (etils.epath: gs://, ...). grain's ArrayRecord reader opens local
files, so on a cluster mount the bucket (gcsfuse, as MaxText does) or copy the shards first.
Everything after reading (dynamic masking, packing) is a numpy function of the examples and
their (epoch, record index), so it resumes exactly too. Only grain's index order is used: batches
are read, masked and packed a whole batch at a time in numpy (one parse call, one masking call),
which grain's per-element map/iterator chain would not do, and the state stays one integer. A
background thread prefetches batches into a bounded queue; the state counts only the batches already returned by `next`.

Sharding. Global stream position g holds record `order[g]`. Process p reads positions
p, p + P, p + 2P, ... only, and its k-th batch holds its positions k*b .. k*b + b - 1
(b = global_batch_size / P). The union of the processes' k-th batches is therefore the k-th
global batch of a single-process run, and no two processes read the same position. Without
packing every process is at the same position, so the state is the same everywhere (and it
carries the global position, so a run may resume on another number of processes with the same
global batch size). With packing a batch consumes a variable number of examples, so each process
has its own state: save every process's `get_state()` and give each its own back.

Two-phase sequence length (BERT: 90% of steps at 128, then 10% at 512). Instances are written
once per length (`create_pretraining_data --max_seq_length 128/512`), and `input_files` may hold
`{max_seq_length}`, e.g. `data/seq{max_seq_length}/*.tfrecord`. Phase 2 is then the same
experiment with `--config.data.max_seq_length=512 --config.data.max_predictions_per_seq=80`,
started from the phase-1 checkpoint. Files written for another length are refused at start,
with the file, the feature, the expected and the found length.

The data config fields are listed in `data_config.py`. Batches use Google's feature names:
input_ids, input_mask, segment_ids [b, L] int32;
masked_lm_positions, masked_lm_ids [b, P] int32, masked_lm_weights [b, P] float32;
next_sentence_labels [b] int32 (not with packing); position_ids, packed_segment_ids [b, L]
int32 (only with packing).

The parts, one job each:
  data_config.py           the fields, their defaults, resolve_data_config
  example_sources.py       record files (ArrayRecord / TFRecord) and TFDS datasets, by random access
  pretraining_iterator.py  grain's index order, dynamic masking, packing, prefetch, get/set_state
  synthetic_batches.py     random batches of the same shapes, for benchmarks
  benchmark.py             the loader's throughput (`python -m data_pipelines.benchmark loader`)
"""

from __future__ import annotations

from data_pipelines.data_config import default_data_config, resolve_data_config
from data_pipelines.example_sources import open_source
from data_pipelines.pretraining_iterator import PretrainingBatchIterator, make_dynamic_masker, unmask
from data_pipelines.synthetic_batches import SyntheticBatchIterator

__all__ = ["PretrainingBatchIterator", "SyntheticBatchIterator", "default_data_config", "make_dynamic_masker",
           "make_pretraining_iterator", "resolve_data_config", "unmask"]


def make_pretraining_iterator(data_config, global_batch_size: int, seed: int, process_index: int = 0,
                              process_count: int = 1) -> PretrainingBatchIterator:
    """The iterator the trainer calls; `data_config` fields are listed in `data_config.py`.

    Args:
      data_config: ml_collections.ConfigDict (or dict) with fields of `default_data_config()`;
        missing fields take the defaults, unknown fields are an error.
      global_batch_size: rows per step over all processes; this process yields
        global_batch_size // process_count rows.
      seed: the data order and the dynamic masks are a function of it.
      process_index, process_count: `jax.process_index()`, `jax.process_count()`.
    """
    config = resolve_data_config(data_config)
    source = open_source(config)
    try:
        return PretrainingBatchIterator(source, config, global_batch_size, seed, process_index, process_count)
    except Exception:
        source.close()
        raise
