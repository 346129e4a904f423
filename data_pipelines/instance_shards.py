"""The steps of create_pretraining_data that both executors (local processes, Apache Beam) run.

    blocks of text --tokenize_block_batch--> TokenizedDocuments, keyed by partition
    one partition's documents --write_shard--> one shard per (partition, dupe pass)

A `ShardPlan` holds everything that fixes the bytes written; two runs with equal plans and
inputs write byte-identical shards, whichever executor and however many workers run them.
Shard (partition p, dupe pass d) is `part-{p * dupe_factor + d:05d}-of-{num_shards:05d}.{ext}`.

The output directory records its plan in `recipe.json` before the first shard is written. A
rerun with the same plan skips the shards already complete (a killed run resumes); a rerun with
another plan into the same directory is an error naming the field that differs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pickle
from typing import Iterable, Sequence

from etils import epath

from data_pipelines import files, record_files, text_input
from data_pipelines import pretraining_instances as pi
from data_pipelines.tfrecord_io import encode_examples

RECIPE_FILE = "recipe.json"
METADATA_FILE = "metadata.json"
SPILL_DIR = "_tokenized"  # Beam's per-partition documents, under output_dir (shared by the workers); removed when done


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """What fixes the output. `inputs` lists the sources (name and size) the plan was made for."""

    output_dir: str
    output_format: str
    config: pi.InstanceConfig
    vocab_file: str
    do_lower_case: bool
    input_format: str
    docs_per_partition: int
    docs_per_unit: int
    inputs: tuple = ()
    max_line_chars: int = text_input.MAX_LINE_CHARS

    def shard_path(self, partition: int, dupe_pass: int, num_partitions: int) -> str:
        total = num_partitions * self.config.dupe_factor
        index = partition * self.config.dupe_factor + dupe_pass
        name = f"part-{index:05d}-of-{total:05d}{record_files.FORMATS[self.output_format]}"
        return os.fspath(epath.Path(self.output_dir) / name)

    def recipe(self) -> dict:
        """The plan as JSON (the vocab by its content's sha256, not its path)."""
        return {"config": dataclasses.asdict(self.config), "output_format": self.output_format,
                "vocab_sha256": _sha256(self.vocab_file), "do_lower_case": self.do_lower_case,
                "input_format": self.input_format, "docs_per_partition": self.docs_per_partition,
                "docs_per_unit": self.docs_per_unit, "max_line_chars": self.max_line_chars,
                "inputs": [list(i) for i in self.inputs]}


@functools.lru_cache(maxsize=8)
def _sha256(path: str) -> str:
    return hashlib.sha256(epath.Path(path).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=4)
def load_tokenizer(vocab_file: str, do_lower_case: bool):
    """The tokenizer of a plan, once per process (a remote vocab is copied to local disk first)."""
    from data_pipelines.tokenization import load_tokenizer as load

    return load(files.local_copy(vocab_file), lowercase=do_lower_case)


def source_inputs(sources: Sequence) -> tuple:
    """(name, size in bytes) of file sources, (name, examples) of TFDS slices: part of the plan."""
    out = []
    for source in sources:
        if isinstance(source, text_input.FileSource):
            out.append((os.path.basename(source.path), files.size(source.path)))
        else:
            out.append((source.name, source.count_documents()))
    return tuple(out)


# ----------------------------------------------------------------------------- the output directory
def prepare_output_dir(plan: ShardPlan) -> None:
    """Refuses a directory holding another plan's shards; records the plan; drops partial files.

    Call it after every input check: it is the first thing written.
    """
    out = epath.Path(plan.output_dir)
    recipe = plan.recipe()
    recipe_path = out / RECIPE_FILE
    existing = sorted(p.name for p in out.glob("part-*")) if out.exists() else []
    if recipe_path.exists():
        try:
            found = json.loads(recipe_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{recipe_path}: not valid JSON ({error}); delete the directory or choose "
                             "another --output_dir") from None
        differ = _first_difference(found, recipe)
        if differ:
            field, was, now = differ
            raise ValueError(f"--output_dir {plan.output_dir} holds shards made with other flags: {recipe_path} "
                             f"has {field}={was!r}, this run has {now!r}. Choose another --output_dir, or delete "
                             "that one to start clean")
    elif existing:
        raise ValueError(f"--output_dir {plan.output_dir} holds {len(existing)} shard(s) ({existing[0]}, ...) but no "
                         f"{RECIPE_FILE}, so they are not known to come from these flags. Choose an empty --output_dir")
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*" + record_files.TEMP_SUFFIX), out / METADATA_FILE]:
        if stale.exists():  # a partial shard of a killed run; the metadata of a run being redone
            stale.unlink()
    if (out / SPILL_DIR).exists():  # the tokenised documents of a Beam run that did not finish
        (out / SPILL_DIR).rmtree()
    if not recipe_path.exists():
        recipe_path.write_text(json.dumps(recipe, indent=2, sort_keys=True))


def _first_difference(found, expected, prefix: str = ""):
    if isinstance(found, dict) and isinstance(expected, dict):
        for key in sorted(set(found) | set(expected)):
            differ = _first_difference(found.get(key), expected.get(key), f"{prefix}{key}.")
            if differ:
                return differ
        return None
    return None if found == expected else (prefix.rstrip("."), found, expected)


def write_metadata(plan: ShardPlan, num_partitions: int, shards: Sequence[dict], stats: dict) -> dict:
    """metadata.json: the plan, the shard list and the counts. Written last: its presence means done."""
    shards = sorted(shards, key=lambda s: s["shard"])
    counts = {k: int(sum(s[k] for s in shards)) for k in ("instances", "instance_tokens", "masked_positions")}
    metadata = {"config": dataclasses.asdict(plan.config), "vocab_file": plan.vocab_file,
                "do_lower_case": plan.do_lower_case, "output_format": plan.output_format,
                "num_partitions": num_partitions, "files": [s["shard"] for s in shards],
                "counts": {**counts, "documents": int(stats.get("documents", 0)),
                           "sentences": int(stats.get("sentences", 0)),
                           "input_tokens": int(sum(s["input_tokens"] for s in shards if s["dupe_pass"] == 0))},
                "input": stats}
    (epath.Path(plan.output_dir) / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    return metadata


# ----------------------------------------------------------------------------- the two steps
# A tokenisation batch: up to this many documents or characters, whichever comes first. Small
# enough that a single book-sized file still spreads over the local workers.
BATCH_DOCUMENTS = 256
BATCH_CHARS = 400_000


def block_batches(keyed_blocks: Iterable[tuple[pi.DocumentKey, list[str]]]):
    """(key, raw lines) blocks in batches for `tokenize_block_batch`."""
    batch, chars = [], 0
    for keyed_block in keyed_blocks:
        batch.append(keyed_block)
        chars += sum(map(len, keyed_block[1]))
        if len(batch) >= BATCH_DOCUMENTS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def tokenize_block_batch(plan: ShardPlan, blocks: Sequence[tuple[pi.DocumentKey, list[str]]], num_partitions: int
                         ) -> tuple[list[tuple[int, pi.TokenizedDocument]], text_input.InputStats]:
    """(key, raw lines) blocks -> ([(partition, TokenizedDocument)], the counts of what was repaired)."""
    stats = text_input.InputStats()
    documents = []
    for key, block in blocks:
        sentences = text_input.block_sentences(block, plan.input_format, stats, plan.max_line_chars)
        if sentences:
            documents.append((key, sentences))
    tokenizer = load_tokenizer(plan.vocab_file, plan.do_lower_case)
    tokenized = pi.tokenize_documents(documents, tokenizer)
    return [(pi.partition_of(doc.key, num_partitions), doc) for doc in tokenized], stats


# ----------------------------------------------------------------------------- spill files

def write_spill(path: str, documents: Sequence[pi.TokenizedDocument], append: bool = False) -> None:
    """Tokenised documents to a spill file (a run of pickled lists: our own temporary format).

    append=True adds to a local file (the local executor, batch by batch); a Beam step writes
    its file whole, so a retried step overwrites instead of duplicating.
    """
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    with epath.Path(path).open("ab" if append else "wb") as f:
        pickle.dump(list(documents), f, protocol=pickle.HIGHEST_PROTOCOL)


def read_spill(path: str) -> list[pi.TokenizedDocument]:
    documents = []
    if not epath.Path(path).exists():  # a partition no document hashed to
        return documents
    with epath.Path(path).open("rb") as f:
        while True:
            try:
                documents += pickle.load(f)
            except EOFError:
                return documents
            except Exception as error:  # a cut spill file: pickle's error names no file
                raise ValueError(f"{path}: spill file unreadable after {len(documents)} documents "
                                 f"({type(error).__name__}: {error})") from error


def write_shard(plan: ShardPlan, partition: int, dupe_pass: int, num_partitions: int,
                documents: Iterable[pi.TokenizedDocument], skip_existing: bool = False) -> dict:
    """Makes and writes shard (partition, dupe_pass), streaming a work unit at a time. Returns its counts."""
    path = plan.shard_path(partition, dupe_pass, num_partitions)
    result = {"shard": os.path.basename(path), "partition": partition, "dupe_pass": dupe_pass}
    corpus = pi.partition_corpus(documents)
    result.update(documents=corpus.num_documents, input_tokens=corpus.num_tokens)
    if skip_existing and epath.Path(path).exists():
        return {**result, **_counts_of_file(path), "skipped": True}
    tokenizer = load_tokenizer(plan.vocab_file, plan.do_lower_case)
    vocab, specials = tokenizer.masking_vocab(), pi.special_ids_of(tokenizer)
    instances = tokens = masked = 0
    with record_files.ShardWriter(path) as writer:
        for unit in pi.partition_instances(corpus, partition, dupe_pass, plan.config, vocab, specials,
                                           plan.docs_per_unit):
            for record in encode_examples(unit.features()):
                writer.write(record)
            instances += len(unit)
            tokens += int(unit.input_mask.sum())
            masked += int((unit.masked_lm_weights > 0).sum())
    return {**result, "instances": instances, "instance_tokens": tokens, "masked_positions": masked}


def _counts_of_file(path: str) -> dict:
    """The counts of a shard already on disk (a resumed run reports the whole output)."""
    from data_pipelines.tfrecord_io import decode_example

    instances = tokens = masked = 0
    for number, record in enumerate(record_files.iter_records(path)):
        try:
            example = decode_example(record)
        except Exception as error:  # protobuf's DecodeError names no file
            raise record_files.shard_error(path, error, record=number) from error
        instances += 1
        tokens += int(example["input_mask"].sum())
        masked += int((example["masked_lm_weights"] > 0).sum())
    return {"instances": instances, "instance_tokens": tokens, "masked_positions": masked}


def check_vocab(plan: ShardPlan) -> None:
    """Loads the vocab now, so a missing file or missing special tokens fail before anything is written."""
    if not epath.Path(plan.vocab_file).exists():
        raise FileNotFoundError(f"--vocab_file {plan.vocab_file} does not exist")
    load_tokenizer(plan.vocab_file, plan.do_lower_case)


def merge_stats(parts: Iterable[text_input.InputStats]) -> dict:
    total = text_input.InputStats()
    for part in parts:
        total.merge(part)
    return dataclasses.asdict(total)


def empty_corpus_error(sources: Sequence) -> ValueError:
    names = [s.name for s in sources]
    return ValueError(f"no text in the input file(s) {names[:5]}{' ...' if len(names) > 5 else ''}: "
                      "every file is empty or blank")
